#!/usr/bin/env node
// Builds the linux-arm64 glibc prebuilt binary, prebuilds/linux-arm64/emollm.glibc.node, on a
// Debian x64 host with Debian's cross compiler (`apt-get install g++-aarch64-linux-gnu`):
//   node scripts/prebuild-linux-arm64.mjs
// libstdc++ and libgcc are linked statically (-static-libstdc++ -static-libgcc): the cross
// compiler's libstdc++ is GCC 12's, whose symbol versions (GLIBCXX_3.4.30) distributions with an
// older libstdc++ (RHEL 9: GCC 11) lack, so the binary needs only glibc (GLIBC_2.33 at most,
// scripts/check-glibc-prebuild.mjs checks it). Runs in a temporary copy of the sources
// (scripts/prebuild-in-copy.mjs). Check it with scripts/check-glibc-prebuild.mjs and, under
// qemu-user with Debian's arm64 Node, scripts/check-prebuild.mjs (docs/platforms.md).
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { makeWork, prebuildInCopy, removeWork } from './prebuild-in-copy.mjs';

try {
  const { values } = parseArgs({ options: { help: { type: 'boolean', short: 'h' } }, strict: true });
  if (values.help) {
    console.log('usage: node scripts/prebuild-linux-arm64.mjs   (env CROSS_PREFIX=aarch64-linux-gnu- for another cross toolchain)');
    process.exit(0);
  }
} catch (e) {
  console.error(`prebuild-linux-arm64: ${e.message}`);
  process.exit(2);
}
const prefix = process.env.CROSS_PREFIX ?? 'aarch64-linux-gnu-';
for (const tool of ['gcc', 'g++', 'strip']) {
  if (spawnSync(`${prefix}${tool}`, ['--version'], { stdio: 'ignore' }).status !== 0) {
    console.error(`prebuild-linux-arm64: ${prefix}${tool} not found: apt-get install g++-aarch64-linux-gnu (Debian), or set CROSS_PREFIX`);
    process.exit(2);
  }
}
const work = makeWork('emollm-arm64-');
let ok = false;
try {
  ok = !!prebuildInCopy({
    arch: 'arm64',
    libc: 'glibc',
    work,
    label: `CXX=${prefix}g++, static libstdc++`,
    env: {
      CC: `${prefix}gcc`,
      CXX: `${prefix}g++`,
      LINK: `${prefix}g++`,
      LDFLAGS: '-static-libstdc++ -static-libgcc',
      PREBUILD_STRIP_BIN: `${prefix}strip`,
    },
  });
} finally {
  removeWork(work);
}
process.exit(ok ? 0 : 1);
