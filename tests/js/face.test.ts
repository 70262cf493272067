// Parity of the native face detector + expression network (lib/face.ts, native/model/face.cpp)
// with face-api's own JavaScript (@vladmandic/face-api's CommonJS build on TensorFlow.js's pure-JS
// 'cpu' backend), on the six demo photos that ship in @vladmandic/face-api/demo.
//
//   1. preprocessing: our pad-to-square + bilinear resize equals face-api's NetInput.toBatchTensor
//      (max |diff| <= 1e-3 pixel levels; in practice 0).
//   2. network: both detectors fed the SAME preprocessed [416, 416, 3] tensor; raw output grids
//      agree to 2e-3 absolute (logits of magnitude ~10).
//   3. full pipeline at the same options (inputSize 416, scoreThreshold 0.5): same number of
//      faces, each box IoU >= 0.95 with face-api's (in practice > 0.9999), score within 1e-4,
//      expression probabilities within 1e-3.
//   4. expressions on the same crops (our crops of face-api's boxes, equal to face-api's own crops):
//      probabilities within 1e-3.
// The suite is skipped, with the reason printed, when face-api or @tensorflow/tfjs cannot be
// loaded (both are devDependencies; face-api is also a runtime dependency for its weights).
import Module, { createRequire } from 'node:module';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { FaceAnalyzer, FACE_EXPRESSIONS, faceApiModelDir, type DetectedFace } from '../../lib/face.js';
import { decodeImage } from '../../lib/image.js';
import type { RgbImage } from '../../lib/image_processor.js';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Any = any;

interface FaceApiEnv {
  tf: Any;
  faceapi: Any;
}

// face-api's Node builds need tfjs-node (native) or tfjs-backend-wasm; the wasm build only
// re-exports the backend module, so a stub stands in for it and the 'cpu' backend runs instead.
async function loadFaceApi(): Promise<FaceApiEnv | string> {
  const require = createRequire(import.meta.url);
  const M = Module as unknown as { _load: (req: string, ...rest: unknown[]) => unknown };
  const orig = M._load;
  M._load = function (req: string, ...rest: unknown[]) {
    if (req === '@tensorflow/tfjs-backend-wasm') return { setWasmPaths() {} };
    return orig.call(this, req, ...rest);
  };
  try {
    const tf = require('@tensorflow/tfjs');
    const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
    await tf.setBackend('cpu');
    await tf.ready();
    if (tf.getBackend() !== 'cpu') return `tfjs backend is ${tf.getBackend()}, expected cpu`;
    const dir = faceApiModelDir();
    await faceapi.nets.tinyFaceDetector.loadFromDisk(dir);
    await faceapi.nets.faceExpressionNet.loadFromDisk(dir);
    return { tf, faceapi };
  } catch (e) {
    return `face-api / @tensorflow/tfjs not loadable: ${(e as Error).message}`;
  } finally {
    M._load = orig;
  }
}

const env = await loadFaceApi();
if (typeof env === 'string') console.warn(`face.test.ts: parity tests SKIPPED: ${env}`);
const SAMPLES = [1, 2, 3, 4, 5, 6].map((i) => `sample${i}.jpg`);
const INPUT_SIZE = 416;
const SCORE = 0.5;

function iou(a: { x: number; y: number; width: number; height: number }, b: { x: number; y: number; width: number; height: number }) {
  const iw = Math.max(0, Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x));
  const ih = Math.max(0, Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y));
  const inter = iw * ih;
  return inter / (a.width * a.height + b.width * b.height - inter);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

interface RefFace {
  box: { x: number; y: number; width: number; height: number };
  score: number;
  expressions: number[];
}

interface PhotoResult {
  name: string;
  image: RgbImage;
  preprocessDiff: number;
  refGrid: Float32Array;
  refFaces: RefFace[];
  refCrops: Float32Array[]; // face-api's own 112x112 crops (toBatchTensor output)
  refCropExpr: number[][]; // face-api's expressions on our crops
}

describe.skipIf(typeof env === 'string')('face parity with face-api (TF.js cpu backend)', () => {
  const { tf, faceapi } = env as FaceApiEnv;
  let analyzer: FaceAnalyzer;
  const photos: PhotoResult[] = [];

  beforeAll(async () => {
    analyzer = await FaceAnalyzer.load();
    const demo = join(faceApiModelDir(), '..', 'demo');
    for (const name of SAMPLES) {
      const image = await decodeImage(join(demo, name));
      const t = tf.tensor3d(Int32Array.from(image.data), [image.height, image.width, 3], 'int32');
      // 1. preprocessing
      const ours = analyzer.models.preprocess(image.data, image.width, image.height, INPUT_SIZE, false);
      const batch = new faceapi.NetInput([t]).toBatchTensor(INPUT_SIZE, false);
      const theirs = batch.dataSync() as Float32Array;
      batch.dispose();
      // 2. network on the same input (ours): face-api's forwardInput on a [1, 416, 416, 3] tensor
      const input = tf.tensor4d(ours, [1, INPUT_SIZE, INPUT_SIZE, 3]);
      const out = faceapi.nets.tinyFaceDetector.forwardInput(new faceapi.NetInput([input]), INPUT_SIZE);
      const refGrid = Float32Array.from(out.dataSync() as Float32Array);
      out.dispose();
      input.dispose();
      // 3. full pipeline
      const opts = new faceapi.TinyFaceDetectorOptions({ inputSize: INPUT_SIZE, scoreThreshold: SCORE });
      const res = await faceapi.detectAllFaces(t, opts).withFaceExpressions();
      const refFaces: RefFace[] = res.map((r: Any) => ({
        box: { x: r.detection.box.x, y: r.detection.box.y, width: r.detection.box.width, height: r.detection.box.height },
        score: r.detection.score,
        expressions: FACE_EXPRESSIONS.map((l) => r.expressions[l] as number),
      }));
      // 4. crops: face-api's own crops of its boxes, and its expressions on our crops
      const faceTensors = await faceapi.extractFaceTensors(t, res.map((r: Any) => r.detection));
      const refCrops: Float32Array[] = [];
      for (const ft of faceTensors) {
        const b = new faceapi.NetInput([ft]).toBatchTensor(112, true);
        refCrops.push(Float32Array.from(b.dataSync() as Float32Array));
        b.dispose();
        ft.dispose();
      }
      const boxes = Float64Array.from(refFaces.flatMap((f) => [f.box.x, f.box.y, f.box.width, f.box.height]));
      const { crops } = analyzer.models.cropFaces(image.data, image.width, image.height, boxes);
      const refCropExpr: number[][] = [];
      for (let k = 0; k < refFaces.length; k++) {
        const ct = tf.tensor3d(crops.subarray(k * 112 * 112 * 3, (k + 1) * 112 * 112 * 3), [112, 112, 3]);
        const e = await faceapi.nets.faceExpressionNet.predictExpressions(ct);
        refCropExpr.push(FACE_EXPRESSIONS.map((l) => e[l] as number));
        ct.dispose();
      }
      t.dispose();
      photos.push({ name, image, preprocessDiff: maxAbsDiff(ours, theirs), refGrid, refFaces, refCrops, refCropExpr });
    }
  }, 900_000);

  it('preprocesses exactly as face-api (pad to square + tf bilinear resize)', () => {
    for (const p of photos) expect(p.preprocessDiff, p.name).toBeLessThanOrEqual(1e-3);
    console.log(`face parity: preprocessing max |diff| ${Math.max(...photos.map((p) => p.preprocessDiff)).toExponential(2)}`);
  });

  it('runs the detector network as face-api on the same input tensor', async () => {
    let worst = 0;
    for (const p of photos) {
      const input = analyzer.models.preprocess(p.image.data, p.image.width, p.image.height, INPUT_SIZE, false);
      const grid = await analyzer.models.detectorForward(input, INPUT_SIZE);
      expect(grid.length).toBe((INPUT_SIZE / 32) ** 2 * 25);
      const d = maxAbsDiff(grid, p.refGrid);
      worst = Math.max(worst, d);
      expect(d, p.name).toBeLessThanOrEqual(2e-3);
    }
    console.log(`face parity: detector output grid (same input) max |diff| ${worst.toExponential(2)}`);
  });

  it('finds the same faces with the same scores and expressions (full pipeline)', async () => {
    let worstIou = 1;
    let worstExpr = 0;
    let total = 0;
    for (const p of photos) {
      const faces: DetectedFace[] = await analyzer.analyze(
        { data: p.image.data, width: p.image.width, height: p.image.height, channels: 3 },
        { inputSize: INPUT_SIZE, scoreThreshold: SCORE },
      );
      expect(faces.length, p.name).toBe(p.refFaces.length);
      expect(faces.length, p.name).toBeGreaterThan(0);
      total += faces.length;
      faces.forEach((f, k) => {
        const r = p.refFaces[k]!;
        const o = iou(f.box, r.box);
        worstIou = Math.min(worstIou, o);
        expect(o, `${p.name} face ${k} IoU`).toBeGreaterThanOrEqual(0.95);
        expect(Math.abs(f.score - r.score), `${p.name} face ${k} score`).toBeLessThanOrEqual(1e-4);
        const probs = FACE_EXPRESSIONS.map((l) => f.expressions[l]);
        const d = maxAbsDiff(probs, r.expressions);
        worstExpr = Math.max(worstExpr, d);
        expect(d, `${p.name} face ${k} expressions`).toBeLessThanOrEqual(1e-3);
        expect(probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
        expect(f.expressions[f.dominant]).toBe(Math.max(...probs));
      });
    }
    console.log(`face parity: ${total} faces on ${photos.length} photos, worst IoU ${worstIou.toFixed(6)}, worst expression diff ${worstExpr.toExponential(2)}`);
  });

  it('crops faces as face-api and classifies the same crops identically', async () => {
    let worstCrop = 0;
    let worstProb = 0;
    for (const p of photos) {
      const boxes = Float64Array.from(p.refFaces.flatMap((f) => [f.box.x, f.box.y, f.box.width, f.box.height]));
      const { crops, valid } = analyzer.models.cropFaces(p.image.data, p.image.width, p.image.height, boxes);
      expect(Array.from(valid).every((v) => v === 1)).toBe(true);
      expect(p.refCrops.length).toBe(p.refFaces.length);
      p.refCrops.forEach((rc, k) => {
        const d = maxAbsDiff(crops.subarray(k * 112 * 112 * 3, (k + 1) * 112 * 112 * 3), rc);
        worstCrop = Math.max(worstCrop, d);
        expect(d, `${p.name} crop ${k}`).toBeLessThanOrEqual(1e-3);
      });
      const probs = await analyzer.models.expressions(crops, p.refFaces.length);
      p.refCropExpr.forEach((re, k) => {
        const d = maxAbsDiff(probs.subarray(k * 7, (k + 1) * 7), re);
        worstProb = Math.max(worstProb, d);
        expect(d, `${p.name} face ${k}`).toBeLessThanOrEqual(1e-3);
      });
    }
    console.log(`face parity: crops max |diff| ${worstCrop.toExponential(2)}, expressions on the same crops max |diff| ${worstProb.toExponential(2)}`);
  });
});

describe('face API', () => {
  it('validates options', async () => {
    const analyzer = await FaceAnalyzer.load();
    const img = { data: new Uint8Array(64 * 48 * 3).fill(128), width: 64, height: 48, channels: 3 as const };
    await expect(analyzer.analyze(img, { inputSize: 100 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(analyzer.analyze(img, { scoreThreshold: 1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(() => analyzer.models.detect(new Uint8Array(10), 64, 48)).toThrow(/width\*height\*3/);
    // a flat grey image has no faces
    expect(await analyzer.analyze(img)).toEqual([]);
    expect(await analyzer.detect(img, { inputSize: 128 })).toEqual([]);
  });
});
