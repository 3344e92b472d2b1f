// The landing page against a real release controller with a fresh database,
// polling every second and computing figures afresh for every request.
import { Controller, Worker, sleep } from './controller';
import { test, expect, openLive, openAndFreeze, queueWaitTexts, count, cls, screenshots, NETWORK_ERRORS_EXPECTED } from './fixtures';

test.describe.configure({ mode: 'serial' });

let ctl: Controller;
let worker: Worker;

test.beforeAll(async () => {
  ctl = await Controller.start({ pollInterval: '1s' });
  worker = await Worker.register(ctl);
  // Some history: one finished build, one building with fresh samples, one queued.
  await worker.runBuild(10);
  const building = await worker.startBuild();
  await worker.telemetry(building, 5, 800);
  await ctl.api('POST', '/api/builds', ctl.adminKey, { platform: 'linux' });
});

test.afterAll(async () => {
  await ctl?.dispose();
});

/// The text inside the element with `id` in raw server HTML.
function figure(html: string, id: string): string | undefined {
  return new RegExp(`id="${id}"[^>]*>([^<]*)<`).exec(html)?.[1];
}

/// CPU-hours as the page writes amounts below 1,000 hours.
function cpuHours(seconds: number): string {
  const hours = seconds / 3600;
  if (hours > 0 && hours < 0.005) return '< 0.01';
  if (Math.round(hours * 100) < 1000) return hours.toFixed(2);
  if (Math.round(hours * 10) < 1000) return hours.toFixed(1);
  return Math.round(hours).toLocaleString('en-US');
}

test('the server HTML already holds the figures /api/stats returns', async () => {
  const res = await fetch(`${ctl.url}/`);
  expect(res.status).toBe(200);
  const html = await res.text();
  const stats = await ctl.stats();
  expect(stats.totalBuilds).toBe(1);
  expect(stats.activeBuilds).toBe(1);
  expect(stats.buildsQueued).toBe(1);
  expect(figure(html, 'nodes-online')).toBe(count(stats.nodesOnline));
  expect(figure(html, 'builds-queued')).toBe(count(stats.buildsQueued));
  expect(figure(html, 'active-builds')).toBe(count(stats.activeBuilds));
  expect(figure(html, 'builds-today')).toBe(count(stats.buildsToday));
  expect(figure(html, 'total-builds')).toBe(count(stats.totalBuilds));
  expect(figure(html, 'total-cpu-time')).toBe(cpuHours(stats.totalCpuSeconds));
  expect(figure(html, 'total-cpu-unit')).toBe('CPU-hours');
  expect(figure(html, 'cores-busy')).toBe(stats.cpuCoresBusy.toFixed(1));
  expect(figure(html, 'data-source')).toBe('Live');
  expect(stats.queueWaitP50Ms).not.toBeNull();
  const [wait, waitHint] = queueWaitTexts(stats);
  expect(figure(html, 'queue-wait')).toBe(wait);
  expect(figure(html, 'queue-wait-hint')).toBe(waitHint);
  expect(html).toContain('CPU-hours');
  expect(html).not.toMatch(/NaN|cycles/i);
  // Rendered in place, not streamed in later by script.
  expect(html).not.toContain('<template');
  expect(html).toContain('<title>Free Agent: a volunteer build network</title>');
  expect(html).toMatch(/<meta name="description" content="[^"]{50,}"/);
});

test('figures change without a reload within two poll intervals', async ({ page }) => {
  await openLive(page, ctl.url);
  const total = page.locator('#total-builds');
  const before = await ctl.stats();
  await expect(total).toHaveText(count(before.totalBuilds));
  const cpuBefore = await page.locator('#total-cpu-time').textContent();
  const asOfBefore = await page.locator('#as-of').textContent();

  await worker.runBuild(20);
  const changed = Date.now();
  await expect(total).toHaveText(count(before.totalBuilds + 1), { timeout: 2 * ctl.pollMs });
  const elapsed = Date.now() - changed;
  test.info().annotations.push({ type: 'update-latency-ms', description: String(elapsed) });
  expect(elapsed).toBeLessThanOrEqual(2 * ctl.pollMs);
  await expect(page.locator('#total-cpu-time')).not.toHaveText(cpuBefore ?? '');
  await expect(page.locator('#as-of')).not.toHaveText(asOfBefore ?? '');
  await expect(page.locator('#connection')).toHaveAttribute('data-state', 'live');
});

test('the queue wait shows what the server function returns', async ({ page }) => {
  const shown = await openAndFreeze(page, ctl.url);
  const [wait, waitHint] = queueWaitTexts(shown);
  await expect(page.locator('#queue-wait')).toHaveText(wait);
  await expect(page.locator('#queue-wait-hint')).toHaveText(waitHint);
  // The server function itself, asked directly, gives the same figures.
  const res = await fetch(`${ctl.url}/sfn/network_stats`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  expect(res.status).toBe(200);
  const direct = await res.json();
  expect([direct.queueWaitP50Ms, direct.queueWaitP95Ms]).toEqual([shown.queueWaitP50Ms, shown.queueWaitP95Ms]);
  expect(direct.queueWaitP50Ms).toBeGreaterThanOrEqual(0);
  expect(direct.queueWaitP95Ms).toBeGreaterThanOrEqual(direct.queueWaitP50Ms);
});

test('with no claim in 24 h the queue wait says so, then updates live without moving anything', async ({ page }) => {
  const fresh = await Controller.start({ pollInterval: '1s' });
  try {
    for (const [width, height] of [[390, 844], [1280, 900]] as const) {
      await page.setViewportSize({ width, height });
      await openLive(page, fresh.url);
      const stats = await fresh.stats();
      if (stats.queueWaitP50Ms === null) {
        await expect(page.locator('#queue-wait')).toHaveText('none');
        await expect(page.locator('#queue-wait-hint')).toHaveText('no builds in the last 24 h');
        const freshWorker = await Worker.register(fresh);
        await freshWorker.startBuild();
      }
      const after = await fresh.stats();
      expect(after.queueWaitP50Ms).not.toBeNull();
      const [wait, waitHint] = queueWaitTexts(after);
      await expect(page.locator('#queue-wait')).toHaveText(wait, { timeout: 2 * fresh.pollMs });
      await expect(page.locator('#queue-wait-hint')).toHaveText(waitHint);
      await sleep(fresh.pollMs);
      const shift = await cls(page);
      expect(shift.value, `${width} px: ${JSON.stringify(shift.shifts)}`).toBe(0);
    }
  } finally {
    await fresh.dispose();
  }
});

test('the page hydrates under its CSP, which refuses a script without its nonce', async ({ page, problems }) => {
  await openLive(page, ctl.url);
  // Hydrated: the live loop polled (openLive) and the page says so.
  await expect(page.locator('#connection')).toHaveAttribute('data-state', 'live');
  // What an injected script would meet: the browser refuses to run it and
  // reports the violation, which the shared fixture collects.
  await page.addScriptTag({ content: 'window.__injected = true;' }).catch(() => undefined);
  expect(await page.evaluate(() => (window as any).__injected)).toBeUndefined();
  await expect.poll(() => problems.filter((p) => p.startsWith('csp: script-src')).length).toBeGreaterThan(0);
  // This violation was the point of the test; nothing else may remain.
  const expected = (p: string) => p.startsWith('csp: script-src') || /Content Security Policy/.test(p);
  problems.splice(0, problems.length, ...problems.filter((p) => !expected(p)));
});

test('pause stops the updates and resume restarts them', async ({ page }) => {
  await openLive(page, ctl.url);
  const total = page.locator('#total-builds');
  const pause = page.locator('#pause');
  await expect(pause).toHaveAttribute('aria-pressed', 'false');
  await pause.click();
  await expect(pause).toHaveAttribute('aria-pressed', 'true');
  await expect(pause).toHaveText('Resume updates');
  await expect(page.locator('#connection')).toHaveAttribute('data-state', 'paused');
  const shown = await total.textContent();

  let polls = 0;
  page.on('request', (r) => {
    if (r.url().includes('/sfn/network_stats')) polls += 1;
  });
  await worker.runBuild(5);
  await sleep(3 * ctl.pollMs);
  expect(polls, 'no polling while paused').toBe(0);
  await expect(total).toHaveText(shown ?? '');

  await pause.click();
  await expect(pause).toHaveAttribute('aria-pressed', 'false');
  const stats = await ctl.stats();
  await expect(total).toHaveText(count(stats.totalBuilds), { timeout: 2 * ctl.pollMs });
  await expect(page.locator('#connection')).toHaveAttribute('data-state', 'live');
});

test('no layout shift while the counters update', async ({ page }) => {
  await page.setViewportSize({ width: 1280, height: 900 });
  await openLive(page, ctl.url);
  const total = page.locator('#total-builds');
  for (let i = 0; i < 3; i++) {
    const before = await ctl.stats();
    await worker.runBuild(200);
    await expect(total).toHaveText(count(before.totalBuilds + 1), { timeout: 2 * ctl.pollMs });
  }
  // A new build queued and one building: more counters change.
  const id = await worker.startBuild();
  await worker.telemetry(id, 3, 1500);
  await sleep(2 * ctl.pollMs);
  const shift = await cls(page);
  expect(shift.value, JSON.stringify(shift.shifts)).toBe(0);
  await worker.telemetry(id, 1, 1500);
  await worker.complete(id);
});

test('semantic, self-contained, accessible markup', async ({ page }) => {
  const external: string[] = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(ctl.url) && !r.url().startsWith('data:')) external.push(r.url());
  });
  const failed: string[] = [];
  page.on('response', (r) => {
    if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`);
  });
  await openLive(page, ctl.url);
  expect(external, 'no external fonts, scripts or CDNs').toEqual([]);
  expect(failed, 'no failed requests (favicon included)').toEqual([]);

  await expect(page).toHaveTitle('Free Agent: a volunteer build network');
  await expect(page.locator('html')).toHaveAttribute('lang', 'en');
  await expect(page.locator('h1')).toHaveCount(1);
  await expect(page.locator('link[rel="icon"]')).toHaveCount(1);

  const status = page.locator('[role="status"]');
  await expect(status).toHaveCount(1);
  await expect(status).toHaveAttribute('aria-live', 'polite');
  await expect(status.locator('#total-builds')).toHaveCount(1);

  expect(await page.locator('p div, p p, p section, p table').count(), 'no block elements inside <p>').toBe(0);
  const tables = page.locator('table');
  expect(await tables.count()).toBeGreaterThan(0);
  expect(await page.locator('table > tr').count(), 'rows sit in <thead>/<tbody>').toBe(0);
  expect(await page.locator('table > tbody').count()).toBe(await tables.count());

  // The chart has a text equivalent: a description and a table of all 30 days.
  const svg = page.locator('figure.chart svg[role="img"]');
  await expect(svg).toHaveCount(1);
  await expect(page.locator('#chart-svg-desc')).toContainText('builds finished');
  await expect(page.locator('.chart-table tbody tr')).toHaveCount(30);

  // The three sections, with the agent commands from SPEC.
  await expect(page.locator('#about h2')).toHaveText('What Free Agent is');
  await expect(page.locator('#lend')).toContainText('freeagent agent register');
  await expect(page.locator('#lend')).toContainText('--build-command');
  await expect(page.locator('#submit')).toContainText('/api/builds');
  await expect(page.locator('body')).not.toContainText(/cycles|NaN/i);
  for (const label of ['Nodes online', 'Builds queued', 'Typical wait for a machine', 'Building now', 'Builds today (UTC)', 'Total builds', 'Total build time', 'Total CPU time', 'Cores busy now']) {
    await expect(page.locator('.counters dt', { hasText: label })).toHaveCount(1);
  }
});

test('respects reduced motion and the colour scheme', async ({ page }) => {
  await page.emulateMedia({ colorScheme: 'light', reducedMotion: 'no-preference' });
  await openLive(page, ctl.url);
  const dot = page.locator('#connection .dot');
  expect(await dot.evaluate((e) => getComputedStyle(e).animationName)).toBe('pulse');
  const lightBg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);

  await page.emulateMedia({ colorScheme: 'dark', reducedMotion: 'reduce' });
  expect(await dot.evaluate((e) => getComputedStyle(e).animationName)).toBe('none');
  const darkBg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  expect(darkBg).not.toBe(lightBg);
  const figureFont = await page.locator('#total-builds').evaluate((e) => getComputedStyle(e).fontVariantNumeric);
  expect(figureFont).toContain('tabular-nums');
});

test('full-page screenshots, light and dark, desktop and phone', async ({ page }) => {
  await screenshots(page, '', () => openLive(page, ctl.url));
});

test('stopping the server shows reconnecting; restarting it recovers', async ({ page }) => {
  test.info().annotations.push({ type: NETWORK_ERRORS_EXPECTED });
  await openLive(page, ctl.url);
  const state = page.locator('#connection');
  const total = page.locator('#total-builds');
  await expect(state).toHaveAttribute('data-state', 'live');
  const shown = await total.textContent();

  await ctl.stop();
  await expect(state).toHaveAttribute('data-state', 'reconnecting', { timeout: 3 * ctl.pollMs });
  await expect(state).toContainText('Reconnecting');
  await expect(total, 'the last figures stay on screen').toHaveText(shown ?? '');
  await sleep(3 * ctl.pollMs);
  await expect(state).toHaveAttribute('data-state', 'reconnecting');

  await ctl.launch();
  // Back-off is at most eight poll intervals.
  await expect(state).toHaveAttribute('data-state', 'live', { timeout: 10 * ctl.pollMs });
  const before = await ctl.stats();
  await worker.runBuild(3);
  await expect(total).toHaveText(count(before.totalBuilds + 1), { timeout: 2 * ctl.pollMs });
});
