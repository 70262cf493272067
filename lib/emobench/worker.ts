/**
 * `emollm worker --queue redis://host:port --model SPEC`: takes EmoBench sample jobs that
 * `emollm eval --queue` enqueued (see queue.ts) and answers them with its backend (a model folder
 * loaded once, an OpenAI-compatible endpoint, or a baseline).
 *
 * A worker that dies mid-job holds the job's lock until it expires (`--lock-ms`, default 30 s);
 * then another worker's stalled-job check takes it back to the queue and someone runs it again.
 * SIGTERM / SIGINT: the worker finishes its running jobs, then exits.
 */
import { Worker, type Job } from 'bullmq';

import { formatUsage, parseCommand, UsageError } from '../cli/args.js';
import { WORKER_SPEC } from './worker_spec.js';
import { EmollmError } from '../errors.js';
import { createBackend, type Backend } from './backends.js';
import { QUEUE_NAME, checkRedis, redisConnection, type SampleJob, type SampleResult } from './queue.js';
import { parseSamples, type BenchSample } from './sample.js';

export const WORKER_USAGE = formatUsage(WORKER_SPEC);

function int(name: string, v: string | undefined, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new EmollmError('ERR_INVALID_ARGUMENT', `--${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** `emollm worker ...`; resolves with the exit code after a signal stopped it. */
export async function workerCommand(argv: readonly string[]): Promise<number> {
  const { values, help } = parseCommand(WORKER_SPEC, argv);
  if (help) {
    console.log(WORKER_USAGE);
    return 0;
  }
  const s = (k: keyof typeof values): string | undefined => values[k] as string | undefined;
  const url = s('queue');
  const spec = s('model');
  if (!url || !spec) throw new UsageError('worker needs --queue and --model', WORKER_USAGE);
  const connection = redisConnection(url);
  await checkRedis(url);
  const concurrency = int('concurrency', s('concurrency'), 1) ?? 1;
  const lockMs = int('lock-ms', s('lock-ms'), 100) ?? 30_000;
  const throttleMs = int('throttle-ms', s('throttle-ms')) ?? 0;
  const threads = int('threads', s('threads'), 1);
  const timeoutMs = int('timeout-ms', s('timeout-ms'), 1);
  const retries = int('retries', s('retries'));
  const mediaRoot = s('media-root');

  // backends by what they depend on in a job (random: the seed and the benchmark; a model: guidance)
  const backends = new Map<string, { backend: Promise<Backend>; active: number }>();
  const benches = new Map<string, Promise<BenchSample[]>>();
  const baseline = spec === 'random' || spec === 'majority';
  let client: { get(key: string): Promise<string | null> } | undefined;

  async function samplesOf(sha: string): Promise<BenchSample[]> {
    let p = benches.get(sha);
    if (!p) {
      p = (async () => {
        const text = await client!.get(`emollm:bench:${sha}`);
        if (text === null) throw new EmollmError('ERR_FILE_NOT_FOUND', `the benchmark ${sha} is not in Redis (expired?): restart the coordinator`);
        return parseSamples(text);
      })();
      benches.set(sha, p);
      p.catch(() => benches.delete(sha));
    }
    return p;
  }

  async function backendFor(job: SampleJob): Promise<{ backend: Backend; release: () => void }> {
    const key = JSON.stringify(baseline ? [job.bench, job.seed] : [job.guidance ?? 'full', job.frames ?? 4, job.face ?? true]);
    let e = backends.get(key);
    if (!e) {
      // a new configuration: drop idle ones (a model is big)
      for (const [k, old] of backends)
        if (old.active === 0) {
          backends.delete(k);
          void old.backend.then((b) => b.close?.()).catch(() => undefined);
        }
      const created = (async () =>
        createBackend(spec!, {
          samples: baseline ? await samplesOf(job.bench) : [],
          seed: job.seed,
          ...(job.guidance !== undefined ? { guidance: job.guidance } : {}),
          ...(job.face !== undefined && !baseline ? { face: job.face } : {}),
          ...(s('mmproj') ? { mmproj: s('mmproj')! } : {}),
          ...(threads !== undefined ? { threads } : {}),
          ...(timeoutMs !== undefined || retries !== undefined
            ? { http: { ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(retries !== undefined ? { retries } : {}) } }
            : {}),
        }))();
      e = { backend: created, active: 0 };
      backends.set(key, e);
      created.catch(() => backends.delete(key));
    }
    e.active++;
    const entry = e;
    return { backend: await entry.backend, release: () => void entry.active-- };
  }

  const ac = new AbortController();
  const worker = new Worker<SampleJob, SampleResult>(
    QUEUE_NAME,
    async (job: Job<SampleJob, SampleResult>) => {
      const data = job.data;
      if (data.spec !== spec)
        // another model's run: fail it loudly rather than answer with the wrong model
        throw new EmollmError('ERR_INVALID_ARGUMENT', `this worker serves ${JSON.stringify(spec)}, the job is for ${JSON.stringify(data.spec)}`);
      if (throttleMs > 0) await new Promise((r) => setTimeout(r, throttleMs));
      const { backend, release } = await backendFor(data);
      try {
        const prediction = await backend.predict(data.sample, mediaRoot ?? data.mediaRoot, ac.signal);
        return { backend: backend.name, prediction };
      } finally {
        release();
      }
    },
    { connection, concurrency, lockDuration: lockMs, stalledInterval: lockMs, maxStalledCount: 5, autorun: false },
  );
  worker.on('error', (e) => console.error(`emollm worker: ${e.message}`));
  worker.on('failed', (job, e) => console.error(`emollm worker: job ${job?.id} (${job?.data.sample.id}) failed: ${e.message}`));
  await worker.waitUntilReady().catch((cause: unknown) => {
    throw new EmollmError('ERR_INTERNAL', `--queue ${url}: cannot reach Redis (${(cause as Error).message})`, { cause });
  });
  client = (await worker.client) as unknown as { get(key: string): Promise<string | null> };
  console.error(`emollm worker: ${spec} on ${url} (queue ${QUEUE_NAME}, concurrency ${concurrency})`);
  const running = worker.run();

  return new Promise<number>((resolve, reject) => {
    const stop = (sig: string): void => {
      console.error(`emollm worker: ${sig}: finishing running jobs`);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      (async () => {
        await worker.close();
        await running;
        for (const e of backends.values()) await (await e.backend.catch(() => undefined))?.close?.();
      })().then(() => resolve(0), reject);
    };
    const onInt = (): void => stop('SIGINT');
    const onTerm = (): void => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}
