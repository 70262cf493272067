/**
 * Guards memory-mapped model files against being changed under a loaded model.
 *
 * emollm maps weights read-only (MAP_PRIVATE) instead of copying them. If another process
 * truncates or rewrites a mapped file, reading the pages past the new end raises SIGBUS and kills
 * the process. The decision (docs/security.md): before every call that reads weights (generate,
 * score, logits, image encoding) the model stats its files and, when a file's size, modification
 * time, device or inode differ from when it was loaded, rejects with `ERR_FILE_CHANGED` naming the
 * file, and never touches the mapping. Reload the model to use the new file. A change that lands
 * during a running call is not caught (no portable way exists short of copying the weights); the
 * check closes the window between calls, where an update usually happens.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { EmollmError } from './errors.js';

interface Snapshot {
  file: string;
  size: number;
  mtimeMs: number;
  dev: number;
  ino: number;
}

const WEIGHT_FILE = /\.(gguf|safetensors)$/;

async function snap(file: string): Promise<Snapshot | undefined> {
  const st = await stat(file).catch(() => undefined);
  if (!st || !st.isFile()) return undefined;
  return { file, size: st.size, mtimeMs: st.mtimeMs, dev: st.dev, ino: st.ino };
}

export class FileGuard {
  private constructor(private readonly files: readonly Snapshot[]) {}

  /** Snapshots `path` (a weight file, or every weight file of a model folder) and `extra` files. */
  static async watch(path: string, extra: readonly (string | undefined)[] = []): Promise<FileGuard> {
    const st = await stat(path).catch(() => undefined);
    const names: string[] = [];
    if (st?.isDirectory()) {
      for (const n of await readdir(path).catch(() => [] as string[])) if (WEIGHT_FILE.test(n)) names.push(join(path, n));
    } else names.push(path);
    for (const e of extra) if (e !== undefined) names.push(e);
    const snaps = (await Promise.all(names.map(snap))).filter((s): s is Snapshot => s !== undefined);
    return new FileGuard(snaps);
  }

  /** The files watched. */
  get paths(): string[] {
    return this.files.map((f) => f.file);
  }

  /** Rejects `ERR_FILE_CHANGED` when a watched file was truncated, rewritten, replaced or removed. */
  async check(): Promise<void> {
    const now = await Promise.all(this.files.map((f) => snap(f.file)));
    this.files.forEach((f, i) => {
      const n = now[i];
      let what: string | undefined;
      if (!n) what = 'was removed';
      else if (n.size !== f.size) what = `changed size (${f.size} -> ${n.size} bytes)`;
      else if (n.dev !== f.dev || n.ino !== f.ino) what = 'was replaced by another file';
      else if (n.mtimeMs !== f.mtimeMs) what = 'was modified';
      if (what)
        throw new EmollmError(
          'ERR_FILE_CHANGED',
          `${f.file} ${what} after the model was loaded; its memory-mapped weights are no longer valid. Close the model and load it again`,
          { file: f.file },
        );
    });
  }
}
