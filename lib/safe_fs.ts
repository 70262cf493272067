/**
 * File-system helpers that make emollm's file handling safe against hostile or unlucky paths
 * (see docs/security.md):
 *
 * - {@link readRegularFile} / {@link openRegularFile}: open without blocking (O_NONBLOCK), then
 *   check the opened descriptor is a regular file, so a FIFO, socket or device named like a model
 *   or image is refused before any read instead of hanging the process.
 * - {@link writeFileAtomic} / {@link withAtomicOutput}: every output is written to a temporary file
 *   beside the target, flushed, and renamed over it: a crash or a failed write never leaves a
 *   half-written file, and a failure never destroys the previous one.
 * - {@link sameFile}: two paths naming one file (equal real paths, or equal device + inode, which
 *   also catches hard links and symlinks), checked before an output may replace an input.
 * - {@link confinedPath}: a relative path resolved under a root, refused when it is absolute, climbs
 *   out with `..`, or leaves the root through a symlink.
 */
import { closeSync, constants, fsyncSync, openSync, renameSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { open, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';

import { EmollmError } from './errors.js';

/** What a file is, for messages: "a FIFO", "a socket", ... */
function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

function notRegular(path: string, st: Stats): EmollmError {
  return new EmollmError('ERR_NOT_REGULAR_FILE', `${path}: ${kindOf(st)}, not a regular file`, { file: path });
}

function openError(path: string, cause: unknown): EmollmError {
  const code = (cause as NodeJS.ErrnoException).code;
  const what = code === 'ENOENT' || code === 'ENOTDIR' ? 'no such file' : `cannot open (${(cause as Error).message})`;
  return new EmollmError('ERR_FILE_NOT_FOUND', `${path}: ${what}`, { file: path, cause });
}

/**
 * Opens `path` for reading and checks it is a regular file (symlinks followed). O_NONBLOCK makes
 * the open itself return at once for a FIFO without a writer (a plain open would wait forever).
 * Rejects `ERR_FILE_NOT_FOUND` or `ERR_NOT_REGULAR_FILE`.
 */
export async function openRegularFile(path: string): Promise<{ fh: FileHandle; stats: Stats }> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'EISDIR') throw notRegular(path, await stat(path));
    throw openError(path, cause);
  }
  try {
    const stats = await fh.stat();
    if (!stats.isFile()) throw notRegular(path, stats);
    return { fh, stats };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** Throws `ERR_NOT_REGULAR_FILE` / `ERR_FILE_NOT_FOUND` unless `path` is a regular file (no read). */
export async function assertRegularFile(path: string): Promise<Stats> {
  let st: Stats;
  try {
    st = await stat(path);
  } catch (cause) {
    throw openError(path, cause);
  }
  if (!st.isFile()) throw notRegular(path, st);
  return st;
}

export interface ReadRegularFileOptions {
  /** Largest accepted size in bytes; larger files reject with `ERR_LIMIT_EXCEEDED` before reading. */
  maxBytes?: number;
}

/** Reads a whole regular file (see {@link openRegularFile}), refusing files over `maxBytes`. */
export async function readRegularFile(path: string, options: ReadRegularFileOptions = {}): Promise<Buffer> {
  const { fh, stats } = await openRegularFile(path);
  try {
    if (options.maxBytes !== undefined && stats.size > options.maxBytes)
      throw new EmollmError('ERR_LIMIT_EXCEEDED', `${path}: ${stats.size} bytes exceeds the limit of ${options.maxBytes} bytes`, { file: path });
    const buf = Buffer.allocUnsafe(stats.size);
    let pos = 0;
    while (pos < stats.size) {
      const { bytesRead } = await fh.read(buf, pos, stats.size - pos, pos);
      if (bytesRead === 0) break; // shrank while reading
      pos += bytesRead;
    }
    return pos === stats.size ? buf : buf.subarray(0, pos);
  } catch (cause) {
    if (cause instanceof EmollmError) throw cause;
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: cannot read (${(cause as Error).message})`, { file: path, cause });
  } finally {
    await fh.close();
  }
}

/** {@link readRegularFile} as UTF-8 text. */
export async function readRegularTextFile(path: string, options: ReadRegularFileOptions = {}): Promise<string> {
  return (await readRegularFile(path, options)).toString('utf8');
}

/**
 * True when `a` and `b` name the same file: equal real paths, or (both existing) the same device
 * and inode. A missing `b` is never the same file.
 */
export async function sameFile(a: string, b: string): Promise<boolean> {
  if (resolve(a) === resolve(b)) return true;
  const [ra, rb] = await Promise.all([realpath(a).catch(() => undefined), realpath(b).catch(() => undefined)]);
  if (ra !== undefined && ra === rb) return true;
  const [sa, sb] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return sa !== undefined && sb !== undefined && sa.dev === sb.dev && sa.ino === sb.ino;
}

/** A temporary name beside `path` (same folder, so the final rename is atomic). */
function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/**
 * Runs `write(tempPath)` and renames the temporary file over `path` only when it succeeded (after
 * an fsync); on failure the temporary file is removed and `path` is untouched. When `path` is a
 * symlink, the link itself is replaced: the file it pointed at is never written through.
 */
export async function withAtomicOutput<T>(path: string, write: (tempPath: string) => Promise<T>): Promise<T> {
  const tmp = tempNameFor(resolve(path));
  try {
    const r = await write(tmp);
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    return r;
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** Writes `data` to `path` atomically (temporary file + fsync + rename). */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await withAtomicOutput(path, async (tmp) => {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
  });
}

/** {@link writeFileAtomic}, synchronously (for the evaluator's small report files). */
export function writeFileAtomicSync(path: string, data: string | Uint8Array): void {
  const tmp = tempNameFor(resolve(path));
  try {
    const fd = openSync(tmp, 'wx', 0o644);
    try {
      const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
      let pos = 0;
      while (pos < buf.length) pos += writeSync(fd, buf, pos, buf.length - pos);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
    throw e;
  }
}

/**
 * `rel` resolved under `root`, following symlinks: refused with `ERR_UNSAFE_PATH` when `rel` is
 * absolute, contains a `..` segment, or its real path (where it exists) lies outside the real
 * root. A missing file is returned as its lexical path (the caller reports it as missing).
 */
export async function confinedPath(root: string, rel: string): Promise<string> {
  if (typeof rel !== 'string' || rel === '') throw new EmollmError('ERR_UNSAFE_PATH', 'empty media path');
  if (rel.includes('\0')) throw new EmollmError('ERR_UNSAFE_PATH', `media path ${JSON.stringify(rel)} contains a NUL byte`);
  if (isAbsolute(rel) || /^[a-zA-Z]:[\\/]/.test(rel))
    throw new EmollmError('ERR_UNSAFE_PATH', `media path ${JSON.stringify(rel)} is absolute; benchmark media paths must be relative to the media root`);
  if (rel.split(/[\\/]+/).includes('..'))
    throw new EmollmError('ERR_UNSAFE_PATH', `media path ${JSON.stringify(rel)} contains "..": it may not leave the media root`);
  const absRoot = resolve(root);
  const lexical = resolve(absRoot, rel);
  const real = await realpath(lexical).catch(() => undefined);
  if (real === undefined) return lexical;
  const realRoot = await realpath(absRoot).catch(() => absRoot);
  if (real !== realRoot && !real.startsWith(realRoot.endsWith(sep) ? realRoot : realRoot + sep))
    throw new EmollmError('ERR_UNSAFE_PATH', `media path ${JSON.stringify(rel)} resolves to ${real}, outside the media root ${realRoot}`, { file: lexical });
  return real;
}
