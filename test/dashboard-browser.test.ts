// The dashboard in a real browser: playwright-core drives Debian's chromium (/usr/bin/chromium;
// .ci/run installs it) against a coordinator with two devices. The pair table and the cycles
// chart must change as cycles happen; a screenshot is saved as an artifact.
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import { launchChromium, type Chromium } from './helpers/chromium.js';
import { startTwoDeviceFleet, VIEWER_TOKEN, type Fleet } from './helpers/two-device-fleet.js';

const ARTIFACTS = resolve(__dirname, '../test-artifacts');

let fleet: Fleet | undefined;
let chrome: Chromium | undefined;

beforeAll(async () => {
  await initBackend();
  chrome = await launchChromium();
  fleet = await startTwoDeviceFleet({ dashboardEveryMs: 250 });
});

afterAll(async () => {
  await chrome?.close();
  await fleet?.stop();
});

describe('dashboard in chromium', () => {
  it('shows devices and pairs, and its pair table and cycles chart move as cycles happen', async () => {
    const page = await chrome!.browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });

    // Without the token the page says what to do.
    const refused = await page.goto(`${fleet!.coord.url}/`);
    expect(refused!.status()).toBe(401);
    expect(await page.textContent('body')).toMatch(/viewer token is required/);
    errors.length = 0; // the 401 itself is logged as a console error

    await page.goto(`${fleet!.coord.url}/?token=${VIEWER_TOKEN}`);
    // Predicates run in the page; written as strings since this file is type-checked without the DOM.
    await page.waitForFunction(`document.querySelector('[data-testid="live"]')?.textContent === 'live'`);
    await page.waitForSelector('tr[data-pair="a-to-b"]');
    await page.waitForSelector('tr[data-device="a"]');
    const updatesCell = (pair: string) => page.textContent(`tr[data-pair="${pair}"] td[data-col="updates"]`).then((t) => Number(t));
    const updates0 = await updatesCell('a-to-b');
    const points0 = Number(await page.getAttribute('[data-testid="cycles-chart"]', 'data-points'));
    const last0 = await page.getAttribute('[data-testid="cycles-chart"]', 'data-last');
    expect(updates0).toBe(0);

    fleet!.start();
    // The table: both pairs' completed cycles climb past 3.
    await page.waitForFunction(
      `['a-to-b', 'b-to-a'].every((p) => Number(document.querySelector('tr[data-pair="' + p + '"] td[data-col="updates"]')?.textContent) >= 3)`,
      undefined,
      { timeout: 60_000, polling: 100 },
    );
    // The chart: more samples, and its latest values are no longer the starting ones.
    await page.waitForFunction(
      `(() => {
        const el = document.querySelector('[data-testid="cycles-chart"]');
        const last = JSON.parse(el.dataset.last || '[]');
        return Number(el.dataset.points) > ${points0} && el.dataset.last !== ${JSON.stringify(last0)} && last.length === 2 && last.every((v) => v >= 3);
      })()`,
      undefined,
      { timeout: 30_000, polling: 100 },
    );
    // The accuracy chart has a curve per device once both reported a held-out accuracy.
    await page.waitForFunction(
      `(() => {
        const last = JSON.parse(document.querySelector('[data-testid="acc-chart"]').dataset.last || '[]');
        return last.length === 2 && last.every((v) => typeof v === 'number' && v > 0);
      })()`,
      undefined,
      { timeout: 30_000, polling: 100 },
    );
    expect(await page.locator('[data-testid="cycles-chart"] canvas').count()).toBe(1);
    expect(await page.locator('[data-testid="acc-chart"] canvas').count()).toBe(1);
    expect(await page.textContent('tr[data-device="a"]')).toMatch(/connected/);
    expect(await page.textContent('tr[data-pair="a-to-b"]')).toMatch(/a\.dense_1 → b\.dense_1/);

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    expect(existsSync(join(ARTIFACTS, 'dashboard.png'))).toBe(true);
    expect(errors).toEqual([]);
    await page.close();
  });
});
