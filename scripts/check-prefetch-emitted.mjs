#!/usr/bin/env node
// Checks that every software prefetch the core's sources ask for is really emitted
// (docs/architecture.md, "prefetch-only helpers"). GCC 12's IPA (pure-const with modref) finds a
// non-inlined function that holds nothing but prefetches side-effect free and deletes the calls to
// it: a static helper then vanishes with its prefetches, a global one keeps its body but loses its
// callers. Until session 20 that left the attention drivers without one prefetch instruction.
//
// Each core source whose text (or a header / .inc it includes with quotes) holds a prefetch is
// compiled twice with the core's real flags (CMake's compile_commands.json, plus binding.gyp's
// cflags_cc: the shipped addon hides its symbols, so more functions bind locally and IPA may
// delete more), once as the build does and once with -fno-ipa-pure-const -fno-ipa-modref (which
// keep every such call). Per object it counts, from `objdump -dr`, the prefetch instructions and
// the call (or tail-call jump) sites into functions of that object that hold prefetches; any
// difference between the two builds fails, naming the file, both counts and the functions.
//
//   node scripts/check-prefetch-emitted.mjs [--build-dir DIR] [--jobs N] [--keep] [root]
//     --build-dir DIR  read DIR/compile_commands.json (a configure with
//                      -DCMAKE_EXPORT_COMPILE_COMMANDS=ON) instead of configuring one in a temp dir
//     --jobs N         parallel compiles (default 2)
//     --keep           keep the objects' temp dir (printed)
//   exit status 1 when an object differs, 2 when the check could not run (no g++ / objdump / cmake,
//   or a host other than x86-64: the counts read x86-64 code and its relocations)
//
// Objects go to a temp dir; sources and include paths are passed relative to the root, and ccache
// is used when it is on PATH, so a repeated run on an unchanged tree costs little.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const NO_IPA_FLAGS = ['-fno-ipa-pure-const', '-fno-ipa-modref'];

// A prefetch in C++ source (the builtins and intrinsics) or in inline asm.
const PREFETCH_SOURCE = /\b(?:__builtin_prefetch|_mm_prefetch|_mm512_prefetch\w*|_mm512_mask_prefetch\w*|_m_prefetch\w*|__builtin_ia32_prefetch\w*)\s*\(|\bprefetch(?:t0|t1|t2|nta|w|wt1)\b/;

const toPosix = (p) => p.split(sep).join('/');

// Source text with its comments blanked (a prefetch or #include named in a comment does not
// count; string literals stay: inline asm names its prefetches in one).
export function stripComments(text) {
  return text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, (m) => m.replace(/[^\n]/g, ' '));
}

export function holdsPrefetch(text) {
  return PREFETCH_SOURCE.test(stripComments(text));
}

// Whether `file` (absolute) or a file it includes with quotes, resolved as the compiler does (its
// own folder, then `includeDirs`), holds a prefetch. `cache` maps a path to its answer.
export function includesPrefetch(file, includeDirs, cache = new Map(), visiting = new Set()) {
  if (cache.has(file)) return cache.get(file);
  if (visiting.has(file) || !existsSync(file)) return false;
  visiting.add(file);
  const raw = readFileSync(file, 'utf8');
  let found = holdsPrefetch(raw);
  if (!found) {
    const text = stripComments(raw);
    for (const m of text.matchAll(/^\s*#\s*include\s*"([^"]+)"/gm)) {
      const inc = m[1];
      const hit = [dirname(file), ...includeDirs].map((d) => normalize(join(d, inc))).find((p) => existsSync(p));
      if (hit && includesPrefetch(hit, includeDirs, cache, visiting)) { found = true; break; }
    }
  }
  visiting.delete(file);
  cache.set(file, found);
  return found;
}

// ---- objdump -dr parsing

const FUNC_HEADER = /^([0-9a-f]+) <(.+)>:$/;
const SECTION_HEADER = /^Disassembly of section (\S+):$/;
const INSN = /^\s*([0-9a-f]+):\s+(.*)$/;
const RELOC = /^\s*[0-9a-f]+: (R_\w+)\s+(\S+)$/;

// Splits "sym-0x4" / ".text.unlikely+0x1c" / "sym" into [sym, addend].
function symAddend(s) {
  const m = /^(.*?)([+-]0x[0-9a-f]+)?$/.exec(s);
  return [m[1], m[2] ? parseInt(m[2], 16) : 0];
}

/**
 * Counts one object's prefetches from `objdump -dr --no-show-raw-insn` output: prefetch
 * instructions, and call sites (call, or a jump that lands on another function's first byte: a
 * tail call) whose target is a function of this object holding a prefetch instruction.
 * Returns { prefetches, calls, functions: { name: { prefetches, callers } } }.
 */
export function countPrefetches(disasm) {
  const functions = new Map();  // name -> { section, start, prefetches, callers }
  const bySectionStart = new Map();  // "section@start" -> name
  const sites = [];  // { from, section, target: {section, addr} | {name} }
  let section = '';
  let current = null;
  let pending = null;  // the last call/jump, which the next relocation line may redirect
  for (const line of disasm.split('\n')) {
    let m;
    if ((m = SECTION_HEADER.exec(line))) { section = m[1]; current = null; pending = null; continue; }
    if ((m = FUNC_HEADER.exec(line))) {
      const start = parseInt(m[1], 16);
      current = { name: m[2], section, start, prefetches: 0, callers: 0 };
      functions.set(current.name, current);
      bySectionStart.set(`${section}@${start}`, current.name);
      pending = null;
      continue;
    }
    if ((m = RELOC.exec(line))) {
      if (pending) {
        const [sym, addend] = symAddend(m[2]);
        // A pc-relative call's field is its last 4 bytes: the addend is the target - 4.
        pending.target = sym.startsWith('.') ? { section: sym, addr: addend + 4 } : { name: sym };
        pending = null;
      }
      continue;
    }
    if (!current || !(m = INSN.exec(line))) continue;
    const body = m[2].replace(/^(?:notrack|bnd|rex\.\w*|data16|cs|ds)\s+/, '');
    const [mnemonic, ...rest] = body.trim().split(/\s+/);
    if (!mnemonic) continue;
    pending = null;
    if (mnemonic.startsWith('prefetch')) { current.prefetches++; continue; }
    if (/^(?:call|j)/.test(mnemonic)) {
      const t = /^([0-9a-f]+)\b/.exec(rest.join(' '));
      const site = { from: current.name, target: t ? { section, addr: parseInt(t[1], 16) } : null };
      sites.push(site);
      pending = site;
    }
  }
  let calls = 0;
  for (const s of sites) {
    if (!s.target) continue;
    const name = s.target.name ?? bySectionStart.get(`${s.target.section}@${s.target.addr}`);
    if (!name || name === s.from) continue;  // inside a function, or a loop back to its own start
    const f = functions.get(name);
    if (!f || f.prefetches === 0) continue;
    f.callers++;
    calls++;
  }
  let prefetches = 0;
  const out = {};
  for (const f of functions.values()) {
    prefetches += f.prefetches;
    if (f.prefetches > 0 || f.callers > 0) out[f.name] = { prefetches: f.prefetches, callers: f.callers };
  }
  return { prefetches, calls, functions: out };
}

/**
 * Compares two builds' counts of one object. Returns null when they agree, else
 * { prefetches: [built, noIpa], calls: [built, noIpa], functions: [{ name, built, noIpa }] }
 * (functions: those whose prefetches or callers differ).
 */
export function compareCounts(built, noIpa) {
  if (built.prefetches === noIpa.prefetches && built.calls === noIpa.calls) return null;
  const names = [...new Set([...Object.keys(built.functions), ...Object.keys(noIpa.functions)])].sort();
  const none = { prefetches: 0, callers: 0 };
  const functions = names
    .map((name) => ({ name, built: built.functions[name] ?? none, noIpa: noIpa.functions[name] ?? none }))
    .filter((f) => f.built.prefetches !== f.noIpa.prefetches || f.built.callers !== f.noIpa.callers);
  return { prefetches: [built.prefetches, noIpa.prefetches], calls: [built.calls, noIpa.calls], functions };
}

// ---- compile commands

// Splits a compile_commands "command" string into arguments (CMake quotes with "..." and \").
export function splitCommand(command) {
  const out = [];
  let cur = '';
  let inQuote = false;
  let any = false;
  for (let i = 0; i < command.length; i++) {
    const c = command[i];
    if (c === '\\' && i + 1 < command.length && (command[i + 1] === '"' || command[i + 1] === '\\')) { cur += command[++i]; any = true; }
    else if (c === '"') { inQuote = !inQuote; any = true; }
    else if (/\s/.test(c) && !inQuote) { if (any) out.push(cur); cur = ''; any = false; }
    else { cur += c; any = true; }
  }
  if (any) out.push(cur);
  return out;
}

// The flags of one compile command without the compiler, -o, -c and the source; absolute paths
// under `root` made relative to it (the compiles run in root: the same ccache key in any clone).
export function flagsOf(entry, root) {
  const args = entry.arguments ?? splitCommand(entry.command);
  const rel = (p) => {
    const abs = isAbsolute(p) ? p : resolve(entry.directory, p);
    const r = relative(root, abs);
    return r === '' ? '.' : r.startsWith('..') || isAbsolute(r) ? abs : toPosix(r);
  };
  const src = resolve(entry.directory, entry.file);
  const flags = [];
  // Skip the compiler and any launcher before it (ccache g++ ...).
  let first = 1;
  while (first < args.length && !args[first].startsWith('-')) first++;
  for (let i = first; i < args.length; i++) {
    const a = args[i];
    if (a === '-o' || a === '-MF' || a === '-MT' || a === '-MQ') { i++; continue; }
    if (a === '-c' || a === '-MD' || a === '-MMD') continue;
    if (resolve(entry.directory, a) === src) continue;
    if (a === '-I' || a === '-isystem' || a === '-include') { flags.push(a, rel(args[++i])); continue; }
    const inc = /^(-I|-isystem)(.+)$/.exec(a);
    flags.push(inc ? inc[1] + rel(inc[2]) : a);
  }
  return flags;
}

// binding.gyp's cflags_cc (the shipped addon's compile flags).
function gypFlags(root) {
  const p = join(root, 'binding.gyp');
  if (!existsSync(p)) return [];
  const gyp = JSON.parse(readFileSync(p, 'utf8'));
  return gyp.targets?.[0]?.cflags_cc ?? [];
}

const has = (cmd, args = ['--version']) => {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
};

function runAsync(cmd, args, cwd) {
  return new Promise((done) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', (e) => done({ status: -1, out, err: err + e.message }));
    child.on('close', (status) => done({ status, out, err }));
  });
}

async function pool(items, jobs, fn) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => { for (let i = next++; i < items.length; i = next++) results[i] = await fn(items[i], i); };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(jobs, items.length)) }, worker));
  return results;
}

/** Configures CMake (core only, GCC, compile commands exported) in `dir`; returns the entries. */
export function configure(root, dir) {
  const r = spawnSync('cmake', ['-S', root, '-B', dir, '-DCMAKE_EXPORT_COMPILE_COMMANDS=ON', '-DCMAKE_BUILD_TYPE=Release',
    '-DEMOLLM_BUILD_TESTS=OFF', '-DEMOLLM_BUILD_BENCH=OFF', '-DEMOLLM_CUDA=OFF', '-DCMAKE_CXX_COMPILER=g++', '-DCMAKE_C_COMPILER=gcc'],
  { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`cmake configure failed: ${r.error?.message ?? r.stderr}`);
  return JSON.parse(readFileSync(join(dir, 'compile_commands.json'), 'utf8'));
}

/**
 * Runs the check over `entries` (compile_commands.json entries; those outside base/, kernels/,
 * native/ and those without a prefetch are skipped). Objects go to `objDir`.
 * Returns { checked: [{ file, built, noIpa }], differing: [{ file, ...compareCounts }], seconds }.
 */
export async function checkPrefetchEmitted(root, entries, objDir, { jobs = 2, log = () => {} } = {}) {
  const t0 = Date.now();
  const extra = gypFlags(root);
  const cache = new Map();
  const launcher = has('ccache') ? ['ccache'] : [];
  const units = [];
  for (const e of entries) {
    const file = toPosix(relative(root, resolve(e.directory, e.file)));
    if (!/^(base|kernels|native)\//.test(file) || !/\.(c|cc|cpp|cxx)$/.test(file)) continue;
    const flags = [...flagsOf(e, root), ...extra];
    const includeDirs = flags.filter((f) => f.startsWith('-I')).map((f) => resolve(root, f.slice(2)));
    if (!includesPrefetch(join(root, file), includeDirs, cache)) continue;
    units.push({ file, flags, size: readFileSync(join(root, file)).length });
  }
  // Largest first, so the two compile slots finish together.
  const tasks = units.flatMap((u, i) => [
    { u, kind: 'built', flags: u.flags, obj: join(objDir, `${i}.built.o`) },
    { u, kind: 'noIpa', flags: [...u.flags, ...NO_IPA_FLAGS], obj: join(objDir, `${i}.noipa.o`) },
  ]).sort((a, b) => b.u.size - a.u.size);
  const compiler = 'g++';
  await pool(tasks, jobs, async (t) => {
    const args = [...launcher.slice(1), ...t.flags, '-c', t.u.file, '-o', t.obj];
    const r = await runAsync(launcher.length ? launcher[0] : compiler, launcher.length ? [compiler, ...args] : args, root);
    if (r.status !== 0) throw new Error(`compiling ${t.u.file} (${t.kind}) failed:\n${r.err}`);
    const d = await runAsync('objdump', ['-dr', '--no-show-raw-insn', t.obj], root);
    if (d.status !== 0) throw new Error(`objdump ${t.obj} failed: ${d.err}`);
    t.u[t.kind] = countPrefetches(d.out);
    log(`${t.u.file} (${t.kind === 'built' ? 'as built' : NO_IPA_FLAGS.join(' ')}): ${t.u[t.kind].prefetches} prefetches, ${t.u[t.kind].calls} calls`);
  });
  const checked = units.map((u) => ({ file: u.file, built: u.built, noIpa: u.noIpa }));
  const differing = [];
  for (const c of checked) {
    const d = compareCounts(c.built, c.noIpa);
    if (d) differing.push({ file: c.file, ...d });
  }
  return { checked, differing, seconds: (Date.now() - t0) / 1000 };
}

function demangle(names) {
  const r = spawnSync('c++filt', { input: names.join('\n'), encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n') : names;
}

export function formatDifference(d) {
  const lines = [`${d.file}: prefetch instructions ${d.prefetches[0]} as built, ${d.prefetches[1]} with ${NO_IPA_FLAGS.join(' ')}; ` +
    `calls into prefetching functions ${d.calls[0]} vs ${d.calls[1]}`];
  const names = demangle(d.functions.map((f) => f.name));
  d.functions.forEach((f, i) => lines.push(`  ${names[i] || f.name}: ${f.built.prefetches} prefetches / ${f.built.callers} callers as built, ` +
    `${f.noIpa.prefetches} / ${f.noIpa.callers} without the IPA passes`));
  return lines.join('\n');
}

async function main(argv) {
  let buildDir = null;
  let jobs = 2;
  let keep = false;
  let root = join(dirname(fileURLToPath(import.meta.url)), '..');
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--build-dir') buildDir = resolve(argv[++i]);
    else if (argv[i] === '--jobs') jobs = Number(argv[++i]);
    else if (argv[i] === '--keep') keep = true;
    else root = resolve(argv[i]);
  }
  if (process.arch !== 'x64') {
    console.error(`check-prefetch-emitted: reads x86-64 objects; this host is ${process.arch}: cannot check`);
    return 2;
  }
  for (const [tool, pkg] of [['g++', 'g++'], ['objdump', 'binutils'], ...(buildDir ? [] : [['cmake', 'cmake']])]) {
    if (!has(tool)) {
      console.error(`check-prefetch-emitted: ${tool} not found (apt-get install ${pkg}): cannot check`);
      return 2;
    }
  }
  const tmp = mkdtempSync(join(tmpdir(), 'emollm-prefetch-'));
  try {
    const entries = buildDir
      ? JSON.parse(readFileSync(join(buildDir, 'compile_commands.json'), 'utf8'))
      : configure(root, join(tmp, 'cmake'));
    const r = await checkPrefetchEmitted(root, entries, tmp, { jobs, log: (s) => console.log(s) });
    for (const d of r.differing) console.error(formatDifference(d));
    console.log(`check-prefetch-emitted: ${r.checked.length} sources with prefetches, ${r.differing.length} differing ` +
      `(${r.seconds.toFixed(1)} s, -j${jobs})`);
    if (r.differing.length > 0)
      console.error('A function that only prefetches must be __attribute__((always_inline)) (docs/architecture.md): ' +
        "GCC's IPA deleted the calls to it in the build above.");
    return r.differing.length > 0 ? 1 : 0;
  } finally {
    if (keep) console.log(`objects kept in ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((code) => process.exit(code), (e) => { console.error(`check-prefetch-emitted: ${e.message}`); process.exit(2); });
}
