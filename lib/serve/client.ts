/**
 * The evaluator's view of `emollm serve`: when `--model http://…` names an emollm server (its
 * /v1/models entry says `owned_by: "emollm"` with `emollm.scoring`), closed-set samples are
 * answered by option scoring on the server (`emollm_options`) exactly as the in-process native
 * backend answers them; open-set samples go through the plain OpenAI path (greedy text, decoded
 * here). Any other endpoint gets the plain OpenAI backend unchanged.
 */
import { EmollmError } from '../errors.js';
import type { Backend, HttpBackendOptions, Prediction } from '../emobench/backends.js';
import { samplePrompt, mediaPath } from '../emobench/backends.js';
import { sampleVideoFrames } from '../analyze.js';
import type { ImageInput } from '../image.js';
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';

const MIME: Record<string, string> = { '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp', '.gif': 'image/gif', '.bmp': 'image/bmp' };

interface ScoredReply {
  emollm?: { label?: unknown; probabilities?: unknown };
}

async function images(s: Parameters<Backend['predict']>[0], mediaRoot: string, frames: number, signal: AbortSignal): Promise<ImageInput[]> {
  const p = mediaPath(s, mediaRoot);
  if (p === null || !s.media) return [];
  if (s.media.type === 'image') return [p];
  return (await sampleVideoFrames(p, frames, signal)).map((f) => f.png);
}

async function dataUrl(img: ImageInput): Promise<string> {
  if (typeof img === 'string') return `data:${MIME[extname(img).toLowerCase()] ?? 'image/jpeg'};base64,${(await readFile(img)).toString('base64')}`;
  if (img instanceof Uint8Array) return `data:image/png;base64,${Buffer.from(img).toString('base64')}`;
  throw new EmollmError('ERR_UNSUPPORTED', 'only files and encoded images can be sent');
}

/**
 * Wraps the plain OpenAI backend: the first prediction asks the server what it is, and an emollm
 * server gets closed-set samples as scoring requests.
 */
export function withServeScoring(inner: Backend, options: HttpBackendOptions): Backend {
  const base = options.baseUrl.replace(/\/+$/, '');
  const apiKey = options.apiKey ?? process.env.OPENAI_API_KEY;
  const headers = { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) };
  const timeoutMs = options.timeoutMs ?? 60_000;
  const retries = options.retries ?? 4;
  let probe: Promise<boolean> | undefined;

  /**
   * Whether the endpoint is an emollm server. A definite answer only: network errors, 429 and 5xx
   * are retried (a transient failure must not switch the whole run to the text path); a 4xx or a
   * list without the model means a plain OpenAI-compatible server.
   */
  async function isEmollm(signal: AbortSignal): Promise<boolean> {
    let last = '';
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, (options.backoffMs ?? 500) * 2 ** (attempt - 1)));
      if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted');
      let res: Response;
      let text: string;
      try {
        res = await fetch(`${base}/models`, { headers, signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
        text = await res.text();
      } catch (e) {
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted', { cause: e });
        last = (e as Error).message;
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        last = `HTTP ${res.status}`;
        continue;
      }
      if (!res.ok) return false;
      try {
        const j = JSON.parse(text) as { data?: Array<{ id?: string; owned_by?: string; emollm?: { scoring?: boolean } }> };
        return !!j.data?.some((m) => m.id === options.model && m.owned_by === 'emollm' && m.emollm?.scoring === true);
      } catch {
        return false;
      }
    }
    throw new EmollmError('ERR_INTERNAL', `${base}/models: gave up after ${retries + 1} tries (${last})`);
  }

  async function score(body: string, signal: AbortSignal): Promise<ScoredReply> {
    let last = '';
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, (options.backoffMs ?? 500) * 2 ** (attempt - 1)));
      if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted');
      let res: Response;
      let text: string;
      try {
        res = await fetch(`${base}/chat/completions`, { method: 'POST', headers, body, signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
        text = await res.text();
      } catch (e) {
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted', { cause: e });
        last = (e as Error).message;
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        last = `HTTP ${res.status}: ${text.slice(0, 200)}`;
        continue;
      }
      if (!res.ok) throw new EmollmError('ERR_INVALID_ARGUMENT', `${base}/chat/completions: HTTP ${res.status}: ${text.slice(0, 300)}`);
      try {
        return JSON.parse(text) as ScoredReply;
      } catch (cause) {
        throw new EmollmError('ERR_MALFORMED_FILE', `${base}/chat/completions: the response is not JSON`, { cause });
      }
    }
    throw new EmollmError('ERR_INTERNAL', `${base}/chat/completions: gave up after ${retries + 1} tries (${last})`);
  }

  return {
    name: inner.name,
    maxConcurrency: inner.maxConcurrency,
    async predict(s, mediaRoot, signal): Promise<Prediction> {
      if (s.task !== 'emo-o') {
        probe ??= isEmollm(signal);
        probe.catch(() => (probe = undefined)); // a failed probe is asked again by the next sample
      }
      if (s.task === 'emo-o' || !(await probe!)) return inner.predict(s, mediaRoot, signal);
      const imgs = await images(s, mediaRoot, options.frames ?? 4, signal);
      const prompt = samplePrompt(s, imgs, options.guidance);
      const messages = [];
      for (const m of prompt.messages) {
        if (typeof m.content === 'string') messages.push({ role: m.role, content: m.content });
        else {
          const parts = [];
          for (const p of m.content)
            if (p.type === 'text') parts.push({ type: 'text', text: (p as { text: string }).text });
            else if (p.type === 'image') parts.push({ type: 'image_url', image_url: { url: await dataUrl((p as unknown as { image: ImageInput }).image) } });
          messages.push({ role: m.role, content: parts });
        }
      }
      const r = await score(JSON.stringify({ model: options.model, messages, emollm_options: prompt.labels }), signal);
      const label = r.emollm?.label;
      const probabilities = r.emollm?.probabilities;
      if (typeof label !== 'string' || typeof probabilities !== 'object' || probabilities === null)
        throw new EmollmError('ERR_MALFORMED_FILE', `${base}/chat/completions: the scoring reply has no emollm.label / emollm.probabilities`);
      return { raw: null, label, probabilities: probabilities as Record<string, number>, unparsed: false };
    },
    ...(inner.close ? { close: () => inner.close!() } : {}),
  };
}
