#!/usr/bin/env node
// Assembles an arm64 root file system for qemu-user on a Debian x64 host, from Debian's own
// packages (apt-get download + dpkg -x; nothing is installed on the host):
//   node scripts/arm64-sysroot.mjs [--dir DIR]        prints the sysroot's path
// Default DIR: ~/.cache/emollm-sysroot/arm64. It holds
//  - glibc, libstdc++ and libgcc_s for aarch64, copied from Debian's cross toolchain
//    (/usr/aarch64-linux-gnu, packages libc6-arm64-cross, libstdc++6-arm64-cross);
//  - Debian's arm64 Node (nodejs 18 and the libraries it needs), to load a glibc arm64 addon:
//      qemu-aarch64 -L DIR -E LD_LIBRARY_PATH=/lib:/usr/lib/aarch64-linux-gnu DIR/usr/bin/node ...
//  - musl for aarch64 (musl, musl-dev): its dynamic loader /lib/ld-musl-aarch64.so.1, libc.so,
//    crt files and headers, to build and run a musl host that dlopen()s a musl arm64 addon
//    (scripts/check-musl-prebuild.mjs).
// Needs `dpkg --add-architecture arm64 && apt-get update` once, and the cross toolchain
// (`apt-get install g++-aarch64-linux-gnu qemu-user`). Exits 2 when a tool or package is missing.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { dir: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
if (values.help) {
  console.log('usage: node scripts/arm64-sysroot.mjs [--dir DIR]   (default ~/.cache/emollm-sysroot/arm64)');
  process.exit(0);
}
const dir = values.dir ?? join(homedir(), '.cache', 'emollm-sysroot', 'arm64');
const stamp = join(dir, '.complete');
// Debian 12's arm64 Node 18 and what it links (found with apt-cache depends), and musl.
const PACKAGES = [
  'nodejs:arm64', 'libnode108:arm64', 'libc-ares2:arm64', 'libicu72:arm64', 'libuv1:arm64', 'libnghttp2-14:arm64',
  'libbrotli1:arm64', 'libssl3:arm64', 'zlib1g:arm64', 'node-acorn', 'node-cjs-module-lexer', 'node-undici',
  'musl:arm64', 'musl-dev:arm64',
];
const CROSS = '/usr/aarch64-linux-gnu';

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.error || r.status !== 0) {
    console.error(`arm64-sysroot: ${cmd} ${args.join(' ')} failed: ${r.error?.message ?? r.stderr?.trim().split('\n').slice(-3).join(' | ')}`);
    process.exit(2);
  }
  return r.stdout;
}

if (!existsSync(stamp)) {
  if (!existsSync(join(CROSS, 'lib', 'ld-linux-aarch64.so.1'))) {
    console.error(`arm64-sysroot: ${CROSS} has no glibc for aarch64: apt-get install g++-aarch64-linux-gnu`);
    process.exit(2);
  }
  rmSync(dir, { recursive: true, force: true });
  const debs = join(dir, 'debs');
  mkdirSync(debs, { recursive: true });
  console.error(`arm64-sysroot: apt-get download ${PACKAGES.join(' ')}`);
  run('apt-get', ['download', ...PACKAGES], { cwd: debs });
  for (const f of readdirSync(debs)) run('dpkg', ['-x', join(debs, f), dir]);
  rmSync(debs, { recursive: true, force: true });
  // glibc's loader and libraries where an aarch64 binary looks for them.
  mkdirSync(join(dir, 'lib'), { recursive: true });
  cpSync(join(CROSS, 'lib'), join(dir, 'lib'), { recursive: true, dereference: false });
  // Absolute symlinks (ld-musl-aarch64.so.1 -> /usr/lib/aarch64-linux-musl/libc.so) would point
  // at the host's files: make them relative to the sysroot.
  const fix = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isSymbolicLink()) {
        const t = readlinkSync(p);
        if (t.startsWith('/')) {
          // The cross toolchain's links point into /usr/aarch64-linux-gnu/lib, copied to DIR/lib.
          const inRoot = t.startsWith(`${CROSS}/lib/`) ? join(dir, 'lib', t.slice(CROSS.length + 5)) : join(dir, t);
          rmSync(p);
          symlinkSync(relative(dirname(p), inRoot) || '.', p);
        }
      } else if (e.isDirectory()) fix(p);
    }
  };
  fix(dir);
  if (!existsSync(join(dir, 'lib', 'ld-musl-aarch64.so.1')) || !lstatSync(join(dir, 'usr', 'bin', 'node'), { throwIfNoEntry: false })) {
    console.error(`arm64-sysroot: ${dir} is incomplete (no musl loader or no node)`);
    process.exit(2);
  }
  writeFileSync(stamp, `${PACKAGES.join(' ')}\n`);
}
console.log(dir);
