// loadModel's `prefaultContext` (LlamaContextOptions::prefault): the sequences' KV cache and
// activations are faulted in when the context is created (default), so the process's resident set
// grows by the cache's size before its first request runs (on the scheduler's thread: creation
// itself does not block the event loop); with `false` it does not (pages come as positions are
// written). Either way the logits are the same bits: only the memory's state differs. A value
// that is not a boolean is a typed error.
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { sharedModel } from './helpers/vlm_fixtures.js';
import { loadModel, type Model } from '../../lib/index.js';

const { dir: storiesDir, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'prefault tests on stories260K');
const stories = join(storiesDir, 'gguf', 'stories260K.gguf');

// Creates the model's sequences (Model.sequences() is @internal) and returns the resident-set
// growth once it has settled, and the KV cache's bytes. The scheduler faults a prefaulted
// context in on its own thread right after creation (creation itself returns at once, so the
// event loop is not blocked), so the growth is polled until it reaches `expect` bytes or 20 s
// pass; with expect = 0 it is read once, right after creation.
async function createContext(m: Model, expectFraction: number): Promise<{ grew: number; kvBytes: number }> {
  const before = process.memoryUsage().rss;
  await (m as unknown as { sequences(): Promise<unknown> }).sequences();
  const s = m.stats();
  const kvBytes = s.kvBytesPerBlock * s.kvBlocksTotal;
  let grew = process.memoryUsage().rss - before;
  for (const deadline = Date.now() + 20_000; grew < expectFraction * kvBytes && Date.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 10));
    grew = process.memoryUsage().rss - before;
  }
  return { grew, kvBytes };
}

describe.skipIf(!haveStories)('prefaultContext on stories260K', () => {
  it('rejects a value that is not a boolean', async () => {
    await expect(loadModel(stories, { prefaultContext: 'no' as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('makes the context resident at creation, and the logits do not depend on it', async () => {
    // 64 sequences x 512 positions: ~40 MiB of f32 KV cache, far above the process's other growth
    const opts = { contextSize: 512, maxSequences: 64, threads: 1 };
    const on = await loadModel(stories, { ...opts });
    const off = await loadModel(stories, { ...opts, prefaultContext: false });
    try {
      const a = await createContext(on, 0.9);
      expect(a.kvBytes).toBeGreaterThan(30 * 2 ** 20);
      expect(a.grew).toBeGreaterThan(0.9 * a.kvBytes);
      // stats say when the fault-in finished and how long it took (bench:llava's context column)
      for (const deadline = Date.now() + 20_000; !on.stats().contextReady && Date.now() < deadline; )
        await new Promise((r) => setTimeout(r, 5));
      expect(on.stats().contextReady).toBe(true);
      expect(on.stats().prefaultSeconds).toBeGreaterThan(0);
      // measured once the first context's fault-in has finished: the polling above stops at 90% of
      // its cache, and on a loaded machine its last pages (up to 10%, 4 MiB) could otherwise land
      // in this window
      const b = await createContext(off, 0);
      expect(b.grew).toBeLessThan(0.25 * b.kvBytes);
      // without a fault-in the context is ready at once and no time is reported
      for (const deadline = Date.now() + 20_000; !off.stats().contextReady && Date.now() < deadline; )
        await new Promise((r) => setTimeout(r, 5));
      expect(off.stats().contextReady).toBe(true);
      expect(off.stats().prefaultSeconds).toBe(0);
      const prompt = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.';
      const la = await on.logits(prompt);
      const lb = await off.logits(prompt);
      expect(Buffer.from(la.buffer, la.byteOffset, la.byteLength).equals(Buffer.from(lb.buffer, lb.byteOffset, lb.byteLength))).toBe(true);
    } finally {
      await on.close();
      await off.close();
    }
  });
});
