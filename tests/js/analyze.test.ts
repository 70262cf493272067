// `analyze`: the face perspective offline on face-api's real demo photos, video through ffmpeg,
// and the model path (EmoPrompt + decoding) on the tiny LLaVA.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { requireTool } from './helpers/tools.js';
import { ImageProcessor, analyze, boxToModelInput, formatAnalysis, loadModel, summarizeFaces, type Model } from '../../lib/index.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const require = createRequire(import.meta.url);
const demo = join(dirname(require.resolve('@vladmandic/face-api/package.json')), 'demo');
const haveDemo = existsSync(join(demo, 'sample1.jpg'));
// in CI (CI=true) a missing ffmpeg fails this file instead of skipping the video test
const haveFfmpeg = requireTool('ffmpeg', 'ffmpeg', 'analyze video test');
const tiny = join(shared, 'models', 'llava-tiny-hf');

const tmp = mkdtempSync(join(tmpdir(), 'emollm-analyze-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!haveDemo)('analyze offline (face perspective)', () => {
  it('finds the three faces of sample1.jpg and answers the emotion task from them', async () => {
    const r = await analyze(join(demo, 'sample1.jpg'));
    expect(r.schema).toBe('emollm.analysis/1');
    expect(r.media).toBe('image');
    expect(r.frames).toHaveLength(1);
    expect(r.frames[0]!.faces).toHaveLength(3);
    expect(r.faces.maxFaces).toBe(3);
    const sum = Object.values(r.faces.expressions!).reduce((a, b) => a + b, 0);
    expect(sum).toBeCloseTo(1, 5);
    expect(r.answer.outcome).toBe('label');
    if (r.answer.outcome !== 'label') return;
    expect(r.answer.source).toBe('face');
    expect(r.answer.label).toBe(r.faces.emotion);
    expect(Object.keys(r.answer.distribution).sort()).toEqual(['anger', 'disgust', 'fear', 'joy', 'neutral', 'sadness', 'surprise']);
    // the right-hand woman laughs openly: at least one face reads happy with high confidence
    expect(Math.max(...r.frames[0]!.faces.map((f) => f.expressions.happy))).toBeGreaterThan(0.9);
    expect(formatAnalysis(r)).toMatch(/face 3: .*expression: /);
  });

  it('reports tasks it cannot answer without a model, and an open-set emotion from faces', async () => {
    const hate = await analyze(join(demo, 'sample2.jpg'), { task: 'hate' });
    expect(hate.answer).toMatchObject({ outcome: 'unavailable', reason: expect.stringMatching(/needs a model/) });
    const open = await analyze(join(demo, 'sample2.jpg'), { task: 'emotion-open' });
    expect(['emotion', 'unparsed']).toContain(open.answer.outcome);
  });

  it('summarizeFaces weights faces by score x area and counts each frame once', () => {
    const face = (happy: number, area: number, score = 1) => ({
      box: { x: 0, y: 0, width: area, height: 1 },
      score,
      expressions: { neutral: 1 - happy, happy, sad: 0, angry: 0, fearful: 0, disgusted: 0, surprised: 0 },
      dominant: happy > 0.5 ? ('happy' as const) : ('neutral' as const),
    });
    const s = summarizeFaces([
      { index: 0, faces: [face(1, 3), face(0, 1)] }, // frame mean happy 0.75
      { index: 1, faces: [] },
      { index: 2, faces: [face(0.25, 10)] }, // 0.25
    ]);
    expect(s.framesWithFaces).toBe(2);
    expect(s.expressions!.happy).toBeCloseTo(0.5, 10);
    expect(s.maxFaces).toBe(2);
    expect(summarizeFaces([{ index: 0, faces: [] }]).emotion).toBeNull();
  });

  it('boxToModelInput maps original-image boxes through resize and centre crop (and pad-to-square)', () => {
    const proc = new ImageProcessor({ size: { shortestEdge: 42 }, cropSize: { height: 42, width: 42 } });
    // 84 wide x 126 high -> resized 42 x 63 -> crop rows 10..52
    expect(boxToModelInput({ x: 0, y: 20, width: 84, height: 42 }, 84, 126, proc)).toEqual({ x: 0, y: 0, width: 42, height: 21 });
    const padded = new ImageProcessor({ size: { shortestEdge: 42 }, cropSize: { height: 42, width: 42 }, padToSquare: true });
    // padded to 126 x 126 (image pasted at x = 21), then scaled by 1/3
    expect(boxToModelInput({ x: 0, y: 0, width: 84, height: 126 }, 84, 126, padded)).toEqual({ x: 7, y: 0, width: 28, height: 42 });
  });

  it('missing files and unknown tasks are typed errors', async () => {
    await expect(analyze(join(tmp, 'nope.jpg'))).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
    await expect(analyze(join(demo, 'sample1.jpg'), { task: 'joy' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('maxPixels (analyze option and CLI --max-pixels) refuses a larger image before any face work', async () => {
    await expect(analyze(join(demo, 'sample1.jpg'), { maxPixels: 100 })).rejects.toMatchObject({ code: 'ERR_BAD_IMAGE' });
    const cli = join(repoRoot, 'dist', 'cli.js');
    if (!existsSync(cli)) throw new Error(`${cli} missing: build with tsc first`);
    const r = spawnSync(process.execPath, [cli, 'analyze', join(demo, 'sample1.jpg'), '--max-pixels', '100'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/exceeds the limit of 100 pixels.*\[ERR_BAD_IMAGE\]/s);
    const ok = spawnSync(process.execPath, [cli, 'analyze', join(demo, 'sample1.jpg'), '--max-pixels=100000000', '--json'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect((JSON.parse(ok.stdout) as { faces: { maxFaces: number } }).faces.maxFaces).toBeGreaterThan(0);
  });

  it('video input without ffmpeg on PATH says how to install it', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await expect(analyze(join(tmp, 'x.mp4'), { video: true }).catch((e: unknown) => e)).resolves.toMatchObject({
        code: expect.stringMatching(/ERR_FILE_NOT_FOUND|ERR_UNSUPPORTED/),
      });
      await expect(analyze(join(demo, 'sample1.jpg'), { video: true })).rejects.toMatchObject({
        code: 'ERR_UNSUPPORTED',
        message: expect.stringMatching(/ffmpeg/),
      });
    } finally {
      process.env.PATH = path;
    }
  });

  it.skipIf(!haveFfmpeg)('samples a video with ffmpeg and aggregates over frames', async () => {
    const video = join(tmp, 'clip.mp4');
    const r0 = spawnSync('ffmpeg', ['-v', 'error', '-y', '-loop', '1', '-i', join(demo, 'sample2.jpg'), '-t', '2', '-r', '10', '-vf', 'scale=640:-2', '-pix_fmt', 'yuv420p', video]);
    expect(r0.status).toBe(0);
    const r = await analyze(video, { frames: 4 });
    expect(r.media).toBe('video');
    expect(r.frames).toHaveLength(4);
    expect(r.frames.map((f) => f.time! > 0 && f.time! < 2)).toEqual([true, true, true, true]);
    // a still image as video: every frame sees the same faces
    const still = await analyze(join(demo, 'sample2.jpg'));
    expect(r.faces.framesWithFaces).toBe(still.faces.maxFaces > 0 ? 4 : 0);
    expect(r.faces.dominant).toBe(still.faces.dominant);
  });
});

describe.skipIf(!haveDemo || !existsSync(join(tiny, 'model.safetensors')))('analyze with a model', () => {
  let model: Model;
  beforeAll(async () => {
    // The full EmoPrompt is longer than the tiny model's 256 training positions.
    model = await loadModel(tiny, { threads: 1, contextSize: 1024 });
  });
  afterAll(async () => model?.close());

  it('answers a yes/no task through EmoPrompt and option scoring, with face cues', async () => {
    const r = await analyze(join(demo, 'sample1.jpg'), { model, task: 'sarcasm', text: 'Best party ever.' });
    expect(r.model?.templateId).toMatch(/^sarcasm\.full@/);
    expect(r.answer.outcome).toBe('label');
    if (r.answer.outcome !== 'label') return;
    expect(r.answer.source).toBe('model');
    expect(['yes', 'no']).toContain(r.answer.label);
    expect(r.answer.distribution.yes! + r.answer.distribution.no!).toBeCloseTo(1, 6);
  });

  it('decodes the open-set task from generated text (the tiny model is random: unparsed is a valid outcome)', async () => {
    const r = await analyze(join(demo, 'sample1.jpg'), { model, task: 'emotion-open' });
    expect(['emotion', 'unparsed']).toContain(r.answer.outcome);
    expect('text' in r.answer && typeof r.answer.text).toBe('string');
  });
});
