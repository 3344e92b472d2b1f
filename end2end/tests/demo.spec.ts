// The page of a controller built with `--features demo`.
import * as path from 'node:path';
import { Controller } from './controller';
import { test, expect, openLive } from './fixtures';

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
