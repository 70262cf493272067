// The paged KV cache through the public API (loadModel's kvCachePositions / kvBlockSize and
// model.stats()): a pool smaller than maxSequences × contextSize still gives every call exactly
// what it gives alone (calls wait for blocks, or are preempted and recomputed when the running
// ones outgrow the pool: greedy, seeded and streamed tokens unchanged), a call that can never fit
// fails with ERR_OUT_OF_MEMORY without disturbing the others, and a bad block size is a typed error.
// The kernel-level and core-level checks are tests/native/test_kv_paging.cpp.
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { qwenReferencePrompts, sharedModel } from './helpers/vlm_fixtures.js';
import { EmollmError, loadModel, type Model } from '../../lib/index.js';

const { dir: storiesDir, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'paged KV tests on stories260K');
const stories = join(storiesDir, 'gguf', 'stories260K.gguf');

const prompts = ['Once upon a time', 'Lily', 'The little dog saw a big red ball in the park and', 'One day'];

describe.skipIf(!haveStories)('paged KV cache on stories260K', () => {
  let alone: Model;
  beforeAll(async () => {
    alone = await loadModel(stories, { contextSize: 256, maxSequences: 1, threads: 1 });
  });
  afterAll(async () => alone?.close());

  it('a pool of 2 sequences\' worth serves 4 concurrent calls, each equal to the call alone', async () => {
    const expected: number[][] = [];
    for (const p of prompts) expected.push((await alone.generate(p, { maxTokens: 40, temperature: 0 }).result).tokens);
    expect(expected.every((t) => t.length > 0)).toBe(true);
    // 4 sequences of up to 256 positions, but blocks for 2 × 64 positions only: a call is admitted
    // when its prompt's block is free, so at most two run at once and the others wait.
    const model = await loadModel(stories, { contextSize: 256, maxSequences: 4, threads: 1, kvCachePositions: 128, kvBlockSize: 64 });
    try {
      const got = await Promise.all(prompts.map((p) => model.generate(p, { maxTokens: 40, temperature: 0 }).result));
      expect(got.map((r) => r.tokens)).toEqual(expected);
      const s = model.stats();
      expect(s.kvBlockSize).toBe(64);
      expect(s.kvBlocksTotal).toBe(2);
      expect(s.kvBlocksUsed).toBeLessThanOrEqual(s.kvBlocksTotal);
      // the pool, not maxSequences, limited the concurrency: never more than two at once
      expect(s.maxBatch).toBeLessThanOrEqual(2);
      expect(s.maxBatch).toBeGreaterThanOrEqual(1);
      // a call whose worst case exceeds the whole pool fails, typed, and the model still works
      await expect(model.generate('Once upon a time', { maxTokens: 200, temperature: 0 }).result).rejects.toMatchObject({
        code: 'ERR_OUT_OF_MEMORY',
      });
      expect((await model.generate(prompts[0]!, { maxTokens: 40, temperature: 0 }).result).tokens).toEqual(expected[0]);
    } finally {
      await model.close();
    }
  });

  it('calls that outgrow a small pool are preempted and recomputed, each equal to the call alone', async () => {
    // 4 prompts of one 16-position block each, 60 tokens each (up to 5 blocks): 8 blocks hold every
    // prompt but not every sequence's end, so the newest running ones are preempted
    const opts = (i: number) =>
      i % 2 === 0 ? { maxTokens: 60, temperature: 0 } : { maxTokens: 60, temperature: 0.9, topK: 20, seed: 7 + i, repetitionPenalty: 1.1 };
    const expected: number[][] = [];
    for (const [i, p] of prompts.entries()) expected.push((await alone.generate(p, opts(i)).result).tokens);
    const model = await loadModel(stories, { contextSize: 256, maxSequences: 4, threads: 1, kvCachePositions: 128, kvBlockSize: 16 });
    try {
      const streams = prompts.map(async (p, i) => {
        const g = model.generate(p, opts(i));
        const streamed: number[] = [];
        for await (const chunk of g) streamed.push(...chunk.tokens);
        return { streamed, result: await g.result };
      });
      const got = await Promise.all(streams);
      expect(got.map((g) => g.result.tokens)).toEqual(expected);
      // a recomputed call streams nothing twice
      expect(got.map((g) => g.streamed)).toEqual(expected);
      const s = model.stats();
      expect(s.kvBlocksTotal).toBe(8);
      expect(s.kvPreemptions).toBeGreaterThan(0);
      expect(s.kvRecomputedTokens).toBeGreaterThan(0);
      expect(s.maxBatch).toBeGreaterThanOrEqual(3);
      expect(s.active + s.queued).toBe(0);
      // every block left is a finished call's cached prompt
      expect(s.kvBlocksUsed).toBe(s.kvBlocksCached);
    } finally {
      await model.close();
    }
  });

  it('a block size that is not a multiple of 16 is a typed error', async () => {
    const err = await loadModel(stories, { contextSize: 256, maxSequences: 2, kvBlockSize: 17 })
      .then(async (m) => {
        // the context (and its pool) may be created lazily, at the first call
        try {
          await m.generate('Lily', { maxTokens: 4, temperature: 0 }).result;
          return undefined;
        } finally {
          await m.close();
        }
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EmollmError);
    expect((err as EmollmError).code).toMatch(/^ERR_(INVALID_ARGUMENT|BAD_CONFIG)$/);
  });
});

// Qwen2-VL: a preempted call is recomputed from its prompt (visual positions with their 3-D M-RoPE
// positions) and the tokens it had, which continue at max position + 1. Four calls with a visual
// (the photo and the video prompts cut 20 and 24 tokens short: 41-48 positions, 3 blocks of 16)
// and 48 greedy tokens each in a pool of 12 blocks: all four are admitted and outgrow it. Each
// must equal the call alone (tests/native/test_qwen2_vl.cpp checks the same in the core).
const { dir: qwen, have: haveQwen } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'paged KV tests on qwen2-vl-tiny-hf');

describe.skipIf(!haveQwen)('paged KV cache on qwen2-vl-tiny-hf (M-RoPE)', () => {
  it('calls with an image preempted under a small pool equal the calls alone', async () => {
    const alone = await loadModel(qwen, { contextSize: 128, maxSequences: 1, threads: 1 });
    const model = await loadModel(qwen, { contextSize: 128, maxSequences: 4, threads: 1, kvCachePositions: 192, kvBlockSize: 16 });
    try {
      const calls = async (m: Model) => {
        const refs = await qwenReferencePrompts(m, qwen, ['photo', 'video']);
        return refs.flatMap(({ prompt }) => [20, 24].map((cut) => ({ ...prompt, tokens: prompt.tokens.slice(0, prompt.tokens.length - cut) })));
      };
      const opts = { maxTokens: 48, temperature: 0 };
      const expected: number[][] = [];
      for (const p of await calls(alone)) expected.push((await alone.generate(p, opts).result).tokens);
      const prompts = await calls(model);
      const got = await Promise.all(
        prompts.map(async (p) => {
          const g = model.generate(p, opts);
          const streamed: number[] = [];
          for await (const chunk of g) streamed.push(...chunk.tokens);
          return { streamed, result: await g.result };
        }),
      );
      expect(got.map((g) => g.result.tokens)).toEqual(expected);
      expect(got.map((g) => g.streamed)).toEqual(expected);
      const s = model.stats();
      expect(s.kvBlocksTotal).toBe(12);
      expect(s.kvPreemptions).toBeGreaterThan(0);
      expect(s.kvRecomputedTokens).toBeGreaterThan(0);
      expect(s.active + s.queued).toBe(0);
      expect(s.kvBlocksUsed).toBe(s.kvBlocksCached);
    } finally {
      await model.close();
      await alone.close();
    }
  });
});
