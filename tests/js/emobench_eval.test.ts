// The EmoBench evaluator: baselines end to end, the three report files, kill-and-resume in a child
// process, the OpenAI-compatible HTTP backend against a loopback server, and (when the tiny LLaVA
// is present) one native end-to-end run on the face-api demo photos.
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { faceBackend, httpBackend, majorityBackend, randomBackend, type Backend } from '../../lib/emobench/backends.js';
import { runEval, readPredictions, compareRuns, type EvalResults } from '../../lib/emobench/eval.js';
import { sampleToJsonl, type BenchSample, type BenchTask } from '../../lib/emobench/sample.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const haveTiny = existsSync(join(tiny, 'model.safetensors'));
if (!haveTiny) console.warn(`emobench native end-to-end test skipped: ${tiny} not found (set EMOLLM_SHARED_DIR)`);
const demo = join(repoRoot, 'node_modules', '@vladmandic', 'face-api', 'demo');

const tmp = mkdtempSync(join(tmpdir(), 'emobench-eval-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const TASKS: BenchTask[] = ['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'];
const EMO = ['happy', 'sad', 'angry', 'neutral'];
const INTENTS = ['complain', 'praise', 'ask for help'];

/** n synthetic samples over the six tasks; every 10th has a media file that does not exist. */
function synthetic(n: number): BenchSample[] {
  return Array.from({ length: n }, (_, i) => {
    const task = TASKS[i % 6]!;
    const id = `Synth/test/${String(i).padStart(5, '0')}`;
    const media = i % 10 === 9 ? { type: 'image' as const, path: `missing/${i}.jpg` } : null;
    const base = { id, task, source: 'Synth', split: 'test', media, text: `sample ${i}` };
    const pick = <T,>(xs: readonly T[]): T => xs[(i * 7 + (i >> 3)) % xs.length]!;
    if (task === 'emo-c') return { ...base, options: EMO, answer: pick(EMO) };
    if (task === 'emo-o') return { ...base, answer: pick(['happy', 'sad', 'fear']) };
    if (task === 'intent') return { ...base, options: INTENTS, answer: pick(INTENTS) };
    return { ...base, answer: i % 3 === 0 ? 'yes' : 'no' };
  });
}

function writeBench(name: string, samples: readonly BenchSample[]): string {
  const f = join(tmp, name);
  writeFileSync(f, samples.map(sampleToJsonl).join('\n') + '\n');
  return f;
}

const withoutTiming = (r: EvalResults): unknown => ({ ...r, timing: undefined });

describe('runEval with the baselines', () => {
  const samples = synthetic(120);
  const bench = writeBench('bench120.jsonl', samples);

  it('random: logs every prediction, skips missing media, writes the three report files', async () => {
    const out = join(tmp, 'random1');
    const r = await runEval({ bench, model: 'random', out, progress: false, summary: false, resamples: 200 });
    expect(r.counts).toMatchObject({ selected: 120, skipped: 12, errors: 0, ok: 108 });
    const recs = readPredictions(join(out, 'predictions.jsonl'));
    expect(recs.size).toBe(120);
    const skipped = [...recs.values()].filter((x) => x.status === 'skipped');
    expect(skipped.every((x) => x.reason === 'missing media')).toBe(true);
    for (const x of recs.values()) {
      expect(Object.keys(x)).toEqual(expect.arrayContaining(['id', 'task', 'raw', 'label', 'probabilities', 'unparsed', 'ms']));
    }
    for (const f of ['results.json', 'leaderboard.md', 'report.html']) expect(existsSync(join(out, f))).toBe(true);
    const html = readFileSync(join(out, 'report.html'), 'utf8');
    const md = readFileSync(join(out, 'leaderboard.md'), 'utf8');
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//); // no external assets
    expect(html).toContain('<svg');
    for (const t of TASKS) {
      const m = r.metrics.tasks[t]!;
      const acc = (m.accuracy * 100).toFixed(1);
      expect(html).toContain(`<tr data-task="${t}">`);
      expect(html).toContain(`<td class="num">${acc}</td>`);
      expect(md).toContain(`| ${t} | ${acc} (`);
    }
    expect(html).toContain((r.metrics.overall.score * 100).toFixed(1));
    expect(r.metrics.overall.complete).toBe(true);
    const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as EvalResults;
    expect(json.schema).toBe('emollm.emobench.results/1');
    expect(json.metrics.overall.score).toBeCloseTo(r.metrics.overall.score, 12);
  });

  it('random is deterministic (seeded per sample id), whatever the concurrency', async () => {
    const a = await runEval({ bench, model: 'random', out: join(tmp, 'random2'), concurrency: 1, progress: false, summary: false, resamples: 100 });
    const b = await runEval({ bench, model: 'random', out: join(tmp, 'random3'), concurrency: 16, progress: false, summary: false, resamples: 100 });
    expect(withoutTiming(b)).toEqual(withoutTiming(a));
    const c = await runEval({ bench, model: 'random', seed: 1, out: join(tmp, 'random4'), progress: false, summary: false, resamples: 100 });
    expect(c.metrics.tasks['emo-c']!.accuracy).not.toBe(a.metrics.tasks['emo-c']!.accuracy);
  });

  it('majority: the most frequent gold answer per task; --tasks and --limit', async () => {
    const r = await runEval({ bench, model: 'majority', out: join(tmp, 'majority'), tasks: ['hate', 'emo-c'], progress: false, summary: false, resamples: 0 });
    const scored = samples.filter((s) => (s.task === 'hate' || s.task === 'emo-c') && !s.media);
    for (const t of ['hate', 'emo-c'] as const) {
      const answers = scored.filter((s) => s.task === t).map((s) => s.answer);
      const counts = new Map<string, number>();
      // the majority backend counts the whole benchmark's answers (missing media included)
      for (const s of samples.filter((x) => x.task === t)) counts.set(s.answer, (counts.get(s.answer) ?? 0) + 1);
      const top = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0]![0];
      expect(r.metrics.tasks[t]!.accuracy).toBeCloseTo(answers.filter((a) => a === top).length / answers.length, 12);
    }
    expect(r.metrics.overall.missing).toEqual(['emo-o', 'intent', 'humor', 'sarcasm']);
    expect(readFileSync(join(tmp, 'majority', 'leaderboard.md'), 'utf8')).toContain('missing: emo-o, intent, humor, sarcasm');
    const lim = await runEval({ bench, model: 'majority', out: join(tmp, 'majority-lim'), limit: 7, progress: false, summary: false, resamples: 0 });
    expect(lim.counts.selected).toBe(7);
  });

  it('refuses to resume a different run in the same folder', async () => {
    await expect(runEval({ bench, model: 'majority', out: join(tmp, 'random1'), progress: false, summary: false })).rejects.toThrow(/another run/);
  });

  it('compare: paired bootstrap of two run folders', () => {
    const c = compareRuns(join(tmp, 'random1'), join(tmp, 'random2'), { resamples: 100 });
    expect(c.tasks.length).toBe(6);
    for (const t of c.tasks) expect(t).toMatchObject({ diff: 0, p: 1 }); // same seed: same answers
    const d = compareRuns(join(tmp, 'random1'), join(tmp, 'majority'), { resamples: 100 });
    expect(d.tasks.map((t) => t.task)).toEqual(['emo-c', 'hate']);
  });

  it('errors from a backend are counted, not scored', async () => {
    let k = 0;
    const flaky: Backend = {
      name: 'flaky',
      maxConcurrency: 1,
      async predict(s) {
        if (k++ % 2 === 0) throw new Error('boom');
        return { raw: 'x', label: s.answer, probabilities: null, unparsed: false };
      },
    };
    const r = await runEval({ bench, model: flaky, out: join(tmp, 'flaky'), tasks: ['emo-c'], progress: false, summary: false, resamples: 0 });
    expect(r.counts.errors).toBe(10); // 20 emo-c samples, every other one fails
    expect(r.metrics.tasks['emo-c']!.accuracy).toBe(1); // the errored ones are not wrong answers
    expect(r.metrics.tasks["emo-c"]!.errors).toBe(10);
  });
});

describe('kill and resume (child process)', () => {
  const dist = join(repoRoot, 'node_modules', '.cache', 'emobench-eval-test-dist');
  const samples = synthetic(300);
  const bench = writeBench('bench300.jsonl', samples);
  const script = join(tmp, 'run.mjs');

  beforeAll(() => {
    // Compile the library to a private folder (under the repo, so node_modules resolves).
    execFileSync(process.execPath, [join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(repoRoot, 'tsconfig.json'), '--outDir', dist, '--declaration', 'false', '--sourceMap', 'false'], {
      stdio: 'inherit',
    });
    // The random backend, slowed down, and (with a stall count) stopping for good after that many
    // predictions have started, so that the run is killed in the middle whatever the machine's load
    // (with only a delay, a parent descheduled for the rest of the run saw it finish first).
    writeFileSync(
      script,
      `import { runEval } from ${JSON.stringify(join(dist, 'emobench', 'eval.js'))};
import { randomBackend } from ${JSON.stringify(join(dist, 'emobench', 'backends.js'))};
import { parseSamples } from ${JSON.stringify(join(dist, 'emobench', 'sample.js'))};
import { readFileSync } from 'node:fs';
const [bench, out, delay, stallAfter] = process.argv.slice(2);
const inner = randomBackend(parseSamples(readFileSync(bench, 'utf8')), 0);
let started = 0;
const backend = { name: inner.name, maxConcurrency: 4, async predict(s, root, signal) {
  // a timer keeps the stalled process alive until the test kills it
  if (stallAfter !== undefined && ++started > Number(stallAfter)) await new Promise(() => setInterval(() => {}, 60_000));
  await new Promise((r) => setTimeout(r, Number(delay)));
  return inner.predict(s, root, signal);
} };
await runEval({ bench, model: backend, out, concurrency: 4, resamples: 300, summary: false });
`,
    );
  }, 180_000);

  it('a SIGKILLed run resumed with the same command ends with the uninterrupted results', async () => {
    const run = (out: string, delay: number, stallAfter?: number): ReturnType<typeof spawn> =>
      spawn(process.execPath, [script, bench, out, String(delay), ...(stallAfter === undefined ? [] : [String(stallAfter)])], { stdio: ['ignore', 'ignore', 'pipe'] });
    const wait = (p: ReturnType<typeof spawn>): Promise<number | null> =>
      p.exitCode !== null || p.signalCode !== null
        ? Promise.resolve(p.exitCode ?? -1)
        : new Promise((res) => p.on('exit', (code, sig) => res(code ?? (sig ? -1 : null))));

    const full = join(tmp, 'full');
    expect(await wait(run(full, 0))).toBe(0);

    // stalls once 60 predictions have started: killed after at least 40 were written, at most 60
    const killed = join(tmp, 'killed');
    const child = run(killed, 5, 60);
    const log = join(killed, 'predictions.jsonl');
    try {
      await new Promise<void>((res, rej) => {
        const t = setInterval(() => {
          const n = existsSync(log) ? readFileSync(log, 'utf8').split('\n').length - 1 : 0;
          if (n >= 40) {
            clearInterval(t);
            res();
          }
        }, 5);
        child.on('exit', () => {
          clearInterval(t);
          rej(new Error('the child finished before it could be killed'));
        });
      });
    } finally {
      child.kill('SIGKILL');
    }
    expect(await wait(child)).toBe(-1);  // dead: nothing more is written to the log
    const partial = readPredictions(log).size;
    expect(partial).toBeGreaterThanOrEqual(40);
    expect(partial).toBeLessThanOrEqual(60);
    expect(existsSync(join(killed, 'results.json'))).toBe(false);
    appendFileSync(log, '{"id":"Synth/test/0029'); // a torn write, as a kill mid-line leaves

    let stderr = '';
    const resumed = run(killed, 0);
    resumed.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    expect(await wait(resumed)).toBe(0);
    expect(stderr).toContain(`(+${partial} resumed)`);

    const a = JSON.parse(readFileSync(join(full, 'results.json'), 'utf8')) as EvalResults;
    const b = JSON.parse(readFileSync(join(killed, 'results.json'), 'utf8')) as EvalResults;
    expect(b.timing.resumedRecords).toBe(partial);
    expect(withoutTiming(b)).toEqual(withoutTiming(a));
    // every id once in the log (the torn line cut off), no finished id redone
    const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string });
    expect(lines.length).toBe(300);
    expect(new Set(lines.map((l) => l.id)).size).toBe(300);
  }, 120_000);

  it('the CLI: emollm eval and eval compare', () => {
    const out = join(tmp, 'cli');
    const r = execFileSync(process.execPath, [join(dist, 'cli.js'), 'eval', '--bench', bench, '--model', 'random', '--tasks', 'emo-c,sarcasm', '--out', out, '--resamples', '100'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(r).toBe('');
    const res = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as EvalResults;
    expect(res.config.tasks).toEqual(['emo-c', 'sarcasm']);
    expect(res.metrics.overall.missing).toEqual(['emo-o', 'intent', 'hate', 'humor']);
    const cmp = execFileSync(process.execPath, [join(dist, 'cli.js'), 'eval', 'compare', out, join(tmp, 'full'), '--resamples', '100', '--html', join(tmp, 'compare.html')], { encoding: 'utf8' });
    expect(readFileSync(join(tmp, 'compare.html'), 'utf8')).toContain('<svg');
    expect(cmp).toContain('| emo-c |');
    expect(cmp).toContain('| overall |');
  });
});

describe('HTTP backend (OpenAI-compatible, loopback server)', () => {
  let server: Server;
  let base = '';
  let handler: (req: IncomingMessage, body: string, res: ServerResponse) => void = () => undefined;
  const bodies: string[] = [];

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        bodies.push(body);
        handler(req, body, res);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const reply = (res: ServerResponse, content: string): void => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ choices: [{ message: { role: 'assistant', content } }] }));
  };
  const ac = new AbortController();
  const sample = (task: BenchTask, extra: Partial<BenchSample> = {}): BenchSample => ({
    id: `h/${task}`,
    task,
    source: 'Synth',
    split: 'test',
    media: null,
    answer: task === 'emo-c' ? 'happy' : task === 'emo-o' ? 'fear' : 'yes',
    ...(task === 'emo-c' ? { options: EMO } : {}),
    ...extra,
  });

  it('retries a 429, then decodes the answer; images go as base64 data URLs', async () => {
    let n = 0;
    bodies.length = 0;
    handler = (_req, _body, res) => {
      if (n++ === 0) {
        res.writeHead(429, { 'retry-after': '0' });
        res.end('slow down');
      } else reply(res, 'Yes, it is sarcastic.');
    };
    const b = httpBackend({ ...{ baseUrl: base, model: 'tiny' }, backoffMs: 1 });
    const s = sample('sarcasm', { media: { type: 'image', path: 'sample1.jpg' }, text: 'Great weather.' });
    const p = await b.predict(s, demo, ac.signal);
    expect(p).toMatchObject({ label: 'yes', unparsed: false, raw: 'Yes, it is sarcastic.' });
    expect(n).toBe(2);
    const req = JSON.parse(bodies[1]!) as { model: string; messages: Array<{ content: Array<{ type: string; image_url?: { url: string } }> }> };
    expect(req.model).toBe('tiny');
    const img = req.messages[0]!.content.find((c) => c.type === 'image_url')!;
    expect(img.image_url!.url.startsWith('data:image/jpeg;base64,/9j/')).toBe(true);
    expect(req.messages[0]!.content.some((c) => c.type === 'text')).toBe(true);
  });

  it('decodes close-set, open-set and unparsed answers', async () => {
    const b = httpBackend({ baseUrl: base, model: 'm', backoffMs: 1 });
    handler = (_req, _body, res) => reply(res, 'Answer: sad');
    expect(await b.predict(sample('emo-c'), tmp, ac.signal)).toMatchObject({ label: 'sad', unparsed: false });
    handler = (_req, _body, res) => reply(res, 'They look scared.');
    expect(await b.predict(sample('emo-o'), tmp, ac.signal)).toMatchObject({ label: 'fear', unparsed: false });
    handler = (_req, _body, res) => reply(res, 'Hard to say.');
    expect(await b.predict(sample('humor'), tmp, ac.signal)).toMatchObject({ label: null, unparsed: true, reason: 'uncertain' });
  });

  it('a 500 storm: every sample is an error, none is scored as wrong', async () => {
    let n = 0;
    handler = (_req, _body, res) => {
      n++;
      res.writeHead(500);
      res.end('internal');
    };
    const samples = synthetic(12).filter((s) => !s.media);
    const bench = writeBench('http.jsonl', samples);
    const r = await runEval({
      bench,
      model: httpBackend({ baseUrl: base, model: 'm', retries: 2, backoffMs: 1, concurrency: 3 }),
      out: join(tmp, 'http500'),
      progress: false,
      summary: false,
      resamples: 0,
    });
    expect(n).toBe(samples.length * 3);
    expect(r.counts).toMatchObject({ errors: samples.length, ok: 0 });
    expect(r.metrics.overall.n).toBe(0);
    const recs = [...readPredictions(join(tmp, 'http500', 'predictions.jsonl')).values()];
    expect(recs.every((x) => x.status === 'error' && /HTTP 500/.test(x.error ?? '') && /3 tries/.test(x.error ?? ''))).toBe(true);
  });

  it('timeouts are retried, then an error; a 400 is not retried', async () => {
    let n = 0;
    handler = () => {
      n++; // never answers
    };
    const b = httpBackend({ baseUrl: base, model: 'm', timeoutMs: 100, retries: 1, backoffMs: 1 });
    await expect(b.predict(sample('hate'), tmp, ac.signal)).rejects.toThrow(/timed out after 100 ms/);
    expect(n).toBe(2);
    n = 0;
    handler = (_req, _body, res) => {
      n++;
      res.writeHead(400);
      res.end('bad model');
    };
    await expect(b.predict(sample('hate'), tmp, ac.signal)).rejects.toThrow(/HTTP 400/);
    expect(n).toBe(1);
  });
});

describe.skipIf(!haveTiny)('native end to end (tiny LLaVA, face-api demo photos)', () => {
  it('six samples, the three report files', async () => {
    const samples: BenchSample[] = [
      { id: 'demo/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: 'sample1.jpg' }, options: EMO, answer: 'happy' },
      { id: 'demo/2', task: 'emo-o', source: 'demo', split: 'test', media: { type: 'image', path: 'sample2.jpg' }, answer: 'happy' },
      { id: 'demo/3', task: 'intent', source: 'demo', split: 'test', media: { type: 'image', path: 'sample3.jpg' }, text: 'Could you help me?', options: INTENTS, answer: 'ask for help' },
      { id: 'demo/4', task: 'hate', source: 'demo', split: 'test', media: { type: 'image', path: 'sample4.jpg' }, text: 'nice people', answer: 'no' },
      { id: 'demo/5', task: 'humor', source: 'demo', split: 'test', media: { type: 'image', path: 'sample5.jpg' }, text: 'when the wifi drops', answer: 'yes' },
      { id: 'demo/6', task: 'sarcasm', source: 'demo', split: 'test', media: { type: 'image', path: 'sample6.jpg' }, text: 'Love Mondays.', answer: 'yes' },
    ];
    const bench = writeBench('native.jsonl', samples);
    const out = join(tmp, 'native');
    mkdirSync(out, { recursive: true });
    // the tiny model's context is 256 tokens: the prompt without reasoning guidance fits
    const r = await runEval({ bench, model: tiny, mediaRoot: demo, out, progress: false, summary: false, resamples: 100, backendOptions: { guidance: 'none' } });
    const errs = [...readPredictions(join(out, "predictions.jsonl")).values()].filter((x) => x.error).map((x) => x.error);
    expect(errs).toEqual([]);
    expect(r.counts).toMatchObject({ selected: 6, errors: 0, skipped: 0, ok: 6 });
    const recs = [...readPredictions(join(out, 'predictions.jsonl')).values()];
    for (const x of recs.filter((x) => x.task !== 'emo-o')) {
      expect(x.probabilities).not.toBeNull();
      expect(Object.values(x.probabilities!).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    }
    expect(typeof recs.find((x) => x.task === 'emo-o')!.raw).toBe('string');
    for (const f of ['results.json', 'leaderboard.md', 'report.html']) expect(existsSync(join(out, f))).toBe(true);
    expect(r.metrics.overall.complete).toBe(true);
  }, 300_000);
});

describe('face backend (offline face perspective)', () => {
  it('emo-c from the faces, mapped onto the options; other tasks unparsed', async () => {
    const b = faceBackend();
    const ac = new AbortController();
    const s: BenchSample = { id: 'f/1', task: 'emo-c', source: 'demo', split: 'test', media: { type: 'image', path: 'sample1.jpg' }, options: ['happy', 'sad', 'angry', 'neutral', 'surprised'], answer: 'happy' };
    const p = await b.predict(s, demo, ac.signal);
    expect(p.unparsed).toBe(false);
    expect(s.options).toContain(p.label);
    expect(Object.values(p.probabilities!).reduce((x, y) => x + y, 0)).toBeCloseTo(1, 6);
    const o = await b.predict({ ...s, id: 'f/2', task: 'emo-o', options: undefined }, demo, ac.signal);
    expect(o.unparsed).toBe(false);
    expect(typeof o.label).toBe('string');
    expect(await b.predict({ ...s, id: 'f/3', task: 'sarcasm', options: undefined, answer: 'no' }, demo, ac.signal)).toMatchObject({ unparsed: true });
  });
});

describe('baseline factories', () => {
  it('random and majority answer from the sample options', async () => {
    const samples = synthetic(30);
    const rnd = randomBackend(samples, 3);
    const maj = majorityBackend(samples);
    const ac = new AbortController();
    for (const s of samples) {
      const a = await rnd.predict(s, tmp, ac.signal);
      const b = await rnd.predict(s, tmp, ac.signal);
      expect(a).toEqual(b);
      if (s.options) expect(s.options).toContain(a.label);
      const m = await maj.predict(s, tmp, ac.signal);
      expect(m.label).not.toBeNull();
    }
  });
});
