#!/usr/bin/env node
// Checks the layering of the native sources from their #include lines (docs/architecture.md):
//
//   base/            errors, arena, dtypes, CPU features, thread pool     may include: base
//   kernels/         compute kernels (op_params.h, cpu/, cuda/)          may include: base, kernels
//                    (kernels/cpu and kernels/cuda do not include each other: both share op_params.h)
//   native/core/     tensors, backend interface, runtime, session         may include: base, kernels, core
//   native/loaders/  file formats                                         may include: base, kernels, core, loaders
//   native/model/    model forward passes                                  may include: all of the above and model
//   native/train/    training (the MVP trainer)                            may include: all of the above and train
//   native/addon/    the Node binding                                      may include: everything
//
// and no file outside native/addon includes a Node header (napi.h, node_api.h, node.h): the core
// runs without Node. A quoted include is resolved as the compilers do (the including file's folder,
// then the include directories of CMakeLists.txt / binding.gyp: ".", "native", "kernels"); one that
// resolves to nothing is itself a violation outside the addon (it would hide a layer crossing).
//
//   node scripts/check-includes.mjs [root]     prints each violation; exit status 1 when any
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const INCLUDE_DIRS = ['.', 'native', 'kernels'];
const SOURCE_EXT = /\.(h|hpp|c|cc|cpp|cu|cuh)$/;
const NODE_HEADERS = new Set(['napi.h', 'node_api.h', 'node.h', 'uv.h', 'js_native_api.h']);

// Layer of a repository-relative path (forward slashes), or null for files outside the layers.
export function layerOf(path) {
  if (path.startsWith('base/')) return { name: 'base', rank: 0 };
  if (path.startsWith('kernels/cpu/')) return { name: 'kernels/cpu', rank: 1 };
  if (path.startsWith('kernels/cuda/')) return { name: 'kernels/cuda', rank: 1 };
  if (path.startsWith('kernels/')) return { name: 'kernels', rank: 1 };
  if (path.startsWith('native/core/')) return { name: 'native/core', rank: 2 };
  if (path.startsWith('native/loaders/')) return { name: 'native/loaders', rank: 3 };
  if (path.startsWith('native/model/')) return { name: 'native/model', rank: 4 };
  if (path.startsWith('native/train/')) return { name: 'native/train', rank: 4 }; // the trainer: a model-level user
  if (path.startsWith('native/addon/')) return { name: 'native/addon', rank: 5 };
  return null;
}

function allowed(from, to) {
  if (to.rank > from.rank) return false;
  // The two kernel families meet only in kernels/op_params.h.
  if (from.name === 'kernels/cpu' && to.name === 'kernels/cuda') return false;
  if (from.name === 'kernels/cuda' && to.name === 'kernels/cpu') return false;
  // Same rank, different folder (only the kernel families share a rank).
  return true;
}

function walk(dir, out) {
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir)) {
    const p = join(dir, entry);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (SOURCE_EXT.test(entry)) out.push(p);
  }
  return out;
}

const toPosix = (p) => p.split(sep).join('/');

// Returns the list of violations, each { file, line, include, reason }.
export function checkIncludes(root) {
  const files = ['base', 'kernels', 'native'].flatMap((d) => walk(join(root, d), []));
  const violations = [];
  for (const abs of files) {
    const file = toPosix(relative(root, abs));
    const from = layerOf(file);
    if (!from) continue;
    const lines = readFileSync(abs, 'utf8').split('\n');
    lines.forEach((text, i) => {
      const m = /^\s*#\s*include\s*([<"])([^>"]+)[>"]/.exec(text);
      if (!m) return;
      const [, kind, inc] = m;
      const report = (reason) => violations.push({ file, line: i + 1, include: inc, reason });
      if (NODE_HEADERS.has(inc.split('/').pop()) && from.name !== 'native/addon') {
        report('Node headers belong to native/addon only (the core runs without Node)');
        return;
      }
      if (kind === '<') return;  // system and third-party headers
      const candidates = [dirname(abs), ...INCLUDE_DIRS.map((d) => join(root, d))].map((d) => normalize(join(d, inc)));
      const hit = candidates.find((c) => existsSync(c) && statSync(c).isFile());
      if (!hit) {
        if (from.name !== 'native/addon') report('does not resolve to a file in the repository');
        return;
      }
      const target = toPosix(relative(root, hit));
      const to = layerOf(target);
      if (!to) {
        report(`includes ${target}, which is outside the native layers`);
        return;
      }
      if (!allowed(from, to)) report(`${from.name} may not include ${to.name} (${target})`);
    });
  }
  return violations;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === normalize(process.argv[1])) {
  const root = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..');
  const violations = checkIncludes(root);
  for (const v of violations) console.error(`${v.file}:${v.line}: #include "${v.include}": ${v.reason}`);
  if (violations.length) {
    console.error(`emollm: ${violations.length} include-rule violation(s) (see docs/architecture.md)`);
    process.exit(1);
  }
  console.log('emollm: include rules hold');
}
