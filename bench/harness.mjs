#!/usr/bin/env node
// EmoBench harness overhead: the evaluator with the `null` backend (no model: EmoPrompt assembly,
// decoding of a canned reply) over 10,000 synthetic samples: JSONL read + validation, prompt
// assembly, decoding, predictions.jsonl logging, metrics (1000 bootstrap resamples) and the three
// report files. Prints ms/sample and peak RSS. Target: < 1 ms/sample.
//   npm run bench:harness [-- --samples N]      (needs `npm run build:ts`: it runs dist/)
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const evalJs = join(root, 'dist', 'emobench', 'eval.js');
if (!existsSync(evalJs)) {
  console.error(`bench/harness.mjs: ${evalJs} not found; run \`npm run build:ts\` first`);
  process.exit(1);
}
const { runEval } = await import(evalJs);
const { sampleToJsonl } = await import(join(root, 'dist', 'emobench', 'sample.js'));

const i = process.argv.indexOf('--samples');
const N = i > 0 ? Number(process.argv[i + 1]) : 10_000;
const TASKS = ['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'];
const EMO = ['amusement', 'anger', 'awe', 'contentment', 'disgust', 'excitement', 'fear', 'sadness'];
const INTENTS = ['complain', 'praise', 'apologise', 'thank', 'ask for help', 'agree', 'disagree', 'inform'];

const dir = mkdtempSync(join(tmpdir(), 'emobench-harness-'));
try {
  writeFileSync(join(dir, 'img.jpg'), Buffer.from([0xff, 0xd8, 0xff, 0xd9])); // media exists; the null backend never decodes it
  const lines = [];
  for (let k = 0; k < N; k++) {
    const task = TASKS[k % 6];
    const s = {
      id: `Synth/test/${k}`,
      task,
      source: 'Synth',
      split: 'test',
      media: k % 2 ? { type: 'image', path: 'img.jpg' } : null,
      text: `synthetic sample number ${k}, with a sentence or two of accompanying text.`,
      ...(k % 5 === 0 ? { context: ['A: hello there.', 'B: hi, how are you?'] } : {}),
    };
    if (task === 'emo-c') Object.assign(s, { options: EMO, answer: EMO[k % EMO.length] });
    else if (task === 'emo-o') s.answer = ['happy', 'sad', 'fear'][k % 3];
    else if (task === 'intent') Object.assign(s, { options: INTENTS, answer: INTENTS[k % INTENTS.length] });
    else s.answer = k % 3 ? 'no' : 'yes';
    lines.push(sampleToJsonl(s));
  }
  const bench = join(dir, 'bench.jsonl');
  writeFileSync(bench, lines.join('\n') + '\n');

  const t0 = performance.now();
  const r = await runEval({ bench, model: 'null', out: join(dir, 'out'), progress: false, summary: false, resamples: 1000 });
  const ms = performance.now() - t0;
  const rssMiB = process.resourceUsage().maxRSS / 1024;
  const perSample = ms / N;
  console.log(`harness (null backend): ${N} samples in ${ms.toFixed(0)} ms = ${perSample.toFixed(3)} ms/sample (target < 1), predict+log ${r.timing.meanMsPerSample.toFixed(3)} ms/sample; peak RSS ${rssMiB.toFixed(0)} MiB`);
  console.log(JSON.stringify({ samples: N, totalMs: Math.round(ms), msPerSample: perSample, predictMsPerSample: r.timing.meanMsPerSample, peakRssMiB: Math.round(rssMiB), scored: r.counts.ok }));
  if (r.counts.ok !== N) {
    console.error(`expected ${N} scored samples, got ${r.counts.ok}`);
    process.exitCode = 1;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
