// Prompt reuse across calls (native/model/scheduler.h): Model.logits() runs through the sequence
// scheduler, so a scoreOptions / generate of the same prompt and image after it starts from the
// cached prompt, with its last position's logits (no pass at all before the options), and scores
// exactly (bit for bit) what a model with nothing cached scores. Images are matched by content (the
// pseudo-ids hash the features): a different image, or a changed prompt token, reuses only the
// positions before it. The stats (prefillTokens, reusedTokens, reusedLogits) prove what was and
// was not computed again. llava-tiny-hf (../shared), with transformers' logits as the reference
// for the scheduler's logits() path.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { f32, maxAbsDiff, sharedModel } from './helpers/vlm_fixtures.js';
import { loadModel, type ImageFeatures, type Model, type ScoreResult, type SequenceStats } from '../../lib/index.js';

const { dir: tiny, have: haveTiny } = sharedModel('llava-tiny-hf', 'model.safetensors', 'prompt reuse tests');
const OPTIONS = ['happy', 'sad', 'very angry', 'surprised and afraid'];

const delta = (a: SequenceStats, b: SequenceStats) => ({
  prefillTokens: b.prefillTokens - a.prefillTokens,
  reusedTokens: b.reusedTokens - a.reusedTokens,
  reusedLogits: b.reusedLogits - a.reusedLogits,
});
const logprobs = (r: ScoreResult): number[][] => r.options.map((o) => o.tokenLogprobs);
function maxScoreDiff(a: ScoreResult, b: ScoreResult): number {
  let m = 0;
  a.options.forEach((o, i) => o.tokenLogprobs.forEach((v, j) => (m = Math.max(m, Math.abs(v - b.options[i]!.tokenLogprobs[j]!)))));
  return m;
}

describe.skipIf(!haveTiny)('prompt reuse between logits(), scoreOptions() and generate() (llava-tiny-hf)', () => {
  const expected = haveTiny
    ? (JSON.parse(readFileSync(join(tiny, 'reference', 'expected.json'), 'utf8')) as {
        input_ids_unexpanded: number[];
        greedy_new_tokens: number[];
        logits_shape: [number, number];
      })
    : undefined;
  let model: Model; // the one whose cache is reused
  let fresh: Model; // a second copy: the same calls from a cache that does not hold the prompt
  let image: ImageFeatures;
  let other: ImageFeatures; // another image: one feature changed, the same shape and placeholder
  let tokens: number[];
  let positions: number; // the prompt's positions once the image is spliced in
  let imageAt: number; // the image placeholder's index

  beforeAll(async () => {
    model = await loadModel(tiny, { threads: 1 });
    fresh = await loadModel(tiny, { threads: 1 });
    image = await model.encodePixels(f32(join(tiny, 'reference', 'pixel_values.f32')), 1);
    other = Float32Array.from(image) as ImageFeatures;
    other[3] = other[3]! + 0.25;
    tokens = expected!.input_ids_unexpanded;
    imageAt = tokens.indexOf(model.info.vision!.imageTokenId!);
    positions = tokens.length - 1 + model.info.vision!.nImageTokens!;
  });
  afterAll(async () => {
    await model?.close();
    await fresh?.close();
  });

  it("logits() (the scheduler's path) equals transformers' last position within 1e-4, and prefills every position once", async () => {
    const [rows, V] = expected!.logits_shape;
    const ref = f32(join(tiny, 'reference', 'logits.f32')).subarray((rows - 1) * V, rows * V);
    const s0 = model.stats();
    const last = await model.logits({ tokens, images: image });
    expect(maxAbsDiff(last, ref)).toBeLessThanOrEqual(1e-4);
    expect(delta(s0, model.stats())).toEqual({ prefillTokens: positions, reusedTokens: 0, reusedLogits: 0 });
    // the same call again: nothing evaluated, the same logits bit for bit
    const s1 = model.stats();
    expect(await model.logits({ tokens, images: image })).toEqual(last);
    expect(delta(s1, model.stats())).toEqual({ prefillTokens: 0, reusedTokens: positions, reusedLogits: 1 });
  });

  it('scoreOptions after logits() of the same prompt evaluates no prompt position and scores bit-equal to an uncached model', async () => {
    await model.logits({ tokens, images: image });
    const s0 = model.stats();
    const warm = await model.scoreOptions({ tokens, images: image }, OPTIONS);
    const d = delta(s0, model.stats());
    expect(d).toEqual({ prefillTokens: 0, reusedTokens: positions, reusedLogits: 1 });
    const f0 = fresh.stats();
    const cold = await fresh.scoreOptions({ tokens, images: image }, OPTIONS);
    expect(delta(f0, fresh.stats())).toEqual({ prefillTokens: positions, reusedTokens: 0, reusedLogits: 0 });
    // the same chunks, the same rows per pass: the same bits (tolerance 0)
    expect(logprobs(warm)).toEqual(logprobs(cold));
    expect(warm.probabilities).toEqual(cold.probabilities);
  });

  it('a different image (same placeholder, one feature changed) reuses only the text before it', async () => {
    await model.logits({ tokens, images: image });
    const imageScores = await model.scoreOptions({ tokens, images: image }, OPTIONS);
    // another slot caches a text prompt of the same length with its logits: neither it nor the
    // first image's prompt may stand in for this one
    const text = Array.from({ length: positions }, (_, i) => 100 + i);
    await model.logits(text);
    const s0 = model.stats();
    const r = await model.scoreOptions({ tokens, images: other }, OPTIONS);
    expect(delta(s0, model.stats())).toEqual({ prefillTokens: positions - imageAt, reusedTokens: imageAt, reusedLogits: 0 });
    // not the first image's scores: a stale prefix would have given those
    expect(maxScoreDiff(r, imageScores)).toBeGreaterThan(1e-6);
    // what a model that never saw the first image scores (rows split differently: within 1e-5)
    const cold = await fresh.scoreOptions({ tokens, images: other }, OPTIONS);
    expect(maxScoreDiff(r, cold)).toBeLessThanOrEqual(1e-5);
  });

  it('a changed prompt token after the image reuses the positions before it only', async () => {
    await model.logits({ tokens, images: image });
    const at = tokens.length - 3;
    const changed = [...tokens];
    changed[at] = changed[at] === 278 ? 445 : 278;
    const s0 = model.stats();
    const r = await model.scoreOptions({ tokens: changed, images: image }, OPTIONS);
    const reused = at - 1 + model.info.vision!.nImageTokens!; // positions before the changed one
    expect(delta(s0, model.stats())).toEqual({ prefillTokens: positions - reused, reusedTokens: reused, reusedLogits: 0 });
    const cold = await fresh.scoreOptions({ tokens: changed, images: image }, OPTIONS);
    expect(maxScoreDiff(r, cold)).toBeLessThanOrEqual(1e-5);
  });

  it("generate after logits() starts from the cached logits and gives transformers' 16 greedy tokens", async () => {
    await model.logits({ tokens, images: image });
    const s0 = model.stats();
    const g = await model.generate({ tokens, images: image }, { maxTokens: 16, temperature: 0 }).result;
    expect(g.tokens).toEqual(expected!.greedy_new_tokens);
    expect(delta(s0, model.stats())).toMatchObject({ prefillTokens: 0, reusedLogits: 1 });
  });

  it('concurrent logits / scoreOptions / generate of two images score as alone (1e-5), order-free', async () => {
    const alone = [
      await fresh.scoreOptions({ tokens, images: image }, OPTIONS),
      await fresh.scoreOptions({ tokens, images: other }, OPTIONS),
    ];
    const together = await Promise.all([
      model.logits({ tokens, images: other }),
      model.scoreOptions({ tokens, images: image }, OPTIONS),
      model.generate({ tokens, images: other }, { maxTokens: 8, temperature: 0 }).result,
      model.scoreOptions({ tokens, images: other }, OPTIONS),
      model.logits({ tokens, images: image }),
    ]);
    expect(maxScoreDiff(together[1] as ScoreResult, alone[0]!)).toBeLessThanOrEqual(1e-5);
    expect(maxScoreDiff(together[3] as ScoreResult, alone[1]!)).toBeLessThanOrEqual(1e-5);
    const ref = await fresh.logits({ tokens, images: image });
    expect(maxAbsDiff(together[4] as Float32Array, ref)).toBeLessThanOrEqual(1e-5);
  });

  it('an aborted logits() rejects with ERR_ABORTED and leaves nothing stale behind', async () => {
    const s0 = model.stats();
    await expect(model.logits({ tokens, images: other }, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    // aborted while queued behind a generation
    const ac = new AbortController();
    const gen = model.generate('Once upon a time', { maxTokens: 4, temperature: 0 }).result;
    const pending = model.logits({ tokens, images: other }, { signal: ac.signal });
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await gen;
    const s1 = model.stats();
    expect(s1.active).toBe(0);
    // the image prompt still scores as an uncached model does
    const r = await model.scoreOptions({ tokens, images: other }, OPTIONS);
    const cold = await fresh.scoreOptions({ tokens, images: other }, OPTIONS);
    expect(maxScoreDiff(r, cold)).toBeLessThanOrEqual(1e-5);
    expect(s1.steps).toBeGreaterThanOrEqual(s0.steps);
  });
});
