// Time from navigation to hydrated, in Debian's Chromium (headless), for
// bench/page.sh: `node bench/hydrate.mjs URL [RUNS]` prints the median and
// the worst of RUNS cold visits (a fresh browser context: nothing cached)
// and RUNS warm ones (a reload in the same context: the hashed files come
// from the cache, the page itself is fetched again).
//
// "Hydrated" is taken when the task that resolved the WASM module's
// instantiation has ended: the hydration script calls the module's
// `hydrate()` (synchronous: it walks the server's DOM and attaches the
// reactive graph) in the promise chain of that instantiation, so a timer
// set when it resolves fires once hydration has run. performance.now()
// counts from the navigation's start.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), '../end2end/package.json'));
const { chromium } = require('playwright-core');

const url = process.argv[2];
const runs = Number(process.argv[3] ?? 5);
if (!url) {
  console.error('usage: node bench/hydrate.mjs URL [RUNS]');
  process.exit(2);
}

const marker = () => {
  const mark = (promise) =>
    promise.then((result) => {
      setTimeout(() => {
        window.__hydratedAt ??= performance.now();
      }, 0);
      return result;
    });
  for (const name of ['instantiate', 'instantiateStreaming']) {
    const original = WebAssembly[name];
    WebAssembly[name] = (...args) => mark(original.apply(WebAssembly, args));
  }
};

async function hydratedAt(page) {
  await page.waitForFunction(() => window.__hydratedAt !== undefined, null, { timeout: 20_000 });
  return page.evaluate(() => window.__hydratedAt);
}

const summary = (times) => {
  const sorted = [...times].sort((a, b) => a - b);
  return `median ${sorted[Math.floor(sorted.length / 2)].toFixed(0)} ms, worst ${sorted[sorted.length - 1].toFixed(0)} ms`;
};

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true });
try {
  const cold = [];
  const warm = [];
  for (let i = 0; i < runs; i++) {
    const context = await browser.newContext();
    await context.addInitScript(marker);
    const page = await context.newPage();
    await page.goto(url);
    cold.push(await hydratedAt(page));
    await page.reload();
    warm.push(await hydratedAt(page));
    await context.close();
  }
  console.log(`cold ${summary(cold)}; warm ${summary(warm)} (${runs} runs each)`);
} finally {
  await browser.close();
}
