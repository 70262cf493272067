/**
 * `emollm serve`: an OpenAI-compatible HTTP server over one loaded model (fastify, JSON-schema
 * validated requests).
 *
 * | route | |
 * |---|---|
 * | `POST /v1/chat/completions` | chat; text and `image_url` parts (data URLs, or local paths under the media root); `stream: true` answers with server-sent events. Extension: `emollm_options: [..]` scores those options after the conversation (the option scoring `classify` runs in process) and answers the best one, with `emollm.probabilities` |
 * | `GET /v1/models` | the served model (`owned_by: "emollm"`, `emollm.scoring: true`) |
 * | `POST /v1/analyze` | the `emollm.analysis/1` JSON of `emollm analyze` for an image |
 * | `GET /health` | 200 `{status: "ok"}`; 503 while draining |
 * | `GET /metrics` | Prometheus: queue depth, requests, latency histograms, tokens and tokens/s; the core scheduler's counters (`emollm_core_*`: its queue, steps, rows per step, prefill chunks) |
 *
 * Every model call goes through the {@link Scheduler}: a bounded queue (429 + Retry-After when
 * full), a per-request timeout (504), cancellation when the client goes away. `close()` stops
 * accepting connections and drains the requests already admitted before it closes the model.
 */
import { basename } from 'node:path';

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';

import { analyze, ANALYZE_TASKS, type AnalyzeTask } from '../analyze.js';
import type { ChatContentPart, ChatMessage } from '../chat_template.js';
import { classify } from '../decode_result.js';
import { EmollmError } from '../errors.js';
import { FaceAnalyzer } from '../face.js';
import type { GenerateOptions, GenerationResult, Model, SequenceStats } from '../model.js';
import { bearerChecker } from './auth.js';
import { resolveImage, RequestError, type MediaPolicy } from './media.js';
import { Counter, CounterFn, Gauge, Histogram, LATENCY_BUCKETS, RATE_BUCKETS, Registry } from './metrics.js';
import { QueueFullError, Scheduler, TimeoutError } from './scheduler.js';

export interface ServeOptions {
  /** The loaded model (the server closes it on close() unless `keepModelOpen`). */
  model: Model;
  /** The id clients name it by (default: the model folder's name). */
  modelName?: string;
  /** Accepted bearer tokens; empty: no authentication. */
  apiKeys?: readonly string[];
  /** Real path that local image paths must lie under; undefined: local paths refused. */
  mediaRoot?: string;
  /** Request body limit in bytes (default 32 MiB). */
  maxBodyBytes?: number;
  /** One image's limit in bytes (default 16 MiB). */
  maxImageBytes?: number;
  /** Requests waiting for the model beyond the ones it runs (default 16). */
  maxQueue?: number;
  /** Requests the model runs at once (default: the model's `maxSequences`, the sequences its core decodes together). */
  maxSequences?: number;
  /** Per-request time limit, queueing included (default 120 s). */
  requestTimeoutMs?: number;
  /** Most tokens a request may ask for (default 4096). */
  maxTokensLimit?: number;
  /** Faces for /v1/analyze (loaded on first use otherwise). */
  faces?: FaceAnalyzer;
  keepModelOpen?: boolean;
  /** Log requests (fastify's logger); default false. */
  logger?: boolean;
}

export interface EmollmServer {
  readonly app: FastifyInstance;
  readonly scheduler: Scheduler;
  /** Starts listening; resolves to the address (`http://host:port`). */
  listen(port: number, host?: string): Promise<string>;
  /**
   * Graceful shutdown: stops accepting, lets admitted requests finish (at most `timeoutMs`, then
   * cancels them), closes the model.
   */
  close(timeoutMs?: number): Promise<void>;
}

// ---- request schemas (fastify validates with ajv; unknown top-level fields are ignored as OpenAI clients send many)

const contentPart = {
  type: 'object',
  required: ['type'],
  properties: {
    type: { type: 'string', enum: ['text', 'image_url', 'input_text'] },
    text: { type: 'string' },
    image_url: {
      anyOf: [
        { type: 'string', minLength: 1 },
        { type: 'object', required: ['url'], properties: { url: { type: 'string', minLength: 1 }, detail: { type: 'string' } } },
      ],
    },
  },
} as const;

const chatSchema = {
  type: 'object',
  required: ['messages'],
  properties: {
    model: { type: 'string' },
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 256,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { type: 'string', enum: ['system', 'user', 'assistant'] },
          content: { anyOf: [{ type: 'string' }, { type: 'array', maxItems: 64, items: contentPart }] },
        },
      },
    },
    max_tokens: { type: 'integer', minimum: 1 },
    max_completion_tokens: { type: 'integer', minimum: 1 },
    temperature: { type: 'number', minimum: 0, maximum: 2 },
    top_p: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    top_k: { type: 'integer', minimum: 0 },
    seed: { type: 'integer' },
    n: { type: 'integer', minimum: 1, maximum: 1 },
    stop: { anyOf: [{ type: 'string' }, { type: 'array', maxItems: 4, items: { type: 'string', minLength: 1 } }] },
    stream: { type: 'boolean' },
    stream_options: { type: 'object', properties: { include_usage: { type: 'boolean' } } },
    emollm_options: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 512 } },
  },
} as const;

const analyzeSchema = {
  type: 'object',
  required: ['image'],
  additionalProperties: false,
  properties: {
    image: { type: 'string', minLength: 1 },
    task: { type: 'string', enum: [...ANALYZE_TASKS] },
    text: { type: 'string', maxLength: 8192 },
    labels: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', minLength: 1 } },
  },
} as const;

interface ChatBody {
  model?: string;
  messages: Array<{ role: string; content: string | Array<{ type: string; text?: string; image_url?: string | { url: string } }> }>;
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  stop?: string | string[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  emollm_options?: string[];
}

interface AnalyzeBody {
  image: string;
  task?: AnalyzeTask;
  text?: string;
  labels?: string[];
}

const FINISH: Record<GenerationResult['stopReason'], string> = {
  eos: 'stop',
  'stop-token': 'stop',
  'stop-string': 'stop',
  'max-tokens': 'length',
  'context-full': 'length',
  aborted: 'stop',
};

function openAiError(reply: FastifyReply, status: number, message: string, type: string, code?: string): FastifyReply {
  return reply.code(status).send({ error: { message, type, code: code ?? null, param: null } });
}

/** Status code for an error thrown while serving a request. */
function statusOf(e: unknown): { status: number; type: string } {
  if (e instanceof RequestError) return { status: e.status, type: 'invalid_request_error' };
  if (e instanceof QueueFullError) return { status: 429, type: 'rate_limit_error' };
  if (e instanceof TimeoutError) return { status: 504, type: 'timeout_error' };
  if (e instanceof EmollmError) {
    if (e.code === 'ERR_ABORTED') return { status: 499, type: 'cancelled' };
    if (e.code === 'ERR_INVALID_ARGUMENT' || e.code === 'ERR_BAD_IMAGE' || e.code === 'ERR_UNSUPPORTED') return { status: 400, type: 'invalid_request_error' };
    // the client's input over a limit (a prompt past maxPromptChars, an image past maxPixels)
    if (e.code === 'ERR_LIMIT_EXCEEDED') return { status: 413, type: 'invalid_request_error' };
  }
  return { status: 500, type: 'server_error' };
}

export async function createServer(options: ServeOptions): Promise<EmollmServer> {
  const model = options.model;
  const modelName = options.modelName ?? basename(model.path.replace(/[\\/]+$/, ''));
  const maxImageBytes = options.maxImageBytes ?? 16 * 1024 * 1024;
  const policy: MediaPolicy = { root: options.mediaRoot, maxImageBytes };
  const maxTokensLimit = options.maxTokensLimit ?? 4096;
  const scheduler = new Scheduler({
    maxSequences: options.maxSequences ?? model.maxSequences,
    maxQueue: options.maxQueue ?? 16,
    timeoutMs: options.requestTimeoutMs ?? 120_000,
  });
  const authorized = bearerChecker(options.apiKeys ?? []);
  let draining = false;
  let faces: Promise<FaceAnalyzer> | undefined = options.faces ? Promise.resolve(options.faces) : undefined;
  // requests admitted and not yet answered, so close() can cancel them after its drain timeout
  const inFlight = new Set<AbortController>();

  // ---- metrics
  const registry = new Registry();
  registry.add(new Gauge('emollm_queue_depth', 'Requests waiting for the model.', () => scheduler.queueDepth));
  registry.add(new Gauge('emollm_active_sequences', 'Requests the model is running.', () => scheduler.active));
  registry.add(new Gauge('emollm_max_sequences', 'Requests the model runs at once.', () => scheduler.maxSequences));
  // the core scheduler's own counters (model.stats(); zero before the first call and once closed):
  // rate(emollm_core_step_rows_total) / rate(emollm_core_steps_total) is the mean batch rows per step
  const core = (k: keyof SequenceStats) => (): number => {
    try {
      return Number(model.stats()[k]);
    } catch {
      return 0;
    }
  };
  registry.add(new Gauge('emollm_core_queued_sequences', 'Calls waiting for a KV slot in the core scheduler.', core('queued')));
  registry.add(new Gauge('emollm_core_active_sequences', 'Sequences holding a KV slot.', core('active')));
  registry.add(new Gauge('emollm_core_prefilling_sequences', 'Sequences whose prompt is still being evaluated (chunked prefill).', core('prefilling')));
  registry.add(new Gauge('emollm_core_batch_tokens', 'Token budget of one scheduler step (0: the default, before the first call).', core('batchTokens')));
  registry.add(new Gauge('emollm_core_last_step_rows', 'Token rows of the latest scheduler step.', core('lastStepRows')));
  registry.add(new Gauge('emollm_core_max_step_rows', 'Most token rows in one scheduler step.', core('maxStepRows')));
  registry.add(new CounterFn('emollm_core_steps_total', 'Scheduler step passes (one batched forward pass each).', core('steps')));
  registry.add(new CounterFn('emollm_core_step_rows_total', 'Token rows of all scheduler steps (decode, option and prompt rows).', core('stepRows')));
  registry.add(new CounterFn('emollm_core_decode_rows_total', 'Decode and option rows of all scheduler steps.', core('decodedTokens')));
  registry.add(new CounterFn('emollm_core_prefill_chunks_total', 'Prompt chunks evaluated.', core('prefillChunks')));
  registry.add(new CounterFn('emollm_core_prefill_tokens_total', 'Prompt positions evaluated.', core('prefillTokens')));
  registry.add(new CounterFn('emollm_core_mixed_steps_total', 'Steps carrying prompt rows beside decoding sequences.', core('mixedSteps')));
  registry.add(new Gauge('emollm_core_kv_blocks_total', 'Blocks in the paged KV cache pool.', core('kvBlocksTotal')));
  registry.add(new Gauge('emollm_core_kv_blocks_used', 'KV cache blocks in use (running sequences and cached prefixes).', core('kvBlocksUsed')));
  registry.add(new Gauge('emollm_core_kv_blocks_shared', 'KV cache blocks shared by two sequences or more.', core('kvBlocksShared')));
  registry.add(new Gauge('emollm_core_kv_blocks_cached', 'KV cache blocks held only by finished calls\' cached prompts (released on demand).', core('kvBlocksCached')));
  registry.add(new Gauge('emollm_core_kv_block_bytes', 'Bytes of one KV cache block.', core('kvBytesPerBlock')));
  registry.add(new CounterFn('emollm_core_kv_waits_total', 'Calls that waited at admission for KV cache blocks.', core('kvWaits')));
  registry.add(new CounterFn('emollm_core_kv_preemptions_total', 'Running sequences preempted for KV cache blocks (requeued and recomputed).', core('kvPreemptions')));
  registry.add(new CounterFn('emollm_core_kv_recomputed_tokens_total', 'Positions evaluated again after a preemption.', core('kvRecomputedTokens')));
  registry.add(new CounterFn('emollm_core_reused_tokens_total', 'Prompt positions taken from a KV cache instead of recomputed.', core('reusedTokens')));
  registry.add(new CounterFn('emollm_core_reused_logits_total', 'Prompts found cached whole with their last logits (no pass before their options or tokens).', core('reusedLogits')));
  const requests = registry.add(new Counter('emollm_requests_total', 'HTTP requests by route and status code.'));
  const latency = registry.add(new Histogram('emollm_request_duration_seconds', 'Request latency by route, queueing included.', LATENCY_BUCKETS));
  const queueWait = registry.add(new Histogram('emollm_queue_wait_seconds', 'Time requests waited for the model.', LATENCY_BUCKETS));
  const ttft = registry.add(new Histogram('emollm_time_to_first_token_seconds', 'Time from admission to the first streamed token.', LATENCY_BUCKETS));
  const promptTokens = registry.add(new Counter('emollm_prompt_tokens_total', 'Prompt tokens processed.'));
  const generatedTokens = registry.add(new Counter('emollm_generated_tokens_total', 'Tokens generated (rate() of it: tokens/s).'));
  const tokenRate = registry.add(new Histogram('emollm_generation_tokens_per_second', 'Generated tokens per second of each generation.', RATE_BUCKETS));
  const rejected = registry.add(new Counter('emollm_rejected_total', 'Requests refused before reaching the model, by reason.'));

  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: options.maxBodyBytes ?? 32 * 1024 * 1024,
    // after close() starts, idle keep-alive connections are closed; busy ones finish their request
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });

  app.addHook('onRequest', async (req, reply) => {
    (req as FastifyRequest & { t0?: number }).t0 = performance.now();
    if (req.url.startsWith('/v1/') && !authorized(req.headers.authorization)) {
      rejected.inc({ reason: 'unauthorized' });
      return openAiError(reply.header('www-authenticate', 'Bearer'), 401, 'missing or invalid API key (Authorization: Bearer <key>)', 'invalid_request_error', 'invalid_api_key');
    }
    if (draining && req.url.startsWith('/v1/')) {
      rejected.inc({ reason: 'draining' });
      return openAiError(reply.header('connection', 'close'), 503, 'the server is shutting down', 'server_error');
    }
  });
  // while draining, every answer closes its connection, so keep-alive clients do not hold shutdown open
  app.addHook('onSend', async (_req, reply, payload) => {
    if (draining) reply.header('connection', 'close');
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unknown';
    requests.inc({ route, code: String(reply.statusCode) });
    const t0 = (req as FastifyRequest & { t0?: number }).t0;
    if (t0 !== undefined && route !== '/metrics') latency.observe((performance.now() - t0) / 1000, { route });
  });
  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown; code?: string }, _req, reply) => {
    if (err.validation) return openAiError(reply, 400, err.message, 'invalid_request_error', 'invalid_body');
    if (err.statusCode === 413 || err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return openAiError(reply, 413, 'the request body is over the size limit', 'invalid_request_error', 'body_too_large');
    if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return openAiError(reply, err.statusCode, err.message, 'invalid_request_error');
    const { status, type } = statusOf(err);
    if (err instanceof QueueFullError) reply.header('retry-after', String(err.retryAfterSeconds));
    return openAiError(reply, status, err.message, type);
  });

  /** The request's signal: the client going away (before the reply is done) or shutdown's cancel. */
  function requestSignal(req: FastifyRequest, reply: FastifyReply): { signal: AbortSignal; done: () => void } {
    const ac = new AbortController();
    inFlight.add(ac);
    const onClose = (): void => {
      if (!reply.raw.writableFinished) ac.abort();
    };
    reply.raw.on('close', onClose);
    return {
      signal: ac.signal,
      done: () => {
        inFlight.delete(ac);
        reply.raw.off('close', onClose);
      },
    };
  }

  /** Runs a model call through the scheduler, timing its queue wait. */
  async function schedule<T>(signal: AbortSignal, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const queued = performance.now();
    try {
      return await scheduler.run(
        (s) => {
          queueWait.observe((performance.now() - queued) / 1000);
          return fn(s);
        },
        { signal },
      );
    } catch (e) {
      if (e instanceof QueueFullError) rejected.inc({ reason: 'queue_full' });
      if (e instanceof TimeoutError) rejected.inc({ reason: 'timeout' });
      throw e;
    }
  }

  async function toMessages(body: ChatBody): Promise<ChatMessage[]> {
    const out: ChatMessage[] = [];
    let images = 0;
    for (const m of body.messages) {
      if (typeof m.content === 'string') {
        // multimodal (llava-style) templates iterate content parts: plain text becomes one text part
        out.push({ role: m.role, content: model.info.vision ? [{ type: 'text', text: m.content }] : m.content });
        continue;
      }
      const parts: ChatContentPart[] = [];
      for (const p of m.content) {
        if (p.type === 'text' || p.type === 'input_text') parts.push({ type: 'text', text: p.text ?? '' });
        else {
          const url = typeof p.image_url === 'string' ? p.image_url : p.image_url?.url;
          if (!url) throw new RequestError(400, 'an image_url part needs image_url.url');
          if (++images > 16) throw new RequestError(400, 'at most 16 images a request');
          parts.push({ type: 'image', image: await resolveImage(url, policy) });
        }
      }
      out.push({ role: m.role, content: parts });
    }
    if (images > 0 && !model.info.vision) throw new RequestError(400, `${modelName} has no vision tower: it takes no images`);
    return out;
  }

  function checkModel(body: { model?: string }): void {
    if (body.model !== undefined && body.model !== '' && body.model !== modelName)
      throw new RequestError(404, `model ${JSON.stringify(body.model)} is not served here (this server serves ${JSON.stringify(modelName)})`);
  }

  function generateOptions(body: ChatBody, signal: AbortSignal): GenerateOptions {
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? 256;
    if (maxTokens > maxTokensLimit) throw new RequestError(400, `max_tokens ${maxTokens} is over this server's limit of ${maxTokensLimit}`);
    return {
      maxTokens,
      temperature: body.temperature ?? 1,
      ...(body.top_p !== undefined ? { topP: body.top_p } : {}),
      ...(body.top_k !== undefined ? { topK: body.top_k } : {}),
      ...(body.seed !== undefined ? { seed: body.seed } : {}),
      ...(body.stop !== undefined ? { stop: typeof body.stop === 'string' ? [body.stop] : body.stop } : {}),
      signal,
    };
  }

  const completionId = (): string => `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;

  app.get('/health', async (_req, reply) => {
    if (draining) return reply.code(503).send({ status: 'draining' });
    return { status: 'ok', model: modelName, queueDepth: scheduler.queueDepth, active: scheduler.active };
  });

  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(registry.render()));

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: modelName,
        object: 'model',
        created: 0,
        owned_by: 'emollm',
        emollm: { scoring: true, vision: !!model.info.vision, maxSequences: scheduler.maxSequences },
      },
    ],
  }));

  app.post<{ Body: ChatBody }>('/v1/chat/completions', { schema: { body: chatSchema } }, async (req, reply) => {
    const body = req.body;
    checkModel(body);
    if (body.emollm_options && body.stream) throw new RequestError(400, 'emollm_options cannot be streamed');
    const { signal, done } = requestSignal(req, reply);
    try {
      const messages = await toMessages(body);
      const id = completionId();
      const created = Math.floor(Date.now() / 1000);

      if (body.emollm_options) {
        const labels = body.emollm_options;
        const c = await schedule(signal, (s) => classify(model, messages, labels, { signal: s }));
        return {
          id,
          object: 'chat.completion',
          created,
          model: modelName,
          choices: [{ index: 0, message: { role: 'assistant', content: c.label }, finish_reason: 'stop', logprobs: null }],
          usage: null,
          emollm: { label: c.label, probability: c.probability, probabilities: c.distribution, margin: c.margin },
        };
      }

      if (!body.stream) {
        const r = await schedule(signal, async (s) => {
          const t = performance.now();
          const res = await model.generate(messages, generateOptions(body, s)).result;
          const sec = (performance.now() - t) / 1000;
          if (res.tokens.length > 0 && sec > 0) tokenRate.observe(res.tokens.length / sec);
          return res;
        });
        promptTokens.inc({}, r.promptTokens);
        generatedTokens.inc({}, r.tokens.length);
        return {
          id,
          object: 'chat.completion',
          created,
          model: modelName,
          choices: [{ index: 0, message: { role: 'assistant', content: r.text }, finish_reason: FINISH[r.stopReason], logprobs: null }],
          usage: { prompt_tokens: r.promptTokens, completion_tokens: r.tokens.length, total_tokens: r.promptTokens + r.tokens.length },
        };
      }

      // ---- streaming: the headers go out once the model has admitted the request, so a full
      // queue or an early failure still gets a plain JSON error status
      const chunk = (delta: Record<string, unknown>, finish: string | null): string =>
        `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: modelName, choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }] })}\n\n`;
      const admitted = performance.now();
      await schedule(signal, async (s) => {
        const gen = model.generate(messages, generateOptions(body, s));
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
        reply.raw.write(chunk({ role: 'assistant', content: '' }, null));
        let first = true;
        try {
          for await (const c of gen) {
            if (first && c.tokens.length > 0) {
              ttft.observe((performance.now() - admitted) / 1000);
              first = false;
            }
            if (c.text !== '') reply.raw.write(chunk({ content: c.text }, null));
          }
          const r = await gen.result;
          const sec = (performance.now() - admitted) / 1000;
          if (r.tokens.length > 0 && sec > 0) tokenRate.observe(r.tokens.length / sec);
          promptTokens.inc({}, r.promptTokens);
          generatedTokens.inc({}, r.tokens.length);
          reply.raw.write(chunk({}, FINISH[r.stopReason]));
          if (body.stream_options?.include_usage)
            reply.raw.write(
              `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: modelName, choices: [], usage: { prompt_tokens: r.promptTokens, completion_tokens: r.tokens.length, total_tokens: r.promptTokens + r.tokens.length } })}\n\n`,
            );
          reply.raw.write('data: [DONE]\n\n');
        } catch (e) {
          // the status line is gone: the error travels as an SSE event, then the stream ends
          const { status, type } = statusOf(e);
          if (!reply.raw.destroyed) reply.raw.write(`data: ${JSON.stringify({ error: { message: (e as Error).message, type, code: status } })}\n\n`);
        } finally {
          reply.raw.end();
        }
      });
      return reply;
    } finally {
      done();
    }
  });

  app.post<{ Body: AnalyzeBody }>('/v1/analyze', { schema: { body: analyzeSchema } }, async (req, reply) => {
    const body = req.body;
    const { signal, done } = requestSignal(req, reply);
    try {
      const input = await resolveImage(body.image, policy);
      faces ??= FaceAnalyzer.load();
      const fa = await faces;
      return await schedule(signal, (s) =>
        analyze(input, {
          model,
          faces: fa,
          task: body.task ?? 'emotion',
          ...(body.text !== undefined ? { text: body.text } : {}),
          ...(body.labels ? { labels: body.labels } : {}),
          signal: s,
        }),
      );
    } finally {
      done();
    }
  });

  let closing: Promise<void> | undefined;
  return {
    app,
    scheduler,
    async listen(port, host = '127.0.0.1') {
      await app.listen({ port, host });
      const a = app.server.address();
      if (a === null || typeof a === 'string') return String(a);
      return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    },
    close(timeoutMs = 30_000) {
      closing ??= (async () => {
        draining = true;
        const timer = setTimeout(() => {
          for (const ac of inFlight) ac.abort();
        }, timeoutMs);
        try {
          // fastify.close() stops listening at once and resolves when the open connections end
          const closed = app.close();
          await scheduler.idle();
          while (inFlight.size > 0) await new Promise((r) => setTimeout(r, 10));
          // answered: a connection still open now is idle or a client that does not hang up
          const grace = setTimeout(() => app.server.closeAllConnections(), 1000);
          try {
            await closed;
          } finally {
            clearTimeout(grace);
          }
        } finally {
          clearTimeout(timer);
          if (!options.keepModelOpen) await model.close();
        }
      })();
      return closing;
    },
  };
}
