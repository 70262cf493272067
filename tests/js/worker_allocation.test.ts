// Every native call that makes a worker makes it with new_worker (native/addon/napi_util.h): when
// the worker cannot be allocated the call throws a typed ERR_OUT_OF_MEMORY naming itself, instead
// of a std::bad_alloc ending the process, and what the call claims (a context busy, the model's
// calls in flight, a trainer busy) is claimed only once the worker exists. The test hook
// testFailNextWorker (native/addon/testing_binding.cpp) makes the environment's next worker
// allocation fail. For each binding family (loaders, model, context, face, trainer): the call
// fails with the typed error, nothing is left claimed (the same object runs the next call with the
// same result, and closes), and the process survives (a vitest worker that died fails the file).
// The vision bindings (encodeImages, encodeAnyres, encodePatches): the call fails typed, the model
// runs the same call with the same bits, and closes (no call left counted in flight).
// Every case runs in both hook modes: `true` (the allocation fails before the worker exists) and
// 'after' (the worker is made, then deleted, then the same failure: a claim its constructor made
// would stay behind; claims are made by the binding's last step, claim_and_queue).
// The kernel and vision bindings' `out` claims: tests/js/result_arrays.test.ts.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { f32, nextExpected, repoRoot, sharedModel } from './helpers/vlm_fixtures.js';
import { EmollmError, FaceAnalyzer, initMvp, loadModel, type Model } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { createNativeTrainer } from '../../lib/train/train_mvp.js';
import { bitsEqual, settles, type RawContext, type RawModel } from './helpers/raw_context.js';

const { dir: stories, have: haveStories } = sharedModel('stories260K', 'gguf/stories260K.gguf', 'worker allocation tests (model, context, loaders)');
const { dir: tiny, have: haveTiny } = sharedModel('llava-tiny-hf', 'model.safetensors', 'worker allocation test (trainer)');
const { dir: next, have: haveNext } = sharedModel('llava-next-tiny-hf', 'reference/expected.json', 'worker allocation test (encodeAnyres)');
const { dir: qwen, have: haveQwen } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'worker allocation test (encodePatches)');
const gguf = join(stories, 'gguf', 'stories260K.gguf');

type HookMode = true | 'after';

// The call fails as the worker's allocation would: a typed error, thrown (or rejected) before any work.
async function outOfMemory(what: string, call: () => Promise<unknown>, mode: HookMode): Promise<void> {
  native().testFailNextWorker(mode);
  let err: unknown;
  try {
    await call();
  } catch (e) {
    err = e;
  } finally {
    native().testFailNextWorker(false);  // a call that made no worker with new_worker fails here, not the next test
  }
  expect(err, `${what} did not fail (does it make its worker with new_worker?)`).toBeInstanceOf(EmollmError);
  expect((err as EmollmError).code).toBe('ERR_OUT_OF_MEMORY');
  expect((err as EmollmError).message).toMatch(new RegExp(`^${what}: out of memory`));
}

type Raw = Record<string, (...args: unknown[]) => Promise<unknown>>;
const raw = (): Raw => native() as unknown as Raw;

// A vision call on a freshly loaded model: typed ERR_OUT_OF_MEMORY, then the same call's bits, then
// model.close() settles (a call left counted in flight would keep it waiting).
async function visionCall(dir: string, what: string, call: (m: Model) => Promise<Float32Array>, mode: HookMode): Promise<void> {
  const model = await loadModel(dir, { threads: 1 });
  let closing: Promise<void> | undefined;
  try {
    const before = await call(model);
    await outOfMemory(what, () => call(model), mode);
    expect(bitsEqual(await call(model), before)).toBe(true);
    closing = model.close();
    expect(await settles(closing), `${what}: model.close() never settled`).toBeUndefined();
  } finally {
    if (!closing) await model.close();
  }
}

describe.each([[true], ['after']] as [HookMode][])('hook mode %s', (mode) => {
  describe.skipIf(!haveStories)('loaders (inspectGguf, inspectSafetensors, readConfig)', () => {
    it.each([
      ['inspectGguf', gguf],
      ['inspectSafetensors', join(stories, 'hf', 'model.safetensors')],
      ['readConfig', join(stories, 'hf', 'config.json')],
    ])('%s', async (what, path) => {
      await outOfMemory(what, () => raw()[what]!(path), mode);
      // the hook fired once: the same call runs
      expect(await raw()[what]!(path)).toBeTypeOf('object');
    });
  });

  describe.skipIf(!haveStories)('model and context (stories260K)', () => {
    it('loadModel fails typed, then loads', async () => {
      await outOfMemory('loadModel', () => raw().loadModel!(gguf, { threads: 1 }), mode);
      const m = (await raw().loadModel!(gguf, { threads: 1 })) as RawModel;
      expect(await settles(m.close())).toBeUndefined();
    });

    describe('a context\'s calls', () => {
      let model: RawModel;
      let ctx: RawContext;
      const prompt = Int32Array.from([1, 403, 407, 261, 378]);
      let logits: Float32Array;
      beforeAll(async () => {
        model = (await raw().loadModel!(gguf, { threads: 1 })) as RawModel;
        ctx = model.createContext({ nCtx: 64 });
        logits = await ctx.eval(prompt);
      });
      afterAll(async () => {
        await model?.close();
      });

      it('eval', async () => {
        ctx.reset();
        await outOfMemory('eval', () => ctx.eval(prompt), mode);
        // not left busy ("context busy"): the same call, the same logits
        expect(ctx.nPast).toBe(0);
        expect(bitsEqual(await ctx.eval(prompt), logits)).toBe(true);
        expect(ctx.nPast).toBe(prompt.length);
      });

      it('score', async () => {
        const conts = [Int32Array.from([300]), Int32Array.from([301, 302])];
        const before = await ctx.score(prompt, null, conts);
        await outOfMemory('score', () => ctx.score(prompt, null, conts), mode);
        expect((await ctx.score(prompt, null, conts)).logprobs).toEqual(before.logprobs);
      });

      it('generate (with a token callback)', async () => {
        const greedy = { maxTokens: 6, temperature: 0 };
        ctx.reset();
        const before = await ctx.generate(prompt, greedy);
        const streamed: number[] = [];
        ctx.reset();
        await outOfMemory('generate', () => ctx.generate(prompt, greedy, (ids) => streamed.push(...ids)), mode);
        expect(streamed).toEqual([]);
        ctx.reset();
        const after = await ctx.generate(prompt, greedy, (ids) => streamed.push(...ids));
        expect(Array.from(after.tokens)).toEqual(Array.from(before.tokens));
        expect(streamed).toEqual(Array.from(before.tokens));
      });

      it('the context and the model close: no call was left counted in flight', async () => {
        await outOfMemory('eval', () => ctx.eval(prompt), mode);
        expect(await settles(ctx.close())).toBeUndefined();
        expect(await settles(model.close())).toBeUndefined();
      });
    });
  });

  describe('face models (detect, analyze, expressions, detectorForward)', () => {
    let analyzer: FaceAnalyzer;
    beforeAll(async () => {
      analyzer = await FaceAnalyzer.load({ threads: 1 });
    });
    afterAll(async () => {
      await analyzer?.close();
    });
    const W = 64, H = 48;
    const rgb = new Uint8Array(W * H * 3).map((_, i) => (i * 37) % 251);
    const crops = new Float32Array(112 * 112 * 3).map((_, i) => ((i * 13) % 255) / 255);
    const input = new Float32Array(64 * 64 * 3).map((_, i) => ((i * 7) % 255) / 255);
    const calls: [string, () => Promise<unknown>][] = [
      ['detect', () => analyzer.models.detect(rgb, W, H, { inputSize: 64, scoreThreshold: 0.5, iouThreshold: 0.4 })],
      ['analyze', () => analyzer.models.analyze(rgb, W, H, { inputSize: 64, scoreThreshold: 0.5, iouThreshold: 0.4 })],
      ['expressions', () => analyzer.models.expressions(crops, 1)],
      ['detectorForward', () => analyzer.models.detectorForward(input, 64)],
    ];
    it.each(calls)('%s', async (what, call) => {
      const before = await call();
      await outOfMemory(what, call, mode);
      expect(await call()).toEqual(before);
    });
  });

  describe.skipIf(!haveTiny)('the MVP trainer (tiny LLaVA)', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'emollm-worker-alloc-'));
    const start = join(tmp, 'start');
    beforeAll(async () => {
      await initMvp(tiny, start);
    }, 60_000);
    afterAll(() => rmSync(tmp, { recursive: true, force: true }));

    it('createMvpTrainer, then a call on it: typed, and the trainer is left free (no ERR_BUSY)', async () => {
      await outOfMemory('createMvpTrainer', () => createNativeTrainer(start, { threads: 1 }), mode);
      const trainer = await createNativeTrainer(start, { threads: 1 });
      try {
        const S = trainer.info().imageSize;
        const px = new Float32Array(3 * S * S).map((_, i) => ((i % 17) - 8) / 8);
        const before = await trainer.towerFeatures(px, 1);
        await outOfMemory('towerFeatures', () => trainer.towerFeatures(px, 1), mode);
        expect(bitsEqual(await trainer.towerFeatures(px, 1), before)).toBe(true);
        await outOfMemory('step', () => trainer.step(), mode);
        expect(trainer.stepsDone).toBe(0);
        expect(trainer.params().length).toBeGreaterThan(0);  // ERR_BUSY if the failed call had left it busy
      } finally {
        trainer.close();
      }
    }, 60_000);
  });

  describe.skipIf(!haveTiny)('encodeImages (llava-tiny-hf)', () => {
    it('fails typed; the same call runs with the same bits; the model closes', async () => {
      const pixels = f32(join(tiny, 'reference', 'pixel_values.f32'));
      await visionCall(tiny, 'encodeImages', (m) => m.encodePixels(pixels, 1), mode);
    }, 60_000);
  });

  describe.skipIf(!haveNext)('encodeAnyres (llava-next-tiny-hf)', () => {
    it('fails typed; the same call runs with the same bits; the model closes', async () => {
      const pixels = f32(join(next, 'reference', 'photo_pixel_values.f32'));
      const sizes = nextExpected(next).photo.image_sizes;
      await visionCall(next, 'encodeAnyres', (m) => m.encodeAnyresPixels(pixels, sizes), mode);
    }, 60_000);
  });

  describe.skipIf(!haveQwen)('encodePatches (qwen2-vl-tiny-hf)', () => {
    it('fails typed; the same call runs with the same bits; the model closes', async () => {
      const patches = f32(join(qwen, 'reference', 'photo_pixel_values.f32'));
      await visionCall(qwen, 'encodePatches', (m) => m.encodePatches(patches, [[1, 4, 8]]), mode);
    }, 60_000);
  });
});

// generate with a token callback makes a thread-safe function in its worker's constructor: a worker
// deleted without running (the hook's 'after' mode here; claim_and_queue when its claim or Queue()
// fails) must release it, or it keeps the event loop alive and the process never exits. In a child
// process (vitest's own would hide it), through the built dist/native.js.
describe.skipIf(!haveStories)('a generate worker deleted unrun releases its thread-safe function', () => {
  it('the process exits once the model is closed', () => {
    const nativeJs = join(repoRoot, 'dist', 'native.js');
    if (!existsSync(nativeJs)) {
      console.warn('thread-safe function exit test skipped: dist/native.js not built (npx tsc -p tsconfig.json)');
      return;
    }
    const script = `
      import { native } from ${JSON.stringify(nativeJs)};
      const model = await native().loadModel(${JSON.stringify(gguf)}, { threads: 1 });
      const ctx = model.createContext({ nCtx: 64 });
      native().testFailNextWorker('after');
      let code = 'none';
      try { await ctx.generate(Int32Array.from([1, 403, 407]), { maxTokens: 2 }, () => {}); } catch (e) { code = e.code; }
      await ctx.close();
      await model.close();
      process.stdout.write(code);`;
    const p = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(p.stderr).toBe('');
    expect(p.stdout).toBe('ERR_OUT_OF_MEMORY');
    expect(p.signal, 'the process did not exit: an unreleased thread-safe function keeps its event loop alive').toBeNull();
    expect(p.status).toBe(0);
  }, 30_000);
});
