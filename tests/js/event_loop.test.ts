// The event loop stays free (issue 9, item 6): eight concurrent callers each generate, score
// options and analyze a large image, and each also sends a million-character prompt (refused
// from its length) and a 30 000-character one (tokenized on the worker thread), while
// perf_hooks.monitorEventLoopDelay samples the loop. Before the fix the long prompt was tokenized
// synchronously (about 2 s per call) and the face perspective copied every decoded pixel on the
// main thread; the loop's p99 delay was hundreds of milliseconds.
//
// This is a responsiveness assertion, not a benchmark: sampling runs only while the work is in
// flight, model and face weights are loaded before it starts, and the bound (p99 under 20 ms) is
// far above what a free loop shows and far below one blocked by a synchronous step. To stay
// robust on a loaded 2-core machine it counts, per gap between 1 ms ticks, the time the main
// thread itself ran (a thread waiting for a core is not blocked by emollm); see measure().
//
// Garbage collection is measured apart: the eight 12-megapixel decodes (36 MB of external memory
// each) make V8 run main-thread mark-compacts of 10-25 ms ("external memory pressure"), and over a
// busy period of about 2 s one such pause alone is above 1% of the time, so it decided the
// time-weighted p99 (CI failed on 23.2 ms, one GC). The p99 bounds therefore count the main
// thread's time outside GC pauses (PerformanceObserver 'gc' entries); the max-block bound (60 ms)
// and a bound on the GC share of the busy period still count the pauses. Each caller also runs its
// sequence twice (ROUNDS), so that 1% of the busy period is longer than one block.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { analyze } from '../../lib/analyze.js';
import { FaceAnalyzer } from '../../lib/face.js';
import { loadModel, type Model } from '../../lib/model.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const GGUF = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const have = existsSync(GGUF);
if (!have) console.warn(`event-loop test skipped: ${GGUF} not found (set EMOLLM_SHARED_DIR)`);

const CALLERS = 8;
const P99_LIMIT_MS = 20;
/** The longest the main thread may run inside one gap (a GC pause fits, a 1M-character tokenization does not). */
const MAX_BLOCK_MS = 60;
/** The most of the busy period the main thread may spend in GC pauses. */
const MAX_GC_SHARE = 0.25;
/** Each caller runs its sequence this many times, so that the busy period (about 2 s a round) is long
 * enough for a p99 to describe a distribution rather than the single longest block. */
const ROUNDS = 2;

const schedstat = `/proc/self/task/${process.pid}/schedstat`;
const haveSchedstat = existsSync(schedstat);
/** CPU time the main thread has run, in ms (Linux); undefined elsewhere. */
function mainThreadCpuMs(): number | undefined {
  if (!haveSchedstat) return undefined;
  return Number(readFileSync(schedstat, 'utf8').split(' ')[0]) / 1e6;
}

describe.skipIf(!have)('event loop under load', () => {
  let model: Model;
  let faces: FaceAnalyzer;
  let image: Buffer;
  const longPrompt = 'Once upon a time, there was a little girl. '.repeat(25_000); // ~1.1M characters
  const acceptedPrompt = longPrompt.slice(0, 30_000); // ~9000 tokens: ~0.1-0.8 s of tokenizing

  beforeAll(async () => {
    model = await loadModel(GGUF, { contextSize: 256, threads: 1 });
    faces = await FaceAnalyzer.load();
    // a 12-megapixel photo-like JPEG (gradient + noise, so it does not compress to nothing)
    const w = 4000;
    const h = 3000;
    const noise = await sharp({ create: { width: w, height: h, channels: 3, noise: { type: 'gaussian', mean: 128, sigma: 40 } } })
      .jpeg({ quality: 80 })
      .toBuffer();
    image = noise;
  }, 120_000);
  afterAll(async () => {
    await model?.close();
  });

  async function caller(i: number): Promise<void> {
    // the over-limit prompt is refused from its length, without tokenizing
    await expect(model.generate(longPrompt, { maxTokens: 4 }).result).rejects.toMatchObject({ code: 'ERR_LIMIT_EXCEEDED' });
    // a long prompt under the limit is tokenized on the tokenizer worker thread (then refused: it
    // does not fit the 256-token context)
    await expect(model.generate(acceptedPrompt, { maxTokens: 4 }).result).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/does not fit/) });
    const g = await model.generate(`Once upon a time ${i}`, { maxTokens: 16, temperature: 0 }).result;
    expect(g.tokens.length).toBeGreaterThan(0);
    const s = await model.scoreOptions('Lily was very', ['happy', 'sad', 'angry', 'scared']);
    expect(s.options).toHaveLength(4);
    const a = await analyze(image, { faces });
    expect(a.media).toBe('image');
  }

  /**
   * Samples the loop with a 1 ms interval timer. For each gap between ticks it records the gap and
   * the CPU time the main thread itself ran in it (Linux: /proc/self/task/<pid>/schedstat, in ns).
   * A gap the main thread spent running is the loop being blocked by work on it; a gap it spent
   * waiting for a core (other threads and processes on a loaded 2-core machine) is not. The
   * assertions use the main thread's own time per gap; monitorEventLoopDelay's raw histogram
   * (which counts both) is printed beside it.
   */
  async function measure(): Promise<{
    p99: number;
    timeP99: number;
    maxBlock: number;
    rawP99: number;
    rawMax: number;
    n: number;
    gcMs: number;
    gcMax: number;
    gcShare: number;
  }> {
    const h = monitorEventLoopDelay({ resolution: 1 });
    const gaps: Array<{ from: number; to: number; ran: number }> = [];
    const pauses: Array<{ from: number; to: number }> = [];
    const gcObserver = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) pauses.push({ from: e.startTime, to: e.startTime + e.duration });
    });
    gcObserver.observe({ entryTypes: ['gc'] });
    let lastCpu = mainThreadCpuMs();
    let last = performance.now();
    const start = last;
    const tick = setInterval(() => {
      const now = performance.now();
      const cpu = mainThreadCpuMs();
      gaps.push({ from: last, to: now, ran: cpu === undefined || lastCpu === undefined ? now - last : Math.min(now - last, cpu - lastCpu) });
      last = now;
      lastCpu = cpu;
    }, 1);
    h.enable();
    try {
      await Promise.all(
        Array.from({ length: CALLERS }, async (_, i) => {
          for (let r = 0; r < ROUNDS; r++) await caller(i);
        }),
      );
    } finally {
      h.disable();
      clearInterval(tick);
    }
    const wall = performance.now() - start;
    // the observer delivers entries asynchronously: let it flush before disconnecting
    await new Promise((r) => setTimeout(r, 50));
    gcObserver.disconnect();
    const inWindow = pauses.filter((p) => p.to > start && p.from < start + wall);
    const gcMs = inWindow.reduce((t, p) => t + (p.to - p.from), 0);
    const gcMax = inWindow.reduce((t, p) => Math.max(t, p.to - p.from), 0);
    const maxBlock = gaps.reduce((t, g) => Math.max(t, g.ran), 0);
    // the main thread's own time in each gap, less the GC pauses inside the gap
    const blocks = gaps.map((g) => {
      let gc = 0;
      for (const p of inWindow) gc += Math.max(0, Math.min(g.to, p.to) - Math.max(g.from, p.from));
      return Math.max(0, g.ran - gc);
    });
    blocks.sort((x, y) => x - y);
    // time-weighted p99: the block a random instant of the busy period falls in, at the 99th
    // percentile (a per-tick p99 counts a 2 s stall as one tick among thousands of 1 ms ones)
    let timeP99 = 0;
    for (let i = blocks.length - 1, above = 0; i >= 0; i--) {
      above += blocks[i]!;
      if (above > 0.01 * wall) {
        timeP99 = blocks[i]!;
        break;
      }
    }
    return {
      timeP99,
      p99: blocks[Math.min(blocks.length - 1, Math.floor(blocks.length * 0.99))] ?? 0,
      maxBlock,
      rawP99: h.percentile(99) / 1e6,
      rawMax: h.max / 1e6,
      n: blocks.length,
      gcMs,
      gcMax,
      gcShare: gcMs / wall,
    };
  }

  it(`p99 loop delay < ${P99_LIMIT_MS} ms with ${CALLERS} concurrent callers generating, scoring and analyzing`, async () => {
    const m = await measure();
    console.log(
      `event loop while busy (${m.n} ticks): main-thread time per gap outside GC p99 ${m.p99.toFixed(1)} ms (time-weighted ${m.timeP99.toFixed(1)} ms); ` +
        `max block with GC ${m.maxBlock.toFixed(1)} ms; GC pauses ${m.gcMs.toFixed(1)} ms (${(100 * m.gcShare).toFixed(1)}% of the busy period, longest ${m.gcMax.toFixed(1)} ms)` +
        `${haveSchedstat ? '' : ' (no schedstat: wall gaps)'}; monitorEventLoopDelay p99 ${m.rawP99.toFixed(1)} ms, max ${m.rawMax.toFixed(1)} ms (includes waiting for a core)`,
    );
    expect(m.n).toBeGreaterThan(20); // the work lasted long enough to be sampled
    expect(m.p99).toBeLessThan(P99_LIMIT_MS);
    expect(m.timeP99).toBeLessThan(P99_LIMIT_MS);
    // no single synchronous step (a long prompt tokenized, pixels copied) holds the loop
    expect(m.maxBlock).toBeLessThan(MAX_BLOCK_MS);
    expect(m.gcShare).toBeLessThan(MAX_GC_SHARE);
  }, 240_000);
});
