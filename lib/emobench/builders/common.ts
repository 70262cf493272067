/**
 * Shared pieces of the EmoBench dataset builders: the builder interface, a CSV/TSV reader that
 * handles quoted multi-line fields, and file look-up inside a dataset folder.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { EmollmError } from '../../errors.js';
import type { BenchSample, BenchTask } from '../sample.js';

/** What a split is for; `--split test` selects every split whose role is test. */
export type SplitRole = 'train' | 'val' | 'test';

/** Rows of a source file that a builder read but could not turn into samples (never dropped silently). */
export interface SkippedRows {
  reason: string;
  count: number;
  /** The first few source ids (or line numbers) of the skipped rows. */
  examples: string[];
}

/** The samples one builder made from one split file. */
export interface BuiltSplit {
  /** The samples' `source` (a builder may emit several, e.g. HarMeme → Harm-C and Harm-P). */
  source: string;
  split: string;
  role: SplitRole;
  /** The annotation file read, relative to the dataset folder. */
  file: string;
  /** The number of annotated items in the file (before any skipping). */
  rows: number;
  samples: BenchSample[];
  skipped: SkippedRows[];
  /** Rows that made a sample although a field the benchmark does not use is damaged (reported, kept). */
  defects?: SkippedRows[];
}

export interface BuildContext {
  /** The sub-tasks to emit; a builder emits the ones it supports. */
  tasks: ReadonlySet<BenchTask>;
  /** Whether a split is wanted (by its name or its role). */
  wantSplit(split: string, role: SplitRole): boolean;
}

export interface DatasetBuilder {
  /** Registry name: the dataset's folder name in the shared collection (`--source <name>=<dir>`). */
  name: string;
  /** Other names accepted on the command line. */
  aliases?: readonly string[];
  /** The sub-tasks this builder can emit. */
  tasks: readonly BenchTask[];
  /** The ones emitted when the caller names none. */
  defaultTasks: readonly BenchTask[];
  /** One line: what it reads and what it emits. */
  description: string;
  /** Reads the dataset folder (the official release layout); ERR_FILE_NOT_FOUND when it holds none of its files. */
  build(dir: string, ctx: BuildContext): BuiltSplit[] | Promise<BuiltSplit[]>;
}

/** Collects skipped rows by reason. */
export class Skips {
  private readonly byReason = new Map<string, SkippedRows>();
  add(reason: string, example: string): void {
    let s = this.byReason.get(reason);
    if (!s) this.byReason.set(reason, (s = { reason, count: 0, examples: [] }));
    s.count++;
    if (s.examples.length < 5) s.examples.push(example);
  }
  list(): SkippedRows[] {
    return [...this.byReason.values()];
  }
}

/** The first of `candidates` (paths relative to `dir`) that exists, or undefined. */
export function findFile(dir: string, candidates: readonly string[]): string | undefined {
  return candidates.find((c) => existsSync(join(dir, c)));
}

/** Reads a UTF-8 text file (BOM stripped); ERR_FILE_NOT_FOUND names the file. */
export function readText(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: cannot read (${(cause as Error).message})`, { file: path, cause });
  }
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** Parses JSON, turning a syntax error into ERR_MALFORMED_FILE naming the file. */
export function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new EmollmError('ERR_MALFORMED_FILE', `${file}: not JSON (${(cause as Error).message})`, { file, cause });
  }
}

export function malformed(file: string, msg: string): EmollmError {
  return new EmollmError('ERR_MALFORMED_FILE', `${file}: ${msg}`, { file });
}

/**
 * RFC 4180 CSV (or TSV with `delimiter: '\t'`): quoted fields may hold delimiters, doubled quotes
 * and newlines; CRLF and LF line ends; blank lines are skipped. Returns the rows with the line
 * each starts on (1-based).
 */
export function parseDelimited(text: string, delimiter = ',', quotes = true): { fields: string[]; line: number }[] {
  const rows: { fields: string[]; line: number }[] = [];
  let fields: string[] = [];
  let field = '';
  let line = 1;
  let rowLine = 1;
  let i = 0;
  const n = text.length;
  const endRow = (): void => {
    fields.push(field);
    if (!(fields.length === 1 && fields[0] === '')) rows.push({ fields, line: rowLine });
    fields = [];
    field = '';
  };
  while (i < n) {
    const c = text[i]!;
    if (quotes && c === '"' && field === '') {
      // Quoted field.
      i++;
      for (;;) {
        if (i >= n) throw new EmollmError('ERR_MALFORMED_FILE', `unterminated quoted field starting on line ${rowLine}`);
        const d = text[i]!;
        if (d === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        if (d === '\n') line++;
        field += d;
        i++;
      }
      continue;
    }
    if (c === delimiter) {
      fields.push(field);
      field = '';
      i++;
    } else if (c === '\n' || c === '\r') {
      endRow();
      if (c === '\r' && text[i + 1] === '\n') i++;
      i++;
      line++;
      rowLine = line;
    } else {
      field += c;
      i++;
    }
  }
  if (field !== '' || fields.length > 0) endRow();
  return rows;
}

/**
 * {@link parseDelimited} that survives a row with an unterminated quote (which would otherwise
 * swallow the rest of the file): that row's first line is reported in `broken` and parsing resumes
 * on the next line. Line numbers stay those of the whole text.
 */
export function parseDelimitedLenient(text: string, delimiter = ','): { rows: { fields: string[]; line: number }[]; broken: number[] } {
  const rows: { fields: string[]; line: number }[] = [];
  const broken: number[] = [];
  let rest = text;
  let offset = 0;
  for (;;) {
    try {
      for (const r of parseDelimited(rest, delimiter)) rows.push({ fields: r.fields, line: r.line + offset });
      return { rows, broken };
    } catch (e) {
      const m = e instanceof EmollmError ? /unterminated quoted field starting on line (\d+)/.exec(e.message) : null;
      if (!m) throw e;
      const bad = Number(m[1]);
      const lines = rest.split('\n');
      for (const r of parseDelimited(lines.slice(0, bad - 1).join('\n'), delimiter)) rows.push({ fields: r.fields, line: r.line + offset });
      broken.push(bad + offset);
      rest = lines.slice(bad).join('\n');
      offset += bad;
    }
  }
}

/** Delimited text with a header row, as records keyed by column name (the header's names, trimmed). */
export function readRecords(
  path: string,
  file: string,
  required: readonly string[],
  delimiter = ',',
  quotes = true,
): { rec: Record<string, string>; line: number }[] {
  let rows: { fields: string[]; line: number }[];
  try {
    rows = parseDelimited(readText(path), delimiter, quotes);
  } catch (e) {
    if (e instanceof EmollmError && e.code === 'ERR_MALFORMED_FILE') throw malformed(file, e.message);
    throw e;
  }
  const header = rows.shift();
  if (!header) throw malformed(file, 'empty file');
  const names = header.fields.map((h) => h.trim());
  for (const r of required) if (!names.includes(r)) throw malformed(file, `no column "${r}" (columns: ${names.join(', ')})`);
  return rows.map(({ fields, line }) => {
    const rec: Record<string, string> = {};
    names.forEach((name, k) => (rec[name] = fields[k] ?? ''));
    return { rec, line };
  });
}

/** `a/b/c.jpg` → `c` (the file name without its extension). */
export function stem(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}

/** The id of a sample: `<source>/<split>/<source id>`; a builder's secondary sub-task appends `#<task>`. */
export function sampleId(source: string, split: string, sourceId: string, secondaryTask?: BenchTask): string {
  return `${source}/${split}/${sourceId}${secondaryTask ? `#${secondaryTask}` : ''}`;
}

/** Lower-cases and collapses whitespace (for matching label spellings). */
export function norm(s: string): string {
  return s.trim().replace(/\s+/g, ' ').toLowerCase();
}

/** `{ text }` with whitespace collapsed, or nothing when the value is not a non-empty string. */
export function textField(v: unknown): { text?: string } {
  const t = typeof v === 'string' ? v.replace(/\s+/g, ' ').trim() : '';
  return t ? { text: t } : {};
}
