// The EmollmError a call throws or a promise rejects with, for tests that then check its code or
// message; anything else thrown, or nothing, fails the test. Shared by the tests of the loaders,
// tokenizers, chat templates and image preprocessing.
import { expect } from 'vitest';

import { EmollmError } from '../../../lib/errors.js';
import type { EmollmErrorCode } from '../../../lib/errors.js';

function checked(e: unknown, code: EmollmErrorCode | undefined): EmollmError {
  expect(e).toBeInstanceOf(EmollmError);
  if (code !== undefined) expect((e as EmollmError).code, (e as Error).message).toBe(code);
  return e as EmollmError;
}

/** The EmollmError f() throws (with `code`, when given). */
export function throws(f: () => unknown, code?: EmollmErrorCode): EmollmError {
  try {
    f();
  } catch (e) {
    return checked(e, code);
  }
  throw new Error(code === undefined ? 'expected a throw' : `expected a throw with ${code}`);
}

/** The EmollmError p rejects with (with `code`, when given). */
export async function rejects(p: Promise<unknown>, code?: EmollmErrorCode): Promise<EmollmError> {
  try {
    await p;
  } catch (e) {
    return checked(e, code);
  }
  throw new Error(code === undefined ? 'expected a rejection' : `expected a rejection with ${code}`);
}
