/**
 * Visual inputs of the model families whose token count follows the input's size:
 *
 * - LLaVA-NeXT (`vision.family === 'llava_next'`): each image goes through the anyres
 *   preprocessing (`image_processor_llava_next.ts`) and the native `encodeAnyres`, which packs
 *   base + unpadded tile features + `image_newline` rows;
 * - Qwen2-VL (`'qwen2_vl'`): images and videos (frames) become flattened temporal patches
 *   (`image_processor_qwen2_vl.ts`) for the native `encodePatches` (vision tower + 2x2 merger).
 *
 * Both return features carrying `tokenCounts` (and, for Qwen2-VL, `grids`, which the M-RoPE
 * positions need); eval/generate/score read them back. Visuals are encoded in prompt order.
 */
import { EmollmError } from './errors.js';
import { decodeImage, type ImageInput } from './image.js';
import type { ImageProcessorConfig } from './image_processor.js';
import { anyresPreprocess, type GridPinpoint } from './image_processor_llava_next.js';
import { qwen2vlPatches, type Qwen2VLProcessorConfig } from './image_processor_qwen2_vl.js';

/** A video part of a chat message (Qwen2-VL): its frames in order, sampled by the caller. */
export interface VideoPart {
  type: 'video';
  /** Frames as image inputs (paths, encoded buffers or raw pixels), in time order. */
  frames: readonly ImageInput[];
}

/** One visual of a prompt, in order. */
export type Visual = { kind: 'image'; input: ImageInput } | { kind: 'video'; frames: readonly ImageInput[] };

/** Encoded visuals: features plus per-visual token counts (and Qwen2-VL grids). */
export type VisualFeatures = Float32Array & { tokenCounts?: Int32Array; grids?: Int32Array };

/** The native calls this module needs. */
export interface NativeVisualEncoder {
  encodeAnyres?(pixels: Float32Array, sizes: Int32Array): Promise<VisualFeatures>;
  encodePatches?(patches: Float32Array, grids: Int32Array): Promise<VisualFeatures>;
}

/** How a model family's visuals are preprocessed. */
export type VisualPreprocessing =
  | { family: 'llava_next'; config: ImageProcessorConfig; pinpoints: readonly GridPinpoint[] }
  | { family: 'qwen2_vl'; config: Qwen2VLProcessorConfig };

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Preprocesses and encodes `visuals` (in order) for a LLaVA-NeXT or Qwen2-VL model. */
export async function encodeVisuals(
  native: NativeVisualEncoder,
  pre: VisualPreprocessing,
  visuals: readonly Visual[],
  signal?: AbortSignal,
): Promise<VisualFeatures> {
  if (visuals.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'no images or videos to encode');
  const opts = signal ? { signal } : {};
  if (pre.family === 'llava_next') {
    if (!native.encodeAnyres) throw new EmollmError('ERR_UNSUPPORTED', 'the model has no anyres encoder');
    const tiles: Float32Array[] = [];
    const sizes: number[] = [];
    for (const v of visuals) {
      if (v.kind !== 'image') throw new EmollmError('ERR_UNSUPPORTED', 'LLaVA-NeXT takes images, not videos (pass the frames as images)');
      const px = await anyresPreprocess(await decodeImage(v.input, opts), pre.config, pre.pinpoints, opts);
      tiles.push(px.data);
      sizes.push(px.imageSize[0], px.imageSize[1]);
    }
    return native.encodeAnyres(concat(tiles), Int32Array.from(sizes));
  }
  if (!native.encodePatches) throw new EmollmError('ERR_UNSUPPORTED', 'the model has no patch encoder');
  const patches: Float32Array[] = [];
  const grids: number[] = [];
  for (const v of visuals) {
    const inputs = v.kind === 'image' ? [v.input] : v.frames;
    if (inputs.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'a video needs at least one frame');
    const frames = [];
    for (const f of inputs) frames.push(await decodeImage(f, opts));
    const p = await qwen2vlPatches(frames, pre.config, opts);
    patches.push(p.data);
    grids.push(...p.grid);
  }
  return native.encodePatches(concat(patches), Int32Array.from(grids));
}
