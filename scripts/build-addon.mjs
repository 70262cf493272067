#!/usr/bin/env node
// Brings build/Release/emollm.node up to date with the sources before the JS tests: an
// incremental `node-gyp build` when the build folder is configured, else `node-gyp rebuild`.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { nodeGypCommand } from './node-gyp-args.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const configured = existsSync(join(root, 'build', 'config.gypi')) && existsSync(join(root, 'build', 'Makefile'));
const [cmd, argv] = nodeGypCommand(root, [configured ? 'build' : 'rebuild', '--loglevel=warn', `--jobs=${process.env.JOBS ?? '2'}`]);
const r = spawnSync(cmd, argv, { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
