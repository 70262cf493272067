// The native LLaVA surface (native/addon/model_binding.cpp) on shared/models/llava-tiny-hf, whose
// reference outputs transformers computed (see its SOURCE.md): loadModel of a llava folder,
// info().vision, encodeImages, ctx.evalMultimodal (expanded and unexpanded image tokens),
// ctx.generate with images, ctx.score, and the typed errors. The public TypeScript API builds on these.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { f32, shared, sharedModel } from './helpers/vlm_fixtures.js';
import { EmollmError } from '../../lib/index.js';
import { native } from '../../lib/native.js';

const { dir, have } = sharedModel('llava-tiny-hf', 'reference/logits.f32', 'llava native tests');

interface VisionInfo { imageSize: number; patchSize: number; nImageTokens: number; imageTokenId: number; mean?: number[]; std?: number[] }
interface NCtx {
  evalMultimodal(tokens: Int32Array, images: Float32Array | null, o?: { allLogits?: boolean }): Promise<Float32Array>;
  generate(p: Int32Array, o: Record<string, unknown>, cb?: (ids: Int32Array) => void, images?: Float32Array | null): Promise<{ tokens: Int32Array; stopReason: string }>;
  score(prefix: Int32Array, images: Float32Array | null, conts: Int32Array[]): Promise<{ logprobs: number[]; tokenLogprobs: Float64Array[] }>;
  close(): Promise<void>;
  readonly nPast: number;
}
interface NModel {
  info(): { nEmbd: number; nVocab: number; vision?: VisionInfo };
  encodeImages(pixels: Float32Array, b: number): Promise<Float32Array>;
  abortEncodes(): void;
  createContext(o?: { nCtx?: number }): NCtx;
  close(): Promise<void>;
}
const loadModel = (p: string, o?: Record<string, unknown>) =>
  (native() as unknown as { loadModel(p: string, o?: Record<string, unknown>): Promise<NModel> }).loadModel(p, o);

describe.skipIf(!have)('LLaVA native binding (llava-tiny-hf)', () => {
  let model: NModel;
  let expected: { input_ids_unexpanded: number[]; input_ids_expanded: number[]; greedy_new_tokens: number[] };
  let pixels: Float32Array;
  let refLogits: Float32Array;
  const V = 32064;

  beforeAll(async () => {
    model = await loadModel(dir, { nCtx: 128 });
    expected = JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8'));
    pixels = f32(join(dir, 'reference', 'pixel_values.f32'));
    refLogits = f32(join(dir, 'reference', 'logits.f32'));
  });
  afterAll(async () => {
    await model?.close();
  });

  it('reports the vision tower', () => {
    const v = model.info().vision!;
    expect(v).toMatchObject({ imageSize: 42, patchSize: 14, nImageTokens: 9, imageTokenId: 32000 });
    expect(v.mean).toHaveLength(3);
    expect(v.std![0]).toBeCloseTo(0.26862954, 6);
  });

  it('matches transformers logits at every position, expanded or not', async () => {
    const feats = await model.encodeImages(pixels, 1);
    expect(feats.length).toBe(9 * 64);
    const ctx = model.createContext();
    for (const ids of [expected.input_ids_unexpanded, expected.input_ids_expanded]) {
      const logits = await ctx.evalMultimodal(Int32Array.from(ids), feats, { allLogits: true });
      expect(logits.length).toBe(refLogits.length);
      let m = 0;
      for (let i = 0; i < logits.length; i++) m = Math.max(m, Math.abs(logits[i]! - refLogits[i]!));
      expect(m).toBeLessThan(1e-4);
    }
    const last = await ctx.evalMultimodal(Int32Array.from(expected.input_ids_unexpanded), feats);
    expect(last.length).toBe(V);
    expect(ctx.nPast).toBe(30);
    await ctx.close();
  });

  it('generates the greedy tokens with the image', async () => {
    const feats = await model.encodeImages(pixels, 1);
    const ctx = model.createContext();
    const seen: number[] = [];
    const r = await ctx.generate(Int32Array.from(expected.input_ids_unexpanded), { temperature: 0, maxTokens: 16 },
      (ids) => seen.push(...ids), feats);
    expect(Array.from(r.tokens)).toEqual(expected.greedy_new_tokens);
    expect(seen).toEqual(expected.greedy_new_tokens);
    await ctx.close();
  });

  it('scores continuations', async () => {
    const feats = await model.encodeImages(pixels, 1);
    const ctx = model.createContext();
    const ids = expected.input_ids_unexpanded;  // image at 5; prefix = first 12 raw ids (20 expanded)
    const prefix = Int32Array.from(ids.slice(0, 12));
    const cont = Int32Array.from(ids.slice(12));
    const r = await ctx.score(prefix, feats, [cont, new Int32Array(0)]);
    expect(r.logprobs).toHaveLength(2);
    expect(r.tokenLogprobs[0]).toBeInstanceOf(Float64Array);
    expect(r.tokenLogprobs[0]!.length).toBe(10);
    let ref = 0;
    for (let j = 0; j < 10; j++) {
      const row = refLogits.subarray((19 + j) * V, (20 + j) * V);
      let mx = -Infinity;
      for (const x of row) mx = Math.max(mx, x);
      let s = 0;
      for (const x of row) s += Math.exp(x - mx);
      const lp = row[cont[j]!]! - mx - Math.log(s);
      expect(Math.abs(r.tokenLogprobs[0]![j]! - lp)).toBeLessThan(2e-4);
      ref += lp;
    }
    expect(Math.abs(r.logprobs[0]! - ref)).toBeLessThan(1e-3);
    expect(r.logprobs[1]).toBe(0);
    expect(ctx.nPast).toBe(20);
    await ctx.close();
  });

  it('batches images and rejects bad counts with typed errors', async () => {
    const two = new Float32Array(pixels.length * 2);
    two.set(pixels);
    two.set(pixels.map((x) => -x), pixels.length);
    const feats2 = await model.encodeImages(two, 2);
    expect(feats2.length).toBe(2 * 9 * 64);
    const single = await model.encodeImages(pixels, 1);
    let m = 0;
    for (let i = 0; i < single.length; i++) m = Math.max(m, Math.abs(single[i]! - feats2[i]!));
    expect(m).toBeLessThan(1e-5);
    const ctx = model.createContext();
    const ids = Int32Array.from(expected.input_ids_unexpanded);
    await expect(ctx.evalMultimodal(ids, feats2)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: expect.stringContaining('expected 2 (one per image) or 18 (9 per image)'),
    });
    await expect(ctx.evalMultimodal(ids, null)).rejects.toBeInstanceOf(EmollmError);
    expect(() => ctx.evalMultimodal(ids, new Float32Array(10))).toThrow(/multiple of nImageTokens/);
    expect(() => model.encodeImages(new Float32Array(7), 1)).toThrow(/expected B/);
    await ctx.close();
  });
});

const stories = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
describe.skipIf(!existsSync(stories))('a text-only model through the LLaVA surface', () => {
  it('refuses images with ERR_UNSUPPORTED and still evaluates text', async () => {
    const m = await loadModel(stories, { nCtx: 64 });
    expect(m.info().vision).toBeUndefined();
    expect(() => m.encodeImages(new Float32Array(3), 1)).toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED' }));
    const ctx = m.createContext();
    expect(() => ctx.evalMultimodal(Int32Array.from([1, 2]), new Float32Array(4))).toThrow(
      expect.objectContaining({ code: 'ERR_UNSUPPORTED' }),
    );
    expect((await ctx.evalMultimodal(Int32Array.from([1, 403]), null)).length).toBe(512);
    const r = await ctx.score(Int32Array.from([1, 403]), null, [Int32Array.from([407, 261])]);
    expect(r.tokenLogprobs[0]!.length).toBe(2);
    expect(r.logprobs[0]).toBeLessThan(0);
    await m.close();
  });
});
