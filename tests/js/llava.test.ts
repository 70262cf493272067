// LLaVA end to end through the public API: Hugging Face transformers' own outputs for the tiny
// model in ../shared/models/llava-tiny-hf, and the PyTorch fixtures in tests/fixtures/llava for
// what that model does not exercise (feature-layer lists, "full" strategy, two images, GQA 4).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { f32, imageQuestion, maxAbsDiff, repoRoot, shared, sharedModel } from './helpers/vlm_fixtures.js';
import { EmollmError, loadModel, type ChatMessage, type Model } from '../../lib/index.js';

const { dir: tiny, have: haveTiny } = sharedModel('llava-tiny-hf', 'model.safetensors', 'llava-tiny-hf tests');
const fixtures = join(repoRoot, 'tests', 'fixtures', 'llava');

const question = (image: unknown): ChatMessage[] => imageQuestion(image);

describe.skipIf(!haveTiny)('llava-tiny-hf (transformers reference)', () => {
  const expected = haveTiny
    ? (JSON.parse(readFileSync(join(tiny, 'reference', 'expected.json'), 'utf8')) as {
        input_ids_unexpanded: number[];
        input_ids_expanded: number[];
        greedy_new_tokens: number[];
        logits_shape: [number, number];
      })
    : undefined;
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(tiny, { threads: 1 });
  });
  afterAll(async () => model?.close());

  it('describes its vision side', () => {
    expect(model.info.vision).toMatchObject({ imageSize: 42, patchSize: 14, nImageTokens: 9, imageTokenId: 32000 });
    expect(model.imageProcessor).toBeDefined();
  });

  it('renders and tokenizes the chat prompt as transformers does', () => {
    expect(model.promptTokens(question('photo.jpg'))).toEqual(expected!.input_ids_unexpanded);
  });

  it('logits at every position match transformers within 1e-4 (reference pixel values fed in)', async () => {
    const features = await model.encodePixels(f32(join(tiny, 'reference', 'pixel_values.f32')), 1);
    const ref = f32(join(tiny, 'reference', 'logits.f32'));
    for (const tokens of [expected!.input_ids_unexpanded, expected!.input_ids_expanded]) {
      const logits = await model.logits({ tokens, images: features }, { all: true });
      expect(logits.length).toBe(expected!.logits_shape[0] * expected!.logits_shape[1]);
      expect(maxAbsDiff(logits, ref)).toBeLessThanOrEqual(1e-4);
    }
  });

  it('the full path (photo.jpg through sharp + PIL-exact resize) gives the same logits and the 16 greedy tokens', async () => {
    const ref = f32(join(tiny, 'reference', 'logits.f32'));
    const messages = question(join(tiny, 'photo.jpg'));
    // preprocessing is exact on this photo (see image.test.ts), so the tolerance stays 1e-4
    expect(maxAbsDiff(await model.logits(messages, { all: true }), ref)).toBeLessThanOrEqual(1e-4);
    const r = await model.chat({ messages, maxTokens: 16, temperature: 0 }).result;
    expect(r.tokens).toEqual(expected!.greedy_new_tokens);
  });

  it('scoreOptions equals log-probabilities computed from the logits, and normalises them', async () => {
    const messages = question(join(tiny, 'photo.jpg'));
    const options = ['happy', 'sad', 'very angry'];
    const r = await model.scoreOptions(messages, options);
    expect(r.options.map((o) => o.option)).toEqual(options);
    const prefix = model.promptTokens(messages);
    const features = await model.encodeImages([join(tiny, 'photo.jpg')]);
    for (const o of r.options) {
      // independent path: all-position logits of prompt + option, log-softmax in float64
      const logits = await model.logits({ tokens: [...prefix, ...o.tokens], images: features }, { all: true });
      const n = model.info.nVocab;
      const expandedPrefix = prefix.length - 1 + model.info.vision!.nImageTokens!;
      let sum = 0;
      o.tokens.forEach((tok, j) => {
        const row = logits.subarray((expandedPrefix - 1 + j) * n, (expandedPrefix + j) * n);
        let max = -Infinity;
        for (const v of row) max = Math.max(max, v);
        let z = 0;
        for (const v of row) z += Math.exp(v - max);
        sum += row[tok]! - max - Math.log(z);
      });
      expect(Math.abs(o.logprob - sum)).toBeLessThanOrEqual(1e-3);
      expect(o.meanLogprob).toBeCloseTo(o.logprob / o.tokens.length, 10);
    }
    expect(r.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
    const best = Math.max(...r.options.map((o) => o.meanLogprob));
    expect(r.options[r.bestIndex]!.meanLogprob).toBe(best);
    expect(r.margin).toBeGreaterThanOrEqual(0);
    const joint = await model.scoreOptions(messages, options, { normalize: 'sum' });
    expect(joint.options.map((o) => o.logprob)).toEqual(r.options.map((o) => o.logprob));
  });

  it('a count mismatch between image tokens and images is a typed error', async () => {
    const features = await model.encodePixels(f32(join(tiny, 'reference', 'pixel_values.f32')), 1);
    const tokens = [...expected!.input_ids_unexpanded, 32000]; // two image tokens, one image
    await expect(model.logits({ tokens, images: features })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('a text-only model refuses images with ERR_UNSUPPORTED', async () => {
    const gguf = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
    const m = await loadModel(gguf, { contextSize: 64 });
    try {
      await expect(m.logits(question(join(tiny, 'photo.jpg')))).rejects.toBeInstanceOf(EmollmError);
    } finally {
      await m.close();
    }
  });
});

interface FixtureIds {
  unexpanded?: number[];
  expanded?: number[];
  input_ids_unexpanded?: number[];
  input_ids_expanded?: number[];
}

const fixtureNames = existsSync(fixtures)
  ? ['layers-list', 'full-strategy', 'two-images', 'gqa4'].filter((n) => existsSync(join(fixtures, n, 'config.json')))
  : [];

describe.each(fixtureNames)('PyTorch fixture %s', (name) => {
  const dir = join(fixtures, name);
  let model: Model;
  beforeAll(async () => {
    // The fixtures carry no tokenizer (ids are fed directly); any SPM vocabulary satisfies the loader.
    model = await loadModel(dir, { threads: 1, tokenizer: join(shared, 'models', 'stories260K', 'tok512.bin') });
  });
  afterAll(async () => model?.close());

  it('image features, logits at every position and greedy tokens match', async () => {
    const ids = JSON.parse(readFileSync(join(dir, 'input_ids.json'), 'utf8')) as FixtureIds;
    const unexpanded = ids.unexpanded ?? ids.input_ids_unexpanded!;
    const pixels = f32(join(dir, 'pixel_values.f32'));
    const nImages = (name === 'two-images' ? 2 : 1) as number;
    const features = await model.encodePixels(pixels, nImages);
    expect(maxAbsDiff(features, f32(join(dir, 'image_features.f32')))).toBeLessThanOrEqual(1e-4);
    const logits = await model.logits({ tokens: unexpanded, images: features }, { all: true });
    expect(maxAbsDiff(logits, f32(join(dir, 'logits.f32')))).toBeLessThanOrEqual(1e-4);
    const greedy = JSON.parse(readFileSync(join(dir, 'greedy_tokens.json'), 'utf8')) as number[] | { greedy_new_tokens: number[] };
    const want = Array.isArray(greedy) ? greedy : greedy.greedy_new_tokens;
    const r = await model.generate({ tokens: unexpanded, images: features }, { maxTokens: want.length, temperature: 0 }).result;
    expect(r.tokens).toEqual(want);
  });
});
