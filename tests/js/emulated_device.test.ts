// The model API on the strict emulated device (native/core/emulated_device_backend.h: device
// memory the host cannot read, every op's pointers checked): stories260K loaded with
// { device: 'emulated' } gives run.c's 200 greedy tokens and its logits within 1e-4, alone and
// with several sequences batched. The multimodal models run on it vision included (their towers'
// and heads' weights uploaded at load; a weight left in the mmap would be refused by the device,
// a host read of its memory would crash the process): llava-tiny-hf, llava-next-tiny-hf and
// qwen2-vl-tiny-hf (and EmoLLM on Qwen2-VL from init-mvp) give the CPU's image features within
// 1e-5 and transformers' logits within 1e-4 and greedy tokens. The device exists only with
// EMOLLM_EMULATED_DEVICE=1.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initMvp, loadModel, runtimeInfo, type Model } from '../../lib/index.js';
import type { Device } from '../../lib/runtime.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const dir = join(shared, 'models', 'stories260K');
const GGUF = join(dir, 'gguf', 'stories260K.gguf');
const have = existsSync(GGUF);
if (!have) console.warn(`emulated device tests skipped: ${dir} not found (set EMOLLM_SHARED_DIR)`);

const emulated = 'emulated' as Device;

function oracleTokens(): number[] {
  return readFileSync(join(dir, 'oracle', 'greedy_n200_noprompt.tokens.txt'), 'utf8').trim().split(/\s+/).map(Number);
}

describe.skipIf(!have)('stories260K on the emulated device', () => {
  it('is no device unless EMOLLM_EMULATED_DEVICE=1', async () => {
    const saved = process.env.EMOLLM_EMULATED_DEVICE;
    delete process.env.EMOLLM_EMULATED_DEVICE;
    try {
      await expect(loadModel(GGUF, { device: emulated })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    } finally {
      if (saved !== undefined) process.env.EMOLLM_EMULATED_DEVICE = saved;
    }
  });

  it('greedy equals run.c alone and batched', async () => {
    process.env.EMOLLM_EMULATED_DEVICE = '1';
    const m = await loadModel(GGUF, { contextSize: 512, threads: 1, device: emulated, maxSequences: 3 });
    try {
      // really on the emulated device (not a silent fall-back to the CPU)
      expect(runtimeInfo().backends.some((b) => b.startsWith('emulated device'))).toBe(true);
      const oracle = oracleTokens();
      const r = await m.generate([1], { maxTokens: 200, temperature: 0 }).result;
      expect(r.tokens).toEqual(oracle.slice(1));
      // three sequences at once, each continuing a different prefix of the oracle
      const ks = [1, 5, 12];
      const rs = await Promise.all(ks.map((k) => m.generate(oracle.slice(0, k), { maxTokens: 30, temperature: 0 }).result));
      rs.forEach((x, i) => expect(x.tokens).toEqual(oracle.slice(ks[i]!, ks[i]! + 30)));
      // all-position logits come back from device memory and equal the CPU's within 1e-4
      const cpu = await loadModel(GGUF, { contextSize: 512, threads: 1 });
      try {
        const a = await m.logits(oracle.slice(0, 20), { all: true });
        const b = await cpu.logits(oracle.slice(0, 20), { all: true });
        expect(a.length).toBe(b.length);
        let d = 0;
        for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
        expect(d).toBeLessThanOrEqual(1e-4);
      } finally {
        await cpu.close();
      }
    } finally {
      await m.close();
    }
  });
});

// ---- multimodal models, vision included
const models = join(shared, 'models');
const f32 = (file: string): Float32Array => {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
};
// vision features on the device vs the CPU; logits vs transformers (the CPU tests' tolerance)
const FEAT_TOL = 1e-5;
const LOGIT_TOL = 1e-4;
const haveRef = (name: string): boolean => {
  const ok = existsSync(join(models, name, 'reference', 'expected.json'));
  if (!ok) console.warn(`${name} on the emulated device skipped: ${join(models, name)} not found (set EMOLLM_SHARED_DIR)`);
  return ok;
};

/** The same folder on the CPU and on the emulated device. */
function pair(folder: string): { cpu: () => Model; dev: () => Model } {
  let cpu: Model | undefined, dev: Model | undefined;
  beforeAll(async () => {
    process.env.EMOLLM_EMULATED_DEVICE = '1';
    cpu = await loadModel(folder, { threads: 1 });
    dev = await loadModel(folder, { threads: 1, device: emulated });
  });
  afterAll(async () => {
    await cpu?.close();
    await dev?.close();
  });
  return { cpu: () => cpu!, dev: () => dev! };
}

const llava = join(models, 'llava-tiny-hf');
describe.skipIf(!haveRef('llava-tiny-hf'))('llava-tiny-hf on the emulated device', () => {
  const m = pair(llava);
  it('CLIP + projector on the device: CPU features, transformers logits and greedy tokens', async () => {
    const e = JSON.parse(readFileSync(join(llava, 'reference', 'expected.json'), 'utf8')) as {
      input_ids_unexpanded: number[];
      greedy_new_tokens: number[];
    };
    const px = f32(join(llava, 'reference', 'pixel_values.f32'));
    const fd = await m.dev().encodePixels(px, 1);
    expect(maxAbsDiff(fd, await m.cpu().encodePixels(px, 1))).toBeLessThanOrEqual(FEAT_TOL);
    const logits = await m.dev().logits({ tokens: e.input_ids_unexpanded, images: fd }, { all: true });
    expect(maxAbsDiff(logits, f32(join(llava, 'reference', 'logits.f32')))).toBeLessThanOrEqual(LOGIT_TOL);
    const r = await m.dev().generate({ tokens: e.input_ids_unexpanded, images: fd }, { maxTokens: 16, temperature: 0 }).result;
    expect(r.tokens).toEqual(e.greedy_new_tokens);
  });
});

const next = join(models, 'llava-next-tiny-hf');
describe.skipIf(!haveRef('llava-next-tiny-hf'))('llava-next-tiny-hf on the emulated device', () => {
  const m = pair(next);
  for (const name of ['photo', 'wide']) {
    it(`${name}: anyres tiles and packing on the device: CPU features, transformers logits and greedy tokens`, async () => {
      const c = (JSON.parse(readFileSync(join(next, 'reference', 'expected.json'), 'utf8')) as Record<string, {
        input_ids: number[];
        greedy_new_tokens: number[];
        image_sizes: [[number, number]];
      }>)[name]!;
      const px = f32(join(next, 'reference', `${name}_pixel_values.f32`));
      const fd = await m.dev().encodeAnyresPixels(px, c.image_sizes);
      expect(maxAbsDiff(fd, await m.cpu().encodeAnyresPixels(px, c.image_sizes))).toBeLessThanOrEqual(FEAT_TOL);
      const logits = await m.dev().logits({ tokens: c.input_ids, images: fd }, { all: true });
      expect(maxAbsDiff(logits, f32(join(next, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(LOGIT_TOL);
      const r = await m.dev().generate({ tokens: c.input_ids, images: fd }, { maxTokens: 12, temperature: 0 }).result;
      expect(r.tokens).toEqual(c.greedy_new_tokens);
    });
  }
});

const qwen = join(models, 'qwen2-vl-tiny-hf');
const haveQwen = haveRef('qwen2-vl-tiny-hf');
describe.skipIf(!haveQwen)('qwen2-vl-tiny-hf on the emulated device', () => {
  const m = pair(qwen);
  const cases = [
    ['photo', 'photo_pixel_values.f32'],
    ['video', 'video_pixel_values_videos.f32'],
  ] as const;
  for (const [name, file] of cases) {
    it(`${name}: ViT + merger on the device: CPU features, transformers logits and greedy tokens`, async () => {
      const c = (JSON.parse(readFileSync(join(qwen, 'reference', 'expected.json'), 'utf8')) as Record<string, {
        input_ids: number[];
        greedy_new_tokens: number[];
        image_grid_thw?: [number, number, number][];
        video_grid_thw?: [number, number, number][];
      }>)[name]!;
      const grid = (c.image_grid_thw ?? c.video_grid_thw)![0]!;
      const px = f32(join(qwen, 'reference', file));
      const fd = await m.dev().encodePatches(px, [grid]);
      expect(maxAbsDiff(fd, await m.cpu().encodePatches(px, [grid]))).toBeLessThanOrEqual(FEAT_TOL);
      const logits = await m.dev().logits({ tokens: c.input_ids, images: fd }, { all: true });
      expect(maxAbsDiff(logits, f32(join(qwen, 'reference', `${name}_logits.f32`)))).toBeLessThanOrEqual(LOGIT_TOL);
      const r = await m.dev().generate({ tokens: c.input_ids, images: fd }, { maxTokens: 12, temperature: 0 }).result;
      expect(r.tokens).toEqual(c.greedy_new_tokens);
    });
  }
});

describe.skipIf(!haveQwen)('EmoLLM on Qwen2-VL on the emulated device', () => {
  let tmp = '';
  let cpu: Model | undefined, dev: Model | undefined;
  beforeAll(async () => {
    process.env.EMOLLM_EMULATED_DEVICE = '1';
    tmp = mkdtempSync(join(tmpdir(), 'emollm-emulated-'));
    await initMvp(qwen, join(tmp, 'emo'));
    cpu = await loadModel(join(tmp, 'emo'), { threads: 1 });
    dev = await loadModel(join(tmp, 'emo'), { threads: 1, device: emulated });
  });
  afterAll(async () => {
    await cpu?.close();
    await dev?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });
  it('the MVP heads around the merger on the device give the CPU features', async () => {
    const px = f32(join(qwen, 'reference', 'photo_pixel_values.f32'));
    const fd = await dev!.encodePatches(px, [[1, 4, 8]]);
    expect(maxAbsDiff(fd, await cpu!.encodePatches(px, [[1, 4, 8]]))).toBeLessThanOrEqual(FEAT_TOL);
  });
});
