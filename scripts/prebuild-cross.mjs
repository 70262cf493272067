#!/usr/bin/env node
// Builds the prebuilt binaries for the other platforms on this Debian x64 host, so that `npm test`
// (tests/js/prebuild_check.test.ts) checks every one of them, as CI does:
//   node scripts/prebuild-cross.mjs [--target NAME]... [--allow-missing]     (default: all three)
// targets: linux-arm64-glibc (scripts/prebuild-linux-arm64.mjs, Debian's cross g++),
//          linux-x64-musl, linux-arm64-musl (scripts/prebuild-musl.mjs: clang-19 + Zig's musl / libc++),
// each written to prebuilds/linux-<arch>/emollm.<libc>.node, and the arm64 root file system that
// runs them under qemu-user (scripts/arm64-sysroot.mjs: Debian's arm64 Node and musl).
// The arm64 glibc build is also the arm64 compile check: every source of binding.gyp through the
// aarch64 cross compiler with code generation (scripts/check-cross-compile.mjs's -fsyntax-only pass
// over the core sources is its fast subset, for development).
// A target whose toolchain is missing (the builder exits 2) is not built: that fails the run (exit 1),
// unless --allow-missing is given, which `npm test` alone passes so that a developer without the
// cross toolchains can still run the suite; it then lists each skipped target and the builder's
// reason, and exits 0. With CI set a missing toolchain fails even with --allow-missing (.ci/run
// installs the toolchains). A failed build always fails. Unknown flags exit 2.
// JOBS (default 2) is passed to the builds; EMOLLM_ARM64_SYSROOT (as tests/js/prebuild_check.test.ts
// reads it) is where the arm64 sysroot goes.
import { spawn } from 'node:child_process';
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
  ({ values } = parseArgs({ strict: true, options: { target: { type: 'string', multiple: true }, 'allow-missing': { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } }));
} catch (e) {
  console.error(`prebuild-cross: ${e.message}`);
  process.exit(2);
}
if (values.help) {
  console.log(`usage: node scripts/prebuild-cross.mjs [--target ${Object.keys(TARGETS).join('|')}]... [--allow-missing]`);
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
const skipped = []; // [name, reason]
const failed = [];
// Runs one builder, passing its output through, and keeps the last line of its stderr: a builder
// that exits 2 says there which tool is missing.
const run = (args) =>
  new Promise((resolve) => {
    const p = spawn(process.execPath, args, { cwd: root, env, stdio: ['inherit', 'inherit', 'pipe'] });
    let tail = '';
    p.stderr.on('data', (d) => {
      process.stderr.write(d);
      tail = (tail + d.toString()).slice(-4096);
    });
    p.on('error', (e) => resolve({ status: null, reason: e.message }));
    p.on('close', (status) => resolve({ status, reason: tail.trim().split('\n').pop() || `exit ${status}` }));
  });
const step = async (name, args) => {
  const t0 = Date.now();
  console.log(`prebuild-cross: ${name}: node ${args.join(' ')}`);
  const r = await run(args);
  const secs = Math.round((Date.now() - t0) / 1000);
  if (r.status === 0) console.log(`prebuild-cross: ${name}: done in ${secs} s`);
  else if (r.status === 2) skipped.push([name, r.reason]);
  else failed.push(name);
};
const sysrootArgs = process.env.EMOLLM_ARM64_SYSROOT ? ['--dir', process.env.EMOLLM_ARM64_SYSROOT] : [];
if (targets.some((t) => t.includes('arm64'))) await step('arm64 sysroot', [join('scripts', 'arm64-sysroot.mjs'), ...sysrootArgs]);
for (const t of targets) await step(t, TARGETS[t]);

const skippedNames = new Set(skipped.map(([name]) => name));
const built = targets.filter((t) => !skippedNames.has(t));
if (failed.length) {
  console.error(`prebuild-cross: failed: ${failed.join(', ')}`);
  process.exit(1);
}
if (skipped.length) {
  for (const [name, reason] of skipped) console.error(`prebuild-cross: skipped ${name}: ${reason}`);
  if (ci) {
    console.error('prebuild-cross: CI must build every prebuild (.ci/run installs the tools)');
    process.exit(1);
  }
  if (!values['allow-missing']) {
    console.error(`prebuild-cross: not done: ${[...skippedNames].join(', ')}${built.length ? '' : ' (nothing was built)'}; install the tools named above, or pass --allow-missing to accept it`);
    process.exit(1);
  }
  console.error(`prebuild-cross: --allow-missing: the checks of the skipped prebuilds will be skipped too`);
}
console.log(`prebuild-cross: built ${built.join(', ') || 'nothing'}`);
