#!/usr/bin/env node
// Builds the prebuilt binaries for the other platforms on this Debian x64 host, so that `npm test`
// (tests/js/prebuild_check.test.ts) checks every one of them, as CI does:
//   node scripts/prebuild-cross.mjs [--target NAME]...     (default: all three)
// targets: linux-arm64-glibc (scripts/prebuild-linux-arm64.mjs, Debian's cross g++),
//          linux-x64-musl, linux-arm64-musl (scripts/prebuild-musl.mjs: clang-19 + Zig's musl / libc++),
// each written to prebuilds/linux-<arch>/emollm.<libc>.node, and the arm64 root file system that
// runs them under qemu-user (scripts/arm64-sysroot.mjs: Debian's arm64 Node and musl).
// The arm64 glibc build is also the arm64 compile check: every source of binding.gyp through the
// aarch64 cross compiler with code generation (scripts/check-cross-compile.mjs's -fsyntax-only pass
// over the core sources is its fast subset, for development).
// A target whose toolchain is missing (the builder exits 2) is skipped with its reason, except with
// CI set, where that fails the run (.ci/run installs the toolchains). A failed build always fails.
// JOBS (default 2) is passed to the builds.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { root } from './prebuild-in-copy.mjs';

const TARGETS = {
  'linux-arm64-glibc': ['scripts/prebuild-linux-arm64.mjs'],
  'linux-x64-musl': ['scripts/prebuild-musl.mjs', '--arch', 'x64'],
  'linux-arm64-musl': ['scripts/prebuild-musl.mjs', '--arch', 'arm64'],
};
let values;
try {
  ({ values } = parseArgs({ strict: true, options: { target: { type: 'string', multiple: true }, help: { type: 'boolean', short: 'h' } } }));
} catch (e) {
  console.error(`prebuild-cross: ${e.message}`);
  process.exit(2);
}
if (values.help) {
  console.log(`usage: node scripts/prebuild-cross.mjs [--target ${Object.keys(TARGETS).join('|')}]...`);
  process.exit(0);
}
const targets = values.target ?? Object.keys(TARGETS);
for (const t of targets) {
  if (!(t in TARGETS)) {
    console.error(`prebuild-cross: unknown --target ${JSON.stringify(t)} (${Object.keys(TARGETS).join(', ')})`);
    process.exit(2);
  }
}
const ci = !!process.env.CI;
const env = { ...process.env, JOBS: process.env.JOBS ?? '2' };
const skipped = [];
const failed = [];
const step = (name, args) => {
  const t0 = Date.now();
  console.log(`prebuild-cross: ${name}: node ${args.join(' ')}`);
  const r = spawnSync(process.execPath, args, { cwd: root, env, stdio: 'inherit' });
  const secs = Math.round((Date.now() - t0) / 1000);
  if (r.status === 0) console.log(`prebuild-cross: ${name}: done in ${secs} s`);
  else if (r.status === 2) skipped.push(name);
  else failed.push(name);
};
if (targets.some((t) => t.includes('arm64'))) step('arm64 sysroot', [join('scripts', 'arm64-sysroot.mjs')]);
for (const t of targets) step(t, TARGETS[t]);

if (failed.length) {
  console.error(`prebuild-cross: failed: ${failed.join(', ')}`);
  process.exit(1);
}
if (skipped.length) {
  console.error(`prebuild-cross: skipped (a tool is missing, said above): ${skipped.join(', ')}`);
  if (ci) {
    console.error('prebuild-cross: CI must build every prebuild (.ci/run installs the tools)');
    process.exit(1);
  }
}
console.log(`prebuild-cross: built ${targets.filter((t) => !skipped.includes(t)).join(', ') || 'nothing'}`);
