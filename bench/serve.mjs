#!/usr/bin/env node
// `npm run bench:serve [-- options]`: serving throughput and latency of one model under concurrent
// requests, emollm (the core's continuous-batching Scheduler: one KV slot per sequence, one
// batched forward pass per step) beside llama.cpp (node-llama-cpp's prebuilt CPU binary: one
// context with as many sequences), on the same random-weight GGUF, same threads, same requests,
// in the same run.
//
//   npm run bench:serve                                  # 160M q8_0, concurrency 1, 4, 16
//   npm run bench:serve -- --smoke                       # tiny shape, concurrency 1 and 4, few requests (checks it works)
//   npm run bench:serve -- --shape 1.1b --dtype q4_0 --threads 4 --json serve.json
//   npm run bench:serve -- --no-chunked-prefill          # A/B: prompts prefilled whole at admission
//
// Workloads (token ids; the model is random, so text would mean nothing):
//   chat     a prompt of --prompt tokens, then up to --max-tokens tokens greedily (EOS ends a
//            request on both sides; tokens/s counts the tokens actually generated)
//   scoring  a prefix of --prompt tokens and --options options of 1..3 tokens: the log-probability
//            of each option after the prefix (prefix evaluated once per request, options from it)
// For each workload and concurrency c: the same --requests requests (default 4 x the highest c, at
// least 8) are offered as c closed-loop clients (a client sends its next request when its previous one finished).
// Reported: requests/s, generated tokens/s (chat), p50 / p99 request latency; ratios emollm /
// llama.cpp at each c, each side's throughput at c = max over c = 1, the targets (emollm
// at the highest c >= 4x its c = 1 and >= llama.cpp's) as met / not met, and emollm's scheduler
// counters per workload and c (steps, mean rows per step, prefill chunks, steps mixing prompt and
// decode rows). Both sides get the same token budget per forward pass (--batch-tokens, default
// 512: emollm's batchTokens, llama.cpp's batchSize).
//
// Each side runs in its own child process, one after the other, so they never share the cores.
// Do not run long configurations on a shared machine: the figures need a quiet one.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

import { SHAPES, ensureModels } from './make-random-model.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const anchorsDir = join(here, 'anchors');
const NLC_VERSION = '3.21.1';

// A ~160M LLaMA (SmolLM-135M-like widths, GQA 9/3 rounded to 12/4 heads of 64): big enough that a
// decode step is weight-bound, small enough to bench in minutes on a laptop.
SHAPES['160m'] ??= { name: 'llama-160m', label: 'LLaMA-160M', n_embd: 768, n_layer: 12, n_head: 12, n_head_kv: 4, n_ff: 2048, n_vocab: 32000, n_ctx: 2048 };

const USAGE = `usage: npm run bench:serve -- [--smoke] [--shape tiny|160m|1.1b] [--dtype f32|f16|bf16|q8_0|q4_0]
       [--concurrency 1,4,16] [--requests N] [--prompt N] [--max-tokens N] [--options N]
       [--threads N] [--batch-tokens N] [--no-chunked-prefill] [--kv-positions N] [--kv-block-size N]
       [--no-anchor] [--json FILE]`;

function parseArgs(argv) {
  const o = { shape: '160m', dtype: 'q8_0', concurrency: [1, 4, 16], requests: 0, prompt: 64, maxTokens: 32, options: 4,
    threads: Math.max(1, Math.min(os.availableParallelism?.() ?? os.cpus().length, 8)), anchor: true, json: null,
    batchTokens: 512, chunkedPrefill: true, kvPositions: 0, kvBlockSize: 0 };
  const need = (i) => {
    if (i + 1 >= argv.length) fail(`${argv[i]} needs a value`);
    return argv[i + 1];
  };
  const int = (flag, v, min = 1) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) fail(`${flag} must be an integer >= ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--smoke': Object.assign(o, { shape: 'tiny', dtype: 'q8_0', concurrency: [1, 4], requests: 8, prompt: 16, maxTokens: 8, smoke: true }); break;
      case '--shape': o.shape = need(i); i++; if (!SHAPES[o.shape]) fail(`--shape: one of ${Object.keys(SHAPES).join(', ')}`); break;
      case '--dtype': o.dtype = need(i); i++; break;
      case '--concurrency': o.concurrency = need(i).split(',').map((v) => int('--concurrency', v)); i++; break;
      case '--requests': o.requests = int(a, need(i)); i++; break;
      case '--prompt': o.prompt = int(a, need(i), 2); i++; break;
      case '--max-tokens': o.maxTokens = int(a, need(i)); i++; break;
      case '--options': o.options = int(a, need(i)); i++; break;
      case '--threads': o.threads = int(a, need(i)); i++; break;
      case '--batch-tokens': o.batchTokens = int(a, need(i)); i++; break;
      case '--no-chunked-prefill': o.chunkedPrefill = false; break;
      // the paged KV pool of emollm's scheduler, in positions at every concurrency (default 0:
      // concurrency x context, nothing waits): smaller pools admit optimistically and preempt
      case '--kv-positions': o.kvPositions = int(a, need(i)); i++; break;
      case '--kv-block-size': o.kvBlockSize = int(a, need(i), 16); i++; break;
      case '--no-anchor': o.anchor = false; break;
      case '--json': o.json = need(i); i++; break;
      case '--help': case '-h': console.log(USAGE); process.exit(0); break;
      default: fail(`unknown option ${a}`);
    }
  }
  if (o.batchTokens < Math.max(...o.concurrency)) fail(`--batch-tokens must be at least the highest concurrency (${Math.max(...o.concurrency)}): every decoding sequence takes one row per step`);
  return o;
}

function fail(msg) {
  console.error(`bench:serve: ${msg}\n${USAGE}`);
  process.exit(2);
}

// ---------------------------------------------------------------- the requests (same for both sides)

function xorshift(seed) {
  let s = BigInt(seed) || 1n;
  return () => {
    s ^= s << 13n; s &= (1n << 64n) - 1n; s ^= s >> 7n; s ^= s << 17n; s &= (1n << 64n) - 1n;
    return Number(s % 1000003n) / 1000003;
  };
}

// The same requests at every concurrency, so the levels compare like with like.
function makeRequests(spec) {
  const rnd = xorshift(1000);
  const V = spec.nVocab;
  const id = () => 3 + Math.floor(rnd() * (V - 3)); // not BOS / EOS / UNK
  const n = spec.requests || Math.max(8, 4 * Math.max(...spec.concurrency));
  const out = [];
  for (let r = 0; r < n; r++) {
    const prompt = [1, ...Array.from({ length: spec.prompt - 1 }, id)];
    const options = Array.from({ length: spec.options }, () => Array.from({ length: 1 + Math.floor(rnd() * 3) }, id));
    out.push({ prompt, options });
  }
  return out;
}

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

// c closed-loop clients over the request list; returns { wall_s, latencies_s, tokens }
async function closedLoop(requests, c, run) {
  let next = 0;
  const lat = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: c }, async () => {
    for (;;) {
      const i = next++;
      if (i >= requests.length) return;
      const s = performance.now();
      const n = await run(requests[i]); // not `tokens += await ...`: that reads tokens before the await
      tokens += n;
      lat.push((performance.now() - s) / 1000);
    }
  }));
  return { wall_s: (performance.now() - t0) / 1000, latencies_s: lat, tokens };
}

function summary(r, n) {
  return { requests: n, wall_s: r.wall_s, requests_per_s: n / r.wall_s, tokens: r.tokens, tokens_per_s: r.tokens / r.wall_s,
    p50_s: pct(r.latencies_s, 50), p99_s: pct(r.latencies_s, 99) };
}

// ---------------------------------------------------------------- emollm child

async function emollmChild(spec) {
  const require = createRequire(import.meta.url);
  const b = require('node-gyp-build')(root);
  class EmollmError extends Error {
    constructor(code, message, options) { super(message, options); this.code = code; }
  }
  b.setErrorClass?.(EmollmError);
  const out = { side: 'emollm', ok: false, results: [] };
  const model = await b.loadModel(spec.model, { threads: spec.threads, nCtx: spec.nCtx });
  try {
    for (const c of spec.concurrency) {
      const batch = model.createBatch({ nCtx: spec.nCtx, maxSequences: c, batchTokens: spec.batchTokens, chunkedPrefill: spec.chunkedPrefill,
        ...(spec.kvPositions ? { kvCachePositions: spec.kvPositions } : {}), ...(spec.kvBlockSize ? { kvBlockSize: spec.kvBlockSize } : {}) });
      // the scheduler's counters over one workload (the difference of two snapshots)
      const counters = (a, b) => {
        const steps = b.steps - a.steps;
        return { steps, batchedSteps: b.batchedSteps - a.batchedSteps, maxBatch: b.maxBatch, stepRows: b.stepRows - a.stepRows,
          rowsPerStep: steps > 0 ? (b.stepRows - a.stepRows) / steps : 0, maxStepRows: b.maxStepRows,
          prefillChunks: b.prefillChunks - a.prefillChunks, prefillTokens: b.prefillTokens - a.prefillTokens,
          mixedSteps: b.mixedSteps - a.mixedSteps, decodedTokens: b.decodedTokens - a.decodedTokens,
          kvBlocksTotal: b.kvBlocksTotal, kvWaits: b.kvWaits - a.kvWaits, kvPreemptions: b.kvPreemptions - a.kvPreemptions,
          kvRecomputedTokens: b.kvRecomputedTokens - a.kvRecomputedTokens };
      };
      try {
        const reqs = makeRequests(spec);
        // warm-up: one request of each kind
        await batch.generate(Int32Array.from(reqs[0].prompt), { maxTokens: 2, temperature: 0 }).promise;
        const s0 = batch.stats();
        const chat = await closedLoop(reqs, c, async (q) => {
          // greedy to maxTokens or EOS (the llama.cpp side stops at EOS too)
          const r = await batch.generate(Int32Array.from(q.prompt), { maxTokens: spec.maxTokens, temperature: 0 }).promise;
          return r.tokens.length;
        });
        const s1 = batch.stats();
        const scoring = await closedLoop(reqs, c, async (q) => {
          const r = await batch.score(Int32Array.from(q.prompt), null, q.options.map((o) => Int32Array.from(o))).promise;
          if (r.logprobs.length !== q.options.length) throw new Error('scoring returned the wrong number of options');
          return 0;
        });
        const s2 = batch.stats();
        out.results.push({ concurrency: c, chat: summary(chat, reqs.length), scoring: summary(scoring, reqs.length),
          batchTokens: s2.batchTokens, chunkedPrefill: s2.chunkedPrefill, stats: { chat: counters(s0, s1), scoring: counters(s1, s2) } });
      } finally {
        await batch.close();
      }
    }
    out.ok = true;
  } finally {
    await model.close();
  }
  return out;
}

// ---------------------------------------------------------------- llama.cpp child

async function llamacppChild(spec) {
  const nlc = await import(join(anchorsDir, 'node_modules', 'node-llama-cpp', 'dist', 'index.js'));
  const llama = await nlc.getLlama({ gpu: false, build: 'never', skipDownload: true, usePrebuiltBinaries: true,
    progressLogs: false, maxThreads: spec.threads, logLevel: nlc.LlamaLogLevel.error });
  const out = { side: 'llama.cpp', ok: false, results: [], info: { buildType: llama.buildType, version: NLC_VERSION } };
  const model = await llama.loadModel({ modelPath: spec.model, gpuLayers: 0, useMmap: true });
  try {
    for (const c of spec.concurrency) {
      // one context, c sequences, the same per-sequence context as emollm's slots
      const context = await model.createContext({ contextSize: spec.nCtx * c, sequences: c, batchSize: Math.min(spec.batchTokens, spec.nCtx * c), threads: spec.threads });
      try {
        const free = Array.from({ length: c }, () => context.getSequence());
        const reqs = makeRequests(spec);
        const eos = model.tokens.eos;
        const withSeq = async (fn) => {
          const seq = free.pop();
          try { return await fn(seq); } finally { free.push(seq); }
        };
        const generate = (q) => withSeq(async (seq) => {
          await seq.clearHistory();
          let n = 0;
          for await (const t of seq.evaluate(q.prompt, { temperature: 0 })) {
            if (t === eos) break; // as emollm: EOS ends the request and is not counted
            if (++n >= spec.maxTokens) break;
          }
          return n;
        });
        await withSeq(async (seq) => { await seq.clearHistory(); for await (const t of seq.evaluate(reqs[0].prompt, { temperature: 0 })) { void t; break; } });
        const chat = await closedLoop(reqs, c, generate);
        const scoring = await closedLoop(reqs, c, (q) => withSeq(async (seq) => {
          await seq.clearHistory();
          const P = q.prompt.length;
          // the prefix once, with the next-token distribution after its last token
          const input = q.prompt.map((t, i) => (i === P - 1 ? [t, { generateNext: { probabilities: true } }] : t));
          const first = (await seq.controlledEvaluate(input))[P - 1];
          for (const o of q.options) {
            let lp = Math.log(first.next.probabilities.get(o[0]) ?? 0);
            if (o.length > 1) {
              const res = await seq.controlledEvaluate(o.slice(0, -1).map((t) => [t, { generateNext: { probabilities: true } }]));
              for (let j = 1; j < o.length; j++) lp += Math.log(res[j - 1].next.probabilities.get(o[j]) ?? 0);
              await seq.eraseContextTokenRanges([{ start: P, end: seq.nextTokenIndex }]);
            }
            void lp;
          }
          return 0;
        }));
        out.results.push({ concurrency: c, chat: summary(chat, reqs.length), scoring: summary(scoring, reqs.length) });
      } finally {
        await context.dispose();
      }
    }
    out.ok = true;
  } finally {
    await model.dispose();
    await llama.dispose();
  }
  return out;
}

// ---------------------------------------------------------------- parent

function ensureAnchor(log) {
  const pkg = join(anchorsDir, 'node_modules', 'node-llama-cpp', 'package.json');
  if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).version === NLC_VERSION) return true;
  log(`installing the llama.cpp anchor (node-llama-cpp@${NLC_VERSION}) into ${relative(root, anchorsDir)}/ ...`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const lock = existsSync(join(anchorsDir, 'package-lock.json'));
  const r = spawnSync(npm, [lock ? 'ci' : 'install', '--prefix', anchorsDir, '--no-audit', '--no-fund', '--ignore-scripts'], { cwd: root, stdio: ['ignore', 2, 2] });
  return r.status === 0;
}

function runChild(side, spec, log) {
  log(`${side}: running (${spec.concurrency.join(', ')} concurrent) ...`);
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', side, JSON.stringify(spec)],
    { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
  const last = (r.stdout ?? '').trim().split('\n').pop();
  try {
    return JSON.parse(last);
  } catch {
    return { side, ok: false, error: `the ${side} child exited with status ${r.status} and no result` };
  }
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') {
    const spec = JSON.parse(argv[2]);
    let out;
    try {
      out = argv[1] === 'emollm' ? await emollmChild(spec) : await llamacppChild(spec);
    } catch (e) {
      out = { side: argv[1], ok: false, error: String(e?.stack ?? e) };
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
    process.exit(out.ok ? 0 : 1);
  }
  const o = parseArgs(argv);
  const log = (...a) => console.error('[bench:serve]', ...a);
  const shape = SHAPES[o.shape];
  const [made] = ensureModels([[o.shape, o.dtype]], { hf: false, log });
  const gguf = made?.gguf?.path;
  if (typeof gguf !== 'string' || !existsSync(gguf)) fail(`could not make the ${o.shape} ${o.dtype} model`);
  const nCtx = o.prompt + o.maxTokens + 8;
  const spec = { model: gguf, threads: o.threads, nCtx, nVocab: shape.n_vocab, concurrency: o.concurrency, requests: o.requests,
    prompt: o.prompt, maxTokens: o.maxTokens, options: o.options, batchTokens: o.batchTokens, chunkedPrefill: o.chunkedPrefill,
    kvPositions: o.kvPositions, kvBlockSize: o.kvBlockSize };
  const sides = [runChild('emollm', spec, log)];
  if (o.anchor) {
    if (ensureAnchor(log)) sides.push(runChild('llama.cpp', spec, log));
    else sides.push({ side: 'llama.cpp', ok: false, error: 'node-llama-cpp could not be installed' });
  }
  const [em, lc] = sides;
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout?.trim() || null;
  const report = { bench: 'serve', date: new Date().toISOString(), commit, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, loadavg: os.loadavg() },
    model: { shape: o.shape, dtype: o.dtype, file: relative(root, gguf) }, spec, emollm: em, llamacpp: lc ?? null, ratios: [] };
  const f = (x, d = 2) => (x === undefined ? '-' : x.toFixed(d));
  console.log(`bench:serve  ${shape.label} ${o.dtype}, ${o.threads} threads, prompt ${o.prompt}, ${o.maxTokens} new tokens, ${o.options} options, ${o.batchTokens} tokens per step, chunked prefill ${o.chunkedPrefill ? 'on' : 'off'}${o.smoke ? '  (SMOKE: tiny sizes, figures meaningless)' : ''}`);
  console.log(`machine: ${os.cpus()[0]?.model ?? '?'}, ${os.cpus().length} cpus, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}; commit ${commit ?? '?'}`);
  console.log('workload  c   emollm req/s  tok/s   p50 s   p99 s  | llama.cpp req/s  tok/s   p50 s   p99 s  | ratio req/s');
  for (const kind of ['chat', 'scoring']) {
    for (const c of o.concurrency) {
      const a = em.ok ? em.results.find((r) => r.concurrency === c)?.[kind] : undefined;
      const b = lc?.ok ? lc.results.find((r) => r.concurrency === c)?.[kind] : undefined;
      const ratio = a && b ? a.requests_per_s / b.requests_per_s : undefined;
      report.ratios.push({ kind, concurrency: c, emollm_over_llamacpp: ratio ?? null });
      console.log(`${kind.padEnd(8)} ${String(c).padStart(3)}  ${f(a?.requests_per_s).padStart(10)} ${f(a?.tokens_per_s, 1).padStart(7)} ${f(a?.p50_s, 3).padStart(7)} ${f(a?.p99_s, 3).padStart(7)}  | ${f(b?.requests_per_s).padStart(13)} ${f(b?.tokens_per_s, 1).padStart(7)} ${f(b?.p50_s, 3).padStart(7)} ${f(b?.p99_s, 3).padStart(7)}  | ${f(ratio).padStart(6)}`);
    }
    if (o.concurrency.length > 1) {
      const cLo = Math.min(...o.concurrency), cHi = Math.max(...o.concurrency);
      const scaling = (side) => {
        if (!side?.ok) return undefined;
        const lo = side.results.find((r) => r.concurrency === cLo)?.[kind];
        const hi = side.results.find((r) => r.concurrency === cHi)?.[kind];
        return lo && hi ? hi.requests_per_s / lo.requests_per_s : undefined;
      };
      const se = scaling(em), sl = scaling(lc);
      report.ratios.push({ kind, emollm_scaling: se ?? null, llamacpp_scaling: sl ?? null, from: cLo, to: cHi });
      console.log(`${kind}: throughput at c=${cHi} / c=${cLo}: emollm ${f(se)}x, llama.cpp ${f(sl)}x`);
      // the targets: at the highest c, >= 4x emollm's c = 1 and >= llama.cpp's throughput
      const hiEm = em.ok ? em.results.find((r) => r.concurrency === cHi)?.[kind] : undefined;
      const hiLc = lc?.ok ? lc.results.find((r) => r.concurrency === cHi)?.[kind] : undefined;
      if (cLo === 1 && se !== undefined) {
        const vsAnchor = hiEm && hiLc ? hiEm.requests_per_s / hiLc.requests_per_s : undefined;
        report.ratios.push({ kind, target_scaling_4x: se >= 4, target_vs_llamacpp: vsAnchor === undefined ? null : vsAnchor >= 1 });
        console.log(`${kind}: target c=${cHi} >= 4x c=1: ${se >= 4 ? 'met' : 'NOT met'} (${f(se)}x); >= llama.cpp at c=${cHi}: ${vsAnchor === undefined ? 'not measured' : vsAnchor >= 1 ? 'met' : 'NOT met'} (${f(vsAnchor)}x)`);
      }
    }
  }
  if (em.ok)
    for (const r of em.results)
      for (const kind of ['chat', 'scoring']) {
        const s = r.stats[kind];
        console.log(`emollm ${kind} c=${r.concurrency}: ${s.steps} steps (${s.batchedSteps} with several sequences, at most ${s.maxBatch}), ${f(s.rowsPerStep, 1)} rows per step (max ${s.maxStepRows} of ${r.batchTokens}), ${s.prefillChunks} prefill chunks, ${s.mixedSteps} steps mixing prompt and decode rows; KV pool ${s.kvBlocksTotal} blocks, ${s.kvWaits} waits, ${s.kvPreemptions} preemptions (${s.kvRecomputedTokens} positions recomputed)`);
      }
  if (!em.ok) console.log(`emollm: failed: ${em.error}`);
  if (lc && !lc.ok) console.log(`llama.cpp: not measured: ${lc.error}`);
  if (o.json) {
    writeFileSync(o.json, `${JSON.stringify(report, null, 2)}\n`);
    log(`wrote ${o.json}`);
  }
  // a run where emollm or a requested anchor failed is not a result
  process.exit(em.ok && (!o.anchor || lc?.ok) ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
