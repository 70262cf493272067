// The CLI progress bar: redraws in place on a terminal, one line per finished item elsewhere.
import { describe, expect, it } from 'vitest';

import { ProgressBar, formatBytes } from '../../lib/cli/progress_bar.js';

function fakeStream(isTTY: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  let out = '';
  const stream = { isTTY, write: (s: string) => ((out += s), true) } as unknown as NodeJS.WriteStream;
  return { stream, text: () => out };
}

describe('ProgressBar', () => {
  it('formats byte counts', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });

  it('on a terminal: carriage-return redraws with a bar, percent and sizes; done() ends the line', () => {
    const { stream, text } = fakeStream(true);
    const bar = new ProgressBar(stream);
    bar.update('model.gguf', 0, 1024 * 1024);
    bar.update('model.gguf', 1024 * 1024, 1024 * 1024); // the end always draws
    bar.done();
    const t = text();
    expect(t.startsWith('\rmodel.gguf [------------------------]   0% 0 B/1.0 MiB')).toBe(true);
    expect(t).toContain('\rmodel.gguf [########################] 100% 1.0 MiB/1.0 MiB');
    expect(t.endsWith('\n')).toBe(true);
  });

  it('elsewhere: one line when an item is done, none while it runs', () => {
    const { stream, text } = fakeStream(false);
    const bar = new ProgressBar(stream);
    bar.update('a.bin', 10, 100);
    expect(text()).toBe('');
    bar.update('a.bin', 100, 100);
    bar.update('a.bin', 100, 100);
    bar.done();
    bar.update('b.bin', 5, 5);
    expect(text()).toBe('a.bin: 100 B\nb.bin: 5 B\n');
  });
});
