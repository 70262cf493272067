/**
 * The model scheduler: every model call of `emollm serve` goes through it.
 *
 * A model serves `maxSequences` calls at once (the server passes the model's `maxSequences`: its
 * core decodes that many sequences together, one batched forward pass per step); up to `maxQueue`
 * more wait in arrival order; past that a call is refused at once with {@link QueueFullError}
 * (the server answers 429 with Retry-After). Admitting no more than the core runs keeps the
 * queue here, where its depth is measured (/metrics) and bounded, instead of in the core.
 *
 * Each call gets an AbortSignal that fires on the caller's signal or on its timeout, whether it is
 * still waiting (it leaves the queue) or running (the model call is cancelled).
 */
import { EmollmError } from '../errors.js';

export class QueueFullError extends EmollmError {
  /** Seconds after which a retry is likely to be admitted (the Retry-After header). */
  readonly retryAfterSeconds: number;
  constructor(retryAfterSeconds: number, depth: number) {
    super('ERR_BUSY', `the model's queue is full (${depth} waiting); retry after ${retryAfterSeconds} s`);
    this.name = 'QueueFullError';
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export class TimeoutError extends EmollmError {
  constructor(ms: number) {
    super('ERR_ABORTED', `the request took longer than its ${ms} ms timeout`);
    this.name = 'TimeoutError';
  }
}

export interface SchedulerOptions {
  /** Calls that run on the model at once (default 1; the server passes the model's maxSequences). */
  maxSequences?: number;
  /** Calls that may wait for a slot (default 16); one more is refused. */
  maxQueue?: number;
  /** Per-call time limit, waiting included (default none). */
  timeoutMs?: number;
}

export interface ScheduleOptions {
  signal?: AbortSignal;
  /** Overrides the scheduler's timeout for this call. */
  timeoutMs?: number;
}

interface Waiter {
  start: () => void;
  fail: (e: unknown) => void;
}

export class Scheduler {
  readonly maxSequences: number;
  readonly maxQueue: number;
  readonly timeoutMs: number | undefined;
  private running = 0;
  private readonly waiting: Waiter[] = [];
  /** Mean service time of finished calls (exponential moving average), for Retry-After. */
  private meanServiceMs = 1000;
  private idleResolvers: Array<() => void> = [];

  constructor(options: SchedulerOptions = {}) {
    this.maxSequences = options.maxSequences ?? 1;
    this.maxQueue = options.maxQueue ?? 16;
    this.timeoutMs = options.timeoutMs;
    if (!Number.isInteger(this.maxSequences) || this.maxSequences < 1) throw new EmollmError('ERR_INVALID_ARGUMENT', 'maxSequences must be an integer >= 1');
    if (!Number.isInteger(this.maxQueue) || this.maxQueue < 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'maxQueue must be an integer >= 0');
  }

  /** Calls waiting for a slot. */
  get queueDepth(): number {
    return this.waiting.length;
  }

  /** Calls running on the model. */
  get active(): number {
    return this.running;
  }

  /** Resolves when nothing runs and nothing waits. */
  idle(): Promise<void> {
    if (this.running === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleResolvers.push(resolve));
  }

  /** Runs `fn` when a slot is free; `fn` must honour the signal it is given. */
  async run<T>(fn: (signal: AbortSignal) => Promise<T>, options: ScheduleOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const ac = new AbortController();
    const onAbort = (): void => ac.abort(options.signal?.reason);
    if (options.signal?.aborted) throw new EmollmError('ERR_ABORTED', 'the request was cancelled');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = timeoutMs !== undefined ? setTimeout(() => ac.abort(new TimeoutError(timeoutMs)), timeoutMs) : undefined;
    const abortError = (): EmollmError =>
      ac.signal.reason instanceof TimeoutError ? ac.signal.reason : new EmollmError('ERR_ABORTED', 'the request was cancelled');
    try {
      if (this.running >= this.maxSequences) {
        if (this.waiting.length >= this.maxQueue) {
          const ahead = this.waiting.length + this.running;
          throw new QueueFullError(Math.max(1, Math.ceil((ahead * this.meanServiceMs) / this.maxSequences / 1000)), this.waiting.length);
        }
        await new Promise<void>((resolve, reject) => {
          const w: Waiter = { start: resolve, fail: reject };
          this.waiting.push(w);
          ac.signal.addEventListener(
            'abort',
            () => {
              const i = this.waiting.indexOf(w);
              if (i >= 0) {
                this.waiting.splice(i, 1);
                reject(abortError());
                this.checkIdle();
              }
            },
            { once: true },
          );
        });
      } else this.running++;
      // a slot is ours (the releaser counted it for us when it started us)
      const t0 = performance.now();
      try {
        if (ac.signal.aborted) throw abortError();
        return await fn(ac.signal);
      } catch (e) {
        if (ac.signal.aborted) throw abortError();
        throw e;
      } finally {
        this.meanServiceMs = 0.8 * this.meanServiceMs + 0.2 * (performance.now() - t0);
        this.release();
      }
    } finally {
      if (timer) clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next.start(); // the slot passes to the next waiter: running stays the same
    else this.running--;
    this.checkIdle();
  }

  private checkIdle(): void {
    if (this.running === 0 && this.waiting.length === 0) {
      const rs = this.idleResolvers;
      this.idleResolvers = [];
      for (const r of rs) r();
    }
  }
}
