/**
 * The evaluator's view of `emollm serve`: when `--model http://…` names an emollm server (its
 * /v1/models entry says `owned_by: "emollm"` with `emollm.scoring`), closed-set samples are
 * answered by option scoring on the server (`emollm_options`) exactly as the in-process native
 * backend answers them; open-set samples go through the plain OpenAI path (greedy text, decoded
 * here). Any other endpoint gets the plain OpenAI backend unchanged. Every request goes through
 * the same rules as the OpenAI backend's (endpointRequester: explicit key only, size limit,
 * retries), and media is read through the media-root confinement.
 */
import { EmollmError } from '../errors.js';
import type { Backend, HttpBackendOptions, Prediction } from '../emobench/backends.js';
import { endpointRequester, resolveMediaPath, samplePrompt, toOpenAiMessages } from '../emobench/backends.js';
import { sampleVideoFrames } from '../perception.js';
import type { ImageInput } from '../image.js';

interface ScoredReply {
  emollm?: { label?: unknown; probabilities?: unknown };
}

async function images(s: Parameters<Backend['predict']>[0], mediaRoot: string, frames: number, signal: AbortSignal): Promise<ImageInput[]> {
  const p = await resolveMediaPath(s, mediaRoot);
  if (p === null || !s.media) return [];
  if (s.media.type === 'image') return [p];
  return (await sampleVideoFrames(p, frames, signal)).map((f) => f.png);
}

/**
 * Wraps the plain OpenAI backend: the first prediction asks the server what it is, and an emollm
 * server gets closed-set samples as scoring requests.
 */
export function withServeScoring(inner: Backend, options: HttpBackendOptions): Backend {
  const request = endpointRequester(options);
  let probe: Promise<boolean> | undefined;

  /**
   * Whether the endpoint is an emollm server. A definite answer only: network errors, 429 and 5xx
   * are retried by the requester (a transient failure must not switch the whole run to the text
   * path) and end in its error; a 4xx or a list without the model means a plain server.
   */
  async function isEmollm(signal: AbortSignal): Promise<boolean> {
    const { status, text } = await request('/models', undefined, signal);
    if (status < 200 || status >= 300) return false;
    try {
      const j = JSON.parse(text) as { data?: Array<{ id?: string; owned_by?: string; emollm?: { scoring?: boolean } }> };
      return !!j.data?.some((m) => m.id === options.model && m.owned_by === 'emollm' && m.emollm?.scoring === true);
    } catch {
      return false;
    }
  }

  async function score(body: string, signal: AbortSignal): Promise<ScoredReply> {
    const { status, text, url } = await request('/chat/completions', body, signal);
    if (status < 200 || status >= 300) throw new EmollmError('ERR_INVALID_ARGUMENT', `${url}: HTTP ${status}: ${text.slice(0, 300)}`);
    try {
      return JSON.parse(text) as ScoredReply;
    } catch (cause) {
      throw new EmollmError('ERR_MALFORMED_FILE', `${url}: the response is not JSON`, { cause });
    }
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
      const prompt = samplePrompt(s, await images(s, mediaRoot, options.frames ?? 4, signal), options.guidance);
      const messages = await toOpenAiMessages(prompt.messages);
      const r = await score(JSON.stringify({ model: options.model, messages, emollm_options: prompt.labels }), signal);
      const label = r.emollm?.label;
      const probabilities = r.emollm?.probabilities;
      if (typeof label !== 'string' || typeof probabilities !== 'object' || probabilities === null)
        throw new EmollmError('ERR_MALFORMED_FILE', `${options.baseUrl}: the scoring reply has no emollm.label / emollm.probabilities`);
      return { raw: null, label, probabilities: probabilities as Record<string, number>, unparsed: false };
    },
    ...(inner.close ? { close: () => inner.close!() } : {}),
  };
}
