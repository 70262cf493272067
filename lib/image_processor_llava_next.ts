/**
 * Hugging Face `LlavaNextImageProcessor` ("anyres") in TypeScript, on top of the CLIP pipeline of
 * `image_processor.ts` (Pillow-exact resize, rescale, normalise):
 *
 * 1. pick the grid pinpoint (`{height, width}`) that keeps the most of the image after an
 *    aspect-preserving downscale, ties broken by the least waste (`select_best_resolution`);
 * 2. resize the 8-bit image to fit that pinpoint (`get_patch_output_size`: the constrained side
 *    takes the pinpoint's size, the other `min(ceil(side * scale), pinpoint)`), then centre it on a
 *    black canvas of the pinpoint's size (`_pad_for_patching`: `divmod(diff, 2)`, the odd pixel at
 *    the end);
 * 3. cut the canvas into `crop_size` tiles, row-major (`divide_to_patches`);
 * 4. prepend the base image: the whole image resized (aspect ratio NOT kept) to `size` x `size`;
 * 5. each of these goes through the CLIP steps (resize to shortest edge, centre crop — identities
 *    for tile-sized inputs — rescale, normalise).
 *
 * The result is `[tiles, 3, S, S]` with the base image first, as transformers' `pixel_values[i]`,
 * plus the original `[height, width]` (`image_sizes`) the model needs to unpad the features.
 */
import { EmollmError } from './errors.js';
import {
  checkAbort,
  normalizeToChw,
  resizePil,
  transformImage,
  type ImageProcessorConfig,
  type PipelineOptions,
  type RgbImage,
} from './image_processor.js';

/** A grid pinpoint in pixels: `[height, width]`, as `image_grid_pinpoints` lists them. */
export type GridPinpoint = readonly [number, number];

/** One image after anyres preprocessing. */
export interface AnyresPixels {
  /** `[tiles, 3, tileSize, tileSize]` float32, the base image first. */
  data: Float32Array;
  tiles: number;
  tileSize: number;
  /** The original `[height, width]` (transformers' `image_sizes` entry). */
  imageSize: [number, number];
  /** The pinpoint chosen, `[height, width]`. */
  pinpoint: [number, number];
}

/** Parses `image_grid_pinpoints` (a list of `[height, width]` pairs); throws `ERR_BAD_CONFIG`. */
export function parseGridPinpoints(json: unknown, file?: string): GridPinpoint[] {
  const bad = (): never => {
    throw new EmollmError('ERR_BAD_CONFIG', `${file ?? 'config'}: image_grid_pinpoints must be a non-empty list of [height, width] pairs of positive integers`, file ? { file } : {});
  };
  if (!Array.isArray(json) || json.length === 0) bad();
  return (json as unknown[]).map((p) => {
    if (!Array.isArray(p) || p.length !== 2 || !p.every((x) => Number.isInteger(x) && (x as number) > 0)) bad();
    const q = p as number[];
    return [q[0]!, q[1]!] as const;
  });
}

/** transformers' `select_best_resolution` (Python `int()` truncation and float64 arithmetic). */
export function selectBestResolution(height: number, width: number, pinpoints: readonly GridPinpoint[]): [number, number] {
  if (pinpoints.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'selectBestResolution: no pinpoints');
  let best: [number, number] = [pinpoints[0]![0], pinpoints[0]![1]];
  let maxEffective = 0;
  let minWasted = Infinity;
  for (const [h, w] of pinpoints) {
    const scale = Math.min(w / width, h / height);
    const dw = Math.trunc(width * scale);
    const dh = Math.trunc(height * scale);
    const effective = Math.min(dw * dh, width * height);
    const wasted = w * h - effective;
    if (effective > maxEffective || (effective === maxEffective && wasted < minWasted)) {
      maxEffective = effective;
      minWasted = wasted;
      best = [h, w];
    }
  }
  return best;
}

/** transformers' `get_patch_output_size`: the size the image is resized to before padding. */
export function patchOutputSize(height: number, width: number, target: readonly [number, number]): [number, number] {
  const [th, tw] = target;
  const sw = tw / width;
  const sh = th / height;
  if (sw < sh) return [Math.min(Math.ceil(height * sw), th), tw];
  return [th, Math.min(Math.ceil(width * sh), tw)];
}

/** Centres `img` on a black `height` x `width` canvas (`_pad_for_patching`). */
export function padForPatching(img: RgbImage, height: number, width: number): RgbImage {
  const top = Math.floor((height - img.height) / 2);
  const left = Math.floor((width - img.width) / 2);
  const data = new Uint8Array(height * width * 3);
  for (let y = 0; y < img.height; y++) {
    data.set(img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3), ((y + top) * width + left) * 3);
  }
  return { data, width, height };
}

function crop(img: RgbImage, top: number, left: number, h: number, w: number): RgbImage {
  const data = new Uint8Array(h * w * 3);
  for (let y = 0; y < h; y++) data.set(img.data.subarray(((top + y) * img.width + left) * 3, ((top + y) * img.width + left + w) * 3), y * w * 3);
  return { data, width: w, height: h };
}

/**
 * The anyres pipeline on a decoded 8-bit RGB image. `config`: the CLIP fields of the
 * preprocessor config (size, crop size, resample, rescale, mean/std); the tile size is
 * `cropSize.height` (transformers passes `crop_size["height"]` as the patch size).
 */
export async function anyresPreprocess(
  img: RgbImage,
  config: ImageProcessorConfig,
  pinpoints: readonly GridPinpoint[],
  options: PipelineOptions = {},
): Promise<AnyresPixels> {
  const tile = config.cropSize.height;
  if (config.cropSize.width !== tile) throw new EmollmError('ERR_BAD_CONFIG', 'anyres needs a square crop_size');
  const base = 'shortestEdge' in config.size ? [config.size.shortestEdge, config.size.shortestEdge] : [config.size.height, config.size.width];
  const pin = selectBestResolution(img.height, img.width, pinpoints);
  if (pin[0] % tile !== 0 || pin[1] % tile !== 0)
    throw new EmollmError('ERR_BAD_CONFIG', `grid pinpoint ${pin[0]}x${pin[1]} is not a multiple of the tile size ${tile}`);
  const [rh, rw] = patchOutputSize(img.height, img.width, pin);
  const resized = await resizePil(img, rw, rh, config.resample, options);
  const padded = padForPatching(resized, pin[0], pin[1]);
  checkAbort(options.signal);
  const parts: RgbImage[] = [await resizePil(img, base[1]!, base[0]!, config.resample, options)];
  for (let y = 0; y < pin[0]; y += tile) for (let x = 0; x < pin[1]; x += tile) parts.push(crop(padded, y, x, tile, tile));
  const plane = 3 * tile * tile;
  const data = new Float32Array(parts.length * plane);
  for (let i = 0; i < parts.length; i++) {
    checkAbort(options.signal);
    const t = await transformImage(parts[i]!, { ...config, padToSquare: false }, options);
    if (t.width !== tile || t.height !== tile)
      throw new EmollmError('ERR_BAD_CONFIG', `anyres: a tile came out ${t.height}x${t.width}, expected ${tile}x${tile} (size vs crop_size)`);
    normalizeToChw(t, config, data, i * plane);
  }
  return { data, tiles: parts.length, tileSize: tile, imageSize: [img.height, img.width], pinpoint: pin };
}

/**
 * Decoder positions one image takes (LlavaNextProcessor's expansion of `<image>`): base tile
 * features, the unpadded grid features and one `image_newline` per kept row. `side`: features per
 * tile side (tile size / patch size).
 */
export function anyresTokenCount(height: number, width: number, pinpoints: readonly GridPinpoint[], tileSize: number, side: number): number {
  const [ph, pw] = selectBestResolution(height, width, pinpoints);
  let ch = (ph / tileSize) * side;
  let cw = (pw / tileSize) * side;
  const round7 = (x: number): number => Math.trunc(Math.round(x * 1e7) / 1e7);
  if (width / height > cw / ch) {
    const nh = round7(height * (cw / width));
    ch -= 2 * Math.floor((ch - nh) / 2);
  } else {
    const nw = round7(width * (ch / height));
    cw -= 2 * Math.floor((cw - nw) / 2);
  }
  return side * side + ch * cw + ch;
}
