// What a visitor downloads, measured by Chromium itself against the release
// controller: the site's files arrive precompressed (br) under hashed names,
// the page gzipped,
// with an immutable Cache-Control, a first visit stays within 230 KB over
// all requests, and a repeat visit transfers only the page and its API calls.
import { Controller } from './controller';
import { test, expect, openLive } from './fixtures';

test.describe.configure({ mode: 'serial' });

let ctl: Controller;

test.beforeAll(async () => {
  ctl = await Controller.start({ pollInterval: '1s' });
});

test.afterAll(async () => {
  await ctl?.dispose();
});

/// Every resource the page loaded, with the bytes it took on the wire.
async function resources(page: import('@playwright/test').Page) {
  return page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
    const list = (performance.getEntriesByType('resource') as PerformanceResourceTiming[]).map((r) => ({
      url: r.name,
      transferSize: r.transferSize,
    }));
    return [{ url: nav.name, transferSize: nav.transferSize }, ...list];
  });
}

const IMMUTABLE = 'public, max-age=31536000, immutable';

test('the page names hashed files, served as brotli and cached as immutable', async () => {
  const html = await (await fetch(`${ctl.url}/`)).text();
  const pkg = [...html.matchAll(/\/pkg\/[^"']+/g)].map((m) => m[0]);
  const names = new Set(pkg);
  // The stylesheet, the JS and the WASM, each named after its content.
  for (const ext of ['css', 'js', 'wasm']) {
    const named = [...names].filter((n) => n.endsWith(`.${ext}`));
    expect(named.length, `a /pkg/*.${ext} in the page`).toBeGreaterThan(0);
    for (const name of named) expect(name).toMatch(new RegExp(`^/pkg/freeagent\\.[A-Za-z0-9_-]{6,}\\.${ext}$`));
  }
  for (const name of names) {
    const br = await fetch(`${ctl.url}${name}`, { headers: { 'accept-encoding': 'br' } });
    expect(br.status, name).toBe(200);
    expect(br.headers.get('content-encoding'), name).toBe('br');
    expect(br.headers.get('cache-control'), name).toBe(IMMUTABLE);
    expect(br.headers.get('vary') ?? '', name).toMatch(/accept-encoding/i);
    const gz = await fetch(`${ctl.url}${name}`, { headers: { 'accept-encoding': 'gzip' } });
    expect(gz.headers.get('content-encoding'), name).toBe('gzip');
    // Node's fetch decodes both: the same file either way.
    expect(Buffer.from(await gz.arrayBuffer()).equals(Buffer.from(await br.arrayBuffer())), name).toBe(true);
  }
  // The page itself is compressed per response, with gzip (see site.rs).
  const pageResponse = await fetch(`${ctl.url}/`, { headers: { 'accept-encoding': 'gzip, deflate, br, zstd' } });
  expect(pageResponse.headers.get('content-encoding')).toBe('gzip');
  expect(pageResponse.headers.get('cache-control')).toMatch(/max-age=\d+/);
  expect(pageResponse.headers.get('cache-control')).not.toContain('immutable');
});

test('a first visit transfers at most 230 KB; a repeat visit only the page and API calls', async ({ page }) => {
  await openLive(page, `${ctl.url}/`);
  const first = await resources(page);
  const firstTotal = first.reduce((sum, r) => sum + r.transferSize, 0);
  console.log(`first visit: ${firstTotal} bytes over ${first.length} requests`);
  for (const r of first) console.log(`  ${r.transferSize}\t${r.url}`);
  expect(firstTotal).toBeLessThanOrEqual(230_000);
  const wasm = first.find((r) => r.url.endsWith('.wasm'));
  expect(wasm, 'the wasm was loaded').toBeTruthy();
  // Compressed on the wire: well under the 477 KB file.
  expect(wasm!.transferSize).toBeLessThan(250_000);

  // A new navigation in the same browser (not a reload, which revalidates
  // on purpose): the hashed files come from the cache.
  await openLive(page, `${ctl.url}/?again`);
  const repeat = await resources(page);
  const repeatTotal = repeat.reduce((sum, r) => sum + r.transferSize, 0);
  console.log(`repeat visit: ${repeatTotal} bytes over ${repeat.length} requests`);
  for (const r of repeat) console.log(`  ${r.transferSize}\t${r.url}`);
  const fetched = repeat.filter((r) => r.transferSize > 0).map((r) => new URL(r.url).pathname);
  for (const path of fetched) {
    expect(path === '/' || path.startsWith('/api/') || path.startsWith('/sfn/'), `${path} fetched again`).toBe(true);
  }
  expect(repeat.some((r) => r.url.includes('/pkg/') && r.transferSize === 0)).toBe(true);
});
