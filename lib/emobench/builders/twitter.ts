/**
 * Image label lists in the GPT4V-Emotion form (`name,gt,gpt4v` CSV): Twitter I, Twitter II
 * (image sentiment, positive / negative) and Abstract (Mikels' 8 emotions).
 *
 * - Twitter_I: `results/twitter1/label_{five_agree,at_least_four_agree,at_least_three_agree}.csv`,
 *   the three nested annotator-agreement subsets; each is a split (`five-agree`, `four-agree`,
 *   `three-agree`, all of role test). emo-c over sentiment2.
 * - Twitter_II: `results/twitter2/label.csv`, split `test`. emo-c over sentiment2.
 * - Abstract: `results/abstract/label.csv`, split `test`. emo-c over mikels8; the file's spellings
 *   map Content → contentment, Sad → sadness, the rest lower-cased.
 * Media: `<dataset>/<name>` (e.g. `Twitter_II/77.jpg`, `Abstract/abstract_0001.jpg`).
 */
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import { findLabel, MIKELS8, SENTIMENT2, type Taxonomy } from '../../taxonomies.js';
import type { BenchSample } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, norm, readRecords, sampleId, stem } from './common.js';

interface ListSpec {
  split: string;
  role: SplitRole;
  files: readonly string[];
}

/** Abstract's `gt` spellings that differ from the Mikels labels. */
const ABSTRACT_LABELS: Readonly<Record<string, string>> = { content: 'contentment', sad: 'sadness' };

function labelList(
  name: string,
  taxonomy: Taxonomy,
  lists: readonly ListSpec[],
  mapLabel: (gt: string) => string | undefined,
  description: string,
): DatasetBuilder {
  return {
    name,
    tasks: ['emo-c'],
    defaultTasks: ['emo-c'],
    description,
    build(dir, ctx) {
      const out: BuiltSplit[] = [];
      let found = 0;
      for (const { split, role, files } of lists) {
        const file = findFile(dir, files);
        if (file) found++;
        if (!file || !ctx.wantSplit(split, role) || !ctx.tasks.has('emo-c')) continue;
        const recs = readRecords(join(dir, file), file, ['name', 'gt']);
        const skips = new Skips();
        const samples: BenchSample[] = [];
        for (const { rec, line } of recs) {
          const image = rec.name!.trim();
          const sid = stem(image);
          if (!image) {
            skips.add('empty name', `line ${line}`);
            continue;
          }
          const label = mapLabel(rec.gt!);
          if (!label) {
            skips.add(`label ${JSON.stringify(rec.gt)} is not in ${taxonomy.id}`, sid);
            continue;
          }
          samples.push({
            id: sampleId(name, split, sid),
            task: 'emo-c',
            source: name,
            split,
            media: { type: 'image', path: `${name}/${image}` },
            options: [...taxonomy.labels],
            answer: label,
          });
        }
        out.push({ source: name, split, role, file, rows: recs.length, samples, skipped: skips.list() });
      }
      if (!found)
        throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: none of ${name}'s label files (${lists.map((l) => l.files[0]).join(', ')})`, { file: dir });
      return out;
    },
  };
}

export const twitter1Builder = labelList(
  'Twitter_I',
  SENTIMENT2,
  [
    { split: 'five-agree', role: 'test', files: ['results/twitter1/label_five_agree.csv', 'label_five_agree.csv'] },
    { split: 'four-agree', role: 'test', files: ['results/twitter1/label_at_least_four_agree.csv', 'label_at_least_four_agree.csv'] },
    { split: 'three-agree', role: 'test', files: ['results/twitter1/label_at_least_three_agree.csv', 'label_at_least_three_agree.csv'] },
  ],
  (gt) => findLabel(SENTIMENT2, gt),
  'Twitter I label lists (5 / >=4 / >=3 annotators agree) → emo-c over sentiment2',
);

export const twitter2Builder = labelList(
  'Twitter_II',
  SENTIMENT2,
  [{ split: 'test', role: 'test', files: ['results/twitter2/label.csv', 'label.csv'] }],
  (gt) => findLabel(SENTIMENT2, gt),
  'Twitter II label list → emo-c over sentiment2',
);

export const abstractBuilder = labelList(
  'Abstract',
  MIKELS8,
  [{ split: 'test', role: 'test', files: ['results/abstract/label.csv', 'label.csv'] }],
  (gt) => findLabel(MIKELS8, ABSTRACT_LABELS[norm(gt)] ?? gt),
  "Abstract paintings (majority-vote labels) → emo-c over Mikels' 8",
);
