// Eval sees what analyze sees: the native EmoBench backend runs the same perception code as
// `analyze` (frames, faces, face cues, face boxes; lib/perception.ts), so one sample gives the same
// answer through both, on images and on short videos made with ffmpeg from face-api's demo photos.
// Also: the per-media-file cache, --no-face and what run.json records.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { analyze, type AnalyzeTask } from '../../lib/analyze.js';
import { nativeBackend, samplePromptOptions } from '../../lib/emobench/backends.js';
import { readPredictions, runEval } from '../../lib/emobench/eval.js';
import { sampleToJsonl, type BenchSample, type BenchTask } from '../../lib/emobench/sample.js';
import { loadModel, type Model } from '../../lib/model.js';
import { buildModelPrompt, perceive } from '../../lib/perception.js';
import { PerceptionCache } from '../../lib/emobench/perception_cache.js';
import { requireTool } from './helpers/tools.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const haveTiny = existsSync(join(tiny, 'model.safetensors'));
if (!haveTiny) console.warn(`eval/analyze parity tests skipped: ${tiny} not found (set EMOLLM_SHARED_DIR)`);
const require = createRequire(import.meta.url);
const demo = join(dirname(require.resolve('@vladmandic/face-api/package.json')), 'demo');
// CI=true: a missing ffmpeg fails this file (no video test is skipped in CI)
const haveFfmpeg = requireTool('ffmpeg', 'ffmpeg', 'eval/analyze video tests');

const tmp = mkdtempSync(join(tmpdir(), 'emobench-perception-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ANALYZE_TASK: Record<BenchTask, AnalyzeTask> = { 'emo-c': 'emotion', 'emo-o': 'emotion-open', intent: 'intent', hate: 'hate', humor: 'humor', sarcasm: 'sarcasm' };
const EKMAN = ['neutral', 'joy', 'sadness', 'anger', 'fear', 'disgust', 'surprise'];

/** A short video from demo photos: each photo shown for 1 s, scaled and padded to 640x480, 10 fps. */
function makeVideo(name: string, photos: string[]): string {
  const out = join(tmp, name);
  const inputs = photos.flatMap((p) => ['-loop', '1', '-t', '1', '-i', join(demo, p)]);
  const chains = photos.map((_, i) => `[${i}]scale=640:480:force_original_aspect_ratio=decrease,pad=640:480:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=10[v${i}]`);
  const filter = `${chains.join(';')};${photos.map((_, i) => `[v${i}]`).join('')}concat=n=${photos.length}:v=1:a=0,format=yuv420p[out]`;
  const r = spawnSync('ffmpeg', ['-v', 'error', '-y', ...inputs, '-filter_complex', filter, '-map', '[out]', out]);
  if (r.status !== 0) throw new Error(`ffmpeg failed: ${r.stderr.toString()}`);
  return out;
}

/** analyze() on a sample, with the options the sample gives eval. */
async function analyzeSample(model: Model, s: BenchSample, mediaRoot: string) {
  const closed = s.task === 'emo-c' || s.task === 'intent';
  return analyze(join(mediaRoot, s.media!.path), {
    model,
    task: ANALYZE_TASK[s.task],
    ...(s.text !== undefined ? { text: s.text } : {}),
    ...(closed && s.options ? { labels: s.options } : {}),
    ...(s.media!.type === 'video' ? { video: true } : {}),
  });
}

describe.skipIf(!haveTiny)('eval and analyze give the same answer (tiny LLaVA)', () => {
  let model: Model;
  beforeAll(async () => {
    // the full EmoPrompt is longer than the tiny model's 256 training positions
    model = await loadModel(tiny, { threads: 1, contextSize: 1024 });
  });
  afterAll(async () => model?.close());

  const images: BenchSample[] = [
    { id: 'p/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: 'sample1.jpg' }, options: EKMAN, answer: 'joy' },
    { id: 'p/2', task: 'sarcasm', source: 'demo', split: 'test', media: { type: 'image', path: 'sample1.jpg' }, text: 'Best party ever.', answer: 'no' },
    { id: 'p/3', task: 'humor', source: 'demo', split: 'test', media: { type: 'image', path: 'sample2.jpg' }, text: 'me on monday', options: ['yes', 'no'], answer: 'yes' },
    { id: 'p/4', task: 'hate', source: 'demo', split: 'test', media: { type: 'image', path: 'sample2.jpg' }, text: 'nice people', answer: 'no' },
  ];

  it('images: same label and distribution through analyze and eval; faces found once per file; run.json records face', async () => {
    const bench = join(tmp, 'images.jsonl');
    writeFileSync(bench, images.map(sampleToJsonl).join('\n') + '\n');
    const backend = nativeBackend(model);
    const out = join(tmp, 'run-face');
    const r = await runEval({ bench, model: backend, mediaRoot: demo, out, progress: false, summary: false, resamples: 50 });
    expect(r.counts).toMatchObject({ selected: 4, ok: 4, errors: 0 });
    expect(r.config.face).toBe(true);
    expect(JSON.parse(readFileSync(join(out, 'run.json'), 'utf8'))).toMatchObject({ face: true, textOnly: false });
    // two files, four samples: each file perceived once
    expect(backend.perception.stats).toMatchObject({ files: 2, hits: 2 });
    const recs = readPredictions(join(out, 'predictions.jsonl'));
    for (const s of images) {
      const a = await analyzeSample(model, s, demo);
      expect(a.faces.maxFaces).toBeGreaterThan(0);
      if (a.answer.outcome !== 'label') throw new Error(`analyze gave ${a.answer.outcome}`);
      const rec = recs.get(s.id)!;
      expect(rec.label).toBe(a.answer.label);
      for (const [k, v] of Object.entries(a.answer.distribution)) expect(rec.probabilities![k]).toBeCloseTo(v, 6);
    }
  }, 300_000);

  it('the face perspective reaches the prompt (cues + per-image boxes); --no-face removes both and run.json says so', async () => {
    const s = images[0]!;
    const withFace = await perceive(join(demo, s.media!.path));
    const without = await perceive(join(demo, s.media!.path), { faces: false });
    const pf = await buildModelPrompt(model, withFace, samplePromptOptions(s));
    const pn = await buildModelPrompt(model, without, samplePromptOptions(s));
    const text = (p: typeof pf): string => JSON.stringify(p.messages.map((m) => (typeof m.content === 'string' ? m.content : m.content.filter((x) => x.type === 'text'))));
    const boxes = (p: typeof pf): unknown[] =>
      p.messages.flatMap((m) => (typeof m.content === 'string' ? [] : m.content.filter((x) => x.type === 'image').map((x) => (x as { faces?: unknown[] }).faces)));
    expect(text(pf)).toMatch(/face with a \w+ expression/);
    expect(text(pn)).not.toMatch(/face with a/);
    expect(boxes(pf)).toEqual([expect.arrayContaining([expect.objectContaining({ width: expect.any(Number) })])]);
    expect((boxes(pf)[0] as unknown[]).length).toBe(withFace.frames[0]!.faces.length);
    expect(boxes(pn)).toEqual([undefined]);

    const bench = join(tmp, 'images.jsonl');
    const out = join(tmp, 'run-noface');
    const backend = nativeBackend(model, { face: false });
    const r = await runEval({ bench, model: backend, mediaRoot: demo, out, progress: false, summary: false, resamples: 50 });
    expect(r.counts.ok).toBe(4);
    expect(r.config.face).toBe(false);
    expect(JSON.parse(readFileSync(join(out, 'run.json'), 'utf8'))).toMatchObject({ face: false });
    // the faces change what the model is asked, so they change its answer distribution
    const withFaces = readPredictions(join(tmp, 'run-face', 'predictions.jsonl'));
    const noFaces = readPredictions(join(out, 'predictions.jsonl'));
    const moved = images.map((x) => Math.max(...Object.keys(withFaces.get(x.id)!.probabilities!).map((k) => Math.abs(withFaces.get(x.id)!.probabilities![k]! - noFaces.get(x.id)!.probabilities![k]!))));
    expect(Math.max(...moved)).toBeGreaterThan(1e-4);
    // a no-face run cannot resume a face run's folder
    await expect(runEval({ bench, model: nativeBackend(model), mediaRoot: demo, out, progress: false, summary: false })).rejects.toThrow(/another run/);
  }, 300_000);

  it.skipIf(!haveFfmpeg)('video: frame sampling, per-frame faces, and the same answer through analyze and eval', async () => {
    const clip = makeVideo('three.mp4', ['sample1.jpg', 'sample2.jpg', 'sample3.jpg']);
    // offline: 8 frames over 3 s, times increasing, faces in the frames of each photo
    const off = await analyze(clip);
    expect(off.media).toBe('video');
    expect(off.frames).toHaveLength(8);
    const times = off.frames.map((f) => f.time!);
    expect(times.every((t, i) => t > 0 && t < 3.05 && (i === 0 || t > times[i - 1]!))).toBe(true);
    for (const second of [0, 1, 2]) expect(off.frames.filter((f) => Math.floor(f.time!) === second).some((f) => f.faces.length > 0)).toBe(true);
    expect(off.faces.framesWithFaces).toBeGreaterThan(4);

    const samples: BenchSample[] = [
      { id: 'v/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'video', path: 'three.mp4' }, options: EKMAN, answer: 'joy' },
      { id: 'v/2', task: 'sarcasm', source: 'demo', split: 'test', media: { type: 'video', path: 'three.mp4' }, text: 'What a great day.', answer: 'yes' },
    ];
    const bench = join(tmp, 'video.jsonl');
    writeFileSync(bench, samples.map(sampleToJsonl).join('\n') + '\n');
    const backend = nativeBackend(model);
    const out = join(tmp, 'run-video');
    const r = await runEval({ bench, model: backend, mediaRoot: tmp, out, progress: false, summary: false, resamples: 50 });
    expect(r.counts).toMatchObject({ ok: 2, errors: 0, skipped: 0 });
    expect(backend.perception.stats).toMatchObject({ files: 1, hits: 1 });
    // the sample browser shows a thumbnail of the video (its middle frame)
    expect(readFileSync(join(out, 'report.html'), 'utf8').match(/<img src="data:image\/jpeg;base64,/g)).toHaveLength(2);
    const recs = readPredictions(join(out, 'predictions.jsonl'));
    for (const s of samples) {
      const a = await analyzeSample(model, s, tmp);
      if (a.answer.outcome !== 'label') throw new Error(`analyze gave ${a.answer.outcome}`);
      expect(recs.get(s.id)!.label).toBe(a.answer.label);
      for (const [k, v] of Object.entries(a.answer.distribution)) expect(recs.get(s.id)!.probabilities![k]).toBeCloseTo(v, 6);
    }
  }, 300_000);
});

describe.skipIf(!haveFfmpeg)('PerceptionCache', () => {
  it('perceives each file once; evicted video frames are sampled again with the faces kept', async () => {
    const a = makeVideo('cache-a.mp4', ['sample1.jpg', 'sample3.jpg']);
    const b = makeVideo('cache-b.mp4', ['sample2.jpg']);
    const cache = new PerceptionCache({ frames: 2, maxFrameBytes: 1 }); // every new file evicts the others' frames
    const a1 = await cache.get(a, true);
    expect(a1.images).toHaveLength(2);
    expect(a1.frames.some((f) => f.faces.length > 0)).toBe(true);
    await cache.get(b, true);
    const a2 = await cache.get(a, true);
    expect(cache.stats).toMatchObject({ files: 2, resampled: 1 });
    expect(a2.frames).toBe(a1.frames); // faces not recomputed
    expect(a2.images.map((f) => f.time)).toEqual(a1.images.map((f) => f.time));
    expect(a2.images.map((f) => Buffer.from(f.image as Uint8Array).equals(Buffer.from(a1.images[a2.images.indexOf(f)]!.image as Uint8Array)))).toEqual([true, true]);
    // the object handed out first is never mutated by eviction
    expect((a1.images[0]!.image as Uint8Array).byteLength).toBeGreaterThan(0);
    const big = new PerceptionCache({ frames: 2 });
    await big.get(a, true);
    await big.get(a, true);
    expect(big.stats).toMatchObject({ files: 1, hits: 1, resampled: 0 });
  }, 120_000);
});

describe.skipIf(!haveFfmpeg)('eval on video without a model', () => {
  it('the face backend samples the video and answers emo-c from per-frame faces', async () => {
    const clip = makeVideo('two.mp4', ['sample2.jpg', 'sample4.jpg']);
    const samples: BenchSample[] = [
      { id: 'f/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'video', path: 'two.mp4' }, options: EKMAN, answer: 'joy' },
    ];
    const bench = join(tmp, 'face-video.jsonl');
    writeFileSync(bench, samples.map(sampleToJsonl).join('\n') + '\n');
    const r = await runEval({ bench, model: 'face', mediaRoot: dirname(clip), out: join(tmp, 'run-face-video'), progress: false, summary: false, resamples: 20 });
    expect(r.counts).toMatchObject({ ok: 1, errors: 0 });
    const rec = [...readPredictions(join(tmp, 'run-face-video', 'predictions.jsonl')).values()][0]!;
    expect(rec.unparsed).toBe(false);
    expect(EKMAN).toContain(rec.label);
    const a = await analyze(clip, { task: 'emotion', frames: 8 });
    expect(a.faces.framesWithFaces).toBeGreaterThan(0);
  }, 120_000);
});
