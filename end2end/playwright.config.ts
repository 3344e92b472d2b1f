import { defineConfig } from '@playwright/test';

// Debian's Chromium, never a downloaded browser (scripts/e2e.sh installs it
// with apt when missing). Each test file starts its own release controller
// (tests/controller.ts), so the run needs no webServer block.
export default defineConfig({
  testDir: './tests',
  timeout: 90_000,
  expect: { timeout: 10_000 },
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: [['list']],
  outputDir: 'test-results',
  use: {
    headless: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
  projects: [
    { name: 'live', testMatch: /live\.spec\.ts/ },
    { name: 'demo', testMatch: /demo\.spec\.ts/ },
    { name: 'wire', testMatch: /wire\.spec\.ts/ },
    { name: 'build', testMatch: /build\.spec\.ts/ },
  ],
});
