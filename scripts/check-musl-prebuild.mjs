#!/usr/bin/env node
// Checks a musl prebuilt binary on a glibc host, where no musl Node exists to load it:
//   node scripts/check-musl-prebuild.mjs prebuilds/linux-x64/emollm.musl.node
// 1. The ELF: x86-64 shared object, no program interpreter, its only NEEDED library musl's libc.so
//    (libc++ / libc++abi / libunwind linked in statically), no glibc symbol versions.
// 2. It loads under musl's dynamic loader: a small C host built with musl-gcc (Debian's
//    musl-tools) defines every N-API function the addon imports as a stub (Node provides them at
//    run time), exports them, and dlopen()s the addon with RTLD_NOW, so every other symbol must
//    resolve against musl's libc and the addon's static initializers run under musl. The host then
//    calls nothing in the addon: a real module load needs Node.
// Exits 1 when a check fails, 2 when a tool is missing.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const file = process.argv[2];
if (!file) {
  console.error('usage: node scripts/check-musl-prebuild.mjs <emollm.musl.node>');
  process.exit(2);
}
const sh = (cmd, args) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) {
    console.error(`check-musl-prebuild: ${cmd} not found (${r.error.message}); needs binutils and musl-tools`);
    process.exit(2);
  }
  return r;
};
const out = { file, ok: true, checks: {} };
const fail = (k, v) => { out.checks[k] = v; out.ok = false; };

const header = sh('readelf', ['-h', file]).stdout;
out.checks.machine = /Machine:\s+(.*)/.exec(header)?.[1]?.trim();
out.checks.type = /Type:\s+(\S+)/.exec(header)?.[1];
if (out.checks.type !== 'DYN') fail('type', out.checks.type);
const interp = /Requesting program interpreter: ([^\]]+)/.exec(sh('readelf', ['-l', file]).stdout)?.[1] ?? null;
out.checks.interpreter = interp;
if (interp) fail('interpreter', interp);
const needed = [...sh('readelf', ['-d', file]).stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
out.checks.needed = needed;
if (needed.some((n) => n !== 'libc.so')) fail('needed', needed);
const glibcRefs = (sh('readelf', ['-V', '-W', file]).stdout.match(/GLIBC(XX)?_[0-9.]+/g) ?? []);
out.checks.glibc_versions = [...new Set(glibcRefs)];
if (glibcRefs.length) out.ok = false;

// Undefined dynamic symbols: N-API (from Node) and the rest (must come from musl's libc)
const undef = sh('nm', ['-D', '--undefined-only', file]).stdout.split('\n').map((l) => l.trim().split(/\s+/).at(-1)).filter(Boolean);
const napi = undef.filter((s) => /^(napi_|node_api_)/.test(s));
out.checks.napi_imports = napi.length;
out.checks.libc_imports = undef.length - napi.length;

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
  const cc = sh('musl-gcc', ['-O1', '-rdynamic', '-o', exe, host, '-ldl']);
  if (cc.status !== 0) fail('host_build', cc.stderr.trim().split('\n').slice(-3).join(' | '));
  else {
    const ldd = sh('readelf', ['-l', exe]).stdout;
    out.checks.host_interpreter = /Requesting program interpreter: ([^\]]+)/.exec(ldd)?.[1] ?? null;
    const r = sh(exe, [resolve(file)]);
    out.checks.musl_dlopen = (r.stdout + r.stderr).trim();
    if (r.status !== 0) out.ok = false;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify(out, null, 1));
process.exit(out.ok ? 0 : 1);
