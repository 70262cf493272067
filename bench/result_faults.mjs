#!/usr/bin/env node
// Minor page faults of a call that returns a fresh result array, with a GC between calls (the
// result before it freed, its memory the allocator's to reuse): today's zero-filled arrays
// (V8's calloc) against arrays the worker writes whole, not zeroed first (napi_util.h
// new_result_array, ResultFill::kWrittenWhole), alternated in one process (which goes first
// alternates each round). The addon's test hook testZeroWrittenResults switches between them.
//
//   node --expose-gc bench/result_faults.mjs                 # gemm 576 x 4096 (K 32): a 9 MiB result
//   node --expose-gc bench/result_faults.mjs --case llava    # a LLaVA-1.5 encode (bench/models' stub + bf16 mmproj)
//   options: --rounds N (12), --threads N (2), --keep (the previous result alive during the next call),
//            --churn MiB (0): before each call, that many MiB of 4 MiB typed arrays made and dropped (then
//            the GC): the heap grows past the result's size and is trimmed back, as a program's other
//            work between encodes does (session 24's suspect: calloc zeroing re-grown memory on the
//            JavaScript thread, 4 KiB at a time, before the result's huge-page advice; not seen in
//            session 25's runs: the call's JavaScript-thread part faulted <= 4 pages)
//
// Prints one line per round and the medians; faults are the whole process's (the JavaScript thread's
// allocation and zeroing, the worker's first writes), with the call's synchronous part (on the
// JavaScript thread: arguments copied, the result made and, when zeroed, cleared) apart: its faults
// and milliseconds; wall and process CPU seconds beside them.
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { median } from './measure.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

if (typeof globalThis.gc !== 'function') {
  console.error('run with node --expose-gc');
  process.exit(2);
}
const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? def : process.argv[i + 1];
};
const kase = arg('case', 'gemm');
const rounds = Number(arg('rounds', 12));
const threads = Number(arg('threads', 2));
const keep = process.argv.includes('--keep');
const churnMiB = Number(arg('churn', 0));
const churn = () => {
  let junk = [];
  for (let i = 0; i < churnMiB / 4; i++) junk.push(new Float32Array(1 << 20).fill(i));
  junk = undefined;
  return junk;
};

const lib = await import(pathToFileURL(join(root, 'dist', 'index.js')).href);
const { native } = await import(pathToFileURL(join(root, 'dist', 'native.js')).href);
lib.configure({ threads });

let call;
let close = async () => {};
if (kase === 'gemm') {
  const M = 576, N = 4096, K = 32;
  const x = new Float32Array(M * K).map((_, i) => (i % 13) / 13);
  const w = new Float32Array(N * K).map((_, i) => (i % 7) / 7);
  call = () => lib.gemm({ x, w, wtype: 'f32', m: M, n: N, k: K });
} else if (kase === 'llava') {
  const models = join(root, 'bench', 'models');
  const model = await lib.loadModel(join(models, 'llava1.5-vision-stub.gguf'), {
    mmproj: join(models, 'llava1.5-mmproj-vitl14-336-bf16.gguf'), threads, contextSize: 64 });
  const S = model.info.vision.imageSize;
  const px = new Float32Array(3 * S * S).map((_, i) => ((i * 2654435761) % 1000) / 500 - 1);
  call = () => model.encodePixels(px, 1);
  close = () => model.close();
} else {
  throw new Error(`--case must be gemm or llava, not ${kase}`);
}

const variants = ['zeroed', 'unfilled'];
const rows = { zeroed: [], unfilled: [] };
let held = await call();  // warm-up: weights, the pool's threads, their scratch
for (let r = 0; r < rounds; r++) {
  const order = r % 2 ? [...variants].reverse() : variants;
  const line = [];
  for (const v of order) {
    native().testZeroWrittenResults(v === 'zeroed');
    if (!keep) held = undefined;
    churn();
    globalThis.gc();
    const f0 = process.resourceUsage().minorPageFault;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const pending = call();  // the synchronous part: arguments copied, the result array made
    const syncS = (performance.now() - t0) / 1000;
    const syncFaults = process.resourceUsage().minorPageFault - f0;
    const out = await pending;
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const faults = process.resourceUsage().minorPageFault - f0;
    held = out;
    rows[v].push({ faults, syncFaults, syncS, s, cpu: (c.user + c.system) / 1e6, sys: c.system / 1e6 });
    line.push(`${v} ${faults} faults (${syncFaults} on the JS thread's call, ${(syncS * 1e3).toFixed(2)} ms) ${s.toFixed(3)} s sys ${(c.system / 1e3).toFixed(1)} ms`);
  }
  console.log(`round ${r + 1}: ${line.join(' | ')}`);
}
native().testZeroWrittenResults(false);
await close();
for (const v of variants) {
  const m = (k) => median(rows[v].map((x) => x[k]));
  console.log(`${v}: faults median ${m('faults')} (JS thread's call ${m('syncFaults')} faults, ${(m('syncS') * 1e3).toFixed(2)} ms; min ${Math.min(...rows[v].map((x) => x.faults))}, max ${Math.max(...rows[v].map((x) => x.faults))}), ` +
    `wall median ${m('s').toFixed(3)} s best ${Math.min(...rows[v].map((x) => x.s)).toFixed(3)} s, process CPU median ${m('cpu').toFixed(3)} s, sys median ${(m('sys') * 1e3).toFixed(1)} ms`);
}
