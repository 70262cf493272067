// Chunked prefill in the core's Scheduler (loadModel's `batchTokens` / `chunkedPrefill`): a long
// prompt is evaluated over several steps of at most `batchTokens` rows, beside the sequences that
// are decoding, and every call still returns what it returns alone: greedy tokens exactly,
// option log-probabilities within 1e-4 (the chunks' GEMMs run with other row counts than the
// one-at-a-time pass, so the last float bits differ). Image prompts (LLaVA, Qwen2-VL with M-RoPE
// positions) are split across chunks too. That decoding goes on during a prefill is shown by the
// core's counters, not by timing: with chunking the long prompt's steps carry the short call's
// decode rows (mixedSteps), without it (chunkedPrefill: false, the baseline) none does.
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  aloneThenTogether,
  expectLlavaTinyCallsMatch,
  expectLogprobsClose,
  expectReferenceGreedyTogether,
  FEEL,
  imageQuestion,
  llavaTinyImageCalls,
  nextReferencePrompts,
  qwenReferencePrompts,
  sharedModel,
  type LlavaTinyCall,
  type ReferencePrompt,
} from './helpers/vlm_fixtures.js';
import { loadModel, type Model } from '../../lib/index.js';

const { dir: storiesDir, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'chunked prefill tests on stories260K');
const stories = join(storiesDir, 'gguf', 'stories260K.gguf');
const { dir: tiny, have: haveTiny } = sharedModel('llava-tiny-hf', 'model.safetensors', 'chunked prefill tests on llava-tiny-hf');
const { dir: next, have: haveNext } = sharedModel('llava-next-tiny-hf', 'reference/expected.json', 'chunked prefill tests on llava-next-tiny-hf');
const { dir: qwen, have: haveQwen } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'chunked prefill tests on qwen2-vl-tiny-hf');

// The model's sequence scheduler as the addon gives it (Model.sequences() is @internal): its
// generate / score submit synchronously, so a test can fix the order in which calls arrive.
interface RawBatch {
  generate(prompt: Int32Array, options: Record<string, unknown>): { promise: Promise<{ tokens: Int32Array }> };
  score(prefix: Int32Array, images: null, continuations: Int32Array[]): { promise: Promise<{ tokenLogprobs: Float64Array[] }> };
}
const rawBatch = (m: Model): Promise<RawBatch> => (m as unknown as { sequences(): Promise<RawBatch> }).sequences();

const LONG =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. ' +
  'One day, she saw a big red ball under a tree. She wanted to play with it, but it was too high. ' +
  'Lily asked her mom to help her. Her mom smiled and said, "Let us find a stick." They found a long stick and ' +
  'got the ball down. Lily was very happy and said thank you. They played with the ball all day long and laughed. ' +
  'When the sun went down, they went home and ate a big dinner together.';
const OTHER =
  'Tom had a small blue car. He liked to drive it on the floor of his room and make loud noises. ' +
  'His sister Sue wanted to play too, so Tom gave her a turn. They drove the car under the bed and found an old sock.';

describe.skipIf(!haveStories)('chunked prefill on stories260K', () => {
  let alone: Model;
  beforeAll(async () => {
    alone = await loadModel(stories, { contextSize: 512, maxSequences: 1, threads: 1 });
  });
  afterAll(async () => alone?.close());

  it('validates batchTokens and chunkedPrefill with typed errors', async () => {
    for (const bad of [0, -1, 1.5, 3, 2 ** 21, Number.NaN, Number.POSITIVE_INFINITY])
      await expect(loadModel(stories, { maxSequences: 4, batchTokens: bad })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(loadModel(stories, { batchTokens: '64' as unknown as number })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(loadModel(stories, { chunkedPrefill: 'yes' as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const m = await loadModel(stories, { maxSequences: 4, batchTokens: 4, threads: 1 });
    try {
      expect(m.stats()).toMatchObject({ batchTokens: 4, chunkedPrefill: true, prefillChunks: 0, mixedSteps: 0 });
      await m.generate('Lily', { maxTokens: 2, temperature: 0 }).result;
      expect(m.stats()).toMatchObject({ batchTokens: 4, chunkedPrefill: true });
    } finally {
      await m.close();
    }
    // the default budget is reported once the scheduler runs: min(contextSize x maxSequences, 512),
    // not one sequence's context (a step carries rows of every sequence)
    const d = await loadModel(stories, { contextSize: 256, threads: 1 });
    try {
      await d.generate('Lily', { maxTokens: 1, temperature: 0 }).result;
      expect(d.stats().batchTokens).toBe(512);
    } finally {
      await d.close();
    }
    const one = await loadModel(stories, { contextSize: 256, maxSequences: 1, threads: 1 });
    try {
      await one.generate('Lily', { maxTokens: 1, temperature: 0 }).result;
      expect(one.stats().batchTokens).toBe(256);
    } finally {
      await one.close();
    }
  });

  it('a call decodes while a long prompt is prefilled in chunks; outputs equal each call alone', async () => {
    // Submitted to the model's sequence scheduler in one synchronous run, so the order is fixed
    // (the first call, then the long prompt and a scoring of it) and the counters below do not
    // depend on thread timing: the first call's own prompt takes a few steps, then it decodes
    // 60+ tokens, one per step, while the long prompt needs ~n / 15 steps.
    const aTok = Int32Array.from(alone.promptTokens(OTHER));
    const bTok = Int32Array.from(alone.promptTokens(LONG));
    expect(aTok.length).toBeGreaterThan(40);
    expect(bTok.length).toBeGreaterThan(150);
    const conts = [[300], [42, 7, 300], [9, 100]].map((c) => Int32Array.from(c));
    const calls = (b: RawBatch): (() => Promise<unknown>)[] => [
      () => b.generate(aTok, { maxTokens: 80, temperature: 0 }).promise.then((r) => Array.from(r.tokens)),
      () => b.generate(bTok, { maxTokens: 20, temperature: 0 }).promise.then((r) => Array.from(r.tokens)),
      () => b.score(bTok, null, conts).promise.then((r) => r.tokenLogprobs.map((x) => Array.from(x))),
    ];
    const want: unknown[] = [];
    for (const f of calls(await rawBatch(alone))) want.push(await f()); // one at a time
    const run = async (chunkedPrefill: boolean) => {
      const m = await loadModel(stories, { contextSize: 512, maxSequences: 3, batchTokens: 16, chunkedPrefill, threads: 1 });
      try {
        const b = await rawBatch(m);
        const got = await Promise.all(calls(b).map((f) => f())); // submitted in this order, synchronously
        return { got, stats: m.stats() };
      } finally {
        await m.close();
      }
    };
    const on = await run(true);
    const off = await run(false);
    // the first call decodes long enough to overlap the long prefill (no early EOS)
    expect((want[0] as number[]).length).toBeGreaterThanOrEqual(60);
    for (const r of [on, off]) {
      // greedy tokens: exact
      expect(r.got[0]).toEqual(want[0]);
      expect(r.got[1]).toEqual(want[1]);
      // option log-probabilities after the prefix (evaluated in chunks of <= 16 rows): within 1e-4
      expectLogprobsClose(r.got[2] as number[][], want[2] as number[][], 1e-4);
    }
    // chunked: the long prompt took >= n / 16 steps of at most 16 rows, and the steps after the
    // first call's prompt carried its decode row beside a chunk
    expect(on.stats.maxStepRows).toBeLessThanOrEqual(16);
    expect(on.stats.prefillChunks).toBeGreaterThanOrEqual(Math.ceil(bTok.length / 16));
    expect(on.stats.mixedSteps).toBeGreaterThanOrEqual(Math.floor((bTok.length - 16 * Math.ceil(aTok.length / 16)) / 15) - 1);
    expect(on.stats.mixedSteps).toBeGreaterThanOrEqual(5);
    expect(on.stats.prefillTokens).toBeGreaterThanOrEqual(bTok.length);
    expect(on.stats.stepRows).toBeGreaterThan(on.stats.decodedTokens);
    // the scoring shared the long prompt's prefix (waited for its chunks, then copied them; it
    // computes at most 16 of those positions itself, see scheduler.h)
    expect(on.stats.reusedTokens).toBeGreaterThanOrEqual(bTok.length - 17);
    // unchunked (the baseline): each prompt ran alone at admission, no step carried one beside a decoding call
    expect(off.stats.chunkedPrefill).toBe(false);
    expect(off.stats.mixedSteps).toBe(0);
    expect(on.stats).toMatchObject({ active: 0, prefilling: 0, queued: 0 });
  });
});

describe.skipIf(!haveTiny)('chunked prefill on llava-tiny-hf (image rows split across chunks)', () => {
  let alone: Model;
  let chunked: Model;
  beforeAll(async () => {
    alone = await loadModel(tiny, { threads: 1, maxSequences: 1 });
    chunked = await loadModel(tiny, { threads: 1, maxSequences: 4, batchTokens: 7 });
  });
  afterAll(async () => {
    await alone?.close();
    await chunked?.close();
  });

  it('image chat and option scoring in chunks of <= 7 rows equal the same calls alone; the shared prefix stays shared', async () => {
    const order: LlavaTinyCall[] = ['scoreFeel', 'generateFeel', 'generateFace', 'scoreNeutral'];
    const { want, got } = await aloneThenTogether(alone, chunked, (m) => llavaTinyImageCalls(m, tiny, order));
    // greedy tokens exactly, option log-probabilities within 1e-4
    expectLlavaTinyCallsMatch(order, got, want, 1e-4);
    const st = chunked.stats();
    // the image prompts (9 image rows and the question's) crossed several steps of <= 7 rows
    expect(st.maxStepRows).toBeLessThanOrEqual(7);
    expect(st.prefillChunks).toBeGreaterThan(st.prefills);
    // p1 (image + question) is shared: each of the two later calls on it copies what the first
    // has cached, or waits for its chunks when that saves 16 positions or more, so it computes
    // at most 16 of p1's positions itself (p1's length before the image rows are spliced in is a
    // lower bound of its length)
    const p1Len = chunked.promptTokens(imageQuestion('photo.jpg', FEEL)).length;
    expect(st.reusedTokens).toBeGreaterThanOrEqual(Math.max(1, 2 * (p1Len - 16)));
  });
});

// Two reference prompts of a tiny VLM (their image rows, and for Qwen2-VL their M-RoPE
// positions) prefilled together in chunks of <= 5 rows give the reference greedy tokens.
async function expectReferencePromptsChunked(
  dir: string,
  prompts: (m: Model) => Promise<ReferencePrompt<{ input_ids: number[]; greedy_new_tokens: number[] }>[]>,
): Promise<void> {
  const m = await loadModel(dir, { threads: 1, maxSequences: 2, batchTokens: 5 });
  try {
    const inputs = await prompts(m);
    await expectReferenceGreedyTogether(m, inputs);
    const st = m.stats();
    expect(st.maxStepRows).toBeLessThanOrEqual(5);
    // every prompt position was evaluated or taken from a cache (a shared text prefix may be
    // copied), in chunks of <= 5 rows: the prompts (with their image rows) crossed many steps
    const promptRows = inputs.reduce((s, x) => s + x.c.input_ids.length, 0);
    expect(st.prefillTokens + st.reusedTokens).toBeGreaterThanOrEqual(promptRows);
    expect(st.prefillChunks).toBeGreaterThanOrEqual(Math.ceil(st.prefillTokens / 5));
    expect(st.prefillChunks).toBeGreaterThanOrEqual(Math.ceil(Math.max(...inputs.map((x) => x.c.input_ids.length)) / 10));
  } finally {
    await m.close();
  }
}

describe.skipIf(!haveQwen)('chunked prefill on qwen2-vl-tiny-hf (M-RoPE positions split across chunks)', () => {
  it('photo and video prompts prefilled in chunks of <= 5 rows give the reference greedy tokens', async () => {
    await expectReferencePromptsChunked(qwen, (m) => qwenReferencePrompts(m, qwen, ['photo', 'video']));
  });
});

describe.skipIf(!haveNext)('chunked prefill on llava-next-tiny-hf (anyres image rows split across chunks)', () => {
  it('photo and wide prompts prefilled together in chunks of <= 5 rows give the reference greedy tokens', async () => {
    await expectReferencePromptsChunked(next, (m) => nextReferencePrompts(m, next, ['photo', 'wide']));
  });
});
