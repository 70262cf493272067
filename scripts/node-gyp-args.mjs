// Shared by install.mjs and build-addon.mjs: how to invoke node-gyp here.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

/** [command, args] running node-gyp with `args`, preferring npm's own node-gyp, then ours. */
export function nodeGypCommand(root, args) {
  const extra = [];
  // Use the headers installed beside this Node (Debian's nodejs ships them in /usr/include/node)
  // instead of downloading them, unless npm already says where they are.
  const prefix = resolve(dirname(process.execPath), '..');
  if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h')))
    extra.push(`--nodedir=${prefix}`);
  const localGyp = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const gyp = process.env.npm_config_node_gyp ?? (existsSync(localGyp) ? localGyp : undefined);
  return gyp ? [process.execPath, [gyp, ...args, ...extra]] : ['node-gyp', [...args, ...extra]];
}
