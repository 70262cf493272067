/**
 * A progress bar on stderr: done/total, rate and ETA, redrawn in place on a TTY (at most ~10 times
 * a second), plain lines elsewhere (every 5% or 10 seconds, whichever comes first).
 */

export interface ProgressOptions {
  /** Where to write (default process.stderr). */
  stream?: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /** Label in front of the bar. */
  label?: string;
  /** Force TTY / plain mode. */
  tty?: boolean;
  /** For tests: the clock, in ms. */
  now?: () => number;
}

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

export class Progress {
  private readonly stream: NonNullable<ProgressOptions['stream']>;
  private readonly tty: boolean;
  private readonly label: string;
  private readonly now: () => number;
  private readonly start: number;
  private lastDraw = -Infinity;
  private lastLineDone = 0;
  private done = 0;
  private errors = 0;
  private skipped = 0;

  /** `total`: samples to do in this session; `already`: done before (a resumed run). */
  constructor(
    readonly total: number,
    private readonly already = 0,
    options: ProgressOptions = {},
  ) {
    this.stream = options.stream ?? process.stderr;
    this.tty = options.tty ?? this.stream.isTTY === true;
    this.label = options.label ?? 'eval';
    this.now = options.now ?? ((): number => performance.now());
    this.start = this.now();
  }

  /** One sample finished. */
  tick(kind: 'ok' | 'error' | 'skipped' = 'ok'): void {
    this.done++;
    if (kind === 'error') this.errors++;
    if (kind === 'skipped') this.skipped++;
    const t = this.now();
    if (this.tty) {
      if (t - this.lastDraw >= 100 || this.done === this.total) {
        this.lastDraw = t;
        this.stream.write(`\r${this.line(t)}\x1b[K`);
      }
    } else {
      const step = Math.max(1, Math.ceil(this.total / 20));
      if (this.done === this.total || this.done - this.lastLineDone >= step || t - Math.max(this.lastDraw, this.start) >= 10_000) {
        this.lastDraw = t;
        this.lastLineDone = this.done;
        this.stream.write(`${this.line(t)}\n`);
      }
    }
  }

  /** The status line. */
  line(t = this.now()): string {
    const elapsed = t - this.start;
    const rate = elapsed > 0 ? (this.done * 1000) / elapsed : 0;
    const eta = rate > 0 ? ((this.total - this.done) / rate) * 1000 : NaN;
    const frac = this.total === 0 ? 1 : this.done / this.total;
    const width = 24;
    const fill = Math.round(frac * width);
    const bar = `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}]`;
    const extra = [this.errors ? `${this.errors} errors` : '', this.skipped ? `${this.skipped} skipped` : ''].filter((x) => x).join(', ');
    const resumed = this.already ? ` (+${this.already} resumed)` : '';
    return `${this.label} ${bar} ${this.done}/${this.total}${resumed} ${(frac * 100).toFixed(0)}% ${rate.toFixed(1)}/s ETA ${this.done === this.total ? '0s' : formatDuration(eta)}${extra ? ` ${extra}` : ''}`;
  }

  /** Ends the bar's line (TTY). */
  finish(): void {
    if (this.tty && this.done > 0) this.stream.write('\n');
  }

  elapsedMs(): number {
    return this.now() - this.start;
  }
}
