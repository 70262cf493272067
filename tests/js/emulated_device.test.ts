// The model API on the strict emulated device (native/core/emulated_device_backend.h: device
// memory the host cannot read, every op's pointers checked): stories260K loaded with
// { device: 'emulated' } gives run.c's 200 greedy tokens and its logits within 1e-4, alone and
// with several sequences batched. The device exists only with EMOLLM_EMULATED_DEVICE=1.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { loadModel, runtimeInfo } from '../../lib/index.js';
import type { Device } from '../../lib/runtime.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const dir = join(shared, 'models', 'stories260K');
const GGUF = join(dir, 'gguf', 'stories260K.gguf');
const have = existsSync(GGUF);
if (!have) console.warn(`emulated device tests skipped: ${dir} not found (set EMOLLM_SHARED_DIR)`);

const emulated = 'emulated' as Device;

function oracleTokens(): number[] {
  return readFileSync(join(dir, 'oracle', 'greedy_n200_noprompt.tokens.txt'), 'utf8').trim().split(/\s+/).map(Number);
}

describe.skipIf(!have)('stories260K on the emulated device', () => {
  it('is no device unless EMOLLM_EMULATED_DEVICE=1', async () => {
    const saved = process.env.EMOLLM_EMULATED_DEVICE;
    delete process.env.EMOLLM_EMULATED_DEVICE;
    try {
      await expect(loadModel(GGUF, { device: emulated })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    } finally {
      if (saved !== undefined) process.env.EMOLLM_EMULATED_DEVICE = saved;
    }
  });

  it('greedy equals run.c alone and batched', async () => {
    process.env.EMOLLM_EMULATED_DEVICE = '1';
    const m = await loadModel(GGUF, { contextSize: 512, threads: 1, device: emulated, maxSequences: 3 });
    try {
      // really on the emulated device (not a silent fall-back to the CPU)
      expect(runtimeInfo().backends.some((b) => b.startsWith('emulated device'))).toBe(true);
      const oracle = oracleTokens();
      const r = await m.generate([1], { maxTokens: 200, temperature: 0 }).result;
      expect(r.tokens).toEqual(oracle.slice(1));
      // three sequences at once, each continuing a different prefix of the oracle
      const ks = [1, 5, 12];
      const rs = await Promise.all(ks.map((k) => m.generate(oracle.slice(0, k), { maxTokens: 30, temperature: 0 }).result));
      rs.forEach((x, i) => expect(x.tokens).toEqual(oracle.slice(ks[i]!, ks[i]! + 30)));
      // all-position logits come back from device memory and equal the CPU's within 1e-4
      const cpu = await loadModel(GGUF, { contextSize: 512, threads: 1 });
      try {
        const a = await m.logits(oracle.slice(0, 20), { all: true });
        const b = await cpu.logits(oracle.slice(0, 20), { all: true });
        expect(a.length).toBe(b.length);
        let d = 0;
        for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
        expect(d).toBeLessThanOrEqual(1e-4);
      } finally {
        await cpu.close();
      }
    } finally {
      await m.close();
    }
  });
});
