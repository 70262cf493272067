// The KV cache's element type through the public API (loadModel's kvCacheType, the CLI's
// --kv-type) on stories260K: f16 / bf16 reach both native paths (the sequence scheduler of
// generate and the context of logits({ all })), the cache's bytes halve (stats), the greedy
// continuation from BOS with an f16 cache is run.c's 200 tokens (as llama.cpp's default f16 cache
// gives them), logits move by the rounding only (2 x max|logit| x unit roundoff: f16 2e-2, bf16
// 1.5e-1, the native test's bounds) and not by nothing; bad values are ERR_INVALID_ARGUMENT.
// The kernel- and core-level checks are tests/native/test_attention.cpp (attention_half_kv_*),
// test_half_rows.cpp and test_llama.cpp (llama_half_kv_cache).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { onceUponATimeLogits } from './helpers/stories_oracle.js';
import { sharedModel } from './helpers/vlm_fixtures.js';
import { loadModel, type KvCacheType } from '../../lib/index.js';

const { dir: storiesDir, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'KV cache type tests on stories260K');
const stories = join(storiesDir, 'gguf', 'stories260K.gguf');
const cli = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'cli.js');

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; ++i) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe.skipIf(!haveStories)('kvCacheType on stories260K', () => {
  const oracle = (): number[] =>
    readFileSync(join(storiesDir, 'oracle', 'greedy_n200_noprompt.tokens.txt'), 'utf8').trim().split(/\s+/).map(Number);

  it('f16 and bf16 caches: half the bytes, greedy equal to run.c, logits within the rounding bound', async () => {
    const want = oracle();
    expect(want).toHaveLength(201);
    const { tokens, logits: ref } = onceUponATimeLogits(storiesDir);
    const bytes: Partial<Record<KvCacheType, number>> = {};
    for (const [type, tol] of [['f32', 1e-4], ['f16', 2e-2], ['bf16', 1.5e-1]] as const) {
      const model = await loadModel(stories, { contextSize: 512, maxSequences: 1, threads: 1, kvCacheType: type });
      try {
        const r = await model.generate([want[0]!], { maxTokens: 200, temperature: 0 }).result;
        bytes[type] = model.stats().kvBytesPerBlock;
        // bf16 (2^-8) is allowed to flip a near-tie late in the run: its first 100 tokens must agree
        if (type === 'bf16') expect(r.tokens.slice(0, 100)).toEqual(want.slice(1, 101));
        else expect(r.tokens).toEqual(want.slice(1));
        // logits({ all }) runs on the model's own context (the other native path)
        const all = await model.logits(tokens, { all: true });
        const d = maxAbsDiff(all, ref);
        expect(d).toBeLessThanOrEqual(tol);
        if (type !== 'f32') expect(d).toBeGreaterThan(1e-4); // the rounding happened: the cache is not f32
      } finally {
        await model.close();
      }
    }
    expect(bytes.f32).toBeGreaterThan(0);
    expect(bytes.f16! * 2).toBe(bytes.f32);
    expect(bytes.bf16! * 2).toBe(bytes.f32);
  });

  it('an unknown kvCacheType is ERR_INVALID_ARGUMENT', async () => {
    for (const bad of ['q8_0', 'F16', 'float16', '', 16, null] as unknown[])
      await expect(
        loadModel(stories, { threads: 1, kvCacheType: bad as KvCacheType }).then(async (m) => m.close()),
      ).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it.skipIf(!existsSync(cli))('emollm generate --kv-type f16 prints run.c\'s text; a bad type is a usage error (generate, serve)', () => {
    const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, HF_HUB_OFFLINE: '1' } });
    const f32 = run('generate', stories, '--max-tokens', '60', '--context', '512', '--threads', '1');
    const f16 = run('generate', stories, '--max-tokens', '60', '--context', '512', '--threads', '1', '--kv-type', 'f16');
    expect(f32.status).toBe(0);
    expect(f16.status).toBe(0);
    expect(f16.stdout).toBe(f32.stdout);
    expect(f16.stdout.length).toBeGreaterThan(100);
    const bad = run('generate', stories, '--kv-type', 'q4_0');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--kv-type must be one of f32, f16, bf16/);
    const serveBad = run('serve', '--model', stories, '--kv-type', 'f8');
    expect(serveBad.status).toBe(2);
    expect(serveBad.stderr).toMatch(/--kv-type must be one of f32, f16, bf16/);
  });
});
