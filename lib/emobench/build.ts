/**
 * `emollm bench build`: builds an EmoBench JSONL file from the source datasets' release files
 * and prints a summary table per sub-task (samples per dataset/split, label distribution,
 * missing media, skipped rows). The builders are in ./builders; docs/emobench.md documents them.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

import { EmollmError } from '../errors.js';
import { writeFileAtomicSync } from '../safe_fs.js';
import { BENCH_TASKS, sampleToJsonl, type BenchSample, type BenchTask } from './sample.js';
import { BUILDERS, buildBenchmark, discoverSources, getBuilder, type BuildOptions, type BuildResult, type BuildSummary } from './builders/index.js';

export { BUILDERS, buildBenchmark, discoverSources, getBuilder } from './builders/index.js';
export type { BuildOptions, BuildResult, BuildSummary, SummaryRow } from './builders/index.js';

/** The JSONL text of a benchmark (one sample a line, trailing newline). */
export function samplesToJsonl(samples: readonly BenchSample[]): string {
  return samples.map(sampleToJsonl).join('\n') + (samples.length ? '\n' : '');
}

function table(head: string[], body: string[][]): string[] {
  const w = head.map((h, k) => Math.max(h.length, ...body.map((r) => (r[k] ?? '').length)));
  const line = (r: string[]): string => r.map((c, k) => (k === r.length - 1 ? c : c.padEnd(w[k]!))).join('  ').trimEnd();
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...body.map(line)];
}

/** The human-readable summary: one table per sub-task, then skipped rows, media and notes. */
export function formatSummary(summary: BuildSummary): string {
  const out: string[] = [];
  const withMedia = summary.mediaChecked;
  for (const task of BENCH_TASKS) {
    const rows = summary.rows.filter((r) => r.task === task);
    if (!rows.length) continue;
    const n = rows.reduce((a, r) => a + r.samples, 0);
    out.push(`${task}: ${n} samples`);
    const head = ['source', 'split', 'rows', 'samples', ...(withMedia ? ['missing media'] : []), 'labels'];
    const body = rows.map((r) => [
      r.source,
      r.split,
      String(r.rows),
      String(r.samples),
      ...(withMedia ? [r.missingMedia ? `${r.missingMedia}${summary.keepMissingMedia ? ' (kept)' : ' (skipped)'}` : '0'] : []),
      Object.entries(r.labels)
        .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        .map(([l, c]) => `${l} ${c}`)
        .join(', '),
    ]);
    out.push(...table(head, body).map((l) => `  ${l}`), '');
  }
  if (!summary.rows.length) out.push('no samples', '');
  if (withMedia) {
    const missing = summary.rows.filter((r) => r.missingMedia > 0);
    if (!missing.length) out.push(`media: all found under ${summary.mediaRoot}`);
    else {
      const total = missing.reduce((a, r) => a + r.missingMedia, 0);
      out.push(
        `media: ${total} sample(s) whose file is not under ${summary.mediaRoot} were ${summary.keepMissingMedia ? 'KEPT (--keep-missing-media)' : 'left out (--keep-missing-media keeps them)'}:`,
      );
      for (const r of missing)
        out.push(`  ${r.task} ${r.source}/${r.split}: ${r.missingMedia}, e.g. ${r.missingExamples.join(', ')}${r.missingMedia > r.missingExamples.length ? ', ...' : ''}`);
    }
  } else out.push('media: not checked (no --media-root); paths are relative to the media root you evaluate with');
  for (const s of summary.skipped)
    out.push(`skipped: ${s.source}/${s.split}: ${s.count} row(s), ${s.reason}: ${s.examples.join('; ')}${s.count > s.examples.length ? '; ...' : ''}`);
  for (const d of summary.defects)
    out.push(`defect (kept): ${d.source}/${d.split}: ${d.count} row(s), ${d.reason}: ${d.examples.join('; ')}${d.count > d.examples.length ? '; ...' : ''}`);
  for (const note of summary.notes) out.push(`note: ${note}`);
  out.push(`total: ${summary.total} samples`);
  return out.join('\n');
}

/**
 * Builds and writes `out` (JSONL, atomically: temporary file + rename); returns what was built.
 * An existing `out` rejects with `ERR_OUTPUT_EXISTS` (checked before building) unless `force`.
 */
export async function buildBenchmarkFile(
  sources: Readonly<Record<string, string>>,
  out: string,
  options: BuildOptions & { force?: boolean } = {},
): Promise<BuildResult> {
  if (out !== '-' && !options.force && existsSync(out))
    throw new EmollmError('ERR_OUTPUT_EXISTS', `${out} already exists; pass --force (force: true) to replace it`, { file: out });
  const r = await buildBenchmark(sources, options);
  if (out !== '-') {
    mkdirSync(dirname(out), { recursive: true });
    writeFileAtomicSync(out, samplesToJsonl(r.samples));
  }
  return r;
}

export const BENCH_USAGE = `usage: emollm bench build --source <dataset>=<dir> [--source ...] --out <file.jsonl>
                          [--media-root <dir>] [--keep-missing-media] [--split test[,val,...]]
                          [--task emo-c[,emo-o,...]] [--json]
  --source <dataset>=<dir>  a dataset's release folder (repeat); a bare <dir> holding
                            <dataset>/ folders takes every one found. datasets:
                            ${BUILDERS.map((b) => b.name).join(', ')}
  --out <file>              the JSONL benchmark (- : stdout, summary to stderr)
  --media-root <dir>        check each sample's media under <dir>; missing ones are left out
                            and listed (--keep-missing-media keeps them)
  --split <s,...>           split names or roles (train, val, test); default all
  --task <t,...>            sub-tasks (${BENCH_TASKS.join(', ')}); default each dataset's own
  --force                   replace an existing --out file
  --json                    print the summary as JSON`;

/** The `emollm bench` command; args after `bench`. Returns the exit code. */
export async function runBenchCommand(args: string[], json = false): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === '-h' || sub === '--help') {
    console.log(BENCH_USAGE);
    return sub ? 0 : 1;
  }
  if (sub !== 'build') throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown bench command ${JSON.stringify(sub)}\n${BENCH_USAGE}`);
  const sources: Record<string, string> = {};
  const options: BuildOptions & { force?: boolean } = {};
  let out: string | undefined;
  const list = (v: string): string[] => v.split(',').map((x) => x.trim()).filter((x) => x !== '');
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    const value = (): string => {
      const v = rest[++i];
      if (v === undefined) throw new EmollmError('ERR_INVALID_ARGUMENT', `${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--source': {
        const v = value();
        const eq = v.indexOf('=');
        if (eq < 0) {
          const found = discoverSources(v);
          if (!Object.keys(found).length)
            throw new EmollmError('ERR_INVALID_ARGUMENT', `--source ${v}: not <dataset>=<dir>, and no dataset folder (${BUILDERS.map((b) => b.name).join(', ')}) in it`);
          for (const [k, d] of Object.entries(found)) if (!(k in sources)) sources[k] = d;
        } else {
          const name = getBuilder(v.slice(0, eq)).name;
          sources[name] = v.slice(eq + 1);
        }
        break;
      }
      case '--out':
        out = value();
        break;
      case '--media-root':
        options.mediaRoot = value();
        break;
      case '--split':
        options.splits = [...(options.splits ?? []), ...list(value())];
        break;
      case '--task': {
        const tasks = list(value());
        for (const t of tasks)
          if (!(BENCH_TASKS as readonly string[]).includes(t))
            throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown sub-task ${JSON.stringify(t)} (${BENCH_TASKS.join(', ')})`);
        options.tasks = [...(options.tasks ?? []), ...(tasks as BenchTask[])];
        break;
      }
      case '--force':
        options.force = true;
        break;
      case '--keep-missing-media':
        options.keepMissingMedia = true;
        break;
      case '--json':
        json = true;
        break;
      default:
        throw new EmollmError('ERR_INVALID_ARGUMENT', `bench build: unknown argument ${JSON.stringify(a)}\n${BENCH_USAGE}`);
    }
  }
  if (!out) throw new EmollmError('ERR_INVALID_ARGUMENT', `bench build needs --out <file>\n${BENCH_USAGE}`);
  const r = await buildBenchmarkFile(sources, out, options);
  if (out === '-') process.stdout.write(samplesToJsonl(r.samples));
  const report = json ? JSON.stringify(r.summary, null, 2) : `${formatSummary(r.summary)}${out === '-' ? '' : `\nwrote ${out}`}`;
  if (out === '-') process.stderr.write(report + '\n');
  else console.log(report);
  return 0;
}
