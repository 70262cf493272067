// The addon's result arrays.
// - encodePixels / encodeImages with `out` (lib/model.ts ImageEncodeOptions, native/addon/vision_binding.cpp):
//   the tower writes the features straight into the caller's array and the call resolves to it;
//   the bits equal the fresh-array path; a wrong type / size / buffer is a typed error before any
//   work; two calls in flight on overlapping memory are refused; results without `out` never alias;
//   LLaVA-NeXT refuses `out` (ERR_UNSUPPORTED); EmoLLM takes one of its images' token counts (faces
//   included). An out detached while the tower writes it rejects. On ../shared/models/llava-tiny-hf.
// - logits({ all: true }) of a text model and of a prompt with images (native/addon/context_binding.cpp):
//   rows written into the result array directly, a new array every call. On ../shared/models/stories260K
//   and llava-tiny-hf. LLaVA-NeXT / Qwen2-VL encodes: a new array every call, written in place.
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { f32, imageQuestion, maxAbsDiff, repoRoot, shared, sharedModel } from './helpers/vlm_fixtures.js';
import { EmollmError, attention, gemm, loadModel, mvpProjection, type ChatMessage, type Model } from '../../lib/index.js';
import { native } from '../../lib/native.js';

const { dir, have } = sharedModel('llava-tiny-hf', 'reference/pixel_values.f32', 'encodeImages out tests');
const { dir: next, have: haveNext } = sharedModel('llava-next-tiny-hf', 'model.safetensors', 'encodeImages out (LLaVA-NeXT) test');

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);
const sameBits = (a: Float32Array, b: Float32Array): void => {
  expect(a.length).toBe(b.length);
  expect(Buffer.from(bits(a).buffer, bits(a).byteOffset, a.byteLength).equals(Buffer.from(bits(b).buffer, bits(b).byteOffset, b.byteLength))).toBe(true);
};
async function invalid(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(EmollmError);
  expect((e as EmollmError).code).toBe(code);
  expect((e as EmollmError).message).toMatch(message);
}

describe.skipIf(!have)('encodePixels out (llava-tiny-hf)', () => {
  let model: Model;
  let pixels: Float32Array;
  let two: Float32Array;
  let n: number;  // floats of one image's features
  beforeAll(async () => {
    model = await loadModel(dir, { threads: 2 });
    pixels = f32(join(dir, 'reference', 'pixel_values.f32'));
    two = new Float32Array(pixels.length * 2);
    two.set(pixels);
    two.set(pixels.map((x) => -x), pixels.length);
    n = model.info.vision!.nImageTokens * model.info.nEmbd;
  });
  afterAll(async () => model?.close());

  it('writes into the array the caller passed and resolves to it, with the bits of a fresh result', async () => {
    for (const [px, b] of [[pixels, 1], [two, 2]] as const) {
      const fresh = await model.encodePixels(px, b);
      expect(fresh.length).toBe(b * n);
      const out = new Float32Array(b * n).fill(Number.NaN);  // sentinel: every float must be written
      const buffer = out.buffer;
      const r = await model.encodePixels(px, b, undefined, { out });
      expect(r).toBe(out);
      expect(r.buffer).toBe(buffer);
      expect(out.some((x) => Number.isNaN(x))).toBe(false);
      sameBits(out, fresh);
      // a view at an offset into a larger buffer: only its floats are written
      const big = new Float32Array(b * n + 8).fill(-7);
      const view = big.subarray(3, 3 + b * n);
      expect(await model.encodePixels(px, b, undefined, { out: view })).toBe(view);
      sameBits(view, fresh);
      expect(Array.from(big.subarray(0, 3))).toEqual([-7, -7, -7]);
      expect(Array.from(big.subarray(3 + b * n))).toEqual([-7, -7, -7, -7, -7]);
    }
  });

  it('encodeImages (preprocessing included) takes out too', async () => {
    const img = join(dir, 'photo.jpg');
    const fresh = await model.encodeImages([img]);
    const out = new Float32Array(n);
    expect(await model.encodeImages([img], undefined, undefined, { out })).toBe(out);
    sameBits(out, fresh);
  });

  it('never aliases results without out; with out, each call overwrites the array it is given', async () => {
    const a = await model.encodePixels(pixels, 1);
    const keep = a.slice();
    const b = await model.encodePixels(pixels.map((x) => -x), 1);
    expect(b).not.toBe(a);
    expect(b.buffer).not.toBe(a.buffer);
    sameBits(a, keep);  // the first result is unchanged by the second call
    expect(bits(b).some((x, i) => x !== bits(keep)[i])).toBe(true);

    const out = new Float32Array(n);
    await model.encodePixels(pixels, 1, undefined, { out });
    sameBits(out, keep);
    const again = await model.encodePixels(pixels.map((x) => -x), 1, undefined, { out });
    expect(again).toBe(out);
    sameBits(out, b);  // the documented rule: the same out holds the latest call's features
  });

  it('rejects a wrong type, size or buffer with typed errors', async () => {
    const enc = (out: unknown, b = 1): Promise<unknown> =>
      model.encodePixels(b === 1 ? pixels : two, b, undefined, { out: out as Float32Array });
    await invalid(enc(new Float64Array(n)), 'ERR_INVALID_ARGUMENT', /out must be a Float32Array/);
    await invalid(enc(Array.from({ length: n }, () => 0)), 'ERR_INVALID_ARGUMENT', /out must be a Float32Array/);
    await invalid(enc(new DataView(new ArrayBuffer(n * 4))), 'ERR_INVALID_ARGUMENT', /out must be a Float32Array/);
    await invalid(enc(new Float32Array(n - 1)), 'ERR_INVALID_ARGUMENT', new RegExp(`out has ${n - 1} floats, expected .* = ${n}$`));
    await invalid(enc(new Float32Array(n + 1)), 'ERR_INVALID_ARGUMENT', /out has \d+ floats, expected/);
    await invalid(enc(new Float32Array(n), 2), 'ERR_INVALID_ARGUMENT', new RegExp(`expected .* = ${2 * n}$`));
    const resizable = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(n * 4, { maxByteLength: n * 8 });
    await invalid(enc(new Float32Array(resizable)), 'ERR_INVALID_ARGUMENT', /fixed-length buffer/);
    const growable = new SharedArrayBuffer(n * 4, { maxByteLength: n * 8 });
    await invalid(enc(new Float32Array(growable)), 'ERR_INVALID_ARGUMENT', /out must be over a fixed-length buffer/);
    const detached = new Float32Array(n);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    await invalid(enc(detached), 'ERR_INVALID_ARGUMENT', /out is detached/);
    // nothing was written into a refused array
    const short = new Float32Array(n - 1).fill(5);
    await enc(short).catch(() => undefined);
    expect(short.every((x) => x === 5)).toBe(true);
  });

  it('refuses an out whose memory a call still running writes, and frees it when that call settles', async () => {
    // the native calls directly: each claims its out before returning, and the claim is given back
    // on this thread once the work is done, so nothing settles between these synchronous calls
    type Enc = (px: Float32Array, b: number, faces: undefined, o: { out: Float32Array }) => Promise<Float32Array>;
    const handle = (model as unknown as { handle: { encodeImages: Enc } }).handle;
    const enc = (px: Float32Array, out: Float32Array): Promise<Float32Array> => handle.encodeImages(px, 1, undefined, { out });
    const neg = pixels.map((x) => -x);
    const out = new Float32Array(2 * n);
    const first = enc(pixels, out.subarray(0, n));
    // the same floats, and a view that overlaps them by one float, are refused synchronously
    expect(() => enc(pixels, out.subarray(0, n))).toThrow(/encodeImages: out overlaps the out array of a call still running/);
    expect(() => enc(pixels, out.subarray(n - 1, 2 * n - 1))).toThrow(/still running/);
    let code: unknown;
    try {
      enc(pixels, out.subarray(1, n + 1));
    } catch (e) {
      code = (e as EmollmError).code;
    }
    expect(code).toBe('ERR_INVALID_ARGUMENT');
    // the other half does not overlap: it runs at the same time
    const second = enc(neg, out.subarray(n));
    await Promise.all([first, second]);
    sameBits(out.subarray(0, n), await model.encodePixels(pixels, 1));
    sameBits(out.subarray(n), await model.encodePixels(neg, 1));
    // settled: the same memory is free again
    const view = out.subarray(0, n);
    expect(await enc(pixels, view)).toBe(view);
  });

  it('rejects a call whose out was detached (transferred) while the tower wrote it', async () => {
    type Enc = (px: Float32Array, b: number, faces: undefined, o: { out: Float32Array }) => Promise<Float32Array>;
    const handle = (model as unknown as { handle: { encodeImages: Enc } }).handle;
    const out = new Float32Array(n);
    const p = handle.encodeImages(pixels, 1, undefined, { out });
    const moved = structuredClone(out.buffer, { transfer: [out.buffer] });  // keeps the bytes alive
    await invalid(p, 'ERR_INVALID_ARGUMENT', /out was detached while the call wrote it/);
    expect(moved.byteLength).toBe(n * 4);
    // its range was given back: a new array over any memory runs
    expect((await model.encodePixels(pixels, 1)).length).toBe(n);
  });

  it.each([[true], ['after']] as [true | 'after'][])('releases out\'s claim when its worker cannot be allocated (ERR_OUT_OF_MEMORY), and the model stays usable (hook mode %s)', async (mode) => {
    // the native call directly: it claims out, then fails to make its worker (the test hook
    // testFailNextWorker: the next `new` of a worker fails as an allocation would; 'after': the
    // worker is made, deleted, then the same failure)
    type Enc = (px: Float32Array, b: number, faces: undefined, o?: { out: Float32Array }) => Promise<Float32Array>;
    const handle = (model as unknown as { handle: { encodeImages: Enc } }).handle;
    const fresh = await model.encodePixels(pixels, 1);
    const out = new Float32Array(n).fill(Number.NaN);
    native().testFailNextWorker(mode);
    let err: unknown;
    try {
      await handle.encodeImages(pixels, 1, undefined, { out });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EmollmError);
    expect((err as EmollmError).code).toBe('ERR_OUT_OF_MEMORY');
    expect((err as EmollmError).message).toMatch(/^encodeImages: out of memory/);
    expect(out.every((x) => Number.isNaN(x))).toBe(true);  // nothing ran
    // the claim was released: the same out is taken (a claim left behind refuses it: "still running")
    expect(await handle.encodeImages(pixels, 1, undefined, { out })).toBe(out);
    sameBits(out, fresh);
    // a fresh result's call fails the same way; the hook fires once
    native().testFailNextWorker(mode);
    await invalid(model.encodePixels(pixels, 1), 'ERR_OUT_OF_MEMORY', /encodeImages: out of memory/);
    sameBits(await model.encodePixels(pixels, 1), fresh);
  });
});

// A prompt with images, all positions' logits (a context's evalMultimodal, as logits({ all: true })
// runs it): the result array is made on the JavaScript thread at the spliced length (the image
// tokens once per image or already expanded), and the worker writes the rows into it.
describe.skipIf(!have)('evalMultimodal allLogits result arrays (llava-tiny-hf)', () => {
  it('has the spliced length, the same bits for a once-per-image and an expanded prompt, a new array every call', async () => {
    const model = await loadModel(dir, { threads: 2 });
    try {
      const feats = await model.encodeImages([join(dir, 'photo.jpg')]);
      const ids = model.promptTokens(imageQuestion(join(dir, 'photo.jpg')));
      const imageId = model.info.vision!.imageTokenId;
      const nImg = model.info.vision!.nImageTokens;
      const k = ids.indexOf(imageId);
      expect(k).toBeGreaterThanOrEqual(0);
      expect(ids.filter((t) => t === imageId)).toHaveLength(1);
      const expanded = [...ids.slice(0, k), ...Array.from({ length: nImg }, () => imageId), ...ids.slice(k + 1)];
      const V = model.info.nVocab;
      await model.exclusive(async (ctx) => {
        const once = await ctx.evalMultimodal(Int32Array.from(ids), feats, { allLogits: true });
        expect(once.length).toBe(expanded.length * V);
        const full = await ctx.evalMultimodal(Int32Array.from(expanded), feats, { allLogits: true });
        expect(full.buffer).not.toBe(once.buffer);
        sameBits(full, once);
        // image tokens that fit no rule: the splice's typed error (no result array was made)
        await expect(ctx.evalMultimodal(Int32Array.from([...ids, imageId]), feats, { allLogits: true }))
          .rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/image tokens/) });
      });
      // the last row agrees with the last-position path
      expect(maxAbsDiff(await model.logits({ tokens: ids, images: feats }), (await model.logits({ tokens: ids, images: feats }, { all: true })).subarray((expanded.length - 1) * V))).toBeLessThanOrEqual(1e-4);
    } finally {
      await model.close();
    }
  });

  it('refuses a spliced prompt longer than the context with eval\'s typed error', async () => {
    const model = await loadModel(dir, { threads: 1, contextSize: 64 });
    try {
      const feats = await model.encodeImages([join(dir, 'photo.jpg')]);
      const ids = model.promptTokens(imageQuestion(join(dir, 'photo.jpg')));
      if (ids.length - 1 + model.info.vision!.nImageTokens <= 64) return;  // the image fits: nothing to refuse
      await model.exclusive(async (ctx) => {
        await expect(ctx.evalMultimodal(Int32Array.from(ids), feats, { allLogits: true }))
          .rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/do not fit the context/) });
      });
    } finally {
      await model.close();
    }
  });
});

describe.skipIf(!haveNext)('encodeImages out (llava-next-tiny-hf)', () => {
  it('is ERR_UNSUPPORTED for LLaVA-NeXT (token counts follow the image size)', async () => {
    const model = await loadModel(next, { threads: 1 });
    try {
      await invalid(model.encodeImages([join(dir, 'photo.jpg')], undefined, undefined, { out: new Float32Array(16) }),
        'ERR_UNSUPPORTED', /out is supported for LLaVA models/);
    } finally {
      await model.close();
    }
  });
});

// Prompts with image parts (generate / chat / scoreOptions / logits): their features go into a
// recycled array of the model's pool (LoadModelOptions.recycleImageFeatures), handed back once
// the native call that copies them has returned.
describe.skipIf(!have)('recycled image features of prompts (llava-tiny-hf)', () => {
  const photo = join(dir, 'photo.jpg');
  const wide = join(next, 'wide.jpg');
  const ask = (image: string): ChatMessage[] => imageQuestion(image);
  let model: Model;
  let plain: Model;
  const pool = (m: Model): Float32Array[] | null => (m as unknown as { featurePool: Float32Array[] | null }).featurePool;
  beforeAll(async () => {
    model = await loadModel(dir, { threads: 2 });
    plain = await loadModel(dir, { threads: 2, recycleImageFeatures: false });
  });
  afterAll(async () => {
    await model?.close();
    await plain?.close();
  });

  it('reuses one array across prompts, never the caller\'s, with the bits of fresh features', async () => {
    expect(pool(plain)).toBeNull();
    const refPhoto = await plain.logits(ask(photo));
    const refWide = await plain.logits(ask(wide));
    expect(pool(model)).toEqual([]);
    // at each native submission, the features it is given are out of the pool (held by that prompt)
    const batch = (await model.sequences()) as unknown as Record<'logits' | 'score' | 'generate', (...a: unknown[]) => unknown>;
    const inPool: boolean[] = [];
    for (const [name, at] of [['logits', 1], ['score', 1], ['generate', 3]] as const) {
      const f = batch[name].bind(batch);
      Object.defineProperty(batch, name, {
        configurable: true,
        value: (...a: unknown[]) => {
          if (a[at]) inPool.push(pool(model)!.includes(a[at] as Float32Array));
          return f(...a);
        },
      });
    }
    sameBits(await model.logits(ask(photo)), refPhoto);
    expect(pool(model)).toHaveLength(1);
    const recycled = pool(model)![0]!;
    expect(recycled.length).toBe(model.info.vision!.nImageTokens * model.info.nEmbd);
    sameBits(await model.logits(ask(wide)), refWide);
    expect(pool(model)).toEqual([recycled]);  // the same array again
    // two prompts at once: each holds its own array while it runs (the second a new one)
    const [a, b] = await Promise.all([model.logits(ask(photo)), model.logits(ask(wide))]);
    sameBits(a, refPhoto);
    sameBits(b, refWide);
    expect(pool(model)).toHaveLength(2);
    expect(pool(model)).toContain(recycled);
    // generate and scoreOptions hand it back too, and give what the unpooled model gives
    const g = await model.generate(ask(photo), { maxTokens: 4 }).result;
    expect(g.tokens).toEqual((await plain.generate(ask(photo), { maxTokens: 4 }).result).tokens);
    const s = await model.scoreOptions(ask(wide), ['happy', 'sad']);
    expect(s.options.map((o) => o.logprob)).toEqual((await plain.scoreOptions(ask(wide), ['happy', 'sad'])).options.map((o) => o.logprob));
    const all = await model.logits(ask(photo), { all: true });
    sameBits(all, await plain.logits(ask(photo), { all: true }));
    expect(pool(model)).toHaveLength(2);
    expect(inPool).toHaveLength(6);  // logits x 4, generate, score (logits-all goes through a context)
    expect(inPool.every((x) => !x)).toBe(true);
    // features the caller holds (encodeImages / encodePixels results) never enter the pool
    const mine = await model.encodeImages([photo]);
    const keep = mine.slice();
    await model.logits({ tokens: model.promptTokens(ask(photo)), images: mine });
    await model.logits(ask(wide));
    expect(pool(model)).not.toContain(mine);
    sameBits(mine, keep);
  });

  // The native calls read the features in place on their worker / scheduler thread (no copy on
  // the event loop: native/addon/model_handle.h FeatureArg), so a recycled array goes back to the
  // pool only when its request settled, and the addon drops its reference exactly then.
  it('holds a recycled array until its request settles, then reuses it; the addon references it meanwhile', async () => {
    const refs = (): number => native().liveFeatureRefs();
    await model.logits(ask(photo));  // the pool holds one array
    expect(refs()).toBe(0);
    const batch = (await model.sequences()) as unknown as Record<'logits' | 'score' | 'generate', (...a: unknown[]) => unknown>;
    const seen: { name: string; held: number; inPoolAtSettle?: boolean; arr: Float32Array }[] = [];
    const originals: [string, unknown][] = [];
    for (const [name, at] of [['logits', 1], ['score', 1], ['generate', 3]] as const) {
      const f = batch[name];
      originals.push([name, f]);
      Object.defineProperty(batch, name, {
        configurable: true,
        value: (...a: unknown[]) => {
          const r = (f as (...x: unknown[]) => { id: number; promise: Promise<unknown> }).apply(batch, a);
          const rec = { name, held: refs(), arr: a[at] as Float32Array } as (typeof seen)[number];
          seen.push(rec);
          // runs before the library's own settlement handler (registered after this returns)
          void r.promise.then(
            () => (rec.inPoolAtSettle = pool(model)!.includes(rec.arr)),
            () => (rec.inPoolAtSettle = pool(model)!.includes(rec.arr)),
          );
          return r;
        },
      });
    }
    try {
      await model.logits(ask(wide));
      await model.scoreOptions(ask(photo), ['happy', 'sad']);
      await model.generate(ask(wide), { maxTokens: 3 }).result;
      expect(seen.map((x) => x.name)).toEqual(['logits', 'score', 'generate']);
      for (const x of seen) {
        expect(x.held).toBe(1);                // referenced by the request once submitted
        expect(x.inPoolAtSettle).toBe(false);  // not handed back before the request settled
        expect(pool(model)).toContain(x.arr);  // and handed back after it: a recycled array
      }
      expect(new Set(seen.map((x) => x.arr)).size).toBeLessThanOrEqual(2);  // the pool's, reused
      expect(refs()).toBe(0);
      // the context path (logits all) too: referenced while the call runs, released when it settles
      const ids = Int32Array.from(model.promptTokens(ask(photo)));
      const mine = await model.encodeImages([photo]);
      await model.exclusive(async (ctx) => {
        const p = ctx.evalMultimodal(ids, mine, { allLogits: true });
        expect(refs()).toBe(1);
        await p;
        expect(refs()).toBe(0);
      });
    } finally {
      for (const [name, f] of originals) Object.defineProperty(batch, name, { configurable: true, value: f });
    }
  });

  it('releases the reference of a request aborted or closed while queued; detached features are ERR_INVALID_ARGUMENT', async () => {
    const refs = (): number => native().liveFeatureRefs();
    const handle = (model as unknown as { handle: { createBatch(o: object): Awaited<ReturnType<Model['sequences']>> } }).handle;
    const ids = Int32Array.from(model.promptTokens(ask(photo)));
    const feats = await model.encodeImages([photo]);
    const text = Int32Array.from(model.tokenizer.encode('Once upon a time'));
    const one = handle.createBatch({ maxSequences: 1 });
    // a long generation holds the only slot: the image requests behind it wait in the queue
    const busy = one.generate(text, { maxTokens: 100000, temperature: 0 });
    const queued = one.logits(ids, feats);
    expect(refs()).toBe(1);
    one.abort(queued.id);
    await expect(queued.promise).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(refs()).toBe(0);
    // detached while the request holds it (here: queued, then run): rejected when it settles
    const doomed = new Float32Array(feats);
    const late = one.logits(ids, doomed);
    const moved = structuredClone(doomed.buffer, { transfer: [doomed.buffer] });  // keeps the bytes alive
    expect(doomed.length).toBe(0);
    one.abort(busy.id);  // the slot frees: the detached request runs
    await expect(late.promise).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/detached/) });
    expect(moved.byteLength).toBe(feats.byteLength);
    expect(refs()).toBe(0);
    // detached before the call: refused at once, nothing held
    expect(() => one.logits(ids, doomed)).toThrow(/detached/);
    // over a buffer that could shrink under the reading thread: refused too
    const resizable = new Float32Array(new ArrayBuffer(feats.byteLength, { maxByteLength: feats.byteLength }));
    resizable.set(feats);
    expect(() => one.logits(ids, resizable)).toThrow(/fixed-length/);
    await expect(model.logits({ tokens: [...ids], images: doomed })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(refs()).toBe(0);
    // closed with requests queued: each settles and lets its array go
    const busy2 = one.generate(text, { maxTokens: 100000, temperature: 0 });
    const a = one.score(ids, feats, [Int32Array.from([1])]);
    const b = one.generate(ids, { maxTokens: 2 }, undefined, feats);
    expect(refs()).toBe(2);
    const closing = one.close();
    await Promise.allSettled([busy.promise, busy2.promise, a.promise, b.promise]);
    await closing;
    expect(refs()).toBe(0);
    sameBits(feats, await model.encodeImages([photo]));  // never written
  });

  it('rejects a recycleImageFeatures that is not a boolean', async () => {
    await expect(loadModel(dir, { recycleImageFeatures: 1 as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

// logits({ all: true }) of a text model: the core writes every row into the result array itself
// (native/addon/context_binding.cpp EvalWorker), created per call on the JavaScript thread.
const stories = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
describe.skipIf(!existsSync(stories))('logits({ all: true }) result arrays (stories260K)', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(stories, { threads: 2 });
  });
  afterAll(async () => model?.close());

  it('holds the bits of the last-position path in its last row, and a new array every call', async () => {
    const ids = [1, 403, 407, 261, 378, 291, 276, 286];
    const all = await model.logits(ids, { all: true });
    const V = model.info.nVocab;
    expect(all.length).toBe(ids.length * V);
    expect(all.every((x) => Number.isFinite(x))).toBe(true);
    const keep = all.slice();
    const other = await model.logits(ids.slice(0, 5), { all: true });
    expect(other.buffer).not.toBe(all.buffer);
    sameBits(all, keep);  // the first result is unchanged by the second call
    expect(other.length).toBe(5 * V);
    // the last-position logits (the sequence scheduler's pass, its own copy) agree with the last
    // row written directly (not bit for bit: that pass computes only the last row's classifier)
    expect(maxAbsDiff(await model.logits(ids), all.subarray((ids.length - 1) * V))).toBeLessThanOrEqual(1e-4);
  });
});

// EmoLLM: each image's token count follows its face boxes (those that fall on the image), known
// before the tower runs (EmollmModel::image_token_counts): out must hold exactly those rows.
const emoFixture = join(repoRoot, 'tests', 'fixtures', 'emollm', 'gated-sum');
describe('encodeImages out (EmoLLM fixture, the native binding: the fixture has no tokenizer)', () => {
  it('writes its images\' rows (face boxes included) into out with the bits of a fresh result; a wrong size is refused', async () => {
    interface NModel {
      info(): { nEmbd: number; vision?: { imageSize: number; nImageTokens: number } };
      encodeImages(px: Float32Array, b: number, faces?: unknown, o?: { out: Float32Array }): Promise<Float32Array & { tokenCounts?: Int32Array }>;
      close(): Promise<void>;
    }
    const model = await (native() as unknown as { loadModel(p: string, o?: object): Promise<NModel> }).loadModel(emoFixture, { nCtx: 128 });
    try {
      const px = f32(join(emoFixture, 'pixel_values.f32'));
      const inputs = JSON.parse((await import('node:fs')).readFileSync(join(emoFixture, 'inputs.json'), 'utf8')) as { faces: unknown[]; token_counts: number[] };
      const v = model.info().vision!;
      const E = model.info().nEmbd;
      const b = px.length / (3 * v.imageSize ** 2);
      for (const faces of [undefined, inputs.faces]) {
        const fresh = await model.encodeImages(px, b, faces);
        const out = new Float32Array(fresh.length).fill(Number.NaN);
        const r = await model.encodeImages(px, b, faces, { out });
        expect(r).toBe(out);
        sameBits(out, fresh);
        expect(Array.from(r.tokenCounts!)).toEqual(Array.from(fresh.tokenCounts!));
        if (faces) expect(Array.from(r.tokenCounts!)).toEqual(inputs.token_counts);  // one face box falls off the image
        const again = await model.encodeImages(px, b, faces);
        expect(again.buffer).not.toBe(fresh.buffer);
        sameBits(again, fresh);
      }
      // the size without the face boxes' rows: refused before any work, nothing written
      const short = new Float32Array(b * v.nImageTokens * E).fill(3);
      await invalid(Promise.resolve().then(() => model.encodeImages(px, b, inputs.faces, { out: short })), 'ERR_INVALID_ARGUMENT',
        new RegExp(`out has ${short.length} floats, expected the images' token counts \\(${inputs.token_counts[0]! + inputs.token_counts[1]!}\\)`));
      expect(short.every((x) => x === 3)).toBe(true);
    } finally {
      await model.close();
    }
  });
});

// LLaVA-NeXT: encodeAnyres writes its images' packed rows into a new array each call (made on the
// JavaScript thread from the layouts' token counts).
describe.skipIf(!haveNext)('encodeImages results (llava-next-tiny-hf)', () => {
  it('a new array every call, with tokenCounts and the same bits', async () => {
    const model = await loadModel(next, { threads: 2 });
    try {
      const imgs = [join(dir, 'photo.jpg'), join(next, 'wide.jpg')];
      const a = await model.encodeImages(imgs);
      const b = await model.encodeImages(imgs);
      expect(b.buffer).not.toBe(a.buffer);
      sameBits(a, b);
      const counts = Array.from(a.tokenCounts!);
      expect(counts).toHaveLength(2);
      expect(a.length).toBe(counts.reduce((x, y) => x + y, 0) * model.info.nEmbd);
      expect(a.every((x) => Number.isFinite(x))).toBe(true);
    } finally {
      await model.close();
    }
  });
});

// The kernel bindings' `out` claim when the worker cannot be allocated (the test hook
// testFailNextWorker): a typed ERR_OUT_OF_MEMORY, thrown before any work, nothing written, and
// the claim released (a second call with the same out runs). Without the conversion a
// std::bad_alloc leaving a binding ends the process.
describe('the kernel bindings release out when their worker cannot be allocated', () => {
  const M = 3, N = 8, K = 32;
  const x = new Float32Array(M * K).map((_, i) => (i % 5) - 2);
  const w = new Float32Array(N * K).map((_, i) => (i % 3) - 1);
  const q = new Float32Array(2 * 16).map((_, i) => (i % 7) / 7);
  const calls: [string, (out?: Float32Array) => Promise<Float32Array>, number][] = [
    ['gemm', (out) => gemm({ x, w, wtype: 'f32', m: M, n: N, k: K, out }), M * N],
    ['attention', (out) => attention({ q, k: q, v: q, nQ: 2, nKv: 2, nHeads: 1, nKvHeads: 1, headDim: 16, causal: true, out }), 32],
    ['mvpProjection', (out) => mvpProjection({
      x: new Float32Array(2 * 32).fill(0.5), w1: new Float32Array(32 * 32).fill(0.25), w2: new Float32Array(16 * 32).fill(0.125),
      g: new Float32Array(16).fill(1), wtype: 'f32', tokens: 2, dIn: 32, dHid: 32, dOut: 16, nHeads: 1, out,
    }), 32],
  ];
  it.each(calls)('%s', async (what, call, count) => {
    const fresh = await call();
    const out = new Float32Array(count).fill(Number.NaN);
    native().testFailNextWorker();
    let err: unknown;
    try {
      await call(out);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EmollmError);
    expect((err as EmollmError).code).toBe('ERR_OUT_OF_MEMORY');
    expect((err as EmollmError).message).toMatch(new RegExp(`^${what}: out of memory`));
    expect(out.every((v) => Number.isNaN(v))).toBe(true);
    expect(await call(out)).toBe(out);  // the claim was released
    sameBits(out, fresh);
    native().testFailNextWorker();  // without out too (thrown synchronously: the kernel calls are not async); the hook fires once
    expect(() => call()).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_MEMORY' }));
    sameBits(await call(), fresh);
  });
});
