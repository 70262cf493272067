// EmoBench reports: per-dataset breakdown, chance/majority reference lines, row-normalised
// confusion matrices, the sample browser, `eval compare` HTML, `eval leaderboard`; rendered in a
// real headless Chromium (Debian's `chromium`): no console messages or errors, charts and tables
// present, no confusion-matrix label clipped. Also the honest exits: --text-only baselines, exit 1
// when nothing is scored, first failure of each kind reported, early stop on repeated refusals.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { evalCommand, readPredictions, runEval, type EvalResults } from '../../lib/emobench/eval.js';
import { failureKind } from '../../lib/emobench/eval_events.js';
import { sampleToJsonl, type BenchSample, type BenchTask } from '../../lib/emobench/sample.js';
import { requireTool } from './helpers/tools.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = join(repoRoot, 'dist');
const require = createRequire(import.meta.url);
const demo = join(dirname(require.resolve('@vladmandic/face-api/package.json')), 'demo');
// CI=true: a missing chromium fails this file (.ci/run installs it)
const haveChromium = requireTool('chromium', 'chromium', 'report rendering tests');

const tmp = mkdtempSync(join(tmpdir(), 'emobench-reports-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const TASKS: BenchTask[] = ['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'];
const EMO = ['happy', 'sad', 'angry', 'neutral'];
const INTENTS = ['complain', 'praise', 'ask for help'];
const PHOTOS = ['sample1.jpg', 'sample2.jpg', 'sample3.jpg', 'sample4.jpg', 'sample5.jpg', 'sample6.jpg'];

/** 144 samples, six tasks, two source datasets per task, media = the demo photos. */
function samples(mediaPrefix = ''): BenchSample[] {
  return Array.from({ length: 144 }, (_, i) => {
    const task = TASKS[i % 6]!;
    const source = Math.floor(i / 6) % 3 === 0 ? 'SourceA' : 'SourceB';
    const base = { id: `${source}/test/${i}`, task, source, split: 'test', media: { type: 'image' as const, path: `${mediaPrefix}${PHOTOS[i % 6]!}` }, text: `sample ${i}` };
    const pick = <T,>(xs: readonly T[]): T => xs[(i * 7 + (i >> 3)) % xs.length]!;
    if (task === 'emo-c') return { ...base, options: EMO, answer: pick(EMO) };
    if (task === 'emo-o') return { ...base, answer: pick(['happy', 'sad', 'fear']) };
    if (task === 'intent') return { ...base, options: INTENTS, answer: pick(INTENTS) };
    return { ...base, answer: i % 3 === 0 ? 'yes' : 'no' };
  });
}
function writeBench(name: string, s: readonly BenchSample[]): string {
  const f = join(tmp, name);
  writeFileSync(f, s.map(sampleToJsonl).join('\n') + '\n');
  return f;
}

/** Renders a page in headless Chromium; returns the DOM after scripts ran and every console line. */
function render(html: string): { dom: string; console: string[] } {
  // the probe runs after the page's own script: it records layout facts into the DOM
  const probe = `<script>
window.addEventListener('load', function () {
  var clipped = 0;
  var svgs = document.querySelectorAll('svg');
  for (var i = 0; i < svgs.length; i++) {
    var box = svgs[i].getBoundingClientRect();
    var texts = svgs[i].querySelectorAll('text');
    for (var j = 0; j < texts.length; j++) {
      var r = texts[j].getBoundingClientRect();
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5) clipped++;
    }
  }
  document.body.setAttribute('data-clipped', String(clipped));
  document.body.setAttribute('data-svgs', String(svgs.length));
});
</script>`;
  const file = join(tmp, `render-${Math.random().toString(36).slice(2)}.html`);
  writeFileSync(file, html.replace('</body>', `${probe}</body>`));
  const r = spawnSync(
    'chromium',
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--enable-logging=stderr', '--v=0', '--window-size=1280,2000', '--virtual-time-budget=3000', '--dump-dom', `file://${file}`],
    { encoding: 'utf8', timeout: 120_000 },
  );
  if (r.status !== 0) throw new Error(`chromium failed (${r.status}): ${r.stderr}`);
  return { dom: r.stdout, console: r.stderr.split('\n').filter((l) => /CONSOLE/.test(l)) };
}

describe('run reports', () => {
  const bench = writeBench('bench.jsonl', samples());
  let rnd: EvalResults;
  let maj: EvalResults;
  beforeAll(async () => {
    rnd = await runEval({ bench, model: 'random', mediaRoot: demo, out: join(tmp, 'random'), progress: false, summary: false, resamples: 200 });
    maj = await runEval({ bench, model: 'majority', mediaRoot: demo, out: join(tmp, 'majority'), progress: false, summary: false, resamples: 200 });
  }, 120_000);

  it('results.json: accuracy per source dataset inside each sub-task, and chance / majority lines', () => {
    const recs = readPredictions(join(tmp, 'random', 'predictions.jsonl'));
    const all = samples();
    for (const t of TASKS) {
      const rows = rnd.breakdown![t]!;
      expect(rows.map((x) => x.source).sort()).toEqual(['SourceA', 'SourceB']);
      expect(rows.reduce((a, x) => a + x.n, 0)).toBe(rnd.metrics.tasks[t]!.n);
      for (const x of rows) {
        const mine = all.filter((s) => s.task === t && s.source === x.source);
        const right = mine.filter((s) => recs.get(s.id)!.correct).length;
        expect(x).toMatchObject({ n: mine.length, correct: right });
        expect(x.accuracy).toBeCloseTo(right / mine.length, 12);
        expect(x.accuracyCI.low).toBeLessThanOrEqual(x.accuracy);
        expect(x.accuracyCI.high).toBeGreaterThanOrEqual(x.accuracy);
      }
      // majority line = the majority baseline's own accuracy (same samples, same label counts)
      expect(rnd.reference![t]!.majority).toBeCloseTo(maj.metrics.tasks[t]!.accuracy, 12);
    }
    expect(rnd.reference!['emo-c']!.chance).toBeCloseTo(1 / EMO.length, 12);
    expect(rnd.reference!.intent!.chance).toBeCloseTo(1 / 3, 12);
    expect(rnd.reference!.hate!.chance).toBeCloseTo(0.5, 12);
    expect(rnd.reference!['emo-o']!.chance).toBeNull();
  });

  it('report.html: breakdown tables, reference marks, row-normalised confusion with counts, sample browser with thumbnails', () => {
    const html = readFileSync(join(tmp, 'random', 'report.html'), 'utf8');
    expect(html.match(/<table class="breakdown">/g)).toHaveLength(6);
    expect(html.match(/class="ref ref-chance"/g)!.length).toBeGreaterThanOrEqual(5);
    expect(html.match(/class="ref ref-majority"/g)!.length).toBeGreaterThanOrEqual(6);
    // each gold row sums to 100% of its count; counts on hover
    const t = rnd.metrics.tasks['emo-c']!;
    const row0 = t.confusion[0]!;
    const n0 = row0.reduce((a, b) => a + b, 0);
    expect(html).toContain(`gold ${t.classes[0]} → ${t.classes[row0.indexOf(Math.max(...row0))]}: ${Math.max(...row0)} of ${n0}`);
    expect(html).toContain('(unparsed)');
    const cards = html.match(/<figure class="sample (right|wrong)"/g)!;
    expect(cards.length).toBeGreaterThanOrEqual(12);
    expect(cards.length).toBeLessThanOrEqual(36);
    expect(html.match(/<img src="data:image\/jpeg;base64,/g)!.length).toBe(cards.length);
    expect(html).toMatch(/<details><summary>prompt<\/summary><pre>[^<]*sample \d+/);
  });

  it.skipIf(!haveChromium)('report.html renders in Chromium: no console output, charts and tables present, no clipped label', () => {
    const { dom, console: lines } = render(readFileSync(join(tmp, 'random', 'report.html'), 'utf8'));
    expect(lines).toEqual([]);
    expect(dom).toContain('data-ready="1"');
    expect(/data-clipped="(\d+)"/.exec(dom)?.[1]).toBe('0');
    expect(Number(/data-svgs="(\d+)"/.exec(dom)![1])).toBeGreaterThanOrEqual(1 + 6 + 6);
    expect(dom.match(/<svg[^>]*class="confusion"/g)).toHaveLength(6);
    expect(dom.match(/<table/g)!.length).toBeGreaterThanOrEqual(1 + 6 + 6);
    expect(dom.match(/<rect class="bar"/g)!.length).toBeGreaterThanOrEqual(7);
  }, 150_000);

  it('compare A B C: text, JSON and an HTML forest plot per pair (CLI)', () => {
    const html = join(tmp, 'cmp.html');
    const out = execFileSync(process.execPath, [join(dist, 'cli.js'), 'eval', 'compare', join(tmp, 'random'), join(tmp, 'majority'), join(tmp, 'random'), '--resamples', '100', '--html', html], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(out.match(/\| overall \|/g)).toHaveLength(2);
    const page = readFileSync(html, 'utf8');
    expect(page.match(/<section class="comparison">/g)).toHaveLength(2);
    expect(page.match(/<circle class="diff"/g)).toHaveLength(2 * 7);
    // A vs itself: every difference is 0 with a zero-width interval
    expect(page).toContain('emo-c: 0.0 points (95% CI 0.0 to 0.0)');
    if (haveChromium) {
      const { dom, console: lines } = render(page);
      expect(lines).toEqual([]);
      expect(/data-clipped="(\d+)"/.exec(dom)?.[1]).toBe('0');
      expect(dom.match(/<svg[^>]*class="chart forest"/g)).toHaveLength(2);
      expect(dom.match(/<table class="compare">/g)).toHaveLength(2);
    }
  }, 150_000);

  it('leaderboard over run folders: ranked Markdown and HTML (CLI)', () => {
    const prefix = join(tmp, 'lb');
    const md = execFileSync(process.execPath, [join(dist, 'cli.js'), 'eval', 'leaderboard', join(tmp, 'random'), join(tmp, 'majority'), '--out', prefix], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(readFileSync(`${prefix}.md`, 'utf8')).toBe(md.endsWith('\n') ? md.slice(0, -1) : md);
    const lines = md.split('\n').filter((l) => /^\| \d+ \|/.test(l));
    expect(lines).toHaveLength(2);
    const first = maj.metrics.overall.score >= rnd.metrics.overall.score ? 'majority' : 'random';
    expect(lines[0]).toContain(`| 1 | ${first}`);
    const html = readFileSync(`${prefix}.html`, 'utf8');
    expect(html.match(/<tr><td class="num">\d+<\/td>/g)).toHaveLength(2);
    if (haveChromium) {
      const { dom, console: cl } = render(html);
      expect(cl).toEqual([]);
      expect(/data-clipped="(\d+)"/.exec(dom)?.[1]).toBe('0');
      expect(dom).toContain('<table class="leaderboard">');
    }
    expect(() => execFileSync(process.execPath, [join(dist, 'cli.js'), 'eval', 'leaderboard', tmp], { stdio: 'pipe' })).toThrow(/no results\.json/);
  }, 150_000);
});

describe('honest exits', () => {
  const missing = samples('nowhere/');
  const bench = writeBench('missing.jsonl', missing);

  it('nothing scored: eval exits 1 and says why; the first missing file is reported as it happens', async () => {
    const lines: string[] = [];
    const err = console.error;
    const log = console.log;
    console.error = (x: string) => void lines.push(String(x));
    console.log = () => undefined;
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string) => (lines.push(String(chunk)), true)) as typeof process.stderr.write;
    try {
      expect(await evalCommand(['--bench', bench, '--model', 'majority', '--out', join(tmp, 'none'), '--media-root', demo, '--resamples', '10'])).toBe(1);
    } finally {
      console.error = err;
      console.log = log;
      process.stderr.write = write;
    }
    const text = lines.join('');
    expect(text).toMatch(/nothing could be scored \(144 selected: 0 errors, 144 skipped/);
    // one report line for the kind, naming the first sample and suggesting --text-only
    expect(text.match(/eval: missing media \(first seen on /g)).toHaveLength(1);
    expect(text).toMatch(/--text-only/);
  });

  it('--text-only: the majority and random baselines run without any media file', async () => {
    const r = await runEval({ bench, model: 'majority', out: join(tmp, 'textonly'), textOnly: true, progress: false, summary: false, resamples: 10 });
    expect(r.counts).toMatchObject({ selected: 144, ok: 144, skipped: 0 });
    expect(r.config.textOnly).toBe(true);
    expect(JSON.parse(readFileSync(join(tmp, 'textonly', 'run.json'), 'utf8'))).toMatchObject({ textOnly: true, face: null });
    const html = readFileSync(join(tmp, 'textonly', 'report.html'), 'utf8');
    expect(html).toContain('without media');
    expect(html).not.toContain('<img src=');
  });

  it('the CLI flags: --text-only runs, --no-face on a baseline is an error (exit 1)', () => {
    const cli = join(dist, 'cli.js');
    const ok = spawnSync(process.execPath, [cli, 'eval', '--bench', bench, '--model', 'random', '--text-only', '--out', join(tmp, 'cli-textonly'), '--resamples', '10'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect(JSON.parse(readFileSync(join(tmp, 'cli-textonly', 'results.json'), 'utf8')).counts).toMatchObject({ ok: 144, skipped: 0 });
    const bad = spawnSync(process.execPath, [cli, 'eval', '--bench', bench, '--model', 'random', '--no-face', '--out', join(tmp, 'cli-noface')], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--no-face applies to native/);
    const none = spawnSync(process.execPath, [cli, 'eval', '--bench', bench, '--model', 'random', '--out', join(tmp, 'cli-none'), '--resamples', '10'], { encoding: 'utf8' });
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(/eval: missing media \(first seen on SourceA\/test\/\d+\)/);
    expect(none.stderr).toMatch(/nothing could be scored/);
  });

  it('--no-face is refused for a backend that has no face perspective', async () => {
    await expect(runEval({ bench, model: 'random', out: join(tmp, 'nf'), face: false, progress: false, summary: false })).rejects.toThrow(/--no-face applies to native/);
  });

  it('a refused connection: reported once as it happens, and the run stops after a streak of identical failures', async () => {
    // a port nothing listens on
    const srv = createServer();
    await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((res) => srv.close(() => res()));
    const reported: string[] = [];
    const out = join(tmp, 'refused');
    await expect(
      runEval({
        bench: writeBench('text.jsonl', samples().map((s) => ({ ...s, media: null }))),
        model: `http://127.0.0.1:${port}/v1#m`,
        out,
        progress: false,
        summary: false,
        backendOptions: { http: { retries: 0, concurrency: 1 } },
        failures: { report: (l) => reported.push(l), stopAfter: 5 },
      }),
    ).rejects.toThrow(/stopped early: 5 samples in a row failed the same way \(connection refused\)/);
    expect(reported).toHaveLength(1);
    expect(reported[0]).toMatch(/^eval: connection refused \(first seen on SourceA\/test\/0\): .*ECONNREFUSED/);
    const recs = [...readPredictions(join(out, 'predictions.jsonl')).values()];
    expect(recs).toHaveLength(5);
    expect(recs.every((r) => r.status === 'error')).toBe(true);
    expect(existsSync(join(out, 'results.json'))).toBe(false);
  });

  it('failure kinds', () => {
    expect(failureKind('gave up after 5 tries (network error: fetch failed (ECONNREFUSED))')).toBe('connection refused');
    expect(failureKind('video input needs ffprobe (from ffmpeg), which was not found: install ffmpeg', 'ERR_UNSUPPORTED')).toBe('no ffmpeg/ffprobe');
    expect(failureKind('x: HTTP 503: busy')).toBe('HTTP 5xx');
    expect(failureKind('bad image', 'ERR_BAD_IMAGE')).toBe('ERR_BAD_IMAGE');
  });
});
