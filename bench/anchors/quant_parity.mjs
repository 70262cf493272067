#!/usr/bin/env node
// llama.cpp itself (node-llama-cpp's prebuilt CPU binary) runs GGUF files written by
// `emollm quantize`, and its next-token distributions are compared with emollm's on the same
// files: f32 (baseline: implementation differences only), q8_0, q4_0, q4_1, q5_0, q5_1 on
// stories260K, and q4_K, q5_K, q6_K on a random-weight LLaMA with dim 256 (stories260K's rows of
// 64 are not whole k-quant super-blocks). A measurement, not a test (needs bench/anchors'
// dependencies: `cd bench/anchors && npm ci --ignore-scripts`, and `npm run build`).
//
//   node bench/anchors/quant_parity.mjs
// Prints, per file and emollm activation mode: max |p_emollm - p_llama.cpp| over all positions
// and tokens, the mean total variation distance, and top-1 agreement. llama.cpp rounds activations to q8_K (k-quants) or
// q8_0/q8_1 blocks, emollm to q8_0 blocks, so quantised files differ a little more than f32.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { configure, inspectGguf, loadModel, quantizeGguf, writeGguf } = await import(join(root, 'dist', 'index.js'));
const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');

const STORIES = join(root, '..', 'shared', 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const VOCAB = 512;
const tmp = mkdtempSync(join(tmpdir(), 'emollm-qparity-'));

function randn(n, sd, seed) {
  let s = (seed * 2654435761) >>> 0 || 1;
  const u = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = sd * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

// The same model as tests/js/quantize_kquant.test.ts's makeDim256Model.
async function makeDim256(path) {
  const info = await inspectGguf(STORIES);
  const D = 256, F = 512, L = 2, H = 8, HKV = 4;
  const override = {
    'llama.embedding_length': D, 'llama.feed_forward_length': F, 'llama.block_count': L,
    'llama.attention.head_count': H, 'llama.attention.head_count_kv': HKV, 'llama.rope.dimension_count': D / H,
  };
  const metadata = Object.entries(info.metadata).map(([key, value]) => ({
    key, value: key in override ? override[key] : value, type: info.metadataTypes[key] ?? 'string',
  }));
  for (const key of Object.keys(override)) if (!(key in info.metadata)) metadata.push({ key, type: 'u32', value: override[key] });
  const f32 = (name, shape, sd, seed, mean = 0) => {
    const v = randn(shape.reduce((a, b) => a * b, 1), sd, seed);
    if (mean) for (let i = 0; i < v.length; i++) v[i] += mean;
    return { name, shape, dtype: 'f32', data: new Uint8Array(v.buffer) };
  };
  let seed = 1;
  const tensors = [f32('token_embd.weight', [VOCAB, D], 1, seed++)];
  const s = 1 / Math.sqrt(D);
  for (let l = 0; l < L; l++)
    tensors.push(
      f32(`blk.${l}.attn_norm.weight`, [D], 0.1, seed++, 1), f32(`blk.${l}.attn_q.weight`, [D, D], s, seed++),
      f32(`blk.${l}.attn_k.weight`, [(D / H) * HKV, D], s, seed++), f32(`blk.${l}.attn_v.weight`, [(D / H) * HKV, D], s, seed++),
      f32(`blk.${l}.attn_output.weight`, [D, D], s, seed++), f32(`blk.${l}.ffn_norm.weight`, [D], 0.1, seed++, 1),
      f32(`blk.${l}.ffn_gate.weight`, [F, D], s, seed++), f32(`blk.${l}.ffn_up.weight`, [F, D], s, seed++),
      f32(`blk.${l}.ffn_down.weight`, [D, F], 1 / Math.sqrt(F), seed++),
    );
  tensors.push(f32('output_norm.weight', [D], 0.1, seed++, 1), f32('output.weight', [VOCAB, D], s * 4, seed++));
  await writeGguf(path, metadata, tensors);
}

function softmax(row) {
  let mx = -Infinity;
  for (const v of row) mx = Math.max(mx, v);
  const e = row.map((v) => Math.exp(v - mx));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, usePrebuiltBinaries: true, progressLogs: false, logLevel: LlamaLogLevel.error });

// emollm's logits of all positions in one call: 8 tokens keep the products decode-shaped
// (M <= 8), so quantActivations applies ('q8': activations rounded to q8_0 blocks, as llama.cpp
// does; 'f32': exact products with the stored weights).
async function compare(path, tokens, quantActivations) {
  configure({ quantActivations });
  const m = await loadModel(path, { contextSize: 64, threads: 2 });
  const logits = await m.logits(tokens, { all: true });
  await m.close();
  configure({ quantActivations: 'q8' });
  const model = await llama.loadModel({ modelPath: path });
  const ctx = await model.createContext({ contextSize: 64, threads: 2 });
  const seq = ctx.getSequence();
  const res = await seq.controlledEvaluate(
    tokens.map((t) => [t, { generateNext: { probabilities: true, options: { temperature: 1, topK: VOCAB, topP: 1, minP: 0 } } }]),
  );
  await ctx.dispose();
  await model.dispose();
  let maxAbs = 0, tv = 0, agree = 0;
  for (let i = 0; i < tokens.length; i++) {
    const p = softmax(Array.from(logits.subarray(i * VOCAB, (i + 1) * VOCAB)));
    const q = new Array(VOCAB).fill(0);
    for (const [tok, pr] of res[i].next.probabilities) q[tok] = pr;
    let d = 0, ip = 0, iq = 0;
    for (let k = 0; k < VOCAB; k++) {
      maxAbs = Math.max(maxAbs, Math.abs(p[k] - q[k]));
      d += Math.abs(p[k] - q[k]);
      if (p[k] > p[ip]) ip = k;
      if (q[k] > q[iq]) iq = k;
    }
    tv += d / 2;
    if (ip === iq) agree++;
  }
  return { maxAbs, meanTv: tv / tokens.length, top1: agree / tokens.length };
}

try {
  const tokens = [1, 403, 407, 261, 378, 29, 74, 312];
  const dim256 = join(tmp, 'dim256-f32.gguf');
  await makeDim256(dim256);
  const rows = [];
  for (const [base, types] of [[STORIES, ['f32', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1']], [dim256, ['f32', 'q8_0', 'q4_0', 'q4_K', 'q5_K', 'q6_K']]]) {
    for (const t of types) {
      const file = join(tmp, `${base === STORIES ? 'stories260K' : 'dim256'}-${t}.gguf`);
      const path = t === 'f32' ? base : file;
      if (t !== 'f32') await quantizeGguf(base, file, t);
      rows.push([path, t, await compare(path, tokens, 'q8'), await compare(path, tokens, 'f32')]);
    }
  }
  console.log(`llama.cpp (node-llama-cpp prebuilt) vs emollm, next-token distributions over ${tokens.length} positions:`);
  const fmt = (r) => `max|dp| ${r.maxAbs.toExponential(2)}  mean TV ${r.meanTv.toExponential(2)}  top-1 ${r.top1.toFixed(3)}`;
  for (const [file, t, q8, f32] of rows)
    console.log(`${file.split('/').pop().padEnd(24)} ${t.padEnd(5)} emollm q8 act: ${fmt(q8)} | emollm f32 act: ${fmt(f32)}`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
