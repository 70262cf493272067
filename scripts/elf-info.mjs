// What a prebuilt binary asks of the system it loads on, read from its ELF headers with binutils'
// readelf (which reads every architecture, so an aarch64 binary is read on an x64 host):
// machine, type, program interpreter, NEEDED libraries, the symbol versions it requires
// (GLIBC_2.33, GLIBCXX_3.4.30, ...) with the highest of each, and its undefined dynamic symbols and
// the functions it exports.
// Used by scripts/check-glibc-prebuild.mjs and scripts/check-musl-prebuild.mjs.
import { spawnSync } from 'node:child_process';

/** Node's process.arch for readelf's Machine line. */
const MACHINES = { 'Advanced Micro Devices X86-64': 'x64', AArch64: 'arm64' };

function readelf(args, file) {
  const r = spawnSync('readelf', [...args, file], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw Object.assign(new Error(`readelf not found (${r.error.message}); needs binutils`), { code: 'ENOTOOL' });
  if (r.status !== 0) throw new Error(`readelf ${args.join(' ')} ${file}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Compares dotted versions numerically: "2.9" < "2.33". */
export function compareVersions(a, b) {
  const x = a.split('.').map(Number), y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
}

export function elfInfo(file) {
  const header = readelf(['-h'], file);
  const machineName = /Machine:\s+(.*)/.exec(header)?.[1]?.trim() ?? null;
  const interp = /Requesting program interpreter: ([^\]]+)/.exec(readelf(['-l', '-W'], file))?.[1] ?? null;
  const needed = [...readelf(['-d', '-W'], file).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
  // Only the versions the binary needs (.gnu.version_r), not the ones it defines.
  const verneed = readelf(['-V', '-W'], file).split(/\n(?=Version (?:definition|needs) section)/).filter((s) => s.startsWith("Version needs")).join('\n');
  const versions = {};
  for (const m of verneed.matchAll(/Name: ((GLIBCXX|GLIBC|CXXABI|GCC)_([0-9.]+))/g)) {
    const [, , family, v] = m;
    (versions[family] ??= new Set()).add(v);
  }
  const maxVersions = Object.fromEntries(Object.entries(versions).map(([k, s]) => [k, [...s].sort(compareVersions).at(-1)]));
  const undefinedSymbols = [];
  const exportedFunctions = [];
  for (const line of readelf(['--dyn-syms', '-W'], file).split('\n')) {
    const f = line.trim().split(/\s+/);
    // Num: Value Size Type Bind Vis Ndx Name
    if (f.length < 8 || !f[7]) continue;
    const name = f[7].replace(/@.*$/, '');
    if (f[6] === 'UND') undefinedSymbols.push(name);
    else if (f[3] === 'FUNC' && f[4] === 'GLOBAL' && f[5] === 'DEFAULT') exportedFunctions.push(name);
  }
  return {
    machine: MACHINES[machineName] ?? machineName,
    type: /Type:\s+(\S+)/.exec(header)?.[1] ?? null,
    interpreter: interp,
    needed,
    versions: Object.fromEntries(Object.entries(versions).map(([k, s]) => [k, [...s].sort(compareVersions)])),
    maxVersions,
    undefinedSymbols,
    exportedFunctions,
  };
}
