// EmoLLM's Multi-perspective Visual Projection through the addon and the TypeScript API:
//  - tests/fixtures/emollm/{gated-sum,concat} (an independent PyTorch MVP module,
//    scripts/fixtures/make_mvp_fixture.py): info().emollm, encodeImages with face boxes (per-image
//    token counts), features and logits at every position within 1e-4;
//  - `emollm init-mvp` (lib/init_mvp.ts, the CLI): the checkpoint built from a stock LLaVA folder
//    gives the base model's features and logits exactly (closed heads), on
//    tests/fixtures/llava/layers-list and, through loadModel/chat/scoreOptions, on
//    ../shared/models/llava-tiny-hf (skipped visibly when absent).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initMvp, loadModel, type Model } from '../../lib/index.js';
import { native } from '../../lib/native.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixtures = join(repoRoot, 'tests', 'fixtures', 'emollm');
const layersList = join(repoRoot, 'tests', 'fixtures', 'llava', 'layers-list');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const haveTiny = existsSync(join(tiny, 'model.safetensors'));
if (!haveTiny) console.warn(`EmoLLM init-mvp tests on llava-tiny-hf skipped: ${tiny} not found (set EMOLLM_SHARED_DIR)`);

type Features = Float32Array & { tokenCounts?: Int32Array };
interface NCtx {
  evalMultimodal(tokens: Int32Array, images: Float32Array | null, o?: { allLogits?: boolean }): Promise<Float32Array>;
  score(prefix: Int32Array, images: Float32Array | null, conts: Int32Array[]): Promise<{ logprobs: number[] }>;
  close(): Promise<void>;
}
interface NModel {
  info(): {
    nEmbd: number;
    nVocab: number;
    vision?: { nImageTokens: number };
    emollm?: { fusion: string; nVisionTokens: number; perspectives: { name: string; type: string; gate: string; layers: number[] }[] };
  };
  encodeImages(pixels: Float32Array, b: number, faces?: ({ x: number; y: number; width: number; height: number }[] | null)[]): Promise<Features>;
  createContext(o?: { nCtx?: number }): NCtx;
  close(): Promise<void>;
}
const nativeLoad = (p: string, o?: Record<string, unknown>) =>
  (native() as unknown as { loadModel(p: string, o?: Record<string, unknown>): Promise<NModel> }).loadModel(p, o);

function f32(file: string): Float32Array {
  const b = readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe.each(['gated-sum', 'concat'])('EmoLLM fixture %s (PyTorch MVP reference)', (name) => {
  const dir = join(fixtures, name);
  let model: NModel;
  let inputs: { faces: { x: number; y: number; width: number; height: number }[][]; token_counts: number[]; input_ids_unexpanded: number[]; input_ids_expanded: number[] };
  beforeAll(async () => {
    model = await nativeLoad(dir, { nCtx: 128 });
    inputs = JSON.parse(readFileSync(join(dir, 'inputs.json'), 'utf8'));
  });
  afterAll(async () => {
    await model?.close();
  });

  it('describes its perspectives', () => {
    const e = model.info().emollm!;
    expect(e.fusion).toBe(name);
    expect(e.nVisionTokens).toBe(16);
    expect(e.perspectives.map((p) => p.type)).toEqual(
      name === 'gated-sum'
        ? ['mlp', 'mlp', 'multi-layer-mlp', 'attention-pool', 'face-region', 'mlp']
        : ['mlp', 'multi-layer-mlp', 'attention-pool', 'face-region'],
    );
    if (name === 'gated-sum') {
      expect(e.perspectives[2]!.layers).toEqual([2, 1]);
      expect(e.perspectives[5]!.gate).toBe('closed');
    }
  });

  it('features and logits match the reference within 1e-4', async () => {
    const feats = await model.encodeImages(f32(join(dir, 'pixel_values.f32')), 2, inputs.faces);
    expect(Array.from(feats.tokenCounts!)).toEqual(inputs.token_counts);
    const want = f32(join(dir, 'image_features.f32'));
    expect(feats.length).toBe(want.length);
    const fd = maxDiff(feats, want);
    expect(fd).toBeLessThan(1e-4);
    const ref = f32(join(dir, 'logits.f32'));
    const ctx = model.createContext({ nCtx: 128 });
    for (const ids of [inputs.input_ids_unexpanded, inputs.input_ids_expanded]) {
      const lg = await ctx.evalMultimodal(Int32Array.from(ids), feats, { allLogits: true });
      expect(lg.length).toBe(ref.length);
      expect(maxDiff(lg, ref)).toBeLessThan(1e-4);
    }
    // without face boxes: the face head adds nothing; counts are nImageTokens each
    const plain = await model.encodeImages(f32(join(dir, 'pixel_values.f32')), 2);
    expect(Array.from(plain.tokenCounts!)).toEqual([model.info().vision!.nImageTokens, model.info().vision!.nImageTokens]);
    const r = await ctx.score(Int32Array.from(inputs.input_ids_unexpanded), plain, [Int32Array.from([5, 6])]);
    expect(Number.isFinite(r.logprobs[0]!)).toBe(true);
    // a feature array whose counts do not fit the prompt is a typed error
    await expect(ctx.evalMultimodal(Int32Array.from(inputs.input_ids_expanded), plain)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await ctx.close();
  });
});

describe('emollm init-mvp', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'emollm-mvp-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('layers-list: the EmoLLM checkpoint equals the base exactly', async () => {
    const out = join(tmp, 'layers-list');
    const r = await initMvp(layersList, out);
    expect(r.section.perspectives.map((p) => p.gate)).toEqual(['open', 'closed', 'closed', 'closed']);
    expect(r.linked).toContain('model.safetensors');
    const base = await nativeLoad(layersList, { nCtx: 64 });
    const emo = await nativeLoad(out, { nCtx: 64 });
    try {
      expect(emo.info().emollm!.perspectives.map((p) => p.type)).toEqual(['mlp', 'multi-layer-mlp', 'attention-pool', 'face-region']);
      const px = f32(join(layersList, 'pixel_values.f32'));
      const a = await base.encodeImages(px, 1);
      const b = await emo.encodeImages(px, 1, [[{ x: 0, y: 0, width: 30, height: 30 }]]); // face head closed: ignored
      expect(Array.from(b.tokenCounts!)).toEqual([a.length / base.info().nEmbd]);
      expect(maxDiff(a, b)).toBe(0);
      const ids = JSON.parse(readFileSync(join(layersList, 'input_ids.json'), 'utf8')).input_ids_unexpanded as number[];
      const la = await base.createContext().evalMultimodal(Int32Array.from(ids), a, { allLogits: true });
      const lb = await emo.createContext().evalMultimodal(Int32Array.from(ids), b, { allLogits: true });
      expect(lb.length).toBe(la.length);
      expect(maxDiff(la, lb)).toBeLessThanOrEqual(1e-6);
    } finally {
      await base.close();
      await emo.close();
    }
  });

  it('the CLI writes the same checkpoint', () => {
    const out = join(tmp, 'cli');
    const cli = join(repoRoot, 'dist', 'cli.js');
    if (!existsSync(cli)) {
      console.warn('init-mvp CLI test skipped: dist/cli.js not built (npm run build:ts)');
      return;
    }
    const p = spawnSync(process.execPath, [cli, 'init-mvp', layersList, out, '--queries', '4', '--json'], { encoding: 'utf8' });
    expect(p.status, p.stderr).toBe(0);
    const r = JSON.parse(p.stdout) as { section: { perspectives: { n_queries?: number }[] } };
    expect(r.section.perspectives[2]!.n_queries).toBe(4);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg.emollm.weights).toBe('emollm_mvp.safetensors');
    expect(existsSync(join(out, 'emollm_mvp.safetensors'))).toBe(true);
  });

  describe.skipIf(!haveTiny)('llava-tiny-hf through loadModel', () => {
    let base: Model;
    let emo: Model;
    beforeAll(async () => {
      const out = join(tmp, 'tiny');
      await initMvp(tiny, out);
      base = await loadModel(tiny, { contextSize: 128 });
      emo = await loadModel(out, { contextSize: 128 });
    });
    afterAll(async () => {
      await base?.close();
      await emo?.close();
    });

    it('info().emollm describes the perspectives; logits, chat and scoreOptions equal the base', async () => {
      expect(base.info.emollm).toBeUndefined();
      expect(emo.info.emollm?.fusion).toBe('gated-sum');
      expect(emo.info.emollm?.perspectives.map((p) => p.gate)).toEqual(['open', 'closed', 'closed', 'closed']);
      expect(emo.info.vision?.nImageTokens).toBe(base.info.vision?.nImageTokens);
      const photo = join(tiny, 'photo.jpg');
      const messages = [
        {
          role: 'user',
          content: [
            { type: 'image', image: photo, faces: [{ x: 4, y: 4, width: 20, height: 24 }] },
            { type: 'text', text: 'How does the person feel?' },
          ],
        },
      ];
      const la = await base.logits(messages, { all: true });
      const lb = await emo.logits(messages, { all: true });
      expect(lb.length).toBe(la.length);
      expect(maxDiff(la, lb)).toBeLessThanOrEqual(1e-6);
      const ga = await base.chat({ messages, maxTokens: 8 }).result;
      const gb = await emo.chat({ messages, maxTokens: 8 }).result;
      expect(gb.tokens).toEqual(ga.tokens);
      const sa = await base.scoreOptions(messages, ['happy', 'sad']);
      const sb = await emo.scoreOptions(messages, ['happy', 'sad']);
      expect(sb.probabilities[0]).toBeCloseTo(sa.probabilities[0]!, 12);
    });
  });
});
