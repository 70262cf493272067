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
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, statSync, ftruncateSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';

import { formatUsage, parseCommand, UsageError, type CommandSpec } from '../cli/args.js';
import { EmollmError } from '../errors.js';
import { DEFAULT_MAX_BENCH_BYTES, limitOption } from '../limits.js';
import { readRegularFile, writeFileAtomicSync } from '../safe_fs.js';
import { createBackend, resolveMediaPath, type Backend, type CreateBackendOptions } from './backends.js';
import { acquireRunLock, claimRunFolder } from './run_folder.js';
import { computeMetrics, isCorrect, pairedBootstrap, type Metrics, type PairedComparison, type ScoredItem } from './metrics.js';
import { FailureWatch, type FailureWatchOptions } from './eval_events.js';
import { Progress, formatDuration } from './progress.js';
import { leaderboardRunsHtml, leaderboardRunsMarkdown, loadRuns, rankRuns } from './leaderboard.js';
import { formatComparison, writeReports } from './report.js';
import { compareHtml } from './report_compare.js';
import { breakdownBySource, browserSamples, referenceLines, type SourceBreakdown, type TaskReference } from './report_data.js';
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
  config: {
    tasks: BenchTask[];
    limit: number | null;
    mediaRoot: string;
    seed: number;
    /** Native models: whether the face perspective's cues and boxes were given (null: not a native model). */
    face?: boolean | null;
    /** Samples were answered without their media (--text-only). */
    textOnly?: boolean;
  };
  counts: { selected: number; ok: number; unparsed: number; errors: number; skipped: number };
  metrics: Metrics;
  /** Accuracy per source dataset inside each sub-task. */
  breakdown?: Partial<Record<BenchTask, SourceBreakdown[]>>;
  /** Chance and majority-label accuracy per sub-task, over the scored samples. */
  reference?: Partial<Record<BenchTask, TaskReference>>;
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
  /**
   * Use an `out` folder that holds another run (different run key), a torn run.json, or files of
   * no emollm run: the earlier run's files are moved into `previous-<time>/`. Default false: such a
   * folder rejects with `ERR_OUTPUT_EXISTS` / `ERR_MALFORMED_FILE`.
   */
  force?: boolean;
  /** Largest benchmark file read, in bytes (default 256 MiB). */
  maxBenchBytes?: number;
  /** Native models: run the face perspective (default true; `--no-face`: false). */
  face?: boolean;
  /** Answer without media (no media files needed; for the baselines, or a text-only ablation). */
  textOnly?: boolean;
  /** First-failure reports and the early stop on repeated connection failures. */
  failures?: FailureWatchOptions;
  /** `redis://host:port`: samples become BullMQ jobs that `emollm worker`s answer (queue.ts). */
  queue?: string;
}

const BASELINE_SPECS = new Set(['random', 'majority', 'null', 'face']);

/** Whether a `--model` spec names a native model (a folder or a .gguf), the backends that take the face perspective. */
export function isNativeSpec(spec: string): boolean {
  return !BASELINE_SPECS.has(spec) && !/^https?:\/\//i.test(spec);
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
    text = (await readRegularFile(benchPath, { maxBytes: limitOption('maxBenchBytes', options.maxBenchBytes, DEFAULT_MAX_BENCH_BYTES) })).toString('utf8');
  } catch (cause) {
    if (cause instanceof EmollmError && cause.code !== 'ERR_FILE_NOT_FOUND') throw cause;
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
  const native = typeof options.model === 'string' ? isNativeSpec(options.model) : options.model.face !== undefined;
  if (options.face === false && !native) throw bad('--no-face applies to native LLaVA / EmoLLM models only');
  const face: boolean | null = native ? (typeof options.model === 'string' ? options.face ?? true : options.model.face ?? null) : null;
  const textOnly = options.textOnly ?? false;

  // ---- the output folder: locked for this process; refuse to mix two different runs in one
  const out = resolve(options.out);
  mkdirSync(out, { recursive: true });
  const lock = acquireRunLock(out);
  try {
    return await runLocked(options, { startedAt, benchPath, text, sha256, all, tasks, selected, mediaRoot, seed, modelSpec, out, face, textOnly });
  } finally {
    lock.release();
  }
}

interface RunSetup {
  startedAt: Date;
  benchPath: string;
  /** The benchmark file's text (queue mode sends it to the workers). */
  text: string;
  sha256: string;
  all: BenchSample[];
  tasks: BenchTask[];
  selected: BenchSample[];
  mediaRoot: string;
  seed: number;
  modelSpec: string;
  out: string;
  face: boolean | null;
  textOnly: boolean;
}

async function runLocked(options: EvalOptions, setup: RunSetup): Promise<EvalResults> {
  const { startedAt, benchPath, text, sha256, all, tasks, selected, mediaRoot, seed, modelSpec, out, face, textOnly } = setup;
  const runKey = { bench: sha256, model: modelSpec, tasks, limit: options.limit ?? null, seed, face, textOnly };
  claimRunFolder(out, runKey, { force: options.force ?? false });
  const logFile = join(out, 'predictions.jsonl');
  repairLog(logFile);
  const previous = readPredictions(logFile);
  const selectedIds = new Set(selected.map((s) => s.id));
  // finished = ok or skipped; errored ids are tried again on resume
  const finished = new Set([...previous.values()].filter((r) => r.status !== 'error' && selectedIds.has(r.id)).map((r) => r.id));
  const todo = selected.filter((s) => !finished.has(s.id));

  const backend =
    options.queue !== undefined
      ? await (await import('./queue.js')).queueBackend({ // loaded on use: bullmq only for --queue
          url: options.queue,
          out,
          spec: modelSpec,
          benchText: text,
          benchSha256: sha256,
          seed,
          mediaRoot,
          ...(options.backendOptions?.guidance ? { guidance: options.backendOptions.guidance } : {}),
          ...(face !== null ? { face } : {}),
          ...(options.concurrency !== undefined ? { concurrency: options.concurrency } : {}),
        })
      : typeof options.model === 'string'
      ? await createBackend(options.model, { samples: all, seed, ...options.backendOptions, ...(face !== null ? { face } : {}) })
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

  const watch = new FailureWatch(options.failures);
  async function one(original: BenchSample): Promise<void> {
    const t0 = performance.now();
    let rec: PredictionRecord;
    const s = textOnly ? { ...original, media: null } : original;
    const base = { id: s.id, task: s.task, answer: s.answer };
    // media paths come from the (untrusted) benchmark: confined to the media root, real path included
    let p: string | null = null;
    let unsafe: EmollmError | undefined;
    try {
      p = await resolveMediaPath(s, mediaRoot);
    } catch (e) {
      if (!(e instanceof EmollmError)) throw e;
      unsafe = e;
    }
    if (unsafe) {
      rec = { ...base, status: 'error', raw: null, label: null, probabilities: null, unparsed: false, error: `${unsafe.message} [${unsafe.code}]`, correct: false, ms: 0 };
    } else if (p !== null && !hasMedia(p)) {
      rec = { ...base, status: 'skipped', raw: null, label: null, probabilities: null, unparsed: false, reason: 'missing media', correct: false, ms: 0 };
      watch.skipped(s.id, `${p} does not exist ( --media-root sets where media paths start${backend.name === 'majority' || backend.name.startsWith('random') ? '; --text-only runs this baseline without media' : ''})`);
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
        watch.ok();
      } catch (e) {
        if (signal.aborted) throw e;
        const msg = e instanceof Error ? `${e.message}${e instanceof EmollmError ? ` [${e.code}]` : ''}` : String(e);
        rec = { ...base, status: 'error', raw: null, label: null, probabilities: null, unparsed: false, error: msg, correct: false, ms: 0 };
        watch.error(s.id, e instanceof Error ? e.message : String(e), e instanceof EmollmError ? e.code : undefined);
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
        if (watch.stop) throw watch.stop;
        await one(todo[next++]!);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(1, todo.length)) }, worker));
  } finally {
    closeSync(fd);
    progress?.finish();
    if (typeof options.model === 'string' || options.queue !== undefined) await backend.close?.();
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
    config: { tasks, limit: options.limit ?? null, mediaRoot, seed, face, textOnly },
    counts: {
      selected: selected.length,
      ok: ok.length,
      unparsed: ok.filter((r) => r.unparsed).length,
      errors: ordered.filter((r) => r.status === 'error').length,
      skipped: ordered.filter((r) => r.status === 'skipped').length,
    },
    metrics,
    breakdown: breakdownBySource(selected, records, { resamples: options.resamples ?? 1000, seed }),
    reference: referenceLines(selected, records),
    timing: {
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      wallMs: finishedAt.getTime() - startedAt.getTime(),
      meanMsPerSample: sessionMs.length ? sessionMs.reduce((a, b) => a + b, 0) / sessionMs.length : 0,
      resumedRecords: finished.size,
    },
  };
  writeFileAtomicSync(join(out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeReports(out, results, { browser: await browserSamples(textOnly ? selected.map((s) => ({ ...s, media: null })) : selected, records, mediaRoot) });
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

/** `emollm eval`: one table entry per flag (lib/cli/args.ts parses and prints the usage). */
export const EVAL_SPEC = {
  name: 'eval',
  synopsis: '--bench FILE --model SPEC --out DIR',
  summary:
    'EmoBench evaluation. SPEC: a LLaVA / EmoLLM folder or .gguf | http://host:port/v1#model-name\n' +
    '(OpenAI-compatible) | face (offline face perspective) | random | majority (oracle-ish) | null.\n' +
    'A killed run resumed with the same command skips the ids it finished.',
  options: {
    bench: { type: 'string', value: 'FILE', description: 'the EmoBench JSONL (emollm bench build)' },
    model: { type: 'string', value: 'SPEC', description: 'what to evaluate (see above)' },
    out: { type: 'string', value: 'DIR', description: 'run folder: predictions.jsonl, results.json, leaderboard.md, report.html' },
    tasks: { type: 'list', value: 'T,...', choices: BENCH_TASKS, description: 'sub-tasks to run (default: all six)' },
    limit: { type: 'integer', description: 'first N selected samples' },
    'media-root': { type: 'string', value: 'DIR', description: "where media paths are relative to (default: the benchmark's folder)" },
    concurrency: { type: 'integer', description: 'samples in flight (HTTP; default 4)' },
    seed: { type: 'integer', description: 'random baseline and bootstrap seed (default 0)' },
    resamples: { type: 'integer', description: 'bootstrap resamples for the confidence intervals' },
    'timeout-ms': { type: 'integer', value: 'MS', description: 'HTTP request timeout' },
    retries: { type: 'integer', description: 'HTTP retries' },
    guidance: { type: 'string', choices: ['none', 'brief', 'full'], description: 'EmoPrompt reasoning guidance (default full)' },
    mmproj: { type: 'string', value: 'PATH', description: 'multimodal projector GGUF beside a text GGUF' },
    threads: { type: 'integer', description: 'native compute threads' },
    fsync: { type: 'boolean', description: 'fsync predictions.jsonl after every line' },
    force: { type: 'boolean', description: 'use an --out folder holding another run (its files move to previous-<time>/)' },
    'api-key-env': {
      type: 'string',
      value: 'NAME',
      description: 'send the environment variable NAME as the HTTP bearer token (never read implicitly; refused over plain http to a non-loopback host)',
    },
    'no-face': { type: 'boolean', description: 'native models: no face perspective (no face cues, no face boxes)' },
    'text-only': { type: 'boolean', description: 'answer without media: no media files needed (random / majority baselines; for a model, a text-only ablation)' },
    queue: { type: 'string', value: 'redis://host:port', description: 'enqueue the samples as BullMQ jobs for `emollm worker`s (docs/serving.md)' },
    json: { type: 'boolean', description: 'print results.json instead of the summary' },
  },
  notes:
    '  emollm eval compare RUN_A RUN_B [RUN_C ...]   paired bootstrap of A against each other run (eval compare --help)\n' +
    '  emollm eval leaderboard RUN...               ranks run folders by overall score (eval leaderboard --help)',
} as const satisfies CommandSpec;

/** `emollm eval compare`. */
export const EVAL_COMPARE_SPEC = {
  name: 'eval compare',
  synopsis: 'RUN_A RUN_B [RUN_C ...]',
  summary: 'paired bootstrap of run A against each other run on the sample ids both scored; text to stdout, HTML (forest plots) to --html',
  positionals: { min: 2, max: 1000 },
  options: {
    resamples: { type: 'integer', description: 'bootstrap resamples' },
    seed: { type: 'integer', description: 'bootstrap seed' },
    html: { type: 'string', value: 'FILE', description: 'the HTML report (default compare.html)' },
    json: { type: 'boolean', description: 'machine-readable output' },
  },
} as const satisfies CommandSpec;

/** `emollm eval leaderboard`. */
export const EVAL_LEADERBOARD_SPEC = {
  name: 'eval leaderboard',
  synopsis: 'RUN...',
  summary: 'ranks run folders by overall score: PREFIX.md and PREFIX.html, Markdown to stdout',
  positionals: { min: 1, max: 100000 },
  options: {
    out: { type: 'string', value: 'PREFIX', description: 'output prefix (default leaderboard)' },
    json: { type: 'boolean', description: 'machine-readable output' },
  },
} as const satisfies CommandSpec;

export const EVAL_USAGE = formatUsage(EVAL_SPEC);

/** `emollm eval ...` (the arguments after `eval`); returns the exit code. `json` is the legacy switch; --json works too. */
export async function evalCommand(argv: readonly string[], json = false): Promise<number> {
  if (argv[0] === 'compare') {
    const { values: v, positionals, help } = parseCommand(EVAL_COMPARE_SPEC, argv.slice(1));
    if (help) {
      console.log(formatUsage(EVAL_COMPARE_SPEC));
      return 0;
    }
    const html = v.html ?? 'compare.html';
    const [first, ...others] = positionals as [string, ...string[]];
    const cs = others.map((b) => compareRuns(first, b, { ...(v.resamples !== undefined ? { resamples: v.resamples } : {}), ...(v.seed !== undefined ? { seed: v.seed } : {}) }));
    console.log(json || v.json ? JSON.stringify(cs.length === 1 ? cs[0] : cs, null, 2) : cs.map(formatComparison).join('\n\n'));
    writeFileAtomicSync(html, compareHtml(cs));
    console.error(`wrote ${html}`);
    return 0;
  }
  if (argv[0] === 'leaderboard') {
    const { values: v, positionals, help } = parseCommand(EVAL_LEADERBOARD_SPEC, argv.slice(1));
    if (help) {
      console.log(formatUsage(EVAL_LEADERBOARD_SPEC));
      return 0;
    }
    const prefix = v.out ?? 'leaderboard';
    const entries = loadRuns(positionals);
    const md = leaderboardRunsMarkdown(entries);
    writeFileAtomicSync(`${prefix}.md`, md);
    writeFileAtomicSync(`${prefix}.html`, leaderboardRunsHtml(entries));
    console.log(json || v.json ? JSON.stringify(rankRuns(entries).map((e) => ({ dir: e.dir, model: e.results.model, overall: e.results.metrics.overall })), null, 2) : md);
    console.error(`wrote ${prefix}.md, ${prefix}.html`);
    return 0;
  }
  const { values: v, help } = parseCommand(EVAL_SPEC, argv);
  if (help) {
    console.log(EVAL_USAGE);
    return 0;
  }
  json ||= v.json === true;
  const { bench, model, out, tasks, limit, concurrency, seed, resamples, retries, mmproj, threads, guidance } = v;
  const mediaRoot = v['media-root'];
  const timeoutMs = v['timeout-ms'];
  if (!bench || !model || !out) throw new UsageError('eval needs --bench, --model and --out', EVAL_USAGE);
  const apiKeyEnv = v['api-key-env'];
  let apiKey: string | undefined;
  if (apiKeyEnv !== undefined) {
    apiKey = process.env[apiKeyEnv];
    if (apiKey === undefined || apiKey === '') throw bad(`--api-key-env ${apiKeyEnv}: the environment variable ${apiKeyEnv} is not set`);
  }
  const ac = new AbortController();
  const onSig = (): void => ac.abort();
  process.once('SIGINT', onSig);
  try {
    const r = await runEval({
      bench,
      model,
      out,
      ...(tasks ? { tasks: tasks as BenchTask[] } : {}),
      ...(limit !== undefined ? { limit } : {}),
      ...(mediaRoot !== undefined ? { mediaRoot } : {}),
      ...(concurrency !== undefined ? { concurrency } : {}),
      ...(seed !== undefined ? { seed } : {}),
      ...(resamples !== undefined ? { resamples } : {}),
      fsync: v.fsync === true,
      force: v.force === true,
      ...(v['no-face'] ? { face: false } : {}),
      ...(v['text-only'] ? { textOnly: true } : {}),
      ...(v.queue !== undefined ? { queue: v.queue } : {}),
      signal: ac.signal,
      summary: !json,
      backendOptions: {
        ...(mmproj ? { mmproj } : {}),
        ...(threads !== undefined ? { threads } : {}),
        ...(guidance !== undefined ? { guidance } : {}),
        ...(concurrency !== undefined || timeoutMs !== undefined || retries !== undefined || apiKey !== undefined
          ? {
              http: {
                ...(apiKey !== undefined ? { apiKey } : {}),
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
    if (r.counts.ok === 0) {
      console.error(
        `eval: nothing could be scored (${r.counts.selected} selected: ${r.counts.errors} errors, ${r.counts.skipped} skipped for missing media); ` +
          `see ${join(resolve(out), 'predictions.jsonl')}`,
      );
      return 1;
    }
    return 0;
  } finally {
    process.removeListener('SIGINT', onSig);
  }
}
