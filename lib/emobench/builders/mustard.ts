/**
 * MUStARD (Castro et al., ACL 2019) and MUStARD++ (Ray et al., LREC 2022): sarcasm in sitcom
 * clips, an utterance with its preceding dialogue.
 *
 * MUStARD: `data/sarcasm_data.json`, an object keyed by clip id with utterance, speaker, context,
 * context_speakers, show, sarcasm (bool).
 * - sarcasm: answer yes (sarcasm true) / no; options yes, no. text = the utterance; context =
 *   `SPEAKER: turn` for each context turn, oldest first.
 * - The release has no official train/test split (the paper's folds live in a pickle that is not
 *   an annotation file), so every sample is in split `all`, of role test (zero-shot evaluation
 *   uses the whole set; `--split test` selects it).
 * - id `MUStARD/all/<key>`; media `MUStARD/utterances_final/<key>.mp4` (mmsd_raw_data.zip layout).
 *
 * MUStARD++: `mustard++_text.csv` (columns SCENE, KEY, SENTENCE, END_TIME, SPEAKER, SHOW, Sarcasm,
 * Sarcasm_Type, Implicit_Emotion, Explicit_Emotion, Valence, Arousal). Rows whose KEY ends `_u` are
 * the labelled utterances; `_c_NN` rows are their scene's context turns.
 * - sarcasm: Sarcasm 1 → yes, 0 → no. Split `all` (role test), as for MUStARD.
 * - emo-c (opt-in, `--task emo-c`): the Implicit_Emotion over MUStARD++'s own ten labels
 *   (anger, disgust, excitement, fear, frustration, happiness, neutral, ridicule, sadness,
 *   surprise), lower-cased; id suffix `#emo-c`. Not Ekman 7: the set has ridicule, frustration
 *   and excitement and no joy.
 * - A row whose KEY is neither `<scene>_u` nor `<scene>_c_NN` is skipped and reported (the file
 *   has one: scene 1_S11E03_067's utterance carries KEY `Disgust`).
 * - id `MUStARD_PlusPlus/all/<KEY>`; media `MUStARD_PlusPlus/final_utterance_videos/<KEY>.mp4`.
 * No humour labels in either dataset.
 */
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import type { BenchSample, BenchTask } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, Skips, findFile, malformed, norm, parseJson, readRecords, readText, sampleId } from './common.js';

const YES_NO = ['yes', 'no'];

/** MUStARD++'s emotion labels (SOURCE.md order, lower case). */
export const MUSTARDPP_EMOTIONS: readonly string[] = Object.freeze([
  'anger',
  'disgust',
  'excitement',
  'fear',
  'frustration',
  'happiness',
  'neutral',
  'ridicule',
  'sadness',
  'surprise',
]);

function notFound(dir: string, what: string): EmollmError {
  return new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no ${what}`, { file: dir });
}

export const mustardBuilder: DatasetBuilder = {
  name: 'MUStARD',
  tasks: ['sarcasm'],
  defaultTasks: ['sarcasm'],
  description: 'MUStARD sarcasm_data.json → sarcasm yes/no with dialogue context (split all)',
  build(dir, ctx) {
    const file = findFile(dir, ['data/sarcasm_data.json', 'sarcasm_data.json']);
    if (!file) throw notFound(dir, 'sarcasm_data.json');
    if (!ctx.wantSplit('all', 'test') || !ctx.tasks.has('sarcasm')) return [];
    const data = parseJson(readText(join(dir, file)), file);
    if (typeof data !== 'object' || data === null || Array.isArray(data)) throw malformed(file, 'expected an object keyed by clip id');
    const skips = new Skips();
    const samples: BenchSample[] = [];
    const entries = Object.entries(data as Record<string, unknown>);
    for (const [key, v] of entries) {
      const e = v as Record<string, unknown>;
      if (typeof e !== 'object' || e === null || typeof e.utterance !== 'string') throw malformed(file, `${key}: no utterance`);
      if (typeof e.sarcasm !== 'boolean') {
        skips.add('sarcasm is not true/false', key);
        continue;
      }
      const turns = Array.isArray(e.context) ? (e.context as unknown[]) : [];
      const speakers = Array.isArray(e.context_speakers) ? (e.context_speakers as unknown[]) : [];
      const context = turns.map((t, k) => {
        const sp = speakers[k];
        return typeof sp === 'string' && sp ? `${sp}: ${String(t)}` : String(t);
      });
      const s: BenchSample = {
        id: sampleId('MUStARD', 'all', key),
        task: 'sarcasm',
        source: 'MUStARD',
        split: 'all',
        media: { type: 'video', path: `MUStARD/utterances_final/${key}.mp4` },
        text: e.utterance.trim(),
        options: [...YES_NO],
        answer: e.sarcasm ? 'yes' : 'no',
      };
      if (context.length) s.context = context;
      samples.push(s);
    }
    return [{ source: 'MUStARD', split: 'all', role: 'test', file, rows: entries.length, samples, skipped: skips.list() }];
  },
};

export const mustardPlusPlusBuilder: DatasetBuilder = {
  name: 'MUStARD_PlusPlus',
  aliases: ['MUStARD++'],
  tasks: ['sarcasm', 'emo-c'],
  defaultTasks: ['sarcasm'],
  description: 'MUStARD++ mustard++_text.csv → sarcasm yes/no with scene context (emo-c over its 10 implicit emotions on request)',
  build(dir, ctx) {
    const file = findFile(dir, ['mustard++_text.csv', 'data/mustard++_text.csv', 'metadata.csv']);
    if (!file) throw notFound(dir, 'mustard++_text.csv');
    const tasks: BenchTask[] = (['sarcasm', 'emo-c'] as const).filter((t) => ctx.tasks.has(t));
    if (!ctx.wantSplit('all', 'test') || !tasks.length) return [];
    const recs = readRecords(join(dir, file), file, ['SCENE', 'KEY', 'SENTENCE', 'SPEAKER', 'Sarcasm', 'Implicit_Emotion']);
    const skips = new Skips();
    const context = new Map<string, { n: number; line: string }[]>();
    const utterances: Record<string, string>[] = [];
    let labelled = 0;
    for (const { rec, line } of recs) {
      const scene = rec.SCENE!.trim();
      const key = rec.KEY!.trim();
      const isLabelled = rec.Sarcasm!.trim() !== '';
      if (isLabelled) labelled++;
      const speaker = rec.SPEAKER!.trim();
      const text = rec.SENTENCE!.replace(/\s+/g, ' ').trim();
      const c = key.startsWith(`${scene}_c_`) ? /^\d+$/.exec(key.slice(scene.length + 3)) : null;
      if (c) {
        let turns = context.get(scene);
        if (!turns) context.set(scene, (turns = []));
        turns.push({ n: Number(c[0]), line: speaker && speaker !== '-' ? `${speaker}: ${text}` : text });
      } else if (key === `${scene}_u`) {
        utterances.push(rec);
      } else {
        skips.add(`KEY is neither <SCENE>_u nor <SCENE>_c_NN${isLabelled ? ' (a labelled row)' : ''}`, `line ${line} (SCENE ${scene}, KEY ${key})`);
      }
    }
    for (const turns of context.values()) turns.sort((a, b) => a.n - b.n);
    const samples: BenchSample[] = [];
    for (const rec of utterances) {
      const key = rec.KEY!.trim();
      const scene = rec.SCENE!.trim();
      const base = {
        source: 'MUStARD_PlusPlus',
        split: 'all',
        media: { type: 'video' as const, path: `MUStARD_PlusPlus/final_utterance_videos/${key}.mp4` },
        text: rec.SENTENCE!.replace(/\s+/g, ' ').trim(),
      };
      const ctxLines = (context.get(scene) ?? []).map((t) => t.line);
      const withContext = (s: BenchSample): BenchSample => (ctxLines.length ? { ...s, context: ctxLines } : s);
      if (tasks.includes('sarcasm')) {
        const sar = rec.Sarcasm!.trim();
        if (sar !== '0' && sar !== '1') skips.add(`Sarcasm ${JSON.stringify(sar)} is not 0/1`, key);
        else
          samples.push(withContext({ id: sampleId('MUStARD_PlusPlus', 'all', key), task: 'sarcasm', ...base, options: [...YES_NO], answer: sar === '1' ? 'yes' : 'no' }));
      }
      if (tasks.includes('emo-c')) {
        const emo = norm(rec.Implicit_Emotion!);
        if (!MUSTARDPP_EMOTIONS.includes(emo)) skips.add(`Implicit_Emotion ${JSON.stringify(rec.Implicit_Emotion)} is not a MUStARD++ emotion`, key);
        else
          samples.push(
            withContext({ id: sampleId('MUStARD_PlusPlus', 'all', key, 'emo-c'), task: 'emo-c', ...base, options: [...MUSTARDPP_EMOTIONS], answer: emo }),
          );
      }
    }
    // rows = the labelled rows of the file (utterances), the unit SOURCE.md counts.
    return [{ source: 'MUStARD_PlusPlus', split: 'all', role: 'test', file, rows: labelled, samples, skipped: skips.list() }];
  },
};
