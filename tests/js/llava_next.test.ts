// LLaVA-NeXT end to end through the public API against transformers' own outputs for the tiny
// model in ../shared/models/llava-next-tiny-hf (see its SOURCE.md): every case of
// reference/expected.json (`photo`: 2x2 tiles; `wide`: 1x2 tiles all cut by the unpadding).
// - reference pixel values fed in: logits at every position within 1e-4, 12 greedy tokens equal;
// - full path (file -> anyres preprocessing -> chat template -> tokenizer): the expanded input_ids
//   equal the processor's, and the photo (pixel-exact preprocessing) keeps the 1e-4 logits and the
//   greedy tokens; scoreOptions equals log-probabilities from the logits.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, type ChatMessage, type Model } from '../../lib/index.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const dir = join(shared, 'models', 'llava-next-tiny-hf');
const have = existsSync(join(dir, 'reference', 'expected.json'));
if (!have) console.warn(`llava-next-tiny-hf tests skipped: ${dir} not found (set EMOLLM_SHARED_DIR)`);

function f32(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

interface Case {
  input_ids: number[];
  greedy_new_tokens: number[];
  image_sizes: [[number, number]];
  logits_shape: [number, number];
}

const question = (image: string): ChatMessage[] => [
  {
    role: 'user',
    content: [
      { type: 'image', image },
      { type: 'text', text: 'How does the person in this photo feel?' },
    ],
  },
];

describe.skipIf(!have)('llava-next-tiny-hf (transformers reference)', () => {
  const expected = have ? (JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8')) as Record<string, Case>) : {};
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
    const ref = f32(join(dir, 'reference', 'photo_logits.f32'));
    const V = c.logits_shape[1];
    const last = ref.subarray((c.logits_shape[0] - 1) * V, c.logits_shape[0] * V);
    let max = -Infinity;
    for (const v of last) max = Math.max(max, v);
    let z = 0;
    for (const v of last) z += Math.exp(v - max);
    for (const o of r.options) expect(Math.abs(o.tokenLogprobs[0]! - (last[o.tokens[0]!]! - max - Math.log(z)))).toBeLessThanOrEqual(1e-3);
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
  let base: Model;
  let emo: Model;
  let tmp: string;
  beforeAll(async () => {
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { initMvp } = await import('../../lib/index.js');
    tmp = mkdtempSync(join(tmpdir(), 'emollm-next-'));
    await initMvp(dir, join(tmp, 'emo'));
    base = await loadModel(dir, { threads: 1 });
    emo = await loadModel(join(tmp, 'emo'), { threads: 1 });
  });
  afterAll(async () => {
    await base?.close();
    await emo?.close();
    const { rmSync } = await import('node:fs');
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('the MVP reads every tile and packs like the base: logits, chat and scores equal the base', async () => {
    expect(emo.info.emollm?.perspectives.map((p) => p.gate)).toEqual(['open', 'closed', 'closed', 'closed']);
    expect(emo.info.vision?.family).toBe('llava_next');
    for (const name of ['photo', 'wide']) {
      const messages = question(join(dir, `${name}.jpg`));
      const la = await base.logits(messages, { all: true });
      const lb = await emo.logits(messages, { all: true });
      expect(maxAbsDiff(lb, la)).toBe(0);
      // and against transformers with the reference pixels
      const c = JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8'))[name] as Case;
      const features = await emo.encodeAnyresPixels(f32(join(dir, 'reference', `${name}_pixel_values.f32`)), c.image_sizes);
      const ref = await emo.logits({ tokens: c.input_ids, images: features }, { all: true });
      expect(maxAbsDiff(ref, f32(join(dir, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(1e-4);
    }
    const messages = question(join(dir, 'photo.jpg'));
    const a = await base.chat({ messages, maxTokens: 8, temperature: 0 }).result;
    const b = await emo.chat({ messages, maxTokens: 8, temperature: 0 }).result;
    expect(b.tokens).toEqual(a.tokens);
    const sa = await base.scoreOptions(messages, ['happy', 'sad']);
    const sb = await emo.scoreOptions(messages, ['happy', 'sad']);
    expect(sb.options.map((o) => o.logprob)).toEqual(sa.options.map((o) => o.logprob));
  });
});
