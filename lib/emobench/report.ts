/**
 * Report files of an EmoBench run: leaderboard.md (a markdown table, one row per sub-task) and
 * report.html (self-contained: inline CSS and SVG, no external assets; opens offline), plus the
 * text form of a paired comparison.
 */
import { writeFileAtomicSync } from '../safe_fs.js';
import { join } from 'node:path';

import type { EvalResults } from './eval.js';
import { UNPARSED_COLUMN, type PairedComparison, type TaskMetrics } from './metrics.js';
import { BENCH_TASKS } from './sample.js';

const TASK_NAMES: Record<string, string> = {
  'emo-c': 'Close-set emotion (Emo-C)',
  'emo-o': 'Open-set emotion (Emo-O)',
  intent: 'Intent',
  hate: 'Hate',
  humor: 'Humor',
  sarcasm: 'Sarcasm',
};

/** Percent with one decimal ("-" for NaN). */
export function pct(x: number): string {
  return Number.isFinite(x) ? (x * 100).toFixed(1) : '-';
}

function taskRows(r: EvalResults): TaskMetrics[] {
  return BENCH_TASKS.map((t) => r.metrics.tasks[t]).filter((x): x is TaskMetrics => x !== undefined);
}

function overallNote(r: EvalResults): string {
  const o = r.metrics.overall;
  return o.complete
    ? 'Overall = mean of the six sub-task accuracies (the EmoBench paper’s score).'
    : `Overall = mean over the present sub-tasks (${o.tasks.join(', ') || 'none'}); missing: ${o.missing.join(', ')}. Not comparable with the paper’s six-task score.`;
}

/** leaderboard.md */
export function leaderboardMarkdown(r: EvalResults): string {
  const lines = [
    `# EmoBench: ${r.model}`,
    '',
    `Benchmark \`${r.bench.path}\` (sha256 ${r.bench.sha256.slice(0, 12)}), ${r.counts.selected} samples: ${r.counts.ok} scored, ${r.counts.errors} errors, ${r.counts.skipped} skipped (missing media).`,
    '',
    '| task | accuracy % (95% CI) | macro-F1 % | unparsed % | errors | skipped | n |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const t of taskRows(r))
    lines.push(
      `| ${t.task} | ${pct(t.accuracy)} (${pct(t.accuracyCI.low)}–${pct(t.accuracyCI.high)}) | ${pct(t.macroF1)} | ${pct(t.unparsedRate)} | ${t.errors} | ${t.skipped} | ${t.n} |`,
    );
  const o = r.metrics.overall;
  lines.push(`| **overall** | **${pct(o.score)}** (${pct(o.scoreCI.low)}–${pct(o.scoreCI.high)}) | | ${pct(o.n ? o.unparsed / o.n : NaN)} | ${o.errors} | ${o.skipped} | ${o.n} |`);
  lines.push('', overallNote(r), 'Unparsed answers count as wrong; errors and skipped samples are not scored.');
  if (r.model === 'majority') lines.push('The majority baseline uses the benchmark’s own label distribution (oracle-ish).');
  lines.push(`CIs: percentile bootstrap, ${r.metrics.bootstrap.resamples} resamples, seed ${r.metrics.bootstrap.seed}.`, '');
  return lines.join('\n');
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

function barChart(rows: Array<{ name: string; value: number; low: number; high: number }>): string {
  const w = 640;
  const rowH = 28;
  const left = 110;
  const plotW = w - left - 70;
  const h = rows.length * rowH + 30;
  const x = (v: number): number => left + Math.max(0, Math.min(1, Number.isFinite(v) ? v : 0)) * plotW;
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="accuracy per sub-task">`];
  for (let g = 0; g <= 10; g += 2) {
    const gx = x(g / 10);
    parts.push(`<line x1="${gx}" y1="0" x2="${gx}" y2="${h - 20}" stroke="#ddd"/><text x="${gx}" y="${h - 5}" font-size="11" text-anchor="middle">${g * 10}%</text>`);
  }
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    parts.push(`<text x="${left - 8}" y="${y + 15}" font-size="12" text-anchor="end">${esc(r.name)}</text>`);
    parts.push(`<rect x="${left}" y="${y}" width="${(x(r.value) - left).toFixed(1)}" height="${rowH - 10}" fill="${r.name === 'overall' ? '#c2410c' : '#2563eb'}"><title>${esc(r.name)}: ${pct(r.value)}%</title></rect>`);
    const cy = y + (rowH - 10) / 2;
    parts.push(
      `<line x1="${x(r.low).toFixed(1)}" y1="${cy}" x2="${x(r.high).toFixed(1)}" y2="${cy}" stroke="#111" stroke-width="1.5"/>` +
        `<line x1="${x(r.low).toFixed(1)}" y1="${cy - 5}" x2="${x(r.low).toFixed(1)}" y2="${cy + 5}" stroke="#111"/>` +
        `<line x1="${x(r.high).toFixed(1)}" y1="${cy - 5}" x2="${x(r.high).toFixed(1)}" y2="${cy + 5}" stroke="#111"/>`,
    );
    parts.push(`<text x="${x(Math.max(r.value, r.high)) + 6}" y="${y + 14}" font-size="11">${pct(r.value)}%</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}

function heatmap(t: TaskMetrics): string {
  const rows = t.confusion.map((row, i) => ({ gold: t.classes[i]!, row })).filter((x) => x.row.some((v) => v > 0));
  if (rows.length === 0) return '<p>No scored predictions.</p>';
  const cols = [...t.classes, UNPARSED_COLUMN];
  const cell = Math.max(14, Math.min(34, Math.floor(560 / cols.length)));
  const left = 120;
  const top = 110;
  const w = left + cols.length * cell + 10;
  const h = top + rows.length * cell + 10;
  const max = Math.max(1, ...rows.flatMap((r) => r.row));
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="confusion matrix ${esc(t.task)}">`];
  cols.forEach((c, j) => {
    const cx = left + j * cell + cell / 2;
    parts.push(`<text transform="translate(${cx + 4},${top - 6}) rotate(-60)" font-size="11">${esc(c)}</text>`);
  });
  rows.forEach((r, i) => {
    const y = top + i * cell;
    parts.push(`<text x="${left - 6}" y="${y + cell / 2 + 4}" font-size="11" text-anchor="end">${esc(r.gold)}</text>`);
    r.row.forEach((v, j) => {
      const a = v / max;
      const fill = `rgba(37,99,235,${(0.06 + 0.94 * a).toFixed(3)})`;
      parts.push(
        `<rect x="${left + j * cell}" y="${y}" width="${cell - 1}" height="${cell - 1}" fill="${v === 0 ? '#f4f4f5' : fill}"><title>gold ${esc(r.gold)} → ${esc(cols[j]!)}: ${v}</title></rect>`,
      );
      if (v > 0 && cell >= 18)
        parts.push(`<text x="${left + j * cell + cell / 2}" y="${y + cell / 2 + 4}" font-size="10" text-anchor="middle" fill="${a > 0.5 ? '#fff' : '#111'}">${v}</text>`);
    });
  });
  parts.push('</svg>');
  return parts.join('');
}

/** report.html: self-contained. */
export function reportHtml(r: EvalResults): string {
  const tasks = taskRows(r);
  const o = r.metrics.overall;
  const bars = barChart([
    ...tasks.map((t) => ({ name: t.task, value: t.accuracy, low: t.accuracyCI.low, high: t.accuracyCI.high })),
    { name: 'overall', value: o.score, low: o.scoreCI.low, high: o.scoreCI.high },
  ]);
  const table = [
    '<table><thead><tr><th>task</th><th>accuracy %</th><th>95% CI</th><th>macro-F1 %</th><th>unparsed %</th><th>errors</th><th>skipped</th><th>n</th></tr></thead><tbody>',
    ...tasks.map(
      (t) =>
        `<tr data-task="${t.task}"><td>${esc(TASK_NAMES[t.task] ?? t.task)}</td><td class="num">${pct(t.accuracy)}</td><td class="num">${pct(t.accuracyCI.low)}–${pct(t.accuracyCI.high)}</td><td class="num">${pct(t.macroF1)}</td><td class="num">${pct(t.unparsedRate)}</td><td class="num">${t.errors}</td><td class="num">${t.skipped}</td><td class="num">${t.n}</td></tr>`,
    ),
    `<tr class="overall"><td>Overall</td><td class="num">${pct(o.score)}</td><td class="num">${pct(o.scoreCI.low)}–${pct(o.scoreCI.high)}</td><td></td><td class="num">${pct(o.n ? o.unparsed / o.n : NaN)}</td><td class="num">${o.errors}</td><td class="num">${o.skipped}</td><td class="num">${o.n}</td></tr>`,
    '</tbody></table>',
  ].join('\n');
  const perTask = tasks
    .map((t) => {
      const recall = Object.entries(t.perClassRecall)
        .map(([c, v]) => `<tr><td>${esc(c)}</td><td class="num">${pct(v)}</td><td class="num">${pct(t.perClassF1[c] ?? NaN)}</td></tr>`)
        .join('');
      return `<section><h3>${esc(TASK_NAMES[t.task] ?? t.task)}</h3><div class="row"><div>${heatmap(t)}<p class="note">Rows: gold; columns: predicted.</p></div>
<div><table><thead><tr><th>class</th><th>recall %</th><th>F1 %</th></tr></thead><tbody>${recall}</tbody></table></div></div></section>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EmoBench report: ${esc(r.model)}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;padding:0 16px;color:#111}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px}th{background:#f4f4f5;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.overall td{font-weight:600;background:#fff7ed}
.note{color:#555;font-size:12px}.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}code{background:#f4f4f5;padding:1px 4px}
</style></head><body>
<h1>EmoBench report: ${esc(r.model)}</h1>
<p>Backend <code>${esc(r.backend)}</code>; benchmark <code>${esc(r.bench.path)}</code> (sha256 <code>${r.bench.sha256.slice(0, 12)}</code>).
${r.counts.selected} samples: ${r.counts.ok} scored (${r.counts.unparsed} unparsed), ${r.counts.errors} errors, ${r.counts.skipped} skipped (missing media).</p>
<h2>Accuracy per sub-task</h2>
${bars}
<p class="note">${esc(overallNote(r))} Whiskers: 95% bootstrap CI (${r.metrics.bootstrap.resamples} resamples, seed ${r.metrics.bootstrap.seed}). Unparsed answers count as wrong.${r.model === 'majority' ? ' The majority baseline uses the benchmark’s own label distribution (oracle-ish).' : ''}</p>
${table}
<h2>Per sub-task</h2>
${perTask}
<p class="note">Generated by emollm eval, ${esc(r.timing.finishedAt)}.</p>
</body></html>
`;
}

/** Writes leaderboard.md and report.html into `out`. */
export function writeReports(out: string, r: EvalResults): void {
  writeFileAtomicSync(join(out, 'leaderboard.md'), leaderboardMarkdown(r));
  writeFileAtomicSync(join(out, 'report.html'), reportHtml(r));
}

/** The text form of `emollm eval compare`. */
export function formatComparison(c: PairedComparison & { a: string; b: string }): string {
  const lines = [
    `A: ${c.a}`,
    `B: ${c.b}`,
    `paired bootstrap on shared ids (${c.resamples} resamples, seed ${c.seed}); diff = A - B, accuracy points`,
    '| task | n | A % | B % | diff | 95% CI | p | only A right | only B right |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const t of c.tasks)
    lines.push(
      `| ${t.task} | ${t.n} | ${pct(t.accuracyA)} | ${pct(t.accuracyB)} | ${pct(t.diff)} | ${pct(t.diffCI.low)}–${pct(t.diffCI.high)} | ${Number.isFinite(t.p) ? t.p.toFixed(3) : '-'} | ${t.onlyA} | ${t.onlyB} |`,
    );
  const o = c.overall;
  lines.push(
    `| overall | ${o.n} | ${pct(o.scoreA)} | ${pct(o.scoreB)} | ${pct(o.diff)} | ${pct(o.diffCI.low)}–${pct(o.diffCI.high)} | ${Number.isFinite(o.p) ? o.p.toFixed(3) : '-'} | | |`,
  );
  return lines.join('\n');
}
