/**
 * What an EmoBench run says while it runs: the first failure of each kind is printed as it
 * happens (not only logged in predictions.jsonl), and a run of identical connection failures
 * stops the run early (every further sample would fail the same way).
 */
import { EmollmError } from '../errors.js';

/** A failure's kind: samples failing the same way share one. */
export function failureKind(message: string, code?: string): string {
  const m = message.toLowerCase();
  if (/econnrefused|connection refused/.test(m)) return 'connection refused';
  if (/enotfound|eai_again|getaddrinfo/.test(m)) return 'host not found';
  if (/econnreset|socket hang up|other side closed/.test(m)) return 'connection reset';
  if (/timed out|etimedout|timeout/.test(m)) return 'timeout';
  if (/network error|fetch failed/.test(m)) return 'network error';
  if (/\bffprobe\b|\bffmpeg\b/.test(m) && /not found|install/.test(m)) return 'no ffmpeg/ffprobe';
  const http = /http (\d)\d\d/.exec(m);
  if (http) return `HTTP ${http[1]}xx`;
  return code ?? 'error';
}

/** Kinds that mean the backend cannot be reached (what `stopAfter` counts). */
const CONNECTION_KINDS = new Set(['connection refused', 'host not found', 'connection reset', 'timeout', 'network error']);

export interface FailureWatchOptions {
  /** Where the first failure of each kind is reported (default: a line on stderr). */
  report?: (line: string) => void;
  /** Stop after this many consecutive identical connection failures (default 8; 0 = never). */
  stopAfter?: number;
}

/** Tracks failures during a run. */
export class FailureWatch {
  /** Kinds seen, with their count and first example. */
  readonly kinds = new Map<string, { count: number; first: string; id: string }>();
  private streak = 0;
  private streakKind = '';
  private readonly report: (line: string) => void;
  private readonly stopAfter: number;
  /** Set when the run should stop: the error to stop with. */
  stop: EmollmError | undefined;

  constructor(options: FailureWatchOptions = {}) {
    // on a terminal, clear the progress bar's line first
    this.report = options.report ?? ((line) => process.stderr.write(`${process.stderr.isTTY ? '\r\x1b[K' : ''}${line}\n`));
    this.stopAfter = options.stopAfter ?? 8;
  }

  /** A sample that succeeded (breaks a streak). */
  ok(): void {
    this.streak = 0;
  }

  /** A skipped sample (missing media). */
  skipped(id: string, message: string): void {
    this.note('missing media', id, message);
  }

  /** A failed sample. */
  error(id: string, message: string, code?: string): void {
    const kind = failureKind(message, code);
    this.note(kind, id, message);
    if (!CONNECTION_KINDS.has(kind)) {
      this.streak = 0;
      return;
    }
    // same kind, not same text: one refusing endpoint fails on several URLs (/models, /chat/completions)
    if (kind === this.streakKind) this.streak++;
    else {
      this.streak = 1;
      this.streakKind = kind;
    }
    if (this.stopAfter > 0 && this.streak >= this.stopAfter && !this.stop)
      this.stop = new EmollmError(
        'ERR_ABORTED',
        `stopped early: ${this.streak} samples in a row failed the same way (${kind}): ${message}. ` +
          'The predictions so far are kept; fix the cause and run the same command again to resume.',
      );
  }

  private note(kind: string, id: string, message: string): void {
    const k = this.kinds.get(kind);
    if (k) {
      k.count++;
      return;
    }
    this.kinds.set(kind, { count: 1, first: message, id });
    this.report(`eval: ${kind} (first seen on ${id}): ${message}`);
  }
}
