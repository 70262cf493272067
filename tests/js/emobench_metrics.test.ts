// EmoBench metrics against hand-computed cases (the arithmetic is in the comments).
import { describe, expect, it } from 'vitest';

import {
  bootstrapAccuracy,
  computeMetrics,
  isCorrect,
  pairedBootstrap,
  percentile,
  type ScoredItem,
} from '../../lib/emobench/metrics.js';
import { Progress, formatDuration } from '../../lib/emobench/progress.js';
import type { BenchTask } from '../../lib/emobench/sample.js';

let k = 0;
function item(task: BenchTask, answer: string, label: string | null, status: ScoredItem['status'] = 'ok'): ScoredItem {
  return { id: `${task}/${String(k++).padStart(4, '0')}`, task, answer, label, unparsed: status === 'ok' && label === null, status };
}

// emo-c, gold -> predicted:
//   1. a -> a   (correct)
//   2. a -> b
//   3. a -> (unparsed)
//   4. b -> b   (correct)
//   5. b -> a
//   6. c -> c   (correct)
//   + one error and one skipped sample (not scored)
// classes a, b, c; confusion (rows gold; columns a, b, c, unparsed):
//   a: 1 1 0 | 1
//   b: 1 1 0 | 0
//   c: 0 0 1 | 0
// accuracy 3/6 = 0.5; unparsed rate 1/6
// recall    a 1/3, b 1/2, c 1
// precision a 1/2 (predicted a: #1, #5), b 1/2 (#2, #4), c 1
// F1 a = 2(1/2)(1/3)/(1/2+1/3) = (1/3)/(5/6) = 0.4; F1 b = 0.5; F1 c = 1
// macro-F1 = (0.4 + 0.5 + 1)/3 = 0.63333...
const emoC = [
  item('emo-c', 'a', 'a'),
  item('emo-c', 'a', 'b'),
  item('emo-c', 'a', null),
  item('emo-c', 'b', 'b'),
  item('emo-c', 'b', 'a'),
  item('emo-c', 'c', 'c'),
  item('emo-c', 'a', null, 'error'),
  item('emo-c', 'b', null, 'skipped'),
];

// sarcasm: gold yes, yes, no, no; predicted yes, no, no, no
// accuracy 3/4; confusion (no, yes | unparsed): no: 2 0 | 0; yes: 1 1 | 0
// recall no 1, yes 1/2; precision no 2/3, yes 1
// F1 no = 2(2/3)(1)/(5/3) = 0.8; F1 yes = 2(1)(1/2)/(3/2) = 2/3; macro = (0.8 + 0.6667)/2 = 0.73333
const sarcasm = [item('sarcasm', 'yes', 'yes'), item('sarcasm', 'yes', 'no'), item('sarcasm', 'no', 'no'), item('sarcasm', 'no', 'no')];

// emo-o: gold happy, predicted "Sad": a predicted class that is never gold.
// classes happy, sad; accuracy 0; recall happy 0 (sad has no recall: never gold); F1 both 0; macro 0
const emoO = [item('emo-o', 'happy', 'Sad')];

describe('computeMetrics (hand-computed)', () => {
  const m = computeMetrics([...emoC, ...sarcasm, ...emoO], { resamples: 200, seed: 1 });

  it('emo-c: accuracy, unparsed, errors, skipped', () => {
    const t = m.tasks['emo-c']!;
    expect(t.n).toBe(6);
    expect(t.correct).toBe(3);
    expect(t.accuracy).toBeCloseTo(0.5, 12);
    expect(t.unparsed).toBe(1);
    expect(t.unparsedRate).toBeCloseTo(1 / 6, 12);
    expect(t.errors).toBe(1);
    expect(t.skipped).toBe(1);
  });

  it('emo-c: confusion matrix, per-class recall, macro-F1', () => {
    const t = m.tasks['emo-c']!;
    expect(t.classes).toEqual(['a', 'b', 'c']);
    expect(t.confusion).toEqual([
      [1, 1, 0, 1],
      [1, 1, 0, 0],
      [0, 0, 1, 0],
    ]);
    expect(t.perClassRecall.a).toBeCloseTo(1 / 3, 12);
    expect(t.perClassRecall.b).toBeCloseTo(1 / 2, 12);
    expect(t.perClassRecall.c).toBeCloseTo(1, 12);
    expect(t.perClassF1.a).toBeCloseTo(0.4, 12);
    expect(t.perClassF1.b).toBeCloseTo(0.5, 12);
    expect(t.perClassF1.c).toBeCloseTo(1, 12);
    expect(t.macroF1).toBeCloseTo(1.9 / 3, 12);
  });

  it('sarcasm: yes/no', () => {
    const t = m.tasks.sarcasm!;
    expect(t.accuracy).toBeCloseTo(0.75, 12);
    expect(t.classes).toEqual(['no', 'yes']);
    expect(t.confusion).toEqual([
      [2, 0, 0],
      [1, 1, 0],
    ]);
    expect(t.perClassRecall).toEqual({ no: 1, yes: 0.5 });
    expect(t.macroF1).toBeCloseTo((0.8 + 2 / 3) / 2, 12);
  });

  it('emo-o: a predicted class that is never gold', () => {
    const t = m.tasks['emo-o']!;
    expect(t.accuracy).toBe(0);
    expect(t.classes).toEqual(['happy', 'Sad']);
    expect(t.perClassRecall).toEqual({ happy: 0 });
    expect(t.macroF1).toBe(0);
  });

  it('overall: the mean of the present sub-task accuracies, naming the missing ones', () => {
    // (0.5 + 0 + 0.75) / 3 = 0.416666...
    expect(m.overall.score).toBeCloseTo(1.25 / 3, 12);
    expect(m.overall.tasks).toEqual(['emo-c', 'emo-o', 'sarcasm']);
    expect(m.overall.missing).toEqual(['intent', 'hate', 'humor']);
    expect(m.overall.complete).toBe(false);
    // micro: (3 + 0 + 3) / (6 + 1 + 4) = 6/11
    expect(m.overall.microAccuracy).toBeCloseTo(6 / 11, 12);
    expect(m.overall).toMatchObject({ n: 11, errors: 1, skipped: 1, unparsed: 1 });
    expect(m.overall.scoreCI.low).toBeLessThanOrEqual(m.overall.score);
    expect(m.overall.scoreCI.high).toBeGreaterThanOrEqual(m.overall.score);
  });

  it('all six tasks present: the paper score, complete', () => {
    const tasks: BenchTask[] = ['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'];
    // accuracies 1, 0, 1, 0, 1, 0.5 -> mean 3.5/6
    const items = tasks.flatMap((t, i) =>
      i === 5 ? [item(t, 'yes', 'yes'), item(t, 'yes', 'no')] : [item(t, 'yes', i % 2 === 0 ? 'yes' : 'no')],
    );
    const r = computeMetrics(items, { resamples: 0 });
    expect(r.overall.complete).toBe(true);
    expect(r.overall.missing).toEqual([]);
    expect(r.overall.score).toBeCloseTo(3.5 / 6, 12);
  });

  it('labels compare trimmed and case-insensitively', () => {
    expect(isCorrect({ answer: 'happy', label: ' Happy ', unparsed: false })).toBe(true);
    expect(isCorrect({ answer: 'happy', label: null, unparsed: true })).toBe(false);
  });

  it('does not depend on the order of the items', () => {
    const a = computeMetrics([...emoC, ...sarcasm], { resamples: 300, seed: 5 });
    const b = computeMetrics([...sarcasm, ...emoC].reverse(), { resamples: 300, seed: 5 });
    expect(b).toEqual(a);
  });
});

describe('bootstrap', () => {
  it('percentile interpolates like numpy', () => {
    // [1,2,3,4]: p=0.5 -> position 1.5 -> 2.5; p=0.025 -> position 0.075 -> 1.075
    expect(percentile([1, 2, 3, 4], 0.5)).toBeCloseTo(2.5, 12);
    expect(percentile([1, 2, 3, 4], 0.025)).toBeCloseTo(1.075, 12);
  });

  it('is seeded and plausible', () => {
    const outcomes = Array.from({ length: 400 }, (_, i) => (i % 2 === 0 ? 1 : 0));
    const a = bootstrapAccuracy(outcomes, 1000, 7);
    expect(bootstrapAccuracy(outcomes, 1000, 7)).toEqual(a);
    expect(bootstrapAccuracy(outcomes, 1000, 8)).not.toEqual(a);
    expect(a.accuracy).toBe(0.5);
    // normal approximation: 0.5 +- 1.96 sqrt(0.25/400) = 0.5 +- 0.049
    expect(a.ci.low).toBeGreaterThan(0.43);
    expect(a.ci.low).toBeLessThan(0.47);
    expect(a.ci.high).toBeGreaterThan(0.53);
    expect(a.ci.high).toBeLessThan(0.57);
    // all correct: a degenerate interval
    expect(bootstrapAccuracy([1, 1, 1], 100, 0).ci).toEqual({ low: 1, high: 1 });
  });
});

describe('pairedBootstrap', () => {
  const ids = Array.from({ length: 50 }, (_, i) => `s${String(i).padStart(2, '0')}`);
  const run = (correct: (i: number) => boolean, task: BenchTask = 'emo-c'): ScoredItem[] =>
    ids.map((id, i) => ({ id, task, answer: 'a', label: correct(i) ? 'a' : 'b', unparsed: false, status: 'ok' as const }));

  it('identical runs: no difference, p = 1', () => {
    const a = run((i) => i % 3 === 0);
    const c = pairedBootstrap(a, a, { resamples: 500 });
    expect(c.tasks[0]).toMatchObject({ n: 50, diff: 0, diffCI: { low: 0, high: 0 }, p: 1, onlyA: 0, onlyB: 0 });
  });

  it('A always right, B always wrong: diff 1, p = 0', () => {
    const c = pairedBootstrap(run(() => true), run(() => false), { resamples: 500 });
    expect(c.tasks[0]).toMatchObject({ diff: 1, diffCI: { low: 1, high: 1 }, p: 0, onlyA: 50, onlyB: 0 });
    expect(c.overall.diff).toBe(1);
  });

  it('only shared, scored ids are compared', () => {
    // A: 50 ids, first 10 right. B: only ids 0..19, B right on 10..19; id 0 of B errored.
    const a = run((i) => i < 10);
    const b = run((i) => i >= 10).slice(0, 20);
    b[0] = { ...b[0]!, status: 'error', label: null };
    const c = pairedBootstrap(a, b, { resamples: 200, seed: 3 });
    // shared scored ids: 1..19 (19): A right on 1..9 (9/19), B right on 10..19 (10/19)
    expect(c.tasks[0]!.n).toBe(19);
    expect(c.tasks[0]!.accuracyA).toBeCloseTo(9 / 19, 12);
    expect(c.tasks[0]!.accuracyB).toBeCloseTo(10 / 19, 12);
    expect(c.tasks[0]!.diff).toBeCloseTo(-1 / 19, 12);
    expect(c.tasks[0]!.onlyA).toBe(9);
    expect(c.tasks[0]!.onlyB).toBe(10);
    expect(c.tasks[0]!.p).toBeGreaterThan(0.5);
    expect(pairedBootstrap(a, b, { resamples: 200, seed: 3 })).toEqual(c);
  });
});

describe('Progress', () => {
  it('writes plain lines when not a TTY, with rate and ETA', () => {
    let t = 0;
    const out: string[] = [];
    const stream = { write: (s: string) => out.push(s) } as unknown as NodeJS.WritableStream;
    const p = new Progress(40, 10, { stream, tty: false, now: () => t, label: 'test' });
    for (let i = 0; i < 40; i++) {
      t += 100;
      p.tick(i === 3 ? 'error' : 'ok');
    }
    p.finish();
    expect(out.length).toBe(20); // every 5% (2 samples)
    expect(out.every((l) => l.endsWith('\n') && !l.includes('\r'))).toBe(true);
    expect(out[0]).toContain('2/40 (+10 resumed)');
    expect(out[0]).toContain('10.0/s');
    expect(out[0]).toContain('ETA 4s'); // 38 left at 10/s
    expect(out.at(-1)).toContain('40/40');
    expect(out.at(-1)).toContain('1 errors');
  });

  it('redraws in place on a TTY', () => {
    let t = 0;
    const out: string[] = [];
    const stream = { write: (s: string) => out.push(s), isTTY: true } as unknown as NodeJS.WritableStream;
    const p = new Progress(5, 0, { stream, now: () => t });
    for (let i = 0; i < 5; i++) {
      t += 200;
      p.tick();
    }
    p.finish();
    expect(out.slice(0, 5).every((l) => l.startsWith('\r'))).toBe(true);
    expect(out.at(-1)).toBe('\n');
    expect(formatDuration(125_000)).toBe('2m05s');
  });
});
