// The vision-language fixtures the model tests share: the tiny models in ../shared/models (found
// or skipped with the reason printed), their transformers references (expected.json, the .f32
// tensors), the prompts the references were made with, and the "the same calls alone vs
// together" comparison of the batching tests (greedy tokens exactly, log-probabilities within a
// stated tolerance).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect } from 'vitest';

import type { ChatMessage, Model, VisualFeatures } from '../../../lib/index.js';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** ../shared beside the checkout (EMOLLM_SHARED_DIR overrides it). */
export const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');

export interface SharedModel {
  dir: string;
  /** Whether `marker` exists in the folder; when not, `what` was printed as skipped. */
  have: boolean;
}
/** ../shared/models/<name>, present when it holds `marker` (a path inside it); else warns that `what` is skipped. */
export function sharedModel(name: string, marker: string, what: string): SharedModel {
  const dir = join(shared, 'models', name);
  const have = existsSync(join(dir, marker));
  if (!have) console.warn(`${what} skipped: ${dir} not found (set EMOLLM_SHARED_DIR)`);
  return { dir, have };
}

/** A raw little-endian f32 file (the references' tensors). */
export function f32(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
/** Largest |a[i] - b[i]|; the lengths must be equal (asserted). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
/** log-softmax of the last row of an [n, V] logits tensor, in float64 (first-token option scores). */
export function lastRowLogSoftmax(logits: Float32Array, shape: readonly [number, number]): (token: number) => number {
  const [n, V] = shape;
  const last = logits.subarray((n - 1) * V, n * V);
  let max = -Infinity;
  for (const v of last) max = Math.max(max, v);
  let z = 0;
  for (const v of last) z += Math.exp(v - max);
  return (token) => last[token]! - max - Math.log(z);
}

/** The question the LLaVA references were made with. */
export const FEEL = 'How does the person in this photo feel?';
/** One user turn: an image (a path, bytes, or nothing for the template alone), then the text. */
export const imageQuestion = (image: unknown, text: string = FEEL): ChatMessage[] => [
  { role: 'user', content: [{ type: 'image', image }, { type: 'text', text }] } as ChatMessage,
];

// ---------------------------------------------------------------- Qwen2-VL (qwen2-vl-tiny-hf)

/** A case of qwen2-vl-tiny-hf/reference/expected.json (`photo`: grid 1x4x8; `video`: 2x4x6). */
export interface QwenCase {
  input_ids: number[];
  greedy_new_tokens: number[];
  logits_shape: [number, number];
  image_grid_thw?: [[number, number, number]];
  video_grid_thw?: [[number, number, number]];
  frames?: string[];
}
export type QwenCaseName = 'photo' | 'video';
/** The reference's pixel files: flattened patches (image) and video patches. */
export const QWEN_PATCHES: Record<QwenCaseName, string> = { photo: 'photo_pixel_values.f32', video: 'video_pixel_values_videos.f32' };
/** qwen2-vl-tiny-hf/reference/expected.json: the two cases and the chat templates' renderings. */
export interface QwenExpected extends Record<QwenCaseName, QwenCase> {
  chat_text_image: string;
  chat_text_video: string;
}
export const qwenExpected = (dir: string): QwenExpected => JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8')) as QwenExpected;
export const qwenGrid = (c: QwenCase): [number, number, number] => (c.image_grid_thw ?? c.video_grid_thw)![0];
/** The photo question of the reference. */
export const qwenPhotoMessages = (dir: string): ChatMessage[] => [
  { role: 'user', content: [{ type: 'image', image: join(dir, 'photo.jpg') }, { type: 'text', text: 'How does the person in this photo feel? Answer with one word.' }] },
];
/** The video question of the reference over `frames` (file names in the folder). */
export const qwenVideoMessages = (dir: string, frames: readonly string[]): ChatMessage[] => [
  { role: 'user', content: [{ type: 'video', frames: frames.map((f) => join(dir, f)) }, { type: 'text', text: 'What emotion does the speaker show?' }] },
];

// ---------------------------------------------------------------- LLaVA-NeXT (llava-next-tiny-hf)

/** A case of llava-next-tiny-hf/reference/expected.json (`photo`: 2x2 tiles; `wide`: 1x2). */
export interface NextCase {
  input_ids: number[];
  greedy_new_tokens: number[];
  image_sizes: [[number, number]];
  logits_shape: [number, number];
}
export type NextCaseName = 'photo' | 'wide';
export const nextExpected = (dir: string): Record<NextCaseName, NextCase> =>
  JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8')) as Record<NextCaseName, NextCase>;

// ---------------------------------------------------------------- reference prompts decoded together

/** A reference case as a prepared prompt (its input_ids and the features of its pixels). */
export interface ReferencePrompt<C> {
  c: C;
  prompt: { tokens: number[]; images: VisualFeatures };
}
/** Qwen2-VL cases with their reference patches encoded by `m`. */
export async function qwenReferencePrompts(m: Model, dir: string, names: readonly QwenCaseName[]): Promise<ReferencePrompt<QwenCase>[]> {
  const expected = qwenExpected(dir);
  return Promise.all(
    names.map(async (name) => {
      const c = expected[name];
      return { c, prompt: { tokens: c.input_ids, images: await m.encodePatches(f32(join(dir, 'reference', QWEN_PATCHES[name])), [qwenGrid(c)]) } };
    }),
  );
}
/** LLaVA-NeXT cases with their reference anyres pixels encoded by `m`. */
export async function nextReferencePrompts(m: Model, dir: string, names: readonly NextCaseName[]): Promise<ReferencePrompt<NextCase>[]> {
  const expected = nextExpected(dir);
  return Promise.all(
    names.map(async (name) => {
      const c = expected[name];
      return { c, prompt: { tokens: c.input_ids, images: await m.encodeAnyresPixels(f32(join(dir, 'reference', `${name}_pixel_values.f32`)), c.image_sizes) } };
    }),
  );
}
/** Generates every prompt at once (12 greedy tokens) and asserts each gives its reference's greedy tokens. */
export async function expectReferenceGreedyTogether(m: Model, inputs: readonly ReferencePrompt<{ greedy_new_tokens: number[] }>[]): Promise<void> {
  // Whether the calls overlap in a pass depends on timing (on a loaded machine the first one can
  // finish its 12 tokens before the next reaches the core): rounds repeat, each checked against
  // the reference, until one ran batched; the callers assert that one did (stats().batchedSteps).
  const before = m.stats().batchedSteps;
  for (let round = 0; round === 0 || (round < 8 && m.stats().batchedSteps === before); round++) {
    const got = await Promise.all(inputs.map(({ prompt }) => m.generate(prompt, { maxTokens: 12, temperature: 0 }).result));
    got.forEach((g, i) => expect(g.tokens).toEqual(inputs[i]!.c.greedy_new_tokens));
  }
}

// ---------------------------------------------------------------- the same calls alone vs together

/** What a compared call returns: greedy tokens (compared exactly) or option token log-probabilities. */
export type CallResult = number[] | number[][];
export type Call = () => Promise<CallResult>;

/** Runs `calls(alone)` one at a time, then `calls(together)` submitted at once in order. */
export async function aloneThenTogether(
  alone: Model,
  together: Model,
  calls: (m: Model) => Promise<Call[]>,
): Promise<{ want: CallResult[]; got: CallResult[] }> {
  const want: CallResult[] = [];
  for (const f of await calls(alone)) want.push(await f());
  const fs = await calls(together);
  const got = await Promise.all(fs.map((f) => f()));
  return { want, got };
}
/** Option token log-probabilities: the same shape, each within `tol`. */
export function expectLogprobsClose(got: number[][], want: number[][], tol: number): void {
  expect(got.map((x) => x.length)).toEqual(want.map((x) => x.length));
  got.forEach((row, i) => row.forEach((v, j) => expect(Math.abs(v - want[i]![j]!)).toBeLessThanOrEqual(tol)));
}

/** The llava-tiny-hf calls on photo.jpg that the batching tests make alone and together. */
export type LlavaTinyCall =
  | 'generateFeel' // the reference question, 16 greedy tokens
  | 'scoreFeel' // the reference question, options happy / sad / very angry
  | 'generateFace' // another question on the same image, 12 greedy tokens
  | 'scoreNeutral'; // the reference question again, options neutral / surprised
/**
 * The calls in `order` on prepared prompts (tokens + images encoded up front, so the calls reach
 * the core together): greedy tokens, or each option's token log-probabilities.
 */
export async function llavaTinyImageCalls(m: Model, dir: string, order: readonly LlavaTinyCall[]): Promise<Call[]> {
  const photo = join(dir, 'photo.jpg');
  const prepared = async (text: string) => ({ tokens: m.promptTokens(imageQuestion('photo.jpg', text)), images: await m.encodeImages([photo]) });
  const p1 = await prepared(FEEL);
  const p2 = await prepared('Describe the face.');
  const score = (options: string[]) => () => m.scoreOptions(p1, options).then((r) => r.options.map((o) => o.tokenLogprobs));
  const calls: Record<LlavaTinyCall, Call> = {
    generateFeel: () => m.generate(p1, { maxTokens: 16, temperature: 0 }).result.then((r) => r.tokens),
    scoreFeel: score(['happy', 'sad', 'very angry']),
    generateFace: () => m.generate(p2, { maxTokens: 12, temperature: 0 }).result.then((r) => r.tokens),
    scoreNeutral: score(['neutral', 'surprised']),
  };
  return order.map((k) => calls[k]);
}
/**
 * Asserts the llava-tiny-hf calls together equal them alone: generate calls' tokens exactly,
 * scoring calls' log-probabilities within `tol`.
 */
export function expectLlavaTinyCallsMatch(order: readonly LlavaTinyCall[], got: CallResult[], want: CallResult[], tol: number): void {
  expect(got).toHaveLength(order.length);
  order.forEach((k, i) => {
    if (k.startsWith('generate')) expect(got[i]).toEqual(want[i]);
    else expectLogprobsClose(got[i] as number[][], want[i] as number[][], tol);
  });
}

// ---------------------------------------------------------------- EmoLLM made by init-mvp

/** An EmoLLM checkpoint made by `initMvp` from a base folder, loaded beside that base. */
export interface InitMvpPair {
  base: Model;
  emo: Model;
  /** The temporary folder holding the checkpoint (`<tmp>/emo`). */
  tmp: string;
  /** Closes both models and removes the folder. */
  close(): Promise<void>;
}
/** `initMvp(dir, <tmp>/emo)` in a fresh temporary folder named `<prefix>XXXXXX`; both models load with threads 1. */
export async function loadInitMvpPair(dir: string, prefix: string): Promise<InitMvpPair> {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { initMvp, loadModel } = await import('../../../lib/index.js');
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  const opened: Model[] = [];
  const close = async (): Promise<void> => {
    for (const m of opened) await m.close();
    rmSync(tmp, { recursive: true, force: true });
  };
  try {
    await initMvp(dir, join(tmp, 'emo'));
    opened.push(await loadModel(dir, { threads: 1 }));
    opened.push(await loadModel(join(tmp, 'emo'), { threads: 1 }));
  } catch (e) {
    await close();
    throw e;
  }
  return { base: opened[0]!, emo: opened[1]!, tmp, close };
}
/** The closed-gate EmoLLM answers as its base does: 8 greedy chat tokens and option log-probabilities, exactly. */
export async function expectChatAndScoresEqualBase(pair: InitMvpPair, messages: ChatMessage[]): Promise<void> {
  const a = await pair.base.chat({ messages, maxTokens: 8, temperature: 0 }).result;
  const b = await pair.emo.chat({ messages, maxTokens: 8, temperature: 0 }).result;
  expect(b.tokens).toEqual(a.tokens);
  const sa = await pair.base.scoreOptions(messages, ['happy', 'sad']);
  const sb = await pair.emo.scoreOptions(messages, ['happy', 'sad']);
  expect(sb.options.map((o) => o.logprob)).toEqual(sa.options.map((o) => o.logprob));
}
