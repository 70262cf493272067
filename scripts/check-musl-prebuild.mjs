#!/usr/bin/env node
// Checks a musl prebuilt binary on a glibc host, where no musl Node exists to load it:
//   node scripts/check-musl-prebuild.mjs prebuilds/linux-x64/emollm.musl.node
//   node scripts/check-musl-prebuild.mjs prebuilds/linux-arm64/emollm.musl.node
// 1. The ELF (scripts/elf-info.mjs): an x86-64 or AArch64 shared object (the arch is read from
//    the ELF; --arch, or the prebuilds/linux-<arch>/ folder in the path, must agree), no program
//    interpreter, its only NEEDED library musl's libc.so (libc++ / libc++abi / libunwind linked in
//    statically), no glibc symbol versions.
// 2. It loads under musl's dynamic loader: a small C host defines every N-API function the addon
//    imports as a stub (Node provides them at run time), exports them, and dlopen()s the addon
//    with RTLD_NOW, so every other symbol must resolve against musl's libc and the addon's static
//    initializers run under musl. The host then calls nothing in the addon: a real module load
//    needs Node. x64: the host is built with musl-gcc (Debian's musl-tools) and runs natively.
//    arm64: it is built with Debian's aarch64 cross gcc against Debian's arm64 musl (musl-gcc's
//    specs file from musl-dev:arm64, in the sysroot of scripts/arm64-sysroot.mjs or
//    $EMOLLM_ARM64_SYSROOT) and runs under qemu-aarch64 with musl's aarch64 loader.
// Exits 1 when a check fails, 2 when a tool is missing or on bad usage.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { elfInfo } from './elf-info.mjs';

let parsed;
try {
  parsed = parseArgs({ allowPositionals: true, strict: true, options: { arch: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
} catch (e) {
  console.error(`check-musl-prebuild: ${e.message}`);
  process.exit(2);
}
const usage = 'usage: node scripts/check-musl-prebuild.mjs <emollm.musl.node> [--arch x64|arm64]';
if (parsed.values.help) {
  console.log(usage);
  process.exit(0);
}
const file = parsed.positionals[0];
if (!file || parsed.positionals.length > 1) {
  console.error(usage);
  process.exit(2);
}
const sh = (cmd, args, what = 'binutils and musl-tools') => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) {
    console.error(`check-musl-prebuild: ${cmd} not found (${r.error.message}); needs ${what}`);
    process.exit(2);
  }
  return r;
};
const out = { file, ok: true, checks: {} };
const fail = (k, v) => { out.checks[k] = v; out.ok = false; };

let info;
try {
  info = elfInfo(file);
} catch (e) {
  console.error(`check-musl-prebuild: ${e.message}`);
  process.exit(e.code === 'ENOTOOL' ? 2 : 1);
}
out.checks.machine = info.machine;
const expected = parsed.values.arch ?? /linux-(x64|arm64)\//.exec(file)?.[1] ?? info.machine;
if (info.machine !== expected || !['x64', 'arm64'].includes(info.machine)) fail('machine', { found: info.machine, expected });
const arch = info.machine;
out.checks.type = info.type;
if (info.type !== 'DYN') fail('type', info.type);
out.checks.interpreter = info.interpreter;
if (info.interpreter) fail('interpreter', info.interpreter);
out.checks.needed = info.needed;
if (info.needed.some((n) => n !== 'libc.so')) fail('needed', info.needed);
out.checks.glibc_versions = ['GLIBC', 'GLIBCXX'].flatMap((f) => (info.versions[f] ?? []).map((v) => `${f}_${v}`));
if (out.checks.glibc_versions.length) out.ok = false;

// Undefined dynamic symbols: N-API (from Node) and the rest (must come from musl's libc)
const undef = info.undefinedSymbols;
const napi = undef.filter((s) => /^(napi_|node_api_)/.test(s));
out.checks.napi_imports = napi.length;
out.checks.libc_imports = undef.length - napi.length;

/** The compiler command and runner for the dlopen host, per arch. */
function hostToolchain(dir) {
  if (arch !== 'arm64') return { cc: ['musl-gcc'], run: (exe, args) => sh(exe, args) };
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  let sysroot = process.env.EMOLLM_ARM64_SYSROOT;
  if (!sysroot) {
    const r = spawnSync(process.execPath, [join(root, 'scripts', 'arm64-sysroot.mjs')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    if (r.status !== 0) process.exit(2);
    sysroot = r.stdout.trim();
  }
  const specsIn = join(sysroot, 'usr', 'lib', 'aarch64-linux-musl', 'musl-gcc.specs');
  if (!existsSync(specsIn)) {
    console.error(`check-musl-prebuild: ${specsIn} missing (Debian's musl-dev:arm64 in the sysroot)`);
    process.exit(2);
  }
  // Debian's specs name /usr/... paths of an arm64 system: point them into the sysroot, except
  // the dynamic linker's name, which the binary records (qemu -L finds it in the sysroot).
  const specs = join(dir, 'musl-aarch64.specs');
  writeFileSync(specs, readFileSync(specsIn, 'utf8').replace(/(?<!-dynamic-linker )\/usr\//g, `${sysroot}/usr/`));
  return {
    // libc.so is in /lib/aarch64-linux-musl (package musl), libc.a in /usr/lib/... (musl-dev).
    cc: ['aarch64-linux-gnu-gcc', '-specs', specs, `-L${sysroot}/lib/aarch64-linux-musl`],
    run: (exe, args) => sh('qemu-aarch64', ['-L', sysroot, exe, ...args], 'qemu-user'),
  };
}

const dir = mkdtempSync(join(tmpdir(), 'emollm-musl-check-'));
try {
  const host = join(dir, 'host.c');
  writeFileSync(host, [
    '#include <dlfcn.h>',
    '#include <stdio.h>',
    // Each N-API import as an exported stub (napi_generic_failure); never called.
    ...napi.map((s) => `__attribute__((visibility("default"))) int ${s}(void) { return 9; }`),
    'int main(int argc, char** argv) {',
    '  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);',
    '  if (!h) { printf("dlopen failed: %s\\n", dlerror()); return 1; }',
    '  void* reg = dlsym(h, "napi_register_module_v1");',
    '  printf("dlopen ok; napi_register_module_v1 %s\\n", reg ? "found" : "missing");',
    '  return reg ? 0 : 1;',
    '}',
  ].join('\n'));
  const exe = join(dir, 'host');
  const tc = hostToolchain(dir);
  const cc = sh(tc.cc[0], [...tc.cc.slice(1), '-O1', '-rdynamic', '-o', exe, host, '-ldl'], arch === 'arm64' ? 'g++-aarch64-linux-gnu' : 'musl-tools');
  if (cc.status !== 0) fail('host_build', cc.stderr.trim().split('\n').slice(-3).join(' | '));
  else {
    out.checks.host_interpreter = elfInfo(exe).interpreter;
    const r = tc.run(exe, [resolve(file)]);
    out.checks.musl_dlopen = (r.stdout + r.stderr).trim();
    if (r.status !== 0) out.ok = false;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify(out, null, 1));
process.exit(out.ok ? 0 : 1);
