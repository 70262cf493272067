/**
 * What the EmoBench reports show beyond the metrics: the per-dataset breakdown inside each
 * sub-task (Emo-C pools EmoSet, Twitter, Abstract, MELD, ...), the chance and majority reference
 * lines, and the sample browser (a few correct and wrong samples per sub-task, with a thumbnail
 * of the media, the prompt, the model's answer and the gold label).
 */
import sharp from 'sharp';

import { sampleVideoFrames } from '../perception.js';
import { resolveMediaPath, samplePrompt, sampleLabels } from './backends.js';
import { bootstrapAccuracy, hashString, isCorrect, type Interval } from './metrics.js';
import { BENCH_TASKS, type BenchSample, type BenchTask } from './sample.js';

/** What the report data needs from a prediction record. */
export interface RecordLike {
  id: string;
  status: 'ok' | 'error' | 'skipped';
  answer: string;
  label: string | null;
  raw: string | null;
  unparsed: boolean;
}

/** One source dataset inside a sub-task. */
export interface SourceBreakdown {
  source: string;
  /** Scored predictions. */
  n: number;
  correct: number;
  accuracy: number;
  accuracyCI: Interval;
  unparsed: number;
}

/** Reference lines of a sub-task, over its scored samples. */
export interface TaskReference {
  /** Expected accuracy of a uniform guess among each sample's options (null when samples have no option set, e.g. open-set emo-o). */
  chance: number | null;
  /** Accuracy of always answering the most frequent gold label. */
  majority: number;
  majorityLabel: string;
}

/** Accuracy per source dataset, per sub-task (sources in first-seen benchmark order). */
export function breakdownBySource(
  samples: readonly BenchSample[],
  records: ReadonlyMap<string, RecordLike>,
  options: { resamples?: number; seed?: number } = {},
): Partial<Record<BenchTask, SourceBreakdown[]>> {
  const out: Partial<Record<BenchTask, SourceBreakdown[]>> = {};
  for (const task of BENCH_TASKS) {
    const bySource = new Map<string, number[]>();
    const unparsed = new Map<string, number>();
    for (const s of samples) {
      if (s.task !== task) continue;
      const r = records.get(s.id);
      if (!r || r.status !== 'ok') continue;
      let l = bySource.get(s.source);
      if (!l) bySource.set(s.source, (l = []));
      l.push(isCorrect(r) ? 1 : 0);
      if (r.unparsed) unparsed.set(s.source, (unparsed.get(s.source) ?? 0) + 1);
    }
    if (!bySource.size) continue;
    out[task] = [...bySource].map(([source, outcomes]) => {
      const b = bootstrapAccuracy(outcomes, options.resamples ?? 1000, ((options.seed ?? 0) ^ hashString(`${task}/${source}`)) >>> 0);
      return {
        source,
        n: outcomes.length,
        correct: outcomes.reduce((a, x) => a + x, 0),
        accuracy: b.accuracy,
        accuracyCI: b.ci,
        unparsed: unparsed.get(source) ?? 0,
      };
    });
  }
  return out;
}

/** Chance and majority accuracy per sub-task, over the scored samples. */
export function referenceLines(samples: readonly BenchSample[], records: ReadonlyMap<string, RecordLike>): Partial<Record<BenchTask, TaskReference>> {
  const out: Partial<Record<BenchTask, TaskReference>> = {};
  for (const task of BENCH_TASKS) {
    const scored = samples.filter((s) => s.task === task && records.get(s.id)?.status === 'ok');
    if (!scored.length) continue;
    const counts = new Map<string, number>();
    for (const s of scored) counts.set(s.answer, (counts.get(s.answer) ?? 0) + 1);
    const [majorityLabel, top] = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0]!;
    const sizes = scored.map((s) => sampleLabels(s)?.length ?? 0);
    out[task] = {
      chance: sizes.every((n) => n > 0) ? sizes.reduce((a, n) => a + 1 / n, 0) / sizes.length : null,
      majority: top / scored.length,
      majorityLabel,
    };
  }
  return out;
}

/** One sample in the report's browser. */
export interface BrowserSample {
  id: string;
  task: BenchTask;
  source: string;
  correct: boolean;
  gold: string;
  /** The parsed answer, or null when unparsed. */
  answer: string | null;
  /** The model's raw text, when it generated some. */
  raw: string | null;
  /** The prompt's text (instructions, options, the sample's text), images shown as [image]. */
  prompt: string;
  /** The media path as the benchmark gives it. */
  media: string | null;
  /** A small JPEG of the image or of the video's middle frame, as a data: URL (null when unreadable). */
  thumbnail: string | null;
}

async function thumbnail(s: BenchSample, mediaRoot: string): Promise<string | null> {
  if (!s.media) return null;
  try {
    // confined to the media root by real path, like every other read of a benchmark's media
    const p = await resolveMediaPath(s, mediaRoot);
    if (p === null) return null;
    const input = s.media.type === 'video' ? (await sampleVideoFrames(p, 1))[0]!.png : p;
    const jpg = await sharp(input).rotate().resize(160, 120, { fit: 'inside' }).jpeg({ quality: 70 }).toBuffer();
    return `data:image/jpeg;base64,${jpg.toString('base64')}`;
  } catch {
    return null;
  }
}

function promptText(s: BenchSample): string {
  const p = samplePrompt(s, s.media ? ['[image]'] : []);
  return p.messages
    .map((m) => (typeof m.content === 'string' ? m.content : m.content.map((x) => (x.type === 'text' ? x.text : '[image]')).join('')))
    .join('\n\n');
}

/** Up to `perKind` correct and `perKind` wrong scored samples per sub-task, first in benchmark order. */
export async function browserSamples(
  samples: readonly BenchSample[],
  records: ReadonlyMap<string, RecordLike>,
  mediaRoot: string,
  perKind = 3,
): Promise<BrowserSample[]> {
  const out: BrowserSample[] = [];
  for (const task of BENCH_TASKS) {
    const taken = { right: 0, wrong: 0 };
    for (const s of samples) {
      if (s.task !== task) continue;
      const r = records.get(s.id);
      if (!r || r.status !== 'ok') continue;
      const correct = isCorrect(r);
      const kind = correct ? 'right' : 'wrong';
      if (taken[kind] >= perKind) {
        if (taken.right >= perKind && taken.wrong >= perKind) break;
        continue;
      }
      taken[kind]++;
      out.push({
        id: s.id,
        task,
        source: s.source,
        correct,
        gold: s.answer,
        answer: r.unparsed ? null : r.label,
        raw: r.raw,
        prompt: promptText(s),
        media: s.media?.path ?? null,
        thumbnail: await thumbnail(s, mediaRoot),
      });
    }
  }
  return out;
}
