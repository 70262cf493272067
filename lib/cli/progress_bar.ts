/**
 * A one-line progress bar on stderr for long byte counts (downloads, model loading). On a
 * terminal it redraws in place; otherwise (a log, a pipe) it prints one line when an item is done.
 */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export class ProgressBar {
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private readonly started = Date.now();
  private lastDraw = 0;
  private lastLine = '';

  constructor(stream: NodeJS.WriteStream = process.stderr) {
    this.stream = stream;
    this.tty = stream.isTTY === true;
  }

  /** Draws `label` at done/total bytes (throttled to 10 redraws a second on a terminal). */
  update(label: string, done: number, total: number): void {
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    if (!this.tty) {
      if (done >= total && this.lastLine !== label) this.stream.write(`${label}: ${formatBytes(total)}\n`);
      if (done >= total) this.lastLine = label;
      return;
    }
    const now = Date.now();
    if (now - this.lastDraw < 100 && done < total) return;
    this.lastDraw = now;
    const width = 24;
    const filled = Math.round(frac * width);
    const secs = Math.max(0.001, (now - this.started) / 1000);
    const line = `${label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(done)}/${formatBytes(total)} ${formatBytes(done / secs)}/s`;
    this.stream.write(`\r${line}${' '.repeat(Math.max(0, this.lastLine.length - line.length))}`);
    this.lastLine = line;
  }

  /** Ends the bar's line. */
  done(): void {
    if (this.tty && this.lastLine) this.stream.write('\n');
    this.lastLine = '';
  }
}
