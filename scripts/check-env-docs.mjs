#!/usr/bin/env node
// Checks that docs/environment.md names every EMOLLM_* environment variable the sources read, and
// names none that nothing reads (a switch removed from the code leaves its row behind otherwise).
//
// A variable counts as read where the sources read it by name:
//   C / C++ / CUDA   a string literal that is exactly the name: getenv("EMOLLM_X"),
//                    EnvSwitch on("EMOLLM_X"), env_int("EMOLLM_X", 0), ... (a literal that only
//                    mentions the name, such as a benchmark note "... (EMOLLM_X=0) ...", does not)
//   JS / TS          process.env.EMOLLM_X, process.env['EMOLLM_X'], or a call whose argument is the
//                    name's literal (bench/train.mjs's switchOff('EMOLLM_X') reads process.env[name])
//   shell            $EMOLLM_X / ${EMOLLM_X...}
//   CMake            $ENV{EMOLLM_X} / ENV{EMOLLM_X}
//   Python           a string literal that is exactly the name (os.environ["EMOLLM_X"])
// Macros (EMOLLM_CHECK_ARG, -DEMOLLM_GEMV_PF=...), CMake options (-DEMOLLM_CUDA=ON) and object keys
// that set a variable for a child process ({ ...process.env, EMOLLM_PROFILE: '1' }) are not reads.
// Names starting EMOLLM_TEST_ are scratch names of the tests of the environment parser itself.
//
// A variable counts as documented when a table row of docs/environment.md starts with it:
//   | `EMOLLM_X` | ...
// (mentions in prose do not count, so the doc can speak of removed switches and CMake options).
//
//   node scripts/check-env-docs.mjs [root]     prints each mismatch; exit status 1 when any
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

// Where the library, the addon, lib/, the CLI, the build and test scripts and the benchmarks live.
export const SOURCE_DIRS = ['base', 'kernels', 'native', 'lib', 'scripts', 'bench', 'cmake', 'tests', '.ci'];
export const SOURCE_FILES = ['CMakeLists.txt', 'binding.gyp'];
export const DOC = 'docs/environment.md';
// Folders never walked: dependencies, build outputs, git-ignored anchors and model links.
const SKIP_DIRS = new Set(['node_modules', 'build', 'dist', 'prebuilds', 'anchors', 'models', 'fixtures', '.git']);
const IGNORED_PREFIX = 'EMOLLM_TEST_';
// This check and its test: their examples are names in reading positions, not reads.
const SELF = new Set(['scripts/check-env-docs.mjs', 'tests/js/env_docs.test.ts']);

const NAME = 'EMOLLM_[A-Z0-9_]+';
const C_EXT = /\.(h|hpp|c|cc|cpp|cu|cuh|inc)$/;
const JS_EXT = /\.(js|mjs|cjs|ts|mts|cts)$/;
const SH_EXT = /\.(sh|bash)$/;
const CMAKE_EXT = /(\.cmake|CMakeLists\.txt)$/;
const PY_EXT = /\.py$/;

const PATTERNS = {
  c: [new RegExp(`"(${NAME})"`, 'g')],
  js: [
    new RegExp(`process\\.env\\.(${NAME})\\b`, 'g'),
    new RegExp(`process\\.env\\[\\s*['"\`](${NAME})['"\`]\\s*\\]`, 'g'),
    new RegExp(`\\(\\s*['"](${NAME})['"]\\s*[,)]`, 'g'),
  ],
  sh: [new RegExp(`\\$\\{?(${NAME})`, 'g')],
  cmake: [new RegExp(`ENV\\{(${NAME})\\}`, 'g')],
  py: [new RegExp(`['"](${NAME})['"]`, 'g')],
};

function kindOf(path, text) {
  if (C_EXT.test(path)) return 'c';
  if (JS_EXT.test(path)) return 'js';
  if (SH_EXT.test(path)) return 'sh';
  if (CMAKE_EXT.test(path)) return 'cmake';
  if (PY_EXT.test(path)) return 'py';
  if (/^#!.*\b(ba|da|z)?sh\b/.test(text)) return 'sh';  // extensionless scripts such as .ci/run
  return null;
}

function walk(dir, out) {
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir)) {
    const p = join(dir, entry);
    const st = lstatSync(p);
    if (st.isSymbolicLink()) continue;
    if (st.isDirectory()) {
      if (!SKIP_DIRS.has(entry) && !entry.startsWith('build-')) walk(p, out);
    } else if (st.isFile()) out.push(p);
  }
  return out;
}

const toPosix = (p) => p.split(sep).join('/');

// Map of each variable read in the sources to the files (repository-relative) that read it.
export function readNames(root) {
  const files = [
    ...SOURCE_DIRS.flatMap((d) => walk(join(root, d), [])),
    ...SOURCE_FILES.map((f) => join(root, f)).filter((f) => existsSync(f)),
  ];
  const names = new Map();
  for (const abs of files) {
    const file = toPosix(relative(root, abs));
    if (SELF.has(file)) continue;
    const text = readFileSync(abs, 'utf8');
    if (!text.includes('EMOLLM_')) continue;
    const kind = kindOf(file, text.slice(0, 200));
    if (!kind) continue;
    for (const re of PATTERNS[kind]) {
      for (const m of text.matchAll(re)) {
        const name = m[1];
        if (name.startsWith(IGNORED_PREFIX)) continue;
        if (!names.has(name)) names.set(name, new Set());
        names.get(name).add(file);
      }
    }
  }
  return new Map([...names].map(([n, s]) => [n, [...s].sort()]));
}

// Map of each variable documented in docs/environment.md (a table row starting with it) to its line.
export function documentedNames(root) {
  const path = join(root, DOC);
  const names = new Map();
  if (!existsSync(path)) return names;
  readFileSync(path, 'utf8').split('\n').forEach((line, i) => {
    const m = new RegExp(`^\\|\\s*\`(${NAME})\``).exec(line);
    if (m && !names.has(m[1])) names.set(m[1], i + 1);
  });
  return names;
}

// { undocumented: [{ name, files }], unread: [{ name, line }] }, each sorted by name.
export function checkEnvDocs(root) {
  const read = readNames(root);
  const documented = documentedNames(root);
  const undocumented = [...read]
    .filter(([name]) => !documented.has(name))
    .map(([name, files]) => ({ name, files }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const unread = [...documented]
    .filter(([name]) => !read.has(name))
    .map(([name, line]) => ({ name, line }))
    .sort((a, b) => a.name.localeCompare(b.name));
  return { undocumented, unread };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === normalize(process.argv[1])) {
  const root = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..');
  const { undocumented, unread } = checkEnvDocs(root);
  for (const u of undocumented) console.error(`${u.name}: read in ${u.files.join(', ')} but not in ${DOC}`);
  for (const u of unread) console.error(`${DOC}:${u.line}: ${u.name} is documented but read nowhere`);
  if (undocumented.length || unread.length) {
    console.error(`emollm: ${undocumented.length} undocumented, ${unread.length} stale environment variable(s) (see ${DOC})`);
    process.exit(1);
  }
  console.log(`emollm: ${DOC} names every EMOLLM_* variable the sources read`);
}
