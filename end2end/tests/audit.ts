// The outside audit: axe-core (the npm package) injected into a page, and
// the check that no counter card cuts its text short.
import * as fs from 'node:fs';
import { Page, expect } from '@playwright/test';

/// axe-core's source. Evaluated through the DevTools protocol rather than
/// added as a <script> tag: the pages' Content-Security-Policy blocks inline
/// scripts without the page's nonce, as it should.
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
/// WCAG 2.0 A and AA, 2.1 AA, 2.2 AA, and axe's best practices.
const TAGS = ['wcag2a', 'wcag2aa', 'wcag21aa', 'wcag22aa', 'best-practice'];

/// The four ways every page is audited.
export const VIEWS = [
  { width: 1280, height: 900, scheme: 'light' },
  { width: 1280, height: 900, scheme: 'dark' },
  { width: 390, height: 844, scheme: 'light' },
  { width: 390, height: 844, scheme: 'dark' },
] as const;

/// Runs axe on the page as it is now; fails listing every violation.
export async function expectNoViolations(page: Page, what: string): Promise<void> {
  // A trailing statement, so that Playwright runs the source as a script
  // instead of taking the single expression it may be for a function.
  await page.evaluate(`${AXE}\n;undefined`);
  const violations = await page.evaluate(async (tags) => {
    const result = await (window as any).axe.run(document, { runOnly: { type: 'tag', values: tags } });
    return result.violations.map((v: any) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 5).map((n: any) => `${n.target.join(' ')}: ${n.failureSummary}`),
    }));
  }, TAGS);
  expect(violations, `axe violations on ${what}`).toEqual([]);
}

/// Every element inside a counter card whose text is cut: wider content
/// than its box, or an ellipsis.
export async function clippedInCounters(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const cut: string[] = [];
    for (const el of Array.from(document.querySelectorAll('.counter, .counter *'))) {
      const style = getComputedStyle(el);
      const name = `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${el.textContent?.trim()}"`;
      if (el.scrollWidth > el.clientWidth && el.clientWidth > 0) cut.push(`${name}: ${el.scrollWidth} > ${el.clientWidth}`);
      if (style.textOverflow === 'ellipsis') cut.push(`${name}: text-overflow ellipsis`);
    }
    return cut;
  });
}
