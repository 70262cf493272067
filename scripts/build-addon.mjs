#!/usr/bin/env node
// Brings build/Release/emollm.node up to date with the sources before the JS tests: an
// incremental `node-gyp build` when the build folder is configured, else `node-gyp rebuild`.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { nodeGypCommand } from './node-gyp-args.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const makefile = join(root, 'build', 'Makefile');
const configured = existsSync(join(root, 'build', 'config.gypi')) && existsSync(makefile);
// A source added to native/sources.json (or a binding.gyp change) needs gyp to run again.
const stale =
  configured &&
  ['binding.gyp', join('native', 'sources.json')].some((f) => statSync(join(root, f)).mtimeMs > statSync(makefile).mtimeMs);
const steps = !configured ? ['rebuild'] : stale ? ['configure', 'build'] : ['build'];
const [cmd, argv] = nodeGypCommand(root, [...steps, '--loglevel=warn', `--jobs=${process.env.JOBS ?? '2'}`]);
const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
