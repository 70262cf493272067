#!/usr/bin/env node
// Cheap guard that the native core still compiles for linux-arm64: every source of base/, the
// core, kernels/cpu, the loaders and the model (native/sources.json, all but the Node addon)
// through Debian's aarch64 cross compiler with -fsyntax-only (parse and type-check, no code
// generation: seconds, not the many minutes of a full cross build under qemu). It catches
// x86-only code outside its `#if defined(__x86_64__)` guards: <immintrin.h>, __m256, cpuid,
// __builtin_ia32_*, which do not exist for aarch64.
//   node scripts/check-cross-compile.mjs [--jobs N] [--cxx aarch64-linux-gnu-g++] [--source FILE]...
// (--source: check these files instead of the source list.)
// The full check (build and run the native tests under qemu-user) is scripts/cross-native-tests.mjs.
// Exits 1 when a source fails to compile, 2 when the compiler is missing or on bad usage.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { root } from './prebuild-in-copy.mjs';

let values;
try {
  ({ values } = parseArgs({ strict: true, options: { jobs: { type: 'string', default: '2' }, cxx: { type: 'string', default: 'aarch64-linux-gnu-g++' }, source: { type: 'string', multiple: true }, help: { type: 'boolean', short: 'h' } } }));
} catch (e) {
  console.error(`check-cross-compile: ${e.message}`);
  process.exit(2);
}
if (values.help) {
  console.log('usage: node scripts/check-cross-compile.mjs [--jobs N] [--cxx aarch64-linux-gnu-g++] [--source FILE]...');
  process.exit(0);
}
const jobs = Number(values.jobs);
if (!Number.isInteger(jobs) || jobs < 1) {
  console.error(`check-cross-compile: --jobs wants a positive integer, not ${JSON.stringify(values.jobs)}`);
  process.exit(2);
}
const probe = spawnSync(values.cxx, ['-dumpmachine'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0) {
  console.error(`check-cross-compile: ${values.cxx} not found: apt-get install g++-aarch64-linux-gnu`);
  process.exit(2);
}
const lists = JSON.parse(readFileSync(join(root, 'native', 'sources.json'), 'utf8'));
const sources = values.source ?? ['base', 'core', 'kernels_cpu', 'loaders', 'model'].flatMap((g) => lists[g]);
const flags = ['-std=c++17', '-fsyntax-only', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Wno-missing-field-initializers', '-I.', '-Inative', '-Ikernels'];

const failures = [];
let next = 0;
function compileOne() {
  if (next >= sources.length) return Promise.resolve();
  const src = sources[next++];
  return new Promise((resolve) => {
    const p = spawn(values.cxx, [...flags, src], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => {
      // Warnings print too: -Wall on the target compiler may see what the host's does not.
      if (err.trim()) process.stderr.write(err);
      if (code !== 0) failures.push(src);
      resolve();
    });
  }).then(compileOne);
}
await Promise.all(Array.from({ length: jobs }, compileOne));
const target = probe.stdout.trim();
if (failures.length) {
  console.error(`check-cross-compile: ${failures.length} of ${sources.length} sources do not compile for ${target}: ${failures.join(', ')}`);
  process.exit(1);
}
console.log(`check-cross-compile: ${sources.length} sources compile for ${target} (${values.cxx} -fsyntax-only)`);
