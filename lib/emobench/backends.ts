/**
 * Evaluation backends: what answers an EmoBench sample.
 *
 * | `--model` | backend |
 * |---|---|
 * | a folder or a `.gguf` | the native engine: EmoPrompt, then option scoring (`classify`) for the closed tasks, greedy generation + `decodeOpenEmotion` for `emo-o` |
 * | `http(s)://host:port/v1#model-name` | an OpenAI-compatible chat/completions endpoint (images as base64 data URLs), its text decoded with `decodeLabel` / `decodeYesNo` / `decodeOpenEmotion` |
 * | `face` | the offline face perspective: `emo-c` / `emo-o` from the faces' expressions (other tasks: unparsed) |
 * | `random` | a uniformly random option, seeded per sample id |
 * | `majority` | the most frequent gold answer of the task in the benchmark itself (an oracle-ish baseline: it peeks at the label distribution) |
 * | `null` | no model: assembles the prompt and decodes a canned reply (harness overhead) |
 *
 * A backend throws on failure; the evaluator records that as an error (never as a wrong answer).
 */
import { readFile } from 'node:fs/promises';
import { extname, isAbsolute, join } from 'node:path';

import { sampleVideoFrames, summarizeFaces, EXPRESSION_TO_EKMAN7, type FrameAnalysis } from '../analyze.js';
import type { ChatMessage } from '../chat_template.js';
import { classify, decodeLabel, decodeOpenEmotion, decodeYesNo } from '../decode_result.js';
import { buildEmoPrompt, type EmoPrompt, type GuidanceLevel } from '../emoprompt.js';
import { CANONICAL_EMOTIONS } from '../emotion_lexicon.js';
import { EmollmError } from '../errors.js';
import { FACE_EXPRESSIONS, FaceAnalyzer } from '../face.js';
import type { ImageInput } from '../image.js';
import type { Device } from '../runtime.js';
import { loadModel, type Model } from '../model.js';
import { hashString, rng } from './metrics.js';
import type { BenchSample, BenchTask } from './sample.js';

/** A backend's answer to one sample. */
export interface Prediction {
  /** The raw output: generated text, or null when the backend scored options. */
  raw: string | null;
  /** The parsed label; null when unparsed. */
  label: string | null;
  /** Probability of each option, when the backend has them. */
  probabilities: Record<string, number> | null;
  unparsed: boolean;
  /** Why it is unparsed. */
  reason?: string;
}

export interface Backend {
  /** Short name for reports: `random`, `majority`, `native:<path>`, `http:<url>#<model>`, ... */
  readonly name: string;
  /** Most samples it should work on at once (the evaluator's concurrency is capped by it). */
  readonly maxConcurrency: number;
  predict(sample: BenchSample, mediaRoot: string, signal: AbortSignal): Promise<Prediction>;
  close?(): Promise<void>;
}

const YES_NO = new Set<BenchTask>(['hate', 'humor', 'sarcasm']);

/** The options a sample is answered from (closed tasks: its options; yes/no: yes, no). */
export function sampleLabels(s: BenchSample): readonly string[] | undefined {
  if (YES_NO.has(s.task)) return s.options ?? ['yes', 'no'];
  return s.options;
}

/** Absolute path of a sample's media file (null without media). */
export function mediaPath(s: BenchSample, mediaRoot: string): string | null {
  if (!s.media) return null;
  return isAbsolute(s.media.path) ? s.media.path : join(mediaRoot, s.media.path);
}

function unparsed(reason: string, raw: string | null = null): Prediction {
  return { raw, label: null, probabilities: null, unparsed: true, reason };
}

/** The sample's images: the image file, or `frames` frames of its video (PNG buffers). */
async function sampleImages(s: BenchSample, mediaRoot: string, frames: number, signal: AbortSignal): Promise<ImageInput[]> {
  const p = mediaPath(s, mediaRoot);
  if (p === null || !s.media) return [];
  if (s.media.type === 'image') return [p];
  const fr = await sampleVideoFrames(p, frames, signal);
  return fr.map((f) => f.png);
}

/** The EmoPrompt of a sample (images given as they will be sent). */
export function samplePrompt(s: BenchSample, images: readonly ImageInput[], guidance: GuidanceLevel = 'full'): EmoPrompt {
  const closed = s.task === 'emo-c' || s.task === 'intent';
  return buildEmoPrompt({
    task: s.task,
    guidance,
    images,
    media: s.media?.type === 'video' ? 'video' : 'image',
    ...(closed && s.options ? { labels: s.options } : {}),
    ...(s.task === 'emo-c' && !s.options ? { taxonomy: 'ekman7' as const } : {}),
    ...(s.text !== undefined ? { text: s.text } : {}),
    ...(s.context !== undefined ? { context: s.context } : {}),
    ...(s.instruction !== undefined ? { question: s.instruction } : {}),
  });
}

/** Decodes generated text for a sample's task. */
export function decodeForSample(s: BenchSample, text: string, labels: readonly string[]): Prediction {
  if (s.task === 'emo-o') {
    const d = decodeOpenEmotion(text);
    if (d.outcome === 'unparsed') return unparsed(d.reason, text);
    if (s.options) {
      // an open answer scored against given options: map the emotion onto one of them
      const l = decodeLabel(text, s.options);
      if (l.outcome === 'label') return { raw: text, label: l.label, probabilities: null, unparsed: false };
    }
    return { raw: text, label: d.emotion, probabilities: null, unparsed: false };
  }
  if (YES_NO.has(s.task)) {
    const d = decodeYesNo(text, { task: s.task as 'hate' | 'humor' | 'sarcasm' });
    return d.outcome === 'label' ? { raw: text, label: d.label, probabilities: null, unparsed: false } : unparsed(d.reason, text);
  }
  const d = decodeLabel(text, labels);
  return d.outcome === 'label' ? { raw: text, label: d.label, probabilities: null, unparsed: false } : unparsed(d.reason, text);
}

// ---------------------------------------------------------------------------------------------
// Native engine

export interface NativeBackendOptions {
  /** Video frames given to the model (default 4). */
  frames?: number;
  /** emo-o generation budget (default 32 tokens). */
  maxTokens?: number;
  /** EmoPrompt guidance level (default 'full'). */
  guidance?: GuidanceLevel;
}

export function nativeBackend(model: Model, options: NativeBackendOptions = {}): Backend {
  const frames = options.frames ?? 4;
  return {
    name: `native:${model.path}`,
    maxConcurrency: 1, // one context per model: calls run in order anyway
    async predict(s, mediaRoot, signal) {
      const images = await sampleImages(s, mediaRoot, frames, signal);
      const prompt = samplePrompt(s, images, options.guidance);
      if (s.task === 'emo-o') {
        const r = await model.generate(prompt.messages, { maxTokens: options.maxTokens ?? 32, temperature: 0, signal }).result;
        return decodeForSample(s, r.text, []);
      }
      const c = await classify(model, prompt.messages, prompt.labels, { signal });
      return { raw: null, label: c.label, probabilities: c.distribution, unparsed: false };
    },
    async close() {
      await model.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible HTTP endpoint

export interface HttpBackendOptions {
  /** Base URL ending before /chat/completions, e.g. http://127.0.0.1:8000/v1 */
  baseUrl: string;
  model: string;
  /** Per-request timeout (default 60 s). */
  timeoutMs?: number;
  /** Retries after the first try on 429 / 5xx / network errors / timeouts (default 4). */
  retries?: number;
  /** First backoff (default 500 ms); doubles each retry, with up to 50% jitter added. */
  backoffMs?: number;
  /** Requests in flight at once (default 4). */
  concurrency?: number;
  maxTokens?: number;
  apiKey?: string;
  frames?: number;
  guidance?: GuidanceLevel;
  /** For tests: the sleep used between retries. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

const MIME: Record<string, string> = { '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp', '.gif': 'image/gif', '.bmp': 'image/bmp' };

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new EmollmError('ERR_ABORTED', 'aborted'));
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new EmollmError('ERR_ABORTED', 'aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function toOpenAiMessages(messages: readonly ChatMessage[]): Promise<unknown[]> {
  const out: unknown[] = [];
  for (const m of messages) {
    if (typeof m.content === 'string') {
      out.push({ role: m.role, content: m.content });
      continue;
    }
    const parts: unknown[] = [];
    for (const p of m.content) {
      if (p.type === 'text') parts.push({ type: 'text', text: p.text });
      else if (p.type === 'image') {
        const img = (p as unknown as { image: unknown }).image;
        let url: string;
        if (typeof img === 'string') {
          const bytes = await readFile(img);
          url = `data:${MIME[extname(img).toLowerCase()] ?? 'image/jpeg'};base64,${bytes.toString('base64')}`;
        } else if (img instanceof Uint8Array) url = `data:image/png;base64,${Buffer.from(img).toString('base64')}`;
        else throw new EmollmError('ERR_UNSUPPORTED', 'http backend: only file paths and encoded image bytes can be sent');
        parts.push({ type: 'image_url', image_url: { url } });
      }
    }
    out.push({ role: m.role, content: parts });
  }
  return out;
}

/** Parses `http://host:port/v1#model-name`. */
export function parseEndpoint(spec: string): { baseUrl: string; model: string } {
  const hash = spec.indexOf('#');
  const baseUrl = (hash < 0 ? spec : spec.slice(0, hash)).replace(/\/+$/, '').replace(/\/chat\/completions$/, '');
  const model = hash < 0 ? '' : decodeURIComponent(spec.slice(hash + 1));
  if (model === '') throw new EmollmError('ERR_INVALID_ARGUMENT', `endpoint ${JSON.stringify(spec)} names no model: use http://host:port/v1#model-name`);
  return { baseUrl, model };
}

export function httpBackend(options: HttpBackendOptions): Backend {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const retries = options.retries ?? 4;
  const backoff = options.backoffMs ?? 500;
  const sleep = options.sleep ?? abortableSleep;
  const url = `${options.baseUrl.replace(/\/+$/, '')}/chat/completions`;
  const apiKey = options.apiKey ?? process.env.OPENAI_API_KEY;

  async function post(body: string, signal: AbortSignal): Promise<string> {
    let last = '';
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await sleep(backoff * 2 ** (attempt - 1) * (1 + Math.random() * 0.5), signal);
      if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted');
      const timeout = AbortSignal.timeout(timeoutMs);
      let res: Response;
      try {
        res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
          body,
          signal: AbortSignal.any([signal, timeout]),
        });
      } catch (e) {
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted', { cause: e });
        last = timeout.aborted ? `timed out after ${timeoutMs} ms` : `network error: ${(e as Error).message}`;
        continue;
      }
      let text: string;
      try {
        text = await res.text();
      } catch (e) {
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted', { cause: e });
        last = timeout.aborted ? `timed out after ${timeoutMs} ms` : `network error reading the body: ${(e as Error).message}`;
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        last = `HTTP ${res.status}: ${text.slice(0, 200)}`;
        continue;
      }
      if (!res.ok) throw new EmollmError('ERR_INVALID_ARGUMENT', `${url}: HTTP ${res.status}: ${text.slice(0, 300)}`);
      let content: unknown;
      try {
        const j = JSON.parse(text) as { choices?: Array<{ message?: { content?: unknown } }> };
        content = j.choices?.[0]?.message?.content;
      } catch (cause) {
        throw new EmollmError('ERR_MALFORMED_FILE', `${url}: the response is not JSON`, { cause });
      }
      if (typeof content !== 'string') throw new EmollmError('ERR_MALFORMED_FILE', `${url}: the response has no choices[0].message.content`);
      return content;
    }
    throw new EmollmError('ERR_INTERNAL', `${url}: gave up after ${retries + 1} tries (${last})`);
  }

  return {
    name: `http:${options.baseUrl}#${options.model}`,
    maxConcurrency: options.concurrency ?? 4,
    async predict(s, mediaRoot, signal) {
      const images = await sampleImages(s, mediaRoot, options.frames ?? 4, signal);
      const prompt = samplePrompt(s, images, options.guidance);
      const body = JSON.stringify({
        model: options.model,
        messages: await toOpenAiMessages(prompt.messages),
        temperature: 0,
        max_tokens: options.maxTokens ?? 32,
      });
      const text = await post(body, signal);
      return decodeForSample(s, text, prompt.labels);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Face perspective

export function faceBackend(faces?: FaceAnalyzer, options: { frames?: number } = {}): Backend {
  let analyzer: Promise<FaceAnalyzer> | undefined = faces ? Promise.resolve(faces) : undefined;
  return {
    name: 'face',
    maxConcurrency: 1,
    async predict(s, mediaRoot, signal) {
      if (s.task !== 'emo-c' && s.task !== 'emo-o') return unparsed(`the face perspective cannot answer ${s.task}`);
      if (!s.media) return unparsed('no media: no face to read');
      analyzer ??= FaceAnalyzer.load();
      const fa = await analyzer;
      const images = await sampleImages(s, mediaRoot, options.frames ?? 8, signal);
      const frames: FrameAnalysis[] = [];
      for (const [index, image] of images.entries()) frames.push({ index, faces: await fa.analyze(image, { signal }) });
      const summary = summarizeFaces(frames);
      if (!summary.expressions || !summary.emotion) return unparsed('no face was detected');
      const raw = `${summary.dominant} (${summary.expressions[summary.dominant!].toFixed(3)})`;
      const options2 = s.options;
      if (s.task === 'emo-o' && !options2) {
        const d = decodeOpenEmotion(summary.emotion);
        return d.outcome === 'emotion' ? { raw, label: d.emotion, probabilities: null, unparsed: false } : unparsed(d.reason, raw);
      }
      const labels = options2 ?? ['neutral', 'joy', 'sadness', 'anger', 'fear', 'disgust', 'surprise'];
      // each expression's probability goes to the option its Ekman-7 emotion maps onto
      const probs: Record<string, number> = Object.fromEntries(labels.map((l) => [l, 0]));
      let mapped = 0;
      for (const e of FACE_EXPRESSIONS) {
        const d = decodeLabel(EXPRESSION_TO_EKMAN7[e], labels);
        if (d.outcome !== 'label') continue;
        probs[d.label]! += summary.expressions[e];
        mapped += summary.expressions[e];
      }
      if (mapped === 0) return unparsed('unmappable', raw);
      for (const l of labels) probs[l]! /= mapped;
      const best = labels.reduce((a, b) => (probs[b]! > probs[a]! ? b : a));
      return { raw, label: best, probabilities: probs, unparsed: false };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Baselines

/** The label set a baseline draws from: the sample's options, else the task's gold answers in the benchmark. */
function answerSets(samples: readonly BenchSample[]): Map<BenchTask, string[]> {
  const m = new Map<BenchTask, Set<string>>();
  for (const s of samples) {
    let set = m.get(s.task);
    if (!set) m.set(s.task, (set = new Set()));
    set.add(s.answer);
  }
  return new Map([...m].map(([t, set]) => [t, [...set].sort()]));
}

/** Uniformly random among the sample's options (without options: emo-o the lexicon's canonical emotions, other tasks the task's gold answers), seeded per sample id. */
export function randomBackend(samples: readonly BenchSample[], seed = 0): Backend {
  const sets = answerSets(samples);
  return {
    name: `random(seed=${seed})`,
    maxConcurrency: 64,
    async predict(s) {
      const labels = sampleLabels(s) ?? (s.task === 'emo-o' ? (CANONICAL_EMOTIONS as readonly string[]) : sets.get(s.task)) ?? ['yes', 'no'];
      const r = rng((hashString(s.id) ^ Math.imul(seed, 0x9e3779b1)) >>> 0);
      const label = labels[Math.floor(r() * labels.length)]!;
      return { raw: null, label, probabilities: Object.fromEntries(labels.map((l) => [l, 1 / labels.length])), unparsed: false };
    },
  };
}

/**
 * The task's most frequent gold answer in the benchmark itself (ties: alphabetical), restricted to
 * the sample's options when it has them. Oracle-ish: it uses the evaluation set's label
 * distribution, which no real system knows.
 */
export function majorityBackend(samples: readonly BenchSample[]): Backend {
  const counts = new Map<BenchTask, Map<string, number>>();
  for (const s of samples) {
    let c = counts.get(s.task);
    if (!c) counts.set(s.task, (c = new Map()));
    c.set(s.answer, (c.get(s.answer) ?? 0) + 1);
  }
  const ranked = new Map<BenchTask, string[]>();
  for (const [t, c] of counts) ranked.set(t, [...c.keys()].sort((a, b) => c.get(b)! - c.get(a)! || (a < b ? -1 : a > b ? 1 : 0)));
  return {
    name: 'majority',
    maxConcurrency: 64,
    async predict(s) {
      const r = ranked.get(s.task) ?? [];
      const opts = sampleLabels(s);
      const label = (opts ? r.find((l) => opts.includes(l)) ?? opts[0] : r[0]) ?? null;
      return label === null ? unparsed('no label') : { raw: null, label, probabilities: null, unparsed: false };
    },
  };
}

/** No model: assembles the EmoPrompt and decodes a canned reply ("Answer: <first option>"). For measuring the harness. */
export function nullBackend(): Backend {
  return {
    name: 'null',
    maxConcurrency: 1,
    async predict(s, mediaRoot) {
      const p = mediaPath(s, mediaRoot);
      const prompt = samplePrompt(s, p !== null && s.media?.type === 'image' ? [p] : []);
      const first = prompt.labels[0] ?? 'happy';
      return decodeForSample(s, `Answer: ${first}`, prompt.labels);
    },
  };
}

// ---------------------------------------------------------------------------------------------

export interface CreateBackendOptions {
  /** The benchmark (random's label sets, majority's counts). */
  samples: readonly BenchSample[];
  seed?: number;
  /** HTTP: concurrency, timeout, retries. */
  http?: Partial<Omit<HttpBackendOptions, 'baseUrl' | 'model'>>;
  /** Native: passed to loadModel. */
  mmproj?: string;
  threads?: number;
  /** Native: the device (RuntimeOptions), passed to loadModel. */
  device?: Device;
  /** EmoPrompt guidance level for the model backends (default 'full'). */
  guidance?: GuidanceLevel;
}

/** The backend `--model <spec>` names. */
export async function createBackend(spec: string, options: CreateBackendOptions): Promise<Backend> {
  switch (spec) {
    case 'random':
      return randomBackend(options.samples, options.seed ?? 0);
    case 'majority':
      return majorityBackend(options.samples);
    case 'face':
      return faceBackend();
    case 'null':
      return nullBackend();
  }
  if (/^https?:\/\//i.test(spec))
    return httpBackend({ ...parseEndpoint(spec), ...(options.guidance ? { guidance: options.guidance } : {}), ...options.http });
  const model = await loadModel(spec, {
    ...(options.mmproj ? { mmproj: options.mmproj } : {}),
    ...(options.threads !== undefined ? { threads: options.threads } : {}),
    ...(options.device !== undefined ? { device: options.device } : {}),
  });
  if (!model.info.vision) {
    await model.close();
    throw new EmollmError('ERR_UNSUPPORTED', `${spec} is not a multimodal (LLaVA / EmoLLM) model`);
  }
  return nativeBackend(model, options.guidance ? { guidance: options.guidance } : {});
}
