// Repacked q4_0 / q8_0 decoder weights (configure({ repackWeights }), EMOLLM_REPACK): on a CPU with
// AVX512-VNNI the CPU backend keeps the decoder's matrices in the 16-row interleaved layout
// (64-row records) made at load (kernels/cpu/gemv_repacked.cpp). Checked on stories260K
// quantized here: the packing is active (packedWeightBytes); with up to 8 rows its logits equal the standard layout's within
// 1e-3 (logits span about +-19; both round activations to q8_0, only the f32 summation order of
// the block products differs) but for rare q8 rounding flips; with more rows (prefill) within
// the q8-activation error (bounds below); and
// sequences give the same greedy tokens in a batched pass as alone (gemm_repacked's rows are
// bit-identical to its gemv).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { configure, cpuInfo, loadModel, quantizeGguf } from '../../lib/index.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const GGUF = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const have = existsSync(GGUF);
if (!have) console.warn(`repack tests skipped: ${GGUF} not found`);

const info = cpuInfo();
const vnni = info.features.avx512vnni === true && (info.isaActive === 'avx512' || info.isaActive === 'amx');
if (!vnni) console.warn(`repack tests: no AVX512-VNNI kernels here (isa ${info.isaActive}): only "nothing is packed" is checked`);

const tmp = mkdtempSync(join(tmpdir(), 'emollm-repack-'));
afterAll(() => {
  configure({ repackWeights: true });
  rmSync(tmp, { recursive: true, force: true });
});

const TOKENS = [1, 403, 407, 261, 378, 301, 11, 99, 5, 6, 300, 42];  // BOS then arbitrary ids < 512 (the vocabulary)
const prompts = ['Once upon a time', 'Lily', 'The little dog saw a big red ball'];

describe.skipIf(!have)('repacked q4_0 / q8_0 decoder weights on stories260K', () => {
  it('configure validates repackWeights', () => {
    expect(() => configure({ repackWeights: 'yes' as unknown as boolean })).toThrow(/repackWeights must be a boolean/);
  });

  for (const target of ['q4_0', 'q8_0'] as const) {
    it(`${target}: packed when on, logits as the standard layout's, batched = alone`, async () => {
      const file = join(tmp, `${target}.gguf`);
      await quantizeGguf(GGUF, file, target);
      const base = cpuInfo().packedWeightBytes;

      configure({ repackWeights: false });
      expect(cpuInfo().repackWeights).toBe(false);
      // A copy of the file: models loaded from one file share its mapping (and so the packed
      // copies the second load makes), which would put this one on the packed layout too.
      const stdFile = join(tmp, `${target}-std.gguf`);
      await copyFile(file, stdFile);
      const std = await loadModel(stdFile, { contextSize: 128, threads: 1 });
      expect(cpuInfo().packedWeightBytes).toBe(base);
      configure({ repackWeights: true });
      const packed = await loadModel(file, { contextSize: 128, maxSequences: 4, threads: 1 });
      try {
        const gained = cpuInfo().packedWeightBytes - base;
        if (vnni) {
          // 5 layers x (4 attention 64x64 + ...) at least the attention matrices (ffn_down's rows of
          // 172 are not whole blocks and stay f32); the tied classifier 512 x 64 is packed too
          expect(gained).toBeGreaterThanOrEqual(512 * 64 * (target === 'q8_0' ? 34 / 32 : 18 / 32));
        } else {
          expect(gained).toBe(0);
        }

        // Per logits row, max |standard - packed|.
        const rowDiffs = async (n: number) => {
          const a = await std.logits(TOKENS.slice(0, n), { all: true });
          const b = await packed.logits(TOKENS.slice(0, n), { all: true });
          expect(b.length).toBe(a.length);
          expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(1);
          const out: number[] = [];
          for (let r = 0; r < n; r++) {
            let d = 0;
            for (let i = r * 512; i < (r + 1) * 512; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
            out.push(d);
          }
          return out;
        };
        // Up to 8 rows (decode-shaped products) both layouts round activations to q8_0 and differ
        // only in the f32 summation order of the block products: rows agree within 1e-3 (measured
        // ~2e-6) unless that order moves an activation of a later layer across a q8 rounding
        // boundary, which shifts the row by that rounding's effect (measured 0.09 for one row in
        // 16): at least 14 of the 16 rows within 1e-3, all within 0.25.
        const small = (await Promise.all([1, 2, 5, 8].map(rowDiffs))).flat();
        expect(small.filter((d) => d <= 1e-3).length).toBeGreaterThanOrEqual(14);
        expect(Math.max(...small)).toBeLessThanOrEqual(0.25);
        // More rows (prefill): the standard layout switches to f32 activations, repacked products
        // keep q8_0 ones, so rows differ by the effect of rounding activations to 8 bits (measured
        // 0.1-0.18 for both types; logits span +-19); the quantize test bounds that against run.c.
        expect(Math.max(...(await rowDiffs(TOKENS.length)))).toBeLessThanOrEqual(0.5);

        const opts = { maxTokens: 32, temperature: 0 };
        const alone = [];
        for (const p of prompts) alone.push((await packed.generate(p, opts).result).tokens);
        // Whether the three calls overlap depends on timing (each prompt is tokenized before it
        // reaches the scheduler, and a 32-token stories260K call can finish before the next one
        // arrives), so rounds are repeated until one ran batched; every round must equal alone.
        // (the logits calls above may have batched already: count this part's batched steps)
        const batchedBefore = packed.stats().batchedSteps;
        for (let round = 0; round === 0 || (round < 8 && packed.stats().batchedSteps === batchedBefore); round++) {
          const together = await Promise.all(prompts.map((p) => packed.generate(p, opts).result));
          expect(together.map((g) => g.tokens)).toEqual(alone);
        }
        expect(packed.stats().batchedSteps).toBeGreaterThan(batchedBefore);
        expect(packed.stats().maxBatch).toBeGreaterThanOrEqual(2);
      } finally {
        await std.close();
        await packed.close();
      }
      expect(cpuInfo().packedWeightBytes).toBe(base);
    });
  }
});
