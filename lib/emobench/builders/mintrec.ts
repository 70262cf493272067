/**
 * MIntRec (Zhang et al., ACM MM 2022): multimodal intent recognition on Superstore clips.
 *
 * Reads `{train,dev,test}.tsv` (header `season episode clip text label`; tab-separated, read
 * without CSV quoting, as the files use none).
 * - intent: options = the 20 mintrec20 labels (canonical, lower case); the answer is the canonical
 *   label of the file's spelling through findLabel (`Ask for help` → `ask for help`).
 * - text = the utterance. No dialogue context in the release.
 * - id `MIntRec/<split>/<season>_<episode>_<clip>` (e.g. `S05_E16_329`); media
 *   `MIntRec/raw_data/<season>/<episode>/<clip>.mp4`, the official raw_data layout.
 */
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import { findLabel, MINTREC20 } from '../../taxonomies.js';
import type { BenchSample } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, readRecords, sampleId } from './common.js';

const SPLITS: readonly { split: string; role: SplitRole }[] = [
  { split: 'train', role: 'train' },
  { split: 'dev', role: 'val' },
  { split: 'test', role: 'test' },
];

export const mintrecBuilder: DatasetBuilder = {
  name: 'MIntRec',
  tasks: ['intent'],
  defaultTasks: ['intent'],
  description: 'MIntRec {train,dev,test}.tsv → intent over the 20 MIntRec intents',
  build(dir, ctx) {
    const out: BuiltSplit[] = [];
    let found = 0;
    for (const { split, role } of SPLITS) {
      const file = findFile(dir, [`${split}.tsv`, `data/MIntRec/${split}.tsv`, `MIntRec/${split}.tsv`]);
      if (file) found++;
      if (!file || !ctx.wantSplit(split, role) || !ctx.tasks.has('intent')) continue;
      const recs = readRecords(join(dir, file), file, ['season', 'episode', 'clip', 'text', 'label'], '\t', false);
      const skips = new Skips();
      const samples: BenchSample[] = [];
      for (const { rec, line } of recs) {
        const season = rec.season!.trim();
        const episode = rec.episode!.trim();
        const clip = rec.clip!.trim();
        if (!season || !episode || !clip) {
          skips.add('no season/episode/clip', `line ${line}`);
          continue;
        }
        const sid = `${season}_${episode}_${clip}`;
        const label = findLabel(MINTREC20, rec.label!);
        if (!label) {
          skips.add(`label ${JSON.stringify(rec.label)} is not a MIntRec intent`, sid);
          continue;
        }
        samples.push({
          id: sampleId('MIntRec', split, sid),
          task: 'intent',
          source: 'MIntRec',
          split,
          media: { type: 'video', path: `MIntRec/raw_data/${season}/${episode}/${clip}.mp4` },
          text: rec.text!.trim(),
          options: [...MINTREC20.labels],
          answer: label,
        });
      }
      out.push({ source: 'MIntRec', split, role, file, rows: recs.length, samples, skipped: skips.list() });
    }
    if (!found) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no MIntRec {train,dev,test}.tsv`, { file: dir });
    return out;
  },
};
