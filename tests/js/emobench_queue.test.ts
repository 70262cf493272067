/**
 * EmoBench over Redis (BullMQ): `emollm eval --queue` + `emollm worker`s, with a real redis-server
 * started on 127.0.0.1 by the test. Workers and the coordinator are SIGKILLed mid-run and
 * restarted; the run must end with the single-process results and each sample recorded once.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runEval, type EvalResults } from '../../lib/emobench/eval.js';
import { sampleToJsonl, type BenchSample, type BenchTask } from '../../lib/emobench/sample.js';
import { haveRedisServer, startRedis, type RedisServer } from './helpers/redis.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const haveRedis = haveRedisServer();
const inCI = process.env.CI === 'true' || process.env.CI === '1';
if (!haveRedis) console.warn(`EmoBench queue tests ${inCI ? 'FAIL (CI)' : 'skipped'}: redis-server is not installed (apt-get install redis-server)`);

describe('redis-server for the queue tests', () => {
  // in CI nothing that could run is skipped: a missing redis-server is a failure there
  it('is installed (required where CI=true)', () => expect(haveRedis || !inCI).toBe(true));
});

const TASKS: BenchTask[] = ['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'];
const EMO = ['happy', 'sad', 'angry', 'neutral'];

function synthetic(n: number): BenchSample[] {
  return Array.from({ length: n }, (_, i) => {
    const task = TASKS[i % 6]!;
    const id = `Synth/test/${String(i).padStart(5, '0')}`;
    const media = i % 10 === 9 ? { type: 'image' as const, path: `missing/${i}.jpg` } : null;
    const base = { id, task, source: 'Synth', split: 'test', media, text: `sample ${i}` };
    if (task === 'emo-c') return { ...base, options: EMO, answer: EMO[(i * 7) % 4]! };
    if (task === 'emo-o') return { ...base, answer: ['happy', 'sad', 'fear'][i % 3]! };
    if (task === 'intent') return { ...base, options: ['complain', 'praise'], answer: i % 4 ? 'praise' : 'complain' };
    return { ...base, answer: i % 3 === 0 ? 'yes' : 'no' };
  });
}

const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const haveTiny = existsSync(join(tiny, 'config.json'));
if (!haveTiny) console.warn(`queue test with the tiny LLaVA skipped: ${tiny} not found (set EMOLLM_SHARED_DIR)`);
const demo = join(repoRoot, 'node_modules', '@vladmandic', 'face-api', 'demo');

const withoutTiming = (r: EvalResults): unknown => ({ ...r, timing: undefined });

describe.skipIf(!haveRedis)('eval --queue with emollm workers (BullMQ on a real redis-server)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'emobench-queue-'));
  // the package's own dist/ (the native binary is found from the package root, dist/..)
  const cli = join(repoRoot, 'dist', 'cli.js');
  const bench = join(tmp, 'bench.jsonl');
  let redis: RedisServer;
  const children = new Set<ChildProcess>();

  beforeAll(async () => {
    writeFileSync(bench, synthetic(150).map(sampleToJsonl).join('\n') + '\n');
    // async: a blocked test worker misses vitest's RPC deadlines
    await promisify(execFile)(process.execPath, [join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(repoRoot, 'tsconfig.json')]);
    redis = await startRedis(tmp);
  }, 180_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await redis?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  function start(args: string[], name: string): ChildProcess & { log: () => string } {
    const p = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: tmp });
    let log = '';
    p.stdout!.on('data', (d) => (log += d));
    p.stderr!.on('data', (d) => (log += d));
    children.add(p);
    return Object.assign(p, { log: () => `${name}:\n${log}` });
  }
  const exited = (p: ChildProcess): Promise<number | null> =>
    p.exitCode !== null || p.signalCode !== null ? Promise.resolve(p.exitCode) : new Promise((r) => p.once('exit', (code) => r(code)));
  const lines = (f: string): string[] => (existsSync(f) ? readFileSync(f, 'utf8').split('\n').filter((l) => l.trim() !== '') : []);
  async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
    const t0 = Date.now();
    while (!cond()) {
      if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const worker = (name: string, model = 'random', throttleMs = 15): ReturnType<typeof start> =>
    start(['worker', '--queue', redis.url, '--model', model, '--throttle-ms', String(throttleMs), '--lock-ms', '1000'], name);

  it('kill a worker, kill the coordinator, restart: results.json equals the single-process run, each sample recorded once', async () => {
    const ref = await runEval({ bench, model: 'random', out: join(tmp, 'ref'), progress: false, summary: false, resamples: 200 });

    const out = join(tmp, 'queued');
    const log = join(out, 'predictions.jsonl');
    const coordinatorArgs = ['eval', '--queue', redis.url, '--bench', bench, '--model', 'random', '--out', out, '--resamples', '200', '--concurrency', '8'];
    const queue = new Queue('emollm-eval', { connection: { host: '127.0.0.1', port: redis.port } });
    try {
      // worker 1 takes a job and sits on it (throttled for 100 s) until it is killed: its job must
      // stall and be taken over by another worker once the 1 s lock expires
      const w1 = worker('worker 1', 'random', 100_000);
      const c1 = start(coordinatorArgs, 'coordinator 1');
      let held = 0;
      await until(() => {
        void queue.getActiveCount().then((n) => (held = n));
        return held >= 1;
      }, 'worker 1 to hold a job');
      const w2 = worker('worker 2');
      await until(() => lines(log).length >= 25, '25 predictions');
      w1.kill('SIGKILL');
      await exited(w1);
      await until(() => lines(log).length >= 70, '70 predictions');
      c1.kill('SIGKILL'); // jobs in flight keep running on the workers; their results wait in Redis
      await exited(c1);
      const before = lines(log).length;
      expect(before).toBeLessThan(150);
      const w3 = worker('worker 3');
      const c2 = start(coordinatorArgs, 'coordinator 2');
      const code = await exited(c2);
      expect(code, c2.log() + w2.log() + w3.log()).toBe(0);

      const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as EvalResults;
      expect(withoutTiming(results)).toEqual(withoutTiming(ref));
      expect(results.backend).toBe('random(seed=0)');
      expect(results.timing.resumedRecords).toBe(before);
      // every sample once in the append-only log, whatever was retried
      const ids = lines(log).map((l) => (JSON.parse(l) as { id: string }).id);
      expect(ids.length).toBe(150);
      expect(new Set(ids).size).toBe(150);
      expect(lines(join(tmp, 'ref', 'predictions.jsonl')).length).toBe(150);
      // worker 1's job was taken back from the dead worker and completed by another
      const completed = await queue.getJobs(['completed']);
      expect(completed.length).toBe(135); // once each: 150 less the 15 skipped (missing media) that never become jobs
      expect(completed.filter((j) => j.stalledCounter >= 1).length).toBeGreaterThanOrEqual(1);

      // a coordinator restarted on the finished run enqueues nothing and writes the same results
      const c3 = start(coordinatorArgs, 'coordinator 3');
      expect(await exited(c3), c3.log()).toBe(0);
      expect(lines(log).length).toBe(150);
      w2.kill('SIGTERM');
      w3.kill('SIGTERM');
      expect(await exited(w2), w2.log()).toBe(0);
      expect(await exited(w3), w3.log()).toBe(0);
    } finally {
      await queue.close();
    }
  }, 180_000);

  it('a worker serving another model fails the job loudly: the sample is an error, never a wrong answer', async () => {
    const out = join(tmp, 'mismatch');
    const w = worker('majority worker', 'majority');
    try {
      const c = start(['eval', '--queue', redis.url, '--bench', bench, '--model', 'random', '--seed', '7', '--limit', '6', '--out', out, '--resamples', '0'], 'coordinator');
      // nothing could be scored: the run ends, and says so with exit 1 (honest exits, issue 13)
      expect(await exited(c), c.log()).toBe(1);
      expect(c.log()).toMatch(/nothing could be scored/);
      const recs = lines(join(out, 'predictions.jsonl')).map((l) => JSON.parse(l) as { status: string; error?: string });
      expect(recs.length).toBe(6);
      expect(recs.every((r) => r.status === 'error' && /this worker serves "majority", the job is for "random"/.test(r.error ?? ''))).toBe(true);
    } finally {
      // stopped whatever the assertions said: a leftover worker would take the next test's jobs
      w.kill('SIGTERM');
      expect(await exited(w)).toBe(0);
    }
  }, 60_000);

  it.skipIf(!haveTiny)('a worker with the tiny LLaVA: the in-process native predictions', async () => {
    const EMO = ['happy', 'sad', 'angry', 'neutral'];
    const samples: BenchSample[] = [1, 2, 3, 4].map(
      (i) =>
        ({
          id: `demo/${i}`,
          task: i === 2 ? 'emo-o' : i === 4 ? 'sarcasm' : 'emo-c',
          source: 'demo',
          split: 'test',
          media: { type: 'image', path: `sample${i}.jpg` },
          ...(i === 1 || i === 3 ? { options: EMO } : {}),
          ...(i === 4 ? { text: 'Love Mondays.' } : {}),
          answer: i === 4 ? 'yes' : 'happy',
        }) as BenchSample,
    );
    const demoBench = join(tmp, 'demo.jsonl');
    writeFileSync(demoBench, samples.map(sampleToJsonl).join('\n') + '\n');
    const common = ['--bench', demoBench, '--model', tiny, '--media-root', demo, '--guidance', 'none', '--resamples', '50'];
    const ref = start(['eval', ...common, '--out', join(tmp, 'demo-native')], 'in process');
    expect(await exited(ref), ref.log()).toBe(0);
    const w = start(['worker', '--queue', redis.url, '--model', tiny], 'tiny worker');
    const c = start(['eval', '--queue', redis.url, ...common, '--out', join(tmp, 'demo-queued')], 'coordinator');
    expect(await exited(c), c.log() + w.log()).toBe(0);
    const strip = (d: string): unknown[] =>
      lines(join(d, 'predictions.jsonl'))
        .map((l) => JSON.parse(l) as { id: string; ms?: number })
        .map(({ ms: _ms, ...r }) => r)
        .sort((x, y) => (x.id < y.id ? -1 : 1));
    const a = strip(join(tmp, 'demo-native'));
    expect(a.length).toBe(4);
    expect(strip(join(tmp, 'demo-queued'))).toEqual(a);
    const ra = JSON.parse(readFileSync(join(tmp, 'demo-native', 'results.json'), 'utf8')) as EvalResults;
    const rb = JSON.parse(readFileSync(join(tmp, 'demo-queued', 'results.json'), 'utf8')) as EvalResults;
    expect(withoutTiming(rb)).toEqual(withoutTiming(ra));
    w.kill('SIGTERM');
    expect(await exited(w), w.log()).toBe(0);
  }, 180_000);

  it('an unreachable Redis is an error with a reason, not a hang', async () => {
    const c = start(['eval', '--queue', 'redis://127.0.0.1:1', '--bench', bench, '--model', 'random', '--out', join(tmp, 'nope')], 'coordinator');
    expect(await exited(c)).toBe(1);
    expect(c.log()).toMatch(/cannot reach Redis/);
    const w = start(['worker', '--queue', 'redis://127.0.0.1:1', '--model', 'random'], 'worker');
    expect(await exited(w)).toBe(1);
    expect(w.log()).toMatch(/cannot reach Redis/);
    const bad = start(['worker', '--queue', redis.url, '--model', 'random', '--bogus'], 'worker');
    expect(await exited(bad)).toBe(2); // a usage error, as for every command
    expect(bad.log()).toMatch(/worker: unknown option --bogus.*usage: emollm worker/s);
  }, 60_000);
});
