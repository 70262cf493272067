#!/usr/bin/env node
// Prints the native source list from native/sources.json for binding.gyp:
//   node scripts/sources.mjs core kernels_cpu loaders addon
// (space-separated paths relative to the repository root, as gyp's <!@(...) expects).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const lists = JSON.parse(readFileSync(join(root, 'native', 'sources.json'), 'utf8'));
const groups = process.argv.slice(2);
const out = [];
for (const g of groups) {
  if (!Array.isArray(lists[g])) throw new Error(`native/sources.json has no group "${g}"`);
  out.push(...lists[g]);
}
process.stdout.write(out.join(' ') + '\n');
