/**
 * Hugging Face `Qwen2VLImageProcessor` in TypeScript (the slow, PIL path), for images and for
 * video frames:
 *
 * 1. `smart_resize`: both sides rounded (Python's round-half-even) to multiples of
 *    `patch_size * merge_size`, then scaled down (floor) or up (ceil) so that the pixel count stays
 *    within `[min_pixels, max_pixels]` (`size.shortest_edge` / `size.longest_edge` in the file);
 * 2. every frame resized with Pillow's fixed-point filter (`image_processor.ts`), rescaled and
 *    normalised channels-first;
 * 3. frames padded to a multiple of `temporal_patch_size` by repeating the last one (an image is
 *    one frame, so it is doubled), then cut into `[temporal_patch_size, C, patch, patch]` patches
 *    flattened as `(C, T, ph, pw)`, rows ordered `(t, block_row, block_col, row_in_block,
 *    col_in_block)` so that each `merge_size^2` consecutive rows form one merged token.
 *
 * Videos: frames are processed exactly as images (the same size for all, from the first frame),
 * which is the layout of transformers' Qwen2VL video processor.
 */
import { EmollmError } from './errors.js';
import {
  checkAbort,
  normalizeToChw,
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  resizePil,
  type ImageProcessorConfig,
  type PipelineOptions,
  type Resample,
  type RgbImage,
} from './image_processor.js';

/** The fields of a Qwen2-VL `preprocessor_config.json`. */
export interface Qwen2VLProcessorConfig {
  minPixels: number;
  maxPixels: number;
  patchSize: number;
  mergeSize: number;
  temporalPatchSize: number;
  resample: Resample;
  doResize: boolean;
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  imageMean: [number, number, number];
  imageStd: [number, number, number];
}

/** Flattened patches of one image or video and its grid. */
export interface Qwen2VLPatches {
  /** `[gridT * gridH * gridW, 3 * temporalPatchSize * patchSize^2]` float32. */
  data: Float32Array;
  /** `[t, h, w]` in patches (before the 2x2 merge), transformers' `image_grid_thw` row. */
  grid: [number, number, number];
  /** Decoder positions the visual takes: `t * h * w / mergeSize^2`. */
  tokens: number;
}

function num(v: unknown, dflt: number, field: string, file?: string): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new EmollmError('ERR_BAD_CONFIG', `${file ? `${file}: ` : ''}${field} must be a positive number`, file ? { file } : {});
  return v;
}

/** Parses a Qwen2-VL `preprocessor_config.json` (transformers' defaults for absent fields). */
export function parseQwen2VLProcessorConfig(json: unknown, file?: string): Qwen2VLProcessorConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new EmollmError('ERR_BAD_CONFIG', `${file ?? 'preprocessor config'}: not a JSON object`, file ? { file } : {});
  const j = json as Record<string, unknown>;
  const size = (typeof j.size === 'object' && j.size !== null ? j.size : {}) as Record<string, unknown>;
  const triple = (v: unknown, d: readonly [number, number, number], field: string): [number, number, number] => {
    if (v === undefined || v === null) return [d[0], d[1], d[2]];
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x)))
      throw new EmollmError('ERR_BAD_CONFIG', `${file ? `${file}: ` : ''}${field} must be 3 numbers`, file ? { file } : {});
    return [v[0], v[1], v[2]];
  };
  const resample = num(j.resample, 3, 'resample', file);
  if (![0, 1, 2, 3, 4, 5].includes(resample)) throw new EmollmError('ERR_BAD_CONFIG', `${file ?? 'config'}: resample must be 0..5`);
  return {
    minPixels: num(size.shortest_edge ?? j.min_pixels, 56 * 56, 'size.shortest_edge', file),
    maxPixels: num(size.longest_edge ?? j.max_pixels, 28 * 28 * 1280, 'size.longest_edge', file),
    patchSize: num(j.patch_size, 14, 'patch_size', file),
    mergeSize: num(j.merge_size, 2, 'merge_size', file),
    temporalPatchSize: num(j.temporal_patch_size, 2, 'temporal_patch_size', file),
    resample: resample as Resample,
    doResize: j.do_resize !== false,
    doRescale: j.do_rescale !== false,
    rescaleFactor: num(j.rescale_factor, 1 / 255, 'rescale_factor', file),
    doNormalize: j.do_normalize !== false,
    imageMean: triple(j.image_mean, OPENAI_CLIP_MEAN, 'image_mean'),
    imageStd: triple(j.image_std, OPENAI_CLIP_STD, 'image_std'),
  };
}

/** Python's `round()` (half to even) for the non-negative values of smart_resize. */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** transformers' `smart_resize`: the `[height, width]` a frame is resized to. */
export function smartResize(height: number, width: number, factor: number, minPixels: number, maxPixels: number): [number, number] {
  if (Math.max(height, width) / Math.min(height, width) > 200)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `absolute aspect ratio must be smaller than 200, got ${Math.max(height, width) / Math.min(height, width)}`);
  let h = roundHalfEven(height / factor) * factor;
  let w = roundHalfEven(width / factor) * factor;
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return [h, w];
}

/**
 * Frames (one for an image) -> flattened temporal patches. All frames take the size smart_resize
 * gives the first one.
 */
export async function qwen2vlPatches(
  frames: readonly RgbImage[],
  config: Qwen2VLProcessorConfig,
  options: PipelineOptions = {},
): Promise<Qwen2VLPatches> {
  if (frames.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'qwen2vlPatches: no frames');
  const { patchSize: P, mergeSize: M, temporalPatchSize: T } = config;
  const first = frames[0]!;
  const [H, W] = config.doResize ? smartResize(first.height, first.width, P * M, config.minPixels, config.maxPixels) : [first.height, first.width];
  if (H % (P * M) !== 0 || W % (P * M) !== 0)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `frame size ${H}x${W} is not a multiple of ${P * M} (patch x merge)`);
  const clip: ImageProcessorConfig = {
    imageProcessorType: null,
    doConvertRgb: true,
    doResize: false,
    size: { height: H, width: W },
    resample: config.resample,
    doCenterCrop: false,
    cropSize: { height: H, width: W },
    doRescale: config.doRescale,
    rescaleFactor: config.rescaleFactor,
    doNormalize: config.doNormalize,
    imageMean: config.imageMean,
    imageStd: config.imageStd,
    padToSquare: false,
  };
  const nFrames = Math.ceil(frames.length / T) * T;
  const plane = H * W;
  const chw = new Float32Array(nFrames * 3 * plane);
  for (let f = 0; f < frames.length; f++) {
    checkAbort(options.signal);
    const fr = frames[f]!;
    const img = fr.width === W && fr.height === H ? fr : await resizePil(fr, W, H, config.resample, options);
    normalizeToChw(img, clip, chw, f * 3 * plane);
  }
  for (let f = frames.length; f < nFrames; f++) chw.copyWithin(f * 3 * plane, (frames.length - 1) * 3 * plane, frames.length * 3 * plane);
  const gt = nFrames / T;
  const gh = H / P;
  const gw = W / P;
  const rowLen = 3 * T * P * P;
  const data = new Float32Array(gt * gh * gw * rowLen);
  let o = 0;
  for (let t = 0; t < gt; t++)
    for (let bh = 0; bh < gh / M; bh++)
      for (let bw = 0; bw < gw / M; bw++)
        for (let mh = 0; mh < M; mh++)
          for (let mw = 0; mw < M; mw++) {
            const y0 = (bh * M + mh) * P;
            const x0 = (bw * M + mw) * P;
            for (let c = 0; c < 3; c++)
              for (let tt = 0; tt < T; tt++) {
                const base = (t * T + tt) * 3 * plane + c * plane;
                for (let py = 0; py < P; py++) {
                  const src = base + (y0 + py) * W + x0;
                  data.set(chw.subarray(src, src + P), o);
                  o += P;
                }
              }
          }
  return { data, grid: [gt, gh, gw], tokens: (gt * gh * gw) / (M * M) };
}
