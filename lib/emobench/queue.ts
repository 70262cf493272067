/**
 * EmoBench over many machines: the coordinator side of `emollm eval --queue redis://host:port`.
 *
 * The coordinator is an ordinary evaluation backend: each sample it is asked to predict becomes a
 * BullMQ job on the `emollm-eval` queue, and the prediction is whatever an `emollm worker` (any
 * number, anywhere) returns for it. Everything else is the single-process evaluator's: the same
 * append-only predictions.jsonl (written by the coordinator only), the same resume, the same reports.
 *
 * Keys: a job's id is a hash of the run (see {@link runId}) and the sample id, so a job is added once however often the coordinator restarts: re-adding finds
 * the existing job and waits for it (or takes its stored result). A job whose worker died stalls,
 * and BullMQ hands it to another worker; it completes once, and the coordinator records it once.
 */
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setMaxListeners } from 'node:events';
import { connect } from 'node:net';

import { Queue, QueueEvents, type ConnectionOptions, type Job } from 'bullmq';

import { EmollmError } from '../errors.js';
import type { GuidanceLevel } from '../emoprompt.js';
import type { Backend, Prediction } from './backends.js';
import type { BenchSample } from './sample.js';

export const QUEUE_NAME = 'emollm-eval';
/** Completed and failed jobs are kept this long, so a coordinator restarted later still finds their results. */
const KEEP_SECONDS = 7 * 24 * 3600;

/** What a job carries. */
export interface SampleJob {
  /** The run's key (see {@link runId}). */
  run: string;
  /** The coordinator's `--model`: workers check that theirs is the same. */
  spec: string;
  seed: number;
  guidance?: GuidanceLevel;
  frames?: number;
  /** Native models: whether the face perspective runs (the coordinator's `--no-face`). */
  face?: boolean;
  /** sha256 of the benchmark text, stored at `emollm:bench:<sha256>` (random / majority need all samples). */
  bench: string;
  /** The coordinator's media root (a worker's --media-root replaces it). */
  mediaRoot: string;
  sample: BenchSample;
}

/** What a worker returns. */
export interface SampleResult {
  /** The worker backend's name (`random(seed=0)`, `native:/models/x`, ...). */
  backend: string;
  prediction: Prediction;
}

/** BullMQ connection options from `redis://[user:password@]host:port[/db]`. */
export function redisConnection(url: string): ConnectionOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new EmollmError('ERR_INVALID_ARGUMENT', `--queue ${JSON.stringify(url)}: not a URL (redis://host:port)`, { cause });
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new EmollmError('ERR_INVALID_ARGUMENT', `--queue ${JSON.stringify(url)}: use redis://host:port`);
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) throw new EmollmError('ERR_INVALID_ARGUMENT', `--queue ${JSON.stringify(url)}: the path must be a database number`);
  return {
    host: u.hostname || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    ...(db !== '' ? { db: Number(db) } : {}),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    // a worker or coordinator outlives short Redis outages instead of failing its commands
    maxRetriesPerRequest: null,
  };
}

/**
 * Fails fast when Redis is unreachable (the BullMQ clients would otherwise retry forever, as they
 * should once running): connects, authenticates when the URL has a password, and sends PING.
 */
export async function checkRedis(url: string, timeoutMs = 5000): Promise<void> {
  const c = redisConnection(url) as { host: string; port: number; username?: string; password?: string; tls?: object };
  if (c.tls) return; // the TLS handshake is left to the real clients
  const cmd = (...a: string[]): string => `*${a.length}\r\n${a.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`;
  await new Promise<void>((resolve, reject) => {
    const sock = connect({ host: c.host, port: c.port });
    let buf = '';
    const fail = (why: string): void => {
      sock.destroy();
      reject(new EmollmError('ERR_INTERNAL', `--queue ${url}: cannot reach Redis (${why})`));
    };
    sock.setTimeout(timeoutMs, () => fail(`no answer in ${timeoutMs} ms`));
    sock.on('error', (e) => fail(e.message));
    sock.on('connect', () => sock.write((c.password !== undefined ? cmd('AUTH', ...(c.username ? [c.username] : []), c.password) : '') + cmd('PING')));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      if (buf.startsWith('-')) return fail(buf.split('\r\n')[0]!.slice(1));
      if (buf.includes('+PONG\r\n')) {
        sock.end();
        resolve();
      }
    });
  });
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/**
 * The run's key: what makes two coordinators the same run. `nonce` is created with the run folder
 * (`<out>/queue-run.json`), so a coordinator restarted on that folder finds its jobs again, while a
 * new run (say, of a retrained model at the same path) never takes an older run's stored results.
 */
export function runId(p: {
  nonce: string;
  bench: string;
  spec: string;
  seed: number;
  mediaRoot: string;
  guidance?: GuidanceLevel | undefined;
  frames?: number | undefined;
  face?: boolean | undefined;
}): string {
  return sha(JSON.stringify([p.nonce, p.bench, p.spec, p.seed, p.mediaRoot, p.guidance ?? 'full', p.frames ?? 4, p.face ?? true])).slice(0, 32);
}

/** The run folder's queue nonce, created on first use. */
function runNonce(out: string): string {
  const f = join(out, 'queue-run.json');
  if (existsSync(f)) {
    const j = JSON.parse(readFileSync(f, 'utf8')) as { nonce?: unknown };
    if (typeof j.nonce !== 'string') throw new EmollmError('ERR_MALFORMED_FILE', `${f}: no nonce`, { file: f });
    return j.nonce;
  }
  const nonce = randomUUID();
  writeFileSync(f, `${JSON.stringify({ nonce }, null, 2)}\n`);
  return nonce;
}

/** A sample's job id in a run (no ':' — BullMQ reserves it). */
export function jobId(run: string, sampleId: string): string {
  return sha(`${run}\n${sampleId}`).slice(0, 40);
}

export interface QueueBackendOptions {
  /** redis://host:port[/db] */
  url: string;
  spec: string;
  /** The benchmark text and its sha256. */
  benchText: string;
  benchSha256: string;
  seed: number;
  mediaRoot: string;
  guidance?: GuidanceLevel;
  frames?: number;
  /** Native models: the face perspective on or off (unset: the backend's default, on). */
  face?: boolean;
  /** Jobs in flight at once (default 64). */
  concurrency?: number;
  /** The run folder (holds the run's queue nonce). */
  out: string;
}

/** The coordinator's backend: predictions made by workers. */
export async function queueBackend(o: QueueBackendOptions): Promise<Backend> {
  const connection = redisConnection(o.url);
  await checkRedis(o.url);
  const queue = new Queue<SampleJob, SampleResult>(QUEUE_NAME, { connection });
  const events = new QueueEvents(QUEUE_NAME, { connection });
  // every job in flight waits on these (one listener each)
  const inFlight = (o.concurrency ?? 64) + 16;
  queue.setMaxListeners(inFlight);
  events.setMaxListeners(inFlight * 2);
  const run = runId({ nonce: runNonce(o.out), bench: o.benchSha256, spec: o.spec, seed: o.seed, mediaRoot: o.mediaRoot, guidance: o.guidance, frames: o.frames, face: o.face });
  const nameKey = `emollm:run:${run}:backend`;
  let knownName: string | undefined;
  type Kv = { set(...args: Array<string | number>): Promise<unknown>; get(key: string): Promise<string | null> };
  const kv = async (): Promise<Kv> => (await queue.client) as unknown as Kv;
  try {
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    const client = await kv();
    // workers of random / majority need the whole benchmark; stored once per benchmark
    await client.set(`emollm:bench:${o.benchSha256}`, o.benchText, 'EX', KEEP_SECONDS, 'NX');
    knownName = (await client.get(nameKey)) ?? undefined;
  } catch (cause) {
    await Promise.allSettled([queue.close(), events.close()]);
    throw new EmollmError('ERR_INTERNAL', `--queue ${o.url}: cannot reach Redis (${(cause as Error).message})`, { cause });
  }

  async function jobFor(s: BenchSample): Promise<Job<SampleJob, SampleResult>> {
    const id = jobId(run, s.id);
    const existing = await queue.getJob(id);
    if (existing) {
      // a job that failed in an earlier session is tried again, as the evaluator retries errors on resume
      if ((await existing.getState()) === 'failed') await existing.retry('failed');
      return existing;
    }
    const data: SampleJob = {
      run,
      spec: o.spec,
      seed: o.seed,
      bench: o.benchSha256,
      mediaRoot: o.mediaRoot,
      sample: s,
      ...(o.guidance !== undefined ? { guidance: o.guidance } : {}),
      ...(o.face !== undefined ? { face: o.face } : {}),
      ...(o.frames !== undefined ? { frames: o.frames } : {}),
    };
    return queue.add('sample', data, { jobId: id, attempts: 1, removeOnComplete: { age: KEEP_SECONDS }, removeOnFail: { age: KEEP_SECONDS } });
  }

  return {
    get name(): string {
      return knownName ?? `queue:${o.spec}`;
    },
    maxConcurrency: o.concurrency ?? 64,
    async predict(s, _mediaRoot, signal) {
      if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'aborted');
      setMaxListeners(inFlight, signal);
      const job = await jobFor(s);
      let onAbort: (() => void) | undefined;
      const aborted = new Promise<never>((_, reject) => {
        onAbort = () => reject(new EmollmError('ERR_ABORTED', 'aborted'));
        signal.addEventListener('abort', onAbort, { once: true });
      });
      let r: SampleResult | string;
      try {
        r = await Promise.race([job.waitUntilFinished(events), aborted]);
      } finally {
        signal.removeEventListener('abort', onAbort!);
      }
      const res = (typeof r === 'string' ? JSON.parse(r) : r) as SampleResult;
      if (!res || typeof res.backend !== 'string' || typeof res.prediction !== 'object')
        throw new EmollmError('ERR_MALFORMED_FILE', `job ${job.id}: the worker's result is malformed`);
      if (knownName === undefined) {
        knownName = res.backend;
        await (await kv()).set(nameKey, res.backend, 'EX', KEEP_SECONDS, 'NX');
      } else if (res.backend !== knownName)
        throw new EmollmError('ERR_INVALID_ARGUMENT', `a worker answered with ${res.backend}, others with ${knownName}: workers of one run must serve the same model`);
      return res.prediction;
    },
    async close() {
      await Promise.allSettled([events.close(), queue.close()]);
    },
  };
}
