/**
 * `emollm serve`: the scheduler, media confinement, auth and metrics on their own; then the
 * server over the tiny LLaVA (../shared/models/llava-tiny-hf): its answers equal the in-process
 * model's, streaming equals non-streaming, limits / 429 / timeouts / drain behave, and
 * `emollm eval --model http://…` against it gives the in-process native predictions (labels and text exact, probabilities within 1e-6).
 */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { createServer as createHttpServer, type IncomingMessage } from 'node:http';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { analyze } from '../../lib/analyze.js';
import { classify } from '../../lib/decode_result.js';
import { createBackend } from '../../lib/emobench/backends.js';
import { readPredictions, runEval } from '../../lib/emobench/eval.js';
import { sampleToJsonl, type BenchSample } from '../../lib/emobench/sample.js';
import { loadModel, type Model } from '../../lib/model.js';
import { bearerChecker, loadKeys } from '../../lib/serve/auth.js';
import { mediaRoot, resolveImage, RequestError } from '../../lib/serve/media.js';
import { Counter, Histogram, Registry } from '../../lib/serve/metrics.js';
import { QueueFullError, Scheduler, TimeoutError } from '../../lib/serve/scheduler.js';
import { createServer, type EmollmServer } from '../../lib/serve/server.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const haveTiny = existsSync(join(tiny, 'config.json'));
if (!haveTiny) console.warn(`serve tests with a model skipped: ${tiny} not found (set EMOLLM_SHARED_DIR)`);
const demo = join(repoRoot, 'node_modules', '@vladmandic', 'face-api', 'demo');

const tmp = mkdtempSync(join(tmpdir(), 'emollm-serve-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Polls `cond` (every 20 ms, at most 20 s): no fixed sleeps that a loaded machine could outrun. */
async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A promise and its resolver: holds a scheduler slot until released. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

// Predictions of the same samples in process and over HTTP: labels, answers and generated text
// equal; numbers within 1e-6. The two runs batch differently (the server's sequences and the
// in-process run's reuse or copy cached prefixes in different orders, and chunked prefill splits a
// prompt by what else is in each step), and a GEMM rounds the last bits differently for a
// different number of rows, so floats are not bit-equal.
function expectClose(x: unknown, y: unknown, path: string): void {
  if (typeof x === 'number' && typeof y === 'number') {
    expect(Math.abs(x - y), `${path}: ${x} vs ${y}`).toBeLessThanOrEqual(1e-6);
  } else if (x && y && typeof x === 'object' && typeof y === 'object') {
    expect(Object.keys(x).sort(), path).toEqual(Object.keys(y).sort());
    for (const k of Object.keys(x)) expectClose((x as Record<string, unknown>)[k], (y as Record<string, unknown>)[k], `${path}.${k}`);
  } else {
    expect(x, path).toEqual(y);
  }
}

describe('Scheduler', () => {
  it('runs one call at a time in arrival order; a full queue refuses with a Retry-After', async () => {
    const s = new Scheduler({ maxSequences: 1, maxQueue: 2 });
    const order: string[] = [];
    const g = gate();
    const a = s.run(async () => {
      order.push('a start');
      await g.promise;
      order.push('a end');
    });
    const b = s.run(async () => void order.push('b'));
    const c = s.run(async () => void order.push('c'));
    expect(s.active).toBe(1);
    expect(s.queueDepth).toBe(2);
    const err = await s.run(async () => 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QueueFullError);
    expect((err as QueueFullError).retryAfterSeconds).toBeGreaterThanOrEqual(1);
    g.open();
    await Promise.all([a, b, c]);
    expect(order).toEqual(['a start', 'a end', 'b', 'c']);
    await s.idle();
    expect(s.active).toBe(0);
  });

  it('maxSequences 2 runs two calls together (the hook for batched sequences)', async () => {
    const s = new Scheduler({ maxSequences: 2, maxQueue: 0 });
    const g = gate();
    const a = s.run(() => g.promise);
    const b = s.run(() => g.promise);
    expect(s.active).toBe(2);
    await expect(s.run(async () => 0)).rejects.toBeInstanceOf(QueueFullError);
    g.open();
    await Promise.all([a, b]);
  });

  it('a cancelled or timed-out waiter leaves the queue; a running call sees its signal fire', async () => {
    const s = new Scheduler({ maxQueue: 4 });
    const g = gate();
    let sawAbort = false;
    const a = s.run(
      (signal) =>
        new Promise<void>((resolve, reject) => {
          signal.addEventListener('abort', () => {
            sawAbort = true;
            reject(new Error('stopped'));
          });
          void g.promise.then(resolve);
        }),
      { timeoutMs: 100 },
    );
    const ac = new AbortController();
    const b = s.run(async () => 'b', { signal: ac.signal });
    const c = s.run(async () => 'c', { timeoutMs: 50 });
    expect(s.queueDepth).toBe(2);
    ac.abort();
    await expect(b).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(c).rejects.toBeInstanceOf(TimeoutError);
    await expect(a).rejects.toBeInstanceOf(TimeoutError);
    expect(sawAbort).toBe(true);
    expect(s.queueDepth).toBe(0);
    await s.idle();
    expect(await s.run(async () => 'after')).toBe('after');
    g.open();
  });
});

describe('media: data URLs and local paths confined to the media root', () => {
  const root = join(tmp, 'media');
  mkdirSync(join(root, 'sub'), { recursive: true });
  writeFileSync(join(root, 'sub', 'a.png'), Buffer.from([1, 2, 3]));
  writeFileSync(join(tmp, 'secret.png'), Buffer.from([4, 5, 6]));
  symlinkSync(join(tmp, 'secret.png'), join(root, 'escape.png'));
  symlinkSync(join(root, 'sub', 'a.png'), join(root, 'inside.png'));

  it('decodes data URLs within the size limit', async () => {
    const policy = { root: undefined, maxImageBytes: 4 };
    expect(await resolveImage('data:image/png;base64,AQID', policy)).toEqual(Buffer.from([1, 2, 3]));
    await expect(resolveImage(`data:image/png;base64,${Buffer.alloc(64).toString('base64')}`, policy)).rejects.toMatchObject({ status: 413 });
    await expect(resolveImage('data:text/html;base64,AQID', policy)).rejects.toMatchObject({ status: 400 });
    await expect(resolveImage('https://example.com/a.png', policy)).rejects.toThrow(/fetches no remote URL/);
    await expect(resolveImage('/etc/hostname', policy)).rejects.toThrow(/no --media-root/);
  });

  it('accepts paths under the root (also through symlinks that stay inside), refuses escapes', async () => {
    const policy = { root: await mediaRoot(root), maxImageBytes: 1024 };
    expect(await resolveImage('sub/a.png', policy)).toBe(join(policy.root!, 'sub', 'a.png'));
    expect(await resolveImage(`file://${join(root, 'inside.png')}`, policy)).toBe(join(policy.root!, 'sub', 'a.png'));
    for (const p of ['../secret.png', join(tmp, 'secret.png'), 'escape.png', 'sub/../../secret.png']) {
      const e = await resolveImage(p, policy).catch((x: unknown) => x);
      expect(e, p).toBeInstanceOf(RequestError);
      expect((e as RequestError).status, p).toBe(403);
    }
    await expect(resolveImage('nope.png', policy)).rejects.toMatchObject({ status: 400 });
    await expect(resolveImage('sub', policy)).rejects.toThrow(/not a file/);
  });
});

describe('auth and metrics', () => {
  it('keys from a file and an environment variable; constant-time bearer check', () => {
    const f = join(tmp, 'keys.txt');
    writeFileSync(f, '# ops\nk1\n\nk2\n');
    const keys = loadKeys({ keysFile: f, keysEnv: 'SERVE_TEST_KEYS', env: { SERVE_TEST_KEYS: 'k3, k4' } });
    expect(keys).toEqual(['k1', 'k2', 'k3', 'k4']);
    const ok = bearerChecker(keys);
    expect(ok('Bearer k2')).toBe(true);
    expect(ok('bearer k4')).toBe(true);
    expect(ok('Bearer k5')).toBe(false);
    expect(ok(undefined)).toBe(false);
    expect(ok('k1')).toBe(false);
    expect(bearerChecker([])(undefined)).toBe(true);
    expect(() => loadKeys({ keysEnv: 'SERVE_TEST_UNSET', env: {} })).toThrow(/unset or empty/);
    writeFileSync(f, '# nothing\n');
    expect(() => loadKeys({ keysFile: f })).toThrow(/holds no key/);
  });

  it('Prometheus text format', () => {
    const r = new Registry();
    const c = r.add(new Counter('x_total', 'X.'));
    const h = r.add(new Histogram('lat_seconds', 'Latency.', [0.1, 1]));
    c.inc({ route: '/a', code: '200' });
    c.inc({ route: '/a', code: '200' }, 2);
    h.observe(0.05, { route: '/a' });
    h.observe(0.5, { route: '/a' });
    const text = r.render();
    expect(text).toContain('# TYPE x_total counter\nx_total{code="200",route="/a"} 3');
    expect(text).toContain('lat_seconds_bucket{route="/a",le="0.1"} 1');
    expect(text).toContain('lat_seconds_bucket{route="/a",le="1"} 2');
    expect(text).toContain('lat_seconds_bucket{route="/a",le="+Inf"} 2');
    expect(text).toContain('lat_seconds_count{route="/a"} 2');
  });
});

describe('eval --model http://…: how the HTTP backend tells emollm serve from other servers', () => {
  /** A loopback server: /v1/models answers `models` (after `fail503` 503s), chat/completions records bodies. */
  async function fake(models: unknown, fail503 = 0): Promise<{ url: string; bodies: Array<Record<string, unknown>>; close: () => void }> {
    const bodies: Array<Record<string, unknown>> = [];
    let failures = fail503;
    const srv = createHttpServer((req: IncomingMessage, res) => {
      let data = '';
      req.on('data', (d) => (data += d));
      req.on('end', () => {
        if (req.url === '/v1/models') {
          if (failures-- > 0) return void res.writeHead(503).end('busy');
          return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(models));
        }
        const body = JSON.parse(data) as Record<string, unknown>;
        bodies.push(body);
        const reply = body.emollm_options
          ? { choices: [{ message: { content: 'sad' } }], emollm: { label: 'sad', probabilities: { happy: 0.25, sad: 0.75 } } }
          : { choices: [{ message: { content: 'Answer: happy' } }] };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const a = srv.address() as { port: number };
    return { url: `http://127.0.0.1:${a.port}/v1`, bodies, close: () => srv.close() };
  }
  const sample: BenchSample = { id: 'x/1', task: 'emo-c', source: 'x', split: 'test', media: null, text: 'hi', options: ['happy', 'sad'], answer: 'sad' };
  const signal = new AbortController().signal;

  it('an emollm server (after a transient 503) gets closed-set samples as option scoring', async () => {
    const f = await fake({ data: [{ id: 'm', owned_by: 'emollm', emollm: { scoring: true } }] }, 1);
    try {
      const b = await createBackend(`${f.url}#m`, { samples: [], http: { backoffMs: 1 } });
      const p = await b.predict(sample, tmp, signal);
      expect(p).toEqual({ raw: null, label: 'sad', probabilities: { happy: 0.25, sad: 0.75 }, unparsed: false });
      expect(f.bodies[0]!.emollm_options).toEqual(['happy', 'sad']);
    } finally {
      f.close();
    }
  });

  it('any other server (or another model id) gets the plain OpenAI text request', async () => {
    for (const models of [{ data: [{ id: 'm', owned_by: 'openai' }] }, { data: [{ id: 'other', owned_by: 'emollm', emollm: { scoring: true } }] }]) {
      const f = await fake(models);
      try {
        const b = await createBackend(`${f.url}#m`, { samples: [], http: { backoffMs: 1 } });
        const p = await b.predict(sample, tmp, signal);
        expect(p).toMatchObject({ raw: 'Answer: happy', label: 'happy', probabilities: null });
        expect(f.bodies[0]!.emollm_options).toBeUndefined();
      } finally {
        f.close();
      }
    }
  });
});

describe.skipIf(!haveTiny)('the server over the tiny LLaVA', () => {
  let model: Model; // the server's
  let local: Model; // the in-process reference
  let server: EmollmServer;
  let base = '';
  const KEY = 'test-key-1';
  const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
  const image = `data:image/jpeg;base64,${readFileSync(join(demo, 'sample1.jpg')).toString('base64')}`;
  const messages = (text: string): unknown[] => [{ role: 'user', content: [{ type: 'image_url', image_url: { url: image } }, { type: 'text', text }] }];
  const localMessages = (text: string): Array<{ role: string; content: Array<Record<string, unknown>> }> => [
    { role: 'user', content: [{ type: 'image', image: readFileSync(join(demo, 'sample1.jpg')) }, { type: 'text', text }] },
  ];
  const post = (path: string, body: unknown, headers: Record<string, string> = auth): Promise<Response> =>
    fetch(`${base}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });

  beforeAll(async () => {
    // one sequence each: the tests below hold the model's only slot to fill the queue
    [model, local] = await Promise.all([loadModel(tiny, { maxSequences: 1 }), loadModel(tiny, { maxSequences: 1 })]);
    server = await createServer({ model, apiKeys: [KEY], modelName: 'tiny', maxQueue: 1, maxBodyBytes: 2_000_000, maxImageBytes: 1_000_000, mediaRoot: await mediaRoot(demo), requestTimeoutMs: 60_000 });
    base = await server.listen(0);
  }, 120_000);
  afterAll(async () => {
    await server?.close(1000);
    await local?.close();
  });

  it('health, models, metrics are reachable; /v1 needs the bearer key', async () => {
    expect(await (await fetch(`${base}/health`)).json()).toMatchObject({ status: 'ok', model: 'tiny' });
    const unauth = await fetch(`${base}/v1/models`);
    expect(unauth.status).toBe(401);
    expect(unauth.headers.get('www-authenticate')).toBe('Bearer');
    const models = (await (await fetch(`${base}/v1/models`, { headers: auth })).json()) as { data: Array<{ id: string; owned_by: string; emollm: { scoring: boolean } }> };
    expect(models.data).toEqual([expect.objectContaining({ id: 'tiny', owned_by: 'emollm', emollm: expect.objectContaining({ scoring: true, vision: true }) })]);
  });

  it('chat/completions with an image: the in-process greedy answer, token for token; streaming gives the same text', async () => {
    const body = { model: 'tiny', messages: messages('What emotion is shown?'), max_tokens: 12, temperature: 0 };
    const res = await post('/v1/chat/completions', body);
    expect(res.status).toBe(200);
    const j = (await res.json()) as { choices: Array<{ message: { content: string }; finish_reason: string }>; usage: { completion_tokens: number; prompt_tokens: number } };
    const ref = await local.generate(localMessages('What emotion is shown?'), { maxTokens: 12, temperature: 0 }).result;
    expect(j.choices[0]!.message.content).toBe(ref.text);
    expect(j.usage.completion_tokens).toBe(ref.tokens.length);
    expect(j.usage.prompt_tokens).toBe(ref.promptTokens);
    expect(j.choices[0]!.finish_reason).toBe(ref.stopReason === 'max-tokens' ? 'length' : 'stop');

    const s = await post('/v1/chat/completions', { ...body, stream: true, stream_options: { include_usage: true } });
    expect(s.status).toBe(200);
    expect(s.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = (await s.text()).split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as { choices: Array<{ delta: { content?: string }; finish_reason: string | null }>; usage?: { completion_tokens: number } });
    expect(chunks.flatMap((c) => c.choices.map((x) => x.delta.content ?? '')).join('')).toBe(ref.text);
    expect(chunks.at(-1)!.usage!.completion_tokens).toBe(ref.tokens.length);
  }, 120_000);

  it('emollm_options: option scoring equal to classify in process', async () => {
    const labels = ['happy', 'sad', 'angry', 'neutral'];
    const res = await post('/v1/chat/completions', { messages: messages('Which emotion?'), emollm_options: labels });
    expect(res.status).toBe(200);
    const j = (await res.json()) as { choices: Array<{ message: { content: string } }>; emollm: { label: string; probabilities: Record<string, number> } };
    const ref = await classify(local, localMessages('Which emotion?'), labels);
    expect(j.emollm.label).toBe(ref.label);
    expect(j.choices[0]!.message.content).toBe(ref.label);
    expect(j.emollm.probabilities).toEqual(ref.distribution);
  }, 60_000);

  it('bad requests: schema, model name, sizes, paths outside the media root', async () => {
    expect((await post('/v1/chat/completions', { messages: [] })).status).toBe(400);
    expect((await post('/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] })).status).toBe(400);
    expect((await post('/v1/chat/completions', { messages: messages('x'), n: 2 })).status).toBe(400);
    const wrong = await post('/v1/chat/completions', { model: 'gpt-9', messages: messages('x') });
    expect(wrong.status).toBe(404);
    expect(((await wrong.json()) as { error: { message: string } }).error.message).toMatch(/not served here/);
    const big = `data:image/png;base64,${Buffer.alloc(1_200_000).toString('base64')}`;
    expect((await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: big } }] }] })).status).toBe(413);
    const huge = `data:image/png;base64,${Buffer.alloc(3_000_000).toString('base64')}`;
    expect((await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: huge } }] }] })).status).toBe(413);
    const outside = await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: '../package.json' } }] }] });
    expect(outside.status).toBe(403);
    const inside = await post('/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'sample2.jpg' } }, { type: 'text', text: 'hi' }] }], max_tokens: 2 });
    expect(inside.status).toBe(200);
    expect((await post('/v1/chat/completions', { messages: messages('x'), max_tokens: 100_000 })).status).toBe(400);
  }, 60_000);

  it('a full queue answers 429 with Retry-After; a request past its timeout gets 504', async () => {
    const g = gate();
    const holder = server.scheduler.run(() => g.promise); // the model is busy
    const queued = post('/v1/chat/completions', { messages: messages('x'), max_tokens: 2, temperature: 0 }); // waits (maxQueue 1)
    await until(() => server.scheduler.queueDepth === 1, 'the request to queue');
    const full = await post('/v1/chat/completions', { messages: messages('x'), max_tokens: 2 });
    expect(full.status).toBe(429);
    expect(Number(full.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    g.open();
    await holder;
    expect((await queued).status).toBe(200);

    const short = await createServer({ model: local, keepModelOpen: true, requestTimeoutMs: 300 });
    try {
      const url = await short.listen(0);
      const g2 = gate();
      const busy = short.scheduler.run(() => g2.promise);
      const r = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }) });
      expect(r.status).toBe(504);
      expect(short.scheduler.queueDepth).toBe(0);
      g2.open();
      await busy;
      const metrics = await (await fetch(`${url}/metrics`)).text();
      expect(metrics).toContain('emollm_rejected_total{reason="timeout"} 1');
      expect(metrics).toMatch(/emollm_request_duration_seconds_count\{route="\/v1\/chat\/completions"\} 1/);
    } finally {
      await short.close(1000);
    }
  }, 60_000);

  it('a client that hangs up while queued leaves the queue (its request is cancelled)', async () => {
    const ac = new AbortController();
    const g = gate();
    const holder = server.scheduler.run(() => g.promise);
    const cancelled = fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: auth, body: JSON.stringify({ messages: messages('x'), max_tokens: 2, stream: true }), signal: ac.signal }).catch((e: unknown) => e);
    await until(() => server.scheduler.queueDepth === 1, 'the request to queue');
    ac.abort();
    await cancelled;
    await until(() => server.scheduler.queueDepth === 0, 'the cancelled request to leave the queue');
    g.open();
    await holder;
  }, 60_000);

  it('/v1/analyze returns the emollm.analysis/1 JSON of analyze()', async () => {
    // analyze()'s prompts need more than the tiny model's 256-token default context
    // the reference runs on its own model: a model reuses its KV cache across calls, and a reused
    // prefix is not bit-identical to a fresh prefill (differences ~1e-7 in the probabilities)
    const [m, fresh] = await Promise.all([loadModel(tiny, { contextSize: 512 }), loadModel(tiny, { contextSize: 512 })]);
    const s = await createServer({ model: m, mediaRoot: await mediaRoot(demo), keepModelOpen: true });
    try {
      const url = await s.listen(0);
      const ask = (body: unknown): Promise<Response> => fetch(`${url}/v1/analyze`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const res = await ask({ image: 'sample1.jpg', task: 'emotion', labels: ['happy', 'sad', 'neutral'] });
      const j = (await res.json()) as { schema: string; answer: unknown; faces: unknown; input: string };
      expect(res.status, JSON.stringify(j)).toBe(200);
      const ref = await analyze(join(demo, 'sample1.jpg'), { model: fresh, task: 'emotion', labels: ['happy', 'sad', 'neutral'] });
      expect(j.schema).toBe('emollm.analysis/1');
      expect(j.answer).toEqual(JSON.parse(JSON.stringify(ref.answer)));
      expect(j.faces).toEqual(JSON.parse(JSON.stringify(ref.faces)));
      // the same image as a data URL: same label; probabilities within 1e-5 (second call: the KV cache is reused)
      const viaData = (await (await ask({ image, task: 'emotion', labels: ['happy', 'sad', 'neutral'] })).json()) as { answer: { label: string; distribution: Record<string, number> } };
      const first = j.answer as { label: string; distribution: Record<string, number> };
      expect(viaData.answer.label).toBe(first.label);
      for (const l of ['happy', 'sad', 'neutral']) expect(Math.abs(viaData.answer.distribution[l]! - first.distribution[l]!)).toBeLessThan(1e-5);
      expect((await ask({ image: 'sample1.jpg', task: 'mood' })).status).toBe(400);
      expect((await ask({ image: '/etc/passwd' })).status).toBe(403);
    } finally {
      await s.close(1000);
      await Promise.all([m.close(), fresh.close()]);
    }
  }, 120_000);

  it('metrics count tokens, queue depth and latency', async () => {
    const text = await (await fetch(`${base}/metrics`)).text();
    expect(text).toContain('# TYPE emollm_queue_depth gauge\nemollm_queue_depth 0');
    expect(text).toMatch(/emollm_generated_tokens_total \d+/);
    expect(Number(/emollm_generated_tokens_total (\d+)/.exec(text)![1])).toBeGreaterThan(0);
    expect(text).toMatch(/emollm_generation_tokens_per_second_count \d+/);
    expect(text).toContain('emollm_rejected_total{reason="queue_full"} 1');
    expect(text).toContain('emollm_requests_total{code="401",route="/v1/models"} 1');
    // the core scheduler's counters: steps ran, prompts went through prefill chunks, rows per step
    const core = (name: string): number => Number(new RegExp(`\\n${name} (\\d+)`).exec(text)?.[1] ?? Number.NaN);
    expect(text).toContain('# TYPE emollm_core_steps_total counter');
    expect(core('emollm_core_steps_total')).toBeGreaterThan(0);
    expect(core('emollm_core_prefill_chunks_total')).toBeGreaterThan(0);
    expect(core('emollm_core_step_rows_total')).toBeGreaterThanOrEqual(core('emollm_core_steps_total'));
    expect(core('emollm_core_queued_sequences')).toBe(0);
    expect(core('emollm_core_batch_tokens')).toBeGreaterThan(0);
    expect(text).toContain('# TYPE emollm_core_reused_logits_total counter');
    expect(core('emollm_core_reused_logits_total')).toBeGreaterThanOrEqual(0);
  });

  it('eval --model http://… against the server: the in-process native predictions (labels exact, probabilities within 1e-6)', async () => {
    const EMO = ['happy', 'sad', 'angry', 'neutral'];
    const samples: BenchSample[] = [
      { id: 'demo/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: 'sample1.jpg' }, options: EMO, answer: 'happy' },
      { id: 'demo/2', task: 'emo-o', source: 'demo', split: 'test', media: { type: 'image', path: 'sample2.jpg' }, answer: 'happy' },
      { id: 'demo/3', task: 'intent', source: 'demo', split: 'test', media: { type: 'image', path: 'sample3.jpg' }, text: 'Could you help me?', options: ['complain', 'praise', 'ask for help'], answer: 'ask for help' },
      { id: 'demo/4', task: 'hate', source: 'demo', split: 'test', media: { type: 'image', path: 'sample4.jpg' }, text: 'nice people', answer: 'no' },
      { id: 'demo/5', task: 'humor', source: 'demo', split: 'test', media: { type: 'image', path: 'sample5.jpg' }, text: 'when the wifi drops', answer: 'yes' },
      { id: 'demo/6', task: 'sarcasm', source: 'demo', split: 'test', media: { type: 'image', path: 'sample6.jpg' }, text: 'Love Mondays.', answer: 'yes' },
    ];
    const bench = join(tmp, 'demo.jsonl');
    writeFileSync(bench, samples.map(sampleToJsonl).join('\n') + '\n');
    const common = { bench, mediaRoot: demo, progress: false, summary: false, resamples: 100 } as const;
    // The HTTP path sends no face cues (the face perspective runs where the model is only in process): compare with it off.
    const inProcess = await runEval({ ...common, model: tiny, face: false, out: join(tmp, 'eval-native'), backendOptions: { guidance: 'none' } });
    const served = await runEval({ ...common, model: `${base}/v1#tiny`, out: join(tmp, 'eval-http'), backendOptions: { guidance: 'none', http: { apiKey: KEY, concurrency: 2 } } });
    const strip = (f: string): unknown[] =>
      [...readPredictions(f).values()].map(({ ms: _ms, ...r }) => r).sort((x, y) => (x.id < y.id ? -1 : 1));
    const a = strip(join(tmp, 'eval-native', 'predictions.jsonl'));
    const b = strip(join(tmp, 'eval-http', 'predictions.jsonl'));
    expect(a.length).toBe(6);
    // labels and emo-o's generated text equal; probabilities within 1e-6 (see expectClose)
    expectClose(b, a, 'predictions');
    expect(served.counts).toEqual(inProcess.counts);
    expect(served.metrics).toEqual(inProcess.metrics);
  }, 300_000);

  it('graceful shutdown: a request admitted before close() is answered, new ones are refused', async () => {
    const m = await loadModel(tiny);
    const s = await createServer({ model: m, maxSequences: 1 }); // one slot, held below, so the request queues
    const url = await s.listen(0);
    const g = gate();
    const busy = s.scheduler.run(() => g.promise);
    const inFlight = fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, temperature: 0 }) });
    await until(() => s.scheduler.queueDepth === 1, 'the request to queue');
    const closing = s.close(30_000);
    // the listener closes: new requests are refused (or answered 503 on a connection still open)
    const health = (): Promise<number | string> => fetch(`${url}/health`).then((r) => r.status, () => 'connection refused');
    await until(async () => (await health()) !== 200, 'the server to stop accepting');
    expect([503, 'connection refused']).toContain(await health());
    g.open();
    await busy;
    const r = await inFlight;
    expect(r.status).toBe(200);
    expect(((await r.json()) as { choices: unknown[] }).choices.length).toBe(1);
    await closing;
    await expect(m.generate('x', { maxTokens: 1 }).result).rejects.toThrow(/closed/);
  }, 60_000);
});

describe.skipIf(!haveTiny)('the CLI: emollm serve, and emollm eval --model http://… against it', () => {
  // the package's own dist/ (the native binary is found from the package root, dist/..); `npm test`
  // builds it too, this keeps `vitest run` on this file honest. Async: a blocked test worker misses
  // vitest's RPC deadlines.
  const cli = join(repoRoot, 'dist', 'cli.js');
  beforeAll(async () => {
    await promisify(execFile)(process.execPath, [join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(repoRoot, 'tsconfig.json')]);
  }, 180_000);

  it('serves with a key from the environment; eval over HTTP equals eval in process; SIGTERM drains and exits 0', async () => {
    const serve = spawn(process.execPath, [cli, 'serve', '--model', tiny, '--port', '0', '--api-key-env', 'SERVE_TEST_KEYS', '--media-root', demo], {
      env: { ...process.env, SERVE_TEST_KEYS: 'k-cli' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    serve.stderr!.on('data', (d) => (log += d));
    const exited = new Promise<number | null>((r) => serve.once('exit', (code) => r(code)));
    try {
      const t0 = Date.now();
      while (!/emollm serve: (http:\S+)/.test(log)) {
        if (serve.exitCode !== null || Date.now() - t0 > 60_000) throw new Error(`serve did not start: ${log}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const url = /emollm serve: (http:\S+)/.exec(log)![1]!;
      expect((await fetch(`${url}/v1/models`)).status).toBe(401);
      const EMO = ['happy', 'sad', 'angry', 'neutral'];
      const samples: BenchSample[] = [1, 2, 3, 4].map((i) => ({ id: `demo/${i}`, task: i === 2 ? 'emo-o' : i === 4 ? 'sarcasm' : 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: `sample${i}.jpg` }, ...(i === 1 || i === 3 ? { options: EMO } : {}), ...(i === 4 ? { text: 'Love Mondays.' } : {}), answer: i === 4 ? 'yes' : 'happy' }) as BenchSample);
      const bench = join(tmp, 'cli-demo.jsonl');
      writeFileSync(bench, samples.map(sampleToJsonl).join('\n') + '\n');
      const run = (model: string, out: string, extra: string[] = []): Promise<unknown> =>
        promisify(execFile)(process.execPath, [cli, 'eval', '--bench', bench, '--model', model, '--media-root', demo, '--guidance', 'none', '--out', out, '--resamples', '50', ...extra], {
          env: { ...process.env, OPENAI_API_KEY: 'k-cli' },
        });
      await run(tiny, join(tmp, 'cli-native'), ['--no-face']); // the HTTP path sends no face cues
      await run(`${url}/v1#llava-tiny-hf`, join(tmp, 'cli-http'), ['--api-key-env', 'OPENAI_API_KEY']); // keys are sent only when named
      const strip = (f: string): unknown[] =>
        [...readPredictions(f).values()].map(({ ms: _ms, ...r }) => r).sort((x, y) => (x.id < y.id ? -1 : 1));
      const a = strip(join(tmp, 'cli-native', 'predictions.jsonl'));
      expect(a.length).toBe(4);
      expectClose(strip(join(tmp, 'cli-http', 'predictions.jsonl')), a, 'predictions');
      serve.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(log).toMatch(/SIGTERM: draining/);
      expect(log).toMatch(/emollm serve: stopped/);
    } finally {
      if (serve.exitCode === null) serve.kill('SIGKILL');
    }
    const bad = await promisify(execFile)(process.execPath, [cli, 'serve', '--model', tiny, '--bogus']).then(
      () => 'exit 0',
      (e: { code: number; stderr: string }) => `${e.code} ${e.stderr}`,
    );
    expect(bad).toMatch(/^2 .*serve: unknown option --bogus.*usage: emollm serve/s);
  }, 300_000);
});
