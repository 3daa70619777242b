import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests start real Orthanc servers; two cores cannot run many files at once.
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // node:sqlite (the local state) warns that it is experimental in every worker; the CLI silences it too.
    execArgv: ['--disable-warning=ExperimentalWarning'],
    globalSetup: ['test/global-setup.ts'],
  },
});
