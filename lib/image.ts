/**
 * Image input for the vision tower: decoding (files, encoded buffers, raw pixels) with sharp, and
 * CLIP / LLaVA-1.5 preprocessing that matches Hugging Face transformers' `CLIPImageProcessor`.
 *
 * ```ts
 * const proc = await loadImageProcessor('llava-1.5-7b-hf');          // reads preprocessor_config.json
 * const { data, shape } = await proc.preprocess('photo.jpg');         // Float32Array, [3, 336, 336]
 * const batch = await proc.preprocessBatch([buf1, buf2]);             // [2, 3, 336, 336]
 * ```
 *
 * Decoding applies the EXIF orientation, takes the first frame of animations, converts to 8-bit
 * RGB and drops alpha the way PIL's `convert('RGB')` does (no compositing), and ignores embedded
 * ICC profiles (as PIL and transformers do) unless asked. The resize is a port of PIL's, so the
 * output equals transformers' up to JPEG decoder differences (see tests/js/image.test.ts).
 *
 * Every failure is an {@link EmollmError}: `ERR_FILE_NOT_FOUND` (missing / unreadable path),
 * `ERR_BAD_IMAGE` (empty, corrupt, truncated, unsupported format, over the pixel limit),
 * `ERR_INVALID_ARGUMENT` (bad raw pixel object or option), `ERR_BAD_CONFIG` / `ERR_MALFORMED_FILE`
 * (preprocessor_config.json), `ERR_ABORTED` (signal).
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import sharp, { type OutputInfo } from 'sharp';

import { EmollmError } from './errors.js';
import { readRegularFile, readRegularTextFile } from './safe_fs.js';
import {
  checkAbort,
  normalizeToChw,
  parseImageProcessorConfig,
  transformImage,
  type ImageProcessorConfig,
  type RgbImage,
} from './image_processor.js';

export {
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  centerCrop,
  expandToSquare,
  normalizeToChw,
  padColour,
  parseImageProcessorConfig,
  resizeOutputSize,
  resizePil,
  transformImage,
} from './image_processor.js';
export type { ImageProcessorConfig, PipelineOptions, Resample, ResizeSize, RgbImage } from './image_processor.js';

/** Raw, already decoded 8-bit pixels, interleaved row-major: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA. */
export interface RawImageInput {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  channels: 1 | 2 | 3 | 4;
}

/**
 * An image: a file path, the bytes of an encoded file (JPEG, PNG, WebP, GIF (first frame), TIFF,
 * AVIF/HEIF; a Node Buffer is a Uint8Array), or raw pixels.
 */
export type ImageInput = string | Uint8Array | ArrayBuffer | RawImageInput;

/** sharp's sensitivity to invalid pixel data, least to most: 'none', 'truncated', 'error', 'warning'. */
export type ImageFailOn = 'none' | 'truncated' | 'error' | 'warning';

/** Options of {@link decodeImage}. */
export interface DecodeImageOptions {
  /**
   * Largest accepted width x height (as declared by the file's header, checked before any pixel is
   * decoded). Default 100 000 000 (100 megapixels); larger images reject with `ERR_BAD_IMAGE`.
   */
  maxPixels?: number;
  /** Largest accepted file size when reading a path, in bytes. Default 512 MiB. */
  maxFileBytes?: number;
  /**
   * When to reject damaged data. Default 'truncated': truncated or corrupt pixel data rejects (as
   * PIL does by default), harmless decoder warnings (e.g. stray bytes between JPEG markers) pass.
   */
  failOn?: ImageFailOn;
  /** Apply the EXIF orientation tag. Default true. */
  autoOrient?: boolean;
  /** Convert through the embedded ICC profile to sRGB. Default false, matching PIL / transformers. */
  applyIccProfile?: boolean;
  /** Rejects with `ERR_ABORTED`. */
  signal?: AbortSignal;
}

/** Options of {@link ImageProcessor.preprocess}. */
export interface PreprocessOptions extends DecodeImageOptions {
  /** Overrides the config's LLaVA "pad to square" for this call. */
  padToSquare?: boolean;
}

/** One preprocessed image: `data` is channels-first float32, `shape` `[3, height, width]`. */
export interface PixelValues {
  data: Float32Array;
  shape: [3, number, number];
}

/** A batch of preprocessed images: `shape` `[batch, 3, height, width]`. */
export interface PixelValuesBatch {
  data: Float32Array;
  shape: [number, 3, number, number];
}

/** Default {@link DecodeImageOptions.maxPixels}. */
export const DEFAULT_MAX_PIXELS = 100_000_000;
const DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024;
/** Formats accepted from encoded input (sharp's names); SVG/PDF and other renderers are refused. */
const ALLOWED_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif', 'heif']);

function badImage(message: string, file: string | undefined, cause?: unknown): EmollmError {
  const opts: { file?: string; cause?: unknown } = {};
  if (file !== undefined) opts.file = file;
  if (cause !== undefined) opts.cause = cause;
  return new EmollmError('ERR_BAD_IMAGE', file === undefined ? message : `${file}: ${message}`, opts);
}

function isRawInput(v: unknown): v is RawImageInput {
  return typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && !(v instanceof ArrayBuffer) && 'data' in v && 'width' in v;
}

function checkLimit(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new EmollmError('ERR_INVALID_ARGUMENT', `${name} must be a positive integer, got ${String(v)}`);
  return v;
}

function rawToRgb(input: RawImageInput, maxPixels: number): RgbImage {
  const { data, width, height, channels } = input;
  if (!(data instanceof Uint8Array || data instanceof Uint8ClampedArray))
    throw new EmollmError('ERR_INVALID_ARGUMENT', 'raw image: data must be a Uint8Array or Uint8ClampedArray');
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `raw image: width and height must be positive integers, got ${String(width)}x${String(height)}`);
  if (channels !== 1 && channels !== 2 && channels !== 3 && channels !== 4)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `raw image: channels must be 1, 2, 3 or 4, got ${String(channels)}`);
  if (width * height > maxPixels) throw badImage(`raw image of ${width}x${height} exceeds the limit of ${maxPixels} pixels`, undefined);
  const n = width * height;
  if (data.length !== n * channels)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `raw image: data has ${data.length} bytes, ${width}x${height}x${channels} needs ${n * channels}`);
  // Already RGB: a view, not a copy (100 MP copied here held the event loop for about half a second).
  if (channels === 3) return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width, height };
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    if (channels <= 2) {
      const g = data[i * channels]!;
      out[i * 3] = g;
      out[i * 3 + 1] = g;
      out[i * 3 + 2] = g;
    } else {
      out[i * 3] = data[i * 4]!;
      out[i * 3 + 1] = data[i * 4 + 1]!;
      out[i * 3 + 2] = data[i * 4 + 2]!;
    }
  }
  return { data: out, width, height };
}

async function readImageFile(path: string, maxFileBytes: number): Promise<Buffer> {
  // Opened non-blocking and checked on the descriptor: a FIFO, socket or device is refused
  // (ERR_NOT_REGULAR_FILE) before any read, a folder too.
  try {
    return await readRegularFile(path, { maxBytes: maxFileBytes });
  } catch (e) {
    if (e instanceof EmollmError && e.code === 'ERR_LIMIT_EXCEEDED') throw badImage(`file exceeds the limit of ${maxFileBytes} bytes`, path, e);
    throw e;
  }
}

/**
 * Decodes an image to 8-bit RGB: EXIF orientation applied, first frame, alpha dropped (PIL's
 * `convert('RGB')`), grey expanded to RGB. Rejects with an {@link EmollmError} (see the module
 * documentation), never with a raw sharp error.
 */
export async function decodeImage(input: ImageInput, options: DecodeImageOptions = {}): Promise<RgbImage> {
  const maxPixels = checkLimit('maxPixels', options.maxPixels, DEFAULT_MAX_PIXELS);
  const maxFileBytes = checkLimit('maxFileBytes', options.maxFileBytes, DEFAULT_MAX_FILE_BYTES);
  const failOn = options.failOn ?? 'truncated';
  if (!['none', 'truncated', 'error', 'warning'].includes(failOn))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `failOn must be 'none', 'truncated', 'error' or 'warning', got ${String(failOn)}`);
  checkAbort(options.signal);

  if (isRawInput(input)) return rawToRgb(input, maxPixels);

  let bytes: Buffer;
  let file: string | undefined;
  if (typeof input === 'string') {
    file = input;
    bytes = await readImageFile(input, maxFileBytes);
  } else if (input instanceof Uint8Array) bytes = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  else if (input instanceof ArrayBuffer) bytes = Buffer.from(input);
  else throw new EmollmError('ERR_INVALID_ARGUMENT', 'image input must be a path, a Uint8Array / Buffer / ArrayBuffer of an encoded image, or raw pixels {data, width, height, channels}');
  if (bytes.length === 0) throw badImage('empty image data (0 bytes)', file);
  checkAbort(options.signal);

  let result: { data: Buffer; info: OutputInfo };
  try {
    const img = sharp(bytes, {
      failOn,
      limitInputPixels: maxPixels,
      autoOrient: options.autoOrient ?? true,
      ignoreIcc: !(options.applyIccProfile ?? false),
      pages: 1,
      page: 0,
    });
    const meta = await img.metadata();
    if (meta.format === undefined || !ALLOWED_FORMATS.has(meta.format))
      throw badImage(`unsupported image format ${JSON.stringify(meta.format ?? 'unknown')} (accepted: ${[...ALLOWED_FORMATS].join(', ')})`, file);
    const w = meta.width ?? 0;
    const h = meta.height ?? 0;
    if (w < 1 || h < 1) throw badImage(`image has no size (${w}x${h})`, file);
    if (w * h > maxPixels) throw badImage(`image of ${w}x${h} exceeds the limit of ${maxPixels} pixels`, file);
    checkAbort(options.signal);
    result = await img.toColourspace('srgb').removeAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (cause) {
    if (cause instanceof EmollmError) throw cause;
    const msg = cause instanceof Error ? cause.message : String(cause);
    if (/pixel limit/i.test(msg)) throw badImage(`image exceeds the limit of ${maxPixels} pixels (${msg})`, file, cause);
    throw badImage(`cannot decode image: ${msg.trim()}`, file, cause);
  }
  checkAbort(options.signal);

  const { data, info } = result;
  const n = info.width * info.height;
  if (info.channels === 3 && data.length === n * 3) return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
  if ((info.channels === 1 || info.channels === 2 || info.channels === 4) && data.length === n * info.channels)
    return rawToRgb({ data, width: info.width, height: info.height, channels: info.channels }, maxPixels);
  throw badImage(`decoder returned ${info.channels} channels, cannot convert to RGB`, file);
}

/**
 * Reads `preprocessor_config.json` (give the file or the model folder that holds it).
 * `ERR_FILE_NOT_FOUND` when missing, `ERR_MALFORMED_FILE` for invalid JSON, `ERR_BAD_CONFIG` /
 * `ERR_UNSUPPORTED` for bad or unknown fields.
 */
export async function loadImageProcessorConfig(path: string): Promise<ImageProcessorConfig> {
  let file = path;
  try {
    if ((await stat(path)).isDirectory()) file = join(path, 'preprocessor_config.json');
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: no such file or folder`, { file: path, cause });
  }
  let text: string;
  try {
    text = await readRegularTextFile(file, { maxBytes: 16 * 1024 * 1024 });
  } catch (cause) {
    if (cause instanceof EmollmError && cause.code !== 'ERR_FILE_NOT_FOUND') throw cause;
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${file}: cannot read (${(cause as Error).message})`, { file, cause });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new EmollmError('ERR_MALFORMED_FILE', `${file}: invalid JSON (${(cause as Error).message})`, { file, cause });
  }
  return parseImageProcessorConfig(json, file);
}

function validateConfig(c: ImageProcessorConfig): void {
  const bad = (what: string): never => {
    throw new EmollmError('ERR_INVALID_ARGUMENT', `image processor config: ${what}`);
  };
  const dim = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65536;
  if ('shortestEdge' in c.size ? !dim(c.size.shortestEdge) : !dim(c.size.height) || !dim(c.size.width)) bad('size must hold integers in 1..65536');
  if (!dim(c.cropSize.height) || !dim(c.cropSize.width)) bad('cropSize must hold integers in 1..65536');
  if (![0, 1, 2, 3, 4, 5].includes(c.resample)) bad('resample must be a PIL filter id 0..5');
  if (!(c.rescaleFactor > 0) || !Number.isFinite(c.rescaleFactor)) bad('rescaleFactor must be a positive number');
  if (c.imageMean.length !== 3 || !c.imageMean.every(Number.isFinite)) bad('imageMean must be 3 finite numbers');
  if (c.imageStd.length !== 3 || !c.imageStd.every((x) => Number.isFinite(x) && x > 0)) bad('imageStd must be 3 positive numbers');
}

/**
 * CLIPImageProcessor: turns images into the `pixel_values` a CLIP / LLaVA vision tower takes.
 * Safe to share: calls are independent.
 */
export class ImageProcessor {
  /** The effective configuration (transformers' defaults filled in). */
  readonly config: Readonly<ImageProcessorConfig>;

  /**
   * @param config fields over CLIPImageProcessor's defaults (224 shortest edge, 224 x 224 crop,
   *   bicubic, 1/255, OpenAI CLIP mean/std). Throws `ERR_INVALID_ARGUMENT` for invalid values.
   */
  constructor(config: Partial<ImageProcessorConfig> = {}) {
    const full: ImageProcessorConfig = { ...parseImageProcessorConfig({}), ...config };
    validateConfig(full);
    this.config = Object.freeze({ ...full, imageMean: [...full.imageMean], imageStd: [...full.imageStd] } as ImageProcessorConfig);
  }

  /** Loads `preprocessor_config.json` from a file or model folder; `overrides` replace fields. */
  static async load(path: string, overrides: Partial<ImageProcessorConfig> = {}): Promise<ImageProcessor> {
    return new ImageProcessor({ ...(await loadImageProcessorConfig(path)), ...overrides });
  }

  /** The `[height, width]` of the output for an input of the given size. */
  outputSize(height: number, width: number, padToSquare = this.config.padToSquare): [number, number] {
    let h = height;
    let w = width;
    if (padToSquare) h = w = Math.max(h, w);
    if (this.config.doResize) {
      const s = this.config.size;
      if ('shortestEdge' in s) {
        const short = Math.min(h, w);
        const long = Math.max(h, w);
        const nl = Math.trunc((s.shortestEdge * long) / short);
        [h, w] = w <= h ? [nl, s.shortestEdge] : [s.shortestEdge, nl];
      } else [h, w] = [s.height, s.width];
    }
    if (this.config.doCenterCrop) [h, w] = [this.config.cropSize.height, this.config.cropSize.width];
    return [h, w];
  }

  private async run(input: ImageInput, options: PreprocessOptions, out?: Float32Array, offset = 0): Promise<{ data: Float32Array; height: number; width: number }> {
    const rgb = await decodeImage(input, options);
    const config = options.padToSquare === undefined ? this.config : { ...this.config, padToSquare: options.padToSquare };
    const pipelineOptions = options.signal === undefined ? {} : { signal: options.signal };
    const img = await transformImage(rgb, config, pipelineOptions);
    checkAbort(options.signal);
    if (out !== undefined && out.length - offset !== 3 * img.width * img.height)
      throw new EmollmError('ERR_INVALID_ARGUMENT', `batch images must share one size; got ${img.height}x${img.width} after preprocessing`);
    return { data: normalizeToChw(img, config, out, offset), height: img.height, width: img.width };
  }

  /** Decodes and preprocesses one image into `[3, H, W]` float32 pixel values. */
  async preprocess(input: ImageInput, options: PreprocessOptions = {}): Promise<PixelValues> {
    const r = await this.run(input, options);
    return { data: r.data, shape: [3, r.height, r.width] };
  }

  /**
   * Preprocesses several images into one `[B, 3, H, W]` tensor (one at a time, so memory stays
   * bounded). All outputs must have the same size (always true with centre crop); otherwise
   * `ERR_INVALID_ARGUMENT`.
   */
  async preprocessBatch(inputs: readonly ImageInput[], options: PreprocessOptions = {}): Promise<PixelValuesBatch> {
    if (!Array.isArray(inputs) || inputs.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'preprocessBatch needs at least one image');
    const first = await this.run(inputs[0]!, options);
    const per = first.data.length;
    const data = new Float32Array(per * inputs.length);
    data.set(first.data);
    for (let i = 1; i < inputs.length; i++) {
      const buf = data.subarray(0, (i + 1) * per);
      await this.run(inputs[i]!, options, buf, i * per);
    }
    return { data, shape: [inputs.length, 3, first.height, first.width] };
  }
}

/** Loads an {@link ImageProcessor} from `preprocessor_config.json` (file or model folder). */
export async function loadImageProcessor(path: string, overrides: Partial<ImageProcessorConfig> = {}): Promise<ImageProcessor> {
  return ImageProcessor.load(path, overrides);
}

/** One-shot: preprocess `input` with `config` (a {@link ImageProcessor} or config fields). */
export async function preprocessImage(
  input: ImageInput,
  config: ImageProcessor | Partial<ImageProcessorConfig> = {},
  options: PreprocessOptions = {},
): Promise<PixelValues> {
  const proc = config instanceof ImageProcessor ? config : new ImageProcessor(config);
  return proc.preprocess(input, options);
}
