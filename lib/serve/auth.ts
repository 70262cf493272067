/**
 * Bearer-token authentication: the accepted keys come from a file (one a line; blank lines and
 * `#` comments ignored) and/or an environment variable (comma-separated). Keys are compared in
 * constant time over their SHA-256 digests.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { EmollmError } from '../errors.js';

export interface AuthSources {
  /** A file with one key a line. */
  keysFile?: string;
  /** The name of an environment variable holding comma-separated keys. */
  keysEnv?: string;
  env?: NodeJS.ProcessEnv;
}

const digest = (k: string): Buffer => createHash('sha256').update(k).digest();

/** The keys the sources name; throws when a named source is missing or empty. */
export function loadKeys(src: AuthSources): string[] {
  const keys: string[] = [];
  if (src.keysFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(src.keysFile, 'utf8');
    } catch (cause) {
      throw new EmollmError('ERR_FILE_NOT_FOUND', `--api-keys-file ${src.keysFile}: cannot read it`, { file: src.keysFile, cause });
    }
    const fromFile = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
    if (fromFile.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', `--api-keys-file ${src.keysFile}: holds no key`);
    keys.push(...fromFile);
  }
  if (src.keysEnv !== undefined) {
    const v = (src.env ?? process.env)[src.keysEnv];
    const fromEnv = (v ?? '').split(',').map((k) => k.trim()).filter((k) => k !== '');
    if (fromEnv.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', `--api-key-env ${src.keysEnv}: the variable is unset or empty`);
    keys.push(...fromEnv);
  }
  return keys;
}

/** A checker of `Authorization` headers; with no keys every request passes. */
export function bearerChecker(keys: readonly string[]): (header: string | undefined) => boolean {
  const digests = keys.map(digest);
  if (digests.length === 0) return () => true;
  return (header) => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    if (!m) return false;
    const d = digest(m[1]!);
    let ok = false;
    for (const k of digests) ok = timingSafeEqual(k, d) || ok; // no early exit
    return ok;
  };
}
