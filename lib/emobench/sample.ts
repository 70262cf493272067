/**
 * The EmoBench sample format: one JSON object per line (JSONL), the same for every source
 * dataset, so builders, the evaluator and the metrics share one definition.
 */
import { EmollmError } from '../errors.js';

/** EmoBench's six scored sub-tasks. */
export type BenchTask = 'emo-c' | 'emo-o' | 'intent' | 'hate' | 'humor' | 'sarcasm';
export const BENCH_TASKS: readonly BenchTask[] = Object.freeze(['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'] as const);

/** Where a sample's media is: paths relative to the media root the user gives. */
export type BenchMedia =
  | { type: 'image'; path: string }
  | { type: 'video'; path: string; /** seconds */ start?: number; end?: number };

export interface BenchSample {
  /** Unique within a benchmark file: `<source>/<split>/<source id>`. */
  id: string;
  task: BenchTask;
  /** Source dataset, e.g. 'EmoSet', 'MELD'. */
  source: string;
  /** null for samples whose media the source never had (text-only); missing files are checked at eval time. */
  media: BenchMedia | null;
  /** Accompanying text: caption, utterance, meme text. */
  text?: string;
  /** Dialogue context, oldest first. */
  context?: string[];
  /** The instruction; default: the task's EmoPrompt question. */
  instruction?: string;
  /** Close-set and yes/no tasks: the answer options (the gold answer is one of them). */
  options?: string[];
  /** The gold answer (a label; for emo-o a canonical emotion). */
  answer: string;
  split: string;
}

function bad(line: number | undefined, msg: string): EmollmError {
  return new EmollmError('ERR_MALFORMED_FILE', line === undefined ? msg : `line ${line}: ${msg}`);
}

/** Checks one parsed object; returns it typed or throws ERR_MALFORMED_FILE naming the field. */
export function validateSample(o: unknown, line?: number): BenchSample {
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw bad(line, 'a sample must be a JSON object');
  const s = o as Record<string, unknown>;
  for (const k of ['id', 'task', 'source', 'answer', 'split'] as const)
    if (typeof s[k] !== 'string' || s[k] === '') throw bad(line, `"${k}" must be a non-empty string`);
  if (!BENCH_TASKS.includes(s.task as BenchTask)) throw bad(line, `unknown task ${JSON.stringify(s.task)} (${BENCH_TASKS.join(', ')})`);
  if (s.media !== null) {
    const m = s.media as Record<string, unknown> | undefined;
    if (typeof m !== 'object' || m === null || (m.type !== 'image' && m.type !== 'video') || typeof m.path !== 'string')
      throw bad(line, '"media" must be null or { type: "image" | "video", path }');
    for (const k of ['start', 'end'])
      if (m[k] !== undefined && (typeof m[k] !== 'number' || !Number.isFinite(m[k] as number) || (m[k] as number) < 0))
        throw bad(line, `"media.${k}" must be a non-negative number`);
  }
  for (const k of ['text', 'instruction'] as const)
    if (s[k] !== undefined && typeof s[k] !== 'string') throw bad(line, `"${k}" must be a string`);
  for (const k of ['context', 'options'] as const)
    if (s[k] !== undefined && (!Array.isArray(s[k]) || !(s[k] as unknown[]).every((x) => typeof x === 'string')))
      throw bad(line, `"${k}" must be an array of strings`);
  if (s.options !== undefined && !(s.options as string[]).includes(s.answer as string))
    throw bad(line, `the answer ${JSON.stringify(s.answer)} is not one of the options`);
  if ((s.task === 'hate' || s.task === 'humor' || s.task === 'sarcasm') && s.answer !== 'yes' && s.answer !== 'no')
    throw bad(line, `a ${String(s.task)} sample's answer must be "yes" or "no"`);
  return s as unknown as BenchSample;
}

/** One JSONL line for a sample (keys in a fixed order, so files diff cleanly). */
export function sampleToJsonl(s: BenchSample): string {
  const ordered: Record<string, unknown> = {};
  for (const k of ['id', 'task', 'source', 'split', 'media', 'text', 'context', 'instruction', 'options', 'answer'] as const)
    if (s[k] !== undefined) ordered[k] = s[k];
  return JSON.stringify(ordered);
}

/** Parses a JSONL benchmark (blank lines skipped); every line is validated; ids must be unique. */
export function parseSamples(text: string): BenchSample[] {
  const out: BenchSample[] = [];
  const ids = new Set<string>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch (cause) {
      throw new EmollmError('ERR_MALFORMED_FILE', `line ${i + 1}: not JSON (${(cause as Error).message})`, { cause });
    }
    const s = validateSample(o, i + 1);
    if (ids.has(s.id)) throw bad(i + 1, `duplicate id ${JSON.stringify(s.id)}`);
    ids.add(s.id);
    out.push(s);
  });
  return out;
}
