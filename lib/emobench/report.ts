/**
 * Report files of an EmoBench run: leaderboard.md (a markdown table, one row per sub-task) and
 * report.html (self-contained: inline CSS and SVG, no external assets; opens offline), plus the
 * text form of a paired comparison.
 */
import { writeFileAtomicSync } from '../safe_fs.js';
import { join } from 'node:path';

import type { EvalResults } from './eval.js';
import type { PairedComparison, TaskMetrics } from './metrics.js';
import { barChart, esc, heatmap, pct } from './report_charts.js';
import type { BrowserSample } from './report_data.js';
import { BENCH_TASKS } from './sample.js';

export const TASK_NAMES: Record<string, string> = {
  'emo-c': 'Close-set emotion (Emo-C)',
  'emo-o': 'Open-set emotion (Emo-O)',
  intent: 'Intent',
  hate: 'Hate',
  humor: 'Humor',
  sarcasm: 'Sarcasm',
};

export { pct } from './report_charts.js';

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

/** The per-dataset table and bars of one sub-task. */
function breakdownHtml(r: EvalResults, task: string): string {
  const rows = r.breakdown?.[task as keyof NonNullable<EvalResults['breakdown']>];
  if (!rows?.length) return '';
  const ref = r.reference?.[task as keyof NonNullable<EvalResults['reference']>];
  const bars =
    rows.length > 1
      ? barChart(
          rows.map((x) => ({ name: x.source, value: x.accuracy, low: x.accuracyCI.low, high: x.accuracyCI.high, chance: ref?.chance ?? null, majority: null, color: '#0891b2' })),
          `accuracy per dataset, ${task}`,
        )
      : '';
  const table = `<table class="breakdown"><thead><tr><th>dataset</th><th>accuracy %</th><th>95% CI</th><th>correct / n</th><th>unparsed</th></tr></thead><tbody>${rows
    .map(
      (x) =>
        `<tr><td>${esc(x.source)}</td><td class="num">${pct(x.accuracy)}</td><td class="num">${pct(x.accuracyCI.low)}–${pct(x.accuracyCI.high)}</td><td class="num">${x.correct} / ${x.n}</td><td class="num">${x.unparsed}</td></tr>`,
    )
    .join('')}</tbody></table>`;
  return `<h4>By dataset</h4>${bars}${table}`;
}

function browserHtml(samples: readonly BrowserSample[]): string {
  if (!samples.length) return '<p>No scored samples.</p>';
  const byTask = new Map<string, BrowserSample[]>();
  for (const s of samples) {
    let l = byTask.get(s.task);
    if (!l) byTask.set(s.task, (l = []));
    l.push(s);
  }
  const cards = [...byTask]
    .map(
      ([task, list]) =>
        `<h3>${esc(TASK_NAMES[task] ?? task)}</h3><div class="cards">${list
          .map(
            (s) => `<figure class="sample ${s.correct ? 'right' : 'wrong'}" data-correct="${s.correct}">
${s.thumbnail ? `<img src="${s.thumbnail}" alt="${esc(s.media ?? '')}">` : `<div class="nothumb">${s.media ? 'media not readable' : 'no media'}</div>`}
<figcaption><b>${s.correct ? '✓ correct' : '✗ wrong'}</b> <code>${esc(s.id)}</code><br>gold <b>${esc(s.gold)}</b>, answer <b>${s.answer === null ? '(unparsed)' : esc(s.answer)}</b>
${s.raw !== null ? `<br>raw: <q>${esc(s.raw.slice(0, 300))}</q>` : ''}
<details><summary>prompt</summary><pre>${esc(s.prompt)}</pre></details></figcaption></figure>`,
          )
          .join('\n')}</div>`,
    )
    .join('\n');
  return `<p class="filter">Show: <label><input type="radio" name="f" value="all" checked> all</label> <label><input type="radio" name="f" value="true"> correct</label> <label><input type="radio" name="f" value="false"> wrong</label></p>${cards}`;
}

/** Shared page frame (inline CSS; one small script for the sample filter). */
export function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#111}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}h4{font-size:13px;margin:10px 0 4px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px}th{background:#f4f4f5;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.overall td{font-weight:600;background:#fff7ed}tr.ref td{color:#555;font-style:italic}
.note{color:#555;font-size:12px}.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}code{background:#f4f4f5;padding:1px 4px}
svg{max-width:100%;height:auto}.cards{display:flex;flex-wrap:wrap;gap:12px}
figure.sample{margin:0;width:250px;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:12px}figure.right{border-left:4px solid #15803d}figure.wrong{border-left:4px solid #b91c1c}
figure.sample img{max-width:160px;max-height:120px;display:block;margin-bottom:6px}.nothumb{width:160px;height:60px;background:#f4f4f5;color:#777;display:flex;align-items:center;justify-content:center}
pre{white-space:pre-wrap;max-height:240px;overflow:auto;background:#f9fafb;padding:6px;font-size:11px}
</style></head><body>
${body}
<script>
(function () {
  var radios = document.querySelectorAll('.filter input');
  for (var i = 0; i < radios.length; i++)
    radios[i].addEventListener('change', function (e) {
      var v = e.target.value;
      var cards = document.querySelectorAll('figure.sample');
      for (var j = 0; j < cards.length; j++) cards[j].style.display = v === 'all' || cards[j].getAttribute('data-correct') === v ? '' : 'none';
    });
  document.documentElement.setAttribute('data-ready', '1');
})();
</script>
</body></html>
`;
}

/** report.html: self-contained (inline CSS and SVG; opens offline). */
export function reportHtml(r: EvalResults, extras: { browser?: readonly BrowserSample[] } = {}): string {
  const tasks = taskRows(r);
  const o = r.metrics.overall;
  const ref = (t: string): { chance: number | null; majority: number | null } => {
    const x = r.reference?.[t as keyof NonNullable<EvalResults['reference']>];
    return { chance: x?.chance ?? null, majority: x?.majority ?? null };
  };
  const bars = barChart(
    [
      ...tasks.map((t) => ({ name: t.task, value: t.accuracy, low: t.accuracyCI.low, high: t.accuracyCI.high, ...ref(t.task) })),
      { name: 'overall', value: o.score, low: o.scoreCI.low, high: o.scoreCI.high, color: '#c2410c' },
    ],
    'accuracy per sub-task',
  );
  const table = [
    '<table class="summary"><thead><tr><th>task</th><th>accuracy %</th><th>95% CI</th><th>chance %</th><th>majority %</th><th>macro-F1 %</th><th>unparsed %</th><th>errors</th><th>skipped</th><th>n</th></tr></thead><tbody>',
    ...tasks.map((t) => {
      const x = ref(t.task);
      return `<tr data-task="${t.task}"><td>${esc(TASK_NAMES[t.task] ?? t.task)}</td><td class="num">${pct(t.accuracy)}</td><td class="num">${pct(t.accuracyCI.low)}–${pct(t.accuracyCI.high)}</td><td class="num">${x.chance === null ? '–' : pct(x.chance)}</td><td class="num">${x.majority === null ? '–' : pct(x.majority)}</td><td class="num">${pct(t.macroF1)}</td><td class="num">${pct(t.unparsedRate)}</td><td class="num">${t.errors}</td><td class="num">${t.skipped}</td><td class="num">${t.n}</td></tr>`;
    }),
    `<tr class="overall"><td>Overall</td><td class="num">${pct(o.score)}</td><td class="num">${pct(o.scoreCI.low)}–${pct(o.scoreCI.high)}</td><td></td><td></td><td></td><td class="num">${pct(o.n ? o.unparsed / o.n : NaN)}</td><td class="num">${o.errors}</td><td class="num">${o.skipped}</td><td class="num">${o.n}</td></tr>`,
    '</tbody></table>',
  ].join('\n');
  const perTask = tasks
    .map((t: TaskMetrics) => {
      const recall = Object.entries(t.perClassRecall)
        .map(([c, v]) => `<tr><td>${esc(c)}</td><td class="num">${pct(v)}</td><td class="num">${pct(t.perClassF1[c] ?? NaN)}</td></tr>`)
        .join('');
      return `<section class="task" data-task="${t.task}"><h3>${esc(TASK_NAMES[t.task] ?? t.task)}</h3><div class="row"><div>${heatmap(t)}<p class="note">Rows: gold; columns: predicted. Each row is normalised to 100% of its gold class (colour and %); hover a cell for its count; <b>n</b> is the row's count.</p></div>
<div><table><thead><tr><th>class</th><th>recall %</th><th>F1 %</th></tr></thead><tbody>${recall}</tbody></table></div></div>${breakdownHtml(r, t.task)}</section>`;
    })
    .join('\n');
  const face = r.config.face === undefined || r.config.face === null ? '' : ` Face perspective: <b>${r.config.face ? 'on' : 'off (--no-face)'}</b>.`;
  const body = `<h1>EmoBench report: ${esc(r.model)}</h1>
<p>Backend <code>${esc(r.backend)}</code>; benchmark <code>${esc(r.bench.path)}</code> (sha256 <code>${r.bench.sha256.slice(0, 12)}</code>).
${r.counts.selected} samples: ${r.counts.ok} scored (${r.counts.unparsed} unparsed), ${r.counts.errors} errors, ${r.counts.skipped} skipped (missing media).${face}${r.config.textOnly ? ' Answered <b>without media</b> (--text-only).' : ''}</p>
<h2>Accuracy per sub-task</h2>
${bars}
<p class="note">${esc(overallNote(r))} Whiskers: 95% bootstrap CI (${r.metrics.bootstrap.resamples} resamples, seed ${r.metrics.bootstrap.seed}). Dashed marks: chance (a uniform guess among each sample's options) and the majority label's accuracy, over the same scored samples. Unparsed answers count as wrong.${r.model === 'majority' ? ' The majority baseline uses the benchmark’s own label distribution (oracle-ish).' : ''}</p>
${table}
<h2>Per sub-task</h2>
${perTask}
<h2 id="sample-browser">Sample browser</h2>
<p class="note">The first few correct and wrong scored samples of each sub-task, in benchmark order.</p>
${browserHtml(extras.browser ?? [])}
<p class="note">Generated by emollm eval, ${esc(r.timing.finishedAt)}.</p>`;
  return page(`EmoBench report: ${r.model}`, body);
}

/** Writes leaderboard.md and report.html into `out`. */
export function writeReports(out: string, r: EvalResults, extras: { browser?: readonly BrowserSample[] } = {}): void {
  writeFileAtomicSync(join(out, 'leaderboard.md'), leaderboardMarkdown(r));
  writeFileAtomicSync(join(out, 'report.html'), reportHtml(r, extras));
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
