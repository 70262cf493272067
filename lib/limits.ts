/**
 * Size limits on untrusted input, with their defaults (documented in docs/security.md). Each limit
 * can be changed per call through the option named beside it; going over one rejects with
 * `ERR_LIMIT_EXCEEDED` (images: `ERR_BAD_IMAGE`) before the expensive work starts.
 */
import { EmollmError } from './errors.js';

/** Bytes of one HTTP response body the EmoBench HTTP backend reads (`http.maxResponseBytes`). 8 MiB. */
export const DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

/**
 * Characters of one prompt string the model tokenizes (`LoadModelOptions.maxPromptChars`). Checked
 * by length before tokenizing, so an oversized prompt is refused in O(1) instead of blocking the
 * event loop while it is tokenized. 262 144 (256 Ki) characters.
 */
export const DEFAULT_MAX_PROMPT_CHARS = 256 * 1024;

/** Bytes of a benchmark JSONL file `emollm eval` reads (`EvalOptions.maxBenchBytes`). 256 MiB. */
export const DEFAULT_MAX_BENCH_BYTES = 256 * 1024 * 1024;

/** Bytes of a tokenizer / config JSON file read into memory. 512 MiB. */
export const DEFAULT_MAX_JSON_BYTES = 512 * 1024 * 1024;

/** Checks a user-given limit: a positive integer, or the default when undefined. */
export function limitOption(name: string, value: number | undefined, dflt: number): number {
  if (value === undefined) return dflt;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `${name} must be a positive integer, got ${String(value)}`);
  return value;
}
