// Model loading progress (LoadModelOptions.onProgress and the CLI bar) and the streamed text of a
// prompt continuation (its first token's leading space), on the real stories260K model.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

import { readThrough, weightFiles, type LoadProgress } from '../../lib/load_progress.js';
import { loadModel } from '../../lib/model.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const dir = join(shared, 'models', 'stories260K');
const GGUF = join(dir, 'gguf', 'stories260K.gguf');
const HF = join(dir, 'hf');
const have = existsSync(GGUF) && existsSync(join(repoRoot, 'build', 'Release', 'emollm.node'));
const cli = join(repoRoot, 'dist', 'cli.js');

describe('weight files and the read pass', () => {
  it.skipIf(!existsSync(HF))('lists a folder model\'s safetensors, a GGUF itself, and an mmproj', () => {
    expect(weightFiles(HF)).toEqual([join(HF, 'model.safetensors')]);
    expect(weightFiles(GGUF, HF + '/model.safetensors')).toEqual([GGUF, join(HF, 'model.safetensors')]);
  });

  it.skipIf(!existsSync(GGUF))('counts every byte, in order, and stops when aborted', async () => {
    const seen: LoadProgress[] = [];
    const total = await readThrough([GGUF, join(HF, 'model.safetensors')], (p) => seen.push(p));
    expect(total).toBe(statSync(GGUF).size + statSync(join(HF, 'model.safetensors')).size);
    expect(seen[seen.length - 1]!.bytes).toBe(total);
    expect(seen.every((p, i) => p.total === total && (i === 0 || p.bytes >= seen[i - 1]!.bytes))).toBe(true);
    expect(seen.map((p) => p.file)).toContain('model.safetensors');
    const ac = new AbortController();
    ac.abort();
    await expect(readThrough([GGUF], () => undefined, ac.signal)).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe.skipIf(!have)('loadModel onProgress', () => {
  it('reports the read of the weights, then the native load, and the model works', async () => {
    const events: LoadProgress[] = [];
    const m = await loadModel(GGUF, { contextSize: 64, onProgress: (p) => events.push({ ...p }) });
    try {
      const size = statSync(GGUF).size;
      const reads = events.filter((e) => e.phase === 'read');
      expect(reads.length).toBeGreaterThan(0);
      expect(reads[reads.length - 1]!.bytes).toBe(size);
      expect(events.slice(-2)).toEqual([
        { phase: 'load', file: 'stories260K.gguf', bytes: size, total: size, done: false },
        { phase: 'load', file: 'stories260K.gguf', bytes: size, total: size, done: true },
      ]);
      expect((await m.generate([1], { maxTokens: 4 }).result).tokens.length).toBe(4);
    } finally {
      await m.close();
    }
  });

  it('a folder model reports its safetensors; an abort during the read rejects with ERR_ABORTED', async () => {
    const ac = new AbortController();
    await expect(loadModel(HF, { tokenizer: GGUF, onProgress: () => ac.abort(), signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    const events: LoadProgress[] = [];
    const m = await loadModel(HF, { tokenizer: GGUF, contextSize: 64, onProgress: (p) => events.push(p) });
    await m.close();
    expect(events.find((e) => e.phase === 'read')?.total).toBe(statSync(join(HF, 'model.safetensors')).size);
  });

  it('Symbol.asyncDispose closes the model', async () => {
    const m = await loadModel(GGUF, { contextSize: 64 });
    await m[Symbol.asyncDispose]();
    await expect(m.generate([1], { maxTokens: 2 }).result).rejects.toThrow(/closed/);
  });
});

describe.skipIf(!have)('a prompt continuation keeps its first leading space', () => {
  it('generate("Once upon a") streams " time", an empty prompt starts without a space', async () => {
    const m = await loadModel(GGUF, { contextSize: 64 });
    try {
      const r = await m.generate('Once upon a', { maxTokens: 3 }).result;
      expect(r.text.startsWith(' time')).toBe(true);
      const fromBos = await m.generate([1], { maxTokens: 3 }).result;
      expect(fromBos.text.startsWith('Once')).toBe(true);
      // Token ids of a prompt with text are a continuation too.
      const ids = m.tokenize('Once upon a');
      expect((await m.generate(ids, { maxTokens: 3 }).result).text).toBe(r.text);
    } finally {
      await m.close();
    }
  });

  it.skipIf(!existsSync(cli))('emollm generate prints "Once upon a time", not "Once upona time"; the load line goes to stderr', () => {
    const r = spawnSync(process.execPath, [cli, 'generate', GGUF, 'Once upon a', '--max-tokens=3', '--context', '64'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.startsWith('Once upon a time')).toBe(true);
    expect(r.stderr).toMatch(/loading stories260K\.gguf: 1\.1 MiB/);
    expect(r.stderr).toMatch(/\[3 tokens, stop: max-tokens\]/);
  });
});
