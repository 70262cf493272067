#!/usr/bin/env node
// Checks what a glibc prebuilt binary needs from the system, from its ELF headers alone (so an
// arm64 binary is checked on an x64 host):
//   node scripts/check-glibc-prebuild.mjs <emollm.glibc.node> [--arch x64|arm64] [--max-glibc 2.33] [--max-glibcxx V] [--max-cxxabi V]
// 1. ELF machine equal to --arch (default: the arch in the path, prebuilds/linux-<arch>/..., else
//    this host's), a shared object without a program interpreter;
// 2. NEEDED only glibc's libraries, libstdc++ and libgcc_s (nothing a user must install);
// 3. the highest GLIBC_ symbol version it needs is <= --max-glibc (the floor docs/platforms.md
//    states), and, with --max-glibcxx / --max-cxxabi, the highest GLIBCXX_ / CXXABI_ version too.
// Prints one JSON object; exits 1 when a check fails, 2 on bad usage or a missing tool.
// Whether the binary also runs is scripts/check-prebuild.mjs's job (under qemu-user for arm64).
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { compareVersions, elfInfo } from './elf-info.mjs';

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    strict: true,
    options: { arch: { type: 'string' }, 'max-glibc': { type: 'string', default: '2.33' }, 'max-glibcxx': { type: 'string' }, 'max-cxxabi': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
} catch (e) {
  console.error(`check-glibc-prebuild: ${e.message}`);
  process.exit(2);
}
const { values, positionals } = parsed;
const usage = 'usage: node scripts/check-glibc-prebuild.mjs <emollm.glibc.node> [--arch x64|arm64] [--max-glibc 2.33] [--max-glibcxx 3.4.30] [--max-cxxabi 1.3.13]';
if (values.help) {
  console.log(usage);
  process.exit(0);
}
if (positionals.length !== 1) {
  console.error(usage);
  process.exit(2);
}
const file = positionals[0];
const arch = values.arch ?? /linux-(x64|arm64)\//.exec(file)?.[1] ?? process.arch;
if (!['x64', 'arm64'].includes(arch)) {
  console.error(`check-glibc-prebuild: unknown --arch ${JSON.stringify(arch)} (x64 or arm64)`);
  process.exit(2);
}
// The loader's name per arch, and the libraries every glibc system has.
const LOADER = { x64: 'ld-linux-x86-64.so.2', arm64: 'ld-linux-aarch64.so.1' };
const ALLOWED = new Set(['libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2', 'librt.so.1', 'libstdc++.so.6', 'libgcc_s.so.1', LOADER[arch]]);

let info;
try {
  info = elfInfo(file);
} catch (e) {
  console.error(`check-glibc-prebuild: ${e.message}`);
  process.exit(e.code === 'ENOTOOL' ? 2 : 1);
}
const out = { file: basename(file), arch, ok: true, checks: {}, failed: [] };
const check = (name, value, pass) => {
  out.checks[name] = value;
  if (!pass) {
    out.ok = false;
    out.failed.push(name);
  }
};
check('machine', info.machine, info.machine === arch);
check('type', info.type, info.type === 'DYN');
check('interpreter', info.interpreter, info.interpreter === null);
check('needed', info.needed, info.needed.length > 0 && info.needed.every((n) => ALLOWED.has(n)));
const glibc = info.maxVersions.GLIBC ?? null;
check('max_glibc', glibc, glibc !== null && compareVersions(glibc, values['max-glibc']) <= 0);
const glibcxx = info.maxVersions.GLIBCXX ?? null;
check('max_glibcxx', glibcxx, !values['max-glibcxx'] || glibcxx === null || compareVersions(glibcxx, values['max-glibcxx']) <= 0);
const cxxabi = info.maxVersions.CXXABI ?? null;
check('max_cxxabi', cxxabi, !values['max-cxxabi'] || cxxabi === null || compareVersions(cxxabi, values['max-cxxabi']) <= 0);
out.checks.napi_imports = info.undefinedSymbols.filter((s) => /^(napi_|node_api_)/.test(s)).length;
// Node finds the module through this export.
check('exports_napi_register_module_v1', info.exportedFunctions.includes('napi_register_module_v1'), info.exportedFunctions.includes('napi_register_module_v1'));
console.log(JSON.stringify(out, null, 1));
process.exit(out.ok ? 0 : 1);
