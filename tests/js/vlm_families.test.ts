// LLaVA-NeXT and Qwen2-VL on the paths beyond their parity tests (llava_next.test.ts, qwen2_vl.test.ts):
// - llama.cpp's Qwen2-VL GGUF pair, converted from ../shared/models/qwen2-vl-tiny-hf by
//   lib/convert_qwen2vl.ts (llama.cpp's names and keys), loaded with loadModel(text, { mmproj }):
//   transformers' logits within 1e-4 and greedy tokens from the reference patches, and from the
//   files (the GGUF's own tokenizer, chat template and processor keys) the same prompt, logits,
//   greedy tokens and option scores as the HF folder;
// - the "qwen2" GGUF pre-tokenizer (real Qwen2-VL GGUFs) equal to Qwen2's tokenizer.json split;
// - EmoBench eval (runEval + the native backend) on Qwen2-VL: a video sample goes in as one native
//   video, an image as one image, with the face cues; on LLaVA-NeXT: an image sample;
// - LLaVA-NeXT: EmoPrompt through its chat template, analyze with face cues, KV prefix reuse.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { requireTool } from './helpers/tools.js';
import {
  expectReferenceGreedyTogether,
  f32,
  maxAbsDiff,
  nextReferencePrompts,
  QWEN_PATCHES,
  qwenExpected,
  qwenGrid,
  qwenPhotoMessages,
  qwenVideoMessages,
  sharedModel,
  type QwenExpected,
} from './helpers/vlm_fixtures.js';
import { convertQwen2VLToGguf } from '../../lib/convert_qwen2vl.js';
import { nativeBackend } from '../../lib/emobench/backends.js';
import { readPredictions, runEval } from '../../lib/emobench/eval.js';
import { sampleToJsonl, type BenchSample } from '../../lib/emobench/sample.js';
import { analyze, buildEmoPrompt, inspectGguf, loadModel, type ChatMessage, type Model } from '../../lib/index.js';
import { loadTokenizer, tokenizerFromGgufMetadata } from '../../lib/tokenizer.js';

const { dir: qdir, have: haveQwen } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'Qwen2-VL GGUF / eval tests');
const { dir: ndir, have: haveNext } = sharedModel('llava-next-tiny-hf', 'reference/expected.json', 'LLaVA-NeXT analyze / eval tests');
const require = createRequire(import.meta.url);
const demo = join(dirname(require.resolve('@vladmandic/face-api/package.json')), 'demo');
const haveDemo = existsSync(join(demo, 'sample1.jpg'));
if (!haveDemo) console.warn('face-cue tests skipped: the face-api demo photos are missing');

const tmp = mkdtempSync(join(tmpdir(), 'emollm-vlm-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The text of every text part of a prompt's messages. */
function promptText(messages: readonly ChatMessage[]): string {
  return messages
    .map((m) => (typeof m.content === 'string' ? m.content : m.content.map((p) => ('text' in p && typeof p.text === 'string' ? p.text : '')).join('\n')))
    .join('\n');
}
/** Records the prompts `scoreOptions` is given. */
function spyPrompts(model: Model): unknown[] {
  const asked: unknown[] = [];
  const original = model.scoreOptions.bind(model);
  model.scoreOptions = (prompt, options, settings) => {
    asked.push(prompt);
    return original(prompt, options, settings);
  };
  return asked;
}
const FACE_CUE = /no face was detected|a face with an? \w+ expression|faces look mostly/;

describe.skipIf(!haveQwen)("Qwen2-VL as llama.cpp's GGUF pair (lib/convert_qwen2vl.ts) against the HF folder", () => {
  const expected: Partial<QwenExpected> = haveQwen ? qwenExpected(qdir) : {};
  const text = join(tmp, 'qwen2vl-text-f32.gguf');
  const mmproj = join(tmp, 'qwen2vl-mmproj-f32.gguf');
  let gguf: Model;
  let hf: Model;
  const photo = (): ChatMessage[] => qwenPhotoMessages(qdir);
  const video = (): ChatMessage[] => qwenVideoMessages(qdir, expected.video!.frames!);
  beforeAll(async () => {
    await convertQwen2VLToGguf(qdir, { text, mmproj });
    gguf = await loadModel(text, { mmproj, threads: 1 });
    hf = await loadModel(qdir, { threads: 1 });
  }, 120_000);
  afterAll(async () => {
    await gguf?.close();
    await hf?.close();
  });

  it("writes llama.cpp's keys and names", async () => {
    const t = await inspectGguf(text);
    expect(t.metadata['general.architecture']).toBe('qwen2vl');
    expect(t.metadata['qwen2vl.rope.dimension_sections']).toEqual([2, 3, 3, 0]);
    expect(t.metadata['tokenizer.ggml.model']).toBe('gpt2');
    expect(t.metadata['tokenizer.ggml.pre']).toBe('gpt-2'); // the fixture's tokenizer.json is plain byte-level
    expect(t.tensors.map((x) => x.name)).toContain('blk.1.attn_k.bias');
    const m = await inspectGguf(mmproj);
    expect(m.metadata['clip.projector_type']).toBe('qwen2vl_merger');
    // vision_config.hidden_size, as llama.cpp writes it (here it equals the MLP width: 32 * 2)
    expect(m.metadata['clip.vision.feed_forward_length']).toBe(64);
    expect(m.metadata['clip.vision.image_max_pixels']).toBe(9408);
    const names = m.tensors.map((x) => x.name);
    for (const n of ['v.patch_embd.weight', 'v.patch_embd.weight.1', 'v.blk.0.attn_q.weight', 'v.blk.1.attn_v.bias', 'v.post_ln.weight', 'mm.0.weight', 'mm.2.bias'])
      expect(names).toContain(n);
    expect(m.tensors.find((x) => x.name === 'v.patch_embd.weight')!.shape).toEqual([32, 3, 14, 14]);
  });

  it('is Qwen2-VL with the special ids of its vocabulary', () => {
    expect(gguf.info.vision).toMatchObject({ family: 'qwen2_vl', patchSize: 14, mergeSize: 2, temporalPatchSize: 2, imageTokenId: 6, videoTokenId: 7 });
  });

  for (const name of ['photo', 'video'] as const) {
    it(`${name}: reference patches -> transformers' logits within 1e-4 and the 12 greedy tokens`, async () => {
      const c = expected[name]!;
      const grid = qwenGrid(c);
      const features = await gguf.encodePatches(f32(join(qdir, 'reference', QWEN_PATCHES[name])), [grid]);
      const logits = await gguf.logits({ tokens: c.input_ids, images: features }, { all: true });
      expect(maxAbsDiff(logits, f32(join(qdir, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(1e-4);
      const r = await gguf.generate({ tokens: c.input_ids, images: features }, { maxTokens: 12, temperature: 0 }).result;
      expect(r.tokens).toEqual(c.greedy_new_tokens);
    });
  }

  it("from the files: the GGUF's template, tokenizer and processor keys give the HF folder's prompt, logits and greedy tokens", async () => {
    for (const [messages, c, name] of [[photo(), expected.photo!, 'photo'], [video(), expected.video!, 'video']] as const) {
      expect(gguf.applyChatTemplate(messages)).toBe(hf.applyChatTemplate(messages));
      expect(gguf.promptTokens(messages)).toEqual(hf.promptTokens(messages));
      const lg = await gguf.logits(messages, { all: true });
      expect(maxAbsDiff(lg, f32(join(qdir, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(1e-4);
      const r = await gguf.chat({ messages, maxTokens: 12, temperature: 0 }).result;
      expect(r.tokens).toEqual(c.greedy_new_tokens);
    }
    const sg = await gguf.scoreOptions(video(), ['happy', 'sad', 'angry']);
    const sh = await hf.scoreOptions(video(), ['happy', 'sad', 'angry']);
    sg.options.forEach((o, i) => expect(Math.abs(o.logprob - sh.options[i]!.logprob)).toBeLessThanOrEqual(1e-3));
  });

  it('a wrong folder is a typed error', async () => {
    await expect(convertQwen2VLToGguf(ndir, { text: join(tmp, 'x.gguf'), mmproj: join(tmp, 'y.gguf') })).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    expect(existsSync(join(tmp, 'x.gguf'))).toBe(false);
  });
});

describe.skipIf(!haveQwen)('the "qwen2" GGUF pre-tokenizer (real Qwen2-VL GGUFs)', () => {
  it("splits as Qwen2's tokenizer.json does (digits one by one, its contractions), unlike GPT-2's", async () => {
    // the fixture's folder with Qwen2's own pre-tokenizer in tokenizer.json
    const dir = join(tmp, 'qwen2-pre');
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(qdir)) if (f !== 'tokenizer.json' && f !== 'reference') symlinkSync(join(qdir, f), join(dir, f));
    const tj = JSON.parse(readFileSync(join(qdir, 'tokenizer.json'), 'utf8'));
    tj.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
          behavior: 'Isolated',
          invert: false,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    };
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
    const text = join(tmp, 'qwen2-pre.gguf');
    await convertQwen2VLToGguf(dir, { text, mmproj: join(tmp, 'qwen2-pre-mmproj.gguf') });
    const meta = (await inspectGguf(text)).metadata;
    expect(meta['tokenizer.ggml.pre']).toBe('qwen2');
    const fromGguf = tokenizerFromGgufMetadata(meta, text);
    const fromJson = await loadTokenizer(dir);
    const gpt2 = tokenizerFromGgufMetadata({ ...meta, 'tokenizer.ggml.pre': 'gpt-2' }, text);
    const samples = ["In 2024 I've had 12345 cats, HE'LL say.\n\n  Done!", 'x=3.14159;\ty = 42\r\n', 'ünïcödé 日本語 123'];
    let differs = false;
    for (const s of samples) {
      expect(fromGguf.encode(s, { addSpecialTokens: false })).toEqual(fromJson.encode(s, { addSpecialTokens: false }));
      expect(fromGguf.decode(fromGguf.encode(s, { addSpecialTokens: false }))).toBe(s);
      if (JSON.stringify(gpt2.encode(s, { addSpecialTokens: false })) !== JSON.stringify(fromGguf.encode(s, { addSpecialTokens: false }))) differs = true;
    }
    // each digit is its own piece under Qwen2's split
    for (const id of fromGguf.encode('12345', { addSpecialTokens: false })) expect(fromGguf.decode([id])).toMatch(/^\d$/);
    expect(differs).toBe(true);
    expect(() => tokenizerFromGgufMetadata({ ...meta, 'tokenizer.ggml.pre': 'llama-bpe' }, text)).toThrow(/not supported/);
  });
});

const haveFfmpeg = requireTool('ffmpeg', 'ffmpeg', 'EmoBench video sample on Qwen2-VL');

describe.skipIf(!haveQwen || !haveFfmpeg || !haveDemo)('EmoBench eval on Qwen2-VL: a video sample as one native video', () => {
  let model: Model;
  beforeAll(async () => {
    // the EmoPrompt through the synthetic byte-level tokenizer is longer than 1024 positions
    model = await loadModel(qdir, { threads: 1, contextSize: 4096 });
  });
  afterAll(async () => model?.close());

  it('runEval: the video sample is one video part of 4 frames, the photo one image part, both with face cues', async () => {
    const media = join(tmp, 'qmedia');
    mkdirSync(media, { recursive: true });
    const r0 = spawnSync('ffmpeg', ['-v', 'error', '-y', '-loop', '1', '-i', join(demo, 'sample1.jpg'), '-t', '2', '-r', '10', '-vf', 'scale=192:-2', '-pix_fmt', 'yuv420p', join(media, 'clip.mp4')]);
    expect(r0.status).toBe(0);
    writeFileSync(join(media, 'photo.jpg'), readFileSync(join(demo, 'sample2.jpg')));
    const samples: BenchSample[] = [
      { id: 'q/video', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'video', path: 'clip.mp4' }, options: ['happy', 'sad', 'neutral'], answer: 'happy' },
      { id: 'q/image', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: 'photo.jpg' }, options: ['happy', 'sad', 'neutral'], answer: 'happy' },
    ];
    const bench = join(tmp, 'qwen-bench.jsonl');
    writeFileSync(bench, samples.map(sampleToJsonl).join('\n') + '\n');
    const asked = spyPrompts(model);
    const out = join(tmp, 'qwen-eval');
    const r = await runEval({
      bench, model: nativeBackend(model, { guidance: 'none', frames: 4, modelFrames: 4 }), mediaRoot: media, out, concurrency: 1, progress: false, summary: false, resamples: 0,
    });
    expect(r.counts).toMatchObject({ selected: 2, errors: 0, ok: 2 });
    for (const x of readPredictions(join(out, 'predictions.jsonl')).values()) {
      expect(x.error).toBeFalsy();
      expect(Object.values(x.probabilities!).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    }
    expect(asked).toHaveLength(2);
    const parts = (p: unknown): { type: string; frames?: unknown[] }[] => (p as ChatMessage[]).flatMap((m) => (typeof m.content === 'string' ? [] : (m.content as { type: string; frames?: unknown[] }[])));
    const byKind = asked.map((p) => parts(p).filter((x) => x.type !== 'text'));
    const vid = byKind.find((ps) => ps.some((x) => x.type === 'video'))!;
    expect(vid.map((x) => [x.type, x.frames?.length])).toEqual([['video', 4]]);
    const img = byKind.find((ps) => !ps.some((x) => x.type === 'video'))!;
    expect(img.map((x) => x.type)).toEqual(['image']);
    for (const p of asked) expect(promptText(p as ChatMessage[])).toMatch(FACE_CUE);
  }, 300_000);
});

describe.skipIf(!haveNext || !haveDemo)('LLaVA-NeXT: EmoPrompt, analyze with face cues, eval, KV prefix reuse', () => {
  let model: Model;
  beforeAll(async () => {
    // the full EmoPrompt is longer than the tiny model's 512 positions
    model = await loadModel(ndir, { threads: 1, contextSize: 2048 });
  });
  afterAll(async () => model?.close());

  it("EmoPrompt renders through the folder's template with one <image> and scores the labels", async () => {
    const p = buildEmoPrompt({ task: 'emo-c', images: [join(demo, 'sample1.jpg')], taxonomy: 'ekman7', guidance: 'none' });
    const text = model.applyChatTemplate(p.messages);
    expect(text.split('<image>')).toHaveLength(2);
    const r = await model.scoreOptions(p.messages, p.labels);
    expect(r.options).toHaveLength(p.labels.length);
    expect(r.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
    // scored again: the image + prompt prefix comes from the KV cache, with the same result up to
    // float rounding (the rest is evaluated in differently sized chunks): within 1e-5
    const before = model.stats().reusedTokens;
    const again = await model.scoreOptions(p.messages, p.labels);
    expect(model.stats().reusedTokens).toBeGreaterThan(before);
    again.options.forEach((o, i) => expect(Math.abs(o.logprob - r.options[i]!.logprob)).toBeLessThanOrEqual(1e-5));
  });

  it('analyze: the photo goes in as one anyres image with the face cues', async () => {
    const asked = spyPrompts(model);
    const r = await analyze(join(demo, 'sample1.jpg'), { model, task: 'emotion' });
    expect(r.answer.outcome).toBe('label');
    if (r.answer.outcome === 'label') expect(r.answer.source).toBe('model');
    expect(r.faces.framesWithFaces).toBeGreaterThan(0);
    const messages = asked[0] as ChatMessage[];
    expect(promptText(messages)).toMatch(/a face with an? \w+ expression/);
    expect(model.applyChatTemplate(messages).split('<image>')).toHaveLength(2);
  });

  it('runEval: an image sample answered with option probabilities', async () => {
    const samples: BenchSample[] = [
      { id: 'n/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: 'sample3.jpg' }, options: ['happy', 'sad', 'neutral'], answer: 'happy' },
      { id: 'n/2', task: 'sarcasm', source: 'demo', split: 'test', media: { type: 'image', path: 'sample4.jpg' }, text: 'Love Mondays.', answer: 'yes' },
    ];
    const bench = join(tmp, 'next-bench.jsonl');
    writeFileSync(bench, samples.map(sampleToJsonl).join('\n') + '\n');
    const out = join(tmp, 'next-eval');
    const r = await runEval({ bench, model: nativeBackend(model, { guidance: 'none' }), mediaRoot: demo, out, concurrency: 1, progress: false, summary: false, resamples: 0 });
    expect(r.counts).toMatchObject({ selected: 2, errors: 0, ok: 2 });
    for (const x of readPredictions(join(out, 'predictions.jsonl')).values())
      expect(Object.values(x.probabilities!).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
  }, 300_000);
});

describe.skipIf(!haveNext)('LLaVA-NeXT: concurrent sequences', () => {
  it("the photo and the wide image decoded together give transformers' greedy tokens", async () => {
    const m = await loadModel(ndir, { threads: 1, maxSequences: 2 });
    try {
      const inputs = await nextReferencePrompts(m, ndir, ['photo', 'wide']);
      await expectReferenceGreedyTogether(m, inputs);
      expect(m.stats().batchedSteps).toBeGreaterThan(0);
    } finally {
      await m.close();
    }
  });
});
