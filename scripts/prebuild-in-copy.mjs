// Runs prebuildify for another arch or libc in a temporary copy of the native sources: prebuildify
// builds in ./build, which must not clobber the host's build/Release. Only the finished binary is
// copied back, to prebuilds/linux-<arch>/emollm.<libc>.node.
// Used by scripts/prebuild-musl.mjs and scripts/prebuild-linux-arm64.mjs.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * @param {{ arch: 'x64'|'arm64', libc: 'glibc'|'musl', env: Record<string,string>, work: string, label: string }} o
 *   env: CC / CXX / LINK / LDFLAGS / PREBUILD_STRIP_BIN for the target; work: an empty temp folder.
 * @returns {string|null} the path of the copied binary, or null when the build failed (prebuildify's
 *   output says why).
 */
export function prebuildInCopy({ arch, libc, env, work, label }) {
  const src = join(work, 'src');
  mkdirSync(join(src, 'scripts'), { recursive: true });
  for (const p of ['binding.gyp', 'package.json', 'base', 'native', 'kernels', 'scripts/sources.mjs', 'scripts/node-gyp-args.mjs'])
    cpSync(join(root, p), join(src, p), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
  const prebuildify = join(root, 'node_modules', 'prebuildify', 'bin.js');
  const fullEnv = { ...process.env, JOBS: process.env.JOBS ?? '2', ...env };
  if (libc === 'musl') fullEnv.PREBUILD_LIBC = 'musl';
  // Node's headers from beside this Node (Debian's nodejs ships them) instead of a download.
  const prefix = dirname(dirname(process.execPath));
  if (!fullEnv.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) fullEnv.npm_config_nodedir = prefix;
  const args = ['--napi', '--strip', '--tag-libc', '--arch', arch];
  console.log(`$ prebuildify ${args.join(' ')}   (${label})`);
  const r = spawnSync(process.execPath, [prebuildify, ...args], { cwd: src, env: fullEnv, stdio: 'inherit' });
  if (r.status !== 0) return null;
  const built = join(src, 'prebuilds', `linux-${arch}`, `emollm.${libc}.node`);
  if (!existsSync(built)) {
    console.error(`prebuild: prebuildify finished but ${built} is missing`);
    return null;
  }
  const dest = join(root, 'prebuilds', `linux-${arch}`);
  mkdirSync(dest, { recursive: true });
  cpSync(built, join(dest, `emollm.${libc}.node`));
  console.log(`prebuild: wrote prebuilds/linux-${arch}/emollm.${libc}.node`);
  return join(dest, `emollm.${libc}.node`);
}

export function makeWork(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeWork(work) {
  rmSync(work, { recursive: true, force: true });
}
