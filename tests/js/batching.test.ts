// Concurrent sequences on one model (the core's Scheduler through model.generate / chat /
// scoreOptions): calls made together return exactly what the same calls return one at a time,
// an aborted call does not disturb the others, calls past maxSequences wait and then run, and the
// core's counters show that decode passes really carried several sequences.
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  aloneThenTogether,
  expectLlavaTinyCallsMatch,
  expectReferenceGreedyTogether,
  llavaTinyImageCalls,
  qwenReferencePrompts,
  sharedModel,
  type LlavaTinyCall,
} from './helpers/vlm_fixtures.js';
import { EmollmError, loadModel, type GenerateOptions, type Model } from '../../lib/index.js';

const { dir: storiesDir, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'batching tests on stories260K');
const stories = join(storiesDir, 'gguf', 'stories260K.gguf');
const { dir: tiny, have: haveTiny } = sharedModel('llava-tiny-hf', 'model.safetensors', 'batching tests on llava-tiny-hf');

// Prompts of different lengths with different token budgets, greedy.
const requests: { prompt: string; options: GenerateOptions }[] = [
  { prompt: 'Once upon a time', options: { maxTokens: 40, temperature: 0 } },
  { prompt: 'Lily', options: { maxTokens: 25, temperature: 0 } },
  { prompt: 'The little dog saw a big red ball in the park and', options: { maxTokens: 60, temperature: 0 } },
  { prompt: 'Tom and his mom went to the store. They', options: { maxTokens: 15, temperature: 0 } },
  { prompt: 'One day', options: { maxTokens: 50, temperature: 0 } },
  // seeded sampling is per sequence, so it too must not depend on the neighbours
  { prompt: 'Once upon a time', options: { maxTokens: 30, temperature: 0.9, seed: 7 } },
];

describe.skipIf(!haveStories)('concurrent sequences on stories260K', () => {
  let alone: Model;
  beforeAll(async () => {
    alone = await loadModel(stories, { contextSize: 256, maxSequences: 1, threads: 1 });
  });
  afterAll(async () => alone?.close());

  async function sequential(): Promise<{ text: string; tokens: number[]; stopReason: string }[]> {
    const out = [];
    for (const r of requests) {
      const g = await alone.generate(r.prompt, r.options).result;
      out.push({ text: g.text, tokens: g.tokens, stopReason: g.stopReason });
    }
    return out;
  }

  it('validates maxSequences', async () => {
    for (const bad of [0, -1, 1.5, 257, Number.NaN])
      await expect(loadModel(stories, { maxSequences: bad })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(loadModel(stories, { maxSequences: '4' as unknown as number })).rejects.toBeInstanceOf(EmollmError);
    expect(alone.maxSequences).toBe(1);
  });

  it('concurrent generate calls equal the same calls run one at a time, in one batched pass per step', async () => {
    const want = await sequential();
    const m = await loadModel(stories, { contextSize: 256, maxSequences: 4, threads: 1 });
    try {
      expect(m.maxSequences).toBe(4);
      expect(m.stats()).toMatchObject({ maxSequences: 4, steps: 0, active: 0, queued: 0 });
      const got = await Promise.all(requests.map((r) => m.generate(r.prompt, r.options).result));
      expect(got.map((g) => ({ text: g.text, tokens: g.tokens, stopReason: g.stopReason }))).toEqual(want);
      const st = m.stats();
      // six calls, four slots: passes carried several sequences, never more than four
      expect(st.batchedSteps).toBeGreaterThan(0);
      expect(st.maxBatch).toBeGreaterThanOrEqual(2);
      expect(st.maxBatch).toBeLessThanOrEqual(4);
      expect(st.steps).toBeLessThan(st.decodedTokens);
      expect(st.prefills).toBe(requests.length);
      expect(st).toMatchObject({ active: 0, queued: 0 });
      // streamed chunks of concurrent calls are each their own call's text
      const streams = await Promise.all(
        requests.slice(0, 3).map(async (r) => {
          let text = '';
          for await (const c of m.generate(r.prompt, r.options)) text += c.text;
          return text;
        }),
      );
      expect(streams).toEqual(want.slice(0, 3).map((w) => w.text));
    } finally {
      await m.close();
    }
  });

  it('calls past maxSequences wait, then run; never more than maxSequences in a pass', async () => {
    const want = await sequential();
    const m = await loadModel(stories, { contextSize: 256, maxSequences: 2, threads: 1 });
    try {
      const got = await Promise.all(requests.map((r) => m.generate(r.prompt, r.options).result));
      expect(got.map((g) => g.tokens)).toEqual(want.map((w) => w.tokens));
      const st = m.stats();
      expect(st.maxBatch).toBe(2);
      expect(st.prefills).toBe(requests.length);
    } finally {
      await m.close();
    }
  });

  it('aborting one call leaves the others exact', async () => {
    const want = await sequential();
    // the victim's loop does not wait for its consumer: on a 256-position context it could end
    // (max-tokens, context-full) before a consumer kept off its core reached its first chunk, and
    // then nothing is aborted; 4096 positions take it seconds (the others' tokens do not depend on
    // the context's size: they end within 256 positions)
    const m = await loadModel(stories, { contextSize: 4096, maxSequences: 4, threads: 1 });
    try {
      const ac = new AbortController();
      const victim = m.generate('Once upon a time there was', { maxTokens: 100000, temperature: 0, signal: ac.signal });
      const others = requests.slice(0, 3).map((r) => m.generate(r.prompt, r.options).result);
      const consume = async (): Promise<void> => {
        for await (const c of victim) {
          void c;
          ac.abort(); // at its first chunk, while the others decode beside it
        }
      };
      await expect(consume()).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      await expect(victim.result).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      const got = await Promise.all(others);
      expect(got.map((g) => g.tokens)).toEqual(want.slice(0, 3).map((w) => w.tokens));
      // a call aborted before it starts never takes a slot
      const pre = new AbortController();
      pre.abort();
      await expect(m.generate('Lily', { maxTokens: 5, signal: pre.signal }).result).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      // stop() ends only that generation, with stopReason 'aborted' or its natural end
      const g = m.generate('One day', { maxTokens: 200, temperature: 0 });
      const h = m.generate(requests[1]!.prompt, requests[1]!.options);
      g.stop();
      expect(['aborted', 'eos', 'max-tokens']).toContain((await g.result).stopReason);
      expect((await h.result).tokens).toEqual(want[1]!.tokens);
    } finally {
      await m.close();
    }
  });

  it('closing the model settles running and waiting calls as aborted', async () => {
    const m = await loadModel(stories, { contextSize: 256, maxSequences: 1, threads: 1 });
    const a = m.generate('Once upon a time', { maxTokens: 200, temperature: 0 }).result;
    const b = m.generate('Lily', { maxTokens: 200, temperature: 0 }).result;
    await new Promise((r) => setImmediate(r));
    await m.close();
    for (const r of await Promise.allSettled([a, b])) {
      if (r.status === 'fulfilled') expect(['aborted', 'eos', 'max-tokens']).toContain(r.value.stopReason);
      else expect(r.reason).toBeInstanceOf(EmollmError);
    }
    expect(() => m.stats()).toThrow(EmollmError);
  });
});

describe.skipIf(!haveTiny)('concurrent sequences on llava-tiny-hf (image chat and option scoring)', () => {
  let alone: Model;
  let batched: Model;
  beforeAll(async () => {
    alone = await loadModel(tiny, { threads: 1, maxSequences: 1 });
    batched = await loadModel(tiny, { threads: 1, maxSequences: 4 });
  });
  afterAll(async () => {
    await alone?.close();
    await batched?.close();
  });

  it('chat with an image and scoreOptions made together equal the same calls one at a time', async () => {
    // images encoded up front, so the four calls reach the core together
    const order: LlavaTinyCall[] = ['generateFeel', 'scoreFeel', 'generateFace', 'scoreNeutral'];
    const { want, got } = await aloneThenTogether(alone, batched, (m) => llavaTinyImageCalls(m, tiny, order));
    // greedy tokens: equal; log-probabilities: equal up to float rounding, 1e-4 (a cached prefix
    // may be reused with a different chunking of the remaining prompt than in the one-at-a-time run)
    expectLlavaTinyCallsMatch(order, got, want, 1e-4);
    const st = batched.stats();
    expect(st.batchedSteps).toBeGreaterThan(0);
    // the second scoring of q1 reused the image + question prefix (its own slot or a copy)
    expect(st.reusedTokens).toBeGreaterThan(0);
  });
});

// Qwen2-VL: M-RoPE positions travel with each sequence; decoded together, the photo and the video
// prompts still give transformers' own greedy tokens.
const { dir: qwen, have: haveQwen } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'batching tests on qwen2-vl-tiny-hf');

describe.skipIf(!haveQwen)('concurrent sequences on qwen2-vl-tiny-hf (M-RoPE)', () => {
  it('photo and video prompts decoded together give the reference greedy tokens', async () => {
    const m = await loadModel(qwen, { threads: 1, maxSequences: 2 });
    try {
      const inputs = await qwenReferencePrompts(m, qwen, ['photo', 'video']);
      await expectReferenceGreedyTogether(m, inputs);
      expect(m.stats().batchedSteps).toBeGreaterThan(0);
    } finally {
      await m.close();
    }
  });
});
