// scripts/cuda-node-check.mjs is the check of the Node addon on a GPU (run by hand or by
// `bash scripts/gpu-suite.sh --node` on a CUDA machine; CI has no GPU). Here it runs on the strict
// emulated device, so the script itself (its API calls, references and exit codes) cannot rot:
// every check must pass there and it must exit 0; on a build or machine without CUDA, device
// 'cuda' must exit 2 saying why, not pass.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { runtimeInfo } from '../../lib/index.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const have = existsSync(join(shared, 'models', 'stories260K')) && existsSync(join(shared, 'models', 'llava-tiny-hf'));
if (!have) console.warn(`cuda-node-check test skipped: ${shared}/models/{stories260K,llava-tiny-hf} not found (set EMOLLM_SHARED_DIR)`);
const haveDist = existsSync(join(repoRoot, 'dist', 'index.js'));
if (!haveDist) console.warn('cuda-node-check test skipped: dist/ not built (npx tsc -p tsconfig.json)');

function run(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [join(repoRoot, 'scripts', 'cuda-node-check.mjs'), '--shared', shared, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 120_000,
  });
}

describe.skipIf(!have || !haveDist)('scripts/cuda-node-check.mjs', () => {
  it('passes every check on the emulated device (exit 0)', () => {
    const r = run(['--device', 'emulated'], { EMOLLM_EMULATED_DEVICE: '1' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/stories260K 200 greedy tokens: emulated = llama2\.c run\.c/);
    expect(r.stdout).toMatch(/llava-tiny-hf 16 greedy tokens on emulated = transformers/);
    expect(r.stdout).not.toMatch(/^FAIL/m);
    expect(r.stdout).toMatch(/all checks passed/);
  }, 180_000);

  it.skipIf(runtimeInfo().devices.includes('cuda'))("exits 2 with the reason where 'cuda' cannot run", () => {
    const r = run([]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/no usable 'cuda' device/);
  }, 60_000);

  it('rejects an unknown flag (exit 2)', () => {
    const r = run(['--bogus']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown argument --bogus/);
  });
});
