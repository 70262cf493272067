// A context call reads its arguments through JavaScript (options objects, arrays) after checking the
// context usable; a getter there can close the context or start another call on it. The call then
// claims the context (ContextWorker::claim, native/addon/context_binding.cpp) only after checking
// again: it fails with the typed error a closed or busy context gives (ERR_INVALID_ARGUMENT
// "context is closed" / "context busy"), instead of queueing a worker on a context without its
// model state (a crash) or a second worker on the same KV cache. Nothing crashes (a vitest worker
// that died fails the file), and the context is usable (busy case) or closable (closed case) after.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';

import { sharedModel } from './helpers/vlm_fixtures.js';
import { EmollmError } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { bitsEqual, settles, type RawContext, type RawModel } from './helpers/raw_context.js';

const { dir: stories, have } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'context re-entrancy tests');
const gguf = join(stories, 'gguf', 'stories260K.gguf');

// The call fails (thrown or rejected) with ERR_INVALID_ARGUMENT and a message matching `message`.
async function failsWith(call: () => Promise<unknown>, message: RegExp): Promise<void> {
  let err: unknown;
  try {
    await call();
  } catch (e) {
    err = e;
  }
  expect(err, 'the call did not fail').toBeInstanceOf(EmollmError);
  expect((err as EmollmError).code).toBe('ERR_INVALID_ARGUMENT');
  expect((err as EmollmError).message).toMatch(message);
}

describe.skipIf(!have)('a getter in a context call\'s arguments (stories260K)', () => {
  let model: RawModel;
  const prompt = Int32Array.from([1, 403, 407, 261, 378]);
  let logits: Float32Array;
  beforeAll(async () => {
    model = (await (native() as unknown as { loadModel(p: string, o: object): Promise<RawModel> }).loadModel(gguf, { threads: 1 }));
    const ctx = model.createContext({ nCtx: 64 });
    logits = await ctx.eval(prompt);
    await ctx.close();
  });
  afterAll(async () => {
    if (model) expect(await settles(model.close())).toBeUndefined();  // no call left counted in flight
  });

  // Each call, with a getter that runs `inside` while the call reads its arguments (the first
  // time only: a binding may read an option more than once).
  const once = (f: () => void): (() => void) => {
    let done = false;
    return () => {
      if (!done) f();
      done = true;
    };
  };
  const calls: [string, (ctx: RawContext, inside: () => void) => Promise<unknown>][] = [
    ['eval (options getter)', (ctx, inside) => ctx.eval(prompt, { get allLogits() { inside(); return false; } })],
    ['eval allLogits (options getter)', (ctx, inside) => ctx.eval(prompt, { get allLogits() { inside(); return true; } })],
    ['score (continuations element getter)', (ctx, inside) => {
      const conts: Int32Array[] = [Int32Array.from([300])];
      Object.defineProperty(conts, 1, { enumerable: true, get() { inside(); return Int32Array.from([301, 302]); } });
      return ctx.score(prompt, null, conts);
    }],
    ['generate (options getter)', (ctx, inside) => ctx.generate(prompt, { temperature: 0, get maxTokens() { inside(); return 3; } })],
  ];

  it.each(calls)('%s closing the context: the call fails "context is closed"; the close resolves', async (_, call) => {
    const ctx = model.createContext({ nCtx: 64 });
    let closing: Promise<void> | undefined;
    await failsWith(() => call(ctx, once(() => { closing = ctx.close(); })), /context is closed/);
    expect(closing).toBeDefined();
    expect(await settles(closing!)).toBeUndefined();
    await failsWith(() => ctx.eval(prompt), /context is closed/);
  });

  it.each(calls)('%s starting another eval: the call fails "context busy"; the inner eval runs; the context runs on', async (_, call) => {
    const ctx = model.createContext({ nCtx: 64 });
    let inner: Promise<Float32Array> | undefined;
    await failsWith(() => call(ctx, once(() => { inner = ctx.eval(prompt); })), /context busy/);
    expect(inner).toBeDefined();
    expect(bitsEqual(await inner!, logits)).toBe(true);
    expect(ctx.nPast).toBe(prompt.length);
    ctx.reset();
    expect(bitsEqual(await ctx.eval(prompt), logits)).toBe(true);
    expect(await settles(ctx.close())).toBeUndefined();
  });
});
