/**
 * Memotion 7k (Sharma et al., SemEval-2020 Task 8): humour in memes (image + meme text).
 *
 * Reads `data_6512.csv` (the 6,512-row label release; also found as
 * `memotion_dataset_7k/labels.csv`-style copies named `data_6512.csv`):
 * `Image_name,Image_URL,OCR_extracted_text,Corrected_text,Humour,Sarcasm,Offensive,Motivational,Overall_Sentiment`.
 * - humor: `Humour` not_funny → no; funny / very_funny / hilarious → yes (binary humour, as
 *   EmoBench scores it).
 * - text = `Corrected_text` (the hand-corrected meme text; the raw OCR column holds HTML in some rows).
 * - media `Memotion/images/<Image_name>` (the release's `images/` folder; the name as the CSV spells it).
 * - id `Memotion/<split>/<Image_name>`.
 * - Split: the file has none (SemEval's test set is not in it), so each row goes to a split by a
 *   hash of its image name, stable under reordering and additions: the first 4 bytes of
 *   sha256(Image_name), big-endian, mod 10 → 0–6 train, 7 val, 8–9 test ({@link memotionSplit}).
 * - Rows are never dropped silently and never stop the build: an unknown humour value, a wrong
 *   number of fields, an unterminated quote (parsing resumes on the next line) or a duplicate image
 *   name makes no sample and is listed as skipped; a row whose *unused* fields are damaged (the known corrupted
 *   `Overall_Sentiment`) keeps its sample and is listed as a defect in the build summary.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import type { BenchSample } from '../sample.js';
import { type BuildContext, type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, malformed, parseDelimitedLenient, readText, sampleId, textField } from './common.js';

/** Memotion's humour intensity → binary humour. */
export const MEMOTION_TO_HUMOR: Readonly<Record<string, 'yes' | 'no'>> = Object.freeze({
  not_funny: 'no',
  funny: 'yes',
  very_funny: 'yes',
  hilarious: 'yes',
});

const SPLITS: readonly { split: string; role: SplitRole }[] = [
  { split: 'train', role: 'train' },
  { split: 'val', role: 'val' },
  { split: 'test', role: 'test' },
];

/** Values the unused label columns may take; anything else is reported as a defect. */
const OTHER_COLUMNS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  Sarcasm: ['not_sarcastic', 'general', 'twisted_meaning', 'very_twisted'],
  Offensive: ['not_offensive', 'slight', 'very_offensive', 'hateful_offensive'],
  Motivational: ['not_motivational', 'motivational'],
  Overall_Sentiment: ['very_negative', 'negative', 'neutral', 'positive', 'very_positive'],
});

/** The deterministic split of a Memotion image name: sha256 → first 4 bytes mod 10 → 0–6 train, 7 val, 8–9 test. */
export function memotionSplit(imageName: string): 'train' | 'val' | 'test' {
  const b = createHash('sha256').update(imageName, 'utf8').digest().readUInt32BE(0) % 10;
  return b <= 6 ? 'train' : b === 7 ? 'val' : 'test';
}

export const memotionBuilder: DatasetBuilder = {
  name: 'Memotion',
  aliases: ['Memotion7k', 'memotion-7k'],
  tasks: ['humor'],
  defaultTasks: ['humor'],
  description: 'Memotion 7k data_6512.csv → humor yes/no (not_funny = no) on meme image + corrected text; hashed 70/10/20 split',
  build(dir, ctx) {
    return buildMemotion(dir, ctx);
  },
};

function buildMemotion(dir: string, ctx: BuildContext): BuiltSplit[] {
  const file = findFile(dir, ['data_6512.csv', 'memotion_dataset_7k/data_6512.csv']);
  if (!file) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no data_6512.csv`, { file: dir });
  if (!ctx.tasks.has('humor')) return [];
  const { rows: parsed, broken } = parseDelimitedLenient(readText(join(dir, file)));
  const header = parsed.shift();
  if (!header) throw malformed(file, 'empty file');
  const names = header.fields.map((h) => h.trim());
  for (const r of ['Image_name', 'Corrected_text', 'Humour']) if (!names.includes(r)) throw malformed(file, `no column "${r}" (columns: ${names.join(', ')})`);
  const records = parsed.map(({ fields, line }) => ({ rec: Object.fromEntries(names.map((n, k) => [n, fields[k] ?? ''])) as Record<string, string>, line, width: fields.length }));
  const parts = new Map(
    SPLITS.map((s) => [s.split, { ...s, wanted: ctx.wantSplit(s.split, s.role), rows: 0, samples: [] as BenchSample[], skips: new Skips(), defects: new Skips() }]),
  );
  const firstLine = new Map<string, { line: number; humour: string }>();
  // a row with an unterminated quote cannot be split into fields: reported under test, once each
  for (const line of broken) {
    const part = parts.get('test')!;
    part.rows++;
    if (part.wanted) part.skips.add('unterminated quoted field (row skipped; the rows after it are read)', `line ${line}`);
  }
  for (const { rec, line, width } of records) {
    const name = rec.Image_name!.trim();
    const where = `line ${line}${name ? ` (${name})` : ''}`;
    if (width !== names.length) {
      const part = parts.get(name && !/[\\/]/.test(name) ? memotionSplit(name) : 'test')!;
      part.rows++;
      if (part.wanted) part.skips.add(`${width} fields, not ${names.length} (columns shifted or missing)`, where);
      continue;
    }
    // A row with no usable name cannot be split by it: count it under test so it is reported once.
    const part = parts.get(name ? memotionSplit(name) : 'test')!;
    part.rows++;
    if (!part.wanted) continue;
    if (name === '' || name.includes('/') || name.includes('\\') || name === '.' || name === '..') {
      part.skips.add(`unusable Image_name ${JSON.stringify(rec.Image_name)}`, `line ${line}`);
      continue;
    }
    const humourRaw = rec.Humour!.trim();
    const answer = MEMOTION_TO_HUMOR[humourRaw.toLowerCase()];
    if (!answer) {
      part.skips.add(humourRaw === '' ? 'empty Humour label' : `unknown Humour label ${JSON.stringify(humourRaw.slice(0, 60))}`, where);
      continue;
    }
    const prev = firstLine.get(name);
    if (prev) {
      part.skips.add(
        prev.humour === humourRaw ? 'duplicate row (same Image_name and Humour as an earlier line)' : 'duplicate Image_name with a different Humour label',
        `${where}, first on line ${prev.line}`,
      );
      continue;
    }
    firstLine.set(name, { line, humour: humourRaw });
    for (const [col, allowed] of Object.entries(OTHER_COLUMNS)) {
      const v = (rec[col] ?? '').trim();
      if (!allowed.includes(v)) part.defects.add(`${col} is ${JSON.stringify(v.slice(0, 80))}, not a ${col} label (sample kept: humor does not use it)`, where);
    }
    part.samples.push({
      id: sampleId('Memotion', part.split, name),
      task: 'humor',
      source: 'Memotion',
      split: part.split,
      media: { type: 'image', path: `Memotion/images/${name}` },
      ...textField(rec.Corrected_text),
      options: ['yes', 'no'],
      answer,
    });
  }
  const out: BuiltSplit[] = [];
  for (const p of parts.values()) {
    if (!p.wanted) continue;
    out.push({ source: 'Memotion', split: p.split, role: p.role, file, rows: p.rows, samples: p.samples, skipped: p.skips.list(), defects: p.defects.list() });
  }
  return out;
}
