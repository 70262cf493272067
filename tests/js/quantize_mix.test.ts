// llama.cpp's k-quant mixes (Q4_K_M, Q5_K_M, Q4_K_S, Q5_K_S) written by `quantizeGguf`:
//   - the rule: which tensors get which type, checked against lists written out by hand from
//     llama.cpp's llama_tensor_get_type (not computed by the code under test), including the
//     32-layer case of a LLaMA-2-7B (attn_v / ffn_down at q6_K in 16 of 32 layers);
//   - the written GGUF loads and its logits stay within stated bounds of the f32 model's, from
//     f32, f16 and bf16 inputs, in an 8-layer random LLaMA with whole 256-element rows, and on
//     stories260K (rows of 64 / 172: llama.cpp's fallback types) against llama2.c's run.c logits.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { configure, inspectGguf, loadModel, quantizeGguf, useMoreBits } from '../../lib/index.js';
import { mixChooser } from '../../lib/quantize_mix.js';
import { compareLogits, makeRandomLlama } from './helpers/random_llama.js';
import { onceUponATimeLogits } from './helpers/stories_oracle.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const dir = join(shared, 'models', 'stories260K');
const GGUF = join(dir, 'gguf', 'stories260K.gguf');
const have = existsSync(GGUF);
if (!have) console.warn(`quantize mix model tests skipped: ${GGUF} not found`);

const tmp = mkdtempSync(join(tmpdir(), 'emollm-mix-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const VOCAB = 512;

describe('the mix rule (llama_tensor_get_type)', () => {
  it('use_more_bits: the first and last eighth and every third layer between', () => {
    const layers = (n: number): number[] => [...Array(n).keys()].filter((i) => useMoreBits(i, n));
    // LLaMA-2-7B (32 layers): the layers whose attn_v / ffn_down are q6_K in its Q4_K_M files.
    expect(layers(32)).toEqual([0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    expect(layers(8)).toEqual([0, 3, 6, 7]);
    expect(layers(5)).toEqual([2, 4]);
    expect(layers(22)).toEqual([0, 1, 4, 7, 10, 13, 16, 19, 20, 21]); // TinyLlama
  });

  it('per-tensor choices for each preset', () => {
    const model = { nLayers: 8, nAttentionWv: 8, hasOutput: true, is70B: false };
    const pick = (mix: 'Q4_K_M' | 'Q5_K_M' | 'Q4_K_S' | 'Q5_K_S', name: string): string[] => {
      const c = mixChooser(mix, model);
      return [...Array(8).keys()].map((l) => c(`blk.${l}.${name}`, 4096));
    };
    const q6at = (base: string, q6: number[]): string[] => [...Array(8).keys()].map((l) => (q6.includes(l) ? 'q6_K' : base));
    expect(pick('Q4_K_M', 'attn_v.weight')).toEqual(q6at('q4_K', [0, 3, 6, 7]));
    expect(pick('Q4_K_M', 'ffn_down.weight')).toEqual(q6at('q4_K', [0, 3, 6, 7]));
    expect(pick('Q5_K_M', 'attn_v.weight')).toEqual(q6at('q5_K', [0, 3, 6, 7]));
    expect(pick('Q5_K_M', 'ffn_down.weight')).toEqual(q6at('q5_K', [0, 3, 6, 7]));
    for (const t of ['attn_q.weight', 'attn_k.weight', 'attn_output.weight', 'ffn_gate.weight', 'ffn_up.weight'])
      expect(pick('Q4_K_M', t)).toEqual(Array(8).fill('q4_K'));
    // Q4_K_S: attn_v q5_K in the first 4 layers, ffn_down q5_K in the first eighth.
    expect(pick('Q4_K_S', 'attn_v.weight')).toEqual(['q5_K', 'q5_K', 'q5_K', 'q5_K', 'q4_K', 'q4_K', 'q4_K', 'q4_K']);
    expect(pick('Q4_K_S', 'ffn_down.weight')).toEqual(['q5_K', ...Array(7).fill('q4_K')]);
    expect(pick('Q5_K_S', 'attn_v.weight')).toEqual(Array(8).fill('q5_K'));
    // The classifier: q6_K (q8_0 when its rows are not whole super-blocks); the embedding keeps the base.
    for (const mix of ['Q4_K_M', 'Q5_K_M', 'Q4_K_S', 'Q5_K_S'] as const) {
      expect(mixChooser(mix, model)('output.weight', 4096)).toBe('q6_K');
      expect(mixChooser(mix, model)('output.weight', 4000)).toBe('q8_0');
    }
    expect(mixChooser('Q4_K_M', model)('token_embd.weight', 4096)).toBe('q4_K');
    // Tied embeddings: the embedding is the classifier.
    expect(mixChooser('Q4_K_M', { ...model, hasOutput: false })('token_embd.weight', 4096)).toBe('q6_K');
    // Fused QKV.
    expect(mixChooser('Q4_K_M', model)('blk.0.attn_qkv.weight', 4096)).toBe('q5_K');
    expect(mixChooser('Q5_K_M', model)('blk.0.attn_qkv.weight', 4096)).toBe('q6_K');
    // 70B LLaMA (GQA): attn_v that would be q4_K is q5_K.
    const c70 = mixChooser('Q4_K_M', { nLayers: 80, nAttentionWv: 80, hasOutput: true, is70B: true });
    expect([...Array(13).keys()].map((l) => c70(`blk.${l}.attn_v.weight`, 8192))).toEqual(
      [...Array(10).fill('q6_K'), 'q5_K', 'q5_K', 'q6_K'],
    );
  });

  it('rejects an unknown target', async () => {
    await expect(quantizeGguf(GGUF, join(tmp, 'x.gguf'), 'Q4_K_XL' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

/** Logits over `tokens` (f32 activations), and a short greedy run. */
async function run(path: string, tokens: number[]): Promise<{ logits: Float32Array; generated: number[] }> {
  const m = await loadModel(path, { contextSize: 64, threads: 2 });
  try {
    configure({ quantActivations: 'f32' });
    const logits = await m.logits(tokens, { all: true });
    const g = await m.generate([1], { maxTokens: 8, temperature: 0 }).result;
    return { logits, generated: g.tokens };
  } finally {
    configure({ quantActivations: 'q8' });
    await m.close();
  }
}

describe.skipIf(!have)('mixes in an 8-layer dim-256 random LLaMA', () => {
  const tokens = [1, 403, 407, 261, 378, 29, 74, 312];
  const base = join(tmp, 'l8-f32.gguf');
  let ref: Promise<{ logits: Float32Array; generated: number[] }> | null = null;
  const reference = (): Promise<{ logits: Float32Array; generated: number[] }> =>
    (ref ??= makeRandomLlama(base, GGUF, { layers: 8 }).then(() => run(base, tokens)));
  const q6Layers = [0, 3, 6, 7];

  // Bounds on max |diff| relative to the largest |f32 logit|, and cosine, against the f32 model.
  // Measured here (deterministic inputs, f32 activations; from f32 / f16 / bf16 inputs):
  // Q4_K_M rel 0.273 / 0.275 / 0.273, cos 0.9730 / 0.9717 / 0.9727 (pure q4_K: 0.307, 0.9654);
  // Q5_K_M rel 0.128 / 0.149 / 0.127, cos 0.9920 / 0.9924 / 0.9921 (pure q5_K: 0.160, 0.9901).
  // Bounds: about 1.5x headroom on rel and on 1 - cos. Each mix must also be at least as close as its pure base type (the
  // point of spending q6_K on attn_v / ffn_down), and f16 / bf16 inputs give the same mix.
  for (const [mix, basetype, relMax, cosine] of [
    ['Q4_K_M', 'q4_K', 0.4, 0.955],
    ['Q5_K_M', 'q5_K', 0.22, 0.988],
  ] as const) {
    it(`${mix}: tensor types follow the rule; loads; logits close to f32 and no worse than pure ${basetype}`, async () => {
      const f = await reference();
      const out = join(tmp, `l8-${mix}.gguf`);
      const r = await quantizeGguf(base, out, mix);
      expect(r.fallbacks).toEqual({});
      const info = await inspectGguf(out);
      expect(info.metadata['general.file_type']).toBe(mix === 'Q4_K_M' ? 15 : 17);
      for (const t of info.tensors) {
        const m = /^blk\.(\d+)\.(\w+)\.weight$/.exec(t.name);
        let want: string;
        if (t.shape.length === 1) want = 'f32';
        else if (t.name === 'output.weight') want = 'q6_K';
        else if (m && (m[2] === 'attn_v' || m[2] === 'ffn_down') && q6Layers.includes(Number(m[1]))) want = 'q6_K';
        else want = basetype;
        expect(t.dtype, t.name).toBe(want);
        expect(r.types[t.name]).toBe(want);
      }
      const q = await run(out, tokens);
      const c = compareLogits(q.logits, f.logits, VOCAB);
      const pureOut = join(tmp, `l8-${basetype}.gguf`);
      await quantizeGguf(base, pureOut, basetype);
      const pure = compareLogits((await run(pureOut, tokens)).logits, f.logits, VOCAB);
      console.log(`l8 ${mix}: vs f32 rel ${c.relMax.toFixed(4)} cos ${c.cosine.toFixed(5)} top1 ${c.argmaxAgree}; pure ${basetype}: rel ${pure.relMax.toFixed(4)} cos ${pure.cosine.toFixed(5)}`);
      expect(c.relMax).toBeLessThanOrEqual(relMax);
      expect(c.cosine).toBeGreaterThanOrEqual(cosine);
      expect(c.cosine).toBeGreaterThanOrEqual(pure.cosine);
      expect(q.generated.length).toBeGreaterThan(0);

      // From f16 and bf16 inputs: the same types, and logits as close to the f32 model.
      for (const from of ['f16', 'bf16'] as const) {
        const half = join(tmp, `l8-${from}.gguf`);
        if (!existsSync(half)) await quantizeGguf(base, half, from);
        const out2 = join(tmp, `l8-${from}-${mix}.gguf`);
        const r2 = await quantizeGguf(half, out2, mix);
        expect(r2.types).toEqual(r.types);
        const c2 = compareLogits((await run(out2, tokens)).logits, f.logits, VOCAB);
        console.log(`l8 ${from} -> ${mix}: vs f32 rel ${c2.relMax.toFixed(4)} cos ${c2.cosine.toFixed(5)}`);
        expect(c2.relMax).toBeLessThanOrEqual(relMax);
        expect(c2.cosine).toBeGreaterThanOrEqual(cosine);
      }
    });
  }

  it('tied embeddings: the token embedding gets the classifier type (q6_K)', async () => {
    const tied = join(tmp, 'l8-tied.gguf');
    await makeRandomLlama(tied, GGUF, { layers: 8, tied: true });
    const r = await quantizeGguf(tied, join(tmp, 'l8-tied-q4km.gguf'), 'Q4_K_M');
    expect(r.types['token_embd.weight']).toBe('q6_K');
    expect(r.types['blk.1.attn_q.weight']).toBe('q4_K');
  });
});

describe.skipIf(!have)('Q4_K_M on stories260K (rows of 64 / 172: fallback types)', () => {
  it("attn_v layers 2 and 4 (use_more_bits of 5) get q6_K -> q8_0, the rest q4_K -> q5_0; logits close to run.c's", async () => {
    const out = join(tmp, 's-Q4_K_M.gguf');
    const r = await quantizeGguf(GGUF, out, 'Q4_K_M');
    for (let l = 0; l < 5; l++) {
      expect(r.types[`blk.${l}.attn_v.weight`]).toBe(l === 2 || l === 4 ? 'q8_0' : 'q5_0');
      expect(r.types[`blk.${l}.attn_q.weight`]).toBe('q5_0');
      expect(r.types[`blk.${l}.ffn_down.weight`]).toBe('f32'); // 172 is no multiple of 32: kept
    }
    expect(r.types['token_embd.weight']).toBe('q5_0');
    const info = await inspectGguf(out);
    expect(r.types['output.weight']).toBe('q8_0');
    expect(info.tensors.find((t) => t.name === 'blk.2.attn_v.weight')?.dtype).toBe('q8_0');
    // run.c's f32 logits for "Once upon a time" (positions 0-4).
    const oracle = onceUponATimeLogits(dir);
    const q = await run(out, oracle.tokens);
    const c = compareLogits(q.logits, oracle.logits, VOCAB);
    console.log(`stories260K Q4_K_M: vs run.c f32 max|d| ${c.maxDiff.toFixed(3)} cos ${c.cosine.toFixed(5)} top1 ${c.argmaxAgree}`);
    // measured: max |diff| 1.571, cos 0.99821 (run.c's logits span about +-19)
    expect(c.maxDiff).toBeLessThanOrEqual(2.5);
    expect(c.cosine).toBeGreaterThanOrEqual(0.997);
  });
});

const cli = join(repoRoot, 'dist', 'cli.js');
if (!existsSync(cli)) console.warn(`quantize CLI test skipped: ${cli} not built (npx tsc -p tsconfig.json)`);
describe.skipIf(!have || !existsSync(cli))('emollm quantize <in> <out> Q4_K_M (dist/cli.js)', () => {
  it('takes the preset name in any case and prints the mix it wrote', async () => {
    const out = join(tmp, 'cli-q4km.gguf');
    const r = spawnSync(process.execPath, [cli, 'quantize', GGUF, out, 'q4_k_m'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    // stories260K: 5 layers x 6 matrices + embedding + output = 32 converted (29 q5_0; attn_v of layers 2, 4
    // and the output q8_0); ffn_down (rows of 172) kept with the norms
    expect(r.stdout).toMatch(/Q4_K_M: 32 tensors converted \(29 q5_0, 3 q8_0\)/);
    const info = await inspectGguf(out);
    expect(info.metadata['general.file_type']).toBe(15);
    expect(info.tensors.find((t) => t.name === 'blk.4.attn_v.weight')?.dtype).toBe('q8_0');
    expect(info.tensors.find((t) => t.name === 'blk.3.attn_v.weight')?.dtype).toBe('q5_0');
    const bad = spawnSync(process.execPath, [cli, 'quantize', GGUF, join(tmp, 'x.gguf'), 'Q4_K_XL'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/unknown type "Q4_K_XL" \(Q4_K_M, Q5_K_M, Q4_K_S, Q5_K_S, f32/);
  });
});
