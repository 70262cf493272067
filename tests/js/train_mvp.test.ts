// `emollm train-mvp` (lib/train/, native/train/mvp_trainer.*) on the tiny LLaVA in ../shared
// (skipped visibly when absent):
//  - the learning test: synthetic 42x42 images whose dominant colour (red, green, blue, yellow)
//    decides one of four answer words; before training the checkpoint scores near chance, after
//    train-mvp (global head trained, language model and tower frozen) >= 95% validation accuracy,
//    and `emollm eval --no-face` on the saved checkpoint reports the same accuracy as the
//    trainer's own validation;
//  - kill-and-resume: a run stopped after its first checkpoint and resumed with --resume ends
//    with bit-identical MVP weights to the uninterrupted run;
//  - a closed attention-pool opened by --perspectives trains (its gate becomes learned);
//  - the face-region head: images whose answer is decided by the colour inside the face box only
//    (the rest of the image shows another class's colour), faces from a fixed-box analyzer given
//    through the evaluator's face perspective; only the face head trained: chance -> >= 90%, and
//    the same checkpoint without the face perspective (no face tokens) falls back to <= 50%;
//    with face-api's real detector on its demo photos, the faces reach the face head (it changes);
//  - video samples: 1 s clips (ffmpeg) whose frames show the class colour, sampled as eval samples
//    them: chance -> >= 95% validation accuracy, one cached tower feature file per frame;
//  - parity: the trainer's loss on a video sample with face boxes equals the engine's own
//    scoreOptions log-probability of the answer after the same prompt (1e-3);
//  - the decoder on a device: on the strict emulated device (trainMvp({ device }) and
//    `train-mvp --device emulated`) the CPU run's weights; --device cuda on a build without CUDA
//    is ERR_UNSUPPORTED, an unknown device ERR_INVALID_ARGUMENT;
//  - refusals: an unknown perspective, --no-face with a trained face-region, an existing output without --resume.
// The numerical gradient checks are native (tests/native/test_mvp_train.cpp, test_backward.cpp).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initMvp, loadModel, runtimeInfo } from '../../lib/index.js';
import type { Device } from '../../lib/runtime.js';
import { createNativeTrainer, prepareSample, trainMvp, type TrainPhaseSeconds } from '../../lib/train/train_mvp.js';
import { rng } from '../../lib/emobench/metrics.js';
import { runEval } from '../../lib/emobench/eval.js';
import { nativeBackend } from '../../lib/emobench/backends.js';
import { PerceptionCache } from '../../lib/emobench/perception_cache.js';
import { parseSamples } from '../../lib/emobench/sample.js';
import type { FaceAnalyzer } from '../../lib/face.js';
import { requireTool } from './helpers/tools.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const haveTiny = existsSync(join(tiny, 'model.safetensors'));
const cli = join(repoRoot, 'dist', 'cli.js');
if (!haveTiny) console.warn(`train-mvp tests skipped: ${tiny} not found (set EMOLLM_SHARED_DIR)`);
// CI=true: a missing ffmpeg fails this file (no video test is skipped in CI)
const haveFfmpeg = requireTool('ffmpeg', 'ffmpeg', 'train-mvp video tests');
const demo = join(dirname(createRequire(import.meta.url).resolve('@vladmandic/face-api/package.json')), 'demo');

const COLOURS: Record<string, [number, number, number]> = {
  happy: [220, 30, 30], // red
  calm: [30, 200, 40], // green
  sad: [30, 40, 220], // blue
  surprised: [230, 220, 30], // yellow
};
const WORDS = Object.keys(COLOURS);

/** 42x42 PNG: the class colour over ~70% of the pixels, the rest random colours, with noise. */
async function image(word: string, r: () => number): Promise<Buffer> {
  const [R, G, B] = COLOURS[word]!;
  const px = Buffer.alloc(42 * 42 * 3);
  for (let i = 0; i < 42 * 42; i++) {
    const dominant = r() < 0.7;
    const c = dominant ? [R, G, B] : [r() * 255, r() * 255, r() * 255];
    for (let k = 0; k < 3; k++) px[i * 3 + k] = Math.max(0, Math.min(255, Math.round(c[k]! + (r() - 0.5) * 40)));
  }
  return sharp(px, { raw: { width: 42, height: 42, channels: 3 } }).png().toBuffer();
}

async function makeBench(dir: string, name: string, n: number, seed: number): Promise<string> {
  const r = rng(seed);
  const lines: string[] = [];
  mkdirSync(join(dir, 'img'), { recursive: true });
  for (let i = 0; i < n; i++) {
    const word = WORDS[i % WORDS.length]!;
    const file = `img/${name}-${i}.png`;
    writeFileSync(join(dir, file), await image(word, r));
    lines.push(
      JSON.stringify({ id: `colours/${name}/${i}`, task: 'emo-c', source: 'colours', split: name, media: { type: 'image', path: file }, options: WORDS, answer: word }),
    );
  }
  const f = join(dir, `${name}.jsonl`);
  writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

/** A face analyzer that finds one face, always in the top-left 14 x 14 pixels (one tower patch of the tiny LLaVA), neutral. */
const FACE_BOX = { x: 0, y: 0, width: 14, height: 14 };
const fixedFace = {
  analyze: async () => [
    { box: FACE_BOX, score: 0.9, expressions: { neutral: 1, happy: 0, sad: 0, angry: 0, fearful: 0, disgusted: 0, surprised: 0 }, dominant: 'neutral' },
  ],
} as unknown as FaceAnalyzer;

/** 42x42 PNG: the class colour inside FACE_BOX, another class's colour over the rest, with noise. */
async function faceImage(word: string, r: () => number): Promise<Buffer> {
  const others = WORDS.filter((w) => w !== word);
  const bg = COLOURS[others[Math.floor(r() * others.length)]!]!;
  const fg = COLOURS[word]!;
  const px = Buffer.alloc(42 * 42 * 3);
  for (let y = 0; y < 42; y++)
    for (let x = 0; x < 42; x++) {
      const c = x < FACE_BOX.width && y < FACE_BOX.height ? fg : bg;
      for (let k = 0; k < 3; k++) px[(y * 42 + x) * 3 + k] = Math.max(0, Math.min(255, Math.round(c[k]! + (r() - 0.5) * 40)));
    }
  return sharp(px, { raw: { width: 42, height: 42, channels: 3 } }).png().toBuffer();
}

async function makeFaceBench(dir: string, name: string, n: number, seed: number): Promise<string> {
  const r = rng(seed);
  const lines: string[] = [];
  mkdirSync(join(dir, 'faces'), { recursive: true });
  for (let i = 0; i < n; i++) {
    const word = WORDS[i % WORDS.length]!;
    const file = `faces/${name}-${i}.png`;
    writeFileSync(join(dir, file), await faceImage(word, r));
    lines.push(JSON.stringify({ id: `faces/${name}/${i}`, task: 'emo-c', source: 'faces', split: name, media: { type: 'image', path: file }, options: WORDS, answer: word }));
  }
  const f = join(dir, `faces-${name}.jsonl`);
  writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

/** 1 s clips, 8 frames at 8 fps (lossless FFV1 in Matroska), each frame a fresh noisy image of the class colour. */
async function makeVideoBench(dir: string, name: string, n: number, seed: number): Promise<string> {
  const r = rng(seed);
  const lines: string[] = [];
  mkdirSync(join(dir, 'clips'), { recursive: true });
  for (let i = 0; i < n; i++) {
    const word = WORDS[i % WORDS.length]!;
    const frames = join(dir, 'clips', `${name}-${i}`);
    mkdirSync(frames, { recursive: true });
    for (let f = 0; f < 8; f++) writeFileSync(join(frames, `${f}.png`), await image(word, r));
    const file = `clips/${name}-${i}.mkv`;
    const ff = spawnSync('ffmpeg', ['-v', 'error', '-y', '-framerate', '8', '-i', join(frames, '%d.png'), '-c:v', 'ffv1', join(dir, file)]);
    if (ff.status !== 0) throw new Error(`ffmpeg failed: ${ff.stderr.toString()}`);
    lines.push(JSON.stringify({ id: `clips/${name}/${i}`, task: 'emo-c', source: 'clips', split: name, media: { type: 'video', path: file }, options: WORDS, answer: word }));
  }
  const f = join(dir, `clips-${name}.jsonl`);
  writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

/** The evaluator's accuracy on a bench (native backend, the given face perspective). */
async function evalWith(model: string, bench: string, out: string, face: FaceAnalyzer | false): Promise<number> {
  const m = await loadModel(model, { threads: 1 });
  try {
    const r = await runEval({
      bench,
      model: nativeBackend(m, { frames: 4, modelFrames: 2, ...(face ? { faces: face } : { face: false }) }),
      out,
      mediaRoot: dirname(bench),
      progress: false,
      summary: false,
      face: face !== false,
      force: true,
    });
    return (r.metrics.tasks as Record<string, { accuracy: number }>)['emo-c']!.accuracy;
  } finally {
    await m.close();
  }
}

function evalAccuracy(model: string, bench: string, out: string): number {
  const r = spawnSync(process.execPath, [cli, 'eval', '--model', model, '--bench', bench, '--out', out, '--no-face', '--threads', '1'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.status !== 0) throw new Error(`emollm eval failed (${r.status}): ${r.stderr}`);
  const res = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as { metrics: { tasks: { 'emo-c': { accuracy: number } } } };
  return res.metrics.tasks['emo-c'].accuracy;
}

describe.skipIf(!haveTiny)('emollm train-mvp (tiny LLaVA)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'emollm-train-'));
  let start = '';
  let train = '';
  let val = '';
  beforeAll(async () => {
    start = join(tmp, 'start');
    await initMvp(tiny, start);
    train = await makeBench(tmp, 'train', 64, 1);
    val = await makeBench(tmp, 'val', 32, 2);
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it.skipIf(!existsSync(cli))('learns the colour task: chance -> >= 95% validation accuracy, and eval agrees', async () => {
    const before = evalAccuracy(start, val, join(tmp, 'eval-before'));
    const steps: number[] = [];
    const phases: TrainPhaseSeconds[] = [];
    const r = await trainMvp({ model: start, bench: train, val, out: join(tmp, 'trained'), steps: 60, batch: 8, lr: 3e-3, seed: 1, onStep: (s) => (steps.push(s.loss), phases.push(s.phaseSeconds)) });
    // the trainer's phase counters (bench:train's breakdown) count every phase that ran, and only those
    const first = phases[0]!, last = phases[phases.length - 1]!;
    for (const k of ['mvpForward', 'decoderForward', 'lmHead', 'gemmBackward', 'attentionBackward', 'normBackward', 'elementwiseBackward', 'mvpBackward', 'optimizer'] as const) {
      expect(first[k]).toBeGreaterThan(0);
      expect(last[k]).toBeGreaterThan(first[k]);
    }
    expect(last.recompute).toBe(0);  // the tiny LLaVA keeps its activations (--recompute auto)
    const after = r.evals[r.evals.length - 1]!.accuracy;
    const evalAfter = evalAccuracy(join(tmp, 'trained'), val, join(tmp, 'eval-after'));
    console.log(`colour task: accuracy before ${(before * 100).toFixed(1)}%, after ${(after * 100).toFixed(1)}% (eval: ${(evalAfter * 100).toFixed(1)}%), loss ${steps[0]!.toFixed(3)} -> ${steps[steps.length - 1]!.toFixed(3)}`);
    expect(before).toBeLessThanOrEqual(0.5);
    expect(after).toBeGreaterThanOrEqual(0.95);
    expect(evalAfter).toBe(after);
    expect(steps[steps.length - 1]!).toBeLessThan(steps[0]!);
  }, 240_000);

  it('kill-and-resume gives the same final weights as an uninterrupted run', async () => {
    const base = { model: start, bench: train, steps: 6, batch: 4, lr: 3e-3, seed: 3, saveEvery: 2 };
    await trainMvp({ ...base, out: join(tmp, 'full') });
    const ac = new AbortController();
    await expect(
      trainMvp({ ...base, out: join(tmp, 'killed'), signal: ac.signal, onStep: (s) => s.step === 3 && ac.abort() }),
    ).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    const r = await trainMvp({ ...base, out: join(tmp, 'killed'), resume: true });
    expect(r.stepsRun).toBe(4); // from the step-2 checkpoint
    const a = readFileSync(join(tmp, 'full', 'emollm_mvp.safetensors'));
    const b = readFileSync(join(tmp, 'killed', 'emollm_mvp.safetensors'));
    expect(b.equals(a)).toBe(true);
  }, 120_000);

  it('--perspectives opens a closed attention-pool with a learned gate and trains it', async () => {
    const out = join(tmp, 'pool');
    await trainMvp({ model: start, bench: train, out, perspectives: ['global', 'attention'], steps: 2, batch: 2, lr: 1e-2 });
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { emollm: { perspectives: { name: string; gate: string }[] } };
    expect(cfg.emollm.perspectives.map((p) => p.gate)).toEqual(['open', 'closed', 'learned', 'closed']);
    const { readSafetensors, asF32 } = await import('../../lib/train/checkpoint.js');
    const before = (await readSafetensors(join(start, 'emollm_mvp.safetensors'))).tensors;
    const after = (await readSafetensors(join(out, 'emollm_mvp.safetensors'))).tensors;
    for (const name of ['mvp.heads.2.queries', 'mvp.heads.2.out_proj.weight', 'mvp.heads.2.gate_logits', 'mvp.heads.0.linear_2.weight']) {
      const a = asF32(before[name]!), b = asF32(after[name]!);
      expect(a.length).toBe(b.length);
      expect(a.some((v, i) => v !== b[i]), name).toBe(true);
    }
    expect(Buffer.from(after['mvp.heads.1.linear_1.weight']!.data).equals(Buffer.from(before['mvp.heads.1.linear_1.weight']!.data))).toBe(true); // closed: untouched
  }, 60_000);

  it('trains the face-region head on the face boxes: chance -> >= 90%, and without faces it falls back to chance', async () => {
    // the face head starts closed with gate logit 0: opened by --perspectives, its gate is 0.5
    const startFaces = join(tmp, 'start-faces');
    await initMvp(tiny, startFaces, { closedGateLogit: 0 });
    const ftrain = await makeFaceBench(tmp, 'train', 64, 5);
    const fval = await makeFaceBench(tmp, 'val', 32, 6);
    const before = await evalWith(startFaces, fval, join(tmp, 'faces-before'), fixedFace);
    const losses: number[] = [];
    const out = join(tmp, 'faces-trained');
    const r = await trainMvp({ model: startFaces, bench: ftrain, val: fval, out, perspectives: ['faces'], faceAnalyzer: fixedFace, steps: 80, batch: 8, lr: 3e-2, seed: 2, onStep: (s) => losses.push(s.loss) });
    const after = r.evals[r.evals.length - 1]!.accuracy;
    const noFace = await evalWith(out, fval, join(tmp, 'faces-off'), false);
    console.log(`face task: accuracy before ${(before * 100).toFixed(1)}%, after ${(after * 100).toFixed(1)}% (without the face perspective ${(noFace * 100).toFixed(1)}%), loss ${losses[0]!.toFixed(3)} -> ${losses[losses.length - 1]!.toFixed(3)}`);
    expect(r.face).toBe(true);
    expect(r.samplesWithFaces).toBe(80 * 8);
    expect(before).toBeLessThanOrEqual(0.5);
    expect(after).toBeGreaterThanOrEqual(0.9); // measured 93.8% (one face token against 9 misleading global tokens)
    expect(noFace).toBeLessThanOrEqual(0.5); // the answer lives in the face tokens
    const { readSafetensors } = await import('../../lib/train/checkpoint.js');
    const a = (await readSafetensors(join(startFaces, 'emollm_mvp.safetensors'))).tensors;
    const b = (await readSafetensors(join(out, 'emollm_mvp.safetensors'))).tensors;
    expect(Buffer.from(b['mvp.heads.0.linear_2.weight']!.data).equals(Buffer.from(a['mvp.heads.0.linear_2.weight']!.data))).toBe(true); // global: frozen
  }, 300_000);

  it("face-api's detector on real photos: the faces reach the face-region head", async () => {
    const photos = join(tmp, 'photos.jsonl');
    // sample2 has one face: sample1's three face cues make a 291-position prompt, past the tiny
    // LLaVA's 256-position context (the trainer refuses it, as eval does)
    const rows = ['sample2.jpg', 'sample2.jpg'].map((f, i) => JSON.stringify({ id: `photo/${i}`, task: 'emo-c', source: 'demo', split: 'train', media: { type: 'image', path: f }, options: WORDS, answer: WORDS[i] }));
    writeFileSync(photos, rows.join('\n') + '\n');
    const out = join(tmp, 'photos-trained');
    const r = await trainMvp({ model: start, bench: photos, mediaRoot: demo, out, perspectives: ['faces'], steps: 1, batch: 2, lr: 1e-2 });
    expect(r.face).toBe(true); // on by default: a face-region head is trained
    expect(r.samplesWithFaces).toBeGreaterThan(0);
    const { readSafetensors, asF32 } = await import('../../lib/train/checkpoint.js');
    const a = asF32((await readSafetensors(join(start, 'emollm_mvp.safetensors'))).tensors['mvp.heads.3.linear_2.weight']!);
    const b = asF32((await readSafetensors(join(out, 'emollm_mvp.safetensors'))).tensors['mvp.heads.3.linear_2.weight']!);
    expect(b.some((v, i) => v !== a[i])).toBe(true);
  }, 120_000);

  it.skipIf(!haveFfmpeg)('trains on video samples (frames sampled as eval samples them): chance -> >= 95%', async () => {
    const vtrain = await makeVideoBench(tmp, 'train', 24, 7);
    const vval = await makeVideoBench(tmp, 'val', 12, 8);
    const before = await evalWith(start, vval, join(tmp, 'video-before'), false);
    const out = join(tmp, 'video-trained');
    const losses: number[] = [];
    // 4 frames sampled per clip, 2 given to the model (eval's defaults are 8 and 4; the tiny LLaVA's
    // context of 256 positions holds the EmoPrompt and 2 frames)
    const r = await trainMvp({ model: start, bench: vtrain, val: vval, out, frames: 4, modelFrames: 2, steps: 40, batch: 6, lr: 3e-3, seed: 4, onStep: (s) => losses.push(s.loss) });
    const after = r.evals[r.evals.length - 1]!.accuracy;
    console.log(`video colour task: accuracy before ${(before * 100).toFixed(1)}%, after ${(after * 100).toFixed(1)}%, loss ${losses[0]!.toFixed(3)} -> ${losses[losses.length - 1]!.toFixed(3)}`);
    expect(r.videoSamples).toBe(24);
    expect(r.face).toBe(false);
    expect(before).toBeLessThanOrEqual(0.5);
    expect(after).toBeGreaterThanOrEqual(0.95);
    // the frozen tower ran once per model frame: 2 distinct frames of each of the 24 clips
    const keys = readdirSync(join(out, 'feature-cache'));
    expect(keys.length).toBe(1);
    expect(readdirSync(join(out, 'feature-cache', keys[0]!)).filter((f) => f.endsWith('.f32')).length).toBe(24 * 2);
  }, 300_000);

  it("parity: the trainer's loss on a sample with face boxes is the engine's -log p(answer)", async () => {
    // an image sample: the tiny LLaVA's 256-position context cannot hold a video's frames with face cues
    const vbench = await makeFaceBench(tmp, 'parity', 1, 9);
    const startFaces = join(tmp, 'start-parity');
    await initMvp(tiny, startFaces, { closedGateLogit: 0.5 });
    // open the face head (learned gate), as train-mvp --perspectives would
    const cfgPath = join(startFaces, 'config.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as { emollm: { perspectives: { gate: string }[] } };
    cfg.emollm.perspectives[3]!.gate = 'learned';
    writeFileSync(cfgPath, JSON.stringify(cfg));
    const model = await loadModel(startFaces, { threads: 1 });
    const trainer = await createNativeTrainer(startFaces, { threads: 1 });
    try {
      const s = parseSamples(readFileSync(vbench, 'utf8'))[0]!;
      const p = await prepareSample(model, s, { mediaRoot: dirname(vbench), perception: new PerceptionCache({ frames: 4, faces: fixedFace }) });
      expect(p.images.length).toBe(1);
      expect(p.faces.every((f) => f.length === 1)).toBe(true);
      const feats: Float32Array[] = [];
      for (const img of p.images) feats.push(await trainer.towerFeatures((await model.imageProcessor!.preprocessBatch([img])).data, 1));
      const all = new Float32Array(feats.reduce((n, f) => n + f.length, 0));
      feats.forEach((f, i) => all.set(f, i * f.length));
      const loss = await trainer.loss(p.tokens, p.nAnswer, all, 1, p.faces);
      // 9 vision tokens + 1 face
      const info = model.info.emollm!;
      expect(trainer.lastPositions).toBe(p.tokens.length - 1 + info.nVisionTokens + 1);
      const scored = await model.scoreOptions(p.prompt, [s.answer], { normalize: 'mean' });
      console.log(`parity: trainer loss ${loss.toFixed(6)}, engine -meanLogprob ${(-scored.options[0]!.meanLogprob).toFixed(6)}`);
      expect(Math.abs(loss + scored.options[0]!.meanLogprob)).toBeLessThanOrEqual(1e-3 * Math.max(1, loss));
      const noFaces = await trainer.loss(p.tokens, p.nAnswer, all, 1, null);
      expect(Math.abs(noFaces - loss)).toBeGreaterThan(1e-4); // the face tokens take part
    } finally {
      trainer.close();
      await model.close();
    }
  }, 120_000);

  // The decoder on a device: the strict emulated device (device memory the host cannot read, every
  // op's pointers checked) runs the trainer's device path with the CPU kernels in the CPU
  // trainer's order: the CPU run's weights after 3 AdamW steps within 1e-5 (measured 3.1e-7: the
  // tower features, computed on the device, differ from the CPU's by rounding, and the attention
  // backward recomputes its row statistics), through the API and through the command line.
  it('trains with the decoder on the emulated device: the CPU run\'s weights, API and command line', async () => {
    process.env.EMOLLM_EMULATED_DEVICE = '1';
    const base = { model: start, bench: train, steps: 3, batch: 2, lr: 1e-2, seed: 5 };
    const cpu = await trainMvp({ ...base, out: join(tmp, 'dev-cpu') });
    const emu = await trainMvp({ ...base, out: join(tmp, 'dev-emulated'), device: 'emulated' as Device });
    expect(cpu.device).toBe('cpu');
    expect(emu.device).toBe('emulated');
    const { readSafetensors, asF32 } = await import('../../lib/train/checkpoint.js');
    const a = (await readSafetensors(join(tmp, 'dev-cpu', 'emollm_mvp.safetensors'))).tensors;
    const b = (await readSafetensors(join(tmp, 'dev-emulated', 'emollm_mvp.safetensors'))).tensors;
    let worst = 0;
    for (const name of Object.keys(a)) {
      const x = asF32(a[name]!), y = asF32(b[name]!);
      expect(y.length).toBe(x.length);
      for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
    }
    console.log(`train-mvp on the emulated device: final loss ${emu.finalLoss} (cpu ${cpu.finalLoss}), weights max |diff| ${worst}`);
    expect(worst).toBeLessThanOrEqual(1e-5);
    expect(Math.abs(emu.finalLoss - cpu.finalLoss)).toBeLessThanOrEqual(1e-5);
    const r = spawnSync(
      process.execPath,
      [cli, 'train-mvp', '--model', start, '--bench', train, '--out', join(tmp, 'dev-cli'), '--steps', '2', '--batch', '2', '--device', 'emulated', '--threads', '1'],
      { encoding: 'utf8', env: { ...process.env, EMOLLM_EMULATED_DEVICE: '1' }, timeout: 120_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/2 steps \(2 in this run, decoder on emulated\)/);
    expect(existsSync(join(tmp, 'dev-cli', 'emollm_mvp.safetensors'))).toBe(true);
  }, 180_000);

  it('refuses an unknown perspective and an existing run without --resume', async () => {
    await expect(trainMvp({ model: start, bench: train, out: join(tmp, 'x'), perspectives: ['nope'], steps: 1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(trainMvp({ model: start, bench: train, out: join(tmp, 'full'), steps: 6 })).rejects.toMatchObject({ code: 'ERR_OUTPUT_EXISTS' });
    // a face-region head reads only face boxes: training it without the face perspective is refused
    await expect(trainMvp({ model: start, bench: train, out: join(tmp, 'y'), perspectives: ['faces'], face: false, steps: 1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  }, 60_000);
});

describe.skipIf(!existsSync(cli))('emollm train-mvp (command line)', () => {
  it('a missing --model, or --steps with --epochs, is a usage error (exit 2)', () => {
    const a = spawnSync(process.execPath, [cli, 'train-mvp', '--bench', 'x.jsonl', '--out', 'y'], { encoding: 'utf8' });
    expect(a.status).toBe(2);
    expect(a.stderr).toMatch(/train-mvp needs --model/);
    const b = spawnSync(process.execPath, [cli, 'train-mvp', '--model', 'm', '--bench', 'x.jsonl', '--out', 'y', '--steps', '2', '--epochs', '1'], { encoding: 'utf8' });
    expect(b.status).toBe(2);
    expect(b.stderr).toMatch(/--steps or --epochs/);
  });
  // --device cuda is wired to the CUDA backend: a build without CUDA refuses it before any work,
  // typed, saying how to get one (a CUDA build without a GPU: ERR_UNSUPPORTED naming what is missing)
  it.skipIf(runtimeInfo().cudaBuilt)('--device cuda without a CUDA build: ERR_UNSUPPORTED saying how to get one', () => {
    const r = spawnSync(process.execPath, [cli, 'train-mvp', '--model', 'm', '--bench', 'x.jsonl', '--out', 'y', '--device', 'cuda'], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/ERR_UNSUPPORTED/);
    expect(r.stderr).toMatch(/no CUDA support/);
  });
  it('an unknown --device is refused (ERR_INVALID_ARGUMENT), and so is the emulated device unless enabled', () => {
    const env = { ...process.env };
    delete env.EMOLLM_EMULATED_DEVICE;
    for (const d of ['tpu', 'emulated']) {
      const r = spawnSync(process.execPath, [cli, 'train-mvp', '--model', 'm', '--bench', 'x.jsonl', '--out', 'y', '--device', d], { encoding: 'utf8', env });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/ERR_INVALID_ARGUMENT/);
    }
  });
});
