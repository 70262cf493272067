/**
 * Inline SVG charts of the EmoBench HTML reports (no scripts, no external assets): accuracy bars
 * with CI whiskers and chance / majority marks, row-normalised confusion matrices, and a forest
 * plot of paired differences.
 */
import { UNPARSED_COLUMN, type Interval, type TaskMetrics } from './metrics.js';

/** Percent with one decimal ("-" for NaN). */
export function pct(x: number): string {
  return Number.isFinite(x) ? (x * 100).toFixed(1) : '-';
}

export const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** Rough SVG text width at a font size (system-ui averages ~0.58 em per character). */
const textWidth = (s: string, size: number): number => s.length * size * 0.6;

export interface BarRow {
  name: string;
  value: number;
  low: number;
  high: number;
  /** Chance accuracy (grey dashed mark). */
  chance?: number | null;
  /** Majority-label accuracy (orange dashed mark). */
  majority?: number | null;
  /** Bar colour. */
  color?: string;
}

/** Horizontal accuracy bars (0–100%) with CI whiskers and chance / majority marks. */
export function barChart(rows: readonly BarRow[], label = 'accuracy'): string {
  const left = Math.max(90, ...rows.map((r) => textWidth(r.name, 12) + 16));
  const w = Math.max(640, left + 520);
  const rowH = 28;
  const plotW = w - left - 70;
  const legend = rows.some((r) => r.chance != null || r.majority != null);
  const h = rows.length * rowH + 30 + (legend ? 22 : 0);
  const x = (v: number): number => left + Math.max(0, Math.min(1, Number.isFinite(v) ? v : 0)) * plotW;
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(label)}">`];
  const axisY = rows.length * rowH + 10;
  for (let g = 0; g <= 10; g += 2) {
    const gx = x(g / 10);
    parts.push(`<line x1="${gx}" y1="0" x2="${gx}" y2="${axisY}" stroke="#ddd"/><text x="${gx}" y="${axisY + 14}" font-size="11" text-anchor="middle">${g * 10}%</text>`);
  }
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const bh = rowH - 10;
    parts.push(`<text x="${left - 8}" y="${y + 15}" font-size="12" text-anchor="end">${esc(r.name)}</text>`);
    parts.push(
      `<rect class="bar" x="${left}" y="${y}" width="${(x(r.value) - left).toFixed(1)}" height="${bh}" fill="${r.color ?? '#2563eb'}"><title>${esc(r.name)}: ${pct(r.value)}% (95% CI ${pct(r.low)}–${pct(r.high)})</title></rect>`,
    );
    const cy = y + bh / 2;
    parts.push(
      `<line x1="${x(r.low).toFixed(1)}" y1="${cy}" x2="${x(r.high).toFixed(1)}" y2="${cy}" stroke="#111" stroke-width="1.5"/>` +
        `<line x1="${x(r.low).toFixed(1)}" y1="${cy - 5}" x2="${x(r.low).toFixed(1)}" y2="${cy + 5}" stroke="#111"/>` +
        `<line x1="${x(r.high).toFixed(1)}" y1="${cy - 5}" x2="${x(r.high).toFixed(1)}" y2="${cy + 5}" stroke="#111"/>`,
    );
    for (const [v, colour, name] of [
      [r.chance, '#6b7280', 'chance'],
      [r.majority, '#ea580c', 'majority label'],
    ] as const)
      if (v != null && Number.isFinite(v))
        parts.push(
          `<line class="ref ref-${name === 'chance' ? 'chance' : 'majority'}" x1="${x(v).toFixed(1)}" y1="${y - 3}" x2="${x(v).toFixed(1)}" y2="${y + bh + 3}" stroke="${colour}" stroke-width="2.5" stroke-dasharray="3,2"><title>${esc(r.name)}: ${name} ${pct(v)}%</title></line>`,
        );
    parts.push(`<text x="${x(Math.max(r.value, r.high)) + 6}" y="${y + 14}" font-size="11">${pct(r.value)}%</text>`);
  });
  if (legend) {
    const ly = axisY + 30;
    let lx = left;
    if (rows.some((r) => r.chance != null)) {
      parts.push(
        `<line x1="${lx}" y1="${ly - 4}" x2="${lx + 18}" y2="${ly - 4}" stroke="#6b7280" stroke-width="2.5" stroke-dasharray="3,2"/><text x="${lx + 24}" y="${ly}" font-size="11">chance (uniform guess among the options)</text>`,
      );
      lx += 280;
    }
    if (rows.some((r) => r.majority != null))
      parts.push(
        `<line x1="${lx}" y1="${ly - 4}" x2="${lx + 18}" y2="${ly - 4}" stroke="#ea580c" stroke-width="2.5" stroke-dasharray="3,2"/><text x="${lx + 24}" y="${ly}" font-size="11">majority label</text>`,
      );
  }
  parts.push('</svg>');
  return parts.join('');
}

/**
 * Confusion matrix, row-normalised: each gold row's cells are the share of that class's samples
 * (colour and the printed %), the count is in each cell's tooltip and in the `n` column beside.
 */
export function heatmap(t: TaskMetrics): string {
  const rows = t.confusion.map((row, i) => ({ gold: t.classes[i]!, row, n: row.reduce((a, b) => a + b, 0) })).filter((x) => x.n > 0);
  if (rows.length === 0) return '<p>No scored predictions.</p>';
  const cols = [...t.classes, UNPARSED_COLUMN];
  const cell = Math.max(18, Math.min(40, Math.floor(560 / cols.length)));
  const longestCol = Math.max(...cols.map((c) => textWidth(c, 11)));
  const left = Math.max(60, ...rows.map((r) => textWidth(r.gold, 11) + 12));
  // column labels are rotated -60°: they rise by ~sin60 and run right by ~cos60 of their length
  const top = Math.ceil(longestCol * 0.87) + 14;
  const nCol = 44;
  const right = Math.ceil(longestCol * 0.5) + 12;
  const w = left + cols.length * cell + Math.max(nCol, right);
  const h = top + rows.length * cell + 10;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="confusion matrix ${esc(t.task)} (row-normalised)">`,
  ];
  cols.forEach((c, j) => {
    const cx = left + j * cell + cell / 2;
    parts.push(`<text transform="translate(${cx + 4},${top - 6}) rotate(-60)" font-size="11">${esc(c)}</text>`);
  });
  parts.push(`<text x="${left + cols.length * cell + 6}" y="${top - 6}" font-size="11" font-weight="600">n</text>`);
  rows.forEach((r, i) => {
    const y = top + i * cell;
    parts.push(`<text x="${left - 6}" y="${y + cell / 2 + 4}" font-size="11" text-anchor="end">${esc(r.gold)}</text>`);
    r.row.forEach((v, j) => {
      const share = v / r.n;
      const fill = `rgba(37,99,235,${(0.06 + 0.94 * share).toFixed(3)})`;
      parts.push(
        `<rect class="cell" data-count="${v}" x="${left + j * cell}" y="${y}" width="${cell - 1}" height="${cell - 1}" fill="${v === 0 ? '#f4f4f5' : fill}"><title>gold ${esc(r.gold)} → ${esc(cols[j]!)}: ${v} of ${r.n} (${pct(share)}%)</title></rect>`,
      );
      if (v > 0 && cell >= 22)
        parts.push(
          `<text x="${left + j * cell + cell / 2}" y="${y + cell / 2 + 4}" font-size="9" text-anchor="middle" fill="${share > 0.5 ? '#fff' : '#111'}" pointer-events="none">${Math.round(share * 100)}%</text>`,
        );
    });
    parts.push(`<text x="${left + cols.length * cell + 6}" y="${y + cell / 2 + 4}" font-size="11">${r.n}</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}

export interface ForestRow {
  name: string;
  diff: number;
  ci: Interval;
  /** Shown beside the row, e.g. "n=120, p=0.03". */
  note?: string;
}

/** Paired differences (A − B, accuracy points) with 95% CIs around a zero line. */
export function forestPlot(rows: readonly ForestRow[], label: string): string {
  const left = Math.max(90, ...rows.map((r) => textWidth(r.name, 12) + 16));
  const w = left + 560;
  const rowH = 26;
  const plotW = 380;
  const h = rows.length * rowH + 40;
  const finite = rows.flatMap((r) => [r.ci.low, r.ci.high, r.diff]).filter(Number.isFinite);
  const span = Math.min(1, Math.max(0.05, ...finite.map((v) => Math.abs(v))) * 1.15);
  const x = (v: number): number => left + ((Math.max(-span, Math.min(span, Number.isFinite(v) ? v : 0)) + span) / (2 * span)) * plotW;
  const axisY = rows.length * rowH + 8;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" class="chart forest" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(label)}">`];
  for (const g of [-span, -span / 2, 0, span / 2, span]) {
    const gx = x(g);
    parts.push(
      `<line x1="${gx.toFixed(1)}" y1="0" x2="${gx.toFixed(1)}" y2="${axisY}" stroke="${g === 0 ? '#111' : '#ddd'}"/><text x="${gx.toFixed(1)}" y="${axisY + 14}" font-size="11" text-anchor="middle">${g > 0 ? '+' : ''}${(g * 100).toFixed(1)}</text>`,
    );
  }
  parts.push(`<text x="${x(0).toFixed(1)}" y="${axisY + 29}" font-size="11" text-anchor="middle" fill="#555">A − B, accuracy points</text>`);
  rows.forEach((r, i) => {
    const cy = i * rowH + 14;
    const colour = r.ci.low > 0 ? '#15803d' : r.ci.high < 0 ? '#b91c1c' : '#374151';
    parts.push(`<text x="${left - 8}" y="${cy + 4}" font-size="12" text-anchor="end">${esc(r.name)}</text>`);
    parts.push(
      `<line x1="${x(r.ci.low).toFixed(1)}" y1="${cy}" x2="${x(r.ci.high).toFixed(1)}" y2="${cy}" stroke="${colour}" stroke-width="2"/>` +
        `<circle class="diff" cx="${x(r.diff).toFixed(1)}" cy="${cy}" r="5" fill="${colour}"><title>${esc(r.name)}: ${r.diff > 0 ? '+' : ''}${pct(r.diff)} points (95% CI ${pct(r.ci.low)} to ${pct(r.ci.high)})</title></circle>`,
    );
    if (r.note) parts.push(`<text x="${left + plotW + 12}" y="${cy + 4}" font-size="11">${esc(r.note)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}
