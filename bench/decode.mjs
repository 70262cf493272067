#!/usr/bin/env node
// `npm run bench:decode [-- options]`: end-to-end prefill and decode speed of emollm's LLaMA
// decoder on random-weight models, beside llama.cpp (node-llama-cpp's prebuilt CPU binary) on
// the same GGUF files, same threads, same context / batch, same prompt, in the same run.
// See bench/README.md ("Decode benchmark") for what is measured and how to read it.
//
//   npm run bench:decode                          # default set (1.1B f32/f16/bf16/q8_0/q4_0, 7B q4_0/q8_0)
//   npm run bench:decode -- --quick               # 1.1B q4_0 + q8_0
//   npm run bench:decode -- --shapes 1.1b --dtypes q4_0,bf16 --threads 2
//   npm run bench:decode -- --full                # adds 7B bf16 (27 GB of model files)
//   npm run -s bench:decode -- --json > decode.json
//   npm run bench:decode -- --shapes 1.1b --dtypes q4_0 --rounds 4 --probe-every round   # 4 alternated rounds, probes between
//   npm run bench:decode -- --shapes 1.1b --dtypes q4_0 --probe-every chunk   # decode chunks paired with in-process probes
//
// Every measurement runs in its own child process (one per model, side and round), one at a time, so
// the two engines never share the cores and each peak RSS is one process's. A model's sides are
// alternated in rounds with read-bandwidth probes beside its block (bench/decode_rounds.mjs).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { childMain, machineBusyS, median, processCpuS, waitQuiet } from './measure.mjs';
import { DEFAULT_OUT, DTYPES, SHAPES, decodeWeightBytes, ensureModels, parseSet } from './make-random-model.mjs';
import { PROBE_EVERY, benchPairedRun, bwPct, ceilingOf, chunkPlan, chunkRunByCpu, decodeGbs, decodeSchedule, lbPairedOptions, pairedBw, pairedRatio, perRound, probesBeside, roundRatios } from './decode_rounds.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const anchorsDir = join(here, 'anchors');
const anchorScript = join(anchorsDir, 'llamacpp-anchor.mjs');
const NLC_VERSION = '3.21.1';

// ============================================================================ emollm child
// The paired probe's read forms (--probe-every chunk): streams a thread, prefetch bytes ahead.
const PROBE_FORMS = [{ streams: 4, prefetch: 1024 }, { streams: 4, prefetch: 0 }, { streams: 2, prefetch: 0 }];
// Its buffer and passes a form (the child's spec.probeBytes / probeReps), and the words every
// description of the probe uses (--help and the run's notes), made from these constants.
const PROBE_BYTES = 256 << 20, PROBE_REPS = 2;
// llama-bench's paired decode runs (--probe-every chunk): tokens a run and runs a round (defaults of
// --lb-tokens / --lb-runs), and the seconds llama-bench sleeps before each test (--delay: the window
// the parent's probe runs in; whole seconds, 1 the least)
const LB_TOKENS = 16, LB_RUNS = 8, LB_DELAY_S = 1;
const probeFormsText = () => `streams a thread ${PROBE_FORMS.map((f) => `${f.streams}${f.prefetch ? ` + ${f.prefetch / 1024} KiB prefetch` : ''}`).join(', ')}` +
  ` (no prefetch where none is named), ${PROBE_REPS} passes each, the best pass`;
// Whether a run pairs the emollm child's decode chunks with in-process probes (--probe-every chunk).
const pairsChunks = (o) => o.probe && o.probeEvery === 'chunk';
// The paired read probe over a binding's readBandwidth: each read form (PROBE_FORMS) `reps` passes,
// the best pass of all, as bench_kernels keeps its best variant (which form wins moves with the VM's
// phase; the wins are counted in `wins`; bench/README's h-probe row: 4 streams without prefetch
// most often, then 2 streams). keep: the buffer stays allocated between the probes (readBandwidth
// frees it after a call without keep); warm() makes it (page faults) before the first timed probe.
// The emollm child probes beside its decode chunks with it, the parent beside llama-bench's paired
// runs (the same forms, buffer and threads). One thread: also the best pass by the thread's CPU
// time (readBandwidth's cpuGbs).
function readProbe(b, { bytes, reps, threads }) {
  const opts = { bytes, reps, threads, keep: true };
  const wins = {};
  return {
    wins,
    warm: () => b.readBandwidth({ ...opts, reps: 1 }),
    probe: async () => {
      let best = 0, cpu = null, form = null;
      for (const f of PROBE_FORMS) {
        const r = await b.readBandwidth({ ...opts, ...f });
        if (r.gbs > best) { best = r.gbs; form = `${f.streams}s/${f.prefetch}`; }
        if (Number.isFinite(r.cpuGbs)) cpu = Math.max(cpu ?? 0, r.cpuGbs);
      }
      wins[form] = (wins[form] ?? 0) + 1;
      return { gbs: best, cpu };
    },
  };
}
// `node bench/decode.mjs --child '<spec>'`: same protocol as bench/anchors/llamacpp-anchor.mjs.
async function loadBinding() {
  // the compiled TS wrapper when there is one, else the addon itself (what lib/native.ts does)
  const dist = join(root, 'dist', 'native.js');
  if (existsSync(dist)) return (await import(pathToFileURL(dist).href)).native();
  const require = createRequire(import.meta.url);
  const b = require('node-gyp-build')(root);
  class EmollmError extends Error {
    constructor(code, message, options) { super(message, options); this.code = code; this.name = 'EmollmError'; }
  }
  b.setErrorClass?.(EmollmError);
  return b;
}

async function emollmChild(spec) {
  const log = (...a) => console.error('[emollm]', ...a);
  const out = { side: 'emollm', ok: false, runs: [], info: {} };
  // childMain: records a failure, the peak RSS, closes the open context then the model, writes
  // the JSON line and exits
  await childMain(out, log, async (use) => {
    const b = await loadBinding();
    if (typeof b.loadModel !== 'function') throw new Error('the addon has no loadModel (decoder binding not built yet)');
    try { out.info.cpu = b.cpuInfo?.(); } catch {}
    // --probe-every chunk: the in-process read probe (lib/kernels.ts readBandwidth, readProbe above)
    // beside each decode chunk; its buffer is made here, before the model, so the peak RSS holds it
    // whole and the parent takes it off again (probe_buffer_mib), and no timed probe pays its page
    // faults (the wins a run counted are in its JSON, info.probe.wins); the process exits after its
    // runs, which frees it
    const chunked = !!spec.chunk;
    const rp = chunked ? readProbe(b, { bytes: spec.probeBytes, reps: spec.probeReps, threads: spec.threads }) : null;
    const probeGbs = () => rp.probe();
    if (chunked) {
      if (typeof b.readBandwidth !== 'function') throw new Error('the addon has no readBandwidth (rebuild it: node scripts/build-addon.mjs)');
      const w = await rp.warm();
      out.probe_buffer_mib = Math.ceil(w.bytes / (2 << 20)) * 2;
      out.info.probe = { bytes: w.bytes, reps: spec.probeReps, threads: w.threads, forms: PROBE_FORMS, isa: w.isa, wins: rp.wins };
    }
    // decodeBf16Products (--bf16-products): the decode steps' attention on bf16 dot products
    const ctxOpts = { nCtx: spec.nCtx, nBatch: spec.nBatch, ...(spec.decodeBf16Products ? { decodeBf16Products: true } : {}) };
    const t0 = performance.now();
    const model = use(await b.loadModel(spec.model, { threads: spec.threads, nCtx: spec.nCtx, kvCacheType: spec.kvCacheType }));
    let ctx = use(model.createContext(ctxOpts));
    out.load_s = (performance.now() - t0) / 1000;
    const prompt = Int32Array.from(spec.prompt);
    const noStop = new Int32Array(0);

    // warmup: touch every weight page (mmap) and the context's buffers
    await ctx.eval(prompt.subarray(0, spec.warmupTokens));
    await ctx.close();
    try { out.info.model = model.info(); } catch {}

    const tStart = performance.now();
    for (let run = 0; run < spec.maxRuns; run++) {
      ctx = use(model.createContext(ctxOpts));
      const busy0 = machineBusyS(), cpu0 = processCpuS();
      // prefill: the whole prompt into the empty cache (eval runs it in batches of nBatch)
      const t = performance.now();
      await ctx.eval(prompt);
      const tPrefill = performance.now();
      // decode: generate from the same prompt; the cached prefix is kept and only the last prompt
      // token is evaluated again, then one token at a time, greedy. With --probe-every chunk the
      // same tokens come in chunks of spec.chunk (each a generate call continuing from the tokens
      // so far: the cache keeps them, the call evaluates the last one), a read probe before the
      // first chunk and after each one: chunk j's tokens between probes j and j + 1.
      const per = [];
      let batched = 0;
      const gen = async (from, maxTokens) => {
        const times = [], counts = [], cpus = [];
        const res = await ctx.generate(from, { maxTokens, temperature: 0, stopTokens: noStop }, (ids) => {
          times.push(performance.now());
          if (chunked) cpus.push(processCpuS());
          counts.push(ids?.length ?? 1);
        });
        // The binding delivers the tokens queued since its last delivery (one per call while the
        // event loop is idle and decoding is slower than a callback): each token of a delivery of k
        // gets 1/k of the gap since the previous delivery; decode = 1 / median per-token time
        // after the first delivery (of each chunk).
        for (let i = 1; i < times.length; i++) for (let k = 0; k < counts[i]; k++) per.push((times[i] - times[i - 1]) / counts[i]);
        batched += counts.filter((c) => c !== 1).length;
        return { res, times, counts, cpus };
      };
      let toks, res, first = [], last = [];
      const chunks = [], probesGbs = [], probesCpuGbs = [];
      if (!chunked) {
        const g = await gen(prompt, spec.gen);
        res = g.res;
        toks = Array.from(res?.tokens ?? []);
        if (g.times.length) { first = [g.times[0]]; last = [g.times.at(-1)]; }
      } else {
        toks = [];
        const probe = async () => {
          const x = await probeGbs();
          probesGbs.push(x.gbs);
          probesCpuGbs.push(x.cpu);
        };
        await probe();
        for (const c of spec.chunkPlan) {
          const g = await gen(Int32Array.from([...prompt, ...toks]), c.count);
          res = g.res;
          const got = Array.from(res?.tokens ?? []);
          toks.push(...got);
          await probe();
          if (g.times.length) { first.push(g.times[0]); last.push(g.times.at(-1)); }
          // timed: the tokens delivered after the chunk's first delivery, over the gaps between them
          const timed = g.counts.slice(1).reduce((a, x) => a + x, 0);
          // cpu_s: the process's CPU time over the same span (with one thread the decoding thread's
          // running time and the callbacks': time another process held the core left out)
          chunks.push({ first: c.first + (g.counts[0] ?? 1), tokens: timed, s: g.times.length > 1 ? (g.times.at(-1) - g.times[0]) / 1000 : null,
            cpu_s: g.cpus.length > 1 ? g.cpus.at(-1) - g.cpus[0] : null });
          if (got.length < c.count) break;
        }
      }
      const tEnd = performance.now();
      const r = { prefill_s: (tPrefill - t) / 1000, tokens_out: toks.length, stop: res?.stopReason,
        other_cores: (machineBusyS() - busy0 - (processCpuS() - cpu0)) / ((tEnd - t) / 1000) };
      if (chunked) { r.chunks = chunks; r.probes_gbs = probesGbs; r.probes_cpu_gbs = probesCpuGbs; }
      r.first_token_s = first.length ? (first[0] - tPrefill) / 1000 : NaN;
      r.decode_tok_s = per.length ? 1000 / median(per) : NaN;
      // mean: the tokens after each generate call's first delivery over the time between its first
      // and last deliveries (one call without chunks: all of them but the first)
      const spanMs = first.reduce((a, f, i) => a + (last[i] - f), 0);
      r.decode_mean_tok_s = per.length ? (1000 * per.length) / spanMs : NaN;
      if (batched) r.batched_deliveries = batched;
      if (!per.length) r.note = `no per-token deliveries (${toks.length} tokens)`;
      if (toks.length < spec.gen) r.note = `stopped after ${toks.length} tokens (${res?.stopReason})`;
      out.runs.push(r);
      if (run === 0) out.tokens = toks;
      log(`run ${run + 1}: prefill ${(prompt.length / r.prefill_s).toFixed(1)} tok/s, decode ${r.decode_tok_s.toFixed(2)} tok/s, other work ${r.other_cores.toFixed(2)} cores` +
        (chunked && probesGbs.length ? `; ${chunks.length} chunks, probes ${Math.min(...probesGbs).toFixed(1)}-${Math.max(...probesGbs).toFixed(1)} GB/s` : ''));
      await ctx.close();
      // enough: the budget is spent and one run was undisturbed (or 3x the budget is spent)
      const spent = (performance.now() - tStart) / 1000;
      if (spent > spec.budgetS && (out.runs.some((x) => x.other_cores < 0.25) || spent > 3 * spec.budgetS)) break;
      if (run + 1 < spec.maxRuns && spec.quietWaitS > 0) await waitQuiet(spec.quietWaitS);
    }
  });
}

// ============================================================================ parent
function parseArgs(argv) {
  const o = {
    quick: false, full: false, threads: 0, formats: ['gguf', 'hf'], prompt: 512, gen: 64, nCtx: 1024, nBatch: 512,
    budgetS: 20, maxRuns: 4, warmupTokens: 16, anchor: true, nlc: true, emollm: true, build: true, probe: true, profile: false, kvType: null, emollmKv: 'f32', bf16Products: false,
    out: DEFAULT_OUT, json: false, jsonOut: null, seed: 1, timeoutS: 1800, quietWaitS: 30, gguf: null,
    rounds: 2, probeEvery: 'block', chunk: 8, cpuClock: false, lbTokens: null, lbRuns: null,
  };
  const val = (i, name) => {
    if (i + 1 >= argv.length) throw new Error(`${name} needs a value`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { argv.splice(i + 1, 0, a.slice(eq + 1)); a = argv[i] = a.slice(0, eq); }
    switch (a) {
      case '--quick': o.quick = true; break;
      case '--full': o.full = true; break;
      case '--shapes': case '--dtypes': i++; break;  // read by parseSet
      case '--threads': o.threads = Number(val(i, a)); i++; break;
      case '--formats': o.formats = val(i, a).split(','); i++; break;
      case '--prompt': o.prompt = Number(val(i, a)); i++; break;
      case '--gen': o.gen = Number(val(i, a)); i++; break;
      case '--ctx': o.nCtx = Number(val(i, a)); i++; break;
      case '--batch': o.nBatch = Number(val(i, a)); i++; break;
      case '--budget': o.budgetS = Number(val(i, a)); i++; break;
      case '--runs': o.maxRuns = Number(val(i, a)); i++; break;
      case '--rounds': o.rounds = Number(val(i, a)); i++; break;
      case '--probe-every': o.probeEvery = val(i, a); i++; break;
      case '--chunk': o.chunk = Number(val(i, a)); i++; break;
      case '--lb-tokens': o.lbTokens = Number(val(i, a)); i++; break;
      case '--lb-runs': o.lbRuns = Number(val(i, a)); i++; break;
      case '--cpu-clock': o.cpuClock = true; break;
      case '--anchor-kv': o.kvType = val(i, a).toUpperCase(); i++; break;
      case '--kv-type': o.emollmKv = val(i, a); i++; break;
      case '--bf16-products': o.bf16Products = true; break;
      case '--no-anchor': o.anchor = false; break;
      case '--no-node-llama-cpp': o.nlc = false; break;
      case '--no-emollm': o.emollm = false; break;
      case '--no-build': o.build = false; break;
      case '--no-probe': o.probe = false; break;
      case '--profile': o.profile = true; break;
      case '--profile-cpu': o.profile = true; o.profileCpu = true; break;
      case '--models-dir': o.out = val(i, a); i++; break;
      case '--gguf': o.gguf = val(i, a); i++; break;
      case '--json': o.json = true; break;
      case '--json-out': o.jsonOut = val(i, a); i++; break;
      case '--seed': o.seed = Number(val(i, a)); i++; break;
      case '--timeout': o.timeoutS = Number(val(i, a)); i++; break;
      case '--quiet-wait': o.quietWaitS = Number(val(i, a)); i++; break;
      case '--help': case '-h': o.help = true; break;
      default: throw new Error(`unknown option ${a} (--help)`);
    }
  }
  for (const f of o.formats) if (f !== 'gguf' && f !== 'hf') throw new Error(`--formats: gguf and/or hf, not '${f}'`);
  if (o.prompt + o.gen > o.nCtx) throw new Error(`--prompt ${o.prompt} + --gen ${o.gen} exceeds --ctx ${o.nCtx}`);
  if (o.gen < 2) throw new Error('--gen must be at least 2');
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new Error(`--rounds: a whole number >= 1, not '${o.rounds}'`);
  if (!PROBE_EVERY.includes(o.probeEvery)) throw new Error(`--probe-every: ${PROBE_EVERY.join(' or ')}, not '${o.probeEvery}'`);
  if (o.probeEvery === 'chunk' && (!Number.isInteger(o.chunk) || o.chunk < 2 || o.chunk > o.gen)) throw new Error(`--chunk: a whole number of tokens from 2 to --gen (${o.gen}), not '${o.chunk}'`);
  if (o.cpuClock && (o.probeEvery !== 'chunk' || o.threads !== 1)) throw new Error('--cpu-clock pairs the chunks by CPU time: it needs --probe-every chunk and --threads 1');
  // llama-bench's paired runs (--probe-every chunk): their tokens and how many a round
  Object.assign(o, lbPairedOptions({ lbTokens: o.lbTokens, lbRuns: o.lbRuns, gen: o.gen, paired: pairsChunks(o) }, { tokens: LB_TOKENS, runs: LB_RUNS }));
  if (!['f32', 'f16', 'bf16'].includes(o.emollmKv)) throw new Error(`--kv-type: f32, f16 or bf16, not '${o.emollmKv}'`);
  if (o.bf16Products && o.emollmKv !== 'bf16') throw new Error('--bf16-products acts on a bf16 KV cache only: add --kv-type bf16');
  return o;
}

const HELP = `usage: npm run bench:decode -- [options]
  --quick               1.1B q4_0 + q8_0 only
  --full                also LLaMA-2-7B bf16 (~27 GB of model files)
  --shapes a,b          1.1b, 7b (tiny: a few-MB model for smoke tests)
  --dtypes a,b          f32 (1.1b only), f16, bf16, q8_0, q4_0
  --formats gguf,hf     emollm runs the GGUF and, for f32/f16/bf16, the HF safetensors folder (default both)
  --threads N           threads for both engines (default: physical cores)
  --prompt N            prompt tokens (default 512); --gen N generated tokens (default 64)
  --ctx N, --batch N    context positions (default 1024) and batch (default 512), both engines
  --budget S            per model and side: runs until S seconds are spent and one run was undisturbed
                        (at most 3 x S; default 20), --runs N at most (default 4), at least 1; both split
                        over the rounds (a round: S / rounds seconds, ceil(N / rounds) runs, at least 1)
  --rounds N            per model, every side (emollm's formats, llama-bench, node-llama-cpp) measured N times,
                        alternated A B | B A | A B ... (default 2; the next model starts the other way): the
                        ratio columns are the median of the per-round ratios (each round's two figures
                        measured seconds apart); 1 = one pass, as before
  --probe-every block|round|chunk  read-bandwidth probe (bench_kernels) before and after each model's block,
                        one between two models shared (block, default: models + 1 probes), or also between its
                        rounds (round); a row's %bw is against the highest probe beside its own block, the
                        table's probes column shows their range. chunk: the block's probes, and emollm's child
                        decodes in chunks of --chunk tokens with an in-process read probe before the first
                        chunk and after each (readBandwidth: same threads, ${PROBE_BYTES >> 20} MiB in 2 MiB pages;
                        ${probeFormsText()});
                        each chunk's (weights + KV) GB/s against the higher of its two probes: the paired %bw
                        columns (median and range over the chunks) and the chunk probes' range, beside the
                        block %bw (the RSS column leaves the probe buffer out)
  --chunk N             tokens a chunk with --probe-every chunk (default 8; its first token's gap is not timed)
  --lb-tokens N, --lb-runs N  with --probe-every chunk: llama-bench's decode also as N short runs a round
                        (--lb-runs, default ${LB_RUNS}) of --lb-tokens tokens each (default ${LB_TOKENS}, at most --gen) after
                        -d prompt, in one llama-bench process (-r 1 a test, --delay ${LB_DELAY_S}: the first test computes
                        the depth, the others restore it), each run between two read probes taken in this process
                        (the emollm child's probe: same forms, buffer and threads) while llama-bench sleeps before
                        its next test: llama.cpp's paired %bw (weights + its KV rows, against the higher of the
                        two probes) beside emollm's, and 'ratio tg paired' = emollm's median tok/s per GB/s of
                        its chunks' probes / llama-bench's (each side's decode rate held to the bandwidth of its
                        moment; wall time on both sides, CPU time on both with --cpu-clock) beside 'ratio tg'. The 'tg'
                        column stays llama-bench's -n --gen -r run
  --cpu-clock           with --probe-every chunk and --threads 1: the paired columns by CPU time (each chunk's
                        process CPU seconds, each probe pass's thread CPU seconds: time other processes held
                        the core left out, readable on a loaded machine); the wall-time pairing stays in the JSON
  --anchor-kv f32|f16   llama.cpp KV cache type (default: llama.cpp's own, f16)
  --kv-type f32|f16|bf16  emollm's KV cache type (default f32; f16 = llama.cpp's default), the table's kv column
  --bf16-products       emollm's decode attention on bf16 dot products (the decodeBf16Products context option:
                        a bf16 KV cache on AVX512-BF16 only, logits within the kernel's bound, not bit-equal;
                        the kv column shows bf16+dp)
  --no-anchor, --no-emollm, --no-probe (no probes, no %bw), --no-build (skip building the addon)
  --no-node-llama-cpp   llama-bench as the only llama.cpp anchor (node-llama-cpp's child is slow to load a 7B)
  --profile             emollm child with EMOLLM_PROFILE=1: per-op decode profile (GEMV by weight, attention,
                        norms, rope, ...) printed and in the JSON (raw[].result.profile); slows emollm slightly
  --profile-cpu         --profile with each op's CPU time (EMOLLM_PROFILE_CPU=1: the calling thread's; with
                        --threads 1 the op's own running time, so its GB/s holds on a loaded machine)
  llama-bench anchor: measured when bench/anchors/llama.cpp/build/bin/llama-bench exists (sh bench/setup-anchors.sh llama-bench)
  --models-dir DIR      where the random models are (default bench/models)
  --gguf FILE           measure this GGUF instead of a generated model (no HF folder), as the one --shapes and
                        --dtypes given (e.g. --gguf bench/models/llava1.5-7b-q4_0.gguf --shapes 7b --dtypes q4_0:
                        LLaVA-1.5's LLaMA-7B-shaped text decoder, random weights)
  --json                JSON on stdout (table on stderr); --json-out FILE writes it to a file
  --timeout S           kill a child measurement after S seconds (default 1800)
  --quiet-wait S        before each measurement wait up to S s for other work to stop (default 30; 0: don't)`;

// Physical cores (as bench/kernels.mjs): unique (physical id, core id) pairs.
function physicalCores() {
  try {
    const cores = new Set();
    let phys = '0';
    for (const line of readFileSync('/proc/cpuinfo', 'utf8').split('\n')) {
      const [k, v] = line.split(':').map((s) => s && s.trim());
      if (k === 'physical id') phys = v;
      else if (k === 'core id') cores.add(`${phys}/${v}`);
    }
    if (cores.size) return cores.size;
  } catch {}
  return os.availableParallelism?.() ?? os.cpus().length;
}

function randomPrompt(n, nVocab, seed) {
  // xorshift32; ids after <unk> <s> </s> and the 256 byte tokens
  let x = (seed * 2654435761) >>> 0 || 1;
  const ids = [];
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    ids.push(259 + (x % (nVocab - 259)));
  }
  return ids;
}

// Runs a child; resolves with its last stdout line parsed as JSON (or an error object).
function runChild(args, { timeoutS, label, env }) {
  return new Promise((resolveP) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => {
      stderr += d;
      for (const line of String(d).split('\n')) if (line.trim()) process.stderr.write(`    ${line}\n`);
    });
    const timer = setTimeout(() => { child.kill('SIGKILL'); }, timeoutS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const wall = (performance.now() - t0) / 1000;
      const last = stdout.trim().split('\n').filter(Boolean).at(-1);
      let res;
      try { res = JSON.parse(last); } catch {
        res = { ok: false, error: signal ? `${label}: killed (${signal}) after ${wall.toFixed(0)} s` : `${label}: exit ${code}, no result\n${stderr.slice(-2000)}` };
      }
      res.wall_s = wall;
      resolveP(res);
    });
  });
}


function ensureAnchors(log) {
  const pkg = join(anchorsDir, 'node_modules', 'node-llama-cpp', 'package.json');
  const installed = existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).version === NLC_VERSION;
  if (installed) return true;
  log(`bench:decode: installing the llama.cpp anchor (node-llama-cpp@${NLC_VERSION}) into ${relative(root, anchorsDir)}/ ...`);
  // npm 11 does not run node-llama-cpp's postinstall (which could download / build llama.cpp);
  // the prebuilt CPU binaries come as the optional packages @node-llama-cpp/<platform>.
  const hasLock = existsSync(join(anchorsDir, 'package-lock.json'));
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const r = spawnSync(npm, [hasLock ? 'ci' : 'install', '--prefix', anchorsDir, '--no-audit', '--no-fund', '--ignore-scripts'],
    { cwd: root, stdio: ['ignore', 2, 2] });
  if (r.status !== 0) {
    log('bench:decode: could not install node-llama-cpp; the llama.cpp columns will be empty (retry, or pass --no-anchor).');
    return false;
  }
  return true;
}

// Builds the addon (incremental) and checks for the decoder binding, in a child process.
function emollmAvailable(o, log) {
  if (o.build) {
    log('bench:decode: bringing the addon up to date (node scripts/build-addon.mjs) ...');
    const r = spawnSync(process.execPath, [join(root, 'scripts', 'build-addon.mjs')], { cwd: root, stdio: ['ignore', 2, 2] });
    if (r.status !== 0) return 'the addon build failed (see above)';
  }
  const code = `const b=require('node-gyp-build')(${JSON.stringify(root)});process.stdout.write(typeof b.loadModel)`;
  const r = spawnSync(process.execPath, ['-e', code], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) return `the addon does not load: ${(r.stderr || '').trim().split('\n').slice(-3).join(' ')}`;
  if (r.stdout !== 'function') return 'the addon has no loadModel yet (the decoder binding is not built)';
  return null;
}

// llama.cpp's own llama-bench, built from the llama.cpp source node-llama-cpp pins by
// `sh bench/setup-anchors.sh llama-bench` (no per-token JavaScript round trip, unlike the
// node-llama-cpp anchor). Returns its path, or null and why not.
const LLAMA_BENCH = join(anchorsDir, 'llama.cpp', 'build', 'bin', 'llama-bench');
function llamaBenchAvailable() {
  if (existsSync(LLAMA_BENCH)) return { path: LLAMA_BENCH, whyNot: null };
  return { path: null, whyNot: `not built (${relative(root, LLAMA_BENCH)} missing); build it with: sh bench/setup-anchors.sh llama-bench` };
}

// llama-bench's arguments for the model and the settings both of its runs share with emollm's:
// threads, batch sizes, KV cache type.
function llamaBenchModelArgs(model, o, threads) {
  const args = ['-m', model, '-t', String(threads), '-b', String(o.nBatch), '-ub', String(o.nBatch)];
  if (o.kvType) args.push('-ctk', o.kvType.toLowerCase(), '-ctv', o.kvType.toLowerCase());
  return args;
}

// Two llama-bench tests on the same file and settings: prefill (-p prompt into an empty cache)
// and decode (-n gen after -d prompt cached positions, the emollm measurement's positions).
// Best sample of each (the table's figures are best runs too). Runs after the quiet wait.
function runLlamaBench(bin, model, o, threads, log) {
  const common = [...llamaBenchModelArgs(model, o, threads), '-r', String(Math.max(2, o.maxRuns)), '-o', 'json'];
  const one = (extra) => {
    const t0 = performance.now();
    const r = spawnSync(bin, [...common, ...extra], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
      timeout: o.timeoutS * 1000, maxBuffer: 64 << 20 });
    if (r.status !== 0) throw new Error(`llama-bench ${extra.join(' ')} exited with ${r.status ?? r.signal}: ${(r.stderr || '').trim().split('\n').slice(-3).join(' | ')}`);
    const j = JSON.parse(r.stdout);
    if (!Array.isArray(j) || !j.length) throw new Error('llama-bench printed no result');
    return { best_tok_s: Math.max(...j[0].samples_ts), avg_tok_s: j[0].avg_ts, samples: j[0].samples_ts.length,
      wall_s: (performance.now() - t0) / 1000, info: { build_commit: j[0].build_commit, cpu_info: j[0].cpu_info,
        flash_attn: j[0].flash_attn, type_k: j[0].type_k, n_threads: j[0].n_threads } };
  };
  try {
    const pp = one(['-p', String(o.prompt), '-n', '0']);
    const tg = one(['-p', '0', '-n', String(o.gen), '-d', String(o.prompt)]);
    return { ok: true, prefill_tok_s: pp.best_tok_s, decode_tok_s: tg.best_tok_s, prefill_avg_tok_s: pp.avg_tok_s,
      decode_avg_tok_s: tg.avg_tok_s, reps: tg.samples, info: tg.info };
  } catch (e) {
    log(`bench:decode: llama-bench failed: ${e.message}`);
    return { ok: false, error: e.message };
  }
}

// --probe-every chunk: llama-bench's decode paired with read probes taken in this process (the
// emollm child's probe: readProbe, same forms, buffer and threads). One llama-bench process runs
// lbRuns + 1 tests, each `-p 0 -n lbTokens -d prompt -r 1`; llama-bench keeps the model between
// tests and the depth's state too (its cstate): the first test computes the prompt's positions
// (~8 s at 1 thread for the 1.1B q4_0) and is not paired, later ones restore them (progress line
// "depth run 1/1 (cached)"). `-o jsonl` writes each test's line when it ends; `--delay 1` makes
// llama-bench sleep 1 s after creating each test's context, before the test's warm-up token (one
// decode, untimed; then the depth restored, then the timed tokens). So a probe started on a test's
// line runs while llama-bench sleeps: probe k after test k + 1, paired run j = test j + 2 between
// probes j and j + 1, the warm-up token and the state restore (~40 ms) between probe j and the
// timed tokens. A probe still running when llama-bench prints the next test's "warmup generation
// run" line is late (probes_late; benchPairedRun leaves that run out); the probe runs on the
// addon's worker thread, so the main thread timestamps the line while it runs. Each run's CPU time
// too (cpu_s, for --cpu-clock at one thread): llama-bench's threads' running time
// (/proc/PID/task/*/schedstat, ns) from its "generation run" progress line (printed after its
// timer starts, right before the tokens) to its result line (printed after them), read as each
// line arrives; the probes' CPU-time rates as probes_cpu_gbs.
// Returns { ok, runs: [{ tokens, s, tok_s, cached, cpu_s }], probes_gbs, probes_cpu_gbs, probes_late, probes_ms, ... }.
function runLlamaBenchPaired(bin, model, o, threads, rp, log) {
  const n = o.lbRuns + 1;
  const args = [...llamaBenchModelArgs(model, o, threads), '-p', '0', '-n', Array(n).fill(o.lbTokens).join(','),
    '-d', String(o.prompt), '-r', '1', '--delay', String(LB_DELAY_S), '--progress', '-o', 'jsonl'];
  return new Promise((resolveP) => {
    const t0 = performance.now();
    const now = () => performance.now() - t0;
    const child = spawn(bin, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const tests = [], warmAt = [], cached = [], probes = [], cpuAtGen = [], cpuAtEnd = [];
    const cpuNs = () => taskCpuNs(child.pid);
    let stdout = '', stderr = '', errTail = '', chain = Promise.resolve();
    const onStdoutLine = (line) => {
      let j;
      const cpuNow = cpuNs();
      try { j = JSON.parse(line); } catch { return; }
      tests.push(j);
      cpuAtEnd[tests.length] = cpuNow;
      // the probe after this test (before the next one's warm-up)
      chain = chain.then(async () => {
        const start = now();
        let gbs = null, cpu = null;
        try { ({ gbs, cpu } = await rp.probe()); } catch (e) { log(`bench:decode: llama-bench paired probe failed: ${e.message}`); }
        probes.push({ gbs, cpu, start_ms: start, end_ms: now() });
      });
    };
    const onStderrLine = (line) => {
      const m = /benchmark (\d+)\/\d+: (warmup generation run|depth run \d+\/\d+( \(cached\))?|generation run \d+\/\d+)/.exec(line);
      if (m) {
        const t = Number(m[1]);
        if (m[2].startsWith('warmup')) warmAt[t] = now();
        else if (m[2].startsWith('depth')) cached[t] = !!m[3];
        else cpuAtGen[t] = cpuNs();
      } else if (line.trim()) errTail = line;
    };
    const lines = (buf, d, fn) => {
      buf += d;
      const parts = buf.split('\n');
      for (const l of parts.slice(0, -1)) fn(l);
      return parts.at(-1);
    };
    child.stdout.on('data', (d) => { stdout = lines(stdout, d, onStdoutLine); });
    child.stderr.on('data', (d) => { stderr = lines(stderr, d, onStderrLine); });
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutS * 1000);
    child.on('close', async (code, signal) => {
      clearTimeout(timer);
      if (stdout.trim()) onStdoutLine(stdout);
      await chain;
      const wall = (performance.now() - t0) / 1000;
      if (code !== 0 || tests.length !== n) {
        const error = `llama-bench paired runs: exit ${code ?? signal}, ${tests.length} of ${n} tests${errTail ? `: ${errTail}` : ''}`;
        log(`bench:decode: ${error}`);
        resolveP({ ok: false, error, wall_s: wall });
        return;
      }
      // test t (1-based) = tests[t - 1]; paired run j = test j + 2; probe k ran after test k + 1 and is
      // late when it ended after test k + 2's warm-up began
      const cpuS = (t) => (Number.isFinite(cpuAtEnd[t]) && Number.isFinite(cpuAtGen[t]) ? (cpuAtEnd[t] - cpuAtGen[t]) / 1e9 : null);
      const run = (j, t) => ({ tokens: j.n_gen, s: j.samples_ns[0] / 1e9, tok_s: j.samples_ts[0], cpu_s: cpuS(t) });
      const runs = tests.slice(1).map((j, i) => ({ ...run(j, i + 2), cached: cached[i + 2] ?? null }));
      const late = probes.map((p, k) => (warmAt[k + 2] !== undefined ? p.end_ms > warmAt[k + 2] : false));
      resolveP({ ok: true, depth: o.prompt, tokens: o.lbTokens, delay_s: LB_DELAY_S, depth_test: { ...run(tests[0], 1), cached: cached[1] ?? null },
        runs, probes_gbs: probes.map((p) => p.gbs), probes_cpu_gbs: probes.map((p) => p.cpu ?? null), probes_late: late,
        probes_ms: probes.map((p) => p.end_ms - p.start_ms),
        // from a test's line to the next test's warm-up: the window a probe has (the sleep and the context)
        windows_ms: probes.map((p, k) => (warmAt[k + 2] !== undefined ? warmAt[k + 2] - p.start_ms : null)),
        wall_s: wall });
    });
  });
}

// A process's threads' running time so far (ns; /proc/PID/task/*/schedstat's first field), null
// when unreadable (not Linux, the process gone).
function taskCpuNs(pid) {
  try {
    let ns = 0;
    for (const t of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    return Number.isFinite(ns) ? ns : null;
  } catch {
    return null;
  }
}

// The parent's read probe for llama-bench's paired runs: the addon loaded here, its probe buffer
// made once (kept until the run ends). null and why when the addon or its readBandwidth is missing.
async function parentReadProbe(threads) {
  try {
    const b = await loadBinding();
    if (typeof b.readBandwidth !== 'function') return { rp: null, whyNot: 'the addon has no readBandwidth' };
    const rp = readProbe(b, { bytes: PROBE_BYTES, reps: PROBE_REPS, threads });
    await rp.warm();
    return { rp, whyNot: null };
  } catch (e) {
    return { rp: null, whyNot: `the addon does not load here: ${String(e?.message ?? e).split('\n')[0]}` };
  }
}

// The emollm child; with --profile it runs with EMOLLM_PROFILE=1 (native/core/profiling_backend.h:
// every backend op timed, grouped by op / weight shape / phase) and the table it writes at exit
// is attached to its result as `profile`, with per-decode-step figures added.
async function runEmollmChild(spec, o) {
  // the paired probes' buffer (--probe-every chunk) is made before the model, so the peak RSS holds
  // all of it: taken off again, the RSS column stays the model's
  const noProbeBuffer = (res) => {
    if (res?.probe_buffer_mib && Number.isFinite(res.maxrss_mib)) {
      res.maxrss_with_probe_mib = res.maxrss_mib;
      res.maxrss_mib -= res.probe_buffer_mib;
    }
    return res;
  };
  const args = [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)];
  if (!o.profile) return noProbeBuffer(await runChild(args, { timeoutS: o.timeoutS, label: 'emollm' }));
  const dir = mkdtempSync(join(os.tmpdir(), 'emollm-profile-'));
  const file = join(dir, 'profile.json');
  try {
    const res = await runChild(args, { timeoutS: o.timeoutS, label: 'emollm',
      env: { ...process.env, EMOLLM_PROFILE: '1', EMOLLM_PROFILE_OUT: file, ...(o.profileCpu ? { EMOLLM_PROFILE_CPU: '1' } : {}) } });
    if (!existsSync(file)) { res.profile = { error: 'the child wrote no profile (addon built without profiling_backend?)' }; return noProbeBuffer(res); }
    const prof = JSON.parse(readFileSync(file, 'utf8'));
    // decode rows: the ops of the forward passes the core marked as decode steps (ProfileStep in
    // LlamaContext::forward_reserved), the pass's own code between them (`forward`), the sampler
    // (`sample`) and the loop between two steps (`loop`): disjoint, so they add up to a token
    const steps = prof.decode_steps || 0;
    const dec = prof.ops.filter((r) => r.phase === 'decode');
    // "handoff" rows (thread-pool wake-up and wait inside an op) are part of their op's time;
    // "dispatch" rows count the thread-pool jobs of an op (no time)
    const timed = (r) => r.op !== 'handoff' && r.op !== 'dispatch';
    const NOT_OPS = new Set(['forward', 'profiler', 'sample', 'loop']);
    const perStep = (rows) => (steps ? rows.reduce((a, r) => a + r.total_ms, 0) / steps : null);
    const total = dec.filter(timed).reduce((a, r) => a + r.total_ms, 0);
    const cpuPerOp = !!o.profileCpu || process.env.EMOLLM_PROFILE_CPU === '1';
    const handoff = dec.filter((r) => r.op === 'handoff').reduce((a, r) => a + r.total_ms, 0);
    prof.decode_handoff_ms_per_step = steps ? handoff / steps : null;
    const jobs = dec.filter((r) => r.op === 'dispatch').reduce((a, r) => a + r.calls, 0);
    prof.decode_dispatches_per_step = steps ? jobs / steps : null;
    prof.decode_dispatches_by_op = Object.fromEntries(dec.filter((r) => r.op === 'dispatch').map((r) => [r.key, steps ? r.calls / steps : null]));
    for (const r of dec.filter(timed)) {
      r.ms_per_step = steps ? r.total_ms / steps : null;
      r.share = total ? r.total_ms / total : null;
      if (r.op === 'gemm') {  // weight bytes per call / mean time: how close each GEMV runs to the bandwidth
        const bytes = gemmKeyBytes(r.key);
        r.gb_s = bytes && r.mean_us ? bytes / (r.mean_us * 1e3) : null;
      } else if (r.bytes && r.calls && r.mean_us) {  // attention: the K and V rows it read (the profile's bytes)
        r.gb_s = r.bytes / r.calls / (r.mean_us * 1e3);
      }
      // the same over the calling thread's CPU time (EMOLLM_PROFILE_CPU=1; with --threads 1 the op's
      // own running time: a loaded machine's descheduled time left out)
      if (cpuPerOp && r.cpu_ms > 0 && r.op !== 'loop') {
        const b = r.op === 'gemm' ? gemmKeyBytes(r.key) * r.calls : r.bytes;
        r.cpu_ms_per_step = r.cpu_ms / steps;
        r.gb_s_cpu = b ? b / (r.cpu_ms * 1e6) : null;
      }
    }
    // KV bytes the decode steps' attention read (K and V rows once each), per step
    const kvRows = dec.filter((r) => timed(r) && r.bytes > 0);
    prof.decode_kv_bytes_per_step = steps ? kvRows.reduce((a, r) => a + r.bytes, 0) / steps : null;
    prof.decode_attention_ms_per_step = perStep(kvRows);
    prof.decode_ops_ms_per_step = perStep(dec.filter((r) => timed(r) && !NOT_OPS.has(r.op)));
    prof.decode_forward_other_ms_per_step = perStep(dec.filter((r) => r.op === 'forward'));
    prof.decode_profiler_ms_per_step = perStep(dec.filter((r) => r.op === 'profiler'));
    prof.decode_sample_ms_per_step = perStep(dec.filter((r) => r.op === 'sample'));
    prof.decode_faults_per_step = steps ? (prof.decode_faults ?? 0) / steps : null;
    prof.decode_loop_ms_per_step = perStep(dec.filter((r) => r.op === 'loop'));
    const loopRow = dec.find((r) => r.op === 'loop');
    prof.decode_loop_cpu_ms_per_step = steps && loopRow ? loopRow.cpu_ms / steps : null;
    prof.decode_step_ms = steps ? total / steps : null;
    // The typical step by per-call medians (the profile's median_us, p10_us: a histogram of each
    // row's calls): each row's median call x its calls a step, summed, beside the median forward
    // pass. On a machine other work shares, the means above carry every call another process
    // preempted (a 2-thread op whose worker was off its core runs at 1-thread speed); the medians
    // are the typical call, and the p10 sums what the ops take when both threads have their cores.
    const quant = (rows, f) => (steps ? rows.reduce((a, r) => a + (r[f] ?? 0) * r.calls, 0) / steps / 1e3 : null);
    const stepOps = dec.filter((r) => timed(r) && r.op !== 'loop' && r.op !== 'sample');
    prof.decode_median_ms_per_step = quant(stepOps, 'median_us');
    prof.decode_p10_ms_per_step = quant(stepOps, 'p10_us');
    prof.decode_gemv_median_ms_per_step = quant(dec.filter((r) => r.op === 'gemm'), 'median_us');
    prof.decode_gemv_p10_ms_per_step = quant(dec.filter((r) => r.op === 'gemm'), 'p10_us');
    prof.decode_attention_median_ms_per_step = quant(dec.filter((r) => timed(r) && r.bytes > 0), 'median_us');
    prof.decode_handoff_median_ms_per_step = quant(dec.filter((r) => r.op === 'handoff'), 'median_us');
    // the same runs measured from JavaScript: mean ms per delivered token over every run (the
    // profile's basis: it counts every decode step of the child)
    const means = (res.runs ?? []).map((x) => 1000 / x.decode_mean_tok_s).filter(Number.isFinite);
    prof.measured_mean_ms_per_token = means.length ? means.reduce((a, b) => a + b, 0) / means.length : null;
    const gemv = dec.filter((r) => r.op === 'gemm');
    prof.decode_gemv_ms_per_step = perStep(gemv);
    const gemvBytes = gemv.map((r) => gemmKeyBytes(r.key) * r.calls);
    prof.decode_gemv_bytes_per_step = steps && gemvBytes.every(Number.isFinite) ? gemvBytes.reduce((a, b) => a + b, 0) / steps : null;
    prof.decode_gemv_handoff_ms_per_step = steps ? dec.filter((r) => r.op === 'handoff' && r.key === 'gemm').reduce((a, r) => a + r.total_ms, 0) / steps : null;
    res.profile = prof;
    return noProbeBuffer(res);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Weight bytes one call of a profile's gemm row reads, from its key ("q4_0 N=2048 K=2048",
// "q4_0 N=2048+256+256 K=2048 repacked" for one gemm_multi of several matrices); null if unknown.
const ELEM_BYTES = { f32: 4, f16: 2, bf16: 2, q8_0: 34 / 32, q4_0: 18 / 32 };
function gemmKeyBytes(key) {
  const m = /^(\w+) N=([\d+]+) K=(\d+)/.exec(key ?? '');
  if (!m || !(m[1] in ELEM_BYTES)) return null;
  const rows = m[2].split('+').reduce((a, v) => a + Number(v), 0);
  return rows * Number(m[3]) * ELEM_BYTES[m[1]];
}

// Prints the decode part of a profile: time per decode step by op (GEMV by weight shape,
// attention, norms, rope, ...), the forward pass's code between the ops, sampling and the loop
// between steps, against the measured time per token.
function printProfile(r, out, ceilingGbs) {
  const prof = r.result?.profile;
  if (!prof) return;
  if (prof.error) { out(`profile ${r.model}: ${prof.error}`); return; }
  const dec = prof.ops.filter((x) => x.phase === 'decode' && x.op !== 'handoff' && x.op !== 'dispatch');
  out(`profile: emollm ${r.model} (${r.format}, round ${(r.round ?? 0) + 1}), ${prof.decode_steps} decode steps (${prof.decode_tokens} tokens; the timed runs' ` +
    'forward passes the core marked as decode steps; prefill and warm-up excluded):');
  for (const x of dec.slice(0, 24)) {
    out(`  ${x.op.padEnd(10)} ${x.key.padEnd(34)} ${fmt(x.ms_per_step, 3).padStart(8)} ms/step  ${fmt(100 * x.share, 1).padStart(5)}%  ` +
      `${String(x.calls).padStart(7)} calls  ${fmt(x.mean_us, 1).padStart(8)} us/call` +
      (x.median_us ? ` (median ${fmt(x.median_us, 1)}, p10 ${fmt(x.p10_us, 1)})` : '') +
      (x.gb_s ? `  ${fmt(x.gb_s, 1).padStart(6)} GB/s` : '') +
      (x.cpu_ms_per_step !== undefined ? `  cpu ${fmt(x.cpu_ms_per_step, 3)} ms/step${x.gb_s_cpu ? ` ${fmt(x.gb_s_cpu, 1)} GB/s` : ''}` : '') + (x.faults ? `  ${fmt(x.faults / prof.decode_steps, 2)} page faults/step` : ''));
  }
  out(`  thread-pool hand-offs inside those ops: ${fmt(prof.decode_handoff_ms_per_step, 3)} ms/step; thread-pool jobs per step: ` +
    `${fmt(prof.decode_dispatches_per_step, 1)} (${Object.entries(prof.decode_dispatches_by_op ?? {}).map(([k, v]) => `${k} ${fmt(v, 1)}`).join(', ') || 'none'})`);
  out(`  step ${fmt(prof.decode_step_ms, 3)} ms = backend ops ${fmt(prof.decode_ops_ms_per_step, 3)} + forward pass between ops ` +
    `${fmt(prof.decode_forward_other_ms_per_step, 3)} + profiler's own ${fmt(prof.decode_profiler_ms_per_step, 3)} + sample ${fmt(prof.decode_sample_ms_per_step, 3)} + loop between steps ` +
    `${fmt(prof.decode_loop_ms_per_step, 3)} (CPU ${fmt(prof.decode_loop_cpu_ms_per_step, 3)}); measured from JavaScript over the same runs ${fmt(prof.measured_mean_ms_per_token, 3)} ms/token (mean); ${fmt(prof.decode_faults_per_step, 2)} page faults/step (the decoding thread's)`);
  if (prof.decode_median_ms_per_step && prof.decode_step_median_us)
    out(`  by typical calls (each row's median call x its calls; p10 in brackets): ops + forward + profiler ${fmt(prof.decode_median_ms_per_step, 3)} ` +
      `(${fmt(prof.decode_p10_ms_per_step, 3)}) ms against the median forward pass ${fmt(prof.decode_step_median_us / 1e3, 3)} ` +
      `(p10 ${fmt(prof.decode_step_p10_us / 1e3, 3)}); GEMVs ${fmt(prof.decode_gemv_median_ms_per_step, 3)} (${fmt(prof.decode_gemv_p10_ms_per_step, 3)}), ` +
      `attention ${fmt(prof.decode_attention_median_ms_per_step, 3)}, hand-offs inside them ${fmt(prof.decode_handoff_median_ms_per_step, 3)}`);
  // where a profiled decode step's op time goes against its weight bytes at the bandwidth ceiling
  const bytes = prof.decode_gemv_bytes_per_step;
  if (ceilingGbs && bytes && prof.decode_step_ms) {
    const ideal = bytes / (ceilingGbs * 1e6);  // ms
    const gemv = prof.decode_gemv_ms_per_step, hand = prof.decode_gemv_handoff_ms_per_step ?? 0;
    const others = prof.decode_step_ms - gemv;
    prof.decode_gap_ms_per_step = { ideal, gemv_streaming_below: gemv - hand - ideal, gemv_handoffs: hand, other: others };
    out(`  gap: step ${fmt(prof.decode_step_ms, 3)} ms = ${fmt(ideal, 3)} weight bytes (${fmt(bytes / 1e6, 1)} MB) at the ${fmt(ceilingGbs)} GB/s ceiling ` +
      `+ ${fmt(gemv - hand - ideal, 3)} GEMV streaming below it (the GEMVs less their hand-offs at ${fmt((100 * ideal) / (gemv - hand), 0)}% of the ceiling) ` +
      `+ ${fmt(hand, 3)} GEMV hand-offs + ${fmt(others, 3)} everything else (other ops, forward, sample, loop)`);
    const kv = prof.decode_kv_bytes_per_step, att = prof.decode_attention_ms_per_step;
    if (kv && att) {
      prof.decode_gb_s_with_kv = (bytes + kv) / (prof.decode_step_ms * 1e6);
      out(`  with the KV cache: attention read ${fmt(kv / 1e6, 1)} MB/step of K and V in ${fmt(att, 3)} ms = ${fmt(kv / (att * 1e6), 1)} GB/s ` +
        `(${fmt((100 * kv) / (att * 1e6) / ceilingGbs, 0)}% of the ceiling; its floor ${fmt(kv / (ceilingGbs * 1e6), 3)} ms); weights + KV ` +
        `${fmt((bytes + kv) / 1e6, 1)} MB/step / step ${fmt(prof.decode_step_ms, 3)} ms = ${fmt(prof.decode_gb_s_with_kv, 1)} GB/s = ` +
        `${fmt((100 * prof.decode_gb_s_with_kv) / ceilingGbs, 0)}% of the ceiling`);
    }
  }
}

// The bandwidth ceiling of the %bw columns: max(read probe, best anchor GEMV of the same run).
// bench_kernels runs its probes (read loops of 1-8 streams per thread, with and without software
// prefetch, on 4 KiB and 2 MiB pages; the best kept) and the anchor GEMVs below on cold weights
// (oneDNN bf16 and OpenBLAS f32 at LLaMA-7B q/k/v/o, M = 1): whichever streamed faster is what
// memory delivered to the best streaming code measured here. Without the anchors (libdnnl-dev /
// libopenblas-dev missing) the probe alone.
const ANCHOR_GEMVS = ['gemm/llama.qkvo/M1/bf16/onednn', 'gemm/llama.qkvo/M1/f32/openblas'];
function probeBandwidth(threads, log) {
  const r = spawnSync(process.execPath, [join(here, 'kernels.mjs'), '--filter', ANCHOR_GEMVS.join(','), '--json', '--threads', String(threads)],
    { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
  try {
    const j = JSON.parse(r.stdout);
    const anchor = Number.isFinite(j.probes.anchor_gemv_gbs) ? j.probes.anchor_gemv_gbs : null;
    return { read_bw_gbs: Math.max(j.probes.read_bw_gbs, anchor ?? 0), probe_gbs: j.probes.read_bw_gbs, anchor_gemv_gbs: anchor,
      read_bw_1t_gbs: j.probes.read_bw_1t_gbs, isa: j.probes.read_bw_isa, variant: j.probes.read_bw_variant,
      fma_gflops: j.probes.fma_gflops, int8_dot_gops: j.probes.int8_dot_gops, int8_block_gops: j.probes.int8_block_gops };
  } catch {
    log(`bench:decode: the read-bandwidth probe (bench_kernels) failed; %bw columns will be empty.\n${(r.stderr || '').split('\n').slice(-8).join('\n')}`);
    return null;
  }
}

const fmt = (v, d = 1) => (v === undefined || v === null || !Number.isFinite(v) ? '-' : v.toFixed(d));

// The undisturbed runs (other work < 0.25 cores), or all runs when none was.
function quietRuns(runs) {
  const quiet = runs.filter((r) => r.other_cores < 0.25);
  return quiet.length ? quiet : runs;
}

// Best of the undisturbed runs (other work < 0.25 cores), or of all runs when none was.
function summarize(res, promptLen) {
  if (!res || !res.ok || !res.runs.length) return null;
  const quiet = res.runs.filter((r) => r.other_cores < 0.25);
  const runs = quietRuns(res.runs);
  const best = (k) => Math.max(...runs.map((r) => r[k]).filter(Number.isFinite));
  return {
    prefill_tok_s: Math.max(...runs.map((r) => promptLen / r.prefill_s)),
    decode_tok_s: best('decode_tok_s'),
    decode_mean_tok_s: best('decode_mean_tok_s'),
    maxrss_mib: res.maxrss_mib,
    load_s: res.load_s,
    other_cores: Math.max(...runs.map((r) => r.other_cores).filter(Number.isFinite), 0),
    runs: res.runs.length,
    quiet_runs: quiet.length,
  };
}

// One side's results of all rounds as one child's: every run of the rounds that measured (so
// summarize keeps the best undisturbed run over all rounds), the peak RSS the highest; the first
// round's failure when no round measured.
function mergeRounds(list) {
  const ok = list.filter((x) => x?.ok && x.runs?.length);
  if (!ok.length) return list.find(Boolean);
  return { ok: true, runs: ok.flatMap((x) => x.runs), maxrss_mib: Math.max(...ok.map((x) => x.maxrss_mib ?? 0)) || undefined,
    load_s: Math.min(...ok.map((x) => x.load_s ?? Infinity)), tokens: ok[0].tokens };
}

// llama-bench's rounds: the best sample of every round's, the averages' mean, the samples summed.
function mergeBench(list) {
  const ok = list.filter((x) => x?.ok);
  if (!ok.length) return null;
  const mean = (k) => ok.reduce((s, x) => s + x[k], 0) / ok.length;
  return { ok: true, prefill_tok_s: Math.max(...ok.map((x) => x.prefill_tok_s)), decode_tok_s: Math.max(...ok.map((x) => x.decode_tok_s)),
    prefill_avg_tok_s: mean('prefill_avg_tok_s'), decode_avg_tok_s: mean('decode_avg_tok_s'), reps: ok.reduce((s, x) => s + x.reps, 0),
    rounds: ok.length, info: ok[0].info };
}

// cores' worth of other processes' work during the runs (worst run of either side); '!' from 0.25
const busyMark = (c) => `${c.toFixed(2)}${c >= 0.25 ? '!' : ''}`;

// KV cache types of a row: emollm's / llama.cpp's.
function kvLabel(o) {
  return `${o.emollmKv}${o.bf16Products ? '+dp' : ''}/${o.kvType ? o.kvType.toLowerCase() : 'f16'}`;
}

// The table: each engine's best figures over the rounds; ratios the median of the per-round ones;
// %bw against the highest probe beside the row's block, the probes column their lowest-highest.
function table(rows, o, out) {
  const paired = pairsChunks(o);
  const head = ['model', 'dtype', 'fmt', 'kv', 'prefill emollm', 'llama.cpp', 'ratio', 'decode emollm', 'llama.cpp', 'ratio',
    'GB/s emollm', '%bw', 'GB/s llama.cpp', '%bw', 'probes GB/s',
    ...(paired ? ['paired %bw', 'range', 'chunk probes', 'lb paired %bw', 'range', 'lb probes'] : []), 'llama-bench pp', 'tg', 'ratio pp', 'ratio tg',
    ...(paired ? ['ratio tg paired'] : []), 'RSS MiB emollm', 'llama.cpp', 'agree', 'busy'];
  const lines = [head];
  const ratio = (x) => fmt(x?.median, 2);
  for (const r of rows) {
    const e = r.emollmS, a = r.anchorS, b = r.benchS, bw = r.block.ceiling_gbs;
    lines.push([
      SHAPES[r.shape].label, r.dtype, r.format, kvLabel(o),
      e ? fmt(e.prefill_tok_s) : r.emollmNote, a ? fmt(a.prefill_tok_s) : r.anchorNote, ratio(r.ratios.prefill_vs_llamacpp),
      e ? fmt(e.decode_tok_s, 2) : '', a ? fmt(a.decode_tok_s, 2) : '', ratio(r.ratios.decode_vs_llamacpp),
      fmt(decodeGbs(r.weightBytes, e?.decode_tok_s)), fmt(bwPct(r.weightBytes, e?.decode_tok_s, bw), 0),
      fmt(decodeGbs(r.weightBytes, a?.decode_tok_s)), fmt(bwPct(r.weightBytes, a?.decode_tok_s, bw), 0),
      bw ? `${fmt(r.block.min_gbs)}-${fmt(bw)}` : '-',
      ...(paired ? [r.paired, r.lbPaired].flatMap((x) => (x ? [fmt(x.median_pct, 0), `${fmt(x.min_pct, 0)}-${fmt(x.max_pct, 0)}`,
        `${fmt(x.probe_min_gbs)}-${fmt(x.probe_max_gbs)}`] : ['-', '-', '-'])) : []),
      b ? fmt(b.prefill_tok_s) : r.benchNote, b ? fmt(b.decode_tok_s, 2) : '',
      ratio(r.ratios.prefill_vs_llama_bench), ratio(r.ratios.decode_vs_llama_bench),
      ...(paired ? [fmt(r.ratios.decode_vs_llama_bench_paired?.ratio, 2)] : []),
      e ? fmt(e.maxrss_mib, 0) : '-', a ? fmt(a.maxrss_mib, 0) : '-', r.agree ?? '-',
      busyMark(Math.max(e?.other_cores ?? 0, a?.other_cores ?? 0)),
    ]);
  }
  const w = head.map((_, c) => Math.max(...lines.map((l) => String(l[c]).length)));
  const left = new Set([0, 1, 2, 3]);
  const pr = (l) => out(l.map((x, c) => (left.has(c) ? String(x).padEnd(w[c]) : String(x).padStart(w[c]))).join('  '));
  pr(lines[0]);
  out(w.map((n) => '-'.repeat(n)).join('  '));
  lines.slice(1).forEach(pr);
}

// Per row, round by round: the order the sides ran in, each side's decode (and prefill) figures,
// the per-round ratios and %bw, the probes beside the block and their spread.
function printRounds(rows, probes, o, out) {
  if (!rows.length) return;
  out('');
  out(`rounds (${o.rounds}; per round: decode tok/s, [ratio], %bw against the probes beside that round) and the probes beside each block:`);
  const seq = (xs, d = 2) => xs.map((x) => fmt(x ?? NaN, d)).join(' / ');
  for (const r of rows) {
    if (!r.rounds.some((x) => x.order.length)) continue;  // nothing ran for this model
    const name = `${SHAPES[r.shape].label} ${r.dtype} ${r.format}`;
    const parts = [];
    const side = (label, key) => {
      const xs = r.rounds.map((x) => x[key]?.decode_tok_s);
      if (xs.some((x) => x !== undefined)) parts.push(`${label} ${seq(xs)}`);
    };
    side('emollm', 'emollm');
    side('llama-bench tg', 'llama_bench');
    side('node-llama-cpp', 'llamacpp');
    const ratio = (label, x) => {
      if (x) parts.push(`${label} ${seq(x.per_round)} (median ${fmt(x.median, 2)}, ${fmt(x.min, 2)}-${fmt(x.max, 2)}; of the bests ${fmt(x.of_bests, 2)})`);
    };
    ratio('tg ratio', r.ratios.decode_vs_llama_bench);
    ratio('pp ratio', r.ratios.prefill_vs_llama_bench);
    ratio('decode ratio vs node-llama-cpp', r.ratios.decode_vs_llamacpp);
    if (r.rounds.some((x) => x.emollm_bw_pct !== null)) parts.push(`emollm %bw ${seq(r.rounds.map((x) => x.emollm_bw_pct), 0)}`);
    if (r.rounds.some((x) => x.emollm_paired)) parts.push(`paired %bw ${seq(r.rounds.map((x) => x.emollm_paired?.median_pct), 0)} (chunk probes ` +
      `${r.rounds.map((x) => (x.emollm_paired ? `${fmt(x.emollm_paired.probe_min_gbs)}-${fmt(x.emollm_paired.probe_max_gbs)}` : '-')).join(' / ')} GB/s)`);
    if (r.rounds.some((x) => x.llama_bench_paired)) parts.push(`llama-bench paired %bw ${seq(r.rounds.map((x) => x.llama_bench_paired?.median_pct), 0)} (probes ` +
      `${r.rounds.map((x) => (x.llama_bench_paired ? `${fmt(x.llama_bench_paired.probe_min_gbs)}-${fmt(x.llama_bench_paired.probe_max_gbs)}` : '-')).join(' / ')} GB/s)`);
    const pr = r.ratios.decode_vs_llama_bench_paired;
    if (pr) parts.push(`tg ratio paired ${seq(r.rounds.map((x) => x.decode_vs_llama_bench_paired?.ratio))} (pooled ${fmt(pr.ratio, 2)}; by the probes' mean ${fmt(pr.ratio_mean, 2)})`);
    const b = r.block;
    parts.push(b.ceiling_gbs
      ? `probes ${b.probes.map((i) => `#${i} ${fmt(probes[i]?.read_bw_gbs)}`).join(', ')} GB/s: ceiling ${fmt(b.ceiling_gbs)}, the lowest ${fmt(b.spread_pct, 0)}% under it`
      : 'no probe');
    out(`  ${name}: ${parts.join('; ')}`);
    out(`    order: ${r.rounds.map((x) => x.order.join(' ')).join(' | ')}`);
  }
}

// KV bytes a decode token's attention reads (K and V of every layer, once each) at the mean cache
// length of the generated positions (prompt .. prompt + gen - 1 tokens before each one).
const KV_ELEM_BYTES = { f32: 4, f16: 2, bf16: 2 };
function kvRowBytes(shape, o) {  // K and V of every layer, one cached position
  const s = SHAPES[shape], kvd = s.n_head_kv * (s.n_embd / s.n_head);
  return 2 * s.n_layer * kvd * KV_ELEM_BYTES[o.emollmKv];
}
function decodeKvBytes(shape, o) {
  return kvRowBytes(shape, o) * (o.prompt + (o.gen + 1) / 2);
}

// The table's GB/s count weights only; a decode token also reads the KV cache (f32 7B MHA at ~550
// positions: ~0.58 GB against 3.7 GB of q4_0 weights). The same figure with the KV bytes added.
function printWithKv(rows, o, out) {
  for (const r of rows) {
    const e = r.emollmS, bw = r.block.ceiling_gbs;
    if (!e || !r.weightBytes) continue;
    const kv = decodeKvBytes(r.shape, o), gb = ((r.weightBytes + kv) * e.decode_tok_s) / 1e9;
    r.kvBytes = kv;
    out(`with KV: emollm ${SHAPES[r.shape].label} ${r.dtype} ${r.format}: (weights ${fmt(r.weightBytes / 1e9, 3)} + KV ${o.emollmKv} ` +
      `${fmt(kv / 1e9, 3)} GB a token at ${fmt(o.prompt + (o.gen + 1) / 2, 0)} positions on average) x ${fmt(e.decode_tok_s, 2)} tok/s = ` +
      `${fmt(gb)} GB/s${bw ? ` = ${fmt((100 * gb) / bw, 0)}% of the ceiling` : ''}`);
  }
}

// emollm's q4_0 / q8_0 prefill against the int8 dot peak probed in the same run (bench_kernels'
// vpdpbusd probe): its GFLOP = 2 x (prompt x the layers' weight products + the causal attention
// + the last position's output projection); the floor = the weight products at the int8 peak
// (the VNNI GEMMs: q8_0-rounded activations times the weights' integers) + the attention at the
// fp32 FMA peak. The int8 floor counts the multiply-adds only: not the per-32-block scale work,
// the activations' rounding or the weights' unpacking (bench/README.md, bench:kernels' probes).
function printPrefillFloors(rows, probe, o, out) {
  if (!probe.int8_dot_gops || !probe.fma_gflops) return;
  // the same work plus more ops cannot run faster: a higher block probe is a busy moment of the other
  const block = probe.int8_block_gops ? Math.min(probe.int8_block_gops, probe.int8_dot_gops) : null;
  const lines = [];
  for (const r of rows) {
    const e = r.emollmS;
    if (!e || !['q4_0', 'q8_0'].includes(r.dtype)) continue;
    const s = SHAPES[r.shape], n = o.prompt, E = s.n_embd, kv = s.n_head_kv * (E / s.n_head);
    const weights = (2 * (n * s.n_layer * (2 * E * E + 2 * E * kv + 3 * E * s.n_ff) + s.n_vocab * E)) / 1e9;
    const attention = (2 * s.n_layer * 2 * E * ((n * (n + 1)) / 2)) / 1e9;
    const t = n / e.prefill_tok_s, floor = weights / probe.int8_dot_gops + attention / probe.fma_gflops;
    lines.push(`  ${s.label} ${r.dtype} ${r.format}: ${fmt((weights + attention) / t, 0)} GFLOP/s (${fmt(weights + attention, 0)} GFLOP in ${fmt(t, 3)} s), ` +
      `weight products' GFLOP / prefill s = ${fmt((100 * weights) / t / probe.int8_dot_gops, 0)}% of the int8 peak; floor ${fmt(floor, 3)} s, prefill / floor ${fmt(t / floor, 2)}x` +
      (block ? ` (${fmt(t / (weights / block + attention / probe.fma_gflops), 2)}x with the block scale work counted)` : ''));
  }
  if (!lines.length) return;
  out(`prefill against the int8 dot peak (vpdpbusd ${fmt(probe.int8_dot_gops, 0)} GOP/s, 2 ops an int8 product; with the q8_0 block scale ops ` +
    `${fmt(block, 0)}; fp32 FMA ${fmt(probe.fma_gflops, 0)} GFLOP/s for the attention; ` +
    'the floor counts multiply-adds only: not the per-block scale work, the activations\' rounding or the weights\' unpacking):');
  for (const l of lines) out(l);
}

async function main() {
  const argv = process.argv.slice(2);
  const ci = argv.indexOf('--child');
  if (ci >= 0) return emollmChild(JSON.parse(argv[ci + 1]));
  const o = parseArgs([...argv]);
  if (o.help) { console.log(HELP); return; }
  const out = o.json ? (s) => console.error(s) : (s) => console.log(s);
  const log = (s) => console.error(s);
  const threads = o.threads > 0 ? o.threads : physicalCores();
  const set = parseSet(argv);
  if (!set.length) throw new Error('nothing selected (--shapes / --dtypes)');
  const wantHf = o.emollm && o.formats.includes('hf');
  const tStart = performance.now();

  // ---- models: generated ones, or the one --gguf file standing for the one shape and dtype given
  let plans;
  if (o.gguf) {
    if (set.length !== 1) throw new Error('--gguf needs exactly one --shapes and one --dtypes (what the file is)');
    if (!existsSync(o.gguf)) throw new Error(`--gguf: ${o.gguf} does not exist`);
    plans = [{ shape: set[0][0], dtype: set[0][1], gguf: { path: resolve(o.gguf) }, hf: null }];
  } else {
    plans = ensureModels(set, { out: o.out, hf: wantHf, seed: o.seed, log });
  }

  // ---- engines
  const anchorOk = o.anchor && o.nlc && ensureAnchors(log);
  const lb = o.anchor ? llamaBenchAvailable() : { path: null, whyNot: 'disabled (--no-anchor)' };
  if (o.anchor && lb.whyNot) log(`bench:decode: llama-bench anchor: ${lb.whyNot}`);
  const emollmWhyNot = o.emollm ? emollmAvailable(o, log) : 'disabled (--no-emollm)';
  if (emollmWhyNot && o.emollm) log(`bench:decode: emollm side skipped: ${emollmWhyNot}`);

  const load = os.loadavg()[0];
  const ncpu = os.cpus().length;
  out(`\nemollm decode benchmark | ${os.cpus()[0]?.model?.trim() ?? 'cpu'} | ${ncpu} logical cpus | threads ${threads} | ` +
    `prompt ${o.prompt} tokens, ${o.gen} generated (greedy), ctx ${o.nCtx}, batch ${o.nBatch}`);
  if (load > 0.5 * ncpu) out(`warning: load average ${load.toFixed(2)} on ${ncpu} cpus: other work is running, timings will be disturbed`);

  // ---- the schedule (bench/decode_rounds.mjs): per model, its sides (emollm's formats, the
  // node-llama-cpp anchor, llama-bench), each measurement in its own child, alternated in rounds
  // A B | B A | A B ... (the next model starts the other way) so slow drift of the machine hits
  // every side alike; the read-bandwidth probe before and after each model's block (one between
  // two models, shared) or also between its rounds (--probe-every round).
  const sidesOf = (p) => {
    const sides = [];
    if (!emollmWhyNot) {
      if (o.formats.includes('gguf')) sides.push('emollm/gguf');
      if (o.formats.includes('hf') && p.hf) sides.push('emollm/hf');
    }
    if (anchorOk) sides.push('llama.cpp/gguf');
    if (lb.path) sides.push('llama-bench/gguf');
    return sides;
  };
  // (no side to measure anywhere: no probes either; the run reports that nothing was measured)
  const sides = plans.map(sidesOf);
  const steps = decodeSchedule(sides, { rounds: o.rounds, probeEvery: o.probe && sides.some((x) => x.length) ? o.probeEvery : null });
  const nProbes = steps.filter((x) => x.kind === 'probe').length;
  const chunked = pairsChunks(o);  // the emollm child's paired probes
  const share = perRound(o, o.rounds);  // one round's --budget and --runs
  const probes = [];  // by index: bench_kernels' figures with when (s into the run) and the load, null when it failed
  const got = plans.map(() => ({}));  // got[model]['side/format'][round] = the child's result
  const results = [];
  // llama-bench's paired runs' probe (--probe-every chunk), made on the first llama-bench step
  let lbProbe = null;
  for (const st of steps) {
    if (st.kind === 'probe') {
      const which = st.probe === 0 ? 'start' : st.probe === nProbes - 1 ? 'end' : `${st.probe} of ${nProbes - 1}`;
      log(`bench:decode: read-bandwidth probe (${which}) ...`);
      const at = (performance.now() - tStart) / 1000, loadAvg = os.loadavg()[0];
      const r = probeBandwidth(threads, log);
      probes[st.probe] = r ? { index: st.probe, at_s: at, load_avg: loadAvg, ...r } : null;
      if (r) log(`    probe ${st.probe}: ${fmt(r.read_bw_gbs)} GB/s (read probe ${fmt(r.probe_gbs)}, best anchor GEMV ${fmt(r.anchor_gemv_gbs)}), load ${loadAvg.toFixed(2)}`);
      continue;
    }
    const p = plans[st.model], s = SHAPES[p.shape];
    const [side, format] = st.side.split('/');
    const path = format === 'hf' ? p.hf.path : p.gguf.path;
    log(`bench:decode: ${s.label} ${p.dtype} ${format}: ${side} (round ${st.round + 1} of ${o.rounds}) ...`);
    await waitQuiet(o.quietWaitS, log);
    let res;
    if (side === 'llama-bench') {
      res = runLlamaBench(lb.path, path, { ...o, maxRuns: share.maxRuns }, threads, log);
      if (chunked && res.ok) {
        lbProbe ??= await parentReadProbe(threads);
        if (lbProbe.whyNot) log(`bench:decode: llama-bench's paired runs skipped: ${lbProbe.whyNot}`);
        res.paired = lbProbe.rp ? await runLlamaBenchPaired(lb.path, path, o, threads, lbProbe.rp, log) : { ok: false, error: lbProbe.whyNot };
        if (res.paired.ok) {
          const x = res.paired, g = x.probes_gbs.filter(Number.isFinite);
          log(`    llama-bench paired: ${x.runs.length} runs of ${x.tokens} tokens, ${fmt(Math.min(...x.runs.map((r) => r.tok_s)), 2)}-${fmt(Math.max(...x.runs.map((r) => r.tok_s)), 2)} tok/s, ` +
            `probes ${fmt(Math.min(...g))}-${fmt(Math.max(...g))} GB/s (${fmt(Math.max(...x.probes_ms), 0)} ms the longest)` +
            `${x.probes_late.some(Boolean) ? `, ${x.probes_late.filter(Boolean).length} late` : ''}${x.runs.some((r) => r.cached === false) ? ', a depth not cached' : ''}`);
        }
      }
    } else {
      const spec = { threads, nCtx: o.nCtx, nBatch: o.nBatch, prompt: randomPrompt(o.prompt, s.n_vocab, o.seed), gen: o.gen,
        budgetS: share.budgetS, maxRuns: share.maxRuns, warmupTokens: o.warmupTokens, quietWaitS: Math.min(10, o.quietWaitS), model: path,
        ...(side === 'emollm' ? { kvCacheType: o.emollmKv, decodeBf16Products: o.bf16Products } : {}),
        ...(side === 'emollm' && chunked ? { chunk: o.chunk, chunkPlan: chunkPlan(o.gen, o.chunk), probeBytes: PROBE_BYTES, probeReps: PROBE_REPS } : {}) };
      res = side === 'llama.cpp'
        ? await runChild([anchorScript, JSON.stringify({ ...spec, kvType: o.kvType })], { timeoutS: o.timeoutS, label: 'llama.cpp' })
        : await runEmollmChild(spec, o);
    }
    (got[st.model][st.side] ??= [])[st.round] = res;
    results.push({ shape: p.shape, dtype: p.dtype, format, side, model: relative(root, path), round: st.round, model_index: st.model, result: res });
  }

  // ---- rows: per model and emollm format; figures the best over the rounds, ratios the median of
  // the per-round ones, %bw against the highest probe beside the model's own block
  const rows = [];
  const blocks = plans.map((p, m) => ({ probes: probesBeside(steps, m), ...ceilingOf(probesBeside(steps, m).map((i) => probes[i] ?? null)) }));
  plans.forEach((p, m) => {
    const weightBytes = decodeWeightBytes(p.shape, p.dtype);
    const g = got[m];
    const a = g['llama.cpp/gguf'] ?? [], lbAll = g['llama-bench/gguf'] ?? [];
    const aR = a.map((x) => summarize(x, o.prompt)), bR = lbAll.map((x) => (x?.ok ? x : null));
    for (const format of o.formats) {
      if (format === 'hf' && !p.hf) continue;
      const e = g[`emollm/${format}`] ?? [];
      const eR = e.map((x) => summarize(x, o.prompt));
      // --probe-every chunk: each decode chunk against the probes beside it in the child (the
      // undisturbed runs' chunks when there are any, as summarize's figures)
      const sizes = { weightBytes, kvRowBytes: kvRowBytes(p.shape, o), prompt: o.prompt };
      const chunkRuns = (xs) => quietRuns(xs.flatMap((x) => (x?.ok ? x.runs : [])).filter((x) => x.chunks));
      const pairedOf = (xs) => (chunked ? pairedBw(o.cpuClock ? chunkRuns(xs).map(chunkRunByCpu) : chunkRuns(xs), sizes) : null);
      const pairedWallOf = (xs) => (chunked ? pairedBw(chunkRuns(xs), sizes) : null);
      // llama-bench's paired runs: each against the higher of its two probes, its bytes llama.cpp's
      // own (weights + its KV cache's rows: f16 unless --anchor-kv), by CPU time with --cpu-clock as
      // emollm's; the phase-fair ratio from the same clock on both sides (the wall ones in the JSON)
      const lbKv = (o.kvType ?? 'f16').toLowerCase();  // (a KV type without a size here: weights only)
      const lbSizes = { weightBytes, kvRowBytes: lbKv in KV_ELEM_BYTES ? kvRowBytes(p.shape, { emollmKv: lbKv }) : 0, prompt: o.prompt };
      const lbRuns = (xs) => xs.filter((x) => x?.ok && x.paired?.ok).map((x) => benchPairedRun(x.paired));
      const lbPairedOf = (xs) => (chunked ? pairedBw(o.cpuClock ? lbRuns(xs).map(chunkRunByCpu) : lbRuns(xs), lbSizes) : null);
      const lbPairedWallOf = (xs) => (chunked ? pairedBw(lbRuns(xs), lbSizes) : null);
      // agree: the first round where both engines generated
      let agree;
      const r0 = e.findIndex((x, r) => x?.ok && a[r]?.ok && x.tokens && a[r].tokens);
      if (r0 >= 0) {
        const et = e[r0].tokens, at = a[r0].tokens;
        let k = 0;
        while (k < Math.min(et.length, at.length) && et[k] === at[k]) k++;
        agree = `${k}/${at.length}`;
      }
      const per = (xs, k) => Array.from({ length: o.rounds }, (_, r) => xs[r]?.[k] ?? null);
      const rounds = Array.from({ length: o.rounds }, (_, r) => {
        const c = ceilingOf(probesBeside(steps, m, r).map((i) => probes[i] ?? null));
        const fig = (x) => (x ? { prefill_tok_s: x.prefill_tok_s, decode_tok_s: x.decode_tok_s, ...(x.other_cores !== undefined ? { other_cores: x.other_cores } : {}) } : null);
        return {
          round: r, order: steps.filter((x) => x.kind === 'side' && x.model === m && x.round === r).map((x) => x.side),
          probes: probesBeside(steps, m, r), ceiling_gbs: c.ceiling_gbs,
          emollm: fig(eR[r]), llamacpp: fig(aR[r]), llama_bench: fig(bR[r]),
          emollm_bw_pct: bwPct(weightBytes, eR[r]?.decode_tok_s, c.ceiling_gbs),
          ...(chunked ? { emollm_paired: pairedOf([e[r]]), llama_bench_paired: lbPairedOf([lbAll[r]]),
            decode_vs_llama_bench_paired: pairedRatio(pairedOf([e[r]]), lbPairedOf([lbAll[r]])) } : {}),
        };
      });
      const ratios = {
        prefill_vs_llamacpp: roundRatios(per(eR, 'prefill_tok_s'), per(aR, 'prefill_tok_s')),
        decode_vs_llamacpp: roundRatios(per(eR, 'decode_tok_s'), per(aR, 'decode_tok_s')),
        prefill_vs_llama_bench: roundRatios(per(eR, 'prefill_tok_s'), per(bR, 'prefill_tok_s')),
        decode_vs_llama_bench: roundRatios(per(eR, 'decode_tok_s'), per(bR, 'decode_tok_s')),
        // --probe-every chunk: emollm's chunks and llama-bench's paired runs of all rounds pooled
        ...(chunked ? { decode_vs_llama_bench_paired: pairedRatio(pairedOf(e), lbPairedOf(lbAll)) } : {}),
        ...(chunked && o.cpuClock ? { decode_vs_llama_bench_paired_wall: pairedRatio(pairedWallOf(e), lbPairedWallOf(lbAll)) } : {}),
      };
      const failed = (xs) => xs.some((x) => x?.ok === false);
      const benchS = mergeBench(lbAll);
      const emollmS = summarize(mergeRounds(e), o.prompt), anchorS = summarize(mergeRounds(a), o.prompt);
      rows.push({
        shape: p.shape, dtype: p.dtype, format, weightBytes, agree, block: blocks[m], rounds, ratios, paired: pairedOf(e), lbPaired: lbPairedOf(lbAll),
        lbPairedWall: chunked && o.cpuClock ? lbPairedWallOf(lbAll) : null,
        pairedWall: chunked && o.cpuClock ? pairedBw(chunkRuns(e), sizes) : null,
        emollmS, anchorS, benchS,
        benchNote: !lb.path ? 'n/a' : !benchS && failed(lbAll) ? 'error' : '-',
        emollmNote: emollmWhyNot ? 'n/a' : !emollmS && failed(e) ? 'error' : '-',
        anchorNote: !anchorOk ? 'n/a' : !anchorS && failed(a) ? 'error' : '-',
      });
      if (!o.emollm || emollmWhyNot) break;  // anchor only: one row per model
    }
  });

  // ---- the run's start and end probes: the summary line's ceiling, the higher of the two (each
  // row's %bw is against its own block's probes instead)
  const probeStart = nProbes ? probes[0] : null, probeEnd = nProbes > 1 ? probes[nProbes - 1] : null;
  const probe = probeStart || probeEnd
    ? { read_bw_gbs: Math.max(probeStart?.read_bw_gbs ?? 0, probeEnd?.read_bw_gbs ?? 0),
      probe_gbs: Math.max(probeStart?.probe_gbs ?? 0, probeEnd?.probe_gbs ?? 0),
      anchor_gemv_gbs: Math.max(probeStart?.anchor_gemv_gbs ?? 0, probeEnd?.anchor_gemv_gbs ?? 0) || null,
      fma_gflops: Math.max(probeStart?.fma_gflops ?? 0, probeEnd?.fma_gflops ?? 0) || null,
      int8_dot_gops: Math.max(probeStart?.int8_dot_gops ?? 0, probeEnd?.int8_dot_gops ?? 0) || null,
      int8_block_gops: Math.max(probeStart?.int8_block_gops ?? 0, probeEnd?.int8_block_gops ?? 0) || null,
      start: probeStart, end: probeEnd }
    : null;

  // ---- report
  out('');
  out('tok/s: prefill = prompt tokens / time to evaluate the prompt into an empty cache (batches of --batch);');
  out(`       decode = 1 / median time between generated tokens (positions prompt..prompt+gen, greedy). Best of the runs of all ${o.rounds} round(s).`);
  out(`ratio = emollm / llama.cpp (> 1: emollm faster), the median of the per-round ratios (each side measured once a round, alternated A B | B A ...).`);
  out('GB/s = weight bytes per token x decode tok/s (KV reads not counted); %bw against the highest probe beside the model\'s own block');
  out(`(probe = max(read-bandwidth probe, best anchor GEMV) of one bench_kernels run, ${o.probe ? `every ${o.probeEvery === 'chunk' ? 'block' : o.probeEvery}` : 'none: --no-probe'}; the probes column: the lowest-highest of them).`);
  if (chunked) {
    out(`paired %bw (--probe-every chunk): emollm decoded in chunks of ${o.chunk} tokens, an in-process read probe (same ${threads} threads, ${PROBE_BYTES >> 20} MiB;`);
    out(`${probeFormsText()}) before the first chunk and after each; a chunk's GB/s = (weights + KV rows read) x its timed tokens (all but its first)`);
    out('/ their time, against the higher of its two probes; the median over the chunks of the (undisturbed) runs, their range, and the range of');
    out('the chunks\' probes. The in-process probe is the read loop alone (no anchor GEMV): compare it with the block probes\' read figures.');
    if (o.cpuClock) out('--cpu-clock: the paired columns by CPU time (chunks: the process\'s CPU seconds; probes: each pass\'s thread CPU seconds); the wall pairing in the JSON (emollm_paired_wall).');
    out(`lb paired %bw: llama-bench's decode as ${o.lbRuns} runs a round of ${o.lbTokens} tokens after -d ${o.prompt} (one llama-bench process, -r 1 a test, --delay ${LB_DELAY_S};`);
    out('the first test computes the depth and is not paired), each between two probes taken in this process (the same probe) while llama-bench');
    out('sleeps before its next test; a run\'s (weights + llama.cpp\'s KV rows) GB/s against the higher of its probes. ratio tg paired = emollm\'s');
    out(`median tok/s per GB/s of its chunks' probes / llama-bench's over its runs (${o.cpuClock ? 'CPU time both sides: llama-bench\'s threads\' running time over its timed tokens' : 'wall time both sides'}): the tg ratio with each rate`);
    out('held to the bandwidth of its moment. The tg column stays llama-bench\'s -n gen -r run (unpaired).');
  }
  out('RSS = peak RSS of each measuring process (mmap-ed weights included). agree = leading');
  out(`generated tokens equal to llama.cpp's. llama.cpp = node-llama-cpp ${NLC_VERSION} prebuilt CPU binary, KV cache ${o.kvType ?? 'f16 (its default)'}; emollm's KV cache ${o.emollmKv} (kv = emollm/llama.cpp); emollm on the`);
  out('same GGUF (fmt gguf) and on the HF safetensors folder of the same weights (fmt hf, anchor from the GGUF).');
  out('llama-bench = llama.cpp\'s own benchmark built from the source node-llama-cpp pins (sh bench/setup-anchors.sh llama-bench):');
  out('pp = -p prompt into an empty cache, tg = -n gen after -d prompt cached positions, best of its -r samples; ratio = emollm / it.');
  out('Figures come from the undisturbed runs when there are any. busy = cores of OTHER processes\' work during those runs');
  out('(worst run, either side); "!" marks >= 0.25: no undisturbed run, the row is unreliable, rerun it on a quiet machine.');
  out('');
  table(rows, o, out);
  printRounds(rows, probes, o, out);
  printWithKv(rows, o, out);
  out('');
  if (probe) {
    out(`bandwidth ceiling of the run ${fmt(probe.read_bw_gbs)} GB/s = max(read probe ${fmt(probe.probe_gbs)} (${probeStart?.variant ?? probeEnd?.variant ?? '?'}), ` +
      `best anchor GEMV ${fmt(probe.anchor_gemv_gbs)}) (bench_kernels, ${threads} threads; start ${fmt(probeStart?.read_bw_gbs)} / end ${fmt(probeEnd?.read_bw_gbs)}, the higher; ` +
      `the rows' %bw use their own blocks' probes)`);
    const all = ceilingOf(probes);
    if (nProbes > 2) out(`all ${nProbes} probes (${probes.map((x) => fmt(x?.read_bw_gbs)).join(', ')} GB/s): ${fmt(all.min_gbs)}-${fmt(all.ceiling_gbs)}, the lowest ${fmt(all.spread_pct, 0)}% under the highest`);
  }
  if (probe) printPrefillFloors(rows, probe, o, out);
  for (const r of results) {
    const short = (r.result?.runs ?? []).filter((x) => x.tokens_out < o.gen);
    if (short.length) out(`note: ${r.side} ${r.model} ${r.format}: a run stopped after ${short[0].tokens_out} of ${o.gen} tokens (${short[0].stop ?? '?'}); its decode figure covers fewer tokens`);
  }
  if (o.profile) for (const r of results) if (r.side === 'emollm') printProfile(r, out, blocks[r.model_index]?.ceiling_gbs);
  const failures = results.filter((r) => r.result && !r.result.ok);
  for (const r of results) if (r.result?.paired && !r.result.paired.ok) out(`note: llama-bench ${r.model} (round ${r.round + 1}): its paired runs failed: ${r.result.paired.error}`);
  for (const f of failures) out(`error: ${f.side} ${f.model}: ${String(f.result.error).split('\n')[0]}`);
  if (emollmWhyNot && o.emollm) out(`emollm: not measured: ${emollmWhyNot}`);
  if (!anchorOk && o.anchor) out(`llama.cpp: not measured: ${o.nlc ? 'node-llama-cpp is not installed' : '--no-node-llama-cpp'}`);
  if (o.anchor && lb.whyNot) out(`llama-bench: not measured: ${lb.whyNot}`);
  const lbInfo = results.find((r) => r.side === 'llama-bench' && r.result?.ok)?.result.info;
  if (lbInfo) out(`llama-bench: llama.cpp ${lbInfo.build_commit} (node-llama-cpp's pinned source), ${lbInfo.n_threads} threads, KV ${lbInfo.type_k}, flash attention ${lbInfo.flash_attn}, cpu ${lbInfo.cpu_info}`);
  const anchorInfo = results.find((r) => r.side === 'llama.cpp' && r.result?.ok)?.result.info;
  if (anchorInfo) out(`llama.cpp: ${anchorInfo.buildType} binary, llama.cpp ${anchorInfo.llamaCppRelease ?? '?'}, flash attention ${anchorInfo.flashAttention}, ${anchorInfo.threads} threads | ${String(anchorInfo.systemInfo ?? '').replace(/\s*\|\s*$/, '').trim()}`);
  out(`wall ${((performance.now() - tStart) / 1000).toFixed(0)} s`);

  const json = {
    machine: { cpu: os.cpus()[0]?.model?.trim(), logical_cpus: ncpu, load_avg_start: load },
    settings: { threads, prompt: o.prompt, gen: o.gen, n_ctx: o.nCtx, n_batch: o.nBatch, budget_s: o.budgetS, max_runs: o.maxRuns, anchor_kv: o.kvType, emollm_kv: o.emollmKv, emollm_decode_bf16_products: o.bf16Products, seed: o.seed,
      rounds: o.rounds, probe_every: o.probe ? o.probeEvery : null, chunk_tokens: chunked ? o.chunk : null,
      llama_bench_paired_tokens: chunked ? o.lbTokens : null, llama_bench_paired_runs: chunked ? o.lbRuns : null, round_budget_s: share.budgetS, round_max_runs: share.maxRuns },
    probe,
    // every probe in run order (index as in schedule and rows[].probes), and the order things ran in
    probes,
    schedule: steps.map((x) => (x.kind === 'probe' ? `probe ${x.probe}` : `${x.model}:${x.side}:${x.round}`)),
    rows: rows.map((r) => ({ shape: r.shape, dtype: r.dtype, format: r.format, kv: kvLabel(o), weight_bytes_per_token: r.weightBytes, kv_bytes_per_token: r.kvBytes ?? null, agree: r.agree ?? null, emollm: r.emollmS, llamacpp: r.anchorS, llama_bench: r.benchS,
      // the block's probes and the ceiling of its %bw (their highest), the lowest and the spread
      probes: r.block.probes, probes_gbs: r.block.probes_gbs, ceiling_gbs: r.block.ceiling_gbs, probe_min_gbs: r.block.min_gbs, probe_spread_pct: r.block.spread_pct,
      emollm_gbs: decodeGbs(r.weightBytes, r.emollmS?.decode_tok_s), emollm_bw_pct: bwPct(r.weightBytes, r.emollmS?.decode_tok_s, r.block.ceiling_gbs),
      llama_bench_bw_pct: bwPct(r.weightBytes, r.benchS?.decode_tok_s, r.block.ceiling_gbs),
      // --probe-every chunk: the paired %bw (each chunk's weights + KV GB/s against the higher of the
      // child's probes before and after it), per chunk and summarized; null otherwise
      emollm_paired: r.paired ?? null, emollm_paired_clock: r.paired ? (o.cpuClock ? 'cpu' : 'wall') : null,
      ...(r.pairedWall ? { emollm_paired_wall: r.pairedWall } : {}),
      // --probe-every chunk: llama-bench's paired runs (per_chunk: one a run, its tokens from 1 after
      // the prompt's depth), summarized as emollm_paired; null otherwise
      llama_bench_paired: r.lbPaired ?? null,
      ...(r.lbPairedWall ? { llama_bench_paired_wall: r.lbPairedWall } : {}),
      ratios: r.ratios, rounds: r.rounds })),
    raw: results,
    emollm_unavailable: emollmWhyNot,
    llama_bench_unavailable: lb.whyNot,
  };
  if (o.json) process.stdout.write(JSON.stringify(json, null, 2) + '\n');
  if (o.jsonOut) writeFileSync(o.jsonOut, JSON.stringify(json, null, 2) + '\n');
  // a run that measured no engine on any model (every side disabled, missing or failed) has no figures
  const measured = rows.some((r) => r.emollmS || r.anchorS || r.benchS);
  if (!measured) out('error: nothing was measured (no engine gave a figure for any model)');
  process.exitCode = failures.length || !measured ? 1 : 0;
}

main().catch((e) => { console.error(`bench:decode: ${e?.message ?? e}`); process.exit(2); });
