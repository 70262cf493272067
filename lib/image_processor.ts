/**
 * Hugging Face `CLIPImageProcessor` (as used by LLaVA-1.5) in TypeScript: parsing of
 * `preprocessor_config.json` and the pixel pipeline on decoded 8-bit RGB images.
 *
 * The pipeline reproduces transformers' slow (PIL) processor step by step:
 *
 * 1. optional LLaVA "pad to square" (`expand2square`: centre the image on a square canvas filled
 *    with `int(255 * mean)`), which the original LLaVA-1.5 code applies before the processor;
 * 2. resize so the shortest edge is `size.shortest_edge` (long edge `int(short * long / short)`,
 *    transformers' `get_resize_output_image_size`), or to a fixed `{height, width}`, with a port of
 *    Pillow's `ImagingResample` (separable convolution, support scaled by the downscale factor,
 *    22-bit fixed-point coefficients, 8-bit intermediate image), so the resized pixels are the
 *    ones PIL gives, bit for bit;
 * 3. centre crop to `crop_size` (`top = (h - crop_h) // 2`, zero padding when the crop is larger,
 *    as transformers' `center_crop`);
 * 4. rescale (`uint8 * rescale_factor` in float64, stored as float32) and normalise
 *    (`(x - mean) / std` in float32), channels first.
 *
 * Decoding (files, encoded buffers, raw pixels) lives in `image.ts`.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';

import { EmollmError } from './errors.js';

/** OpenAI CLIP's normalisation mean (transformers' `OPENAI_CLIP_MEAN`). */
export const OPENAI_CLIP_MEAN: readonly [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
/** OpenAI CLIP's normalisation standard deviation (transformers' `OPENAI_CLIP_STD`). */
export const OPENAI_CLIP_STD: readonly [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

/**
 * PIL resampling filter ids, as in `preprocessor_config.json`'s `resample`:
 * 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
 */
export type Resample = 0 | 1 | 2 | 3 | 4 | 5;

/** Resize target: the shortest edge (aspect ratio kept) or an exact size. */
export type ResizeSize = { shortestEdge: number } | { height: number; width: number };

/** A parsed `preprocessor_config.json` (CLIPImageProcessor fields), with transformers' defaults filled in. */
export interface ImageProcessorConfig {
  /** `image_processor_type` as written in the file, or null. */
  imageProcessorType: string | null;
  /** Convert to RGB (alpha dropped, as PIL's `convert('RGB')`). The pipeline always yields RGB; kept for reference. */
  doConvertRgb: boolean;
  doResize: boolean;
  /** Resize target; CLIP uses `{ shortestEdge }`. Default `{ shortestEdge: 224 }`. */
  size: ResizeSize;
  /** PIL filter id; default 3 (bicubic). */
  resample: Resample;
  doCenterCrop: boolean;
  /** Centre crop size; default 224 x 224. */
  cropSize: { height: number; width: number };
  doRescale: boolean;
  /** Default 1/255. */
  rescaleFactor: number;
  doNormalize: boolean;
  /** Per-channel RGB mean; default OpenAI CLIP's. */
  imageMean: [number, number, number];
  /** Per-channel RGB standard deviation; default OpenAI CLIP's. */
  imageStd: [number, number, number];
  /**
   * LLaVA-1.5 `image_aspect_ratio: "pad"`: before resizing, centre the image on a square canvas
   * filled with `int(255 * imageMean)`. Not a transformers field (transformers' LlavaProcessor does
   * not pad); default false. Read from `image_aspect_ratio: "pad"` or `pad_to_square: true` if present.
   */
  padToSquare: boolean;
}

/** An 8-bit RGB image, pixels interleaved row-major (`data.length === width * height * 3`). */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Options of the pure pipeline. */
export interface PipelineOptions {
  /** Rejects with `ERR_ABORTED` (checked between rows of the resize and between steps). */
  signal?: AbortSignal;
}

// LlavaNext*: the same CLIP fields; the anyres tiling on top is image_processor_llava_next.ts.
const KNOWN_TYPES = new Set(['CLIPImageProcessor', 'CLIPImageProcessorFast', 'LlavaImageProcessor', 'LlavaImageProcessorFast', 'LlavaNextImageProcessor', 'LlavaNextImageProcessorFast']);

function badConfig(field: string, what: string, file: string | undefined): EmollmError {
  return new EmollmError('ERR_BAD_CONFIG', `${file ? `${file}: ` : ''}${field}: ${what}`, file === undefined ? {} : { file });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses the JSON object of a `preprocessor_config.json` into an {@link ImageProcessorConfig}.
 * Absent or null fields take CLIPImageProcessor's defaults; legacy spellings are accepted
 * (`size: 224` means shortest edge 224, `crop_size: 224` means 224 x 224, `[h, w]` lists).
 * Throws `EmollmError('ERR_BAD_CONFIG')` naming the field for a wrong type or value, and
 * `ERR_UNSUPPORTED` for an `image_processor_type` other than CLIP/LLaVA's.
 *
 * @param json the parsed JSON
 * @param file the file it came from, for error messages
 */
export function parseImageProcessorConfig(json: unknown, file?: string): ImageProcessorConfig {
  if (!isObject(json)) throw badConfig('(root)', 'expected a JSON object', file);
  const get = (k: string): unknown => (json[k] === null ? undefined : json[k]);

  const bool = (k: string, dflt: boolean): boolean => {
    const v = get(k);
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') throw badConfig(k, `expected a boolean, got ${JSON.stringify(v)}`, file);
    return v;
  };
  const posInt = (k: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65536)
      throw badConfig(k, `expected an integer in 1..65536, got ${JSON.stringify(v)}`, file);
    return v;
  };
  const triple = (k: string, dflt: readonly [number, number, number], positive: boolean): [number, number, number] => {
    let v = get(k);
    if (v === undefined) return [dflt[0], dflt[1], dflt[2]];
    if (typeof v === 'number') v = [v, v, v];
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0)))
      throw badConfig(k, `expected 3 finite${positive ? ' positive' : ''} numbers, got ${JSON.stringify(get(k))}`, file);
    return [v[0] as number, v[1] as number, v[2] as number];
  };

  const typeRaw = get('image_processor_type');
  if (typeRaw !== undefined && typeof typeRaw !== 'string') throw badConfig('image_processor_type', 'expected a string', file);
  const imageProcessorType = typeRaw ?? null;
  if (imageProcessorType !== null && !KNOWN_TYPES.has(imageProcessorType))
    throw new EmollmError(
      'ERR_UNSUPPORTED',
      `${file ? `${file}: ` : ''}image_processor_type ${JSON.stringify(imageProcessorType)} is not supported (only ${[...KNOWN_TYPES].join(', ')})`,
      file === undefined ? {} : { file },
    );

  // size: {shortest_edge} | {height, width} | int (shortest edge) | [h, w]
  let size: ResizeSize = { shortestEdge: 224 };
  const sizeRaw = get('size');
  if (sizeRaw !== undefined) {
    if (typeof sizeRaw === 'number') size = { shortestEdge: posInt('size', sizeRaw) };
    else if (Array.isArray(sizeRaw) && sizeRaw.length === 2)
      size = { height: posInt('size[0]', sizeRaw[0]), width: posInt('size[1]', sizeRaw[1]) };
    else if (isObject(sizeRaw) && sizeRaw.shortest_edge !== undefined && sizeRaw.shortest_edge !== null)
      size = { shortestEdge: posInt('size.shortest_edge', sizeRaw.shortest_edge) };
    else if (isObject(sizeRaw) && sizeRaw.height !== undefined && sizeRaw.width !== undefined)
      size = { height: posInt('size.height', sizeRaw.height), width: posInt('size.width', sizeRaw.width) };
    else throw badConfig('size', `expected {shortest_edge} or {height, width}, got ${JSON.stringify(sizeRaw)}`, file);
  }

  let cropSize = { height: 224, width: 224 };
  const cropRaw = get('crop_size');
  if (cropRaw !== undefined) {
    if (typeof cropRaw === 'number') cropSize = { height: posInt('crop_size', cropRaw), width: posInt('crop_size', cropRaw) };
    else if (Array.isArray(cropRaw) && cropRaw.length === 2)
      cropSize = { height: posInt('crop_size[0]', cropRaw[0]), width: posInt('crop_size[1]', cropRaw[1]) };
    else if (isObject(cropRaw) && cropRaw.height !== undefined && cropRaw.width !== undefined)
      cropSize = { height: posInt('crop_size.height', cropRaw.height), width: posInt('crop_size.width', cropRaw.width) };
    else throw badConfig('crop_size', `expected {height, width}, got ${JSON.stringify(cropRaw)}`, file);
  }

  const resampleRaw = get('resample');
  let resample: Resample = 3;
  if (resampleRaw !== undefined) {
    if (typeof resampleRaw !== 'number' || !Number.isInteger(resampleRaw) || resampleRaw < 0 || resampleRaw > 5)
      throw badConfig('resample', `expected a PIL filter id 0..5, got ${JSON.stringify(resampleRaw)}`, file);
    resample = resampleRaw as Resample;
  }

  const rf = get('rescale_factor');
  let rescaleFactor = 1 / 255;
  if (rf !== undefined) {
    if (typeof rf !== 'number' || !Number.isFinite(rf) || rf <= 0) throw badConfig('rescale_factor', `expected a positive number, got ${JSON.stringify(rf)}`, file);
    rescaleFactor = rf;
  }

  const aspect = get('image_aspect_ratio');
  if (aspect !== undefined && typeof aspect !== 'string') throw badConfig('image_aspect_ratio', 'expected a string', file);

  return {
    imageProcessorType,
    doConvertRgb: bool('do_convert_rgb', true),
    doResize: bool('do_resize', true),
    size,
    resample,
    doCenterCrop: bool('do_center_crop', true),
    cropSize,
    doRescale: bool('do_rescale', true),
    rescaleFactor,
    doNormalize: bool('do_normalize', true),
    imageMean: triple('image_mean', OPENAI_CLIP_MEAN, false),
    imageStd: triple('image_std', OPENAI_CLIP_STD, true),
    padToSquare: bool('pad_to_square', aspect === 'pad'),
  };
}

/**
 * Output size of a resize, as transformers' `get_resize_output_image_size`: for
 * `{ shortestEdge: s }` the short side becomes `s` and the long side `int(s * long / short)`
 * (truncated); `{ height, width }` is taken as is.
 *
 * @returns `[height, width]`
 */
export function resizeOutputSize(height: number, width: number, size: ResizeSize): [number, number] {
  if (!('shortestEdge' in size)) return [size.height, size.width];
  const s = size.shortestEdge;
  const short = Math.min(width, height);
  const long = Math.max(width, height);
  const newLong = Math.trunc((s * long) / short); // Python int(s * long / short), float64 division as in CPython
  return width <= height ? [newLong, s] : [s, newLong];
}

/**
 * LLaVA's `expand2square`: centres the image on a square canvas of side `max(w, h)` filled with
 * `background` (LLaVA uses `int(255 * x)` of the processor mean); paste offset `(side - small) // 2`.
 */
export function expandToSquare(img: RgbImage, background: readonly [number, number, number]): RgbImage {
  const { width: w, height: h } = img;
  if (w === h) return img;
  const side = Math.max(w, h);
  const out = new Uint8Array(side * side * 3);
  for (let i = 0; i < side * side; i++) {
    out[i * 3] = background[0];
    out[i * 3 + 1] = background[1];
    out[i * 3 + 2] = background[2];
  }
  const x0 = w > h ? 0 : Math.floor((h - w) / 2);
  const y0 = w > h ? Math.floor((w - h) / 2) : 0;
  for (let y = 0; y < h; y++) out.set(img.data.subarray(y * w * 3, (y + 1) * w * 3), ((y + y0) * side + x0) * 3);
  return { data: out, width: side, height: side };
}

/** The `expand2square` fill colour of LLaVA: `tuple(int(x * 255) for x in image_mean)`, clamped to 0..255. */
export function padColour(mean: readonly [number, number, number]): [number, number, number] {
  const c = (x: number): number => Math.min(255, Math.max(0, Math.trunc(x * 255)));
  return [c(mean[0]), c(mean[1]), c(mean[2])];
}

/**
 * transformers' `center_crop` (channels-last): `top = (h - ch) // 2`, `left = (w - cw) // 2`; when
 * the crop is larger than the image, the image is first centred on a zero canvas with offsets
 * `ceil((new - old) / 2)`.
 */
export function centerCrop(img: RgbImage, cropHeight: number, cropWidth: number): RgbImage {
  const { width: w, height: h, data } = img;
  let top = Math.floor((h - cropHeight) / 2);
  let left = Math.floor((w - cropWidth) / 2);
  if (top >= 0 && left >= 0 && top + cropHeight <= h && left + cropWidth <= w) {
    if (top === 0 && left === 0 && cropHeight === h && cropWidth === w) return img;
    const out = new Uint8Array(cropWidth * cropHeight * 3);
    for (let y = 0; y < cropHeight; y++)
      out.set(data.subarray(((y + top) * w + left) * 3, ((y + top) * w + left + cropWidth) * 3), y * cropWidth * 3);
    return { data: out, width: cropWidth, height: cropHeight };
  }
  // Pad with zeros (new canvas max(crop, orig)), then crop; transformers' slicing clamps to the canvas.
  const nh = Math.max(cropHeight, h);
  const nw = Math.max(cropWidth, w);
  const topPad = Math.ceil((nh - h) / 2);
  const leftPad = Math.ceil((nw - w) / 2);
  top += topPad;
  left += leftPad;
  const y0 = Math.max(0, top);
  const y1 = Math.min(nh, top + cropHeight);
  const x0 = Math.max(0, left);
  const x1 = Math.min(nw, left + cropWidth);
  const ow = x1 - x0;
  const oh = y1 - y0;
  const out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) {
    const sy = y + y0 - topPad;
    if (sy < 0 || sy >= h) continue;
    for (let x = 0; x < ow; x++) {
      const sx = x + x0 - leftPad;
      if (sx < 0 || sx >= w) continue;
      const s = (sy * w + sx) * 3;
      const d = (y * ow + x) * 3;
      out[d] = data[s]!;
      out[d + 1] = data[s + 1]!;
      out[d + 2] = data[s + 2]!;
    }
  }
  return { data: out, width: ow, height: oh };
}

// ---------------------------------------------------------------------------------------------
// Port of Pillow's libImaging/Resample.c (8 bits per channel path) and Geometry.c's nearest scale.

interface Filter {
  support: number;
  f: (x: number) => number;
}

function sinc(x: number): number {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

const FILTERS: Record<Exclude<Resample, 0>, Filter> = {
  // LANCZOS
  1: { support: 3, f: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
  // BILINEAR (triangle)
  2: { support: 1, f: (x) => (x < 0 && (x = -x), x < 1 ? 1 - x : 0) },
  // BICUBIC, Keys a = -0.5
  3: {
    support: 2,
    f: (x) => {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  // BOX
  4: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  // HAMMING
  5: {
    support: 1,
    f: (x) => {
      if (x < 0) x = -x;
      if (x === 0) return 1;
      if (x >= 1) return 0;
      x *= Math.PI;
      return (Math.sin(x) / x) * (0.54 + 0.46 * Math.cos(x));
    },
  },
};

/** 32 - 8 - 2: two bits of headroom for negative lobes and overshoot. */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

interface Coeffs {
  ksize: number;
  /** [xmin, count] per output index */
  bounds: Int32Array;
  /** fixed-point integer coefficients, ksize per output index */
  kk: Float64Array;
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full box [0, inSize). */
function precomputeCoeffs(inSize: number, outSize: number, filter: Filter): Coeffs {
  const in0 = 0;
  const in1 = inSize;
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  const pre = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let ww = 0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      pre[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let k = 0;
      if (x < xmax) k = ww !== 0 ? pre[x]! / ww : pre[x]!;
      // (int)(±0.5 + k * 2^22), C truncation toward zero
      kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

/** Pillow's `clip8`: arithmetic shift right by PRECISION_BITS, clamped to 0..255. */
function clip8(v: number): number {
  const s = Math.floor(v / ONE);
  return s < 0 ? 0 : s > 255 ? 255 : s;
}

/** Multiply-adds between event-loop yields (about 10 ms of work). */
const YIELD_OPS = 4_000_000;

class Yielder {
  private ops = 0;
  constructor(private readonly signal: AbortSignal | undefined) {}
  async tick(ops: number): Promise<void> {
    this.ops += ops;
    if (this.ops >= YIELD_OPS) {
      this.ops = 0;
      await yieldToEventLoop();
      checkAbort(this.signal);
    }
  }
}

/** Throws `EmollmError('ERR_ABORTED')` when `signal` is aborted. */
export function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new EmollmError('ERR_ABORTED', 'image preprocessing was aborted', { cause: signal.reason });
}

/** Pillow's nearest-neighbour resize (`ImagingScaleAffine` with a = [in/out, 0, 0, 0, in/out, 0]). */
function resizeNearest(img: RgbImage, outW: number, outH: number): RgbImage {
  const { width: w, height: h, data } = img;
  const coord = (v: number): number => (v < 0 ? -1 : Math.trunc(v));
  const xin = new Int32Array(outW);
  const a0 = w / outW;
  const a4 = h / outH;
  let xo = a0 * 0.5;
  for (let x = 0; x < outW; x++) {
    xin[x] = Math.min(w - 1, Math.max(0, coord(xo)));
    xo += a0;
  }
  const out = new Uint8Array(outW * outH * 3);
  let yo = a4 * 0.5;
  for (let y = 0; y < outH; y++) {
    const yi = Math.min(h - 1, Math.max(0, coord(yo)));
    yo += a4;
    for (let x = 0; x < outW; x++) {
      const s = (yi * w + xin[x]!) * 3;
      const d = (y * outW + x) * 3;
      out[d] = data[s]!;
      out[d + 1] = data[s + 1]!;
      out[d + 2] = data[s + 2]!;
    }
  }
  return { data: out, width: outW, height: outH };
}

/**
 * Resizes an RGB image exactly as Pillow's `Image.resize((outW, outH), resample)` does for an
 * 8-bit RGB image (no `reducing_gap`, full box): a horizontal pass over the source rows that the
 * vertical filter uses, rounded to 8 bits, then a vertical pass. Yields to the event loop every few
 * million multiply-adds, so a large photo does not stall other work.
 */
export async function resizePil(img: RgbImage, outW: number, outH: number, resample: Resample, options: PipelineOptions = {}): Promise<RgbImage> {
  if (!Number.isInteger(outW) || !Number.isInteger(outH) || outW < 1 || outH < 1)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `resize to ${outW}x${outH}: sizes must be positive integers`);
  if (outW === img.width && outH === img.height) return img; // PIL returns a copy
  if (resample === 0) return resizeNearest(img, outW, outH);
  const filter = FILTERS[resample];
  const y = new Yielder(options.signal);
  const needH = outW !== img.width;
  const needV = outH !== img.height;
  const ch = precomputeCoeffs(img.width, outW, filter);
  const cv = precomputeCoeffs(img.height, outH, filter);

  let cur = img;
  if (needH) {
    // rows [yFirst, yLast) of the source are the ones the vertical pass reads
    const yFirst = needV ? cv.bounds[0]! : 0;
    const yLast = needV ? cv.bounds[(outH - 1) * 2]! + cv.bounds[(outH - 1) * 2 + 1]! : img.height;
    const rows = yLast - yFirst;
    const src = img.data;
    const sw = img.width;
    const out = new Uint8Array(outW * rows * 3);
    const { ksize, bounds, kk } = ch;
    for (let yy = 0; yy < rows; yy++) {
      const rowBase = (yy + yFirst) * sw * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2]!;
        const n = bounds[xx * 2 + 1]!;
        const kb = xx * ksize;
        let s0 = HALF;
        let s1 = HALF;
        let s2 = HALF;
        let p = rowBase + xmin * 3;
        for (let x = 0; x < n; x++, p += 3) {
          const k = kk[kb + x]!;
          s0 += src[p]! * k;
          s1 += src[p + 1]! * k;
          s2 += src[p + 2]! * k;
        }
        const d = (yy * outW + xx) * 3;
        out[d] = clip8(s0);
        out[d + 1] = clip8(s1);
        out[d + 2] = clip8(s2);
      }
      await y.tick(outW * ksize * 3);
    }
    cur = { data: out, width: outW, height: rows };
    if (needV) for (let i = 0; i < outH; i++) cv.bounds[i * 2] = cv.bounds[i * 2]! - yFirst;
  }
  if (needV) {
    const src = cur.data;
    const w = cur.width;
    const out = new Uint8Array(w * outH * 3);
    const { ksize, bounds, kk } = cv;
    for (let yy = 0; yy < outH; yy++) {
      const ymin = bounds[yy * 2]!;
      const n = bounds[yy * 2 + 1]!;
      const kb = yy * ksize;
      for (let xx = 0; xx < w; xx++) {
        let s0 = HALF;
        let s1 = HALF;
        let s2 = HALF;
        let p = (ymin * w + xx) * 3;
        const stride = w * 3;
        for (let t = 0; t < n; t++, p += stride) {
          const k = kk[kb + t]!;
          s0 += src[p]! * k;
          s1 += src[p + 1]! * k;
          s2 += src[p + 2]! * k;
        }
        const d = (yy * w + xx) * 3;
        out[d] = clip8(s0);
        out[d + 1] = clip8(s1);
        out[d + 2] = clip8(s2);
      }
      await y.tick(w * ksize * 3);
    }
    cur = { data: out, width: w, height: outH };
  }
  return cur;
}

/**
 * Rescale + normalise into channels-first float32, with the arithmetic of transformers' slow
 * processor: `float32(uint8 * rescale_factor)` (computed in float64), then `(x - mean) / std` in
 * float32. Writes `3 * height * width` values into `out` at `offset`.
 */
export function normalizeToChw(img: RgbImage, config: ImageProcessorConfig, out?: Float32Array, offset = 0): Float32Array {
  const { width: w, height: h, data } = img;
  const plane = w * h;
  const dst = out ?? new Float32Array(3 * plane);
  if (dst.length < offset + 3 * plane) throw new EmollmError('ERR_INVALID_ARGUMENT', 'normalizeToChw: output buffer too small');
  const f = Math.fround;
  for (let c = 0; c < 3; c++) {
    // One lookup table per channel: a uint8 maps to one float32.
    const lut = new Float32Array(256);
    const mean = f(config.imageMean[c]!);
    const std = f(config.imageStd[c]!);
    for (let v = 0; v < 256; v++) {
      let x = config.doRescale ? f(v * config.rescaleFactor) : v;
      if (config.doNormalize) x = f(f(x - mean) / std);
      lut[v] = x;
    }
    const base = offset + c * plane;
    for (let i = 0; i < plane; i++) dst[base + i] = lut[data[i * 3 + c]!]!;
  }
  return dst;
}

/** The geometric part of the pipeline: pad to square (optional), resize, centre crop; 8-bit RGB out. */
export async function transformImage(img: RgbImage, config: ImageProcessorConfig, options: PipelineOptions = {}): Promise<RgbImage> {
  let cur = img;
  if (config.padToSquare) cur = expandToSquare(cur, padColour(config.imageMean));
  checkAbort(options.signal);
  if (config.doResize) {
    const [h, w] = resizeOutputSize(cur.height, cur.width, config.size);
    cur = await resizePil(cur, w, h, config.resample, options);
  }
  checkAbort(options.signal);
  if (config.doCenterCrop) cur = centerCrop(cur, config.cropSize.height, config.cropSize.width);
  return cur;
}
