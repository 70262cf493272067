/**
 * Face detection and facial-expression recognition, offline, in the native core.
 *
 * The networks and their trained weights are face-api's (`@vladmandic/face-api`, MIT; the four
 * TensorFlow.js weight files ship in this package's models/face, with attribution in its SOURCE.md):
 *
 * - **TinyFaceDetector** (`tiny_face_detector_model`, 190 KB): a tiny-YOLOv2 with depthwise-separable
 *   convolutions on a square input (default 416), 5 anchors per cell of a (size/32)^2 grid, box
 *   decoding with sigmoid/exp, a score threshold and greedy IoU non-maximum suppression. Chosen over
 *   face-api's SSD-MobileNetV1 (5.4 MB, slower) and MTCNN (a three-stage cascade) as the smallest and
 *   most tractable detector; it is the one face-api recommends for real-time use.
 * - **FaceExpressionNet** (`face_expression_model`, 320 KB): four dense blocks of depthwise-separable
 *   convolutions on a 112x112 face crop, a fully connected layer and a softmax over
 *   neutral, happy, sad, angry, fearful, disgusted, surprised.
 *
 * Both run in C++ (native/model/face.cpp, kernels/cpu/conv.cpp) and reproduce face-api's own
 * JavaScript pipeline on image tensors: same preprocessing (zero padding to a square, TF.js bilinear
 * resize, mean subtraction), box decoding, NMS and face crops (tests/js/face.test.ts checks parity
 * against face-api running on TF.js's pure-JS CPU backend).
 *
 * ```ts
 * import { detectFaces, FaceAnalyzer } from './face.js';
 * for (const f of await detectFaces('photo.jpg')) console.log(f.box, f.score, f.dominant, f.expressions.happy);
 * // or, loading once:
 * const analyzer = await FaceAnalyzer.load();
 * const faces = await analyzer.analyze(imageBuffer, { inputSize: 512, scoreThreshold: 0.4 });
 * ```
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

import { EmollmError } from './errors.js';
import { decodeImage, type DecodeImageOptions, type ImageInput } from './image.js';
import { native, packageRoot } from './native.js';
import { runtimeOptions, type RuntimeOptions } from './runtime.js';

/** face-api's expression labels, in the network's output order. */
export const FACE_EXPRESSIONS = ['neutral', 'happy', 'sad', 'angry', 'fearful', 'disgusted', 'surprised'] as const;
export type FaceExpression = (typeof FACE_EXPRESSIONS)[number];

export interface FaceBoxRect {
  /** Left edge, image pixels (may be slightly negative or exceed the image for faces at the border). */
  x: number;
  /** Top edge, image pixels. */
  y: number;
  width: number;
  height: number;
}

export interface DetectedFace {
  box: FaceBoxRect;
  /** The detector's confidence, sigmoid(objectness), in (scoreThreshold, 1). */
  score: number;
  /** Softmax probabilities over the 7 expressions (sum 1). */
  expressions: Record<FaceExpression, number>;
  /** The most probable expression. */
  dominant: FaceExpression;
}

/** Options of {@link FaceAnalyzer.analyze} / {@link detectFaces}. Defaults are face-api's. */
export interface DetectFacesOptions extends DecodeImageOptions {
  /** Detector input side, a multiple of 32 (face-api: 416; 128..608 typical; larger finds smaller faces). */
  inputSize?: number;
  /** Minimum detection score, in [0, 1). Default 0.5. */
  scoreThreshold?: number;
  /** NMS: a box overlapping a better one with IoU > this is dropped. Default 0.4. */
  iouThreshold?: number;
}

/** Where face-api's weights come from. */
export interface FaceModelOptions extends RuntimeOptions {
  /** Folder holding `tiny_face_detector_model-weights_manifest.json`, `face_expression_model-…` and their .bin files. Default: the copies shipped in this package ({@link faceModelDir}). */
  modelDir?: string;
}

/** Dequantised f32 weights: names prefixed `detector/` and `expression/`. */
export interface FaceWeights {
  weights: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
}

/** A face box from the native detector. */
export interface NativeFaceBox {
  x: number;
  y: number;
  width: number;
  height: number;
  score: number;
  expressions?: Float32Array | null;
}

export interface NativeDetectOptions {
  inputSize?: number;
  scoreThreshold?: number;
  iouThreshold?: number;
}

/** The native FaceModels object (native/addon/face_binding.cpp). */
export interface NativeFaceModels {
  detect(rgb: Uint8Array, width: number, height: number, options?: NativeDetectOptions): Promise<NativeFaceBox[]>;
  expressions(crops: Float32Array, n: number): Promise<Float32Array>;
  analyze(rgb: Uint8Array, width: number, height: number, options?: NativeDetectOptions): Promise<NativeFaceBox[]>;
  cropFaces(rgb: Uint8Array, width: number, height: number, boxes: Float64Array): { crops: Float32Array; valid: Uint8Array };
  preprocess(rgb: Uint8Array, width: number, height: number, size: number, center: boolean): Float32Array;
  detectorForward(input: Float32Array, size: number): Promise<Float32Array>;
}

interface FaceBinding {
  createFaceModels(
    weights: Record<string, Float32Array>,
    shapes: Record<string, number[]>,
    runtime?: { device?: string; threads?: number },
  ): NativeFaceModels;
}

const DETECTOR_MODEL = 'tiny_face_detector_model';
const EXPRESSION_MODEL = 'face_expression_model';

/** The face weights shipped in this package (models/face: face-api's MIT weights, see its SOURCE.md). */
export function faceModelDir(): string {
  return join(packageRoot, 'models', 'face');
}

/** The `model/` folder of an installed `@vladmandic/face-api` package (a development dependency, for parity tests). */
export function faceApiModelDir(): string {
  const require = createRequire(import.meta.url);
  let pkg: string;
  try {
    pkg = require.resolve('@vladmandic/face-api/package.json');
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', 'the face models come from the npm package @vladmandic/face-api, which is not installed (npm install @vladmandic/face-api)', { cause });
  }
  return join(dirname(pkg), 'model');
}

interface ManifestWeight {
  name: string;
  shape: number[];
  dtype: string;
  quantization?: { dtype: string; scale?: number; min?: number };
}

const BYTES: Record<string, number> = { float32: 4, int32: 4, uint8: 1, uint16: 2, float16: 2 };

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/**
 * Reads a TensorFlow.js weight manifest (`<name>-weights_manifest.json` + its shard files) and
 * dequantises every tensor to f32 as tfjs does (`q * scale + min` for uint8/uint16, IEEE half for
 * float16).
 */
export async function loadTfjsWeights(dir: string, name: string): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
  const manifestPath = join(dir, `${name}-weights_manifest.json`);
  let manifest: Array<{ paths: string[]; weights: ManifestWeight[] }>;
  try {
    manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code === 'ENOENT' ? 'ERR_FILE_NOT_FOUND' : 'ERR_MALFORMED_FILE';
    throw new EmollmError(code, `cannot read the weight manifest ${manifestPath}: ${(cause as Error).message}`, { file: manifestPath, cause });
  }
  if (!Array.isArray(manifest)) throw new EmollmError('ERR_MALFORMED_FILE', 'a weight manifest must be a JSON array', { file: manifestPath });
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const group of manifest) {
    const shards = await Promise.all(group.paths.map((p) => readFile(join(dir, p))));
    const buf = Buffer.concat(shards);
    let off = 0;
    for (const w of group.weights) {
      const n = w.shape.reduce((a, b) => a * b, 1);
      const stored = w.quantization?.dtype ?? w.dtype;
      const size = BYTES[stored];
      if (size === undefined) throw new EmollmError('ERR_UNSUPPORTED', `weight ${w.name}: dtype ${stored} is not supported`, { file: manifestPath });
      if (off + n * size > buf.length) throw new EmollmError('ERR_MALFORMED_FILE', `weight ${w.name} runs past the end of the weight files`, { file: manifestPath });
      const data = new Float32Array(n);
      const q = w.quantization;
      for (let i = 0; i < n; i++) {
        const p = off + i * size;
        let v: number;
        if (stored === 'uint8') v = buf.readUInt8(p);
        else if (stored === 'uint16') v = buf.readUInt16LE(p);
        else if (stored === 'float16') v = halfToFloat(buf.readUInt16LE(p));
        else if (stored === 'int32') v = buf.readInt32LE(p);
        else v = buf.readFloatLE(p);
        if (q && (stored === 'uint8' || stored === 'uint16')) v = v * (q.scale ?? 1) + (q.min ?? 0);
        data[i] = v;
      }
      off += n * size;
      out.set(w.name, { data, shape: w.shape });
    }
  }
  return out;
}

/** Loads and dequantises the detector and expression weights, names prefixed for createFaceModels. */
export async function loadFaceWeights(options: FaceModelOptions = {}): Promise<FaceWeights> {
  const dir = options.modelDir ?? faceModelDir();
  const weights: Record<string, Float32Array> = {};
  const shapes: Record<string, number[]> = {};
  for (const [prefix, model] of [['detector', DETECTOR_MODEL], ['expression', EXPRESSION_MODEL]] as const) {
    for (const [name, t] of await loadTfjsWeights(dir, model)) {
      weights[`${prefix}/${name}`] = t.data;
      shapes[`${prefix}/${name}`] = t.shape;
    }
  }
  return { weights, shapes };
}

function checkOptions(o: DetectFacesOptions): NativeDetectOptions {
  const inputSize = o.inputSize ?? 416;
  const scoreThreshold = o.scoreThreshold ?? 0.5;
  const iouThreshold = o.iouThreshold ?? 0.4;
  if (!Number.isInteger(inputSize) || inputSize % 32 !== 0 || inputSize < 64 || inputSize > 2048)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `inputSize must be a multiple of 32 in [64, 2048], got ${inputSize}`);
  if (!(scoreThreshold >= 0 && scoreThreshold < 1)) throw new EmollmError('ERR_INVALID_ARGUMENT', `scoreThreshold must be in [0, 1), got ${scoreThreshold}`);
  if (!(iouThreshold >= 0 && iouThreshold <= 1)) throw new EmollmError('ERR_INVALID_ARGUMENT', `iouThreshold must be in [0, 1], got ${iouThreshold}`);
  return { inputSize, scoreThreshold, iouThreshold };
}

function toFace(b: NativeFaceBox, probs: Float32Array): DetectedFace {
  const expressions = {} as Record<FaceExpression, number>;
  let dominant: FaceExpression = FACE_EXPRESSIONS[0];
  FACE_EXPRESSIONS.forEach((label, i) => {
    expressions[label] = probs[i] ?? 0;
    if (expressions[label] > expressions[dominant]) dominant = label;
  });
  return { box: { x: b.x, y: b.y, width: b.width, height: b.height }, score: b.score, expressions, dominant };
}

/** Detector + expression network, loaded once; safe to call concurrently. */
export class FaceAnalyzer {
  private native: NativeFaceModels | undefined;

  constructor(models: NativeFaceModels) {
    this.native = models;
  }

  /** The native models (advanced use: raw detection, crops, network-level calls). */
  get models(): NativeFaceModels {
    if (!this.native) throw new EmollmError('ERR_INVALID_ARGUMENT', 'the face analyzer is closed');
    return this.native;
  }

  /**
   * Releases the analyzer: later calls throw. The native weights (about 2 MB) are freed by the
   * garbage collector once no call in flight holds them. Safe to call twice.
   */
  async close(): Promise<void> {
    this.native = undefined;
  }

  /** `await using analyzer = await FaceAnalyzer.load()` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Loads face-api's weights (the copies shipped in this package unless `modelDir` is given). */
  static async load(options: FaceModelOptions = {}): Promise<FaceAnalyzer> {
    const runtime = runtimeOptions(options, 'FaceAnalyzer.load options');
    const { weights, shapes } = await loadFaceWeights(options);
    const binding = native() as unknown as FaceBinding;
    return new FaceAnalyzer(binding.createFaceModels(weights, shapes, runtime));
  }

  /** Face boxes only (no expressions), best first. */
  async detect(image: ImageInput, options: DetectFacesOptions = {}): Promise<Array<{ box: FaceBoxRect; score: number }>> {
    const models = this.models; // a closed analyzer fails before any decoding
    const opts = checkOptions(options);
    const img = await decodeImage(image, options);
    const boxes = await models.detect(img.data, img.width, img.height, opts);
    return boxes.map((b) => ({ box: { x: b.x, y: b.y, width: b.width, height: b.height }, score: b.score }));
  }

  /**
   * Detects faces and classifies each one's expression, best detection first. Faces whose box lies
   * entirely outside the image after clipping (no pixels to classify) are left out.
   */
  async analyze(image: ImageInput, options: DetectFacesOptions = {}): Promise<DetectedFace[]> {
    const models = this.models;
    const opts = checkOptions(options);
    const img = await decodeImage(image, options);
    const boxes = await models.analyze(img.data, img.width, img.height, opts);
    return boxes.filter((b) => b.expressions).map((b) => toFace(b, b.expressions as Float32Array));
  }
}

let shared: Promise<FaceAnalyzer> | undefined;

/** {@link FaceAnalyzer.analyze} on a process-wide analyzer loaded on first use. */
export async function detectFaces(image: ImageInput, options: DetectFacesOptions = {}): Promise<DetectedFace[]> {
  shared ??= FaceAnalyzer.load().catch((e: unknown) => {
    shared = undefined;
    throw e;
  });
  return (await shared).analyze(image, options);
}
