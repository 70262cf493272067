// LLaVA-NeXT end to end through the public API against transformers' own outputs for the tiny
// model in ../shared/models/llava-next-tiny-hf (see its SOURCE.md): every case of
// reference/expected.json (`photo`: 2x2 tiles; `wide`: 1x2 tiles all cut by the unpadding).
// - reference pixel values fed in: logits at every position within 1e-4, 12 greedy tokens equal;
// - full path (file -> anyres preprocessing -> chat template -> tokenizer): the expanded input_ids
//   equal the processor's, and the photo (pixel-exact preprocessing) keeps the 1e-4 logits and the
//   greedy tokens; scoreOptions equals log-probabilities from the logits.
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  expectChatAndScoresEqualBase,
  f32,
  imageQuestion,
  lastRowLogSoftmax,
  loadInitMvpPair,
  maxAbsDiff,
  nextExpected,
  sharedModel,
  type InitMvpPair,
  type NextCase,
} from './helpers/vlm_fixtures.js';
import { loadModel, type ChatMessage, type Model } from '../../lib/index.js';

const { dir, have } = sharedModel('llava-next-tiny-hf', 'reference/expected.json', 'llava-next-tiny-hf tests');

const question = (image: string): ChatMessage[] => imageQuestion(image);

describe.skipIf(!have)('llava-next-tiny-hf (transformers reference)', () => {
  const expected: Partial<Record<string, NextCase>> = have ? nextExpected(dir) : {};
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(dir, { threads: 1 });
  });
  afterAll(async () => model?.close());

  it('is detected as LLaVA-NeXT from config.json', () => {
    expect(model.info.vision).toMatchObject({ family: 'llava_next', imageSize: 28, patchSize: 14, imageTokenId: 32000 });
    expect(model.info.vision!.gridPinpoints).toEqual([
      [28, 56],
      [56, 28],
      [56, 56],
    ]);
  });

  for (const name of ['photo', 'wide']) {
    it(`${name}: reference pixel values -> logits within 1e-4 and the 12 greedy tokens`, async () => {
      const c = expected[name]!;
      const features = await model.encodeAnyresPixels(f32(join(dir, 'reference', `${name}_pixel_values.f32`)), c.image_sizes);
      expect(Array.from(features.tokenCounts!)).toEqual([c.input_ids.filter((t) => t === 32000).length]);
      const logits = await model.logits({ tokens: c.input_ids, images: features }, { all: true });
      expect(logits.length).toBe(c.logits_shape[0] * c.logits_shape[1]);
      expect(maxAbsDiff(logits, f32(join(dir, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(1e-4);
      const r = await model.generate({ tokens: c.input_ids, images: features }, { maxTokens: 12, temperature: 0 }).result;
      expect(r.tokens).toEqual(c.greedy_new_tokens);
    });

    it(`${name}: the full path expands <image> to the processor's count`, async () => {
      const c = expected[name]!;
      const messages = question(join(dir, `${name}.jpg`));
      const features = await model.encodeImages([join(dir, `${name}.jpg`)]);
      const count = features.tokenCounts![0]!;
      const ids = model.promptTokens(messages);
      const expanded = ids.flatMap((t) => (t === 32000 ? Array<number>(count).fill(32000) : [t]));
      expect(expanded).toEqual(c.input_ids);
    });
  }

  it('photo: chat from the file gives the reference logits (1e-4) and greedy tokens', async () => {
    const c = expected.photo!;
    const messages = question(join(dir, 'photo.jpg'));
    expect(maxAbsDiff(await model.logits(messages, { all: true }), f32(join(dir, 'reference', 'photo_logits.f32')))).toBeLessThanOrEqual(1e-4);
    const r = await model.chat({ messages, maxTokens: 12, temperature: 0 }).result;
    expect(r.tokens).toEqual(c.greedy_new_tokens);
  });

  it('scoreOptions equals log-probabilities from the reference logits', async () => {
    const c = expected.photo!;
    const messages = question(join(dir, 'photo.jpg'));
    const options = ['happy', 'sad'];
    const r = await model.scoreOptions(messages, options, { normalize: 'sum' });
    const refLogprob = lastRowLogSoftmax(f32(join(dir, 'reference', 'photo_logits.f32')), c.logits_shape);
    for (const o of r.options) expect(Math.abs(o.tokenLogprobs[0]! - refLogprob(o.tokens[0]!))).toBeLessThanOrEqual(1e-3);
    expect(r.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
  });

  it('wrong inputs are typed errors', async () => {
    const c = expected.photo!;
    await expect(model.encodeAnyresPixels(new Float32Array(3 * 28 * 28), c.image_sizes)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const features = await model.encodeAnyresPixels(f32(join(dir, 'reference', 'photo_pixel_values.f32')), c.image_sizes);
    await expect(model.logits({ tokens: [...c.input_ids, 32000], images: features })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const bare = features.slice(); // a copy without tokenCounts
    await expect(model.logits({ tokens: c.input_ids, images: bare })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe.skipIf(!have)('EmoLLM on LLaVA-NeXT (init-mvp)', () => {
  let pair: InitMvpPair | undefined;
  let base: Model;
  let emo: Model;
  beforeAll(async () => {
    pair = await loadInitMvpPair(dir, 'emollm-next-');
    ({ base, emo } = pair);
  });
  afterAll(async () => pair?.close());

  it('the MVP reads every tile and packs like the base: logits, chat and scores equal the base', async () => {
    expect(emo.info.emollm?.perspectives.map((p) => p.gate)).toEqual(['open', 'closed', 'closed', 'closed']);
    expect(emo.info.vision?.family).toBe('llava_next');
    for (const name of ['photo', 'wide']) {
      const messages = question(join(dir, `${name}.jpg`));
      const la = await base.logits(messages, { all: true });
      const lb = await emo.logits(messages, { all: true });
      expect(maxAbsDiff(lb, la)).toBe(0);
      // and against transformers with the reference pixels
      const c = nextExpected(dir)[name as 'photo' | 'wide'];
      const features = await emo.encodeAnyresPixels(f32(join(dir, 'reference', `${name}_pixel_values.f32`)), c.image_sizes);
      const ref = await emo.logits({ tokens: c.input_ids, images: features }, { all: true });
      expect(maxAbsDiff(ref, f32(join(dir, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(1e-4);
    }
    const messages = question(join(dir, 'photo.jpg'));
    await expectChatAndScoresEqualBase(pair!, messages);
  });
});
