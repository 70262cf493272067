/**
 * Evaluation backends: what answers an EmoBench sample.
 *
 * | `--model` | backend |
 * |---|---|
 * | a folder or a `.gguf` | the native engine, through `analyze`'s own perception path (lib/perception.ts: video frames, the face perspective's cues and face boxes; `--no-face` drops both): EmoPrompt, then option scoring (`classify`) for the closed tasks, greedy generation + `decodeOpenEmotion` for `emo-o` |
 * | `http(s)://host:port/v1#model-name` | an OpenAI-compatible chat/completions endpoint (images as base64 data URLs), its text decoded with `decodeLabel` / `decodeYesNo` / `decodeOpenEmotion` |
 * | `face` | the offline face perspective: `emo-c` / `emo-o` from the faces' expressions (other tasks: unparsed) |
 * | `random` | a uniformly random option, seeded per sample id |
 * | `majority` | the most frequent gold answer of the task in the benchmark itself (an oracle-ish baseline: it peeks at the label distribution) |
 * | `null` | no model: assembles the prompt and decodes a canned reply (harness overhead) |
 *
 * A backend throws on failure; the evaluator records that as an error (never as a wrong answer).
 */
import { extname, isAbsolute, join } from 'node:path';

import { askModel, buildModelPrompt, sampleVideoFrames, summarizeFaces, EXPRESSION_TO_EKMAN7, type Perception } from '../perception.js';
import type { ChatMessage } from '../chat_template.js';
import { decodeLabel, decodeOpenEmotion, decodeYesNo } from '../decode_result.js';
import { buildEmoPrompt, type EmoPrompt, type EmoPromptOptions, type GuidanceLevel } from '../emoprompt.js';
import { CANONICAL_EMOTIONS } from '../emotion_lexicon.js';
import { EmollmError } from '../errors.js';
import { FACE_EXPRESSIONS, FaceAnalyzer } from '../face.js';
import type { ImageInput } from '../image.js';
import { DEFAULT_MAX_RESPONSE_BYTES, limitOption } from '../limits.js';
import type { Device } from '../runtime.js';
import { loadModel, type Model } from '../model.js';
import { confinedPath, readRegularFile } from '../safe_fs.js';
import { withServeScoring } from '../serve/client.js';
import { hashString, rng } from './metrics.js';
import { PerceptionCache, type PerceptionCacheOptions } from './perception_cache.js';
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
  /** Whether the backend runs the face perspective for the model (native models); absent where it does not apply. */
  readonly face?: boolean;
}

const YES_NO = new Set<BenchTask>(['hate', 'humor', 'sarcasm']);

/** The options a sample is answered from (closed tasks: its options; yes/no: yes, no). */
export function sampleLabels(s: BenchSample): readonly string[] | undefined {
  if (YES_NO.has(s.task)) return s.options ?? ['yes', 'no'];
  return s.options;
}

/**
 * Absolute path of a sample's media file under the media root (null without media). Benchmark
 * files are untrusted: an absolute path or one with a `..` segment throws `ERR_UNSAFE_PATH`
 * (the evaluator also checks the real path with {@link resolveMediaPath} before a backend runs).
 */
export function mediaPath(s: BenchSample, mediaRoot: string): string | null {
  if (!s.media) return null;
  const rel = s.media.path;
  if (isAbsolute(rel) || /^[a-zA-Z]:[\\/]/.test(rel))
    throw new EmollmError('ERR_UNSAFE_PATH', `${s.id}: media path ${JSON.stringify(rel)} is absolute; benchmark media paths must be relative to the media root`);
  if (rel.split(/[\\/]+/).includes('..') || rel.includes('\0'))
    throw new EmollmError('ERR_UNSAFE_PATH', `${s.id}: media path ${JSON.stringify(rel)} may not contain ".." or NUL: it must stay under the media root`);
  return join(mediaRoot, rel);
}

/** {@link mediaPath} with symlinks resolved: rejects `ERR_UNSAFE_PATH` when the real file lies outside the media root. */
export async function resolveMediaPath(s: BenchSample, mediaRoot: string): Promise<string | null> {
  if (!s.media) return null;
  mediaPath(s, mediaRoot);
  return confinedPath(mediaRoot, s.media.path);
}

function unparsed(reason: string, raw: string | null = null): Prediction {
  return { raw, label: null, probabilities: null, unparsed: true, reason };
}

/** The sample's images: the image file, or `frames` frames of its video (PNG buffers). */
async function sampleImages(s: BenchSample, mediaRoot: string, frames: number, signal: AbortSignal): Promise<ImageInput[]> {
  const p = await resolveMediaPath(s, mediaRoot);
  if (p === null || !s.media) return [];
  if (s.media.type === 'image') return [p];
  const fr = await sampleVideoFrames(p, frames, signal);
  return fr.map((f) => f.png);
}

/** The EmoPrompt of a sample (images given as they will be sent). */
export function samplePrompt(s: BenchSample, images: readonly ImageInput[], guidance: GuidanceLevel = 'full', nativeVideo = false): EmoPrompt {
  return buildEmoPrompt({
    ...samplePromptOptions(s, guidance),
    images,
    media: s.media?.type === 'video' ? 'video' : 'image',
    // Qwen2-VL: a video sample's frames as one native video part
    ...(nativeVideo ? { nativeVideo: true } : {}),
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
  /** Video frames sampled per file for the face perspective (default 8, as `analyze`). */
  frames?: number;
  /** Of those, frames given to the model (default 4, as `analyze`). */
  modelFrames?: number;
  /** emo-o generation budget (default 32 tokens). */
  maxTokens?: number;
  /** EmoPrompt guidance level (default 'full'). */
  guidance?: GuidanceLevel;
  /**
   * The face perspective (default true): faces found on each image / sampled frame become EmoPrompt
   * cues and per-image face boxes, exactly as `analyze` gives them (lib/perception.ts).
   */
  face?: boolean;
  /** A preloaded face analyzer (default: the shared one). */
  faces?: FaceAnalyzer;
}

/** The EmoPrompt options of a sample (what `analyze` would be given for it), without images. */
export function samplePromptOptions(s: BenchSample, guidance: GuidanceLevel = 'full'): Omit<EmoPromptOptions, 'images' | 'media'> {
  const closed = s.task === 'emo-c' || s.task === 'intent';
  return {
    task: s.task,
    guidance,
    ...(closed && s.options ? { labels: s.options } : {}),
    ...(s.task === 'emo-c' && !s.options ? { taxonomy: 'ekman7' as const } : {}),
    ...(s.text !== undefined ? { text: s.text } : {}),
    ...(s.context !== undefined ? { context: s.context } : {}),
    ...(s.instruction !== undefined ? { question: s.instruction } : {}),
  };
}

/**
 * The native engine. Each sample's media goes through the same perception as `analyze` (frames,
 * faces, cues, boxes: lib/perception.ts), cached per media file for the run.
 */
export function nativeBackend(model: Model, options: NativeBackendOptions = {}): Backend & { readonly perception: PerceptionCache } {
  const face = options.face ?? true;
  const cacheOptions: PerceptionCacheOptions = {};
  if (options.frames !== undefined) cacheOptions.frames = options.frames;
  if (!face) cacheOptions.faces = false;
  else if (options.faces) cacheOptions.faces = options.faces;
  const cache = new PerceptionCache(cacheOptions);
  const empty: Perception = {
    media: 'image',
    images: [],
    frames: [],
    summary: summarizeFaces([]),
    face: false,
  };
  return {
    name: `native:${model.path}`,
    maxConcurrency: 1, // one context per model: calls run in order anyway
    face,
    perception: cache,
    async predict(s, mediaRoot, signal) {
      const path = mediaPath(s, mediaRoot);
      const p = path === null ? empty : await cache.get(path, s.media?.type === 'video', signal);
      const prompt = await buildModelPrompt(model, p, {
        ...samplePromptOptions(s, options.guidance),
        ...(options.modelFrames !== undefined ? { modelFrames: options.modelFrames } : {}),
      });
      const a = await askModel(model, prompt, { maxTokens: options.maxTokens ?? 32, signal });
      if (a.outcome === 'label') return { raw: null, label: a.label, probabilities: a.distribution, unparsed: false };
      return decodeForSample(s, a.text, []);
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
  /**
   * The bearer token sent as `authorization`. Only this option sets it (the environment is never
   * read implicitly; the CLI's `--api-key-env NAME` reads the variable you name). It is refused
   * (`ERR_INSECURE`) for a plain `http://` URL whose host is not loopback (127.0.0.0/8, ::1, localhost).
   */
  apiKey?: string;
  /** Largest response body read, in bytes (default 8 MiB); larger replies fail with `ERR_LIMIT_EXCEEDED`. */
  maxResponseBytes?: number;
  frames?: number;
  guidance?: GuidanceLevel;
  /** For tests: the sleep used between retries. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/** Largest image file the HTTP backend uploads (64 MiB). */
const MAX_UPLOAD_IMAGE_BYTES = 64 * 1024 * 1024;

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

/** Chat messages in the OpenAI wire form: images as data URLs (files read as size-limited regular files). */
export async function toOpenAiMessages(messages: readonly ChatMessage[]): Promise<unknown[]> {
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
          const bytes = await readRegularFile(img, { maxBytes: MAX_UPLOAD_IMAGE_BYTES });
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

/** True for loopback hosts: localhost, 127.0.0.0/8, ::1. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Throws `ERR_INSECURE` when a credential would travel unencrypted off this machine. */
export function assertKeyMaySend(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new EmollmError('ERR_INVALID_ARGUMENT', `invalid endpoint URL ${JSON.stringify(url)}`, { cause });
  }
  if (u.protocol === 'https:') return;
  if (u.protocol === 'http:' && isLoopbackHost(u.hostname)) return;
  throw new EmollmError(
    'ERR_INSECURE',
    `refusing to send an API key over plain ${u.protocol}// to ${u.hostname} (not loopback): use https://, or drop the key`,
  );
}

/** Reads a response body, failing with `ERR_LIMIT_EXCEEDED` (and cancelling the stream) past `max` bytes. */
async function readBodyLimited(res: Response, max: number, url: string): Promise<string> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > max) {
    await res.body?.cancel().catch(() => undefined);
    throw new EmollmError('ERR_LIMIT_EXCEEDED', `${url}: response of ${declared} bytes exceeds the limit of ${max} bytes (maxResponseBytes)`);
  }
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel().catch(() => undefined);
      throw new EmollmError('ERR_LIMIT_EXCEEDED', `${url}: response exceeds the limit of ${max} bytes (maxResponseBytes)`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Parses `http://host:port/v1#model-name`. */
export function parseEndpoint(spec: string): { baseUrl: string; model: string } {
  const hash = spec.indexOf('#');
  const baseUrl = (hash < 0 ? spec : spec.slice(0, hash)).replace(/\/+$/, '').replace(/\/chat\/completions$/, '');
  const model = hash < 0 ? '' : decodeURIComponent(spec.slice(hash + 1));
  if (model === '') throw new EmollmError('ERR_INVALID_ARGUMENT', `endpoint ${JSON.stringify(spec)} names no model: use http://host:port/v1#model-name`);
  return { baseUrl, model };
}

/** One exchange with an endpoint: the reply's status and body text. */
export interface EndpointReply {
  status: number;
  text: string;
  url: string;
}

/**
 * Requests to an OpenAI-compatible endpoint under one set of rules, shared by the chat backend and
 * the emollm scoring client: the API key only as given (never read from the environment), never
 * over plain http off this machine and never through a redirect; a response size limit; a timeout
 * per attempt; network errors, 429 and 5xx retried with backoff, then `ERR_INTERNAL` naming the
 * last cause (with its errno code, e.g. ECONNREFUSED). Other statuses are returned to the caller.
 */
export function endpointRequester(options: HttpBackendOptions): (path: string, body: string | undefined, signal: AbortSignal) => Promise<EndpointReply> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const retries = options.retries ?? 4;
  const backoff = options.backoffMs ?? 500;
  const sleep = options.sleep ?? abortableSleep;
  const base = options.baseUrl.replace(/\/+$/, '');
  const apiKey = options.apiKey;
  if (apiKey !== undefined) assertKeyMaySend(base);
  const maxResponseBytes = limitOption('maxResponseBytes', options.maxResponseBytes, DEFAULT_MAX_RESPONSE_BYTES);

  return async (path, body, signal) => {
    const url = `${base}${path}`;
    let last = '';
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await sleep(backoff * 2 ** (attempt - 1) * (1 + Math.random() * 0.5), signal);
      if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted');
      const timeout = AbortSignal.timeout(timeoutMs);
      let res: Response;
      try {
        res = await fetch(url, {
          method: body === undefined ? 'GET' : 'POST',
          headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
          ...(body === undefined ? {} : { body }),
          // a redirect could carry the key elsewhere (or to plain http): refuse it
          ...(apiKey ? { redirect: 'error' as const } : {}),
          signal: AbortSignal.any([signal, timeout]),
        });
      } catch (e) {
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted', { cause: e });
        const code = ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code;
        last = timeout.aborted ? `timed out after ${timeoutMs} ms` : `network error: ${(e as Error).message}${code ? ` (${code})` : ''}`;
        continue;
      }
      let text: string;
      try {
        text = await readBodyLimited(res, maxResponseBytes, url);
      } catch (e) {
        if (e instanceof EmollmError && e.code === 'ERR_LIMIT_EXCEEDED') throw e;
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted', { cause: e });
        last = timeout.aborted ? `timed out after ${timeoutMs} ms` : `network error reading the body: ${(e as Error).message}`;
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        last = `HTTP ${res.status}: ${text.slice(0, 200)}`;
        continue;
      }
      return { status: res.status, text, url };
    }
    throw new EmollmError('ERR_INTERNAL', `${url}: gave up after ${retries + 1} tries (${last})`);
  };
}

export function httpBackend(options: HttpBackendOptions): Backend {
  const request = endpointRequester(options);

  async function post(body: string, signal: AbortSignal): Promise<string> {
    const { status, text, url } = await request('/chat/completions', body, signal);
    if (status < 200 || status >= 300) throw new EmollmError('ERR_INVALID_ARGUMENT', `${url}: HTTP ${status}: ${text.slice(0, 300)}`);
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
  // the same perception as `analyze` (lib/perception.ts), once per media file
  const cache = new PerceptionCache({ ...(faces ? { faces } : {}), ...(options.frames !== undefined ? { frames: options.frames } : {}) });
  return {
    name: 'face',
    maxConcurrency: 1,
    async predict(s, mediaRoot, signal) {
      if (s.task !== 'emo-c' && s.task !== 'emo-o') return unparsed(`the face perspective cannot answer ${s.task}`);
      const path = mediaPath(s, mediaRoot);
      if (!s.media || path === null) return unparsed('no media: no face to read');
      const summary = (await cache.get(path, s.media.type === 'video', signal)).summary;
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
  /** Native models: run the face perspective and pass its cues and boxes (default true; `--no-face` sets false). */
  face?: boolean;
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
  if (/^https?:\/\//i.test(spec)) {
    const o: HttpBackendOptions = { ...parseEndpoint(spec), ...(options.guidance ? { guidance: options.guidance } : {}), ...options.http };
    return withServeScoring(httpBackend(o), o); // emollm serve: closed tasks scored on the server, as in process
  }
  const model = await loadModel(spec, {
    ...(options.mmproj ? { mmproj: options.mmproj } : {}),
    ...(options.threads !== undefined ? { threads: options.threads } : {}),
    ...(options.device !== undefined ? { device: options.device } : {}),
  });
  if (!model.info.vision) {
    await model.close();
    throw new EmollmError('ERR_UNSUPPORTED', `${spec} is not a multimodal (LLaVA / EmoLLM) model`);
  }
  return nativeBackend(model, { ...(options.guidance ? { guidance: options.guidance } : {}), ...(options.face !== undefined ? { face: options.face } : {}) });
}
