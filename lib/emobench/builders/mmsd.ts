/**
 * MMSD2.0 (Qin et al., ACL 2023 Findings) and the original MMSD (Cai et al., ACL 2019): sarcasm in
 * image + text tweets.
 *
 * Reads `data/text_json_final/{train,valid,test}.json` (MMSD2.0, source `MMSD2.0`) and, when
 * present, `data/text_json_clean/{train,valid,test}.json` (original MMSD, source `MMSD`): JSON
 * arrays of `{image_id, text, label}`; label 1 = sarcastic → yes, 0 → no.
 * - image_id is a 64-bit tweet id, above 2^53: it is read from the file's text as digits, never
 *   through a JavaScript number (JSON.parse would round it and the image name would be wrong).
 * - text = the tweet text (whitespace collapsed).
 * - id `<source>/<split>/<image_id>`; media `MMSD2.0/dataset_image/<image_id>.jpg` for both
 *   sources (MMSD and MMSD2.0 share the images).
 */
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import type { BenchSample } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, malformed, parseJson, readText, sampleId, textField } from './common.js';

const SPLITS: readonly { split: string; role: SplitRole }[] = [
  { split: 'train', role: 'train' },
  { split: 'valid', role: 'val' },
  { split: 'test', role: 'test' },
];

const VARIANTS = [
  { source: 'MMSD2.0', folder: 'text_json_final' },
  { source: 'MMSD', folder: 'text_json_clean' },
] as const;

export const mmsdBuilder: DatasetBuilder = {
  name: 'MMSD2.0',
  aliases: ['MMSD'],
  tasks: ['sarcasm'],
  defaultTasks: ['sarcasm'],
  description: 'MMSD2.0 text_json_final (and original MMSD text_json_clean) → sarcasm yes/no on image + tweet',
  build(dir, ctx) {
    const out: BuiltSplit[] = [];
    let found = 0;
    for (const { source, folder } of VARIANTS)
      for (const { split, role } of SPLITS) {
        const file = findFile(dir, [`data/${folder}/${split}.json`, `${folder}/${split}.json`]);
        if (file) found++;
        if (!file || !ctx.wantSplit(split, role) || !ctx.tasks.has('sarcasm')) continue;
        // Quote the big integer ids before parsing.
        const text = readText(join(dir, file)).replace(/("image_id"\s*:\s*)(-?\d+)/g, '$1"$2"');
        const data = parseJson(text, file);
        if (!Array.isArray(data)) throw malformed(file, 'expected a JSON array of {image_id, text, label}');
        const skips = new Skips();
        const samples: BenchSample[] = [];
        data.forEach((e: unknown, k) => {
          const o = e as Record<string, unknown>;
          if (typeof o !== 'object' || o === null || typeof o.image_id !== 'string' || !/^\d+$/.test(o.image_id))
            throw malformed(file, `entry ${k}: no numeric image_id`);
          const sid = o.image_id;
          if (o.label !== 0 && o.label !== 1) return skips.add(`label ${JSON.stringify(o.label)} is not 0/1`, sid);
          samples.push({
            id: sampleId(source, split, sid),
            task: 'sarcasm',
            source,
            split,
            media: { type: 'image', path: `MMSD2.0/dataset_image/${sid}.jpg` },
            ...textField(o.text),
            options: ['yes', 'no'],
            answer: o.label === 1 ? 'yes' : 'no',
          });
        });
        out.push({ source, split, role, file, rows: data.length, samples, skipped: skips.list() });
      }
    if (!found) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no MMSD2.0 data/text_json_final/{train,valid,test}.json`, { file: dir });
    return out;
  },
};
