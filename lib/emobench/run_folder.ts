/**
 * The evaluator's run folder (`--out`): who owns it and what run it holds.
 *
 * - A lock file (`.emollm-eval.lock`, created with O_EXCL, holding the owner's pid and host) for as
 *   long as an evaluation runs in the folder: a second evaluation on the same folder rejects with
 *   `ERR_LOCKED` instead of interleaving its lines. A lock left by a process that no longer exists
 *   (killed with SIGKILL) on this host is stale and taken over.
 * - `run.json` (the run key: benchmark hash, model, tasks, limit, seed), written atomically. A
 *   folder that holds a different run, or other files and no run.json, rejects with
 *   `ERR_OUTPUT_EXISTS` unless `force`; with `force` the earlier run's files are moved aside into
 *   `previous-<time>/` (never deleted). A torn run.json (written by an older emollm that did not
 *   write it atomically) is repaired when the folder holds no predictions, and otherwise explained
 *   with `ERR_MALFORMED_FILE` (resume with `force` to move the earlier files aside).
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

import { EmollmError } from '../errors.js';
import { writeFileAtomicSync } from '../safe_fs.js';

export const LOCK_FILE = '.emollm-eval.lock';
export const RUN_FILE = 'run.json';
/** The files an evaluation writes into its folder. */
export const RUN_FILES = [RUN_FILE, 'predictions.jsonl', 'results.json', 'leaderboard.md', 'report.html'] as const;

/** True when a process with this pid exists (EPERM: it exists but belongs to someone else). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A held run-folder lock; `release()` removes it (safe to call twice). */
export interface RunLock {
  readonly file: string;
  release(): void;
}

/** Takes the folder's lock, or rejects `ERR_LOCKED` naming the live owner. */
export function acquireRunLock(dir: string): RunLock {
  const file = join(dir, LOCK_FILE);
  const me = JSON.stringify({ pid: process.pid, host: hostname(), startedAt: new Date().toISOString() });
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(file, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner: { pid?: unknown; host?: unknown } = {};
      try {
        owner = JSON.parse(readFileSync(file, 'utf8')) as typeof owner;
      } catch {
        // torn or empty: the owner died between creating and writing it
      }
      const pid = typeof owner.pid === 'number' ? owner.pid : undefined;
      const sameHost = owner.host === undefined || owner.host === hostname();
      if (pid !== undefined && (!sameHost || alive(pid)))
        throw new EmollmError(
          'ERR_LOCKED',
          `${dir} is in use by another evaluation (pid ${pid}${sameHost ? '' : ` on ${String(owner.host)}`}); ` +
            `wait for it, or remove ${file} if that process is gone`,
          { file },
        );
      // stale: its process is gone
      try {
        unlinkSync(file);
      } catch {
        // someone else took it over first; try again
      }
      continue;
    }
    try {
      writeSync(fd, me);
    } finally {
      closeSync(fd);
    }
    let held = true;
    const release = (): void => {
      if (!held) return;
      held = false;
      try {
        unlinkSync(file);
      } catch {
        // already removed
      }
    };
    process.once('exit', release);
    return {
      file,
      release: () => {
        process.removeListener('exit', release);
        release();
      },
    };
  }
  throw new EmollmError('ERR_LOCKED', `${dir}: could not take the lock ${file}`, { file });
}

function moveAside(dir: string, reason: string): string {
  const aside = join(dir, `previous-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  mkdirSync(aside);
  for (const f of RUN_FILES) if (existsSync(join(dir, f))) renameSync(join(dir, f), join(aside, f));
  writeFileAtomicSync(join(aside, 'MOVED.txt'), `${reason}\n`);
  return aside;
}

/**
 * Makes `dir` hold the run `key` (writing run.json) or checks it already does (a resume). See the
 * module documentation for the refusals. Returns where an earlier run was moved, if it was.
 */
export function claimRunFolder(dir: string, key: unknown, options: { force?: boolean } = {}): { movedTo?: string } {
  const runFile = join(dir, RUN_FILE);
  const keyText = `${JSON.stringify(key, null, 2)}\n`;
  const entries = readdirSync(dir).filter((n) => n !== LOCK_FILE);
  if (!existsSync(runFile)) {
    const ours = entries.filter((n) => !n.startsWith('previous-'));
    if (ours.length > 0 && !options.force)
      throw new EmollmError(
        'ERR_OUTPUT_EXISTS',
        `${dir} is not empty (${ours.slice(0, 3).join(', ')}${ours.length > 3 ? ', ...' : ''}) and holds no emollm run; use an empty --out folder, or --force to write beside those files`,
        { file: dir },
      );
    const movedTo = ours.some((n) => (RUN_FILES as readonly string[]).includes(n))
      ? moveAside(dir, 'moved by --force: files of a run without run.json')
      : undefined;
    writeFileAtomicSync(runFile, keyText);
    return movedTo ? { movedTo } : {};
  }
  const text = readFileSync(runFile, 'utf8');
  let prev: unknown;
  try {
    prev = JSON.parse(text);
  } catch (cause) {
    const hasPredictions = existsSync(join(dir, 'predictions.jsonl')) && readFileSync(join(dir, 'predictions.jsonl')).length > 0;
    if (!hasPredictions) {
      // nothing to lose: repair it
      writeFileAtomicSync(runFile, keyText);
      return {};
    }
    if (!options.force)
      throw new EmollmError(
        'ERR_MALFORMED_FILE',
        `${runFile} is torn (${text.length} bytes, not JSON: an interrupted write), so emollm cannot tell whether the ` +
          `predictions in ${dir} belong to this run. Resume with --force to move the earlier files into previous-<time>/ and start again, or restore run.json`,
        { file: runFile, cause },
      );
    const movedTo = moveAside(dir, `moved by --force: run.json was torn (${JSON.stringify(text.slice(0, 200))})`);
    writeFileAtomicSync(runFile, keyText);
    return { movedTo };
  }
  if (JSON.stringify(prev) === JSON.stringify(key)) return {};
  if (!options.force)
    throw new EmollmError(
      'ERR_OUTPUT_EXISTS',
      `${dir} holds another run (${JSON.stringify(prev)}); use a new --out to start a different one, or --force to move the earlier run into previous-<time>/`,
      { file: runFile },
    );
  const movedTo = moveAside(dir, `moved by --force: it held the run ${JSON.stringify(prev)}`);
  writeFileAtomicSync(runFile, keyText);
  return { movedTo };
}
