// Every software prefetch the core's sources ask for is emitted (docs/architecture.md): GCC 12's
// IPA (pure-const, modref) deletes the calls to a non-inlined function that only prefetches.
// scripts/check-prefetch-emitted.mjs compiles each source holding a prefetch with the core's flags
// and again with those two IPA passes off, and compares per object the prefetch instructions and
// the calls into functions that prefetch. Here: its counting on objdump text, a synthetic source
// with each kind of prefetch-only helper compiled for real, and the repository itself.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { requireTool } from './helpers/tools';

// @ts-expect-error: a plain ESM script without type declarations
import * as guard from '../../scripts/check-prefetch-emitted.mjs';

type Counts = { prefetches: number; calls: number; functions: Record<string, { prefetches: number; callers: number }> };
type Difference = { file: string; prefetches: [number, number]; calls: [number, number]; functions: { name: string }[] };
type Entry = { directory: string; file: string; command: string };
type Result = { checked: { file: string; built: Counts; noIpa: Counts }[]; differing: Difference[]; seconds: number };
const g = guard as {
  countPrefetches: (disasm: string) => Counts;
  compareCounts: (built: Counts, noIpa: Counts) => Omit<Difference, 'file'> | null;
  holdsPrefetch: (text: string) => boolean;
  splitCommand: (command: string) => string[];
  flagsOf: (entry: Entry, root: string) => string[];
  formatDifference: (d: Difference) => string;
  configure: (root: string, dir: string) => Entry[];
  checkPrefetchEmitted: (root: string, entries: Entry[], objDir: string, opts?: { jobs?: number }) => Promise<Result>;
};
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const tmp = mkdtempSync(join(tmpdir(), 'emollm-prefetch-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const put = (dir: string, path: string, text: string) => {
  mkdirSync(dirname(join(dir, path)), { recursive: true });
  writeFileSync(join(dir, path), text);
};

// objdump -dr --no-show-raw-insn of a file with a global and a static prefetch-only helper called
// from sum(), in the shape GCC 12 / binutils 2.40 print it: with the IPA passes off both calls stay
// (the global one through a PLT relocation, the static one resolved in place).
const NO_IPA = `
s.o:     file format elf64-x86-64


Disassembly of section .text:

0000000000000000 <_ZL9pf_staticPKc>:
   0:	prefetcht0 (%rdi)
   3:	prefetcht0 0x40(%rdi)
   7:	ret

0000000000000010 <_Z9pf_globalPKc>:
  10:	prefetcht0 (%rdi)
  13:	prefetchnta 0x40(%rdi)
  17:	ret

0000000000000020 <_Z3sumPKfi>:
  20:	test   %esi,%esi
  22:	jle    70 <_Z3sumPKfi+0x50>
  28:	mov    %rax,%rdi
  2b:	call   30 <_Z3sumPKfi+0x10>
			2c: R_X86_64_PLT32	_Z9pf_globalPKc-0x4
  30:	lea    0x400(%rax),%rdi
  37:	call   0 <_ZL9pf_staticPKc>
  3c:	jne    28 <_Z3sumPKfi+0x8>
  3e:	jmp    20 <_Z3sumPKfi>
  40:	call   50 <_Z3sumPKfi+0x30>
			41: R_X86_64_PLT32	.text.unlikely+0xc
  45:	jmp    10 <_Z9pf_globalPKc>
  70:	ret

Disassembly of section .text.unlikely:

0000000000000000 <_Z3sumPKfi.cold>:
   0:	ud2

0000000000000010 <_ZL7pf_coldPKc>:
  10:	prefetcht1 (%rdi)
  13:	ret
`;
// The default build of the same file: the static helper and both calls deleted, the global
// helper's body kept (it is visible outside) but never called.
const BUILT = NO_IPA
  .replace(/0000000000000000 <_ZL9pf_staticPKc>:\n(?:.*\n){3}\n/, '')
  .replace(/  2b:\tcall.*\n.*\n/, '')
  .replace(/  37:\tcall.*\n/, '');

describe('check-prefetch-emitted: counting', () => {
  it('counts prefetch instructions and the calls into prefetching functions', () => {
    const noIpa = g.countPrefetches(NO_IPA);
    // 2 + 2 + 1 prefetches; calls: the PLT call, the static call, the section-relative call to
    // pf_cold and the tail-call jump; the jump back to sum's own start and the jumps inside sum
    // are not calls
    expect(noIpa.prefetches).toBe(5);
    expect(noIpa.calls).toBe(4);
    expect(noIpa.functions).toEqual({
      _ZL9pf_staticPKc: { prefetches: 2, callers: 1 },
      _Z9pf_globalPKc: { prefetches: 2, callers: 2 },
      _ZL7pf_coldPKc: { prefetches: 1, callers: 1 },
    });
    const built = g.countPrefetches(BUILT);
    expect(built.prefetches).toBe(3);
    expect(built.calls).toBe(2);
  });

  it('names the object, both counts and the functions that differ', () => {
    const d = g.compareCounts(g.countPrefetches(BUILT), g.countPrefetches(NO_IPA));
    expect(d).not.toBeNull();
    expect(d!.prefetches).toEqual([3, 5]);
    expect(d!.calls).toEqual([2, 4]);
    expect(d!.functions.map((f) => f.name)).toEqual(['_Z9pf_globalPKc', '_ZL9pf_staticPKc']);
    const text = g.formatDifference({ file: 'kernels/cpu/s.cpp', ...d! });
    expect(text).toContain('kernels/cpu/s.cpp: prefetch instructions 3 as built, 5 with -fno-ipa-pure-const -fno-ipa-modref');
    expect(text).toContain('calls into prefetching functions 2 vs 4');
    // only the global helper's call deleted: the instruction count alone would not see it
    const onlyCall = NO_IPA.replace(/  2b:\tcall.*\n.*\n/, '');
    const d2 = g.compareCounts(g.countPrefetches(onlyCall), g.countPrefetches(NO_IPA));
    expect(d2!.prefetches).toEqual([5, 5]);
    expect(d2!.calls).toEqual([3, 4]);
    expect(g.compareCounts(g.countPrefetches(NO_IPA), g.countPrefetches(NO_IPA))).toBeNull();
  });

  it('finds prefetches in code, not in comments', () => {
    expect(g.holdsPrefetch('void f(const char* p) { __builtin_prefetch(p + 64, 0, 3); }')).toBe(true);
    expect(g.holdsPrefetch('_mm_prefetch((const char*)p, _MM_HINT_T0);')).toBe(true);
    expect(g.holdsPrefetch('asm volatile("prefetchnta %0" :: "m"(*p));')).toBe(true);
    expect(g.holdsPrefetch('// no __builtin_prefetch( here\n/* nor _mm_prefetch( */ int x;')).toBe(false);
  });

  it('takes the flags of a compile command, paths made relative to the root', () => {
    const entry = {
      directory: '/src/build',
      file: '/src/kernels/cpu/k.cpp',
      command: '/usr/bin/ccache /usr/bin/c++ -DA="x y" -I/src/. -I/src/native -isystem /opt/inc -O3 -fPIC -o CMakeFiles/k.o -c /src/kernels/cpu/k.cpp',
    };
    expect(g.splitCommand('c++ -DA=\\"q\\" "-Ia b" x')).toEqual(['c++', '-DA="q"', '-Ia b', 'x']);
    expect(g.flagsOf(entry, '/src')).toEqual(['-DA=x y', '-I.', '-Inative', '-isystem', '/opt/inc', '-O3', '-fPIC']);
  });
});

// g++ and objdump: CI has them and must run these; elsewhere a missing tool skips with the reason.
// The counts read x86-64 code (prefetcht0..., call / jmp with their relocations).
const x64 = process.arch === 'x64';
if (!x64) console.warn(`the prefetch emission checks skipped: they read x86-64 objects (this is ${process.arch})`);
const tools = x64 && requireTool('g++', 'g++', 'the prefetch emission checks') && requireTool('objdump', 'binutils', 'the prefetch emission checks');

describe.runIf(tools)('check-prefetch-emitted: compiled', () => {
  // A kernel with a prefetch-only helper; `helper` is its declaration's head.
  const kernel = (helper: string) => `#include <cstdint>
${helper} void prefetch_rows(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i);
}
float sum_rows(const float* a, int64_t rows, int64_t cols) {
  float s = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (r + 4 < rows) prefetch_rows(a + (r + 4) * cols, cols);
    for (int64_t c = 0; c < cols; ++c) s += a[r * cols + c];
  }
  return s;
}
`;
  const check = async (name: string, helper: string) => {
    const dir = join(tmp, name);
    // the addon's flags are appended as the script does for the repository
    put(dir, 'binding.gyp', JSON.stringify({ targets: [{ target_name: 't', cflags_cc: ['-O3', '-fvisibility=hidden'] }] }));
    put(dir, 'kernels/cpu/k.cpp', kernel(helper));
    put(dir, 'kernels/cpu/no_prefetch.cpp', '// a comment naming __builtin_prefetch( only\nint one() { return 1; }\n');
    const entries = ['kernels/cpu/k.cpp', 'kernels/cpu/no_prefetch.cpp'].map((file) => ({
      directory: dir, file, command: `g++ -O3 -fPIC -std=gnu++17 -I${dir} -o x.o -c ${file}`,
    }));
    mkdirSync(join(dir, 'obj'));
    return g.checkPrefetchEmitted(dir, entries, join(dir, 'obj'), { jobs: 2 });
  };

  it('passes a forced-inline helper', async () => {
    const r = await check('inline', '__attribute__((always_inline)) inline');
    expect(r.checked.map((c) => c.file)).toEqual(['kernels/cpu/k.cpp']);
    expect(r.checked[0].built.prefetches).toBeGreaterThan(0);
    expect(r.differing).toEqual([]);
  });

  it('fails a static helper kept out of line: its prefetches gone', async () => {
    const r = await check('static', 'static __attribute__((noinline))');
    expect(r.differing.map((d) => d.file)).toEqual(['kernels/cpu/k.cpp']);
    const [built, noIpa] = r.differing[0].prefetches;
    expect(built).toBeLessThan(noIpa);
  });

  it('fails a global helper kept out of line: its body kept, its calls gone', async () => {
    const r = await check('global', '__attribute__((noinline))');
    expect(r.differing.map((d) => d.file)).toEqual(['kernels/cpu/k.cpp']);
    const d = r.differing[0];
    expect(d.prefetches[0]).toBe(d.prefetches[1]);
    expect(d.calls[0]).toBe(0);
    expect(d.calls[1]).toBeGreaterThan(0);
  });
});

const cmake = tools && requireTool('cmake', 'cmake', 'the prefetch emission check of the repository');

describe.runIf(cmake)('check-prefetch-emitted: the repository', () => {
  // Compiles each core source holding a prefetch twice at -O3 (about 3 min of CPU without ccache).
  it('emits every prefetch its sources ask for', async () => {
    const entries = g.configure(root, join(tmp, 'cmake'));
    mkdirSync(join(tmp, 'repo-obj'));
    const r = await g.checkPrefetchEmitted(root, entries, join(tmp, 'repo-obj'), { jobs: 2 });
    console.log(`check-prefetch-emitted: ${r.checked.length} sources, ${r.seconds.toFixed(1)} s`);
    expect(r.checked.length).toBeGreaterThan(5);
    expect(r.differing.map((d) => g.formatDifference(d))).toEqual([]);
  }, 1_500_000);
});
