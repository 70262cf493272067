// The runtime configuration { device, threads }: one shape at every entry point (configure,
// loadModel, FaceAnalyzer.load / analyze, the CLI), one native runtime that owns the pools and
// backends, and the typed ERR_UNSUPPORTED for 'cuda' in a build without CUDA.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { EmollmError, FaceAnalyzer, configure, cpuInfo, loadModel, runtimeInfo } from '../../lib/index.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const GGUF = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const haveModel = existsSync(GGUF);
if (!haveModel) console.warn(`runtime model tests skipped: ${GGUF} not found (set EMOLLM_SHARED_DIR)`);
const cudaBuilt = runtimeInfo().cudaBuilt;
if (cudaBuilt) console.warn('runtime: this build has CUDA kernels; the no-CUDA error tests are skipped');

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(EmollmError);
    return (e as EmollmError).code;
  }
  return undefined;
}

describe('runtime configuration', () => {
  afterAll(() => configure({ threads: 0 }));

  it('configure sets the default threads that cpuInfo and runtimeInfo report', () => {
    configure({ threads: 3 });
    expect(cpuInfo().threads).toBe(3);
    expect(runtimeInfo().threads).toBe(3);
    expect(runtimeInfo().device).toBe('cpu');
    expect(cpuInfo().device).toBe('cpu');
    configure({ threads: 0 });
    expect(cpuInfo().threads).toBe(cpuInfo().physicalCores);
    expect(runtimeInfo().devices).toContain('cpu');
  });

  it('rejects bad runtime options with typed errors', async () => {
    expect(await codeOf(() => configure({ threads: -1 }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => configure({ threads: 1.5 }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => configure({ device: 'tpu' as 'cpu' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(loadModel(GGUF, { threads: 2000 }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(loadModel(GGUF, { device: 'gpu' as 'cpu' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(FaceAnalyzer.load({ threads: -2 }))).toBe('ERR_INVALID_ARGUMENT');
  });

  it.skipIf(cudaBuilt)("'cuda' without a CUDA build is ERR_UNSUPPORTED saying how to get one, at every entry point", async () => {
    let message = '';
    try {
      configure({ device: 'cuda' });
    } catch (e) {
      expect(e).toBeInstanceOf(EmollmError);
      expect((e as EmollmError).code).toBe('ERR_UNSUPPORTED');
      message = (e as EmollmError).message;
    }
    expect(message).toMatch(/npm run build:cmake/);
    expect(message).toMatch(/nvcc/);
    expect(runtimeInfo().device).toBe('cpu'); // the failed configure changed nothing
    expect(runtimeInfo().devices).not.toContain('cuda');
    expect(await codeOf(loadModel(GGUF, { device: 'cuda' }))).toBe('ERR_UNSUPPORTED');
    expect(await codeOf(FaceAnalyzer.load({ device: 'cuda' }))).toBe('ERR_UNSUPPORTED');
  });

  it.skipIf(!haveModel)('a model gets its backend from the runtime: shared by equal options, listed by runtimeInfo', async () => {
    const a = await loadModel(GGUF, { threads: 2 });
    const b = await loadModel(GGUF, { threads: 2 });
    try {
      const info = runtimeInfo();
      expect(info.backends.filter((d) => /2 threads/.test(d)).length).toBe(1);
      const pool = info.pools.find((p) => p.threads === 2);
      expect(pool).toBeDefined();
      // The same model on 1 and on 2 threads: the same greedy tokens.
      const one = await loadModel(GGUF, { threads: 1 });
      try {
        const x = await a.generate([1], { maxTokens: 24 }).result;
        const y = await one.generate([1], { maxTokens: 24 }).result;
        expect(Array.from(y.tokens)).toEqual(Array.from(x.tokens));
      } finally {
        await one.close();
      }
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('FaceAnalyzer.load takes the runtime options (its pool is the runtime pool of that size)', async () => {
    const faces = await FaceAnalyzer.load({ threads: 1 });
    expect(faces).toBeInstanceOf(FaceAnalyzer);
    expect(runtimeInfo().pools.some((p) => p.threads === 1 && p.users >= 1)).toBe(true);
  });

  const cli = join(repoRoot, 'dist', 'cli.js');
  it.skipIf(!existsSync(cli))('the CLI takes --device / --threads on any command (info shows them)', () => {
    const out = execFileSync(process.execPath, [cli, 'info', '--threads', '3', '--json'], { encoding: 'utf8' });
    const info = JSON.parse(out) as { threads: number; runtime: { threads: number; device: string } };
    expect(info.threads).toBe(3);
    expect(info.runtime.threads).toBe(3);
    expect(info.runtime.device).toBe('cpu');
    const text = execFileSync(process.execPath, [cli, 'info', '--device', 'cpu'], { encoding: 'utf8' });
    expect(text).toMatch(/runtime: +device cpu/);
    if (!cudaBuilt) {
      const r = spawnSync(process.execPath, [cli, 'info', '--device', 'cuda'], { encoding: 'utf8' });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/ERR_UNSUPPORTED/);
      expect(r.stderr).toMatch(/build:cmake/);
    }
    const bad = spawnSync(process.execPath, [cli, 'info', '--threads', 'many'], { encoding: 'utf8' });
    expect(bad.status).toBe(2); // a usage error, with the command's usage
    expect(bad.stderr).toMatch(/--threads must be a non-negative integer, got "many"/);
    expect(bad.stderr).toMatch(/usage: emollm info/);
  });
});
if (!existsSync(join(repoRoot, 'dist', 'cli.js'))) console.warn('runtime CLI test skipped: dist/cli.js not built (npm run build:ts)');
