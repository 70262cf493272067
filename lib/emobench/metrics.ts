/**
 * EmoBench metrics: per sub-task accuracy, macro-F1, per-class recall, confusion matrices and the
 * unparsed rate; the overall score (the mean of the six sub-task accuracies, as the EmoBench paper
 * defines it); seeded bootstrap 95% confidence intervals; and a paired bootstrap comparison of two
 * runs on their shared sample ids.
 *
 * Conventions (see docs/emobench-results.md):
 * - Only predictions with `status: 'ok'` are scored. Errors (a backend failure) and skipped samples
 *   (missing media) are counted and reported, never scored.
 * - An unparsed answer is scored as wrong (it counts in `n` and lowers the accuracy).
 * - Labels are compared trimmed and case-insensitively; the confusion matrix and the class lists
 *   use the gold spelling when there is one.
 * - Macro-F1 averages the per-class F1 over every class that occurs as a gold or a predicted label
 *   (scikit-learn's `f1_score(average='macro', zero_division=0)`); unparsed answers are not a class
 *   (they lower the recall of their gold class).
 */
import { BENCH_TASKS, type BenchTask } from './sample.js';

/** What the metrics need from one prediction. */
export interface ScoredItem {
  id: string;
  task: BenchTask;
  /** The gold answer. */
  answer: string;
  /** The parsed label; null when unparsed, errored or skipped. */
  label: string | null;
  unparsed: boolean;
  status: 'ok' | 'error' | 'skipped';
}

export interface Interval {
  low: number;
  high: number;
}

export interface TaskMetrics {
  task: BenchTask;
  /** Scored predictions (status ok, unparsed included). */
  n: number;
  correct: number;
  accuracy: number;
  /** 95% percentile bootstrap interval of the accuracy. */
  accuracyCI: Interval;
  macroF1: number;
  unparsed: number;
  unparsedRate: number;
  /** Backend failures (not scored). */
  errors: number;
  /** Samples skipped (missing media; not scored). */
  skipped: number;
  /** Classes (gold and predicted labels), sorted case-insensitively. */
  classes: string[];
  /** Recall of each gold class (classes never gold are absent). */
  perClassRecall: Record<string, number>;
  perClassF1: Record<string, number>;
  /** Confusion matrix: rows gold classes (`classes` order), columns `classes` + a final "(unparsed)" column. */
  confusion: number[][];
}

export interface OverallMetrics {
  /** Mean of the present sub-tasks' accuracies (the paper's overall score when all six are present). */
  score: number;
  scoreCI: Interval;
  /** The sub-tasks that have at least one scored prediction. */
  tasks: BenchTask[];
  /** EmoBench sub-tasks with no scored prediction. */
  missing: BenchTask[];
  /** True when all six sub-tasks are present (the score is the paper's). */
  complete: boolean;
  /** Micro accuracy over all scored predictions (for reference; not the paper's score). */
  microAccuracy: number;
  n: number;
  errors: number;
  skipped: number;
  unparsed: number;
}

export interface Metrics {
  overall: OverallMetrics;
  tasks: Partial<Record<BenchTask, TaskMetrics>>;
  bootstrap: { resamples: number; seed: number };
}

export interface MetricsOptions {
  /** Bootstrap resamples (default 1000; 0 disables the intervals: they equal the point estimate). */
  resamples?: number;
  /** Bootstrap seed (default 0). */
  seed?: number;
}

export const UNPARSED_COLUMN = '(unparsed)';

const norm = (s: string): string => s.trim().toLowerCase();

/** Whether a prediction is correct (scored predictions only). */
export function isCorrect(item: Pick<ScoredItem, 'answer' | 'label' | 'unparsed'>): boolean {
  return !item.unparsed && item.label !== null && norm(item.label) === norm(item.answer);
}

/** FNV-1a 32-bit hash of a string. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Percentile (linear interpolation between order statistics, as numpy's default). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * p;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

function interval(values: number[]): Interval {
  values.sort((a, b) => a - b);
  return { low: percentile(values, 0.025), high: percentile(values, 0.975) };
}

/** Accuracy of 0/1 outcomes with a seeded percentile bootstrap 95% interval. */
export function bootstrapAccuracy(outcomes: readonly number[], resamples: number, seed: number): { accuracy: number; ci: Interval } {
  const n = outcomes.length;
  const acc = n === 0 ? NaN : outcomes.reduce((a, b) => a + b, 0) / n;
  if (n === 0 || resamples <= 0) return { accuracy: acc, ci: { low: acc, high: acc } };
  const r = rng(seed);
  const stats: number[] = new Array<number>(resamples);
  for (let b = 0; b < resamples; b++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += outcomes[Math.floor(r() * n)]!;
    stats[b] = s / n;
  }
  return { accuracy: acc, ci: interval(stats) };
}

function taskMetrics(task: BenchTask, items: readonly ScoredItem[], resamples: number, seed: number): TaskMetrics {
  const scored = items.filter((x) => x.status === 'ok');
  const errors = items.filter((x) => x.status === 'error').length;
  const skipped = items.filter((x) => x.status === 'skipped').length;
  // Class names: the gold spelling wins over a predicted one of the same (normalised) label.
  const spelling = new Map<string, string>();
  for (const x of scored) if (!spelling.has(norm(x.answer))) spelling.set(norm(x.answer), x.answer.trim());
  for (const x of scored)
    if (!x.unparsed && x.label !== null && !spelling.has(norm(x.label))) spelling.set(norm(x.label), x.label.trim());
  const keys = [...spelling.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)); // by normalised label
  const classes = keys.map((k) => spelling.get(k)!);
  const index = new Map(keys.map((k, i) => [k, i]));
  const k = classes.length;
  const confusion = Array.from({ length: k }, () => new Array<number>(k + 1).fill(0));
  const outcomes: number[] = [];
  let unparsed = 0;
  for (const x of scored) {
    const g = index.get(norm(x.answer))!;
    if (x.unparsed || x.label === null) {
      unparsed++;
      confusion[g]![k]!++;
      outcomes.push(0);
    } else {
      confusion[g]![index.get(norm(x.label))!]!++;
      outcomes.push(isCorrect(x) ? 1 : 0);
    }
  }
  const perClassRecall: Record<string, number> = {};
  const perClassF1: Record<string, number> = {};
  let f1sum = 0;
  for (let c = 0; c < k; c++) {
    const tp = confusion[c]![c]!;
    const goldTotal = confusion[c]!.reduce((a, b) => a + b, 0);
    let predTotal = 0;
    for (let r = 0; r < k; r++) predTotal += confusion[r]![c]!;
    const recall = goldTotal === 0 ? 0 : tp / goldTotal;
    const precision = predTotal === 0 ? 0 : tp / predTotal;
    const f1 = precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall);
    if (goldTotal > 0) perClassRecall[classes[c]!] = recall;
    perClassF1[classes[c]!] = f1;
    f1sum += f1;
  }
  const { accuracy, ci } = bootstrapAccuracy(outcomes, resamples, (seed ^ hashString(task)) >>> 0);
  return {
    task,
    n: scored.length,
    correct: outcomes.reduce((a, b) => a + b, 0),
    accuracy,
    accuracyCI: ci,
    macroF1: k === 0 ? NaN : f1sum / k,
    unparsed,
    unparsedRate: scored.length === 0 ? NaN : unparsed / scored.length,
    errors,
    skipped,
    classes,
    perClassRecall,
    perClassF1,
    confusion,
  };
}

/** Every metric of a run. Items may come in any order; the result does not depend on it. */
export function computeMetrics(items: readonly ScoredItem[], options: MetricsOptions = {}): Metrics {
  const resamples = options.resamples ?? 1000;
  const seed = options.seed ?? 0;
  const byTask = new Map<BenchTask, ScoredItem[]>();
  const sorted = [...items].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const x of sorted) {
    let l = byTask.get(x.task);
    if (!l) byTask.set(x.task, (l = []));
    l.push(x);
  }
  const tasks: Partial<Record<BenchTask, TaskMetrics>> = {};
  for (const t of BENCH_TASKS) {
    const l = byTask.get(t);
    if (l) tasks[t] = taskMetrics(t, l, resamples, seed);
  }
  const present = BENCH_TASKS.filter((t) => (tasks[t]?.n ?? 0) > 0);
  const missing = BENCH_TASKS.filter((t) => !present.includes(t));
  const score = present.length === 0 ? NaN : present.reduce((a, t) => a + tasks[t]!.accuracy, 0) / present.length;
  // Overall interval: resample within each task (stratified), the mean of the task accuracies.
  let scoreCI: Interval = { low: score, high: score };
  if (present.length > 0 && resamples > 0) {
    const outcomes = present.map((t) => byTask.get(t)!.filter((x) => x.status === 'ok').map((x) => (isCorrect(x) ? 1 : 0)));
    const r = rng((seed ^ hashString('overall')) >>> 0);
    const stats: number[] = [];
    for (let b = 0; b < resamples; b++) {
      let m = 0;
      for (const o of outcomes) {
        let s = 0;
        for (let i = 0; i < o.length; i++) s += o[Math.floor(r() * o.length)]!;
        m += s / o.length;
      }
      stats.push(m / outcomes.length);
    }
    scoreCI = interval(stats);
  }
  const all = Object.values(tasks) as TaskMetrics[];
  const n = all.reduce((a, t) => a + t.n, 0);
  return {
    overall: {
      score,
      scoreCI,
      tasks: present,
      missing,
      complete: missing.length === 0,
      microAccuracy: n === 0 ? NaN : all.reduce((a, t) => a + t.correct, 0) / n,
      n,
      errors: all.reduce((a, t) => a + t.errors, 0),
      skipped: all.reduce((a, t) => a + t.skipped, 0),
      unparsed: all.reduce((a, t) => a + t.unparsed, 0),
    },
    tasks,
    bootstrap: { resamples, seed },
  };
}

// ---------------------------------------------------------------------------------------------
// Paired comparison

export interface PairedTaskComparison {
  task: BenchTask;
  /** Shared ids scored in both runs. */
  n: number;
  accuracyA: number;
  accuracyB: number;
  /** accuracyA - accuracyB. */
  diff: number;
  diffCI: Interval;
  /**
   * Two-sided bootstrap "p-value": 2 x the smaller of the fractions of resamples whose difference
   * is <= 0 and >= 0 (capped at 1). Small means the sign of the difference is stable.
   */
  p: number;
  /** Ids where only A is right, only B is right. */
  onlyA: number;
  onlyB: number;
}

export interface PairedComparison {
  tasks: PairedTaskComparison[];
  /** On the mean of the shared tasks' accuracies (stratified by task). */
  overall: { n: number; scoreA: number; scoreB: number; diff: number; diffCI: Interval; p: number; tasks: BenchTask[] };
  resamples: number;
  seed: number;
}

function twoSidedP(diffs: readonly number[]): number {
  if (diffs.length === 0) return NaN;
  const le = diffs.filter((d) => d <= 0).length / diffs.length;
  const ge = diffs.filter((d) => d >= 0).length / diffs.length;
  return Math.min(1, 2 * Math.min(le, ge));
}

/**
 * Paired bootstrap of two runs over the ids scored (status ok) in both: each resample draws the
 * same ids for A and B, so per-sample difficulty cancels out.
 */
export function pairedBootstrap(a: readonly ScoredItem[], b: readonly ScoredItem[], options: MetricsOptions = {}): PairedComparison {
  const resamples = options.resamples ?? 1000;
  const seed = options.seed ?? 0;
  const mapB = new Map(b.filter((x) => x.status === 'ok').map((x) => [x.id, x]));
  const pairs = new Map<BenchTask, Array<[number, number]>>();
  const sortedA = a.filter((x) => x.status === 'ok').sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  for (const x of sortedA) {
    const y = mapB.get(x.id);
    if (!y) continue;
    let l = pairs.get(x.task);
    if (!l) pairs.set(x.task, (l = []));
    l.push([isCorrect(x) ? 1 : 0, isCorrect(y) ? 1 : 0]);
  }
  const tasks: PairedTaskComparison[] = [];
  const present = BENCH_TASKS.filter((t) => (pairs.get(t)?.length ?? 0) > 0);
  const perTaskDiffs: number[][] = present.map(() => []);
  const overallDiffs: number[] = [];
  const r = rng((seed ^ hashString('paired')) >>> 0);
  for (let rep = 0; rep < resamples; rep++) {
    let m = 0;
    present.forEach((t, ti) => {
      const p = pairs.get(t)!;
      let d = 0;
      for (let i = 0; i < p.length; i++) {
        const [x, y] = p[Math.floor(r() * p.length)]!;
        d += x - y;
      }
      perTaskDiffs[ti]!.push(d / p.length);
      m += d / p.length;
    });
    if (present.length > 0) overallDiffs.push(m / present.length);
  }
  let sA = 0;
  let sB = 0;
  present.forEach((t, ti) => {
    const p = pairs.get(t)!;
    const accA = p.reduce((s, [x]) => s + x, 0) / p.length;
    const accB = p.reduce((s, [, y]) => s + y, 0) / p.length;
    sA += accA;
    sB += accB;
    const diffs = perTaskDiffs[ti]!;
    tasks.push({
      task: t,
      n: p.length,
      accuracyA: accA,
      accuracyB: accB,
      diff: accA - accB,
      diffCI: resamples > 0 ? interval([...diffs]) : { low: accA - accB, high: accA - accB },
      p: resamples > 0 ? twoSidedP(diffs) : NaN,
      onlyA: p.filter(([x, y]) => x === 1 && y === 0).length,
      onlyB: p.filter(([x, y]) => x === 0 && y === 1).length,
    });
  });
  const k = present.length;
  const scoreA = k ? sA / k : NaN;
  const scoreB = k ? sB / k : NaN;
  return {
    tasks,
    overall: {
      n: tasks.reduce((s, t) => s + t.n, 0),
      scoreA,
      scoreB,
      diff: scoreA - scoreB,
      diffCI: resamples > 0 && k ? interval([...overallDiffs]) : { low: scoreA - scoreB, high: scoreA - scoreB },
      p: resamples > 0 && k ? twoSidedP(overallDiffs) : NaN,
      tasks: present,
    },
    resamples,
    seed,
  };
}
