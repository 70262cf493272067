#!/usr/bin/env node
// The llama.cpp anchor of `npm run bench:decode`: one GGUF, measured in this process alone (the
// benchmark starts one child per model, so llama.cpp's threads compete with nothing of ours and
// the peak RSS is this process's). Uses node-llama-cpp's prebuilt CPU binary only: no GPU, no
// download, no source build (build: 'never', skipDownload, usePrebuiltBinaries).
//
//   node bench/anchors/llamacpp-anchor.mjs '<json spec>'
// spec: { model, threads, nCtx, nBatch, prompt: [ids], gen, budgetS, maxRuns, warmupTokens, quietWaitS, kvType? }
// Prints one JSON line on stdout (the last line), progress on stderr. The protocol is the same as
// bench/decode.mjs's emollm child:
//   { side, ok, load_s, runs: [{ prefill_s, first_token_s, decode_tok_s, decode_mean_tok_s, tokens_out,
//     other_cores }], tokens: [..], maxrss_mib, info }
// Each run: prefill = evaluating the prompt into an empty cache; then the last prompt token is
// evaluated again and gen tokens are generated greedily; decode = 1 / median time between
// consecutive generated tokens (the first token is not counted). other_cores: cores'
// worth of other processes' work during the run (Linux), so disturbed runs can be told apart.
import { performance } from 'node:perf_hooks';

import { childMain, machineBusyS, median, processCpuS, waitQuiet } from '../measure.mjs';

const spec = JSON.parse(process.argv[2]);
const log = (...a) => console.error('[llama.cpp]', ...a);

async function main() {
  const out = { side: 'llama.cpp', ok: false, runs: [], info: {} };
  // childMain: records a failure, the peak RSS, disposes the context then the model, writes the
  // JSON line and exits (node-llama-cpp can keep handles alive)
  await childMain(out, log, async (use) => {
    const nlc = await import('node-llama-cpp');
    const { getLlama, LlamaLogLevel, getModuleVersion } = nlc;
    const llama = await getLlama({
      gpu: false,
      build: 'never',
      skipDownload: true,
      usePrebuiltBinaries: true,
      progressLogs: false,
      maxThreads: spec.threads,
      logLevel: LlamaLogLevel.error,
    });
    out.info.version = typeof getModuleVersion === 'function' ? await getModuleVersion() : undefined;
    out.info.buildType = llama.buildType;            // 'prebuilt' expected
    out.info.gpu = llama.gpu;
    out.info.cpuMathCores = llama.cpuMathCores;
    out.info.llamaCppRelease = llama.llamaCppRelease?.release;
    out.info.systemInfo = llama.systemInfo;

    const t0 = performance.now();
    const model = use(await llama.loadModel({ modelPath: spec.model, gpuLayers: 0, useMmap: true }));
    const ctxOpts = {
      contextSize: spec.nCtx,
      batchSize: spec.nBatch,
      sequences: 1,
      threads: { ideal: spec.threads, min: spec.threads },
    };
    if (spec.kvType) {
      ctxOpts.experimentalKvCacheKeyType = spec.kvType;
      ctxOpts.experimentalKvCacheValueType = spec.kvType;
    }
    const context = use(await model.createContext(ctxOpts));
    out.load_s = (performance.now() - t0) / 1000;
    out.info.contextSize = context.contextSize;
    out.info.batchSize = context.batchSize;
    out.info.threads = context.currentThreads ?? context.idealThreads;
    out.info.flashAttention = context.flashAttention;
    const seq = context.getSequence();

    // warmup: touch every weight page (mmap) and let llama.cpp set up its graphs
    await seq.evaluateWithoutGeneratingNewTokens(spec.prompt.slice(0, spec.warmupTokens));
    await seq.clearHistory();

    const tStart = performance.now();
    for (let run = 0; run < spec.maxRuns; run++) {
      const times = [];
      const toks = [];
      const n = spec.prompt.length;
      const busy0 = machineBusyS(), cpu0 = processCpuS();
      // prefill: the whole prompt into the empty cache, in batches of nBatch
      const t = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(spec.prompt);
      const tPrefill = performance.now();
      // decode: drop the last prompt token and evaluate it again to get logits (as emollm's
      // generate does with a cached prompt), then one token at a time, greedy
      await seq.eraseContextTokenRanges([{ start: n - 1, end: n }]);
      const tGen = performance.now();
      for await (const tok of seq.evaluate([spec.prompt[n - 1]], { temperature: 0 })) {
        times.push(performance.now());
        toks.push(tok);
        if (toks.length >= spec.gen) break;
      }
      const dts = [];
      for (let i = 1; i < times.length; i++) dts.push(times[i] - times[i - 1]);
      const r = {
        prefill_s: (tPrefill - t) / 1000,
        first_token_s: (times[0] - tGen) / 1000,
        decode_tok_s: dts.length ? 1000 / median(dts) : NaN,
        decode_mean_tok_s: dts.length ? (1000 * dts.length) / (times.at(-1) - times[0]) : NaN,
        tokens_out: toks.length,
        other_cores: (machineBusyS() - busy0 - (processCpuS() - cpu0)) / ((performance.now() - t) / 1000),
      };
      out.runs.push(r);
      if (run === 0) out.tokens = toks;
      log(`run ${run + 1}: prefill ${(spec.prompt.length / r.prefill_s).toFixed(1)} tok/s, decode ${r.decode_tok_s.toFixed(2)} tok/s, other work ${r.other_cores.toFixed(2)} cores`);
      await seq.clearHistory();
      // enough: the budget is spent and one run was undisturbed (or 3x the budget is spent)
      const spent = (performance.now() - tStart) / 1000;
      if (spent > spec.budgetS && (out.runs.some((x) => x.other_cores < 0.25) || spent > 3 * spec.budgetS)) break;
      if (run + 1 < spec.maxRuns && spec.quietWaitS > 0) await waitQuiet(spec.quietWaitS);
    }
  });
}

main();
