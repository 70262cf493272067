/**
 * EmoSet-118K (Yang et al., ICCV 2023): image emotion, Mikels' 8 emotions.
 *
 * Reads EmoSet's own split lists `test.json` / `val.json` (and `train.json` when present): a JSON
 * array of `[emotion, image path, annotation path]` triples relative to the EmoSet root.
 * - emo-c: options = the mikels8 labels, answer = the emotion (already the canonical spelling).
 * - emo-o (default too, so a whole-collection build has all six sub-tasks): the same images with no options; the answer is the canonical emotion.
 * Media: `EmoSet/<image path>` (e.g. `EmoSet/image/awe/awe_06628.jpg`).
 */
import { join } from 'node:path';

import { findLabel, MIKELS8 } from '../../taxonomies.js';
import type { BenchSample } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, malformed, parseJson, readText, sampleId, stem } from './common.js';
import { EmollmError } from '../../errors.js';

const SPLITS: readonly { split: string; role: SplitRole }[] = [
  { split: 'train', role: 'train' },
  { split: 'val', role: 'val' },
  { split: 'test', role: 'test' },
];

export const emosetBuilder: DatasetBuilder = {
  name: 'EmoSet',
  aliases: ['EmoSet-118K'],
  tasks: ['emo-c', 'emo-o'],
  defaultTasks: ['emo-c', 'emo-o'],
  description: "EmoSet split lists ({train,val,test}.json) → emo-c over Mikels' 8 and emo-o (open-set) on the same images",
  build(dir, ctx) {
    const out: BuiltSplit[] = [];
    let found = 0;
    for (const { split, role } of SPLITS) {
      const file = findFile(dir, [`${split}.json`, `emo/${split}.json`]);
      if (file) found++;
      if (!file || !ctx.wantSplit(split, role)) continue;
      const data = parseJson(readText(join(dir, file)), file);
      if (!Array.isArray(data)) throw malformed(file, 'expected a JSON array of [emotion, image, annotation] triples');
      const skips = new Skips();
      const samples: BenchSample[] = [];
      data.forEach((t: unknown, k) => {
        if (!Array.isArray(t) || typeof t[0] !== 'string' || typeof t[1] !== 'string')
          throw malformed(file, `entry ${k}: expected [emotion, image path, annotation path]`);
        const [emotion, image] = t as [string, string];
        const sid = stem(image);
        const label = findLabel(MIKELS8, emotion);
        if (!label) return skips.add(`emotion ${JSON.stringify(emotion)} is not a Mikels label`, sid);
        const media = { type: 'image' as const, path: `EmoSet/${image.replace(/^\.?\//, '')}` };
        if (ctx.tasks.has('emo-c'))
          samples.push({ id: sampleId('EmoSet', split, sid), task: 'emo-c', source: 'EmoSet', split, media, options: [...MIKELS8.labels], answer: label });
        if (ctx.tasks.has('emo-o'))
          samples.push({ id: sampleId('EmoSet', split, sid, 'emo-o'), task: 'emo-o', source: 'EmoSet', split, media, answer: label });
      });
      out.push({ source: 'EmoSet', split, role, file, rows: data.length, samples, skipped: skips.list() });
    }
    if (!found) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no EmoSet split list (test.json, val.json, train.json)`, { file: dir });
    return out;
  },
};
