/**
 * Typed errors. Every failure emollm reports, from JavaScript or from the native core, is an
 * {@link EmollmError} whose `code` says what kind of problem it is and, for file problems, which
 * file.
 */

/** Stable error codes. */
export type EmollmErrorCode =
  /** A caller passed a bad shape, dtype, option or value. */
  | 'ERR_INVALID_ARGUMENT'
  /** A path that does not exist or cannot be opened. */
  | 'ERR_FILE_NOT_FOUND'
  /** A weight or config file whose bytes contradict its own format. */
  | 'ERR_MALFORMED_FILE'
  /** Image data that cannot be used: corrupt, truncated, empty, an unsupported format, or over the pixel limit. */
  | 'ERR_BAD_IMAGE'
  /** A well-formed file or request using something emollm does not implement. */
  | 'ERR_UNSUPPORTED'
  /** config.json missing fields, wrong types, or an unknown model_type. */
  | 'ERR_BAD_CONFIG'
  /** An allocation or memory mapping failed. */
  | 'ERR_OUT_OF_MEMORY'
  /** No native binary could be loaded for this platform. */
  | 'ERR_NO_BINARY'
  /** A download or hub request failed (unreachable server, HTTP error, unauthorised, not found). */
  | 'ERR_NETWORK'
  /** Downloaded bytes whose size or hash differ from what the server declared. */
  | 'ERR_CHECKSUM'
  /** The operation was cancelled through an AbortSignal. */
  | 'ERR_ABORTED'
  /** A path that exists but is a FIFO, socket, device or folder where a regular file is needed (refused before any read). */
  | 'ERR_NOT_REGULAR_FILE'
  /** An input over a size limit: HTTP response bytes, prompt characters, file bytes (see docs/security.md). */
  | 'ERR_LIMIT_EXCEEDED'
  /** A path from untrusted data (a benchmark's media path) that is absolute, has `..`, or resolves outside its root. */
  | 'ERR_UNSAFE_PATH'
  /** A model file changed (size or modification time) after it was loaded and memory-mapped. */
  | 'ERR_FILE_CHANGED'
  /** An output that would destroy data: it is the input, or holds another run (use `force`). */
  | 'ERR_OUTPUT_EXISTS'
  /** A run folder locked by another live process. */
  | 'ERR_LOCKED'
  /** Sending a credential would leak it (plain http to a non-loopback host). */
  | 'ERR_INSECURE'
  /** A bounded queue is full: retry later (a server answers 429 with Retry-After). */
  | 'ERR_BUSY'
  /** A bug inside emollm. */
  | 'ERR_INTERNAL';

export interface EmollmErrorOptions {
  /** The file the error is about, when there is one. */
  file?: string;
  /** The underlying error. */
  cause?: unknown;
}

export class EmollmError extends Error {
  readonly code: EmollmErrorCode;
  readonly file: string | undefined;

  constructor(code: EmollmErrorCode, message: string, options: EmollmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'EmollmError';
    this.code = code;
    this.file = options.file;
  }
}

export function isEmollmError(e: unknown, code?: EmollmErrorCode): e is EmollmError {
  return e instanceof EmollmError && (code === undefined || e.code === code);
}
