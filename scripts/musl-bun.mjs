#!/usr/bin/env node
// Runs a script under Bun's musl build (a real musl JavaScript runtime that implements N-API), on a
// Debian x64 host, so that a musl prebuild is loaded and run the way Alpine runs it:
//   node scripts/musl-bun.mjs [--arch x64|arm64] -- <script.mjs> [args...]
//   e.g. node scripts/musl-bun.mjs --arch x64 -- scripts/check-prebuild.mjs prebuilds/linux-x64/emollm.musl.node \
//          ../shared/models/stories260K/gguf/stories260K.gguf
// Exits with the script's status (2 on bad usage or a missing tool).
//
// What runs, and where it comes from:
//  - Bun (npm @oven/bun-linux-x64-musl / @oven/bun-linux-aarch64-musl, pinned below, unmodified),
//    installed with --ignore-scripts into ~/.cache/emollm-bun on first use, outside the package's
//    dependencies: npm refuses a package whose os/cpu/libc fields do not match the host
//    (EBADPLATFORM) as a dependency, and the aarch64 one can never match an x64 CI host;
//  - musl's dynamic loader: Debian's `musl` package (/lib/ld-musl-x86_64.so.1) for x64; for arm64
//    Debian's musl:arm64 in the qemu sysroot of scripts/arm64-sysroot.mjs, under qemu-aarch64;
//  - libstdc++.so.6, which Bun's musl build needs (Alpine: `apk add libstdc++`) and which neither
//    Debian nor npm has for musl: scripts/musl-libstdcxx-shim.cpp, the 38 symbols Bun imports,
//    built with Zig for the target (scripts/musl-toolchain.mjs) — a test-harness stand-in, never shipped.
//  - libc.musl-<arch>.so.1 (Alpine's name for musl's libc.so, which Bun's ELF asks for): a symlink
//    to the same musl libc.so.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MUSL_TARGETS, findZig } from './musl-toolchain.mjs';

export const BUN_VERSION = '1.4.5';
const BUN_PACKAGES = { x64: '@oven/bun-linux-x64-musl', arm64: '@oven/bun-linux-aarch64-musl' };
const here = dirname(fileURLToPath(import.meta.url));
const cache = join(homedir(), '.cache', 'emollm-bun');

// The libstdc++ symbols Bun 1.4's musl builds import (readelf --dyn-syms, less what musl's libc.so
// defines), all defined in scripts/musl-libstdcxx-shim.cpp.
const SHIM_SYMBOLS = [
  '_ZSt18_Rb_tree_incrementPSt18_Rb_tree_node_base', '_ZSt18_Rb_tree_decrementPSt18_Rb_tree_node_base',
  '_ZSt29_Rb_tree_insert_and_rebalancebPSt18_Rb_tree_node_baseS0_RS_', '_ZSt28_Rb_tree_rebalance_for_erasePSt18_Rb_tree_node_baseRS_',
  '_ZNSt8__detail15_List_node_base7_M_hookEPS0_', '_ZNSt8__detail15_List_node_base9_M_unhookEv',
  '_ZNKSt8__detail20_Prime_rehash_policy11_M_next_bktEm', '_ZNKSt8__detail20_Prime_rehash_policy14_M_need_rehashEmmm',
  '_ZSt11_Hash_bytesPKvmm', '_ZNSt18condition_variableC1Ev', '_ZNSt18condition_variableD1Ev',
  '_ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE', '_ZNSt18condition_variable10notify_oneEv',
  '_ZNSt18condition_variable10notify_allEv', '_ZNSt6chrono3_V212steady_clock3nowEv', '_ZSt15__once_callable',
  '_ZSt11__once_call', '__once_proxy', '_ZSt17__throw_bad_allocv', '_ZSt28__throw_bad_array_new_lengthv',
  '_ZSt25__throw_bad_function_callv', '_ZSt19__throw_logic_errorPKc', '_ZSt20__throw_length_errorPKc',
  '_ZSt20__throw_system_errori', '_ZSt24__throw_out_of_range_fmtPKcz', '_ZSt21__glibcxx_assert_failPKciS0_S0_',
];
const ABI_SYMBOLS = [
  '__cxa_bad_typeid', '__cxa_demangle', '__cxa_guard_acquire', '__cxa_guard_release', '__cxa_pure_virtual',
  '__dynamic_cast', '_ZSt9terminatev', '_ZSt13set_terminatePFvvE', '_ZSt15get_new_handlerv',
  '_ZTVN10__cxxabiv117__class_type_infoE', '_ZTVN10__cxxabiv120__si_class_type_infoE', '_ZTVN10__cxxabiv121__vmi_class_type_infoE',
];

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  if (r.error || r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 4).join(' ')}... failed (${r.error?.message ?? `exit ${r.status}`})`);
}

/** The sysroot holding musl's aarch64 loader (scripts/arm64-sysroot.mjs), or null. */
function arm64Sysroot() {
  const dir = process.env.EMOLLM_ARM64_SYSROOT ?? join(homedir(), '.cache', 'emollm-sysroot', 'arm64');
  return existsSync(join(dir, '.complete')) ? dir : null;
}

/**
 * Installs Bun and builds the libstdc++ stand-in for arch when missing; returns how to run Bun:
 * { cmd, args, env } to which the script and its arguments are appended.
 */
export function prepareBun(arch) {
  const pkg = BUN_PACKAGES[arch];
  if (!pkg) throw new Error(`no Bun musl package for arch ${arch}`);
  const bun = join(cache, 'node_modules', ...pkg.split('/'), 'bin', 'bun');
  if (!existsSync(bun)) {
    mkdirSync(cache, { recursive: true });
    // --force: npm would refuse another platform's package (EBADPLATFORM); it is only unpacked here.
    run('npm', ['install', '--no-save', '--ignore-scripts', '--no-audit', '--no-fund', '--force', '--prefix', cache, `${pkg}@${BUN_VERSION}`]);
  }
  const cpu = MUSL_TARGETS[arch].split('-')[0];
  let muslLibc, loaderPrefix, sysroot = null;
  if (arch === 'x64') {
    muslLibc = '/lib/x86_64-linux-musl/libc.so';
    if (!existsSync('/lib/ld-musl-x86_64.so.1') || !existsSync(muslLibc)) throw new Error('musl loader /lib/ld-musl-x86_64.so.1 missing: apt-get install musl');
    loaderPrefix = ['/lib/ld-musl-x86_64.so.1'];
  } else {
    sysroot = arm64Sysroot();
    if (!sysroot) throw new Error('no arm64 sysroot with musl: node scripts/arm64-sysroot.mjs');
    if (spawnSync('qemu-aarch64', ['--version'], { stdio: 'ignore' }).error) throw new Error('qemu-aarch64 missing: apt-get install qemu-user');
    muslLibc = join(sysroot, 'usr', 'lib', 'aarch64-linux-musl', 'libc.so');
    loaderPrefix = ['qemu-aarch64', '-L', sysroot, join(sysroot, 'lib', 'ld-musl-aarch64.so.1')];
  }
  const lib = join(cache, `lib-${arch}`);
  const shim = join(lib, 'libstdc++.so.6');
  // Rebuilt when the stand-in's source or the Bun version changes.
  const stamp = `${pkg}@${BUN_VERSION} ${createHash('sha256').update(readFileSync(join(here, 'musl-libstdcxx-shim.cpp'))).digest('hex')}\n`;
  if (!existsSync(join(lib, '.complete')) || readFileSync(join(lib, '.complete'), 'utf8') !== stamp) {
    rmSync(lib, { recursive: true, force: true });
    mkdirSync(lib, { recursive: true });
    const zig = findZig();
    const script = join(lib, 'shim.map');
    writeFileSync(script, `{\n  global:\n${[...SHIM_SYMBOLS, ...ABI_SYMBOLS].map((s) => `    ${s};`).join('\n')}\n  local: *;\n};\n`);
    // C++ without its runtime (zig cc, -fno-exceptions -fno-rtti): the shim defines the C++ ABI
    // symbols itself, which Zig's libc++abi would duplicate.
    run(zig, ['cc', '-x', 'c++', '-target', `${cpu}-linux-musl`, '-shared', '-fPIC', '-O2', '-std=c++17', '-fno-exceptions', '-fno-rtti',
      '-Wl,-soname,libstdc++.so.6', `-Wl,--version-script,${script}`, join(here, 'musl-libstdcxx-shim.cpp'), '-o', shim]);
    symlinkSync(muslLibc, join(lib, `libc.musl-${cpu}.so.1`));
    writeFileSync(join(lib, '.complete'), stamp);
  }
  return { cmd: loaderPrefix[0], args: [...loaderPrefix.slice(1), '--library-path', lib, bun], bun, lib, sysroot };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let parsed;
  try {
    parsed = parseArgs({ allowPositionals: true, strict: true, options: { arch: { type: 'string', default: 'x64' }, help: { type: 'boolean', short: 'h' } } });
  } catch (e) {
    console.error(`musl-bun: ${e.message}`);
    process.exit(2);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log('usage: node scripts/musl-bun.mjs [--arch x64|arm64] -- <script> [args...]');
    process.exit(0);
  }
  if (!(values.arch in BUN_PACKAGES) || positionals.length === 0) {
    console.error(`musl-bun: ${positionals.length ? `unknown --arch ${JSON.stringify(values.arch)} (x64 or arm64)` : 'no script given'}`);
    process.exit(2);
  }
  let b;
  try {
    b = prepareBun(values.arch);
  } catch (e) {
    console.error(`musl-bun: ${e.message}`);
    process.exit(2);
  }
  const r = spawnSync(b.cmd, [...b.args, ...positionals], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
