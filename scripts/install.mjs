#!/usr/bin/env node
// npm "install" script: use a prebuilt binary (prebuilds/, shipped in the package) when one fits
// this platform, else compile the CPU addon from source with node-gyp. Installed as a dependency
// under npm 11 this script only runs after `npm install-scripts approve emollm`; without it,
// lib/native.ts loads the shipped prebuilds directly.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { nodeGypCommand } from './node-gyp-args.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function loads() {
  try {
    const nodeGypBuild = require('node-gyp-build');
    nodeGypBuild(root);
    return true;
  } catch {
    return false;
  }
}

if (process.env.EMOLLM_FORCE_BUILD !== '1' && loads()) {
  console.log('emollm: using an existing native binary');
  process.exit(0);
}

const [cmd, args] = nodeGypCommand(root, ['rebuild', `--jobs=${process.env.JOBS ?? '2'}`]);
console.log('emollm: no prebuilt binary fits this platform; compiling the CPU addon with node-gyp');
const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
if (r.status !== 0) {
  console.error(
    '\nemollm: building the native addon failed.\n' +
      '  Needs: python3, make and a C++17 compiler (g++ >= 9 or clang >= 10), and Node headers.\n' +
      '  Retry with: npm rebuild emollm   (or, for a CUDA build: npx cmake-js compile in node_modules/emollm)\n',
  );
  process.exit(r.status ?? 1);
}
