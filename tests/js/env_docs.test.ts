// docs/environment.md names every EMOLLM_* environment variable the sources read (getenv / EnvSwitch
// in the native core, process.env in lib/ and the scripts, $VAR in shell, $ENV{} in CMake), and no
// variable that nothing reads.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// @ts-expect-error: a plain ESM script without type declarations
import { checkEnvDocs } from '../../scripts/check-env-docs.mjs';

type Result = { undocumented: { name: string; files: string[] }[]; unread: { name: string; line: number }[] };
const check = checkEnvDocs as (root: string) => Result;
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

describe('environment variable docs', () => {
  it('hold for the repository', () => {
    expect(check(root)).toEqual({ undocumented: [], unread: [] });
  });

  const tmp = mkdtempSync(join(tmpdir(), 'emollm-envdocs-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const put = (path: string, text: string) => {
    mkdirSync(dirname(join(tmp, path)), { recursive: true });
    writeFileSync(join(tmp, path), text);
  };
  const row = (name: string) => `| \`${name}\` | on | \`0\`: off | what | where | kept by |\n`;

  it('catch a variable read but not documented, and one documented but read nowhere', () => {
    put('kernels/cpu/gemm.cpp',
      'static EnvSwitch on("EMOLLM_A_SWITCH");\n' +
      'long long n = env_int("EMOLLM_A_COUNT", 4);\n' +
      '#define EMOLLM_NOT_ENV 1\n' +  // a macro, not a read
      'const char* note = "previous path (EMOLLM_A_NOTE=0), interleaved";\n');  // a mention, not a read
    put('lib/runtime.ts', "export const on = process.env.EMOLLM_A_LIB === '1' || process.env['EMOLLM_A_BRACKET'] === '1';\n" +
      "const child = { ...process.env, EMOLLM_A_CHILD: '1' };\n");  // sets a child's variable: not a read
    put('bench/train.mjs', "const off = switchOff('EMOLLM_A_CALL');\n");
    put('scripts/run.sh', '#!/bin/sh\njobs=${EMOLLM_A_SHELL:-2}\n');
    put('cmake/toolchain.cmake', 'set(_bin "$ENV{EMOLLM_A_CMAKE}")\n');
    put('tests/native/test_env.cpp', 'const char* name = "EMOLLM_TEST_SCRATCH";\n');  // the parser's own tests
    const names = ['EMOLLM_A_BRACKET', 'EMOLLM_A_CALL', 'EMOLLM_A_CMAKE', 'EMOLLM_A_COUNT', 'EMOLLM_A_LIB', 'EMOLLM_A_SHELL', 'EMOLLM_A_SWITCH'];
    put('docs/environment.md', '# Environment variables\n\nProse may name `EMOLLM_REMOVED_LONG_AGO`.\n\n' +
      '| Variable | Default | Values | What | Read in | Kept by |\n|---|---|---|---|---|---|\n' + names.map(row).join(''));
    expect(check(tmp)).toEqual({ undocumented: [], unread: [] });

    // a switch added to the code without a row
    put('native/model/llama.cpp', 'static EnvSwitch on("EMOLLM_NEW_SWITCH", EnvDefault::Off);\n');
    // a row left behind after its switch was removed (line 14: the table's rows start at line 7)
    put('docs/environment.md', '# Environment variables\n\nProse may name `EMOLLM_REMOVED_LONG_AGO`.\n\n' +
      '| Variable | Default | Values | What | Read in | Kept by |\n|---|---|---|---|---|---|\n' + names.map(row).join('') + row('EMOLLM_GONE'));
    expect(check(tmp)).toEqual({
      undocumented: [{ name: 'EMOLLM_NEW_SWITCH', files: ['native/model/llama.cpp'] }],
      unread: [{ name: 'EMOLLM_GONE', line: 14 }],
    });

    // without the doc every reader above counts: each kind of source on its own
    rmSync(join(tmp, 'docs', 'environment.md'));
    expect(check(tmp).undocumented.map((u) => u.name)).toEqual([...names, 'EMOLLM_NEW_SWITCH'].sort());
  });
});
