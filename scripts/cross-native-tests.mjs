#!/usr/bin/env node
// Cross-compiles the standalone native tests (tests/native, no Node) for linux-arm64 as a static
// executable and runs them under qemu-user, with the ../shared parity tests they include:
//   node scripts/cross-native-tests.mjs [--arch arm64] [--libc glibc|musl] [--jobs N] [--build-only] [-- FILTER]
// glibc: Debian's cross toolchain (cmake/toolchains/aarch64-linux-gnu.cmake), linked -static.
// musl:  Debian's clang-19 + Zig's musl and libc++ (scripts/musl-toolchain.mjs,
//        cmake/toolchains/aarch64-linux-musl.cmake); musl executables are static anyway.
// Builds in build-<arch>-<libc>/ (Release, CPU only: no CUDA, no benchmarks). FILTER is passed to
// the test binary (a substring of the test names). Needs: g++-aarch64-linux-gnu qemu-user cmake
// (and clang-19 for musl; Zig is fetched from npm on first use).
// Prints the test binary's output and a last line `cross-native-tests: <arch>-<libc>: N passed,
// M failed, K skip lines, T s`; exits with the test binary's status (1 when any test failed), 2 when a
// tool is missing or on bad usage. Under qemu the run is several times slower than native
// (docs/platforms.md gives the measured time), so `npm test` does not run it.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeMuslWrappers } from './musl-toolchain.mjs';
import { root } from './prebuild-in-copy.mjs';

const argv = process.argv.slice(2);
const sep = argv.indexOf('--');
let values;
try {
  ({ values } = parseArgs({
    args: sep >= 0 ? argv.slice(0, sep) : argv,
    strict: true,
    options: {
      arch: { type: 'string', default: 'arm64' },
      libc: { type: 'string', default: 'glibc' },
      jobs: { type: 'string', default: '2' },
      'build-only': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (e) {
  console.error(`cross-native-tests: ${e.message}`);
  process.exit(2);
}
if (values.help) {
  console.log('usage: node scripts/cross-native-tests.mjs [--arch arm64] [--libc glibc|musl] [--jobs N] [--build-only] [-- FILTER]');
  process.exit(0);
}
const filter = sep >= 0 ? argv.slice(sep + 1) : [];
if (values.arch !== 'arm64') {
  console.error(`cross-native-tests: unknown --arch ${JSON.stringify(values.arch)} (arm64 is the one cross target)`);
  process.exit(2);
}
if (!['glibc', 'musl'].includes(values.libc)) {
  console.error(`cross-native-tests: unknown --libc ${JSON.stringify(values.libc)} (glibc or musl)`);
  process.exit(2);
}
if (!/^[1-9][0-9]*$/.test(values.jobs)) {
  console.error(`cross-native-tests: --jobs wants a positive integer, not ${JSON.stringify(values.jobs)}`);
  process.exit(2);
}
const need = ['cmake', 'qemu-aarch64', 'aarch64-linux-gnu-ar', ...(values.libc === 'glibc' ? ['aarch64-linux-gnu-g++'] : [])];
for (const tool of need) {
  const r = spawnSync(tool, ['--version'], { stdio: 'ignore' });
  if (r.error) {
    console.error(`cross-native-tests: ${tool} not found: apt-get install cmake qemu-user g++-aarch64-linux-gnu`);
    process.exit(2);
  }
}

function run(cmd, args, env = process.env) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error || r.status !== 0) {
    console.error(`cross-native-tests: ${cmd} failed (${r.error?.message ?? `exit ${r.status}`})`);
    process.exit(1);
  }
}

const tag = `${values.arch}-${values.libc}`;
const buildDir = join(root, `build-${tag}`);
const env = { ...process.env };
if (values.libc === 'musl') {
  // The wrappers live in the build folder: the toolchain file reads them from there on every run.
  const tc = writeMuslWrappers(join(buildDir, 'musl-bin'), values.arch);
  console.log(`cross-native-tests: compiling with ${tc.describe}`);
  env.EMOLLM_MUSL_BIN = join(buildDir, 'musl-bin');
}
const configure = [
  '-S', '.', '-B', buildDir,
  `--toolchain`, join(root, 'cmake', 'toolchains', `aarch64-linux-${values.libc === 'glibc' ? 'gnu' : 'musl'}.cmake`),
  '-DCMAKE_BUILD_TYPE=Release', '-DEMOLLM_BUILD_TESTS=ON', '-DEMOLLM_BUILD_BENCH=OFF', '-DEMOLLM_CUDA=OFF',
];
if (values.libc === 'glibc') configure.push('-DCMAKE_EXE_LINKER_FLAGS=-static');
if (!existsSync(join(buildDir, 'CMakeCache.txt'))) run('cmake', configure, env);
run('cmake', ['--build', buildDir, '--target', 'emollm_tests', '-j', values.jobs], env);
const exe = join(buildDir, 'emollm_tests');
const file = spawnSync('readelf', ['-h', '-l', exe], { encoding: 'utf8' }).stdout ?? '';
const machine = /Machine:\s+(.*)/.exec(file)?.[1]?.trim();
const interp = /Requesting program interpreter/.test(file);
console.log(`cross-native-tests: ${exe}: ${machine}, ${interp ? 'dynamically linked' : 'static'}`);
if (machine !== 'AArch64' || interp) {
  console.error('cross-native-tests: expected a static AArch64 executable');
  process.exit(1);
}
if (values['build-only']) process.exit(0);

const t0 = Date.now();
// Streamed, not buffered: under qemu the run takes minutes, and a run cut short should still
// show which tests passed (the test binary flushes after each test).
let stdout = '';
const child = spawn('qemu-aarch64', [exe, ...filter], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, EMOLLM_SHARED_DIR: process.env.EMOLLM_SHARED_DIR ?? join(root, '..', 'shared') },
});
child.stdout.on('data', (d) => {
  stdout += d;
  process.stdout.write(d);
});
const r = await new Promise((resolve) => child.on('close', (status, signal) => resolve({ status, signal })));
const counts = /(\d+) passed, (\d+) failed/.exec(stdout);
// Skips print their reason on their own line ("skip ...", "[skip] ..."); count them for the summary.
const skips = stdout.split('\n').filter((l) => /^\s*(\[skip\]|skip\b|skip:)/.test(l)).length;
const secs = ((Date.now() - t0) / 1000).toFixed(0);
if (!counts) {
  console.error(`cross-native-tests: ${tag}: no "N passed, M failed" line (exit ${r.status ?? r.signal}) after ${secs} s under qemu`);
  process.exit(1);
}
console.log(`cross-native-tests: ${tag}: ${counts[1]} passed, ${counts[2]} failed, ${skips} skip lines, ${secs} s under qemu-aarch64`);
process.exit(r.status === 0 && counts[2] === '0' ? 0 : 1);
