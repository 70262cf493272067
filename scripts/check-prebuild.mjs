#!/usr/bin/env node
// Checks a native binary by itself, without the TypeScript layer or its dependencies (so that it
// runs under qemu-user with a foreign-architecture Node, e.g. Debian's arm64 nodejs):
//   node scripts/check-prebuild.mjs <emollm.node> [stories260K.gguf]
// Prints one JSON line: cpuInfo, GEMM errors against a float64 JavaScript reference for f32, f16,
// q8_0 and q4_0 weights (each within its dtype's tolerance), and, given the stories260K GGUF,
// the first 48 greedy tokens after BOS, checked against llama2.c's run.c output stored beside the
// model (../shared/models/stories260K/oracle). Exits 1 when a check fails.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';

const [file, gguf] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/check-prebuild.mjs <emollm.node> [stories260K.gguf]');
  process.exit(2);
}
const b = createRequire(import.meta.url)(resolve(file));
b.setErrorClass(Error);

let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
const m = 3, n = 40, k = 256;
const x = Float32Array.from({ length: m * k }, rand);
const w = Float32Array.from({ length: n * k }, rand);
const ref = new Float64Array(m * n);
for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
  let s = 0;
  for (let t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
  ref[i * n + j] = s;
}
const scale = Math.max(...ref.map(Math.abs));
const out = { arch: process.arch, node: process.versions.node, cpu: b.cpuInfo(), gemm: {}, ok: true };
// Relative-to-max error bounds of each weight dtype (activations may be quantised to q8 for q-types).
const TOL = { f32: 1e-5, f16: 2e-3, q8_0: 2e-2, q4_0: 1.2e-1 };
for (const dtype of Object.keys(TOL)) {
  const wq = dtype === 'f32' ? w : b.quantize(w, dtype);
  const y = await b.gemm(x, wq, dtype, null, m, n, k);
  let err = 0;
  for (let i = 0; i < y.length; i++) err = Math.max(err, Math.abs(y[i] - ref[i]));
  const rel = err / scale;
  out.gemm[dtype] = Number(rel.toExponential(2));
  if (!(rel <= TOL[dtype])) out.ok = false;
}
if (gguf) {
  const model = await b.loadModel(gguf, { nCtx: 64 });
  const ctx = model.createContext({ nCtx: 64 });
  const r = await ctx.generate(Int32Array.from([1]), { maxTokens: 48, temperature: 0, topK: 40, topP: 0.95, repetitionPenalty: 1, repeatLastN: 64, stopTokens: new Int32Array(0) });
  out.tokens = Array.from(r.tokens);
  // llama2.c's run.c greedy continuation of BOS, beside the model in ../shared (its first id is BOS when listed).
  const oracle = join(dirname(gguf), '..', 'oracle', 'greedy_n200_noprompt.tokens.txt');
  if (existsSync(oracle)) {
    let want = readFileSync(oracle, 'utf8').trim().split(/\s+/).map(Number);
    if (want[0] === 1) want = want.slice(1);
    out.oracleMatch = out.tokens.every((t, i) => t === want[i]);
    if (!out.oracleMatch) out.ok = false;
  }
  await ctx.close();
  await model.close();
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
