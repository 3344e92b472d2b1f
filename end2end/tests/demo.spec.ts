// The page of a controller built with `--features demo`.
import * as path from 'node:path';
import { Controller, Worker } from './controller';
import { test, expect, openLive, openAndFreeze, queueWaitTexts, REFUSALS_EXPECTED } from './fixtures';
import { VIEWS, expectNoViolations, clippedInCounters } from './audit';
import { sitePages } from './pages';

test.describe.configure({ mode: 'serial' });

let ctl: Controller;

test.beforeAll(async () => {
  const bin = process.env.FREEAGENT_DEMO_BIN ?? path.resolve(__dirname, '..', '..', 'target', 'e2e', 'freeagent-demo');
  ctl = await Controller.start({ bin, pollInterval: '1s' });
});

test.afterAll(async () => {
  await ctl?.dispose();
});

test('says "Demo data", in the server HTML too', async ({ page }) => {
  const html = await (await fetch(`${ctl.url}/`)).text();
  expect(html).toMatch(/id="data-source"[^>]*>Demo data</);
  expect((await ctl.stats()).demo).toBe(true);
  await openLive(page, ctl.url);
  await expect(page.locator('#data-source')).toHaveText('Demo data');
});

test('demo figures move', async ({ page }) => {
  await openLive(page, ctl.url);
  const figures = page.locator('.counters');
  const first = await page.locator('#cores-busy').textContent();
  const firstAll = await figures.textContent();
  await expect(page.locator('#cores-busy')).not.toHaveText(first ?? '', { timeout: 5 * ctl.pollMs });
  expect(await figures.textContent()).not.toBe(firstAll);
  const total = Number((await page.locator('#total-builds').textContent())?.replace(/,/g, ''));
  expect(total).toBeGreaterThan(1_000_000);
  await expect(page.locator('.chart-table tbody tr')).toHaveCount(30);
});

test('the queue wait shows what the demo server function returns', async ({ page }) => {
  const shown = await openAndFreeze(page, ctl.url);
  expect(shown.demo).toBe(true);
  expect(shown.queueWaitP50Ms).toBeGreaterThan(0);
  expect(shown.queueWaitP95Ms).toBeGreaterThan(shown.queueWaitP50Ms);
  const [wait, waitHint] = queueWaitTexts(shown);
  await expect(page.locator('#queue-wait')).toHaveText(wait);
  await expect(page.locator('#queue-wait-hint')).toHaveText(waitHint);
  // In the server's first HTML too, figured the same way.
  const html = await (await fetch(`${ctl.url}/`)).text();
  expect(html).toMatch(/id="queue-wait"[^>]*>\d[^<]*</);
});

test('axe-core: no violations on any page, desktop and phone, light and dark', async ({ page }) => {
  test.setTimeout(240_000);
  test.info().annotations.push({ type: REFUSALS_EXPECTED });
  const worker = await Worker.register(ctl);
  const submitted = await ctl.api('POST', '/api/builds', ctl.adminKey, { platform: 'linux', label: 'demo audit' });
  const claimed = await ctl.api('POST', '/api/workers/poll', worker.token);
  await ctl.api('POST', `/api/builds/${claimed.build.id}/start`, worker.token);
  await worker.telemetry(submitted.id, 3, 250);
  for (const view of VIEWS) {
    await page.setViewportSize({ width: view.width, height: view.height });
    await page.emulateMedia({ colorScheme: view.scheme });
    for (const site of sitePages(ctl, submitted.id, submitted.accessToken)) {
      await site.open(page);
      await expectNoViolations(page, `demo ${site.what} at ${view.width} px, ${view.scheme}`);
    }
  }
});

test('no text in a counter card is cut short at 320 px (demo figures are the largest)', async ({ page }) => {
  await page.setViewportSize({ width: 320, height: 700 });
  await openLive(page, ctl.url);
  expect(await clippedInCounters(page)).toEqual([]);
});
