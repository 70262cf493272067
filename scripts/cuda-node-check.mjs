#!/usr/bin/env node
// The Node addon on a GPU: device 'cuda' against 'cpu' through the public API (built JS in dist/
// and an addon built with CUDA, e.g. `npm run build:cmake` on a machine with nvcc). It checks
//   1. runtimeInfo() lists a usable 'cuda' device;
//   2. the kernel bindings on 'cuda': gemm (f32 / bf16 / q8_0 at M = 1 and 20) against a float64
//      reference, attention and mvpProjection against 'cpu';
//   3. stories260K (GGUF) loaded with device 'cuda': the 200-token greedy continuation of BOS
//      equals llama2.c's run.c (../shared/models/stories260K/oracle) and the same model on 'cpu';
//   4. the tiny LLaVA (../shared/models/llava-tiny-hf) on 'cuda': the 16 greedy tokens of its
//      photo question (photo.jpg through sharp) equal transformers' (reference/expected.json).
// Exits 0 only when every check ran and passed; 1 on a mismatch, 2 when it cannot run (no CUDA
// build, no GPU, ../shared missing). Not part of `npm test` (CI has no GPU): run it on a CUDA
// machine by hand or with `bash scripts/gpu-suite.sh --node` (which builds the addon with CUDA
// first); tests/js/cuda_node_check.test.ts runs it on the emulated device.
//
// Usage: node scripts/cuda-node-check.mjs [--shared DIR]   (default: EMOLLM_SHARED_DIR, else ../shared)
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
let shared = process.env.EMOLLM_SHARED_DIR ?? join(repo, '..', 'shared');
// --device: the device under test ('cuda', 'cuda:N'; 'emulated' with EMOLLM_EMULATED_DEVICE=1 runs
// this script without a GPU, to check the script itself)
let device = 'cuda';
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--shared' && args[i + 1]) shared = args[++i];
  else if (args[i] === '--device' && args[i + 1]) device = args[++i];
  else {
    console.error(`cuda-node-check: unknown argument ${args[i]}\nusage: node scripts/cuda-node-check.mjs [--shared DIR] [--device cuda|cuda:N]`);
    process.exit(2);
  }
}
const dist = join(repo, 'dist');
if (!existsSync(join(dist, 'index.js'))) {
  console.error('cuda-node-check: dist/index.js not found: run `npx tsc -p tsconfig.json` first');
  process.exit(2);
}
const { runtimeInfo } = await import(join(dist, 'runtime.js'));
const { gemm, attention, mvpProjection } = await import(join(dist, 'kernels.js'));
const { quantize, dequantize } = await import(join(dist, 'kernels.js'));
const { loadModel } = await import(join(dist, 'model.js'));

const info = runtimeInfo();
console.log(`runtime: cudaBuilt ${info.cudaBuilt}, devices ${JSON.stringify(info.devices)}`);
if (!info.devices.includes(device.replace(/:\d+$/, '')) && device !== 'emulated') {
  console.error(`cuda-node-check: no usable '${device}' device (${info.cudaBuilt ? 'no GPU or driver' : 'this addon was built without CUDA'})`);
  process.exit(2);
}

let failures = 0;
function check(what, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? `: ${detail}` : ''}`);
  if (!ok) failures++;
}
function rand(n, seed, amp = 1) {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = amp * (s / 2 ** 31 - 1);
  }
  return out;
}
function worstExcess(got, want, atol, rtol) {
  if (got.length !== want.length) return Infinity;
  let worst = -Infinity;
  for (let i = 0; i < got.length; i++) {
    const e = Math.abs(got[i] - want[i]) - (atol + rtol * Math.abs(want[i]));
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst;
}

// 2. kernels, against a float64 product of x and the stored (dequantised) weights. Tolerances:
// m = 1 is the GEMV, f32 arithmetic on the stored weights; m = 20 runs on tensor cores with X
// rounded to the 16-bit operand type (bf16 for bf16 weights, f16 for q8_0; docs/cuda.md). The
// CPU is no reference here for q8_0: it quantises X to int8 as well.
for (const wtype of ['f32', 'bf16', 'q8_0']) {
  if (wtype === 'q8_0' && device === 'emulated') {
    console.log('skip gemm q8_0: the emulated device runs the CPU kernels, which quantise X to int8 (no float64 bound)');
    continue;
  }
  for (const m of [1, 20]) {
    const k = 256, n = 96;
    const x = rand(m * k, 1 + m), w = rand(n * k, 7);
    const wq = quantize(w, wtype);
    const wd = dequantize(wq, wtype, n * k);
    const want = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let kk = 0; kk < k; kk++) acc += x[i * k + kk] * wd[j * k + kk];
        want[i * n + j] = acc;
      }
    const g = await gemm({ x, w: wq, wtype, m, n, k, device });
    const [atol, rtol] = wtype === 'f32' || m === 1 ? [1e-4, 1e-4] : wtype === 'bf16' ? [5e-2, 2e-2] : [1e-2, 1e-2];
    const e = worstExcess(g, want, atol, rtol);
    check(`gemm ${wtype} m=${m} ${device} = float64 reference (${atol} + ${rtol} |ref|)`, e <= 0, `worst excess ${e.toExponential(2)}`);
  }
}
{
  const nQ = 7, nKv = 40, H = 4, Hkv = 2, D = 64;
  const a = { q: rand(nQ * H * D, 3), k: rand(nKv * Hkv * D, 4), v: rand(nKv * Hkv * D, 5), nQ, nKv, nHeads: H, nKvHeads: Hkv, headDim: D, causal: true, qPos0: nKv - nQ };
  const e = worstExcess(await attention({ ...a, device }), await attention({ ...a, device: 'cpu' }), 2e-4, 2e-4);
  check(`attention ${device} = cpu (2e-4)`, e <= 0, `worst excess ${e.toExponential(2)}`);
}
{
  const T = 9, dIn = 32, dHid = 48, dOut = 40, H = 3;
  const p = { x: rand(T * dIn, 11), w1: quantize(rand(H * dHid * dIn, 12, 0.2), 'f32'), b1: rand(H * dHid, 13), w2: quantize(rand(H * dOut * dHid, 14, 0.2), 'f32'), b2: rand(H * dOut, 15), g: rand(H * dOut, 16), wtype: 'f32', tokens: T, dIn, dHid, dOut, nHeads: H };
  const e = worstExcess(await mvpProjection({ ...p, device }), await mvpProjection({ ...p, device: 'cpu' }), 1e-4, 1e-4);
  check(`mvpProjection ${device} = cpu (1e-4)`, e <= 0, `worst excess ${e.toExponential(2)}`);
}

// 3. stories260K greedy on ${device} = cpu = llama2.c
const gguf = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const oracle = join(shared, 'models', 'stories260K', 'oracle', 'greedy_n200_noprompt.tokens.txt');
if (!existsSync(gguf) || !existsSync(oracle)) {
  console.error(`cuda-node-check: ${gguf} or its oracle not found (--shared DIR)`);
  process.exit(2);
}
{
  const tokensOn = async (device) => {
    const m = await loadModel(gguf, { device, contextSize: 256 });
    try {
      return (await m.generate([1], { maxTokens: 200, temperature: 0 }).result).tokens;
    } finally {
      await m.close();
    }
  };
  const gpu = await tokensOn(device), cpu = await tokensOn('cpu');
  const want = readFileSync(oracle, 'utf8').trim().split(/\s+/).map(Number).slice(1); // after BOS
  const same = (a, b) => a.length === b.length && a.every((t, i) => t === b[i]);
  check(`stories260K 200 greedy tokens: ${device} = llama2.c run.c`, same(gpu, want), `${gpu.length} tokens, first ${gpu.slice(0, 6).join(' ')}`);
  check(`stories260K 200 greedy tokens: ${device} = cpu`, same(gpu, cpu));
}

// 4. tiny LLaVA chat with its photo on ${device} = cpu
const llava = join(shared, 'models', 'llava-tiny-hf');
if (!existsSync(join(llava, 'photo.jpg')) || !existsSync(join(llava, 'reference', 'expected.json'))) {
  console.error(`cuda-node-check: ${llava}/photo.jpg or reference/expected.json not found (--shared DIR)`);
  process.exit(2);
}
{
  const expected = JSON.parse(readFileSync(join(llava, 'reference', 'expected.json'), 'utf8')).greedy_new_tokens;
  const m = await loadModel(llava, { device });
  try {
    const messages = [{ role: 'user', content: [{ type: 'image', image: join(llava, 'photo.jpg') }, { type: 'text', text: 'How does the person in this photo feel?' }] }];
    const r = await m.chat({ messages, maxTokens: 16, temperature: 0 }).result;
    check(`llava-tiny-hf 16 greedy tokens on ${device} = transformers`, r.tokens.length === expected.length && r.tokens.every((t, i) => t === expected[i]), `${r.tokens.join(' ')} / ${expected.join(' ')}`);
  } finally {
    await m.close();
  }
}

console.log(failures === 0 ? 'cuda-node-check: all checks passed' : `cuda-node-check: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
