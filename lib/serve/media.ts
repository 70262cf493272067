/**
 * Images named by requests: `data:` URLs (decoded, size-limited) and local files, which must lie
 * under the configured media root once every symlink is resolved (a request never reads a file
 * outside it). Remote URLs are refused: the server fetches nothing.
 */
import { realpath, stat } from 'node:fs/promises';
import { isAbsolute, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { EmollmError } from '../errors.js';

export class RequestError extends EmollmError {
  readonly status: number;
  constructor(status: number, message: string) {
    super('ERR_INVALID_ARGUMENT', message);
    this.name = 'RequestError';
    this.status = status;
  }
}

export interface MediaPolicy {
  /** Real path of the folder local paths are confined to; undefined: local paths are refused. */
  root: string | undefined;
  /** Most bytes of one image (decoded data URL or file). */
  maxImageBytes: number;
}

/** Resolves the media root to its real path (once, at start). */
export async function mediaRoot(dir: string | undefined): Promise<string | undefined> {
  if (dir === undefined) return undefined;
  try {
    const r = await realpath(dir);
    if (!(await stat(r)).isDirectory()) throw new Error('not a folder');
    return r;
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `--media-root ${dir}: not a folder`, { file: dir, cause });
  }
}

/** A data URL's bytes, or a confined local path. */
export async function resolveImage(url: string, policy: MediaPolicy): Promise<Buffer | string> {
  if (url.startsWith('data:')) {
    const comma = url.indexOf(',');
    if (comma < 0) throw new RequestError(400, 'image_url: malformed data URL');
    const meta = url.slice(5, comma);
    if (!/^image\/[a-z0-9.+-]+(;[^,]*)?$/i.test(meta) && meta !== '' && !/^;base64$/i.test(meta))
      throw new RequestError(400, `image_url: a data URL of type ${JSON.stringify(meta.split(';')[0])} is not an image`);
    const payload = url.slice(comma + 1);
    const base64 = /;base64$/i.test(meta);
    // a cheap bound before decoding: base64 is 4 characters per 3 bytes
    const estimate = base64 ? Math.floor((payload.length * 3) / 4) : payload.length;
    if (estimate > policy.maxImageBytes + 3) throw new RequestError(413, `image_url: the image is over the ${policy.maxImageBytes}-byte limit`);
    const bytes = base64 ? Buffer.from(payload, 'base64') : Buffer.from(decodeURIComponent(payload), 'latin1');
    if (bytes.length > policy.maxImageBytes) throw new RequestError(413, `image_url: the image is over the ${policy.maxImageBytes}-byte limit`);
    if (bytes.length === 0) throw new RequestError(400, 'image_url: empty image');
    return bytes;
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) && !url.startsWith('file://'))
    throw new RequestError(400, 'image_url: only data: URLs and local paths under the media root are accepted (the server fetches no remote URL)');
  return resolveLocalPath(url.startsWith('file://') ? fileURLToPath(url) : url, policy);
}

/** A local file's real path, if it is under the media root (relative paths are relative to it). */
export async function resolveLocalPath(path: string, policy: MediaPolicy): Promise<string> {
  if (policy.root === undefined) throw new RequestError(400, 'local paths are not accepted: the server has no --media-root');
  const candidate = isAbsolute(path) ? resolve(path) : resolve(policy.root, path);
  const inside = (p: string): boolean => p === policy.root || p.startsWith(policy.root! + sep);
  // named outside (before any symlink): refused whether or not it exists
  if (!inside(candidate)) throw new RequestError(403, `${JSON.stringify(path)}: outside the media root`);
  let real: string;
  try {
    real = await realpath(candidate);
  } catch {
    throw new RequestError(400, `${JSON.stringify(path)}: no such file under the media root`);
  }
  // inside by name, outside through a symlink
  if (!inside(real)) throw new RequestError(403, `${JSON.stringify(path)}: outside the media root`);
  const st = await stat(real);
  if (!st.isFile()) throw new RequestError(400, `${JSON.stringify(path)}: not a file`);
  if (st.size > policy.maxImageBytes) throw new RequestError(413, `${JSON.stringify(path)}: over the ${policy.maxImageBytes}-byte limit`);
  return real;
}
