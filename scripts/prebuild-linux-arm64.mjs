#!/usr/bin/env node
// Builds the linux-arm64 glibc prebuilt binary, prebuilds/linux-arm64/emollm.glibc.node, on a
// Debian x64 host with Debian's cross compiler (`apt-get install g++-aarch64-linux-gnu`):
//   node scripts/prebuild-linux-arm64.mjs
// libstdc++ stays a shared library. Linked statically (-static-libstdc++) it would drop the
// GLIBCXX_3.4.30 requirement (GCC 12's libstdc++, which RHEL 9's GCC 11 lacks) but pull in glibc
// 2.34 / 2.36 symbols from libstdc++.a (pthread_* moved into libc in 2.34; arc4random behind
// std::random_device), raising the glibc floor above Ubuntu 22.04's 2.35 (docs/platforms.md).
// So the binary needs glibc 2.33 and GCC 12's libstdc++, as the x64 one does
// (scripts/check-glibc-prebuild.mjs --max-glibc 2.33 --max-glibcxx 3.4.30 checks both).
// Runs in a temporary copy of the sources (scripts/prebuild-in-copy.mjs). Check it with
// scripts/check-glibc-prebuild.mjs and, under qemu-user with Debian's arm64 Node,
// scripts/check-prebuild.mjs (docs/platforms.md).
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
    label: `CXX=${prefix}g++`,
    env: {
      CC: `${prefix}gcc`,
      CXX: `${prefix}g++`,
      LINK: `${prefix}g++`,
      PREBUILD_STRIP_BIN: `${prefix}strip`,
    },
  });
} finally {
  removeWork(work);
}
process.exit(ok ? 0 : 1);
