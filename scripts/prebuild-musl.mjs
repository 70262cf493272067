#!/usr/bin/env node
// Builds the musl prebuilt binary, prebuilds/linux-<arch>/emollm.musl.node, on a glibc Linux x64 host:
//   node scripts/prebuild-musl.mjs [--arch x64|arm64]
// The toolchain (Zig's musl, libc++ and link; Debian's clang-19 to compile) is described in
// scripts/musl-toolchain.mjs; the build runs in a temporary copy of the sources
// (scripts/prebuild-in-copy.mjs). Check the result with scripts/check-musl-prebuild.mjs.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MUSL_TARGETS, writeMuslWrappers } from './musl-toolchain.mjs';
import { makeWork, prebuildInCopy, removeWork } from './prebuild-in-copy.mjs';

let values;
try {
  ({ values } = parseArgs({ options: { arch: { type: 'string', default: 'x64' }, help: { type: 'boolean', short: 'h' } }, strict: true }));
} catch (e) {
  console.error(`prebuild-musl: ${e.message}`);
  process.exit(2);
}
if (values.help) {
  console.log('usage: node scripts/prebuild-musl.mjs [--arch x64|arm64]   (env ZIG=/path/to/zig to use another Zig, MUSL_CLANG=clang++-19)');
  process.exit(0);
}
const arch = values.arch;
if (!(arch in MUSL_TARGETS)) {
  console.error(`prebuild-musl: unknown --arch ${JSON.stringify(arch)} (x64 or arm64)`);
  process.exit(2);
}
if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(`prebuild-musl: runs on linux-x64 hosts only (the Zig package is x86-64), not ${process.platform}-${process.arch}`);
  process.exit(2);
}

const work = makeWork('emollm-musl-');
let ok = false;
try {
  const tc = writeMuslWrappers(join(work, 'bin'), arch);
  console.log(`prebuild-musl: compiling with ${tc.describe}`);
  ok = !!prebuildInCopy({
    arch,
    libc: 'musl',
    work,
    label: `CXX=${tc.clang ?? 'zig c++'} --target=${tc.target}, LINK=zig c++`,
    env: {
      CC: tc.cc,
      CXX: tc.cxx,
      LINK: tc.link,
      // Zig's own strip does not handle shared objects; binutils' strip does, for both arches.
      PREBUILD_STRIP_BIN: arch === 'x64' ? 'strip' : 'aarch64-linux-gnu-strip',
    },
  });
  if (!ok)
    console.error(
      `prebuild-musl: the build failed with Zig ${tc.zigVersion ?? '(unknown version)'}.` +
        (tc.zigVersion === '0.11.0' && !tc.clang && arch === 'x64'
          ? ' Zig 0.11 (LLVM 16) is known to crash on the AVX-512 BF16 kernel (docs/platforms.md, musl): install clang-19 (Debian) or set MUSL_CLANG.'
          : ''),
    );
} catch (e) {
  console.error(`prebuild-musl: ${e.message}`);
} finally {
  removeWork(work);
}
process.exit(ok ? 0 : 1);
