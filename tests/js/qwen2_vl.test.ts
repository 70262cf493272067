// Qwen2-VL end to end through the public API against transformers' own outputs for the tiny model
// in ../shared/models/qwen2-vl-tiny-hf (see its SOURCE.md): the image (grid 1x4x8) and the native
// 4-frame video (grid 2x4x6).
// - reference patches fed in: logits at every position within 1e-4, 12 greedy tokens equal;
// - full path (files -> Qwen2VLImageProcessor port -> the folder's chat template -> tokenizer):
//   the rendered text and the expanded input_ids equal the reference, and the logits stay within
//   1e-4 (the preprocessing is exact on these inputs); scoreOptions matches the logits.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  expectChatAndScoresEqualBase,
  f32,
  lastRowLogSoftmax,
  loadInitMvpPair,
  maxAbsDiff,
  QWEN_PATCHES,
  qwenExpected,
  qwenGrid,
  qwenPhotoMessages,
  qwenVideoMessages,
  shared,
  sharedModel,
  type InitMvpPair,
  type QwenExpected,
} from './helpers/vlm_fixtures.js';
import { loadModel, type ChatMessage, type Model } from '../../lib/index.js';

const { dir, have } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'qwen2-vl-tiny-hf tests');
const FRAMES = ['frame0.png', 'frame1.png', 'frame2.png', 'frame3.png'];

describe.skipIf(!have)('qwen2-vl-tiny-hf (transformers reference)', () => {
  const expected: Partial<QwenExpected> = have ? qwenExpected(dir) : {};
  const photo = expected.photo!;
  const video = expected.video!;
  const photoMessages: ChatMessage[] = qwenPhotoMessages(dir);
  const videoMessages: ChatMessage[] = have ? qwenVideoMessages(dir, video.frames!) : [];
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(dir, { threads: 1 });
  });
  afterAll(async () => model?.close());

  it('is detected as Qwen2-VL from config.json', () => {
    expect(model.info.vision).toMatchObject({ family: 'qwen2_vl', patchSize: 14, mergeSize: 2, temporalPatchSize: 2, imageTokenId: 6, videoTokenId: 7 });
  });

  for (const name of ['photo', 'video'] as const) {
    it(`${name}: reference patches -> logits within 1e-4 and the 12 greedy tokens`, async () => {
      const c = (name === 'photo' ? photo : video)!;
      const grid = qwenGrid(c);
      const features = await model.encodePatches(f32(join(dir, 'reference', QWEN_PATCHES[name])), [grid]);
      expect(Array.from(features.grids!)).toEqual(grid);
      const logits = await model.logits({ tokens: c.input_ids, images: features }, { all: true });
      expect(logits.length).toBe(c.logits_shape[0] * c.logits_shape[1]);
      expect(maxAbsDiff(logits, f32(join(dir, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(1e-4);
      const r = await model.generate({ tokens: c.input_ids, images: features }, { maxTokens: 12, temperature: 0 }).result;
      expect(r.tokens).toEqual(c.greedy_new_tokens);
    });
  }

  it('photo: chat template, tokenizer and preprocessing from the files give the reference prompt and logits', async () => {
    expect(model.applyChatTemplate(photoMessages.map((m) => ({ ...m, content: (m.content as { type: string }[]).map((p) => (p.type === 'image' ? { type: 'image' } : p)) })) as ChatMessage[])).toBe(
      expected.chat_text_image,
    );
    const ids = model.promptTokens(photoMessages.map((m) => ({ ...m, content: (m.content as { type: string }[]).map((p) => (p.type === 'image' ? { type: 'image' } : p)) })) as ChatMessage[]);
    const expanded = ids.flatMap((t) => (t === 6 ? Array<number>(8).fill(6) : [t]));
    expect(expanded).toEqual(photo.input_ids);
    expect(maxAbsDiff(await model.logits(photoMessages, { all: true }), f32(join(dir, 'reference', 'photo_logits.f32')))).toBeLessThanOrEqual(1e-4);
    const r = await model.chat({ messages: photoMessages, maxTokens: 12, temperature: 0 }).result;
    expect(r.tokens).toEqual(photo.greedy_new_tokens);
  });

  it('video: native video chat (4 frames -> 2 temporal patches) gives the reference logits and greedy tokens', async () => {
    expect(maxAbsDiff(await model.logits(videoMessages, { all: true }), f32(join(dir, 'reference', 'video_logits.f32')))).toBeLessThanOrEqual(1e-4);
    const r = await model.chat({ messages: videoMessages, maxTokens: 12, temperature: 0 }).result;
    expect(r.tokens).toEqual(video.greedy_new_tokens);
  });

  it('scoreOptions: first-token log-probabilities equal those of the reference logits', async () => {
    const r = await model.scoreOptions(videoMessages, ['happy', 'sad'], { normalize: 'sum' });
    const refLogprob = lastRowLogSoftmax(f32(join(dir, 'reference', 'video_logits.f32')), video.logits_shape);
    for (const o of r.options) expect(Math.abs(o.tokenLogprobs[0]! - refLogprob(o.tokens[0]!))).toBeLessThanOrEqual(1e-3);
    expect(r.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
  });

  it('wrong inputs are typed errors', async () => {
    await expect(model.encodePatches(new Float32Array(1176 * 3), [[1, 2, 2]])).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(model.encodePatches(new Float32Array(1176 * 6), [[1, 2, 3]])).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const features = await model.encodePatches(f32(join(dir, 'reference', 'photo_pixel_values.f32')), [[1, 4, 8]]);
    await expect(model.logits({ tokens: [...photo.input_ids, 6], images: features })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe.skipIf(!have)('qwen2-vl: EmoPrompt with native video', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(dir, { threads: 1 });
  });
  afterAll(async () => model?.close());

  it('renders one <|video_pad|> through the folder template and scores the labels', async () => {
    const { buildEmoPrompt } = await import('../../lib/index.js');
    const frames = FRAMES.map((f) => join(dir, f));
    const p = buildEmoPrompt({ task: 'emo-c', images: frames, media: 'video', nativeVideo: true, taxonomy: 'ekman7', guidance: 'none' });
    const parts = p.messages[0]!.content as { type: string }[];
    expect(parts.filter((x) => x.type === 'video')).toHaveLength(1);
    expect(parts.filter((x) => x.type === 'image')).toHaveLength(0);
    const text = model.applyChatTemplate(p.messages);
    expect(text.split('<|vision_start|><|video_pad|><|vision_end|>')).toHaveLength(2);
    const r = await model.scoreOptions(p.messages, p.labels);
    expect(r.options).toHaveLength(p.labels.length);
    expect(r.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
    // the same frames as separate images would be 4 visuals of 1 temporal patch each: a different prompt
    const asImages = buildEmoPrompt({ task: 'emo-c', images: frames, media: 'video', taxonomy: 'ekman7', guidance: 'none' });
    const r2 = await model.scoreOptions(asImages.messages, asImages.labels);
    expect(r2.options.map((o) => o.logprob)).not.toEqual(r.options.map((o) => o.logprob));
  });
});

describe.skipIf(!have)('EmoLLM on Qwen2-VL (init-mvp: the MVP around the patch merger)', () => {
  let pair: InitMvpPair | undefined;
  let base: Model;
  let emo: Model;
  let tmp: string;
  beforeAll(async () => {
    pair = await loadInitMvpPair(dir, 'emollm-qwen-');
    ({ base, emo, tmp } = pair);
  });
  afterAll(async () => pair?.close());

  it('describes the perspectives; image and video logits, chat and scores equal the base', async () => {
    expect(emo.info.vision?.family).toBe('qwen2_vl');
    expect(emo.info.emollm?.perspectives.map((p) => [p.name, p.type, p.gate, p.layers])).toEqual([
      ['global', 'mlp', 'open', [2]],
      ['low-level', 'multi-layer-mlp', 'closed', [2, 1]],
    ]);
    const photo = f32(join(dir, 'reference', 'photo_pixel_values.f32'));
    const fa = await base.encodePatches(photo, [[1, 4, 8]]);
    const fb = await emo.encodePatches(photo, [[1, 4, 8]]);
    expect(maxAbsDiff(fb, fa)).toBe(0);
    const messages: ChatMessage[] = qwenVideoMessages(dir, FRAMES);
    expect(maxAbsDiff(await emo.logits(messages, { all: true }), await base.logits(messages, { all: true }))).toBe(0);
    await expectChatAndScoresEqualBase(pair!, messages);
  });

  it('opening the low-level head changes the features (the MVP is really read)', async () => {
    const { readFileSync: rf, writeFileSync } = await import('node:fs');
    const cfgPath = join(tmp, 'emo', 'config.json');
    const cfg = JSON.parse(rf(cfgPath, 'utf8'));
    cfg.emollm.perspectives[1].gate = 'open';
    const { cpSync } = await import('node:fs');
    cpSync(join(tmp, 'emo'), join(tmp, 'open'), { recursive: true, dereference: true });
    writeFileSync(join(tmp, 'open', 'config.json'), JSON.stringify(cfg));
    const m = await loadModel(join(tmp, 'open'), { threads: 1 });
    try {
      const photo = f32(join(dir, 'reference', 'photo_pixel_values.f32'));
      const fa = await base.encodePatches(photo, [[1, 4, 8]]);
      const fo = await m.encodePatches(photo, [[1, 4, 8]]);
      expect(fo.length).toBe(fa.length);
      expect(maxAbsDiff(fo, fa)).toBeGreaterThan(1e-3);
    } finally {
      await m.close();
    }
  });
});

describe.skipIf(!have)('readConfig: the model kind from config.json', () => {
  it('qwen2_vl: decoder with q/k/v biases and M-RoPE sections, vision tower sizes, special ids', async () => {
    const { readConfig } = await import('../../lib/index.js');
    const c = await readConfig(dir);
    expect(c.kind).toBe('qwen2_vl');
    if (c.kind !== 'qwen2_vl') return;
    expect(c.config.textConfig).toMatchObject({ hiddenSize: 64, qkvBias: true, mropeSection: [2, 3, 3], ropeTheta: 1e6 });
    expect(c.config.visionConfig).toMatchObject({ depth: 2, embedDim: 32, hiddenSize: 64, spatialMergeSize: 2, temporalPatchSize: 2 });
    expect(c.config).toMatchObject({ imageTokenId: 6, videoTokenId: 7, visionStartTokenId: 3, visionEndTokenId: 4 });
  });
  it('llava_next: LLaVA fields plus the pinpoints', async () => {
    const { readConfig } = await import('../../lib/index.js');
    const c = await readConfig(join(shared, 'models', 'llava-next-tiny-hf'));
    expect(c.modelType).toBe('llava_next');
    expect(c.kind).toBe('llava');
    if (c.kind !== 'llava') return;
    expect(c.config.imageGridPinpoints).toEqual([
      [28, 56],
      [56, 28],
      [56, 56],
    ]);
  });
  it('a wrong mrope_section is a typed config error', async () => {
    const { readConfig } = await import('../../lib/index.js');
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const t = mkdtempSync(join(tmpdir(), 'qcfg-'));
    try {
      const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      cfg.text_config.rope_parameters.mrope_section = [2, 3, 4];
      writeFileSync(join(t, 'config.json'), JSON.stringify(cfg));
      await expect(readConfig(t)).rejects.toMatchObject({ code: 'ERR_BAD_CONFIG' });
    } finally {
      rmSync(t, { recursive: true, force: true });
    }
  });
});

describe('EmoBench: video samples as one native video', () => {
  it('samplePrompt puts the frames in one video part only when asked (Qwen2-VL)', async () => {
    const { samplePrompt } = await import('../../lib/emobench/backends.js');
    const s = {
      id: 'MELD/test/1',
      task: 'emo-c' as const,
      source: 'MELD',
      media: { type: 'video' as const, path: 'clip.mp4' },
      answer: 'joy',
      options: ['joy', 'sadness'],
      split: 'test',
    };
    const frames = [new Uint8Array([1]), new Uint8Array([2]), new Uint8Array([3]), new Uint8Array([4])];
    const native = samplePrompt(s, frames, 'full', true).messages[0]!.content as { type: string; frames?: unknown[] }[];
    expect(native.filter((p) => p.type === 'video').map((p) => p.frames!.length)).toEqual([4]);
    expect(native.some((p) => p.type === 'image')).toBe(false);
    const asImages = samplePrompt(s, frames, 'full').messages[0]!.content as { type: string }[];
    expect(asImages.filter((p) => p.type === 'image')).toHaveLength(4);
    expect(asImages.some((p) => p.type === 'video')).toBe(false);
  });
});

describe.skipIf(!have || spawnSync('ffmpeg', ['-version']).status !== 0)('analyze: a video goes to Qwen2-VL as one native video', () => {
  let model: Model;
  let tmp: string;
  beforeAll(async () => {
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    tmp = mkdtempSync(join(tmpdir(), 'emollm-qwen-analyze-'));
    // the full EmoPrompt through the synthetic byte-level tokenizer is longer than 1024 positions
    model = await loadModel(dir, { threads: 1, contextSize: 4096 });
  });
  afterAll(async () => {
    await model?.close();
    const { rmSync } = await import('node:fs');
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('samples frames with ffmpeg, sends them as one video part and scores the labels', async () => {
    const { analyze } = await import('../../lib/index.js');
    const video = join(tmp, 'clip.mp4');
    const r0 = spawnSync('ffmpeg', ['-v', 'error', '-y', '-loop', '1', '-i', join(dir, 'photo.jpg'), '-t', '2', '-r', '10', '-vf', 'scale=192:-2', '-pix_fmt', 'yuv420p', video]);
    expect(r0.status).toBe(0);
    const asked: unknown[] = [];
    const original = model.scoreOptions.bind(model);
    model.scoreOptions = (prompt, options, settings) => {
      asked.push(prompt);
      return original(prompt, options, settings);
    };
    const r = await analyze(video, { model, frames: 4, modelFrames: 4 });
    expect(r.media).toBe('video');
    expect(r.answer.outcome).toBe('label');
    if (r.answer.outcome === 'label') expect(r.answer.source).toBe('model');
    const parts = (asked[0] as ChatMessage[])[0]!.content as { type: string; frames?: unknown[] }[];
    expect(parts.filter((p) => p.type === 'video').map((p) => p.frames!.length)).toEqual([4]);
    expect(parts.some((p) => p.type === 'image')).toBe(false);
  });
});
