import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/js/**/*.test.ts'],
    testTimeout: 60_000,
    // Hooks load models too (about 45 beforeAll without a timeout of their own): vitest's default
    // of 10 s was 4x above the slowest measured on a loaded 2-core machine (batching.test.ts's two
    // llava-tiny loads, tokenizer.test.ts's llava-1.5 tokenizer.json: 1.5-2.7 s each with two busy
    // loops beside them); the tests' own limit applies to them as well.
    hookTimeout: 60_000,
    // Native work uses its own threads; one test file at a time keeps a 2-core CI machine honest.
    fileParallelism: false,
  },
});
