/**
 * The EmoBench API: build a benchmark from the source datasets, evaluate a model (or a baseline)
 * on it, compute metrics with bootstrap confidence intervals, compare two runs, write reports.
 * The `emollm bench build` / `emollm eval` commands are thin wrappers over these functions.
 *
 * ```ts
 * import { buildBenchmarkFile, runEval, compareRuns } from 'emollm';
 * await buildBenchmarkFile({ MELD: '/data/MELD.Raw' }, 'bench.jsonl', { splits: ['test'] });
 * const run = await runEval({ bench: 'bench.jsonl', model: 'random', out: 'runs/random' });
 * console.log(run.metrics.overall.score);
 * ```
 */
// Samples: the benchmark's JSONL records.
export { BENCH_TASKS, parseSamples, sampleToJsonl, validateSample } from './sample.js';
export type { BenchMedia, BenchSample, BenchTask } from './sample.js';

// Building a benchmark from the datasets' release files.
export { BUILDERS, buildBenchmark, buildBenchmarkFile, discoverSources, getBuilder, samplesToJsonl } from './build.js';
export { formatSummary as formatBuildSummary } from './build.js';
export type { BuildOptions, BuildResult, BuildSummary, SummaryRow } from './build.js';

// Evaluating: a run folder with predictions.jsonl (resumable), results.json and reports.
export { RESULTS_SCHEMA, readPredictions, runEval } from './eval.js';
export { formatSummary as formatEvalSummary } from './eval.js';
export type { EvalOptions, EvalResults, PredictionRecord } from './eval.js';

// Backends: what answers each sample.
export { createBackend, faceBackend, httpBackend, majorityBackend, nativeBackend, nullBackend, randomBackend, parseEndpoint } from './backends.js';
export type { Backend, CreateBackendOptions, HttpBackendOptions, NativeBackendOptions, Prediction } from './backends.js';

// Metrics and the comparison of two runs.
export { bootstrapAccuracy, computeMetrics, isCorrect, pairedBootstrap } from './metrics.js';
export type { Interval, Metrics, MetricsOptions, OverallMetrics, PairedComparison, PairedTaskComparison, ScoredItem, TaskMetrics } from './metrics.js';
export { compareRuns } from './eval.js';

// Reports: leaderboard.md, the offline report.html, the comparison table.
export { formatComparison, leaderboardMarkdown, reportHtml, writeReports } from './report.js';
