#!/usr/bin/env node
// `npm run bench:face [-- options]`: face detection + expression recognition per photo, emollm's
// native core (lib/face.ts: TinyFaceDetector + FaceExpressionNet in C++) beside face-api's own
// JavaScript (@vladmandic/face-api on TensorFlow.js's pure-JS 'cpu' backend) in the same run, on
// the six demo photos of @vladmandic/face-api, same options (inputSize 416, scoreThreshold 0.5).
//
//   npm run bench:face                      # 10 timed runs of ours, 2 of face-api, per photo
//   npm run bench:face -- --runs 20 --ref-runs 3 --input-size 320
//   npm run bench:face -- --no-faceapi      # ours only
//   npm run -s bench:face -- --json > face.json
//
// Each side runs one call at a time after one warm-up call (face-api's first call also compiles
// its kernels), ours on all photos first, then face-api's; the figure is the median wall time of
// decode-free work: the image is decoded once
// (sharp, lib/image.ts) and both sides get the same RGB pixels. Ours = detect + crop + expressions
// in one native call; face-api = detectAllFaces(tensor, TinyFaceDetectorOptions).withFaceExpressions().
// The ratio is face-api time / ours (how many times faster the native path is).
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
  const o = { runs: 10, refRuns: 2, inputSize: 416, scoreThreshold: 0.5, faceapi: true, json: false, build: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--runs') o.runs = Math.max(1, parseInt(next(), 10));
    else if (a === '--ref-runs') o.refRuns = Math.max(1, parseInt(next(), 10));
    else if (a === '--input-size') o.inputSize = parseInt(next(), 10);
    else if (a === '--score-threshold') o.scoreThreshold = Number(next());
    else if (a === '--no-faceapi') o.faceapi = false;
    else if (a === '--no-build') o.build = false;
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: node bench/face.mjs [--runs N] [--ref-runs N] [--input-size 416] [--score-threshold 0.5] [--no-faceapi] [--no-build] [--json]');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
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

// face-api's CommonJS Node build needs tfjs-node or tfjs-backend-wasm; the wasm build only
// re-exports the backend module, so a stub stands in and TF.js's pure-JS 'cpu' backend runs.
async function loadFaceApi(modelDir) {
  const require = createRequire(join(root, 'package.json'));
  const orig = Module._load;
  Module._load = function (req, ...rest) {
    if (req === '@tensorflow/tfjs-backend-wasm') return { setWasmPaths() {} };
    return orig.call(this, req, ...rest);
  };
  try {
    const tf = require('@tensorflow/tfjs');
    const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
    await tf.setBackend('cpu');
    await tf.ready();
    await faceapi.nets.tinyFaceDetector.loadFromDisk(modelDir);
    await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);
    return { tf, faceapi, version: faceapi.version, tfVersion: tf.version_core };
  } finally {
    Module._load = orig;
  }
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
  const analyzer = await face.FaceAnalyzer.load();
  let ref = null;
  if (o.faceapi) {
    // The banner TF.js prints on Node goes to stderr; keep stdout clean for --json.
    const warn = console.warn;
    console.warn = (...a) => process.stderr.write(a.join(' ') + '\n');
    try {
      ref = await loadFaceApi(modelDir);
    } catch (e) {
      log(`face-api / @tensorflow/tfjs not loadable (${e.message}); measuring ours only`);
    } finally {
      console.warn = warn;
    }
  }
  const info = cpuInfo();
  log(`emollm face bench: ${info.brand}, ${info.physicalCores} cores, isa ${info.isaActive}, Node ${process.versions.node}` +
      (ref ? `, face-api ${ref.version} on tfjs ${ref.tfVersion} (cpu backend)` : ''));
  log(`inputSize ${o.inputSize}, scoreThreshold ${o.scoreThreshold}; median of ${o.runs} runs (ours) / ${o.refRuns} (face-api) after 1 warm-up; load avg ${os.loadavg()[0].toFixed(1)}`);
  const opts = { inputSize: o.inputSize, scoreThreshold: o.scoreThreshold };
  const images = [];
  for (let i = 1; i <= 6; i++) {
    const name = `sample${i}.jpg`;
    images.push({ name, img: await decodeImage(join(modelDir, '..', 'demo', name)) });
  }
  // All of ours first, then all of face-api: TF.js leaves V8 garbage-collection work behind that
  // would otherwise run (on other threads) during our next measurement.
  const rows = [];
  for (const { name, img } of images) {
    const ours = await timeIt(() => analyzer.models.analyze(img.data, img.width, img.height, opts), o.runs);
    rows.push({ photo: name, width: img.width, height: img.height, faces: ours.result.length, oursMs: ours.ms });
  }
  if (ref) {
    const fo = new ref.faceapi.TinyFaceDetectorOptions(opts);
    for (const [k, { img }] of images.entries()) {
      const t = ref.tf.tensor3d(Int32Array.from(img.data), [img.height, img.width, 3], 'int32');
      const theirs = await timeIt(() => ref.faceapi.detectAllFaces(t, fo).withFaceExpressions(), o.refRuns);
      t.dispose();
      const row = rows[k];
      row.faceapiFaces = theirs.result.length;
      row.faceapiMs = theirs.ms;
      row.ratio = theirs.ms / row.oursMs;
    }
  }
  for (const row of rows)
    log(`${row.photo.padEnd(12)} ${`${row.width}x${row.height}`.padEnd(10)} faces ${String(row.faces).padStart(2)}` +
        (ref ? `/${String(row.faceapiFaces).padStart(2)}` : '') +
        `  ours ${row.oursMs.toFixed(1).padStart(7)} ms` +
        (ref ? `  face-api ${row.faceapiMs.toFixed(0).padStart(6)} ms  ratio ${row.ratio.toFixed(1).padStart(6)}x` : ''));
  const oursTotal = rows.reduce((a, r) => a + r.oursMs, 0);
  const summary = { oursMsMedianPerPhoto: median(rows.map((r) => r.oursMs)), oursMsTotal: oursTotal };
  if (ref) {
    const refTotal = rows.reduce((a, r) => a + r.faceapiMs, 0);
    Object.assign(summary, { faceapiMsTotal: refTotal, ratio: refTotal / oursTotal });
    log(`total: ours ${oursTotal.toFixed(1)} ms, face-api ${refTotal.toFixed(0)} ms -> ${(refTotal / oursTotal).toFixed(1)}x`);
  } else {
    log(`total: ours ${oursTotal.toFixed(1)} ms`);
  }
  if (o.json)
    console.log(JSON.stringify({ cpu: info, options: opts, runs: o.runs, refRuns: o.refRuns, loadavg: os.loadavg(), rows, summary }, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
