// GGUF writing and re-quantization, checked end to end on the real stories260K model: the
// converted files load, carry the right types, and their logits stay close to llama2.c's.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { configure, inspectGguf, loadModel, quantizeGguf, writeGguf } from '../../lib/index.js';
import { compareLogits } from './helpers/random_llama.js';
import { onceUponATimeLogits } from './helpers/stories_oracle.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const dir = join(shared, 'models', 'stories260K');
const GGUF = join(dir, 'gguf', 'stories260K.gguf');
const have = existsSync(GGUF);
if (!have) console.warn(`quantize tests skipped: ${GGUF} not found`);

const tmp = mkdtempSync(join(tmpdir(), 'emollm-quant-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!have)('quantizeGguf on stories260K', () => {
  const oracle = have ? onceUponATimeLogits(dir) : { tokens: [], logits: new Float32Array() };

  it('an f32 -> f32 rewrite is lossless (the writer reproduces the model)', async () => {
    const out = join(tmp, 'f32.gguf');
    const r = await quantizeGguf(GGUF, out, 'f32');
    expect(r.converted).toEqual([]);
    const m = await loadModel(out, { contextSize: 64, threads: 1 });
    try {
      const logits = await m.logits(oracle.tokens, { all: true });
      expect(compareLogits(logits, oracle.logits, 512).maxDiff).toBeLessThanOrEqual(1e-4);
    } finally {
      await m.close();
    }
    const a = await inspectGguf(GGUF);
    const b = await inspectGguf(out);
    expect(b.metadata['tokenizer.ggml.tokens']).toEqual(a.metadata['tokenizer.ggml.tokens']);
    expect(b.tensors.map((t) => [t.name, t.dtype, t.shape])).toEqual(a.tensors.map((t) => [t.name, t.dtype, t.shape]));
  });

  // Two checks per type. (1) Exactness of the quantized model path: the quantized model, run
  // with f32 activations, against the same weights dequantized back to an f32 GGUF: only f32
  // accumulation order differs, so 1e-3. (2) Closeness to run.c's f32 logits with the default
  // q8 activations, where quantization error dominates: the logits span about +-19; q8_0 stays
  // within ~0.1, q4_0 (4 bits per weight, embedding and classifier included in this tiny
  // model) within ~5. Cosine and top-1 agreement catch layout bugs, which give unrelated logits.
  for (const [target, maxDiff, cosine, agree] of [
    ['q8_0', 0.25, 0.9999, 1],
    ['q4_0', 6, 0.99, 0.6],
  ] as const) {
    it(`${target}: converts the block-aligned matrices; logits match the dequantized model and stay close to run.c's`, async () => {
      const out = join(tmp, `${target}.gguf`);
      const r = await quantizeGguf(GGUF, out, target);
      // dim 64 rows convert; ffn_down has rows of 172 (not whole blocks) and norms are 1-D
      expect(r.converted).toContain('blk.0.attn_q.weight');
      expect(r.converted).toContain('token_embd.weight');
      expect(r.kept).toContain('blk.0.ffn_down.weight');
      expect(r.kept).toContain('output_norm.weight');
      const info = await inspectGguf(out);
      expect(info.tensors.find((t) => t.name === 'blk.0.attn_q.weight')?.dtype).toBe(target);
      expect(info.metadata['general.file_type']).toBe(target === 'q8_0' ? 7 : 2);

      const back = join(tmp, `${target}-dequantized.gguf`);
      expect((await quantizeGguf(out, back, 'f32')).converted).toContain('blk.0.attn_q.weight');
      const m = await loadModel(out, { contextSize: 64, threads: 1 });
      const f = await loadModel(back, { contextSize: 64, threads: 1 });
      try {
        configure({ quantActivations: 'f32' });
        const exact = compareLogits(await m.logits(oracle.tokens, { all: true }), await f.logits(oracle.tokens, { all: true }), 512);
        expect(exact.maxDiff).toBeLessThanOrEqual(1e-3);
        configure({ quantActivations: 'q8' });
        const c = compareLogits(await m.logits(oracle.tokens, { all: true }), oracle.logits, 512);
        expect(c.maxDiff).toBeLessThanOrEqual(maxDiff);
        expect(c.cosine).toBeGreaterThanOrEqual(cosine);
        expect(c.argmaxAgree).toBeGreaterThanOrEqual(agree);
      } finally {
        configure({ quantActivations: 'q8' });
        await m.close();
        await f.close();
      }
    });
  }
});

describe('writeGguf', () => {
  it('writes typed metadata and aligned tensors that the native loader reads back', async () => {
    const out = join(tmp, 'small.gguf');
    const w = new Float32Array([1, 2, 3, 4, 5, 6]);
    await writeGguf(
      out,
      [
        { key: 'general.architecture', type: 'string', value: 'test' },
        { key: 'general.alignment', type: 'u32', value: 64 },
        { key: 'a.u64', type: 'u64', value: 2n ** 60n },
        { key: 'a.f32s', type: 'array<f32>', value: [0.5, -1] },
        { key: 'a.nested', type: 'array<array<i32>>', value: [[1, 2], [3]] },
        { key: 'a.bool', type: 'bool', value: true },
      ],
      [
        { name: 'w', shape: [2, 3], dtype: 'f32', data: new Uint8Array(w.buffer) },
        { name: 'v', shape: [3], dtype: 'f32', data: async () => new Uint8Array(new Float32Array([7, 8, 9]).buffer) },
      ],
    );
    const info = await inspectGguf(out);
    expect(info.alignment).toBe(64);
    expect(info.metadata['a.u64']).toBe(2n ** 60n);
    expect(info.metadata['a.f32s']).toEqual([0.5, -1]);
    expect(info.metadata['a.nested']).toEqual([[1, 2], [3]]);
    expect(info.metadata['a.bool']).toBe(true);
    expect(info.tensors.map((t) => [t.name, t.shape, t.offset % 64])).toEqual([
      ['w', [2, 3], 0],
      ['v', [3], 0],
    ]);
  });

  it('rejects data of the wrong size', async () => {
    await expect(
      writeGguf(join(tmp, 'bad.gguf'), [], [{ name: 'w', shape: [2, 32], dtype: 'q8_0', data: new Uint8Array(10) }]),
    ).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
