#!/usr/bin/env node
// `npm run bench:kernels [-- options]`: builds build-bench/bench_kernels (CMake, Release, no tests)
// when needed and runs it. Options go to the benchmark (see --help there), except:
//   --rebuild   reconfigure build-bench from scratch first
// The thread count (--threads N, else physical cores) is also given to OpenMP (oneDNN) and
// OpenBLAS through OMP_NUM_THREADS / OPENBLAS_NUM_THREADS so anchors and emollm use the same.
// EMOLLM_BUILD_JOBS sets the build parallelism (default 2).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { kernelsEnv } from './anchor-env.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Not under build/: node-gyp rebuild deletes that folder.
const buildDir = join(root, 'build-bench');
const exe = join(buildDir, process.platform === 'win32' ? 'bench_kernels.exe' : 'bench_kernels');
const jobs = process.env.EMOLLM_BUILD_JOBS || '2';

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) {
    if (r.error.code === 'ENOENT') {
      console.error(`bench:kernels: '${cmd}' not found. Install CMake >= 3.19 and a C++17 compiler.`);
      process.exit(127);
    }
    throw r.error;
  }
  return r.status ?? (r.signal ? 128 : 1);
}

// CMake cache entries, e.g. OPENBLAS_INCLUDE:PATH=/usr/include/x86_64-linux-gnu
function readCache() {
  const file = join(buildDir, 'CMakeCache.txt');
  const cache = {};
  if (!existsSync(file)) return null;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^([A-Za-z0-9_.-]+):[A-Z]+=(.*)$/.exec(line);
    if (m) cache[m[1]] = m[2];
  }
  return cache;
}
const found = (v) => v !== undefined && v !== '' && !v.endsWith('-NOTFOUND');
const anchorsFound = (c) => found(c.OPENBLAS_INCLUDE) && found(c.OPENBLAS_LIB) && found(c.DNNL_INCLUDE) && found(c.DNNL_LIB);

// Physical cores (what the benchmark defaults to); Linux: unique (physical id, core id) pairs.
function physicalCores() {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const cores = new Set();
    let phys = '0';
    for (const line of info.split('\n')) {
      const [k, v] = line.split(':').map((s) => s && s.trim());
      if (k === 'physical id') phys = v;
      else if (k === 'core id') cores.add(`${phys}/${v}`);
    }
    if (cores.size > 0) return cores.size;
  } catch {
    // not Linux
  }
  return os.availableParallelism ? os.availableParallelism() : os.cpus().length;
}

const args = process.argv.slice(2);
const rebuild = args.includes('--rebuild');
// With --json the benchmark's stdout is JSON: keep CMake's chatter on stderr.
const jsonOut = args.includes('--json');
const buildStdio = jsonOut ? ['inherit', 2, 'inherit'] : 'inherit';
const benchArgs = args.filter((a) => a !== '--rebuild');
if (rebuild) rmSync(buildDir, { recursive: true, force: true });

// ---- configure when there is no cache yet, or when an anchor was missing last time (so that
// installing it with bench/setup-anchors.sh is picked up without --rebuild).
let cache = readCache();
if (!cache || !anchorsFound(cache)) {
  const rc = run('cmake', ['-S', '.', '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release', '-DEMOLLM_BUILD_TESTS=OFF',
    '-DEMOLLM_BUILD_BENCH=ON', '-DEMOLLM_CUDA=OFF'], { stdio: cache ? ['inherit', 'ignore', 'inherit'] : buildStdio });
  if (rc !== 0) process.exit(rc);
  cache = readCache() || {};
}
const missing = [];
if (!found(cache.OPENBLAS_INCLUDE) || !found(cache.OPENBLAS_LIB)) missing.push('OpenBLAS (cblas.h, libopenblas)');
if (!found(cache.DNNL_INCLUDE) || !found(cache.DNNL_LIB)) missing.push('oneDNN (dnnl.hpp, libdnnl)');
if (missing.length) {
  console.warn(`bench:kernels: anchor libraries not found: ${missing.join(', ')}.`);
  console.warn('  Their rows will read "anchor unavailable". Install them with: sudo sh bench/setup-anchors.sh');
  console.warn('  (Debian/Ubuntu: apt-get install -y libopenblas-dev libdnnl-dev), then rerun.');
}

// ---- build (incremental)
{
  const rc = run('cmake', ['--build', buildDir, '--target', 'bench_kernels', '-j', jobs], { stdio: buildStdio });
  if (rc !== 0) process.exit(rc);
}

// ---- run, anchors on the same thread count
let threads = physicalCores();
for (let i = 0; i < benchArgs.length; i++) {
  const a = benchArgs[i];
  if (a === '--threads' && i + 1 < benchArgs.length) threads = Number(benchArgs[i + 1]) || threads;
  else if (a.startsWith('--threads=')) threads = Number(a.slice('--threads='.length)) || threads;
}
// thread counts and the anchors' idle spin (GOMP_SPINCOUNT=10000 unless set): bench/anchor-env.mjs
const env = kernelsEnv(threads);
if (!benchArgs.some((a) => a === '--threads' || a.startsWith('--threads='))) benchArgs.push('--threads', String(threads));
const r = spawnSync(exe, benchArgs, { stdio: 'inherit', cwd: root, env });
if (r.error) throw r.error;
process.exit(r.status ?? 1);
