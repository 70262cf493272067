#!/usr/bin/env node
// `npm run bench:face [-- options]`: face detection + expression recognition per photo, emollm's
// native core (lib/face.ts: TinyFaceDetector + FaceExpressionNet in C++) beside face-api's own
// JavaScript (@vladmandic/face-api's `face-api.node-wasm.js` build) on two TensorFlow.js backends in
// the same run: the pure-JS 'cpu' backend and '@tensorflow/tfjs-backend-wasm' (WebAssembly with
// SIMD / threads where Node has them; what a Node user without tfjs-node runs, and it installs
// offline from npm: the .wasm files are in the package). Same photos (the six demo photos of
// @vladmandic/face-api), same options (inputSize 416, scoreThreshold 0.5).
//
//   npm run bench:face                      # 10 timed runs of ours, 2 of face-api cpu, 5 of wasm, per photo
//   npm run bench:face -- --runs 20 --ref-runs 3 --wasm-runs 10 --input-size 320
//   npm run bench:face -- --no-faceapi      # ours only;  --no-wasm / --no-cpu: skip one backend
//   npm run -s bench:face -- --json > face.json
//
// Each side runs one call at a time after one warm-up call (face-api's first call on a backend
// also compiles / initialises its kernels). Order: ours on all photos, face-api cpu, face-api wasm,
// ours again; ours' figure per photo is the better of its two medians (so drift of the machine
// over the run does not favour it), and both are in the JSON. The figure is the median wall time of
// decode-free work: the image is decoded once (sharp, lib/image.ts) and every side gets the same
// RGB pixels. Ours = detect + crop + expressions in one native call; face-api =
// detectAllFaces(tensor, TinyFaceDetectorOptions).withFaceExpressions(). ratio = face-api time /
// ours (how many times faster the native path is), per backend.
// Agreement (printed, in the JSON, exit status 1 when off): per photo and backend, the same number
// of faces; each of ours matched to face-api's face of highest IoU: IoU >= 0.95, |score diff| <=
// 1e-3, max |expression probability diff| <= 1e-2 (tests/js/face.test.ts holds the cpu backend to
// 1e-4 / 1e-3; XNNPACK's wasm kernels round differently, so the bench is looser).
// Before measuring it brings build/Release/emollm.node and dist/ up to date.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import Module, { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { median } from './measure.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');

function parseArgs(argv) {
  const o = {
    runs: 10, refRuns: 2, wasmRuns: 5, wasmThreads: 0, threads: 0, inputSize: 416, scoreThreshold: 0.5,
    faceapi: true, cpu: true, wasm: true, json: false, build: true,
  };
  const int = (a, v, min) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`${a} needs an integer >= ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--runs') o.runs = int(a, next(), 1);
    else if (a === '--ref-runs') o.refRuns = int(a, next(), 1);
    else if (a === '--wasm-runs') o.wasmRuns = int(a, next(), 1);
    else if (a === '--wasm-threads') o.wasmThreads = int(a, next(), 0);
    else if (a === '--threads') o.threads = int(a, next(), 0);
    else if (a === '--input-size') o.inputSize = int(a, next(), 32);
    else if (a === '--score-threshold') o.scoreThreshold = Number(next());
    else if (a === '--no-faceapi') o.faceapi = false;
    else if (a === '--no-cpu') o.cpu = false;
    else if (a === '--no-wasm') o.wasm = false;
    else if (a === '--no-build') o.build = false;
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: node bench/face.mjs [--threads N (ours; 0: physical cores)] [--runs N] [--ref-runs N] [--wasm-runs N] [--wasm-threads N (0: the wasm backend\'s default)]\n' +
                  '       [--input-size 416] [--score-threshold 0.5] [--no-faceapi] [--no-cpu] [--no-wasm] [--no-build] [--json]');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  if (o.inputSize % 32 !== 0) throw new Error(`--input-size must be a multiple of 32, got ${o.inputSize}`);
  return o;
}

function build(log) {
  for (const [cmd, args] of [
    [process.execPath, [join(root, 'scripts', 'build-addon.mjs')]],
    [process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')]],
  ]) {
    const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
    if (r.status !== 0) {
      // tsc still emits on type errors elsewhere in lib/: go on when dist/face.js is there
      const tsc = args.some((a) => a.endsWith('tsc'));
      log(`${tsc ? 'warning' : 'error'}: ${args.map((a) => a.replace(root + '/', '')).join(' ')} exited with ${r.status}\n${(r.stdout + r.stderr).trim()}`);
      if (!tsc || !existsSync(join(root, 'dist', 'face.js'))) throw new Error('build step failed');
    }
  }
}

// face-api's `face-api.node-wasm.js` re-exports @tensorflow/tfjs and @tensorflow/tfjs-backend-wasm
// (both 4.22, devDependencies). Without the wasm package a stub stands in for it so that the 'cpu'
// backend still runs, and the wasm anchor reads unavailable with the reason.
async function loadFaceApi(modelDir) {
  const require = createRequire(join(root, 'package.json'));
  let wasmMissing = null;
  try {
    require.resolve('@tensorflow/tfjs-backend-wasm');
  } catch {
    wasmMissing = '@tensorflow/tfjs-backend-wasm is not installed (a devDependency: npm install)';
  }
  const orig = Module._load;
  if (wasmMissing)
    Module._load = function (req, ...rest) {
      if (req === '@tensorflow/tfjs-backend-wasm') return { setWasmPaths() {} };
      return orig.call(this, req, ...rest);
    };
  try {
    const tf = require('@tensorflow/tfjs');
    const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
    const wasm = wasmMissing ? null : require('@tensorflow/tfjs-backend-wasm');
    if (wasm && !tf.findBackendFactory('wasm'))
      throw new Error('tfjs-backend-wasm did not register with the @tensorflow/tfjs that face-api uses (two tfjs-core copies?)');
    await tf.setBackend('cpu');
    await tf.ready();
    await faceapi.nets.tinyFaceDetector.loadFromDisk(modelDir);
    await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);
    return { tf, faceapi, wasm, wasmMissing, version: faceapi.version, tfVersion: tf.version_core };
  } finally {
    Module._load = orig;
  }
}

// Switches TF.js to the wasm backend: threads as asked when the runtime supports wasm threads;
// returns what it runs with, or throws with the reason.
async function useWasm(ref, threads) {
  const { tf, wasm } = ref;
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const mt = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
  if (mt && threads > 0) wasm.setThreadsCount(threads);
  if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") failed');
  await tf.ready();
  if (tf.getBackend() !== 'wasm') throw new Error(`backend is ${tf.getBackend()} after setBackend("wasm")`);
  return { simd, multithread: mt, threads: mt ? wasm.getThreadsCount() : 1, version: wasm.version_wasm };
}

function iou(a, b) {
  const iw = Math.max(0, Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x));
  const ih = Math.max(0, Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y));
  const inter = iw * ih;
  return inter / (a.width * a.height + b.width * b.height - inter);
}

const EXPRESSIONS = ['neutral', 'happy', 'sad', 'angry', 'fearful', 'disgusted', 'surprised']; // lib/face.ts order
const AGREE = { iou: 0.95, score: 1e-3, expr: 1e-2 };

// Ours (NativeFaceBox[]) against face-api's results on one photo.
function agreement(ours, theirs) {
  const ref = theirs.map((r) => ({
    box: r.detection.box,
    score: r.detection.score,
    expr: EXPRESSIONS.map((l) => r.expressions[l]),
  }));
  let minIou = 1, maxScore = 0, maxExpr = 0;
  for (const f of ours) {
    let best = null, bestIou = -1;
    for (const r of ref) {
      const o = iou(f, r.box);
      if (o > bestIou) [best, bestIou] = [r, o];
    }
    if (!best) { minIou = 0; continue; }
    minIou = Math.min(minIou, bestIou);
    maxScore = Math.max(maxScore, Math.abs(f.score - best.score));
    for (let k = 0; k < 7; k++) maxExpr = Math.max(maxExpr, Math.abs((f.expressions?.[k] ?? NaN) - best.expr[k]) || 0);
    if (!f.expressions) maxExpr = Infinity;
  }
  const ok = ours.length === ref.length && minIou >= AGREE.iou && maxScore <= AGREE.score && maxExpr <= AGREE.expr;
  return { faces: ref.length, minIou, maxScoreDiff: maxScore, maxExprDiff: maxExpr, ok };
}

async function timeIt(fn, runs) {
  let last = await fn(); // warm-up
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    last = await fn();
    ms.push(performance.now() - t0);
  }
  return { ms: median(ms), result: last };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const log = (...a) => (o.json ? console.error(...a) : console.log(...a));
  if (o.build) build(log);
  const face = await import(pathToFileURL(join(root, 'dist', 'face.js')).href);
  const { decodeImage } = await import(pathToFileURL(join(root, 'dist', 'image.js')).href);
  const { cpuInfo } = await import(pathToFileURL(join(root, 'dist', 'index.js')).href);
  const modelDir = face.faceApiModelDir();
  const analyzer = await face.FaceAnalyzer.load(o.threads > 0 ? { threads: o.threads } : {});
  let ref = null;
  const unavailable = {}; // backend -> reason
  if (o.faceapi) {
    // The banner TF.js prints on Node goes to stderr; keep stdout clean for --json.
    const warn = console.warn;
    console.warn = (...a) => process.stderr.write(a.join(' ') + '\n');
    try {
      ref = await loadFaceApi(modelDir);
      if (ref.wasmMissing) unavailable.wasm = ref.wasmMissing;
    } catch (e) {
      unavailable.cpu = unavailable.wasm = `face-api / @tensorflow/tfjs not loadable (${e.message})`;
    } finally {
      console.warn = warn;
    }
  }
  const backends = [];
  if (ref && o.cpu) backends.push('cpu');
  if (ref && o.wasm && !unavailable.wasm) backends.push('wasm');
  const info = cpuInfo();
  log(`emollm face bench: ${info.brand}, ${info.physicalCores} cores, ours on ${o.threads || info.physicalCores} threads, isa ${info.isaActive}, Node ${process.versions.node}` +
      (ref ? `, face-api ${ref.version} on tfjs ${ref.tfVersion}` : ''));
  log(`inputSize ${o.inputSize}, scoreThreshold ${o.scoreThreshold}; median of ${o.runs} runs (ours, twice) / ${o.refRuns} (face-api cpu) / ` +
      `${o.wasmRuns} (face-api wasm) after 1 warm-up each; load avg ${os.loadavg()[0].toFixed(1)}`);
  for (const [b, why] of Object.entries(unavailable)) log(`face-api ${b} backend: anchor unavailable: ${why}`);
  const opts = { inputSize: o.inputSize, scoreThreshold: o.scoreThreshold };
  const images = [];
  for (let i = 1; i <= 6; i++) {
    const name = `sample${i}.jpg`;
    images.push({ name, img: await decodeImage(join(modelDir, '..', 'demo', name)) });
  }
  // Ours first, then each face-api backend, then ours again: TF.js leaves V8 garbage-collection
  // work behind that would otherwise run (on other threads) during our measurements.
  const rows = images.map(({ name, img }) => ({ photo: name, width: img.width, height: img.height }));
  const oursPass = async (key) => {
    for (const [k, { img }] of images.entries()) {
      const r = await timeIt(() => analyzer.models.analyze(img.data, img.width, img.height, opts), o.runs);
      rows[k][key] = r.ms;
      rows[k].faces = r.result.length;
      rows[k].oursResult = r.result;
    }
  };
  await oursPass('oursMsFirst');
  const anchors = {};
  let disagree = false;
  for (const backend of backends) {
    let setup;
    try {
      setup = backend === 'wasm' ? await useWasm(ref, o.wasmThreads) : { backend: 'cpu' };
      if (backend === 'cpu') {
        await ref.tf.setBackend('cpu');
        await ref.tf.ready();
      }
    } catch (e) {
      unavailable[backend] = e.message;
      log(`face-api ${backend} backend: anchor unavailable: ${e.message}`);
      continue;
    }
    anchors[backend] = { ...setup, backend: ref.tf.getBackend() };
    const fo = new ref.faceapi.TinyFaceDetectorOptions(opts);
    for (const [k, { img }] of images.entries()) {
      const t = ref.tf.tensor3d(Int32Array.from(img.data), [img.height, img.width, 3], 'int32');
      const theirs = await timeIt(() => ref.faceapi.detectAllFaces(t, fo).withFaceExpressions(), backend === 'wasm' ? o.wasmRuns : o.refRuns);
      t.dispose();
      const agree = agreement(rows[k].oursResult, theirs.result);
      disagree ||= !agree.ok;
      rows[k][backend] = { ms: theirs.ms, agree };
    }
  }
  await oursPass('oursMsSecond');
  for (const row of rows) {
    row.oursMs = Math.min(row.oursMsFirst, row.oursMsSecond);
    delete row.oursResult;
    for (const b of Object.keys(anchors)) row[b].ratio = row[b].ms / row.oursMs;
  }
  for (const [b, a] of Object.entries(anchors))
    log(`face-api ${b} backend` + (b === 'wasm' ? ` (tfjs-backend-wasm ${a.version}: SIMD ${a.simd ? 'yes' : 'no'}, ` +
        `threads ${a.threads}${a.multithread ? '' : ': this Node has no wasm threads'})` : ' (pure JavaScript)'));
  const fmtAgree = (g) => `${g.ok ? 'agree' : 'DISAGREE'} (IoU>=${g.minIou.toFixed(4)}, dscore ${g.maxScoreDiff.toExponential(1)}, dexpr ${g.maxExprDiff.toExponential(1)})`;
  for (const row of rows) {
    let line = `${row.photo.padEnd(12)} ${`${row.width}x${row.height}`.padEnd(10)} faces ${String(row.faces).padStart(2)}` +
      `  ours ${row.oursMs.toFixed(1).padStart(7)} ms`;
    for (const b of Object.keys(anchors))
      line += `  | ${b} ${row[b].ms.toFixed(0).padStart(6)} ms ${row[b].ratio.toFixed(1).padStart(6)}x ${fmtAgree(row[b].agree)}`;
    log(line);
  }
  const oursTotal = rows.reduce((a, r) => a + r.oursMs, 0);
  const summary = { oursMsMedianPerPhoto: median(rows.map((r) => r.oursMs)), oursMsTotal: oursTotal };
  let total = `total: ours ${oursTotal.toFixed(1)} ms`;
  for (const b of Object.keys(anchors)) {
    const refTotal = rows.reduce((a, r) => a + r[b].ms, 0);
    summary[b] = { msTotal: refTotal, ratio: refTotal / oursTotal, agree: rows.every((r) => r[b].agree.ok) };
    total += `, face-api ${b} ${refTotal.toFixed(0)} ms -> ${(refTotal / oursTotal).toFixed(1)}x`;
  }
  if (summary.cpu && summary.wasm) {
    summary.wasmOverCpuSpeedup = summary.cpu.msTotal / summary.wasm.msTotal;
    total += ` (wasm ${summary.wasmOverCpuSpeedup.toFixed(1)}x faster than cpu)`;
  }
  log(total);
  if (disagree) log(`DISAGREE: some photo's faces differ beyond IoU >= ${AGREE.iou}, |dscore| <= ${AGREE.score}, |dexpr| <= ${AGREE.expr} (see rows)`);
  if (o.json)
    console.log(JSON.stringify({ cpu: info, options: opts, oursThreads: o.threads || info.physicalCores, runs: o.runs, refRuns: o.refRuns, wasmRuns: o.wasmRuns,
      faceapi: ref ? { version: ref.version, tfjs: ref.tfVersion } : null, anchors, unavailable, agreeLimits: AGREE,
      loadavg: os.loadavg(), rows, summary }, null, 2));
  if (disagree) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
