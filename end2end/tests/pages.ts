// Every page of the site, opened and ready to audit: the landing page, a
// build's page with its secret, without one and with a wrong one, and the
// 404 page.
import { Page, expect } from '@playwright/test';
import { Controller } from './controller';
import { openLive } from './fixtures';

export interface SitePage {
  what: string;
  open: (page: Page) => Promise<void>;
}

/// Opens a build page and waits until the hydrated page shows `ready`.
export async function openBuild(page: Page, url: string, ready: string): Promise<void> {
  await page.goto(url);
  await expect(page.locator(ready)).toBeVisible({ timeout: 20_000 });
}

/// The site's pages on `ctl`, for build `id` whose secret is `token`.
export function sitePages(ctl: Controller, id: number, token: string): SitePage[] {
  return [
    { what: '/', open: (page) => openLive(page, ctl.url) },
    {
      what: '/builds/{id} with its secret',
      open: (page) => openBuild(page, `${ctl.url}/builds/${id}#token=${token}`, '#build-samples'),
    },
    {
      what: '/builds/{id} without a secret',
      open: (page) => openBuild(page, `${ctl.url}/builds/${id}`, '#build-notice[data-notice="notoken"]'),
    },
    {
      what: '/builds/{id} with a wrong secret',
      open: (page) => openBuild(page, `${ctl.url}/builds/${id}#token=wrong${token}`, '#build-notice[data-notice="denied"]'),
    },
    {
      what: 'the 404 page',
      open: async (page) => {
        const res = await page.goto(`${ctl.url}/does-not-exist`);
        expect(res?.status()).toBe(404);
        await page.waitForLoadState('networkidle');
      },
    },
  ];
}
