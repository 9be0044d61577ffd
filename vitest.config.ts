import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // tfjs keeps global engine state; separate processes keep test files from sharing it.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 60_000,
  },
});
