/**
 * The EmoBench builder registry (dataset name → builder) and {@link buildBenchmark}, which runs
 * the builders over the caller's dataset folders, resolves media against a root, validates every
 * sample and returns them with a summary. Formatting and the CLI are in ../build.ts; the sample
 * format is ../sample.ts; docs/emobench.md documents each dataset's mapping.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

import { EmollmError } from '../../errors.js';
import { BENCH_TASKS, validateSample, type BenchSample, type BenchTask } from '../sample.js';
import type { BuildContext, DatasetBuilder, SkippedRows, SplitRole } from './common.js';
import { emosetBuilder } from './emoset.js';
import { harmemeBuilder } from './harmeme.js';
import { meldBuilder } from './meld.js';
import { memotionBuilder } from './memotion.js';
import { mintrecBuilder } from './mintrec.js';
import { mmsdBuilder } from './mmsd.js';
import { mustardBuilder, mustardPlusPlusBuilder } from './mustard.js';
import { abstractBuilder, twitter1Builder, twitter2Builder } from './twitter.js';

export type { BuildContext, BuiltSplit, DatasetBuilder, SkippedRows, SplitRole } from './common.js';
export { HARMEME_TO_HATE } from './harmeme.js';
export { MEMOTION_TO_HUMOR, memotionSplit } from './memotion.js';
export { MUSTARDPP_EMOTIONS } from './mustard.js';

/** Every builder, in output order. */
export const BUILDERS: readonly DatasetBuilder[] = Object.freeze([
  emosetBuilder,
  twitter1Builder,
  twitter2Builder,
  abstractBuilder,
  meldBuilder,
  mintrecBuilder,
  mustardBuilder,
  mustardPlusPlusBuilder,
  mmsdBuilder,
  harmemeBuilder,
  memotionBuilder,
]);

/** The builder for a dataset name or alias (case-insensitive); ERR_INVALID_ARGUMENT lists the known ones. */
export function getBuilder(name: string): DatasetBuilder {
  const key = name.trim().toLowerCase();
  const b = BUILDERS.find((x) => x.name.toLowerCase() === key || (x.aliases ?? []).some((a) => a.toLowerCase() === key));
  if (!b) throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown dataset ${JSON.stringify(name)} (known: ${BUILDERS.map((x) => x.name).join(', ')})`);
  return b;
}

/** The datasets of a collection folder laid out like ../shared/data: `<root>/<builder name>/`. */
export function discoverSources(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const b of BUILDERS) {
    const dir = join(root, b.name);
    if (existsSync(dir) && statSync(dir).isDirectory()) out[b.name] = dir;
  }
  return out;
}

export interface BuildOptions {
  /** Media paths are checked against this folder; without it they are not checked. */
  mediaRoot?: string;
  /** Split names or roles (train, val, test) to emit; default all. */
  splits?: readonly string[];
  /** Sub-tasks to emit; default each builder's default sub-tasks. */
  tasks?: readonly BenchTask[];
  /** Keep samples whose media file is missing (still counted and listed in the summary). */
  keepMissingMedia?: boolean;
}

/** One line of the summary: one sub-task of one source split. */
export interface SummaryRow {
  task: BenchTask;
  /** The registry name of the builder (the --source name). */
  dataset: string;
  source: string;
  split: string;
  role: SplitRole;
  /** Annotation file, relative to the dataset folder. */
  file: string;
  /** Annotated items the file holds. */
  rows: number;
  /** Samples written. */
  samples: number;
  /** Gold answers of the written samples. */
  labels: Record<string, number>;
  /** Samples whose media file is not under the media root (0 when unchecked). */
  missingMedia: number;
  /** The first few of their ids. */
  missingExamples: string[];
}

export interface BuildSummary {
  rows: SummaryRow[];
  /** Rows of source files that made no sample, by dataset/source/split and reason. */
  skipped: Array<SkippedRows & { dataset: string; source: string; split: string }>;
  /** Rows kept as samples although a field the benchmark does not use is damaged. */
  defects: Array<SkippedRows & { dataset: string; source: string; split: string }>;
  mediaChecked: boolean;
  mediaRoot?: string;
  keepMissingMedia: boolean;
  /** Samples written in all. */
  total: number;
  /** Things the caller asked for that could not be given (a split a dataset lacks, humour, ...). */
  notes: string[];
}

export interface BuildResult {
  samples: BenchSample[];
  summary: BuildSummary;
}

/** Whether files exist, listing each folder once (fast for tens of thousands of samples). */
class MediaIndex {
  private readonly dirs = new Map<string, Set<string> | null>();
  constructor(private readonly root: string) {}
  has(rel: string): boolean {
    const full = resolve(this.root, rel);
    const dir = dirname(full);
    let set = this.dirs.get(dir);
    if (set === undefined) {
      try {
        set = new Set(readdirSync(dir));
      } catch {
        set = null;
      }
      this.dirs.set(dir, set);
    }
    return set !== null && set.has(full.slice(dir.length + 1));
  }
}

const SPLIT_ROLES: readonly string[] = ['train', 'val', 'test'];

/**
 * Builds an EmoBench JSONL benchmark from dataset folders: `sources` maps a dataset name (see
 * {@link BUILDERS}) to its folder. Output order is fixed: registry order, then each builder's
 * split order, then the source file's order. Every sample passes validateSample and ids are unique.
 */
export async function buildBenchmark(sources: Readonly<Record<string, string>>, options: BuildOptions = {}): Promise<BuildResult> {
  const chosen = new Map<DatasetBuilder, string>();
  for (const [name, dir] of Object.entries(sources)) {
    const b = getBuilder(name);
    if (chosen.has(b)) throw new EmollmError('ERR_INVALID_ARGUMENT', `dataset ${b.name} given twice`);
    if (!existsSync(dir) || !statSync(dir).isDirectory())
      throw new EmollmError('ERR_FILE_NOT_FOUND', `${b.name}: ${dir} is not a folder`, { file: dir });
    chosen.set(b, dir);
  }
  if (!chosen.size) throw new EmollmError('ERR_INVALID_ARGUMENT', 'no dataset given (--source <dataset>=<dir>)');
  for (const t of options.tasks ?? [])
    if (!BENCH_TASKS.includes(t)) throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown sub-task ${JSON.stringify(t)} (${BENCH_TASKS.join(', ')})`);

  const notes: string[] = [];
  const splits = options.splits?.length ? options.splits.map((s) => s.trim()).filter((s) => s !== '') : undefined;
  const media = options.mediaRoot === undefined ? undefined : new MediaIndex(options.mediaRoot);
  if (options.mediaRoot !== undefined && !existsSync(options.mediaRoot))
    throw new EmollmError('ERR_FILE_NOT_FOUND', `media root ${options.mediaRoot} does not exist`, { file: options.mediaRoot });
  const keep = options.keepMissingMedia ?? false;
  if (options.tasks?.includes('humor') && ![...chosen.keys()].some((b) => b.tasks.includes('humor')))
    notes.push('humor: none of the given datasets carries humour labels (Memotion does); no humor samples');

  const samples: BenchSample[] = [];
  const rows: SummaryRow[] = [];
  const skipped: BuildSummary['skipped'] = [];
  const defects: BuildSummary['defects'] = [];
  const ids = new Set<string>();
  for (const b of BUILDERS) {
    const dir = chosen.get(b);
    if (dir === undefined) continue;
    const tasks = new Set<BenchTask>(options.tasks ? b.tasks.filter((t) => options.tasks!.includes(t)) : b.defaultTasks);
    if (!tasks.size) {
      notes.push(`${b.name}: none of the asked sub-tasks (it has ${b.tasks.join(', ')})`);
      continue;
    }
    const seen: { split: string; role: SplitRole }[] = [];
    const ctx: BuildContext = {
      tasks,
      wantSplit(split, role) {
        seen.push({ split, role });
        return !splits || splits.includes(split) || splits.includes(role);
      },
    };
    const built = await b.build(dir, ctx);
    if (splits)
      for (const s of splits)
        if (!seen.some((x) => x.split === s || x.role === s))
          notes.push(`${b.name}: no split "${s}" (it has ${seen.map((x) => x.split).join(', ') || 'none'}${SPLIT_ROLES.includes(s) ? '' : '; roles: train, val, test'})`);
    for (const part of built) {
      for (const sk of part.skipped) skipped.push({ ...sk, dataset: b.name, source: part.source, split: part.split });
      for (const d of part.defects ?? []) defects.push({ ...d, dataset: b.name, source: part.source, split: part.split });
      const byTask = new Map<BenchTask, SummaryRow>();
      for (const t of tasks)
        byTask.set(t, {
          task: t,
          dataset: b.name,
          source: part.source,
          split: part.split,
          role: part.role,
          file: part.file,
          rows: part.rows,
          samples: 0,
          labels: {},
          missingMedia: 0,
          missingExamples: [],
        });
      for (const s of part.samples) {
        const row = byTask.get(s.task);
        if (!row) throw new EmollmError('ERR_INTERNAL', `${b.name} emitted a ${s.task} sample that was not asked for`);
        validateSample(s);
        if (ids.has(s.id)) throw new EmollmError('ERR_INTERNAL', `${b.name}: duplicate sample id ${s.id}`);
        ids.add(s.id);
        if (media && s.media && !media.has(s.media.path)) {
          row.missingMedia++;
          if (row.missingExamples.length < 5) row.missingExamples.push(s.id);
          if (!keep) continue;
        }
        row.samples++;
        row.labels[s.answer] = (row.labels[s.answer] ?? 0) + 1;
        samples.push(s);
      }
      for (const row of byTask.values()) if (row.rows > 0 || row.samples > 0) rows.push(row);
    }
  }
  const summary: BuildSummary = { rows, skipped, defects, mediaChecked: media !== undefined, keepMissingMedia: keep, total: samples.length, notes };
  if (options.mediaRoot !== undefined) summary.mediaRoot = options.mediaRoot;
  return { samples, summary };
}
