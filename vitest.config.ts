import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/js/**/*.test.ts'],
    testTimeout: 60_000,
    // Native work uses its own threads; one test file at a time keeps a 2-core CI machine honest.
    fileParallelism: false,
  },
});
