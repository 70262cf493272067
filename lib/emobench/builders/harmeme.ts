/**
 * HarMeme (Pramanick et al., 2021; MOMENTA release, HarMeme_V1): harmful memes, Harm-C (COVID-19)
 * and Harm-P (US politics, the de-duplicated V1 files).
 *
 * Reads `HarMeme_V1/Annotations/Harm-C/{train,val,test}.jsonl` and
 * `HarMeme_V1/Annotations/Harm-P/{train,val,test}_v1.jsonl`: one `{id, image, labels, text}` per
 * line; labels[0] ∈ {not harmful, somewhat harmful, very harmful}, labels[1..] = targets.
 * - hate (yes/no): `not harmful` → no; `somewhat harmful` and `very harmful` → yes (any harm is
 *   yes: the usual binary Harm-C/Harm-P setting of the HarMeme and MOMENTA papers). Note that
 *   HarMeme annotates harm, a wider notion than hate speech against a protected group.
 * - A row with an empty or unknown labels[0] is skipped and reported, not guessed (Harm-P
 *   train_v1 has one: memes_326, labels ["", "individual", "organization"]).
 * - text = the OCR text (whitespace collapsed).
 * - source `Harm-C` / `Harm-P`, split train / val / test (the `_v1` suffix dropped); id e.g.
 *   `Harm-C/test/covid_memes_5425`; media `HarMeme/HarMeme_Images/harmeme_images_covid_19/<image>`
 *   or `HarMeme/HarMeme_Images/harmeme_images_us_pol/<image>` (the release's image folders).
 */
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import type { BenchSample } from '../sample.js';
import { type BuiltSplit, type DatasetBuilder, type SplitRole, Skips, findFile, malformed, norm, readText, sampleId, textField } from './common.js';

/** HarMeme's harmfulness labels → the hate sub-task's answer. */
export const HARMEME_TO_HATE: Readonly<Record<string, 'yes' | 'no'>> = Object.freeze({
  'not harmful': 'no',
  'somewhat harmful': 'yes',
  'very harmful': 'yes',
});

const SUBSETS = [
  { source: 'Harm-C', folder: 'Harm-C', suffix: '', images: 'harmeme_images_covid_19' },
  { source: 'Harm-P', folder: 'Harm-P', suffix: '_v1', images: 'harmeme_images_us_pol' },
] as const;

const SPLITS: readonly { split: string; role: SplitRole }[] = [
  { split: 'train', role: 'train' },
  { split: 'val', role: 'val' },
  { split: 'test', role: 'test' },
];

export const harmemeBuilder: DatasetBuilder = {
  name: 'HarMeme',
  aliases: ['Harm-C', 'Harm-P'],
  tasks: ['hate'],
  defaultTasks: ['hate'],
  description: 'HarMeme V1 Harm-C and Harm-P jsonl → hate yes/no (any harm = yes)',
  build(dir, ctx) {
    const out: BuiltSplit[] = [];
    let found = 0;
    for (const { source, folder, suffix, images } of SUBSETS)
      for (const { split, role } of SPLITS) {
        const name = `${split}${suffix}.jsonl`;
        const file = findFile(dir, [`HarMeme_V1/Annotations/${folder}/${name}`, `Annotations/${folder}/${name}`, `${folder}/${name}`]);
        if (file) found++;
        if (!file || !ctx.wantSplit(split, role) || !ctx.tasks.has('hate')) continue;
        const lines = readText(join(dir, file)).split('\n');
        const skips = new Skips();
        const samples: BenchSample[] = [];
        let rows = 0;
        lines.forEach((raw, k) => {
          if (raw.trim() === '') return;
          rows++;
          let o: Record<string, unknown>;
          try {
            o = JSON.parse(raw) as Record<string, unknown>;
          } catch (cause) {
            throw new EmollmError('ERR_MALFORMED_FILE', `${file}: line ${k + 1}: not JSON`, { file, cause });
          }
          if (typeof o.id !== 'string' || typeof o.image !== 'string' || !Array.isArray(o.labels))
            throw malformed(file, `line ${k + 1}: needs id, image and labels`);
          const harm = typeof o.labels[0] === 'string' ? norm(o.labels[0]) : '';
          const answer = HARMEME_TO_HATE[harm];
          if (!answer) return skips.add(harm === '' ? 'empty harmfulness label' : `unknown harmfulness label ${JSON.stringify(o.labels[0])}`, o.id);
          samples.push({
            id: sampleId(source, split, o.id),
            task: 'hate',
            source,
            split,
            media: { type: 'image', path: `HarMeme/HarMeme_Images/${images}/${o.image}` },
            ...textField(o.text),
            options: ['yes', 'no'],
            answer,
          });
        });
        out.push({ source, split, role, file, rows, samples, skipped: skips.list() });
      }
    if (!found) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no HarMeme_V1/Annotations/Harm-{C,P}/*.jsonl`, { file: dir });
    return out;
  },
};
