#!/usr/bin/env node
// Builds and runs the standalone native tests (no Node addon involved) with CMake + CTest.
//   node scripts/native-tests.mjs              Release build in build-native/
//   node scripts/native-tests.mjs --sanitize   AddressSanitizer + UBSan build in build-asan/
// Extra arguments after -- go to ctest.
//
// CUDA: when nvcc is on PATH (CI has it, without a GPU) the Release build compiles the CUDA part
// too (kernels/cuda, the CudaBackend, tests/native/cuda, bench_cuda) for one architecture
// (sm_80, or EMOLLM_CUDA_ARCHS), with EMOLLM_CUDA=ON so that a CUDA compile error fails the run;
// ctest then runs the CUDA tests, whose GPU cases print a skip without a device. Without nvcc
// it says so and builds the CPU part only. EMOLLM_CUDA=OFF in the environment opts out.
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const sanitize = argv.includes('--sanitize');
const sep = argv.indexOf('--');
const ctestArgs = sep >= 0 ? argv.slice(sep + 1) : [];
// Not under build/: node-gyp rebuild deletes that folder.
const buildDir = join(root, sanitize ? 'build-asan' : 'build-native');
const jobs = String(Math.max(1, Math.min(cpus().length, 4)));

function run(cmd, args, env = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.error) {
    console.error(`emollm: could not run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function hasNvcc() {
  const r = spawnSync('nvcc', ['--version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}
// The sanitizer build stays CPU-only (ASan and the CUDA runtime do not mix well).
const cuda = !sanitize && process.env.EMOLLM_CUDA !== 'OFF' && hasNvcc();
if (!sanitize && !cuda)
  console.log(
    process.env.EMOLLM_CUDA === 'OFF'
      ? 'emollm: EMOLLM_CUDA=OFF: the CUDA sources are not compiled in this run'
      : 'emollm: nvcc not found on PATH: the CUDA sources are not compiled in this run (CI has nvcc)',
  );
const configure = ['-S', '.', '-B', buildDir, '-DEMOLLM_BUILD_TESTS=ON'];
if (cuda)
  configure.push('-DEMOLLM_CUDA=ON', `-DCMAKE_CUDA_ARCHITECTURES=${process.env.EMOLLM_CUDA_ARCHS ?? '80'}`, '-DEMOLLM_BUILD_CUDA_BENCH=ON');
else configure.push('-DEMOLLM_CUDA=OFF');
if (sanitize) configure.push('-DEMOLLM_SANITIZE=ON', '-DCMAKE_BUILD_TYPE=RelWithDebInfo', '-DEMOLLM_BUILD_BENCH=OFF');
else configure.push('-DCMAKE_BUILD_TYPE=Release', '-DEMOLLM_BUILD_BENCH=OFF');
run('cmake', configure);
run('cmake', ['--build', buildDir, '-j', jobs]);
run('ctest', ['--test-dir', buildDir, '--output-on-failure', ...ctestArgs], {
  // halt_on_error makes any sanitizer report fail the test instead of only printing.
  ASAN_OPTIONS: 'halt_on_error=1:abort_on_error=0:detect_leaks=1',
  UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
});
