// The native layering (docs/architecture.md) checked over the #include lines: kernels include no
// native/, core/loaders/model include no addon, only the addon sees Node headers.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// @ts-expect-error: a plain ESM script without type declarations
import { checkIncludes } from '../../scripts/check-includes.mjs';

type Violation = { file: string; line: number; include: string; reason: string };
const check = checkIncludes as (root: string) => Violation[];
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

describe('include rules', () => {
  it('hold for the repository', () => {
    expect(check(root)).toEqual([]);
  });

  const tmp = mkdtempSync(join(tmpdir(), 'emollm-includes-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const put = (path: string, text: string) => {
    mkdirSync(dirname(join(tmp, path)), { recursive: true });
    writeFileSync(join(tmp, path), text);
  };

  it('catch each kind of crossing in a synthetic tree', () => {
    put('base/error.h', '#pragma once\n');
    put('kernels/op_params.h', '#include "../base/error.h"\n');
    put('native/core/backend.h', '#include "kernels/op_params.h"\n#include "base/error.h"\n');
    put('native/addon/napi_util.h', '#include <napi.h>\n#include "core/backend.h"\n');
    put('native/model/llama.h', '#include "core/backend.h"\n');
    expect(check(tmp)).toEqual([]);

    put('kernels/cpu/kernels.h', '#include "../op_params.h"\n#include "../../native/core/backend.h"\n');
    put('kernels/cuda/cuda_kernels.h', '#include "../cpu/kernels.h"\n');
    put('native/model/bad.cpp', '#include "model/llama.h"\n#include "addon/napi_util.h"\n#include <napi.h>\n');
    put('base/bad.h', '#include "core/backend.h"\n#include "nowhere.h"\n');
    const found = check(tmp).map((v) => `${v.file}:${v.line}`).sort();
    expect(found).toEqual([
      'base/bad.h:1',
      'base/bad.h:2',
      'kernels/cpu/kernels.h:2',
      'kernels/cuda/cuda_kernels.h:1',
      'native/model/bad.cpp:2',
      'native/model/bad.cpp:3',
    ]);
  });
});
