// loadModel's `decodeBf16Products` (LlamaContextOptions::decode_bf16_products): decode attention
// on a bf16 KV cache with bf16 dot products. Through the public API: the option is accepted
// (true / false) and generation runs with it on both native paths' contexts; the emitted type
// declares it a boolean; anything else is ERR_INVALID_ARGUMENT, from loadModel and from the
// addon's context / batch options. Through the addon's context (the model's own, what
// logits({ all }) uses) on a random GQA 4:1 LLaMA with a bf16 cache: prompt logits bit-equal with
// the option on and off, decode steps within 2e-2 x max|logit| (the native test's tolerance) and,
// on a CPU with AVX512-BF16, not all bit-equal (the option reaches the kernel); with an f32 cache,
// bit-equal. The CLI (emollm generate / serve) takes --bf16-products. The numerical checks are
// tests/native/test_decode_bf16_products.cpp (both caches, batched decode, the scheduler) and
// test_attention.cpp (the kernel's bound).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { makeRandomLlama } from './helpers/random_llama.js';
import { sharedModel } from './helpers/vlm_fixtures.js';
import { cpuInfo, loadModel, type KvCacheType, type LoadModelOptions, type Model } from '../../lib/index.js';

const { dir: storiesDir, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'decodeBf16Products tests');
const stories = join(storiesDir, 'gguf', 'stories260K.gguf');
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist');

// the bf16-products path needs AVX512-BF16 and the AVX-512 kernels active
const bf16dp =
  cpuInfo().isaActive === 'avx512' && existsSync('/proc/cpuinfo') && /\bavx512_bf16\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));

interface NativeCtx {
  // the prompt's last position's logits; a prompt extending the cached one evaluates only the new tokens
  eval(tokens: Int32Array): Promise<Float32Array>;
  close(): Promise<void>;
}
type NativeHandle = {
  createContext(o: object): NativeCtx;
  createBatch(o: object): { close(): Promise<void> };
};
const handleOf = (m: Model): NativeHandle => (m as unknown as { handle: NativeHandle }).handle;

describe.skipIf(!haveStories)('decodeBf16Products', () => {
  let tmp = '';
  let gqa4 = '';
  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'emollm-bf16dp-'));
    gqa4 = join(tmp, 'gqa4.gguf');
    await makeRandomLlama(gqa4, stories, { headsKv: 2 }); // 8 query heads over 2 kv heads
  });
  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('rejects anything but a boolean (loadModel and the addon), typed', async () => {
    for (const bad of ['true', 1, 0, null, {}] as unknown[])
      await expect(
        loadModel(stories, { threads: 1, decodeBf16Products: bad as boolean }).then(async (m) => m.close()),
      ).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/decodeBf16Products must be a boolean/) });
    const m = await loadModel(stories, { threads: 1 });
    try {
      for (const create of ['createContext', 'createBatch'] as const)
        expect(() => handleOf(m)[create]({ decodeBf16Products: 'yes' })).toThrow(
          expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/decodeBf16Products must be a boolean/) }),
        );
    } finally {
      await m.close();
    }
  });

  it.skipIf(!existsSync(join(dist, 'model.d.ts')))('is declared as an optional boolean of LoadModelOptions', () => {
    const dts = readFileSync(join(dist, 'model.d.ts'), 'utf8');
    expect(dts).toMatch(/\n\s+decodeBf16Products\?: boolean;/);
    const o: LoadModelOptions = { decodeBf16Products: true, kvCacheType: 'bf16' };
    expect(o.decodeBf16Products).toBe(true);
  });

  it('is accepted: generate and logits({ all }) run with it on, for every cache type', async () => {
    for (const kvCacheType of ['f32', 'f16', 'bf16'] as KvCacheType[]) {
      const on = await loadModel(gqa4, { threads: 1, contextSize: 128, maxSequences: 2, kvCacheType, decodeBf16Products: true });
      const off = await loadModel(gqa4, { threads: 1, contextSize: 128, maxSequences: 2, kvCacheType, decodeBf16Products: false });
      try {
        const a = await on.generate([1, 5, 9, 14], { maxTokens: 12, temperature: 0 }).result;
        const b = await off.generate([1, 5, 9, 14], { maxTokens: 12, temperature: 0 }).result;
        for (const r of [a, b]) {
          expect(r.tokens.length).toBeLessThanOrEqual(12);
          expect(['max-tokens', 'eos']).toContain(r.stopReason);
        }
        // prompts are never on bf16 products: logits({ all }) of a fresh prompt is the same bits
        const la = await on.logits([1, 7, 3, 22, 11], { all: true });
        const lb = await off.logits([1, 7, 3, 22, 11], { all: true });
        expect(Buffer.compare(Buffer.from(la.buffer, la.byteOffset, la.byteLength), Buffer.from(lb.buffer, lb.byteOffset, lb.byteLength))).toBe(0);
      } finally {
        await on.close();
        await off.close();
      }
    }
  });

  it.skipIf(!existsSync(join(dist, 'cli.js')))('emollm generate / serve take --bf16-products (a flag: a value is a usage error)', () => {
    const run = (...args: string[]) =>
      spawnSync(process.execPath, [join(dist, 'cli.js'), ...args], { encoding: 'utf8', env: { ...process.env, HF_HUB_OFFLINE: '1' } });
    const on = run('generate', gqa4, '--max-tokens', '8', '--context', '128', '--threads', '1', '--kv-type', 'bf16', '--bf16-products');
    expect(on.status, on.stderr).toBe(0);
    for (const cmd of ['generate', 'serve']) expect(run(cmd, '--help').stdout).toMatch(/--bf16-products\s+with --kv-type bf16/);
    const bad = run('generate', gqa4, '--bf16-products=yes');
    expect(bad.status).toBe(2);
  });

  it('reaches the decode attention of a bf16 cache, within the tolerance; no effect on f32', async () => {
    const m = await loadModel(gqa4, { threads: 1 });
    try {
      for (const kvCacheType of ['bf16', 'f32'] as KvCacheType[]) {
        const h = handleOf(m);
        const on = h.createContext({ nCtx: 128, kvCacheType, decodeBf16Products: true });
        const off = h.createContext({ nCtx: 128, kvCacheType, decodeBf16Products: false });
        try {
          const prompt = Int32Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 512);
          const pa = await on.eval(prompt);
          const pb = await off.eval(prompt);
          expect(Array.from(pa)).toEqual(Array.from(pb)); // prefill untouched
          let differ = 0;
          const seq = Array.from(prompt);
          let tok = 3;
          for (let s = 0; s < 12; s++) {
            // eval takes the whole sequence: the cached prefix is kept, the new token is one decode row
            seq.push(tok);
            const a = await on.eval(Int32Array.from(seq));
            const b = await off.eval(Int32Array.from(seq));
            let mx = 1;
            let d = 0;
            let same = true;
            for (let i = 0; i < a.length; i++) {
              mx = Math.max(mx, Math.abs(b[i]!));
              d = Math.max(d, Math.abs(a[i]! - b[i]!));
              if (!Object.is(a[i], b[i])) same = false;
            }
            if (!same) differ++;
            expect(d).toBeLessThanOrEqual(2e-2 * mx);
            tok = b.indexOf(Math.max(...b));
          }
          if (kvCacheType === 'bf16' && bf16dp) expect(differ).toBeGreaterThanOrEqual(6);
          else expect(differ).toBe(0);
        } finally {
          await on.close();
          await off.close();
        }
      }
    } finally {
      await m.close();
    }
  });
});
