// A build's own page (/builds/{id}#token=...) against a real release
// controller polling every second; the accessibility audit of every page
// of the live controller.
import { Page } from '@playwright/test';
import { Controller, Worker, sleep } from './controller';
import { test, expect, screenshots, REFUSALS_EXPECTED } from './fixtures';
import { VIEWS, expectNoViolations, clippedInCounters } from './audit';
import { openBuild, sitePages } from './pages';

test.describe.configure({ mode: 'serial' });

let ctl: Controller;
let worker: Worker;
/// The running build the page follows, and its secret.
let id: number;
let token: string;
let seq = 0;
/// When the build was claimed: samples may not be older.
let startedAt: number;

/// Posts `n` samples of a build that ramps up and settles, 5 s apart,
/// ending now.
async function postSamples(n: number): Promise<void> {
  const now = Date.now();
  const snapshots = Array.from({ length: n }, (_, i) => {
    const k = ++seq;
    return {
      seq: k,
      sampledAt: Math.max(startedAt, now - (n - 1 - i) * 1000),
      cpuPercent: Math.round(120 + 260 * Math.abs(Math.sin(k / 4)) + 30 * (k % 3)),
      memoryMb: Math.round(400 + 1400 * (1 - Math.exp(-k / 10)) + 40 * Math.sin(k)),
      intervalS: 1,
    };
  });
  await ctl.api('POST', `/api/builds/${id}/telemetry`, worker.token, { snapshots });
}

test.beforeAll(async () => {
  ctl = await Controller.start({ pollInterval: '1s' });
  worker = await Worker.register(ctl);
  await worker.runBuild(10); // some history on the landing page
  const submitted = await ctl.api('POST', '/api/builds', ctl.adminKey, { platform: 'linux', label: 'my-app 1.4.2 (release)' });
  expect(submitted.pageUrl).toBe(`/builds/${submitted.id}#token=${submitted.accessToken}`);
  id = submitted.id;
  token = submitted.accessToken;
  startedAt = Date.now();
  const claimed = await ctl.api('POST', '/api/workers/poll', worker.token);
  expect(claimed.build.id).toBe(id);
  await ctl.api('POST', `/api/builds/${id}/start`, worker.token);
  await sleep(1500); // room for samples after the claim
  await postSamples(12);
});

test.afterAll(async () => {
  await ctl?.dispose();
});

/// What the page shows of the build, read from the DOM.
async function shown(page: Page) {
  return {
    cpuSeconds: Number(await page.locator('#build-cpu-seconds').getAttribute('value')),
    peakMemoryMb: Number(await page.locator('#build-peak-memory').getAttribute('value')),
    snapshotCount: Number(await page.locator('#build-samples').getAttribute('value')),
    dots: await page.locator('.panel.cpu .pt').count(),
    memDots: await page.locator('.panel.mem .pt').count(),
    rows: await page.locator('#samples-table tbody tr').count(),
  };
}

test('the server HTML for the build page holds no figure of the build', async () => {
  const res = await fetch(`${ctl.url}/builds/${id}`);
  expect(res.status).toBe(200);
  const html = await res.text();
  const build = await ctl.api('GET', `/api/builds/${id}`, token);
  expect(html).toContain(`Build ${id}`);
  expect(html).toContain(`<title>Build ${id} · Free Agent</title>`);
  for (const secret of [build.label, token, 'build-cpu-seconds', 'build-samples', 'Building', 'samples-table']) {
    expect(html, `server HTML holds ${secret}`).not.toContain(secret);
  }
  expect(html).not.toContain(String(build.peakMemoryMb));
});

test('shows what GET /api/builds/{id} shows, and one chart dot and table row per sample', async ({ page }) => {
  await openBuild(page, `${ctl.url}/builds/${id}#token=${token}`, '#build-samples');
  const build = await ctl.api('GET', `/api/builds/${id}`, token);
  const samples = await ctl.api('GET', `/api/builds/${id}/snapshots`, token);
  expect(samples.length).toBe(build.snapshotCount);
  await expect(page.locator('#build-samples')).toHaveAttribute('value', String(build.snapshotCount));
  const s = await shown(page);
  expect(s.cpuSeconds).toBeCloseTo(build.cpuSeconds, 5);
  expect(s.peakMemoryMb).toBe(build.peakMemoryMb);
  expect(s.snapshotCount).toBe(build.snapshotCount);
  expect(s.dots).toBe(samples.length);
  expect(s.memDots).toBe(samples.length);
  expect(s.rows).toBe(samples.length);
  await expect(page.locator('#build-status')).toHaveText('Building');
  await expect(page.locator('#build-status')).toHaveAttribute('data-status', 'building');
  await expect(page.locator('#build-platform')).toHaveText('linux');
  await expect(page.locator('#build-live')).toHaveAttribute('data-state', 'live');
  await expect(page.locator('#build-notice')).toHaveCount(0);
  await expect(page).toHaveTitle(`Build ${id} · Free Agent`);
});

test('new samples appear without a reload within two poll intervals', async ({ page }) => {
  await openBuild(page, `${ctl.url}/builds/${id}#token=${token}`, '#build-samples');
  const before = (await shown(page)).snapshotCount;
  let navigations = 0;
  page.on('framenavigated', () => (navigations += 1));
  await postSamples(3);
  const posted = Date.now();
  await expect(page.locator('#build-samples')).toHaveAttribute('value', String(before + 3), { timeout: 2 * ctl.pollMs });
  const elapsed = Date.now() - posted;
  test.info().annotations.push({ type: 'update-latency-ms', description: String(elapsed) });
  expect(elapsed).toBeLessThanOrEqual(2 * ctl.pollMs);
  expect(navigations, 'no reload').toBe(0);
  const build = await ctl.api('GET', `/api/builds/${id}`, token);
  await expect(page.locator('.panel.cpu .pt')).toHaveCount(build.snapshotCount);
  await expect(page.locator('#samples-table tbody tr')).toHaveCount(build.snapshotCount);
  const s = await shown(page);
  expect(s.cpuSeconds).toBeCloseTo(build.cpuSeconds, 5);
  expect(s.peakMemoryMb).toBe(build.peakMemoryMb);
});

test('a wrong secret, or none, shows no status, figure or sample', async ({ page }) => {
  test.info().annotations.push({ type: REFUSALS_EXPECTED });
  const build = await ctl.api('GET', `/api/builds/${id}`, token);
  for (const [hash, notice] of [
    ['', 'notoken'],
    ['#token=', 'notoken'],
    [`#token=${'0'.repeat(64)}`, 'denied'],
    [`#token=${token}x`, 'denied'],
  ]) {
    await openBuild(page, `${ctl.url}/builds/${id}${hash}`, `#build-notice[data-notice="${notice}"]`);
    await sleep(1.5 * ctl.pollMs);
    for (const sel of ['#build-status', '#build-cpu-seconds', '#build-peak-memory', '#build-samples', '.pt', '#samples-table']) {
      await expect(page.locator(sel), `${hash}: ${sel}`).toHaveCount(0);
    }
    const text = (await page.locator('body').textContent()) ?? '';
    expect(text).not.toContain(build.label);
    expect(text).not.toMatch(/Building|GiB|MiB|cores/);
    await expect(page.locator('h1')).toHaveText(`Build ${id}`);
  }
});

test('polling stops once the build is finished', async ({ page }) => {
  // A build of its own, so the other tests keep a running one.
  const other = await ctl.api('POST', '/api/builds', ctl.adminKey, { platform: 'linux' });
  const claimed = await ctl.api('POST', '/api/workers/poll', worker.token);
  expect(claimed.build.id).toBe(other.id);
  await ctl.api('POST', `/api/builds/${other.id}/start`, worker.token);
  await openBuild(page, `${ctl.url}/builds/${other.id}#token=${other.accessToken}`, '#build-live[data-state="live"]');
  await ctl.api('POST', `/api/builds/${other.id}/complete`, worker.token, { success: true });
  await expect(page.locator('#build-status')).toHaveText('Completed', { timeout: 2 * ctl.pollMs });
  await expect(page.locator('#build-live')).toHaveAttribute('data-state', 'paused');
  let requests = 0;
  page.on('request', (r) => {
    if (r.url().includes('/api/builds/')) requests += 1;
  });
  await sleep(3 * ctl.pollMs);
  expect(requests, 'no requests after the build finished').toBe(0);
});

test('build page screenshots, desktop and phone, light and dark', async ({ page }) => {
  await screenshots(page, 'build-', () => openBuild(page, `${ctl.url}/builds/${id}#token=${token}`, '#build-samples'));
});

test('axe-core: no violations on any page, desktop and phone, light and dark', async ({ page }) => {
  test.setTimeout(240_000);
  test.info().annotations.push({ type: REFUSALS_EXPECTED });
  for (const view of VIEWS) {
    await page.setViewportSize({ width: view.width, height: view.height });
    await page.emulateMedia({ colorScheme: view.scheme });
    for (const site of sitePages(ctl, id, token)) {
      await site.open(page);
      await expectNoViolations(page, `${site.what} at ${view.width} px, ${view.scheme}`);
    }
  }
});

test('no text in a counter card is cut short at 320 px', async ({ page }) => {
  await page.setViewportSize({ width: 320, height: 700 });
  for (const site of sitePages(ctl, id, token).slice(0, 2)) {
    await site.open(page);
    expect(await clippedInCounters(page), site.what).toEqual([]);
  }
});
