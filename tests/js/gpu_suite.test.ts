// scripts/gpu-suite.sh is the GPU check (npm run test:gpu / bench:cuda); CI has no GPU, so here
// only what it must do before any GPU work: reject unknown or malformed arguments (exit 2, saying
// which), print its usage for --help, and on a machine without an NVIDIA GPU exit 2 saying so
// instead of reporting success. Without bash (not a Linux/macOS runner) nothing here can run.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const script = join(repoRoot, 'scripts', 'gpu-suite.sh');
const haveBash = spawnSync('bash', ['-c', 'true']).status === 0;
if (!haveBash) console.warn('gpu-suite test skipped: no bash on this machine');
const haveGpu = haveBash && spawnSync('bash', ['-c', 'nvidia-smi -L']).status === 0;

function run(args: string[]) {
  return spawnSync('bash', [script, ...args], { encoding: 'utf8', timeout: 30_000 });
}

describe.skipIf(!haveBash)('scripts/gpu-suite.sh', () => {
  it('rejects an unknown argument with exit 2 and names it', () => {
    const r = run(['--tests', '--no-such-flag']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown argument '--no-such-flag'/);
    expect(r.stderr).toMatch(/^usage: /m);
  });

  it('rejects a budget that is not a whole number of seconds', () => {
    expect(run(['--budget', '5m']).status).toBe(2);
    expect(run(['--budget', '5m']).stderr).toMatch(/budget must be a whole number of seconds/);
    const missing = run(['--budget']);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/--budget needs a number of seconds/);
  });

  it('prints its usage with every step flag for --help', () => {
    const r = run(['--help']);
    expect(r.status).toBe(0);
    for (const flag of ['--tests', '--bench', '--node', '--native', '--memcheck', '--budget', '--arch']) {
      expect(r.stdout).toContain(flag);
    }
  });

  it.skipIf(haveGpu)('exits 2 saying why on a machine without an NVIDIA GPU', () => {
    for (const args of [[], ['--tests'], ['--bench', '--budget', '100']]) {
      const r = run(args);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/no NVIDIA GPU here .*nothing checked/);
      expect(r.stdout).not.toMatch(/passed/);
    }
  });
});
