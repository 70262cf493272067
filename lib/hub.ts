/**
 * Getting models from the Hugging Face hub (or a mirror of it) into the local hub cache, and
 * resolving `hf:owner/repo` paths to that cache.
 *
 * The repository's metadata comes through `@huggingface/hub` (`modelInfo` for the revision's
 * commit, `listFiles` for each file's size and hash); the files themselves are streamed by this
 * module so that it can do what that library's `downloadFileToCacheDir` does not: resume a broken
 * download from its `.incomplete` file with an HTTP Range request, check every file against the
 * hash the hub lists (SHA-256 for LFS files, the git blob SHA-1 for the others) before it
 * enters the cache, and report progress. The cache layout is the hub's own
 * (`models--owner--repo/{blobs,snapshots/<commit>,refs/<revision>}`, as Python's huggingface_hub
 * and `@huggingface/hub` write it), so caches are shared with those tools.
 *
 * ```ts
 * const r = await pull('TinyLlama/TinyLlama-1.1B-Chat-v1.0', { include: ['*.json', '*.safetensors'] });
 * const model = await loadModel('hf:TinyLlama/TinyLlama-1.1B-Chat-v1.0'); // r.dir, offline
 * ```
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rename, rm, stat, symlink, writeFile, copyFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';

import type { ListFileEntry } from '@huggingface/hub';

import { EmollmError } from './errors.js';

/** The public hub; `HF_ENDPOINT` (or the `endpoint` option) points elsewhere, e.g. a mirror. */
export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

/** A repository id and an optional revision, as `owner/name[@revision]`. */
export interface RepoSpec {
  repo: string;
  revision: string;
}

/** Progress of {@link pull}, reported as bytes arrive (at most every 100 ms per file, and at each file's end). */
export interface PullProgress {
  /** The file being downloaded (repository path). */
  file: string;
  /** Bytes of this file on disk so far (a resumed download starts at what was already there). */
  fileBytes: number;
  fileTotal: number;
  /** Bytes of all selected files on disk so far, and in all. */
  bytes: number;
  total: number;
  /** Index of the file among those to download, and how many. */
  index: number;
  files: number;
}

export interface PullOptions {
  /** Branch, tag or commit; default 'main' (or the `@revision` of the repo id). */
  revision?: string;
  /**
   * Only files matching one of these patterns (fnmatch-style, as huggingface_hub's
   * `allow_patterns`: `*` matches any characters, `/` included; `?` one; `[abc]` a set).
   */
  include?: readonly string[];
  /** The hub cache folder; default `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir?: string;
  /** The hub's base URL; default `HF_ENDPOINT`, else https://huggingface.co. */
  endpoint?: string;
  /** An access token (gated and private repositories); default `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`). */
  token?: string;
  onProgress?: (progress: PullProgress) => void;
  signal?: AbortSignal;
  /** The fetch implementation (tests, proxies). */
  fetch?: typeof fetch;
}

/** One file of a pull. */
export interface PulledFile {
  path: string;
  size: number;
  /** The hash it was checked against: 'sha256:…' (LFS) or 'git-sha1:…'. */
  checksum: string;
  /** 'cached': already in the cache; 'downloaded': fetched whole; 'resumed': continued from a partial file. */
  status: 'cached' | 'downloaded' | 'resumed';
  /** For 'resumed': bytes that were already on disk. */
  resumedFrom?: number;
}

export interface PullResult {
  repo: string;
  revision: string;
  /** The commit the revision resolved to. */
  commit: string;
  /** The snapshot folder: load this (or `hf:<repo>`). */
  dir: string;
  files: PulledFile[];
  /** Bytes transferred over the network by this call. */
  downloadedBytes: number;
}

/** Splits `owner/name[@revision]`. */
export function parseRepoSpec(spec: string): RepoSpec {
  const at = spec.lastIndexOf('@');
  const repo = at > 0 ? spec.slice(0, at) : spec;
  const revision = at > 0 ? spec.slice(at + 1) : 'main';
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo) || repo.includes('..'))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `${JSON.stringify(spec)} is not a hub model id (owner/name[@revision])`);
  if (revision === '' || revision.includes('..') || /[\s\\]/.test(revision))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `${JSON.stringify(spec)}: bad revision ${JSON.stringify(revision)}`);
  return { repo, revision };
}

/** The hub cache folder (the same rules as huggingface_hub). */
export function hubCacheDir(): string {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE;
  const home = process.env.HF_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

/** The cache folder of a model repository: `<cache>/models--owner--name`. */
export function repoCacheDir(repo: string, cacheDir = hubCacheDir()): string {
  return join(cacheDir, `models--${repo.split('/').join('--')}`);
}

/** fnmatch-style pattern to a RegExp (`*` crosses `/`, as huggingface_hub's allow_patterns). */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        const body = pattern.slice(i + 1, end);
        re += `[${body.startsWith('!') ? `^${body.slice(1)}` : body}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\/]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function token(options: PullOptions): string | undefined {
  const t = options.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  return t === '' ? undefined : t;
}

/** Turns @huggingface/hub's HttpError / fetch failures into an EmollmError. */
function hubError(what: string, e: unknown): EmollmError {
  if (e instanceof EmollmError) return e;
  const status = (e as { statusCode?: number }).statusCode;
  const hint =
    status === 401 || status === 403
      ? ' (a gated or private repository: set HF_TOKEN to a token with access)'
      : status === 404
        ? ' (no such repository, revision or file)'
        : '';
  const msg = e instanceof Error ? e.message : String(e);
  return new EmollmError('ERR_NETWORK', `${what}: ${msg}${hint}`, { cause: e });
}

function checkPath(path: string): void {
  const parts = path.split('/');
  if (path.startsWith('/') || path.includes('\\') || parts.includes('..') || parts.includes('.') || parts.includes(''))
    throw new EmollmError('ERR_MALFORMED_FILE', `the hub listed a file with an unsafe path: ${JSON.stringify(path)}`);
}

/** A Transform that hashes what passes, counts it and reports progress. */
function meter(hash: Hash, onBytes: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
}

async function hashFile(file: string, hash: Hash, upTo: number): Promise<void> {
  if (upTo === 0) return;
  await pipeline(createReadStream(file, { start: 0, end: upTo - 1 }), async function* (src: AsyncIterable<Buffer>) {
    for await (const chunk of src) hash.update(chunk);
    yield* [];
  });
}

/** Points `link` at `target` with a relative symlink (a copy where symlinks are not allowed). */
async function linkInto(target: string, link: string): Promise<void> {
  await mkdir(dirname(link), { recursive: true });
  await rm(link, { force: true });
  try {
    await symlink(relative(dirname(link), target), link);
  } catch {
    await copyFile(target, link);
  }
}

/**
 * Downloads a model repository (or the files of it matching `include`) into the hub cache at one
 * commit, resuming partial files and checking each file's hash. Files already in the cache are
 * not fetched again. Returns the snapshot folder.
 */
export async function pull(repoSpec: string, options: PullOptions = {}): Promise<PullResult> {
  const spec = parseRepoSpec(repoSpec);
  const repo = spec.repo;
  const revision = options.revision ?? spec.revision;
  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_HUB_ENDPOINT).replace(/\/+$/, '');
  const cacheDir = resolve(options.cacheDir ?? hubCacheDir());
  const accessToken = token(options);
  const fetchImpl = options.fetch ?? fetch;
  const signal = options.signal;
  const abortable: typeof fetch = (input, init) => fetchImpl(input, { ...init, ...(signal ? { signal } : {}) });
  // @huggingface/hub insists on tokens that look like the public hub's; a mirror's may not.
  const credentials = accessToken?.startsWith('hf_') ? { accessToken } : {};
  const hubFetch: typeof fetch =
    accessToken && !accessToken.startsWith('hf_')
      ? (input, init) => abortable(input, { ...init, headers: { ...(init?.headers as Record<string, string>), Authorization: `Bearer ${accessToken}` } })
      : abortable;

  // Loaded on first use: importing emollm (or running another command) does not pay for it.
  const { listFiles, modelInfo } = await import('@huggingface/hub');
  let commit: string;
  try {
    const info = await modelInfo({ name: repo, revision, hubUrl: endpoint, fetch: hubFetch, additionalFields: ['sha'], ...credentials });
    commit = String((info as { sha?: unknown }).sha ?? '');
  } catch (e) {
    if (signal?.aborted) throw new EmollmError('ERR_ABORTED', 'the download was aborted', { cause: e });
    throw hubError(`${repo}@${revision}`, e);
  }
  if (!/^[0-9a-f]{40}$/.test(commit)) throw new EmollmError('ERR_NETWORK', `${repo}@${revision}: the hub gave no commit hash`);

  const entries: ListFileEntry[] = [];
  try {
    for await (const e of listFiles({ repo, revision: commit, recursive: true, expand: false, hubUrl: endpoint, fetch: hubFetch, ...credentials }))
      if (e.type === 'file') entries.push(e);
  } catch (e) {
    if (signal?.aborted) throw new EmollmError('ERR_ABORTED', 'the download was aborted', { cause: e });
    throw hubError(`${repo}@${commit}: listing files`, e);
  }
  const patterns = (options.include ?? []).map(globToRegExp);
  const selected = patterns.length ? entries.filter((e) => patterns.some((p) => p.test(e.path))) : entries;
  if (selected.length === 0)
    throw new EmollmError(
      'ERR_FILE_NOT_FOUND',
      `${repo}@${revision}: no file matches ${options.include?.map((p) => JSON.stringify(p)).join(', ') ?? '(any)'} (the repository has ${entries.length}: ${entries.slice(0, 8).map((e) => e.path).join(', ')}${entries.length > 8 ? ', …' : ''})`,
    );

  const storage = repoCacheDir(repo, cacheDir);
  const snapshot = join(storage, 'snapshots', commit);
  await mkdir(join(storage, 'blobs'), { recursive: true });
  await mkdir(snapshot, { recursive: true });
  if (revision !== commit) {
    await mkdir(dirname(join(storage, 'refs', revision)), { recursive: true });
    await writeFile(join(storage, 'refs', revision), commit);
  }

  const total = selected.reduce((s, e) => s + (e.lfs?.size ?? e.size), 0);
  let done = 0;
  let downloadedBytes = 0;
  const files: PulledFile[] = [];
  for (const [index, entry] of selected.entries()) {
    checkPath(entry.path);
    const size = entry.lfs?.size ?? entry.size;
    const checksum = entry.lfs ? `sha256:${entry.lfs.oid}` : `git-sha1:${entry.oid ?? ''}`;
    const etag = entry.lfs?.oid ?? entry.oid;
    if (!etag || !/^[0-9a-f]{40,64}$/.test(etag))
      throw new EmollmError('ERR_MALFORMED_FILE', `${repo}: the hub listed ${entry.path} without a hash to check it against`);
    const blob = join(storage, 'blobs', etag);
    const pointer = join(snapshot, ...entry.path.split('/'));
    const report = (fileBytes: number): void =>
      options.onProgress?.({ file: entry.path, fileBytes, fileTotal: size, bytes: done + fileBytes, total, index, files: selected.length });
    if (existsSync(blob) && statSync(blob).size === size) {
      await linkInto(blob, pointer);
      files.push({ path: entry.path, size, checksum, status: 'cached' });
      done += size;
      report(size);
      continue;
    }
    const r = await downloadBlob({
      url: `${endpoint}/${repo}/resolve/${commit}/${entry.path.split('/').map(encodeURIComponent).join('/')}`,
      blob,
      size,
      checksum,
      accessToken,
      fetch: abortable,
      signal,
      label: `${repo}/${entry.path}`,
      onBytes: report,
    });
    downloadedBytes += r.transferred;
    await linkInto(blob, pointer);
    files.push({ path: entry.path, size, checksum, status: r.resumedFrom > 0 ? 'resumed' : 'downloaded', ...(r.resumedFrom > 0 ? { resumedFrom: r.resumedFrom } : {}) });
    done += size;
  }
  return { repo, revision, commit, dir: snapshot, files, downloadedBytes };
}

interface BlobDownload {
  url: string;
  blob: string;
  size: number;
  checksum: string;
  accessToken: string | undefined;
  fetch: typeof fetch;
  signal: AbortSignal | undefined;
  label: string;
  onBytes(fileBytes: number): void;
}

/** Streams one file into `<blob>.incomplete` (continuing it with a Range request), checks it, then renames it to the blob. */
async function downloadBlob(d: BlobDownload): Promise<{ transferred: number; resumedFrom: number }> {
  const partial = `${d.blob}.incomplete`;
  let have = existsSync(partial) ? statSync(partial).size : 0;
  if (have > d.size) {
    await rm(partial, { force: true });
    have = 0;
  }
  const headers: Record<string, string> = {};
  if (d.accessToken) headers.Authorization = `Bearer ${d.accessToken}`;
  if (have > 0) headers.Range = `bytes=${have}-`;
  let res: Response;
  try {
    res = await d.fetch(d.url, { headers, redirect: 'follow' });
  } catch (e) {
    if (d.signal?.aborted) throw new EmollmError('ERR_ABORTED', 'the download was aborted', { cause: e });
    throw new EmollmError('ERR_NETWORK', `${d.label}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (res.status === 416 && have === d.size) {
    // The partial file is already whole: only the check and the rename remain.
  } else if (!res.ok || !res.body) {
    const hint = res.status === 401 || res.status === 403 ? ' (set HF_TOKEN to a token with access)' : '';
    throw new EmollmError('ERR_NETWORK', `${d.label}: HTTP ${res.status} ${res.statusText}${hint}`);
  } else if (res.status !== 206) {
    have = 0; // the server ignored the Range: start over
  }
  const resumedFrom = have;
  const [algo, expected] = d.checksum.split(':') as ['sha256' | 'git-sha1', string];
  const hash = createHash(algo === 'sha256' ? 'sha256' : 'sha1');
  if (algo === 'git-sha1') hash.update(`blob ${d.size}\0`);
  await hashFile(partial, hash, have);
  let onDisk = have;
  let last = 0;
  d.onBytes(onDisk);
  if (res.ok && res.body && res.status !== 416) {
    try {
      await pipeline(
        Readable.fromWeb(res.body as WebReadableStream<Uint8Array>),
        meter(hash, (n) => {
          onDisk += n;
          const now = Date.now();
          if (now - last >= 100) {
            last = now;
            d.onBytes(onDisk);
          }
        }),
        createWriteStream(partial, { flags: have > 0 ? 'a' : 'w' }),
        ...(d.signal ? [{ signal: d.signal }] : []),
      );
    } catch (e) {
      if (d.signal?.aborted) throw new EmollmError('ERR_ABORTED', `${d.label}: the download was aborted (run again to resume)`, { cause: e });
      throw new EmollmError('ERR_NETWORK', `${d.label}: the download broke off after ${onDisk} bytes (run again to resume): ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }
  d.onBytes(onDisk);
  const got = (await stat(partial)).size;
  const digest = hash.digest('hex');
  if (got !== d.size || digest !== expected) {
    await rm(partial, { force: true });
    throw new EmollmError(
      'ERR_CHECKSUM',
      got !== d.size
        ? `${d.label}: got ${got} bytes, the hub lists ${d.size}; the partial file was removed`
        : `${d.label}: ${algo} ${digest} does not match the hub's ${expected}; the file was removed`,
      { file: partial },
    );
  }
  await rename(partial, d.blob);
  return { transferred: got - have, resumedFrom };
}

/** A parsed `hf:owner/name[@revision][/path/in/repo]`. */
export interface HfPath extends RepoSpec {
  /** A file or folder inside the repository, or '' for its root. */
  file: string;
}

/** Parses `hf:owner/name[@revision][/file]`. */
export function parseHfPath(path: string): HfPath {
  if (!path.startsWith('hf:')) throw new EmollmError('ERR_INVALID_ARGUMENT', `${JSON.stringify(path)} is not an hf: path`);
  const parts = path.slice(3).replace(/^\/+/, '').split('/');
  if (parts.length < 2) throw new EmollmError('ERR_INVALID_ARGUMENT', `${JSON.stringify(path)}: expected hf:owner/name[@revision][/file]`);
  const { repo, revision } = parseRepoSpec(`${parts[0]}/${parts[1]}`);
  const file = parts.slice(2).join('/');
  if (file) checkPath(file);
  return { repo, revision, file };
}

/**
 * The local path of `hf:owner/name[@revision][/file]` in the hub cache (no network: pull it first).
 * A repository holding one .gguf (besides an mmproj) resolves to that file; otherwise to the
 * snapshot folder.
 */
export function resolveHfPath(path: string, options: { cacheDir?: string } = {}): string {
  const { repo, revision, file } = parseHfPath(path);
  const storage = repoCacheDir(repo, options.cacheDir ?? hubCacheDir());
  let commit = revision;
  if (!/^[0-9a-f]{40}$/.test(revision)) {
    const ref = join(storage, 'refs', ...revision.split('/'));
    if (!existsSync(ref))
      throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: ${repo}@${revision} is not in the hub cache (${storage}); run \`emollm pull ${repo}${revision === 'main' ? '' : `@${revision}`}\` first`, {
        file: storage,
      });
    commit = readFileSync(ref, 'utf8').trim();
  }
  const snapshot = join(storage, 'snapshots', commit);
  if (!existsSync(snapshot))
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: snapshot ${commit} of ${repo} is not in the hub cache; run \`emollm pull ${repo}@${commit}\``, { file: snapshot });
  const target = file ? join(snapshot, ...file.split('/')) : snapshot;
  if (!resolve(target).startsWith(resolve(snapshot) + (file ? sep : ''))) throw new EmollmError('ERR_INVALID_ARGUMENT', `${path}: outside the snapshot`);
  if (!existsSync(target)) throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: ${file} was not pulled (emollm pull ${repo} --include '${file}')`, { file: target });
  if (file) return target;
  if (existsSync(join(snapshot, 'config.json'))) return snapshot;
  const ggufs = listGgufs(snapshot).filter((f) => !/mmproj/i.test(f));
  if (ggufs.length === 1) return join(snapshot, ggufs[0]!);
  if (ggufs.length > 1)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `${path}: the repository holds several GGUF files (${ggufs.join(', ')}); name one: hf:${repo}/${ggufs[0]}`);
  return snapshot;
}

function listGgufs(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.toLowerCase().endsWith('.gguf'));
}
