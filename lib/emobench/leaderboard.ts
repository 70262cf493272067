/**
 * `emollm eval leaderboard runs/*`: one table over many run folders (their results.json), ranked
 * by the overall score, as Markdown and as HTML (table + overall bars with CIs). Runs on different
 * benchmark files, or with some sub-tasks missing, are marked: their scores are not comparable.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { EmollmError } from '../errors.js';
import type { EvalResults } from './eval.js';
import { barChart, esc, pct } from './report_charts.js';
import { page } from './report.js';
import { BENCH_TASKS } from './sample.js';

export interface LeaderboardEntry {
  dir: string;
  results: EvalResults;
}

/** Reads `<dir>/results.json` of each run folder; ERR_FILE_NOT_FOUND / ERR_MALFORMED_FILE name the folder. */
export function loadRuns(dirs: readonly string[]): LeaderboardEntry[] {
  if (!dirs.length) throw new EmollmError('ERR_INVALID_ARGUMENT', 'eval leaderboard needs at least one run folder');
  return dirs.map((dir) => {
    const f = join(dir, 'results.json');
    if (!existsSync(f) || !statSync(f).isFile()) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no results.json (not a finished eval run)`, { file: f });
    let r: EvalResults;
    try {
      r = JSON.parse(readFileSync(f, 'utf8')) as EvalResults;
    } catch (cause) {
      throw new EmollmError('ERR_MALFORMED_FILE', `${f}: not JSON`, { file: f, cause });
    }
    if (r.schema !== 'emollm.emobench.results/1' || !r.metrics?.overall) throw new EmollmError('ERR_MALFORMED_FILE', `${f}: not an emollm EmoBench results file`, { file: f });
    return { dir, results: r };
  });
}

/** Best overall first; ties by name. */
export function rankRuns(entries: readonly LeaderboardEntry[]): LeaderboardEntry[] {
  const score = (e: LeaderboardEntry): number => (Number.isFinite(e.results.metrics.overall.score) ? e.results.metrics.overall.score : -1);
  return [...entries].sort((a, b) => score(b) - score(a) || (a.results.model < b.results.model ? -1 : 1));
}

function runName(e: LeaderboardEntry): string {
  const face = e.results.config.face === false ? ' (no face)' : '';
  const textOnly = e.results.config.textOnly ? ' (text only)' : '';
  return `${e.results.model}${face}${textOnly}`;
}

function caveats(entries: readonly LeaderboardEntry[]): string[] {
  const notes: string[] = [];
  const benches = new Set(entries.map((e) => e.results.bench.sha256));
  if (benches.size > 1) notes.push(`The runs used ${benches.size} different benchmark files (sha256 column): their scores are not directly comparable.`);
  const partial = entries.filter((e) => !e.results.metrics.overall.complete);
  if (partial.length)
    notes.push(`Marked *: overall is the mean of fewer than six sub-tasks (${partial.map((e) => `${runName(e)} lacks ${e.results.metrics.overall.missing.join(', ')}`).join('; ')}).`);
  return notes;
}

/** The Markdown leaderboard. */
export function leaderboardRunsMarkdown(entries: readonly LeaderboardEntry[]): string {
  const ranked = rankRuns(entries);
  const lines = [
    '# EmoBench leaderboard',
    '',
    `| # | run | overall % (95% CI) | ${BENCH_TASKS.join(' | ')} | n | bench sha256 |`,
    `|---|---|---|${BENCH_TASKS.map(() => '---').join('|')}|---|---|`,
  ];
  ranked.forEach((e, i) => {
    const m = e.results.metrics;
    const o = m.overall;
    lines.push(
      `| ${i + 1} | ${runName(e)} (\`${e.dir}\`) | ${pct(o.score)}${o.complete ? '' : '*'} (${pct(o.scoreCI.low)}–${pct(o.scoreCI.high)}) | ${BENCH_TASKS.map((t) => (m.tasks[t] ? pct(m.tasks[t]!.accuracy) : '–')).join(' | ')} | ${o.n} | ${e.results.bench.sha256.slice(0, 12)} |`,
    );
  });
  lines.push('', 'Overall = mean of the six sub-task accuracies (the EmoBench paper’s score); accuracy in %.', ...caveats(ranked), '');
  return lines.join('\n');
}

/** The HTML leaderboard. */
export function leaderboardRunsHtml(entries: readonly LeaderboardEntry[]): string {
  const ranked = rankRuns(entries);
  const bars = barChart(
    ranked.map((e) => ({
      name: runName(e),
      value: e.results.metrics.overall.score,
      low: e.results.metrics.overall.scoreCI.low,
      high: e.results.metrics.overall.scoreCI.high,
      color: e.results.metrics.overall.complete ? '#c2410c' : '#9ca3af',
    })),
    'overall score per run',
  );
  const table = `<table class="leaderboard"><thead><tr><th>#</th><th>run</th><th>overall %</th><th>95% CI</th>${BENCH_TASKS.map((t) => `<th>${t}</th>`).join('')}<th>n</th><th>bench</th></tr></thead><tbody>${ranked
    .map((e, i) => {
      const m = e.results.metrics;
      const o = m.overall;
      return `<tr><td class="num">${i + 1}</td><td>${esc(runName(e))}<br><code>${esc(e.dir)}</code></td><td class="num">${pct(o.score)}${o.complete ? '' : '*'}</td><td class="num">${pct(o.scoreCI.low)}–${pct(o.scoreCI.high)}</td>${BENCH_TASKS.map(
        (t) => `<td class="num">${m.tasks[t] ? `<span title="95% CI ${pct(m.tasks[t]!.accuracyCI.low)}–${pct(m.tasks[t]!.accuracyCI.high)}, n=${m.tasks[t]!.n}">${pct(m.tasks[t]!.accuracy)}</span>` : '–'}</td>`,
      ).join('')}<td class="num">${o.n}</td><td><code>${e.results.bench.sha256.slice(0, 12)}</code></td></tr>`;
    })
    .join('')}</tbody></table>`;
  const notes = caveats(ranked)
    .map((n) => `<p class="note">${esc(n)}</p>`)
    .join('');
  return page(
    'EmoBench leaderboard',
    `<h1>EmoBench leaderboard</h1>\n<h2>Overall score</h2>${bars}<p class="note">Overall = mean of the six sub-task accuracies; whiskers: 95% bootstrap CI. Grey bars: fewer than six sub-tasks.</p>${notes}\n<h2>All runs</h2>${table}`,
  );
}
