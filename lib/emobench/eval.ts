/**
 * The EmoBench evaluator: runs a backend over a benchmark file, logs every prediction to
 * `<out>/predictions.jsonl` as it is made (a killed run resumed with the same command skips the ids
 * it finished and ends with the same results), then writes results.json, leaderboard.md and
 * report.html (see docs/emobench-results.md).
 *
 *   emollm eval --bench FILE --model <dir|gguf|http://host:port/v1#name|face|random|majority|null>
 *               [--tasks emo-c,sarcasm] [--limit N] [--media-root DIR] [--concurrency N] --out DIR
 *   emollm eval compare RUN_A RUN_B
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, statSync, ftruncateSync, writeFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';

import { EmollmError } from '../errors.js';
import { createBackend, mediaPath, type Backend, type CreateBackendOptions } from './backends.js';
import { computeMetrics, isCorrect, pairedBootstrap, type Metrics, type PairedComparison, type ScoredItem } from './metrics.js';
import { Progress, formatDuration } from './progress.js';
import { formatComparison, writeReports } from './report.js';
import { BENCH_TASKS, parseSamples, type BenchSample, type BenchTask } from './sample.js';

/** One line of predictions.jsonl. */
export interface PredictionRecord {
  id: string;
  task: BenchTask;
  status: 'ok' | 'error' | 'skipped';
  /** The gold answer (so runs can be compared without the benchmark). */
  answer: string;
  raw: string | null;
  label: string | null;
  probabilities: Record<string, number> | null;
  unparsed: boolean;
  /** Why unparsed / skipped. */
  reason?: string;
  error?: string;
  correct: boolean;
  /** Wall time of this prediction. */
  ms: number;
}

export const RESULTS_SCHEMA = 'emollm.emobench.results/1';

export interface EvalResults {
  schema: typeof RESULTS_SCHEMA;
  bench: { path: string; sha256: string; samples: number };
  model: string;
  backend: string;
  config: { tasks: BenchTask[]; limit: number | null; mediaRoot: string; seed: number };
  counts: { selected: number; ok: number; unparsed: number; errors: number; skipped: number };
  metrics: Metrics;
  /** Everything that varies between identical runs lives here. */
  timing: { startedAt: string; finishedAt: string; wallMs: number; meanMsPerSample: number; resumedRecords: number };
}

export interface EvalOptions {
  bench: string;
  /** A `--model` spec, or a ready backend. */
  model: string | Backend;
  out: string;
  tasks?: readonly BenchTask[];
  limit?: number;
  mediaRoot?: string;
  concurrency?: number;
  seed?: number;
  /** Bootstrap resamples (default 1000). */
  resamples?: number;
  /** fsync predictions.jsonl after every line (default false: each line is written with one write(2) as it is made). */
  fsync?: boolean;
  /** Progress bar on stderr (default true). */
  progress?: boolean | Progress;
  /** Write the summary to stderr at the end (default true). */
  summary?: boolean;
  signal?: AbortSignal;
  backendOptions?: Omit<CreateBackendOptions, 'samples' | 'seed'>;
}

function bad(msg: string): EmollmError {
  return new EmollmError('ERR_INVALID_ARGUMENT', msg);
}

/** Reads predictions.jsonl; a torn last line (a killed write) is dropped. The last record of an id wins. */
export function readPredictions(file: string): Map<string, PredictionRecord> {
  const out = new Map<string, PredictionRecord>();
  if (!existsSync(file)) return out;
  const lines = readFileSync(file, 'utf8').split('\n');
  lines.forEach((l, i) => {
    if (l.trim() === '') return;
    try {
      const r = JSON.parse(l) as PredictionRecord;
      out.set(r.id, r);
    } catch (cause) {
      if (i < lines.length - 1 && lines.slice(i + 1).some((x) => x.trim() !== ''))
        throw new EmollmError('ERR_MALFORMED_FILE', `${file}: line ${i + 1} is not JSON`, { file, cause });
    }
  });
  return out;
}

/** Cuts a torn last line off so appends start on a fresh line. */
function repairLog(file: string): void {
  if (!existsSync(file)) return;
  const buf = readFileSync(file);
  if (buf.length === 0 || buf[buf.length - 1] === 0x0a) return;
  const cut = buf.lastIndexOf(0x0a) + 1;
  const fd = openSync(file, 'r+');
  try {
    ftruncateSync(fd, cut);
  } finally {
    closeSync(fd);
  }
}

function toScored(r: PredictionRecord): ScoredItem {
  return { id: r.id, task: r.task, answer: r.answer, label: r.label, unparsed: r.unparsed, status: r.status };
}

/** Runs an evaluation (resuming one in `out`), writes the three report files, returns the results. */
export async function runEval(options: EvalOptions): Promise<EvalResults> {
  const startedAt = new Date();
  const benchPath = resolve(options.bench);
  let text: string;
  try {
    text = readFileSync(benchPath, 'utf8');
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${options.bench}: cannot read the benchmark`, { file: options.bench, cause });
  }
  const sha256 = createHash('sha256').update(text).digest('hex');
  const all = parseSamples(text);
  const tasks = [...(options.tasks ?? BENCH_TASKS)];
  for (const t of tasks) if (!BENCH_TASKS.includes(t)) throw bad(`unknown task ${JSON.stringify(t)} (${BENCH_TASKS.join(', ')})`);
  let selected = all.filter((s) => tasks.includes(s.task));
  if (options.limit !== undefined) {
    if (!Number.isInteger(options.limit) || options.limit < 0) throw bad('--limit must be a non-negative integer');
    selected = selected.slice(0, options.limit);
  }
  const mediaRoot = resolve(options.mediaRoot ?? dirname(benchPath));
  const seed = options.seed ?? 0;
  const modelSpec = typeof options.model === 'string' ? options.model : options.model.name;

  // ---- the output folder; refuse to mix two different runs in one
  const out = resolve(options.out);
  mkdirSync(out, { recursive: true });
  const runFile = join(out, 'run.json');
  const runKey = { bench: sha256, model: modelSpec, tasks, limit: options.limit ?? null, seed };
  if (existsSync(runFile)) {
    const prev = JSON.parse(readFileSync(runFile, 'utf8')) as typeof runKey;
    if (JSON.stringify(prev) !== JSON.stringify(runKey))
      throw bad(`${out} holds another run (${JSON.stringify(prev)}); use a new --out to start a different one`);
  } else writeFileSync(runFile, `${JSON.stringify(runKey, null, 2)}\n`);
  const logFile = join(out, 'predictions.jsonl');
  repairLog(logFile);
  const previous = readPredictions(logFile);
  const selectedIds = new Set(selected.map((s) => s.id));
  // finished = ok or skipped; errored ids are tried again on resume
  const finished = new Set([...previous.values()].filter((r) => r.status !== 'error' && selectedIds.has(r.id)).map((r) => r.id));
  const todo = selected.filter((s) => !finished.has(s.id));

  const backend =
    typeof options.model === 'string'
      ? await createBackend(options.model, { samples: all, seed, ...options.backendOptions })
      : options.model;
  const concurrency = Math.max(1, Math.min(options.concurrency ?? backend.maxConcurrency, backend.maxConcurrency));
  const progress =
    options.progress instanceof Progress
      ? options.progress
      : options.progress === false
        ? undefined
        : new Progress(todo.length, finished.size, { label: `eval ${backend.name}` });

  const fd = openSync(logFile, 'a');
  const records = new Map<string, PredictionRecord>();
  for (const id of finished) records.set(id, previous.get(id)!);
  const signal = options.signal ?? new AbortController().signal;
  const mediaSeen = new Map<string, boolean>();
  const hasMedia = (p: string): boolean => {
    let v = mediaSeen.get(p);
    if (v === undefined) mediaSeen.set(p, (v = existsSync(p)));
    return v;
  };

  async function one(s: BenchSample): Promise<void> {
    const t0 = performance.now();
    let rec: PredictionRecord;
    const p = mediaPath(s, mediaRoot);
    const base = { id: s.id, task: s.task, answer: s.answer };
    if (p !== null && !hasMedia(p)) {
      rec = { ...base, status: 'skipped', raw: null, label: null, probabilities: null, unparsed: false, reason: 'missing media', correct: false, ms: 0 };
    } else {
      try {
        const pr = await backend.predict(s, mediaRoot, signal);
        rec = {
          ...base,
          status: 'ok',
          raw: pr.raw,
          label: pr.label,
          probabilities: pr.probabilities,
          unparsed: pr.unparsed,
          ...(pr.reason !== undefined ? { reason: pr.reason } : {}),
          correct: false,
          ms: 0,
        };
        rec.correct = isCorrect(rec);
      } catch (e) {
        if (signal.aborted) throw e;
        const msg = e instanceof Error ? `${e.message}${e instanceof EmollmError ? ` [${e.code}]` : ''}` : String(e);
        rec = { ...base, status: 'error', raw: null, label: null, probabilities: null, unparsed: false, error: msg, correct: false, ms: 0 };
      }
      rec.ms = Math.round((performance.now() - t0) * 1000) / 1000;
    }
    writeSync(fd, `${JSON.stringify(rec)}\n`);
    if (options.fsync) fsyncSync(fd);
    records.set(s.id, rec);
    progress?.tick(rec.status);
  }

  try {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < todo.length) {
        if (signal.aborted) throw new EmollmError('ERR_ABORTED', 'the evaluation was aborted');
        await one(todo[next++]!);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(1, todo.length)) }, worker));
  } finally {
    closeSync(fd);
    progress?.finish();
    if (typeof options.model === 'string') await backend.close?.();
  }

  // ---- results, in benchmark order
  const ordered = selected.map((s) => records.get(s.id)!);
  const metrics = computeMetrics(ordered.map(toScored), { resamples: options.resamples ?? 1000, seed });
  const ok = ordered.filter((r) => r.status === 'ok');
  const finishedAt = new Date();
  const sessionMs = ordered.filter((r) => !finished.has(r.id)).map((r) => r.ms);
  const results: EvalResults = {
    schema: RESULTS_SCHEMA,
    bench: { path: benchPath, sha256, samples: all.length },
    model: modelSpec,
    backend: backend.name,
    config: { tasks, limit: options.limit ?? null, mediaRoot, seed },
    counts: {
      selected: selected.length,
      ok: ok.length,
      unparsed: ok.filter((r) => r.unparsed).length,
      errors: ordered.filter((r) => r.status === 'error').length,
      skipped: ordered.filter((r) => r.status === 'skipped').length,
    },
    metrics,
    timing: {
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      wallMs: finishedAt.getTime() - startedAt.getTime(),
      meanMsPerSample: sessionMs.length ? sessionMs.reduce((a, b) => a + b, 0) / sessionMs.length : 0,
      resumedRecords: finished.size,
    },
  };
  writeFileSync(join(out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeReports(out, results);
  if (options.summary !== false) process.stderr.write(`${formatSummary(results)}\n`);
  return results;
}

const pct = (x: number): string => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}` : '-');

/** The end-of-run summary. */
export function formatSummary(r: EvalResults): string {
  const m = r.metrics;
  const lines = [
    `EmoBench: ${r.model} on ${r.bench.path}`,
    `  ${r.counts.selected} samples: ${r.counts.ok} scored (${r.counts.unparsed} unparsed), ${r.counts.errors} errors, ${r.counts.skipped} skipped (missing media)`,
  ];
  for (const t of BENCH_TASKS) {
    const x = m.tasks[t];
    if (!x) continue;
    lines.push(
      `  ${t.padEnd(8)} acc ${pct(x.accuracy).padStart(5)} [${pct(x.accuracyCI.low)}, ${pct(x.accuracyCI.high)}]  macro-F1 ${pct(x.macroF1).padStart(5)}  unparsed ${pct(x.unparsedRate)}%  n=${x.n}`,
    );
  }
  lines.push(
    `  overall  ${pct(m.overall.score)} [${pct(m.overall.scoreCI.low)}, ${pct(m.overall.scoreCI.high)}]` +
      (m.overall.complete ? ' (mean of the six sub-task accuracies)' : ` (mean over ${m.overall.tasks.join(', ') || 'no task'}; missing: ${m.overall.missing.join(', ')})`),
  );
  lines.push(`  ${formatDuration(r.timing.wallMs)} wall, ${r.timing.meanMsPerSample.toFixed(1)} ms/sample`);
  return lines.join('\n');
}

/** Compares two run folders: paired bootstrap on the ids scored in both. */
export function compareRuns(dirA: string, dirB: string, options: { resamples?: number; seed?: number } = {}): PairedComparison & { a: string; b: string } {
  const load = (d: string): ScoredItem[] => {
    const f = join(d, 'predictions.jsonl');
    if (!existsSync(f) || !statSync(f).isFile()) throw new EmollmError('ERR_FILE_NOT_FOUND', `${d}: no predictions.jsonl`, { file: f });
    return [...readPredictions(f).values()].map(toScored);
  };
  const name = (d: string): string => {
    try {
      return (JSON.parse(readFileSync(join(d, 'results.json'), 'utf8')) as EvalResults).model;
    } catch {
      return d;
    }
  };
  return { ...pairedBootstrap(load(dirA), load(dirB), options), a: name(dirA), b: name(dirB) };
}

// ---------------------------------------------------------------------------------------------
// CLI

function take(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined) throw bad(`${name} needs a value`);
  args.splice(i, 2);
  return v;
}

function takeInt(args: string[], name: string): number | undefined {
  const v = take(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw bad(`${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return n;
}

export const EVAL_USAGE = `usage:
  emollm eval --bench FILE --model SPEC --out DIR [options]
    SPEC: a LLaVA / EmoLLM folder or .gguf | http://host:port/v1#model-name (OpenAI-compatible)
          | face (offline face perspective) | random | majority (oracle-ish) | null
    --tasks emo-c,sarcasm   sub-tasks to run (default: all six)
    --limit N               first N selected samples
    --media-root DIR        where media paths are relative to (default: the benchmark's folder)
    --concurrency N         samples in flight (HTTP; default 4)
    --seed S                random baseline and bootstrap seed (default 0)
    --timeout-ms MS --retries N    HTTP request timeout and retries
    --guidance none|brief|full     EmoPrompt reasoning guidance (default full)
    --mmproj PATH                  native model loading
    --device cpu|cuda --threads N  the runtime configuration (as for every emollm command)
    --fsync                 fsync predictions.jsonl after every line
  emollm eval compare RUN_A RUN_B   paired bootstrap on the sample ids both runs scored`;

/** `emollm eval ...`; returns the exit code. */
export async function evalCommand(argv: readonly string[], json = false): Promise<number> {
  const args = [...argv];
  if (args[0] === 'compare') {
    const resamples = takeInt(args, '--resamples');
    const seed = takeInt(args, '--seed');
    const [a, b] = args.slice(1);
    if (!a || !b) throw bad('eval compare needs two run folders');
    const c = compareRuns(a, b, { ...(resamples !== undefined ? { resamples } : {}), ...(seed !== undefined ? { seed } : {}) });
    console.log(json ? JSON.stringify(c, null, 2) : formatComparison(c));
    return 0;
  }
  if (args.includes('-h') || args.includes('--help')) {
    console.log(EVAL_USAGE);
    return 0;
  }
  const bench = take(args, '--bench');
  const model = take(args, '--model');
  const out = take(args, '--out');
  const tasks = take(args, '--tasks');
  const limit = takeInt(args, '--limit');
  const mediaRoot = take(args, '--media-root');
  const concurrency = takeInt(args, '--concurrency');
  const seed = takeInt(args, '--seed');
  const resamples = takeInt(args, '--resamples');
  const timeoutMs = takeInt(args, '--timeout-ms');
  const retries = takeInt(args, '--retries');
  const mmproj = take(args, '--mmproj');
  const threads = takeInt(args, '--threads');
  const guidance = take(args, '--guidance');
  if (guidance !== undefined && !['none', 'brief', 'full'].includes(guidance)) throw bad('--guidance must be none, brief or full');
  const fsyncIdx = args.indexOf('--fsync');
  if (fsyncIdx >= 0) args.splice(fsyncIdx, 1);
  if (args.length > 0) throw bad(`eval: unexpected ${JSON.stringify(args[0])}\n${EVAL_USAGE}`);
  if (!bench || !model || !out) throw bad(`eval needs --bench, --model and --out\n${EVAL_USAGE}`);
  const ac = new AbortController();
  const onSig = (): void => ac.abort();
  process.once('SIGINT', onSig);
  try {
    const r = await runEval({
      bench,
      model,
      out,
      ...(tasks ? { tasks: tasks.split(',').map((t) => t.trim()).filter((t) => t !== '') as BenchTask[] } : {}),
      ...(limit !== undefined ? { limit } : {}),
      ...(mediaRoot !== undefined ? { mediaRoot } : {}),
      ...(concurrency !== undefined ? { concurrency } : {}),
      ...(seed !== undefined ? { seed } : {}),
      ...(resamples !== undefined ? { resamples } : {}),
      fsync: fsyncIdx >= 0,
      signal: ac.signal,
      summary: !json,
      backendOptions: {
        ...(mmproj ? { mmproj } : {}),
        ...(threads !== undefined ? { threads } : {}),
        ...(guidance !== undefined ? { guidance: guidance as 'none' | 'brief' | 'full' } : {}),
        ...(concurrency !== undefined || timeoutMs !== undefined || retries !== undefined
          ? {
              http: {
                ...(concurrency !== undefined ? { concurrency } : {}),
                ...(timeoutMs !== undefined ? { timeoutMs } : {}),
                ...(retries !== undefined ? { retries } : {}),
              },
            }
          : {}),
      },
    });
    if (json) console.log(JSON.stringify(r, null, 2));
    else console.error(`wrote ${join(resolve(out), 'results.json')}, leaderboard.md, report.html`);
    return 0;
  } finally {
    process.removeListener('SIGINT', onSig);
  }
}
