/**
 * The one argument parser of the `emollm` command line: every command declares its options in a
 * table ({@link CommandSpec}); the table drives `node:util`'s `parseArgs` in strict mode, the type
 * checks of values, and the command's usage text. Adding a flag to a command is one table entry.
 *
 * Accepted: `--flag value`, `--flag=value`, `-f value` (when the option has a short name),
 * booleans as `--flag`, `--` ending the options. Rejected with the command's usage: unknown
 * flags, a missing value, a value of the wrong kind or outside its choices, too few or too many
 * positional arguments. `--help`/`-h` is an option of every command.
 */
import { parseArgs } from 'node:util';

import { EmollmError } from '../errors.js';
import { configure } from '../kernels.js';
import { DEVICES } from '../runtime.js';

/** How an option's value is read. */
export type OptionType = 'string' | 'boolean' | 'number' | 'integer' | 'list';

/** One option of a command. */
export interface OptionSpec {
  /** string: as given; number: finite; integer: a non-negative integer; list: comma-separated (repeatable, concatenated). */
  readonly type: OptionType;
  /** One-letter alias, e.g. 'h' for -h. */
  readonly short?: string;
  /** The value's placeholder in the usage text, e.g. 'N' or 'PATH'. */
  readonly value?: string;
  /** One line for the usage text. */
  readonly description: string;
  /** Allowed values (string and list options). */
  readonly choices?: readonly string[];
  /** A string option that may be given several times (its value is then an array). */
  readonly multiple?: boolean;
}

/** One command (or sub-command, e.g. `eval compare`). */
export interface CommandSpec {
  /** As typed after `emollm`, e.g. 'generate' or 'eval compare'. */
  readonly name: string;
  /** Positional arguments in the usage line, e.g. '<model> [prompt]'. */
  readonly synopsis: string;
  /** What the command does, one or two lines. */
  readonly summary: string;
  /** Positional arguments: at least min, at most max (default: exactly as many as min). */
  readonly positionals?: { readonly min: number; readonly max?: number };
  readonly options: Readonly<Record<string, OptionSpec>>;
  /** Text after the options (examples, notes). */
  readonly notes?: string;
}

type Choice<O extends OptionSpec> = O extends { readonly choices: readonly (infer C extends string)[] } ? C : string;
type ValueOf<O extends OptionSpec> = O['type'] extends 'boolean'
  ? boolean
  : O['type'] extends 'number' | 'integer'
    ? number
    : O['type'] extends 'list'
      ? Choice<O>[]
      : O extends { readonly multiple: true }
        ? Choice<O>[]
        : Choice<O>;

/** Parsed option values, typed from the table; absent options are undefined. */
export type OptionValues<S extends CommandSpec> = { -readonly [K in keyof S['options']]?: ValueOf<S['options'][K]> };

export interface ParsedCommand<S extends CommandSpec> {
  values: OptionValues<S>;
  positionals: string[];
  /** True when --help/-h was given: print {@link formatUsage} and exit 0. */
  help: boolean;
}

/** A command line that does not parse: the CLI prints the message, then the command's usage, and exits 2. */
export class UsageError extends EmollmError {
  readonly usage: string;
  constructor(message: string, usage: string) {
    super('ERR_INVALID_ARGUMENT', message);
    this.name = 'UsageError';
    this.usage = usage;
  }
}

const HELP: OptionSpec = { type: 'boolean', short: 'h', description: 'this help' };

/**
 * The runtime configuration, an option of every command (a command's own entry of the same name
 * wins in its usage text): parsed values become the process default through `configure`, so
 * models, face analyzers and evaluations started by the command all use them.
 */
export const RUNTIME_OPTIONS = {
  device: { type: 'string', choices: DEVICES, description: 'where native compute runs (cuda needs a CUDA build)' },
  threads: { type: 'integer', description: 'CPU compute threads (default: physical cores)' },
} as const satisfies Record<string, OptionSpec>;

function applyRuntime(values: Record<string, unknown>): void {
  const device = values.device as (typeof DEVICES)[number] | undefined;
  // a command may declare its own `threads` (serve, worker read it as text): only numbers apply here
  const threads = typeof values.threads === 'number' ? values.threads : undefined;
  if (device !== undefined || threads !== undefined)
    configure({ ...(device !== undefined ? { device } : {}), ...(threads !== undefined ? { threads } : {}) });
}

function optionLabel(name: string, o: OptionSpec): string {
  const flag = `${o.short ? `-${o.short}, ` : ''}--${name}`;
  if (o.type === 'boolean') return flag;
  const placeholder = o.value ?? (o.choices ? o.choices.join('|') : o.type === 'number' || o.type === 'integer' ? 'N' : 'VALUE');
  return `${flag} ${placeholder}`;
}

/** The usage text of a command, from its table. */
export function formatUsage(spec: CommandSpec): string {
  const entries = Object.entries({ ...RUNTIME_OPTIONS, ...spec.options, help: HELP });
  const labels = entries.map(([n, o]) => optionLabel(n, o));
  const width = Math.min(32, Math.max(...labels.map((l) => l.length)) + 2);
  const lines = [`usage: emollm ${spec.name}${spec.synopsis ? ` ${spec.synopsis}` : ''}${entries.length > 1 ? ' [options]' : ''}`];
  lines.push(...spec.summary.split('\n').map((l) => `  ${l}`));
  lines.push('options:');
  entries.forEach(([, o], i) => {
    const label = labels[i]!;
    const pad = label.length + 2 > width ? `\n  ${' '.repeat(width)}` : ' '.repeat(width - label.length);
    lines.push(`  ${label}${pad}${o.description}`);
  });
  if (spec.notes) lines.push(...spec.notes.split('\n'));
  return lines.join('\n');
}

function convert(spec: CommandSpec, name: string, o: OptionSpec, raw: string | boolean | (string | boolean)[], usage: string): unknown {
  const bad = (why: string): UsageError => new UsageError(`${spec.name}: --${name} ${why}`, usage);
  if (o.type === 'boolean') return raw === true || (Array.isArray(raw) && raw.length > 0);
  const all = (Array.isArray(raw) ? raw : [raw]).map(String);
  const last = all[all.length - 1]!;
  const checkChoice = (v: string): string => {
    if (o.choices && !o.choices.includes(v)) throw bad(`must be one of ${o.choices.join(', ')}, got ${JSON.stringify(v)}`);
    return v;
  };
  switch (o.type) {
    case 'number': {
      const n = last.trim() === '' ? NaN : Number(last);
      if (!Number.isFinite(n)) throw bad(`must be a number, got ${JSON.stringify(last)}`);
      return n;
    }
    case 'integer': {
      const n = last.trim() === '' ? NaN : Number(last);
      if (!Number.isInteger(n) || n < 0) throw bad(`must be a non-negative integer, got ${JSON.stringify(last)}`);
      return n;
    }
    case 'list':
      return all.flatMap((v) => v.split(',').map((x) => x.trim()).filter((x) => x !== '')).map(checkChoice);
    default:
      return o.multiple ? all.map(checkChoice) : checkChoice(last);
  }
}

/** Rewrites parseArgs' messages (which name Node internals) into the CLI's words. */
function parseArgsMessage(spec: CommandSpec, e: Error & { code?: string }): string {
  const m = e.message;
  const opt = /'(?:-\w, )?(--?[\w-]+)/.exec(m)?.[1] ?? '';
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `${spec.name}: unknown option ${opt}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (/argument missing/.test(m)) return `${spec.name}: ${opt} needs a value`;
      if (/ambiguous/.test(m)) return `${spec.name}: ${opt} needs a value (to pass one that starts with '-', write ${opt}=VALUE)`;
      if (/does not take an argument/.test(m)) return `${spec.name}: ${opt} takes no value`;
      return `${spec.name}: ${m}`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `${spec.name}: unexpected argument ${/'([^']*)'/.exec(m)?.[1] ?? ''}`.trimEnd();
    default:
      return `${spec.name}: ${m}`;
  }
}

/** Parses a command's arguments (those after the command name) against its table. */
export function parseCommand<S extends CommandSpec>(spec: S, argv: readonly string[]): ParsedCommand<S> {
  const usage = formatUsage(spec);
  const table: Record<string, OptionSpec> = { ...RUNTIME_OPTIONS, ...spec.options, help: HELP };
  const config: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {};
  for (const [name, o] of Object.entries(table)) {
    config[name] = {
      type: o.type === 'boolean' ? 'boolean' : 'string',
      ...(o.short ? { short: o.short } : {}),
      ...(o.type === 'list' || o.multiple ? { multiple: true } : {}),
    };
  }
  let parsed: { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: [...argv], options: config, strict: true, allowPositionals: true });
  } catch (e) {
    const err = e as Error & { code?: string };
    if (typeof err.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS_')) throw new UsageError(parseArgsMessage(spec, err), usage);
    throw e;
  }
  const help = parsed.values.help === true;
  const values: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(parsed.values)) {
    if (name === 'help' || raw === undefined) continue;
    values[name] = convert(spec, name, table[name]!, raw, usage);
  }
  if (!help) {
    const min = spec.positionals?.min ?? 0;
    const max = spec.positionals?.max ?? min;
    const n = parsed.positionals.length;
    if (n < min) throw new UsageError(`${spec.name}: needs ${spec.synopsis || `${min} argument(s)`}`, usage);
    if (n > max) throw new UsageError(`${spec.name}: unexpected argument ${JSON.stringify(parsed.positionals[max])}`, usage);
  }
  if (!help) applyRuntime(values);
  return { values: values as OptionValues<S>, positionals: parsed.positionals, help };
}

/** Common option entries. */
export const JSON_OPTION = { type: 'boolean', description: 'machine-readable output' } as const satisfies OptionSpec;
