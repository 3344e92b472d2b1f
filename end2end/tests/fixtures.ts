// Shared test setup: every page records console errors and warnings (a
// hydration mismatch shows up there or as a page error), violations of the
// pages' Content-Security-Policy (which every page must carry), and
// cumulative layout shift from the first paint on.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test as base, expect, Page } from '@playwright/test';

/// Marks a test that stops the server on purpose: failed requests are expected.
export const NETWORK_ERRORS_EXPECTED = 'network-errors-expected';
/// Marks a test that opens a build page with a wrong secret: Chromium logs
/// the API's 401/403/404 answer as a console error of its own (not the page's).
export const REFUSALS_EXPECTED = 'refusals-expected';

export const test = base.extend<{ problems: string[] }>({
  problems: [
    async ({ page }, use, testInfo) => {
      const problems: string[] = [];
      page.on('console', (message) => {
        if (message.type() === 'error' || message.type() === 'warning') {
          problems.push(`${message.type()}: ${message.text()}`);
        }
      });
      page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
      // The browser tests run with the CSP on: every page the browser
      // navigates to must carry it, and nothing on it may break it.
      page.on('response', (response) => {
        const request = response.request();
        if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
          const policy = response.headers()['content-security-policy'] ?? '';
          if (!/default-src 'self'/.test(policy)) {
            problems.push(`no Content-Security-Policy on ${response.url()}: ${JSON.stringify(policy)}`);
          }
        }
      });
      await page.exposeFunction('__cspViolation', (violation: string) => problems.push(`csp: ${violation}`));
      await page.addInitScript(() => {
        const w = window as any;
        document.addEventListener('securitypolicyviolation', (e) => {
          w.__cspViolation(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}:${e.lineNumber}`);
        });
        w.__cls = 0;
        w.__shifts = [];
        new PerformanceObserver((list) => {
          for (const entry of list.getEntries() as any[]) {
            if (!entry.hadRecentInput) {
              w.__cls += entry.value;
              w.__shifts.push(entry.sources?.map((s: any) => s.node?.id || s.node?.className || s.node?.nodeName));
            }
          }
        }).observe({ type: 'layout-shift', buffered: true });
      });
      await use(problems);
      const allowNetwork = testInfo.annotations.some((a) => a.type === NETWORK_ERRORS_EXPECTED);
      const allowRefusals = testInfo.annotations.some((a) => a.type === REFUSALS_EXPECTED);
      const real = problems.filter(
        (p) =>
          !(allowNetwork && /ERR_CONNECTION_REFUSED|Failed to load resource|Failed to fetch/i.test(p)) &&
          !(allowRefusals && /Failed to load resource: the server responded with a status of 40[134]/.test(p)),
      );
      expect(real, 'console errors, warnings, page errors and CSP violations').toEqual([]);
    },
    { auto: true },
  ],
});

export { expect };

/// Opens the page and waits until the hydrated page has polled once: proof
/// that hydration finished and the live timer runs.
export async function openLive(page: Page, url: string): Promise<void> {
  const polled = page.waitForResponse((r) => r.url().includes('/sfn/network_stats') && r.ok(), { timeout: 20_000 });
  await page.goto(url);
  await polled;
}

/// A count as the page writes it: `1,234`.
export function count(n: number): string {
  return n.toLocaleString('en-US');
}

/// A duration as the page writes it (src/format.rs `duration_ms`): its two
/// largest units, `5h 12m`, `42s`.
export function duration(ms: number): string {
  const units: [number, string][] = [
    [365 * 86_400_000, 'y'],
    [86_400_000, 'd'],
    [3_600_000, 'h'],
    [60_000, 'm'],
    [1_000, 's'],
  ];
  for (let i = 0; i < units.length; i++) {
    const [size, name] = units[i];
    if (ms >= size) {
      const big = Math.floor(ms / size);
      const bigText = name === 'y' ? count(big) : String(big);
      const next = units[i + 1];
      if (!next) return `${bigText}${name}`;
      const small = Math.floor((ms % size) / next[0]);
      return small === 0 ? `${bigText}${name}` : `${bigText}${name} ${small}${next[1]}`;
    }
  }
  return '0s';
}

/// A queue wait as the page writes it (src/format.rs `wait_ms`).
export function wait(ms: number): string {
  if (ms < 1_000) return `${Math.max(0, ms)}ms`;
  if (ms < 10_000) return `${Math.floor(ms / 1000)}.${Math.floor((ms % 1000) / 100)}s`;
  return duration(ms);
}

/// The queue-wait card's figure and hint for these figures.
export function queueWaitTexts(stats: { queueWaitP50Ms: number | null; queueWaitP95Ms: number | null }): [string, string] {
  if (stats.queueWaitP50Ms === null || stats.queueWaitP95Ms === null) return ['none', 'no builds in the last 24 h'];
  return [wait(stats.queueWaitP50Ms), `last 24 h; 95% within ${wait(stats.queueWaitP95Ms)}`];
}

/// Opens the page, pauses its updates, and returns the figures of the last
/// server-function answer it received (the ones it shows from then on).
export async function openAndFreeze(page: Page, url: string): Promise<any> {
  const answers: any[] = [];
  page.on('response', async (r) => {
    if (r.url().includes('/sfn/network_stats') && r.ok()) {
      try {
        answers.push(await r.json());
      } catch {
        // a response of a closed page
      }
    }
  });
  await openLive(page, url);
  await page.locator('#pause').click();
  await expect(page.locator('#pause')).toHaveAttribute('aria-pressed', 'true');
  // An answer in flight when the pause was pressed may still land.
  await page.waitForTimeout(500);
  expect(answers.length).toBeGreaterThan(0);
  return answers[answers.length - 1];
}

/// Cumulative layout shift so far.
export async function cls(page: Page): Promise<{ value: number; shifts: unknown[] }> {
  return page.evaluate(() => ({ value: (window as any).__cls, shifts: (window as any).__shifts }));
}

/// Full-page screenshots at desktop and phone width, light and dark, into
/// end2end/screenshots/`prefix`desktop-light.png and so on; `open` loads
/// the page ready to be seen.
export async function screenshots(page: Page, prefix: string, open: () => Promise<void>): Promise<void> {
  const dir = path.resolve(__dirname, '..', 'screenshots');
  fs.mkdirSync(dir, { recursive: true });
  for (const [width, height, name] of [
    [1280, 900, 'desktop'],
    [390, 844, 'phone'],
  ] as const) {
    await page.setViewportSize({ width, height });
    for (const scheme of ['light', 'dark'] as const) {
      await page.emulateMedia({ colorScheme: scheme, reducedMotion: 'reduce' });
      await open();
      const file = path.join(dir, `${prefix}${name}-${scheme}.png`);
      await page.screenshot({ path: file, fullPage: true });
      expect(fs.statSync(file).size).toBeGreaterThan(10_000);
    }
  }
}
