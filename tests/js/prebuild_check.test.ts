// scripts/check-prebuild.mjs, the stand-alone check of a native binary that the cross-compiled
// prebuilds run under qemu-user (docs/platforms.md), run here on the host's build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const addon = join(repoRoot, 'build', 'Release', 'emollm.node');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const gguf = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');

describe.skipIf(!existsSync(addon))('scripts/check-prebuild.mjs', () => {
  it('passes on the host build: GEMM within tolerance per dtype, greedy tokens equal run.c', () => {
    const args = [join(repoRoot, 'scripts', 'check-prebuild.mjs'), addon, ...(existsSync(gguf) ? [gguf] : [])];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { ok: boolean; gemm: Record<string, number>; tokens?: number[]; oracleMatch?: boolean };
    expect(out.ok).toBe(true);
    expect(Object.keys(out.gemm)).toEqual(['f32', 'f16', 'q8_0', 'q4_0']);
    if (existsSync(gguf)) {
      expect(out.tokens).toHaveLength(48);
      expect(out.oracleMatch).toBe(true);
    }
  });

  it('fails without a binary', () => {
    const r = spawnSync(process.execPath, [join(repoRoot, 'scripts', 'check-prebuild.mjs')], { encoding: 'utf8' });
    expect(r.status).toBe(2);
  });
});

// scripts/check-musl-prebuild.mjs (docs/platforms.md, musl): a glibc binary must fail every musl
// check; a musl prebuild, when one was built here (npm run prebuild:linux-x64-musl), must pass.
const hasMuslGcc = spawnSync('musl-gcc', ['--version'], { stdio: 'ignore' }).status === 0;
if (!hasMuslGcc && process.env.CI) throw new Error('musl-gcc (Debian musl-tools) is missing: .ci/run installs it, CI must not skip the musl checks');
if (!hasMuslGcc) console.warn('check-musl-prebuild tests skipped: musl-gcc (Debian musl-tools) not installed');
describe.skipIf(!existsSync(addon) || !hasMuslGcc)('scripts/check-musl-prebuild.mjs', () => {
  const check = (file: string): { status: number | null; out: { ok: boolean; checks: Record<string, unknown> } } => {
    const r = spawnSync(process.execPath, [join(repoRoot, 'scripts', 'check-musl-prebuild.mjs'), file], { encoding: 'utf8' });
    return { status: r.status, out: JSON.parse(r.stdout) as { ok: boolean; checks: Record<string, unknown> } };
  };
  it('rejects the host (glibc) build: glibc libraries and versions, and musl cannot load it', () => {
    const r = check(addon);
    expect(r.status).toBe(1);
    expect(r.out.ok).toBe(false);
    expect(r.out.checks.needed).toContain('libstdc++.so.6');
    expect(r.out.checks.musl_dlopen).toMatch(/dlopen failed/);
  });
  const musl = join(repoRoot, 'prebuilds', 'linux-x64', 'emollm.musl.node');
  if (!existsSync(musl)) console.warn('musl prebuild check skipped: no prebuilds/linux-x64/emollm.musl.node here (npm run prebuild:linux-x64-musl builds it, ~25 min, so CI does not)');
  it.skipIf(!existsSync(musl))('passes on prebuilds/linux-x64/emollm.musl.node', () => {
    const r = check(musl);
    expect(r.out.checks).toMatchObject({ needed: ['libc.so'], interpreter: null, glibc_versions: [] });
    expect(r.out.checks.musl_dlopen).toMatch(/dlopen ok; napi_register_module_v1 found/);
    expect(r.status).toBe(0);
  });
});
