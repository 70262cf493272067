/**
 * EmoBench builders: counts, label sets and splits on the REAL annotation files of the shared
 * data collection, checked against the numbers each dataset's SOURCE.md states (parsed from its
 * text, not copied from our own output). Skipped, with the reason in the test name, when the
 * collection is absent. A few synthetic cases run everywhere.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { buildBenchmark, formatSummary, runBenchCommand, samplesToJsonl, type BuildResult } from '../../lib/emobench/build.js';
import { BUILDERS, getBuilder, memotionSplit } from '../../lib/emobench/builders/index.js';
import { runEval } from '../../lib/emobench/eval.js';
import { parseDelimited } from '../../lib/emobench/builders/common.js';
import { parseSamples, validateSample, type BenchSample } from '../../lib/emobench/sample.js';
import { EKMAN7, MIKELS8, MINTREC20 } from '../../lib/taxonomies.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const sharedDir = process.env.EMOLLM_SHARED_DIR ?? resolve(repoRoot, '../shared');
const DATA = join(sharedDir, 'data');
const HAVE_DATA = existsSync(join(DATA, 'README.md'));
const SKIP_REASON = `skipped: shared data not found at ${DATA} (set EMOLLM_SHARED_DIR)`;
// "fast" bounds: the process's CPU time since `since`, in ms (user + system, all its threads). CPU
// time, not wall: a loaded 2-core machine stretches the wall time of the same work several times
// (CI: 0.4-0.9 s of wall for these builds), while a quadratic parse still exceeds the bound.
const cpuMs = (since: NodeJS.CpuUsage): number => {
  const d = process.cpuUsage(since);
  return (d.user + d.system) / 1000;
};

const tmp = mkdtempSync(join(tmpdir(), 'emollm-bench-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A number as SOURCE.md writes it ("17,716" → 17716). */
const num = (s: string | undefined): number => {
  if (s === undefined) throw new Error('number not found in SOURCE.md');
  return Number(s.replace(/,/g, ''));
};
function source(ds: string): string {
  return readFileSync(join(DATA, ds, 'SOURCE.md'), 'utf8');
}
function match(text: string, re: RegExp): RegExpExecArray {
  const m = re.exec(text);
  if (!m) throw new Error(`SOURCE.md does not match ${re}`);
  return m;
}
/** "Content 64, Excitement 36, ..." → { Content: 64, ... } */
function counts(list: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of list.matchAll(/([A-Za-z][A-Za-z ]*?)\s+(\d[\d,]*)/g)) out[m[1]!.trim()] = num(m[2]);
  return out;
}
function rowsOf(r: BuildResult, source: string, split: string, task?: string) {
  return r.summary.rows.find((x) => x.source === source && x.split === split && (!task || x.task === task));
}
function checkAll(samples: BenchSample[]): void {
  const text = samplesToJsonl(samples);
  const parsed = parseSamples(text); // validates every line and id uniqueness
  expect(parsed.length).toBe(samples.length);
  for (const s of samples) expect(s.id).toBe(`${s.source}/${s.split}/${s.id.slice(s.source.length + s.split.length + 2)}`);
}

describe('parseDelimited', () => {
  it('handles quoted delimiters, doubled quotes, multi-line fields and CRLF', () => {
    const rows = parseDelimited('a,b,c\r\n1,"x, ""y""\nz",3\r\n\r\n4,,6');
    expect(rows.map((r) => r.fields)).toEqual([
      ['a', 'b', 'c'],
      ['1', 'x, "y"\nz', '3'],
      ['4', '', '6'],
    ]);
    expect(rows.map((r) => r.line)).toEqual([1, 2, 5]);
  });
});

describe('registry', () => {
  it('names every builder once and finds aliases case-insensitively', () => {
    expect(new Set(BUILDERS.map((b) => b.name)).size).toBe(BUILDERS.length);
    expect(getBuilder('mustard++').name).toBe('MUStARD_PlusPlus');
    expect(getBuilder('meld').name).toBe('MELD');
    expect(() => getBuilder('nope')).toThrow(/unknown dataset/);
    for (const b of BUILDERS) for (const t of b.defaultTasks) expect(b.tasks).toContain(t);
  });
});

describe('synthetic MELD + HarMeme folders (media resolution)', () => {
  const meld = join(tmp, 'MELD');
  const harm = join(tmp, 'HarMeme');
  const media = join(tmp, 'media');
  mkdirSync(meld, { recursive: true });
  mkdirSync(join(harm, 'HarMeme_V1/Annotations/Harm-C'), { recursive: true });
  writeFileSync(
    join(meld, 'test_sent_emo.csv'),
    'Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n' +
      '1,"Hi, there",Ross,joy,positive,3,0,1,1,"00:00:01,000","00:00:02,000"\n' +
      '2,"Two\nlines",Rachel,anger,negative,3,1,1,1,"00:00:02,000","00:00:03,000"\n' +
      '3,Odd,Joey,boredom,neutral,3,2,1,1,"00:00:03,000","00:00:04,000"\n',
  );
  writeFileSync(
    join(harm, 'HarMeme_V1/Annotations/Harm-C/test.jsonl'),
    ['not harmful', 'very harmful', ''].map((l, k) => JSON.stringify({ id: `m${k}`, image: `m${k}.png`, labels: [l], text: `t${k}` })).join('\n') + '\n',
  );
  mkdirSync(join(media, 'MELD/test/output_repeated_splits_test'), { recursive: true });
  writeFileSync(join(media, 'MELD/test/output_repeated_splits_test/dia3_utt1.mp4'), '');

  it('emits context, maps labels, reports unmapped rows, and leaves out missing media with their ids', async () => {
    const r = await buildBenchmark({ MELD: meld, HarMeme: harm }, { mediaRoot: media });
    checkAll(r.samples);
    expect(r.samples.map((s) => s.id)).toEqual(['MELD/test/dia3_utt1']);
    expect(r.samples[0]!.context).toEqual(['Ross: Hi, there']);
    expect(r.samples[0]!.text).toBe('Two lines');
    expect(r.summary.mediaChecked).toBe(true);
    const m = rowsOf(r, 'MELD', 'test')!;
    expect(m).toMatchObject({ rows: 3, samples: 1, missingMedia: 1, missingExamples: ['MELD/test/dia3_utt0'] });
    const h = rowsOf(r, 'Harm-C', 'test')!;
    expect(h).toMatchObject({ rows: 3, samples: 0, missingMedia: 2 });
    expect(r.summary.skipped.map((s) => [s.source, s.reason, s.examples])).toEqual([
      ['MELD', 'emotion "boredom" is not in ekman7', ['dia3_utt2']],
      ['Harm-C', 'empty harmfulness label', ['m2']],
    ]);
    const text = formatSummary(r.summary);
    expect(text).toMatch(/left out/);
    expect(text).toMatch(/MELD\/test: 1, e\.g\. MELD\/test\/dia3_utt0/);
  });

  it('keeps missing media with --keep-missing-media (still counted), and without a media root says media were not checked', async () => {
    const kept = await buildBenchmark({ HarMeme: harm }, { mediaRoot: media, keepMissingMedia: true });
    expect(kept.samples.map((s) => [s.id, s.answer])).toEqual([
      ['Harm-C/test/m0', 'no'],
      ['Harm-C/test/m1', 'yes'],
    ]);
    expect(rowsOf(kept, 'Harm-C', 'test')).toMatchObject({ samples: 2, missingMedia: 2 });
    expect(formatSummary(kept.summary)).toMatch(/KEPT/);
    const unchecked = await buildBenchmark({ HarMeme: harm });
    expect(unchecked.summary.mediaChecked).toBe(false);
    expect(unchecked.samples[1]!.media).toEqual({ type: 'image', path: 'HarMeme/HarMeme_Images/harmeme_images_covid_19/m1.png' });
    expect(formatSummary(unchecked.summary)).toMatch(/media: not checked/);
  });

  it('notes a split a dataset lacks and a humour request', async () => {
    const r = await buildBenchmark({ MELD: meld }, { splits: ['dev'], tasks: ['emo-c', 'humor'] });
    expect(r.samples).toEqual([]);
    expect(r.summary.notes.join('\n')).toMatch(/MELD: no split "dev"/);
    expect(r.summary.notes.join('\n')).toMatch(/humour/);
  });

  it('bench build (CLI function) writes valid JSONL', async () => {
    const out = join(tmp, 'out/bench.jsonl');
    const log = console.log;
    console.log = () => {};
    try {
      expect(await runBenchCommand(['build', '--source', `MELD=${meld}`, '--out', out, '--split', 'test'])).toBe(0);
    } finally {
      console.log = log;
    }
    expect(parseSamples(readFileSync(out, 'utf8')).map((s) => s.id)).toEqual(['MELD/test/dia3_utt0', 'MELD/test/dia3_utt1']);
    await expect(runBenchCommand(['build', '--source', `MELD=${meld}`])).rejects.toThrow(/--out/);
  });
});

describe('Memotion (synthetic CSV with malformed rows)', () => {
  const dir = join(tmp, 'Memotion');
  mkdirSync(dir, { recursive: true });
  const head = 'Image_name,Image_URL,OCR_extracted_text,Corrected_text,Humour,Sarcasm,Offensive,Motivational,Overall_Sentiment';
  const rows = [
    'a.jpg,http://x/a.jpg,RAW,"Corrected, ""quoted""\ntext",not_funny,general,slight,motivational,neutral',
    'b.png,http://x/b.png,<html>,b text,hilarious,general,slight,motivational,positive',
    'c.jpg,http://x/c.jpg,,c text,very_funny,general,slight,motivational,positivec2.jpg',
    'd.jpg,http://x/d.jpg,,d text,meh,general,slight,motivational,neutral',
    'b.png,http://x/b.png,<html>,b text,hilarious,general,slight,motivational,positive',
    ',http://x/e.jpg,,e text,funny,general,slight,motivational,neutral',
    '../f.jpg,http://x/f.jpg,,f text,funny,general,slight,motivational,neutral',
    'h.jpg,http://x/h.jpg,,h text,funny,general,slight,motivational',
    'g.jpg,http://x/g.jpg,"broken,g text,funny,general,slight,motivational,neutral',
    'i.jpg,http://x/i.jpg,,i text,funny,general,slight,motivational,neutral',
  ];
  writeFileSync(join(dir, 'data_6512.csv'), [head, ...rows].join('\r\n') + '\r\n');

  it('binary humour, corrected text, image by name, hashed split; every malformed row reported, none stops the build', async () => {
    const r = await buildBenchmark({ Memotion: dir });
    const byName = new Map(r.samples.map((s) => [s.id.split('/').slice(2).join('/'), s]));
    // i.jpg comes after a row with an unterminated quote: still read
    expect([...byName.keys()].sort()).toEqual(['a.jpg', 'b.png', 'c.jpg', 'i.jpg']);
    expect(byName.get('a.jpg')).toMatchObject({ task: 'humor', source: 'Memotion', answer: 'no', text: 'Corrected, "quoted" text', options: ['yes', 'no'] });
    expect(byName.get('a.jpg')!.media).toEqual({ type: 'image', path: 'Memotion/images/a.jpg' });
    expect(byName.get('b.png')!.answer).toBe('yes');
    for (const s of r.samples) expect(s.split).toBe(memotionSplit(s.id.split('/')[2]!));
    const problems = [...r.summary.skipped, ...r.summary.defects].flatMap((x) => x.examples.map((e) => `${x.reason} | ${e}`)).sort();
    expect(problems).toEqual([
      'Overall_Sentiment is "positivec2.jpg", not a Overall_Sentiment label (sample kept: humor does not use it) | line 5 (c.jpg)',
      'duplicate row (same Image_name and Humour as an earlier line) | line 7 (b.png), first on line 4',
      'unknown Humour label "meh" | line 6 (d.jpg)',
      'unusable Image_name "" | line 8',
      'unusable Image_name "../f.jpg" | line 9',
      'unterminated quoted field (row skipped; the rows after it are read) | line 11',
    ].concat(['8 fields, not 9 (columns shifted or missing) | line 10 (h.jpg)']).sort());
    // rows = every data row, whichever split it hashed to
    expect(r.summary.rows.reduce((a, x) => a + x.rows, 0)).toBe(rows.length);
    const text = formatSummary(r.summary);
    expect(text).toMatch(/skipped: Memotion\/\w+: 1 row\(s\), unknown Humour label "meh"/);
    expect(text).toMatch(/defect \(kept\): Memotion\/\w+: 1 row\(s\), Overall_Sentiment/);
  });

  it('the split is a documented function of the image name (70/10/20 over many names)', () => {
    const n = 20000;
    const c = { train: 0, val: 0, test: 0 };
    for (let i = 0; i < n; i++) c[memotionSplit(`meme_${i}.jpg`)]++;
    expect(Math.abs(c.train / n - 0.7)).toBeLessThan(0.02);
    expect(Math.abs(c.val / n - 0.1)).toBeLessThan(0.02);
    expect(Math.abs(c.test / n - 0.2)).toBeLessThan(0.02);
    expect(memotionSplit('a.jpg')).toBe(memotionSplit('a.jpg'));
  });
});

describe.skipIf(!HAVE_DATA)(HAVE_DATA ? 'real data in ../shared/data: counts match SOURCE.md' : SKIP_REASON, () => {
  it('Memotion: 6,512 rows; binary humour counts as SOURCE.md states; the corrupted sentiment row kept and reported', async () => {
    const src = source('Memotion');
    const m = match(src, /Counts \(([\d,]+) rows\): Humour not_funny (\d+), funny (\d+), very_funny (\d+), hilarious (\d+)\s+\(binary: (\d+) not funny \/ (\d+) funny\)/);
    const bad = match(src, /One row \(`([^`]+)`\) has a corrupted\s+`Overall_Sentiment`/)[1]!;
    const r = await buildBenchmark({ Memotion: join(DATA, 'Memotion') });
    checkAll(r.samples);
    const parts = ['train', 'val', 'test'].map((s) => rowsOf(r, 'Memotion', s, 'humor')!);
    expect(parts.reduce((a, p) => a + p.rows, 0)).toBe(num(m[1]));
    expect(num(m[2]) + num(m[3]) + num(m[4]) + num(m[5])).toBe(num(m[1]));
    const skipped = r.summary.skipped.filter((s) => s.dataset === 'Memotion');
    const no = r.samples.filter((s) => s.answer === 'no').length;
    const yes = r.samples.filter((s) => s.answer === 'yes').length;
    // one row is a verbatim duplicate of the line before it (same image, same labels): reported, not scored twice
    expect(skipped.map((s) => [s.reason, s.count])).toEqual([['duplicate row (same Image_name and Humour as an earlier line)', 1]]);
    expect(no).toBe(num(m[6]));
    expect(yes + 1).toBe(num(m[7]));
    expect(r.samples.length + 1).toBe(num(m[1]));
    // the split is the hash of the name, roughly 70/10/20
    for (const [k, frac] of [0.7, 0.1, 0.2].entries()) expect(Math.abs(parts[k]!.samples / r.samples.length - frac)).toBeLessThan(0.03);
    for (const s of r.samples) expect(s.split).toBe(memotionSplit(s.id.slice('Memotion/'.length + s.split.length + 1)));
    const defects = r.summary.defects.filter((d) => d.dataset === 'Memotion');
    expect(defects).toHaveLength(1);
    expect(defects[0]!.examples[0]).toContain(bad);
    expect(r.samples.find((s) => s.id.endsWith(`/${bad}`))).toMatchObject({ task: 'humor', media: { type: 'image', path: `Memotion/images/${bad}` } });
  });

  it('EmoSet: test and val counts and the test label distribution', async () => {
    const src = source('EmoSet');
    const m = match(src, /Counts: test ([\d,]+) \(([^)]*)\); val ([\d,]+)/);
    const r = await buildBenchmark({ EmoSet: join(DATA, 'EmoSet') }, { tasks: ['emo-c', 'emo-o'] });
    checkAll(r.samples);
    expect(rowsOf(r, 'EmoSet', 'test', 'emo-c')!.samples).toBe(num(m[1]));
    expect(rowsOf(r, 'EmoSet', 'val', 'emo-c')!.samples).toBe(num(m[3]));
    expect(rowsOf(r, 'EmoSet', 'test', 'emo-c')!.labels).toEqual(counts(m[2]!));
    expect(rowsOf(r, 'EmoSet', 'test', 'emo-o')!.samples).toBe(num(m[1]));
    const first = r.samples[0]!;
    expect(first).toMatchObject({ id: 'EmoSet/val/' + first.id.split('/')[2], task: 'emo-c', options: [...MIKELS8.labels] });
    expect(first.media!.path).toMatch(/^EmoSet\/image\/[a-z]+\/[a-z]+_\d+\.jpg$/);
    expect(r.samples.find((s) => s.task === 'emo-o')!.id).toMatch(/#emo-o$/);
  });

  it('Twitter I (three agreement subsets), Twitter II and Abstract', async () => {
    const t1 = match(source('Twitter_I'), /five-agree ([\d,]+) \((\d+) pos \/ (\d+) neg\), >=4-agree ([\d,]+) \((\d+)\/(\d+)\), >=3-agree ([\d,]+) \((\d+)\/(\d+)\)/);
    const t2 = match(source('Twitter_II'), /([\d,]+) images \((\d+) positive \/ (\d+) negative\)/);
    const ab = match(source('Abstract'), /([\d,]+) of the [\d,]+ images: ([^\n]*)\./);
    const r = await buildBenchmark({ Twitter_I: join(DATA, 'Twitter_I'), Twitter_II: join(DATA, 'Twitter_II'), Abstract: join(DATA, 'Abstract') });
    checkAll(r.samples);
    const splits = ['five-agree', 'four-agree', 'three-agree'];
    splits.forEach((split, k) => {
      const row = rowsOf(r, 'Twitter_I', split)!;
      expect(row.samples).toBe(num(t1[1 + 3 * k]));
      expect(row.labels).toEqual({ positive: num(t1[2 + 3 * k]), negative: num(t1[3 + 3 * k]) });
    });
    expect(rowsOf(r, 'Twitter_II', 'test')).toMatchObject({ samples: num(t2[1]), labels: { positive: num(t2[2]), negative: num(t2[3]) } });
    const abs = rowsOf(r, 'Abstract', 'test')!;
    expect(abs.samples).toBe(num(ab[1]));
    const want: Record<string, number> = {};
    const canon: Record<string, string> = { Content: 'contentment', Sad: 'sadness' };
    for (const [k, v] of Object.entries(counts(ab[2]!))) want[canon[k] ?? k.toLowerCase()] = v;
    expect(abs.labels).toEqual(want);
    for (const s of r.samples) expect(s.task).toBe('emo-c');
  });

  it('MELD: split sizes, test emotions, dialogue context, clip paths', async () => {
    const src = source('MELD');
    const m = match(src, /train ([\d,]+) utterances \/ [\d,]+ dialogues; dev ([\d,]+) \/ [\d,]+; test ([\d,]+) \/ [\d,]+/);
    const em = match(src, /test emotions: ([^\n]*)\./);
    const t = process.cpuUsage();
    const r = await buildBenchmark({ MELD: join(DATA, 'MELD') });
    expect(cpuMs(t)).toBeLessThan(5000);
    checkAll(r.samples);
    expect(rowsOf(r, 'MELD', 'train')!.samples).toBe(num(m[1]));
    expect(rowsOf(r, 'MELD', 'dev')!.samples).toBe(num(m[2]));
    expect(rowsOf(r, 'MELD', 'test')!.samples).toBe(num(m[3]));
    expect(rowsOf(r, 'MELD', 'test')!.labels).toEqual(counts(em[1]!));
    const s = r.samples.find((x) => x.id === 'MELD/test/dia0_utt2')!;
    expect(s).toMatchObject({ task: 'emo-c', text: "Y'know what?", answer: 'neutral', options: [...EKMAN7.labels] });
    expect(s.media).toEqual({ type: 'video', path: 'MELD/test/output_repeated_splits_test/dia0_utt2.mp4' });
    expect(s.context).toHaveLength(2);
    expect(s.context![0]).toMatch(/^Mark: Why do all you/);
    expect(r.samples.find((x) => x.id === 'MELD/test/dia0_utt0')!.context).toBeUndefined();
  });

  it('MIntRec: 1334/445/445, canonical intents, test distribution', async () => {
    const src = source('MIntRec');
    const m = match(src, /\((\d+)\/(\d+)\/(\d+) =\s*([\d,]+)\)/);
    const tl = match(src, /test \((\d+)\): ([^\n]*?), \.\.\./);
    const r = await buildBenchmark({ MIntRec: join(DATA, 'MIntRec') });
    checkAll(r.samples);
    expect(r.samples.length).toBe(num(m[4]));
    expect(['train', 'dev', 'test'].map((s) => rowsOf(r, 'MIntRec', s)!.samples)).toEqual([num(m[1]), num(m[2]), num(m[3])]);
    const test = rowsOf(r, 'MIntRec', 'test')!;
    expect(test.samples).toBe(num(tl[1]));
    for (const [label, n] of Object.entries(counts(tl[2]!))) expect(test.labels[label.toLowerCase()]).toBe(n);
    expect(Object.keys(test.labels).every((l) => MINTREC20.labels.includes(l))).toBe(true);
    expect(r.samples.some((s) => s.answer === 'ask for help')).toBe(true);
    expect(r.samples.find((s) => s.split === 'test')!.media!.path).toMatch(/^MIntRec\/raw_data\/S\d+\/E\d+\/\d+\.mp4$/);
  });

  it('MUStARD and MUStARD++: sarcasm counts, MUStARD++ implicit emotions, the malformed row reported', async () => {
    const a = match(source('MUStARD'), /Counts: (\d+) samples, (\d+) sarcastic \/ (\d+) not/);
    const pp = source('MUStARD_PlusPlus');
    const b = match(pp, /([\d,]+) labelled utterances \(`_u`\): (\d+) sarcastic \/ (\d+) not/);
    const e = match(pp, /Implicit emotion: ([^]*?)\.\n/);
    const r = await buildBenchmark({ MUStARD: join(DATA, 'MUStARD'), 'MUStARD++': join(DATA, 'MUStARD_PlusPlus') }, { tasks: ['sarcasm', 'emo-c'] });
    checkAll(r.samples);
    expect(rowsOf(r, 'MUStARD', 'all')).toMatchObject({ samples: num(a[1]), labels: { yes: num(a[2]), no: num(a[3]) } });
    expect(rowsOf(r, 'MUStARD_PlusPlus', 'all', 'sarcasm')).toMatchObject({ samples: num(b[1]), labels: { yes: num(b[2]), no: num(b[3]) } });
    const emo: Record<string, number> = {};
    for (const [k, v] of Object.entries(counts(e[1]!.replace(/\n/g, ' ')))) emo[k.toLowerCase()] = v;
    expect(rowsOf(r, 'MUStARD_PlusPlus', 'all', 'emo-c')!.labels).toEqual(emo);
    expect(r.summary.skipped.filter((s) => s.source === 'MUStARD_PlusPlus').map((s) => s.count)).toEqual([1]);
    const s = r.samples.find((x) => x.id === 'MUStARD/all/1_60')!;
    expect(s).toMatchObject({ answer: 'yes', text: "It's just a privilege to watch your mind at work." });
    expect(s.context).toEqual([
      'LEONARD: I never would have identified the fingerprints of string theory in the aftermath of the Big Bang.',
      "SHELDON: My apologies. What's your plan?",
    ]);
    const p = r.samples.find((x) => x.id === 'MUStARD_PlusPlus/all/1_10004_u')!;
    expect(p.context).toHaveLength(5);
    expect(p.media!.path).toBe('MUStARD_PlusPlus/final_utterance_videos/1_10004_u.mp4');
    expect(r.summary.notes).toEqual([]);
  });

  it('MMSD2.0 and MMSD: split sizes, labels, exact 64-bit image ids; fast', async () => {
    const src = source('MMSD2.0');
    const m = match(src, /train ([\d,]+) \(0:(\d+), 1:(\d+)\); valid ([\d,]+) \(0:(\d+), 1:(\d+)\); test\s+([\d,]+)\s+\(0:(\d+), 1:(\d+)\)/);
    const c = match(src, /MMSD clean: valid ([\d,]+); test ([\d,]+)/);
    const t = process.cpuUsage();
    const r = await buildBenchmark({ 'MMSD2.0': join(DATA, 'MMSD2.0') });
    expect(cpuMs(t)).toBeLessThan(5000);
    checkAll(r.samples);
    ['train', 'valid', 'test'].forEach((split, k) =>
      expect(rowsOf(r, 'MMSD2.0', split)).toMatchObject({ samples: num(m[1 + 3 * k]), labels: { no: num(m[2 + 3 * k]), yes: num(m[3 + 3 * k]) } }),
    );
    expect(rowsOf(r, 'MMSD', 'valid')!.samples).toBe(num(c[1]));
    expect(rowsOf(r, 'MMSD', 'test')!.samples).toBe(num(c[2]));
    const first = r.samples.find((s) => s.split === 'test' && s.source === 'MMSD2.0')!;
    expect(first.id).toBe('MMSD2.0/test/862902619928506372');
    expect(first.media).toEqual({ type: 'image', path: 'MMSD2.0/dataset_image/862902619928506372.jpg' });
  });

  it('HarMeme: Harm-C / Harm-P split sizes, any harm = yes, the unlabelled row reported', async () => {
    const src = source('HarMeme');
    const m = match(src, /Harm-C train (\d+) \/ val (\d+) \/ test (\d+); Harm-P train_v1 (\d+) \/ val_v1 (\d+) \/ test_v1 (\d+)/);
    const ct = match(src, /Harm-C test: not harmful (\d+), somewhat harmful (\d+), very harmful (\d+)/);
    const r = await buildBenchmark({ HarMeme: join(DATA, 'HarMeme') });
    checkAll(r.samples);
    const sizes = ['Harm-C', 'Harm-P'].flatMap((src) => ['train', 'val', 'test'].map((s) => rowsOf(r, src, s)!));
    sizes.forEach((row, k) => {
      const skipped = r.summary.skipped.filter((s) => s.source === row.source && s.split === row.split).reduce((a, s) => a + s.count, 0);
      expect(row.rows).toBe(num(m[k + 1]));
      expect(row.samples + skipped).toBe(num(m[k + 1]));
    });
    expect(r.summary.skipped).toMatchObject([{ source: 'Harm-P', split: 'train', count: 1, examples: ['memes_326'] }]);
    expect(rowsOf(r, 'Harm-C', 'test')!.labels).toEqual({ no: num(ct[1]), yes: num(ct[2]) + num(ct[3]) });
    for (const s of r.samples) validateSample(s);
  });

  it('the whole collection: --split test by role, deterministic output, every line valid', async () => {
    const out = join(tmp, 'all.jsonl');
    const log = console.log;
    let printed = '';
    console.log = (x: string) => void (printed += x);
    try {
      expect(await runBenchCommand(['build', '--source', DATA, '--out', out, '--split', 'test'])).toBe(0);
    } finally {
      console.log = log;
    }
    const text = readFileSync(out, 'utf8');
    const samples = parseSamples(text);
    expect(new Set(samples.map((s) => s.split))).toEqual(new Set(['test', 'five-agree', 'four-agree', 'three-agree', 'all']));
    // with Memotion's humour the collection covers all six EmoBench sub-tasks
    expect(new Set(samples.map((s) => s.task))).toEqual(new Set(['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm']));
    expect(printed).toMatch(/defect \(kept\): Memotion\/test: 1 row\(s\), Overall_Sentiment/);
    expect(printed).toMatch(/media: not checked/);
    const again = await buildBenchmark(
      Object.fromEntries(BUILDERS.filter((b) => existsSync(join(DATA, b.name))).map((b) => [b.name, join(DATA, b.name)])),
      { splits: ['test'] },
    );
    expect(samplesToJsonl(again.samples)).toBe(text);
    // eval on the built file reports the paper's six-way overall (majority baseline, no media needed)
    const r = await runEval({ bench: out, model: 'majority', textOnly: true, out: join(tmp, 'all-majority'), progress: false, summary: false, resamples: 20 });
    expect(r.metrics.overall).toMatchObject({ complete: true, missing: [], tasks: ['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'] });
    expect(r.counts).toMatchObject({ selected: samples.length, ok: samples.length });
  }, 120_000);
});
