// The hostile-input corpus (tests/hostile/corpus.json, made by tests/hostile/make_corpus.mjs):
// models, configs, images, benchmark lines and HTTP replies built to break things. Every entry must
// end in the typed error its manifest names, or in its documented result ('ok', or 'record:...'
// for what the evaluator logs), and nothing may be written outside the run folder or changed in
// the corpus itself.
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runEval, type PredictionRecord } from '../../lib/emobench/eval.js';
import { EmollmError } from '../../lib/errors.js';
import { decodeImage } from '../../lib/image.js';
import { native } from '../../lib/native.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const corpusDir = join(repoRoot, 'tests', 'hostile');
const manifest = JSON.parse(readFileSync(join(corpusDir, 'corpus.json'), 'utf8')) as {
  entries: Array<{ kind: 'models' | 'configs' | 'images' | 'bench' | 'http'; file: string; expect: string; why: string }>;
};

/** Every file under `dir` with its size and sha256 (to prove nothing was written or changed). */
function snapshot(dir: string, skip: (rel: string) => boolean = () => false): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      const rel = relative(dir, p);
      if (skip(rel)) continue;
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else out.set(rel, createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(dir);
  return out;
}

/** The outcome of a promise: 'ok', or the EmollmError code; anything else fails the test. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (!(e instanceof EmollmError)) throw new Error(`not a typed error: ${String(e)}`, { cause: e });
    return e.code;
  }
}

const matches = (got: string, expected: string): boolean => expected.split('|').includes(got);

const before = snapshot(corpusDir);
const sandbox = mkdtempSync(join(tmpdir(), 'emollm-hostile-'));
afterAll(() => {
  // the corpus is read-only input: not one byte changed, nothing added
  expect(snapshot(corpusDir)).toEqual(before);
  rmSync(sandbox, { recursive: true, force: true });
});

describe('hostile corpus', () => {
  it('has entries of every kind', () => {
    const kinds = new Set(manifest.entries.map((e) => e.kind));
    expect([...kinds].sort()).toEqual(['bench', 'configs', 'http', 'images', 'models']);
    expect(manifest.entries.length).toBeGreaterThanOrEqual(40);
  });

  for (const e of manifest.entries.filter((x) => x.kind === 'models')) {
    it(`model ${e.file} (${e.why}) -> ${e.expect}`, async () => {
      const f = join(corpusDir, 'files', e.file);
      const inspect = f.endsWith('.gguf') ? native().inspectGguf(f) : native().inspectSafetensors(f);
      expect(await outcome(inspect)).toSatisfy((c: string) => matches(c, e.expect));
      // loading goes through the same checks and must fail typed as well
      expect(await outcome(native().loadModel(f, {}))).not.toBe('ok');
    });
  }

  for (const e of manifest.entries.filter((x) => x.kind === 'configs')) {
    it(`config ${e.file} (${e.why}) -> ${e.expect}`, async () => {
      const folder = dirname(join(corpusDir, 'files', e.file));
      expect(await outcome(native().loadModel(folder, {}))).toSatisfy((c: string) => matches(c, e.expect));
    });
  }

  for (const e of manifest.entries.filter((x) => x.kind === 'images')) {
    it(`image ${e.file} (${e.why}) -> ${e.expect}`, async () => {
      const f = join(corpusDir, 'files', e.file);
      expect(await outcome(decodeImage(f, { maxPixels: 50_000_000 }))).toSatisfy((c: string) => matches(c, e.expect));
      expect(await outcome(decodeImage(readFileSync(f)))).toSatisfy((c: string) => matches(c, e.expect));
    });
  }

  /** Runs an evaluation in a fresh sandbox; returns its outcome and records; checks it wrote only into `out`. */
  async function evalIn(name: string, bench: string, model: string): Promise<{ outcome: string; records: PredictionRecord[] }> {
    const box = join(sandbox, name.replace(/[^\w.-]/g, '_'));
    mkdirSync(join(box, 'media'), { recursive: true });
    cpSync(bench, join(box, 'bench.jsonl'));
    const outside = snapshot(box);
    const got = await outcome(
      runEval({ bench: join(box, 'bench.jsonl'), model, out: join(box, 'out'), mediaRoot: join(box, 'media'), progress: false, summary: false, backendOptions: { http: { retries: 0, backoffMs: 1, timeoutMs: 1500 } } }),
    );
    expect(snapshot(box, (rel) => rel === 'out' || rel.startsWith(`out/`))).toEqual(outside);
    let records: PredictionRecord[] = [];
    try {
      records = readFileSync(join(box, 'out', 'predictions.jsonl'), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as PredictionRecord);
    } catch {
      // no log: the run failed before it started
    }
    return { outcome: got, records };
  }

  function checkRecord(records: PredictionRecord[], expected: string): void {
    expect(records).toHaveLength(1);
    const r = records[0]!;
    const want = expected.slice('record:'.length);
    if (want === 'skipped') expect(r.status).toBe('skipped');
    else if (want === 'unparsed') expect(r).toMatchObject({ status: 'ok', unparsed: true });
    else {
      expect(r.status).toBe('error');
      expect(r.error).toContain(`[${want}]`);
    }
  }

  for (const e of manifest.entries.filter((x) => x.kind === 'bench')) {
    it(`benchmark ${e.file} (${e.why}) -> ${e.expect}`, async () => {
      const polluted = ({} as Record<string, unknown>).polluted;
      const r = await evalIn(e.file, join(corpusDir, 'files', e.file), 'random');
      expect(({} as Record<string, unknown>).polluted).toBe(polluted);
      if (e.expect.startsWith('record:')) {
        expect(r.outcome).toBe('ok');
        checkRecord(r.records, e.expect);
      } else expect(r.outcome).toSatisfy((c: string) => matches(c, e.expect));
    });
  }

  describe('HTTP replies', () => {
    let server: Server;
    let base = '';
    beforeAll(async () => {
      server = createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          const name = (req.url ?? '').split('/')[1] ?? '';
          let reply: { status: number; body: string; repeat?: number; drip?: boolean; headers?: Record<string, string> };
          try {
            reply = JSON.parse(readFileSync(join(corpusDir, 'files', 'http', `${name}.json`), 'utf8')) as typeof reply;
          } catch {
            res.statusCode = 404;
            res.end();
            return;
          }
          res.statusCode = reply.status;
          for (const [k, v] of Object.entries(reply.headers ?? {})) res.setHeader(k, v);
          if (reply.headers?.['content-length']) {
            // a lying length: send a little, then hang up
            res.flushHeaders();
            res.write(reply.body);
            setTimeout(() => res.destroy(), 50);
            return;
          }
          if (reply.drip) {
            res.flushHeaders();
            const t = setInterval(() => res.write(' '), 100);
            res.on('close', () => clearInterval(t));
            return;
          }
          let n = reply.repeat ?? 1;
          const push = (): void => {
            while (n-- > 0) if (!res.write(reply.body)) return void res.once('drain', push);
            res.end();
          };
          res.on('error', () => undefined);
          push();
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise<void>((r) => server.close(() => r())));

    const oneSample = join(corpusDir, 'files', 'bench', 'huge-text.jsonl');
    for (const e of manifest.entries.filter((x) => x.kind === 'http')) {
      it(`reply ${e.file} (${e.why}) -> ${e.expect}`, async () => {
        const name = e.file.replace(/^http\//, '').replace(/\.json$/, '');
        const r = await evalIn(`http-${name}`, oneSample, `${base}/${name}/v1#m`);
        expect(r.outcome).toBe('ok');
        checkRecord(r.records, e.expect);
      });
    }
  });
});
