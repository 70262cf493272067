// The command line's one parser (lib/cli/args.ts) and every command's use of it, through the
// built dist/cli.js: unknown flags and missing values are errors with the command's usage,
// --flag=value works, --help on every command, --version. None of these needs the native addon.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

import { formatUsage, parseCommand, UsageError, type CommandSpec } from '../../lib/cli/args.js';
import { EmollmError } from '../../lib/errors.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(repoRoot, 'dist', 'cli.js');
const version = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

const SPEC = {
  name: 'demo',
  synopsis: '<in> [out]',
  summary: 'a demo command',
  positionals: { min: 1, max: 2 },
  options: {
    count: { type: 'integer', description: 'how many' },
    scale: { type: 'number', value: 'X', description: 'a factor' },
    mode: { type: 'string', choices: ['a', 'b'], description: 'the mode' },
    tags: { type: 'list', description: 'comma-separated' },
    src: { type: 'string', multiple: true, description: 'repeatable' },
    verbose: { type: 'boolean', short: 'V', description: 'talk' },
  },
} as const satisfies CommandSpec;

describe('parseCommand', () => {
  it('reads --flag value and --flag=value alike, with typed values', () => {
    const a = parseCommand(SPEC, ['in.txt', '--count', '3', '--scale=0.5', '--mode', 'b', '--tags', 'x, y', '--tags=z', '--src', 's1', '--src=s2', '-V']);
    expect(a.positionals).toEqual(['in.txt']);
    expect(a.values).toEqual({ count: 3, scale: 0.5, mode: 'b', tags: ['x', 'y', 'z'], src: ['s1', 's2'], verbose: true });
    expect(a.help).toBe(false);
    const b = parseCommand(SPEC, ['--count=7', 'in', 'out']);
    expect(b.values.count).toBe(7);
    expect(b.positionals).toEqual(['in', 'out']);
  });

  it('takes positionals that start with "-" after --', () => {
    expect(parseCommand(SPEC, ['--', '-in-']).positionals).toEqual(['-in-']);
  });

  const fails = (argv: string[], message: RegExp): void => {
    let err: unknown;
    try {
      parseCommand(SPEC, argv);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect(err).toBeInstanceOf(EmollmError);
    expect((err as UsageError).code).toBe('ERR_INVALID_ARGUMENT');
    expect((err as UsageError).message).toMatch(message);
    expect((err as UsageError).usage).toBe(formatUsage(SPEC));
  };

  it('rejects unknown flags, missing values, bad values and wrong positional counts', () => {
    fails(['in', '--cuont', '3'], /^demo: unknown option --cuont$/);
    fails(['in', '--count'], /--count needs a value/);
    fails(['in', '--count', '--scale', '2'], /--count needs a value/);
    fails(['in', '--count', 'x'], /--count must be a non-negative integer, got "x"/);
    fails(['in', '--count=-1'], /non-negative integer/);
    fails(['in', '--count=1.5'], /non-negative integer/);
    fails(['in', '--scale', ''], /--scale must be a number/);
    fails(['in', '--mode', 'c'], /--mode must be one of a, b, got "c"/);
    fails(['in', '--verbose=yes'], /--verbose takes no value/);
    fails([], /needs <in> \[out\]/);
    fails(['a', 'b', 'c'], /unexpected argument "c"/);
  });

  it('--help and -h are options of every command and skip the positional check', () => {
    expect(parseCommand(SPEC, ['--help']).help).toBe(true);
    expect(parseCommand(SPEC, ['-h']).help).toBe(true);
  });

  it('writes the usage from the table', () => {
    const u = formatUsage(SPEC);
    expect(u.split('\n')[0]).toBe('usage: emollm demo <in> [out] [options]');
    for (const flag of ['--count N', '--scale X', '--mode a|b', '--tags VALUE', '-V, --verbose', '-h, --help']) expect(u).toContain(flag);
  });
});

const run = (...args: string[]): { status: number | null; stdout: string; stderr: string } =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, HF_HUB_OFFLINE: '1' } });

describe.skipIf(!existsSync(cli))('emollm (dist/cli.js)', () => {
  it('--version prints the package version', () => {
    for (const flag of ['--version', '-v']) {
      const r = run(flag);
      expect(r.status).toBe(0);
      expect(r.stdout.trim()).toBe(version);
    }
  });

  it('no command is an error; --help is not', () => {
    const none = run();
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/^usage: emollm <command>/);
    const help = run('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^usage: emollm <command>/);
    const unknown = run('frob');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frob"/);
  });

  const COMMANDS: [string[], string][] = [
    [['analyze'], 'usage: emollm analyze <image|video>'],
    [['eval'], 'usage: emollm eval --bench FILE'],
    [['eval', 'compare'], 'usage: emollm eval compare RUN_A RUN_B'],
    [['bench', 'build'], 'usage: emollm bench build'],
    [['generate'], 'usage: emollm generate <model> [prompt]'],
    [['info'], 'usage: emollm info'],
    [['inspect'], 'usage: emollm inspect <path>'],
    [['quantize'], 'usage: emollm quantize <in.gguf>'],
    [['init-mvp'], 'usage: emollm init-mvp <llava-dir> <out-dir>'],
    [['train-mvp'], 'usage: emollm train-mvp [options]'],
    [['pull'], 'usage: emollm pull <repo>'],
  ];

  it.each(COMMANDS)('%s: --help and -h print the usage and exit 0', (cmd, head) => {
    for (const flag of ['--help', '-h']) {
      const r = run(...cmd, flag);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.startsWith(head)).toBe(true);
      expect(r.stdout).toContain('-h, --help');
    }
  });

  it.each(COMMANDS)('%s: an unknown flag exits 2 with the command usage', (cmd, head) => {
    const r = run(...cmd, 'x', '--no-such-flag');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown option --no-such-flag/);
    expect(r.stderr).toContain(head);
    expect(r.stdout).toBe('');
  });

  it('the issue cases: analyze --tsk, generate --max-tokens=x, a missing value', () => {
    const tsk = run('analyze', 'photo.jpg', '--tsk', 'sarcasm');
    expect(tsk.status).toBe(2);
    expect(tsk.stderr).toMatch(/^emollm analyze: unknown option --tsk/);
    const bad = run('generate', 'm.gguf', '--max-tokens=x');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--max-tokens must be a non-negative integer, got "x"/);
    const missing = run('eval', '--bench');
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/--bench needs a value/);
    const task = run('analyze', 'photo.jpg', '--task', 'sarcsm');
    expect(task.status).toBe(2);
    expect(task.stderr).toMatch(/--task must be one of emotion, .*sarcasm/);
    const evalTasks = run('eval', '--bench', 'b', '--model', 'random', '--out', 'o', '--tasks', 'emo-c,nope');
    expect(evalTasks.status).toBe(2);
    expect(evalTasks.stderr).toMatch(/--tasks must be one of/);
  });

  it('missing required options and positionals are errors with the usage', () => {
    const e = run('eval', '--model', 'random');
    expect(e.status).toBe(2);
    expect(e.stderr).toMatch(/eval needs --bench, --model and --out/);
    const q = run('quantize', 'a.gguf', 'b.gguf', 'q9_9');
    expect(q.status).toBe(2);
    expect(q.stderr).toMatch(/unknown type "q9_9"/);
    const b = run('bench', 'build', '--source', 'MELD=/nonexistent');
    expect(b.status).toBe(2);
    expect(b.stderr).toMatch(/bench build needs --out/);
    const bench = run('bench');
    expect(bench.status).toBe(2);
    expect(bench.stderr).toMatch(/usage: emollm bench build/);
    const benchSub = run('bench', 'make');
    expect(benchSub.status).toBe(2);
    expect(benchSub.stderr).toMatch(/bench: unknown command "make"/);
    const i = run('init-mvp', 'only-one');
    expect(i.status).toBe(2);
    expect(i.stderr).toMatch(/init-mvp: needs <llava-dir> <out-dir>/);
  });
});
