/**
 * MELD (Poria et al., ACL 2019): emotion recognition in conversation on Friends clips.
 *
 * Reads `{train,dev,test}_sent_emo.csv` (the release's own files, at the top of MELD.Raw or under
 * `data/MELD/` in the GitHub repo). Columns: Sr No., Utterance, Speaker, Emotion, Sentiment,
 * Dialogue_ID, Utterance_ID, Season, Episode, StartTime, EndTime.
 * - emo-c over ekman7 (MELD's seven labels are exactly Ekman's six, joy for happiness, and neutral).
 * - text = the utterance; context = the same dialogue's earlier utterances (lower Utterance_ID),
 *   oldest first, as `Speaker: utterance`.
 * - id `MELD/<split>/dia<D>_utt<U>`; media `MELD/<split>/<folder>/dia<D>_utt<U>.mp4` where folder
 *   is MELD.Raw's: train/train_splits, dev/dev_splits_complete, test/output_repeated_splits_test.
 *   The clips are already cut to the utterance, so no start/end is set.
 */
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import { EKMAN7, findLabel } from '../../taxonomies.js';
import type { BenchSample } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, malformed, readRecords, sampleId } from './common.js';

const SPLITS: readonly { split: string; role: SplitRole; clips: string }[] = [
  { split: 'train', role: 'train', clips: 'train/train_splits' },
  { split: 'dev', role: 'val', clips: 'dev/dev_splits_complete' },
  { split: 'test', role: 'test', clips: 'test/output_repeated_splits_test' },
];

/** MELD's text has a few mojibake / curly-quote artefacts; only whitespace is normalised. */
function clean(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

export const meldBuilder: DatasetBuilder = {
  name: 'MELD',
  tasks: ['emo-c'],
  defaultTasks: ['emo-c'],
  description: 'MELD {train,dev,test}_sent_emo.csv → emo-c over ekman7, with the dialogue so far as context',
  build(dir, ctx) {
    const out: BuiltSplit[] = [];
    let found = 0;
    for (const { split, role, clips } of SPLITS) {
      const file = findFile(dir, [`${split}_sent_emo.csv`, `data/MELD/${split}_sent_emo.csv`, `${split}/${split}_sent_emo.csv`]);
      if (file) found++;
      if (!file || !ctx.wantSplit(split, role) || !ctx.tasks.has('emo-c')) continue;
      const recs = readRecords(join(dir, file), file, ['Utterance', 'Speaker', 'Emotion', 'Dialogue_ID', 'Utterance_ID']);
      const skips = new Skips();
      // Group by dialogue so that context is the dialogue's earlier utterances whatever the row order.
      const dialogues = new Map<number, { utt: number; speaker: string; text: string }[]>();
      const parsed = recs.map(({ rec, line }) => {
        const d = Number(rec.Dialogue_ID);
        const u = Number(rec.Utterance_ID);
        if (!Number.isInteger(d) || !Number.isInteger(u) || d < 0 || u < 0) throw malformed(file, `line ${line}: bad Dialogue_ID/Utterance_ID`);
        const item = { d, u, speaker: clean(rec.Speaker!), text: clean(rec.Utterance!), emotion: rec.Emotion! };
        let turns = dialogues.get(d);
        if (!turns) dialogues.set(d, (turns = []));
        turns.push({ utt: u, speaker: item.speaker, text: item.text });
        return item;
      });
      for (const turns of dialogues.values()) turns.sort((a, b) => a.utt - b.utt);
      const samples: BenchSample[] = [];
      for (const r of parsed) {
        const sid = `dia${r.d}_utt${r.u}`;
        const label = findLabel(EKMAN7, r.emotion);
        if (!label) {
          skips.add(`emotion ${JSON.stringify(r.emotion)} is not in ekman7`, sid);
          continue;
        }
        const context = dialogues
          .get(r.d)!
          .filter((t) => t.utt < r.u)
          .map((t) => `${t.speaker}: ${t.text}`);
        const s: BenchSample = {
          id: sampleId('MELD', split, sid),
          task: 'emo-c',
          source: 'MELD',
          split,
          media: { type: 'video', path: `MELD/${clips}/${sid}.mp4` },
          text: r.text,
          options: [...EKMAN7.labels],
          answer: label,
        };
        if (context.length) s.context = context;
        samples.push(s);
      }
      out.push({ source: 'MELD', split, role, file, rows: recs.length, samples, skipped: skips.list() });
    }
    if (!found) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no MELD {train,dev,test}_sent_emo.csv`, { file: dir });
    return out;
  },
};
