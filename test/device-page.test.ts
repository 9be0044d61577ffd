// The coordinator's /device routes (coordinator/device-page/routes.ts) and `npm run demo:browser`'s
// start: the page, the wasm binaries from node_modules, the MNIST shard (the same digits a Node
// device loads for the same split), refusals of bad requests, and the ready-made link.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mnistSplits } from '../client/data/mnist.js';
import { decodeShard } from '../shared/data/shard.js';
import { startBrowserDemo, type BrowserDemo } from '../simulations/demo-browser.js';

let demo: BrowserDemo | undefined;
const lines: string[] = [];

beforeAll(async () => {
  demo = await startBrowserDemo({ port: 0, nodeDevice: false, statusEverySec: 0, out: (l) => lines.push(l) });
});

afterAll(async () => {
  await demo?.stop();
});

describe('the device page routes', () => {
  it('serve the page, its style and script, without a token and with no referrer', async () => {
    const page = await fetch(`${demo!.coord.url}/device`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(page.headers.get('referrer-policy')).toBe('no-referrer');
    const html = await page.text();
    expect(html).toContain('src="/device/app.js"');
    expect(html).toContain('data-testid="join"');
    expect((await fetch(`${demo!.coord.url}/device/app.css`)).status).toBe(200);
    const js = await fetch(`${demo!.coord.url}/device/app.js`);
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toMatch(/javascript/);
    expect((await js.arrayBuffer()).byteLength).toBeGreaterThan(100_000);
  });

  it('serve the tfjs wasm binaries from node_modules, and nothing else under /device/wasm/', async () => {
    const dist = join(dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist');
    for (const name of ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm']) {
      const res = await fetch(`${demo!.coord.url}/device/wasm/${name}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('application/wasm');
      expect(Buffer.from(await res.arrayBuffer()).equals(await readFile(join(dist, name)))).toBe(true);
    }
    const other = await fetch(`${demo!.coord.url}/device/wasm/package.json`);
    expect(other.status).toBe(404);
    expect(((await other.json()) as { message: string }).message).toMatch(/no such wasm file/);
  });

  it('serve an MNIST shard holding the same digits as the Node loader for the same split', async () => {
    const res = await fetch(`${demo!.coord.url}/device/data/mnist?seed=3&offset=100&train=40&val=10&test=20&task=parity`);
    expect(res.status).toBe(200);
    const shard = decodeShard(await res.arrayBuffer());
    const node = mnistSplits({ seed: 3, offset: 100, trainSize: 40, valSize: 10, testSize: 20, task: 'parity', layout: 'flat' });
    expect(shard.task).toBe('mnist-parity');
    expect(shard.classNames).toEqual(['even', 'odd']);
    for (const k of ['train', 'val', 'test'] as const) {
      expect(shard[k].n).toBe(node[k].n);
      expect(shard[k].inputShape).toEqual([784]);
      expect(shard[k].numClasses).toBe(2);
      expect(Buffer.from(shard[k].x.buffer).equals(Buffer.from(node[k].x.buffer))).toBe(true);
      expect(Array.from(shard[k].y)).toEqual(Array.from(node[k].y));
    }
  });

  it('refuse a bad shard request, saying why', async () => {
    const cases: [string, RegExp][] = [
      ['train=0', /train/],
      ['task=letters', /task/],
      ['offset=9900', /exceeds the 9500 digits left after a test split of 500/],
      ['colour=blue', /colour/],
    ];
    for (const [q, why] of cases) {
      const res = await fetch(`${demo!.coord.url}/device/data/mnist?${q}`);
      expect(res.status).toBe(400);
      expect(((await res.json()) as { message: string }).message).toMatch(why);
    }
  });
});

describe('npm run demo:browser', () => {
  it('prints the device page URL with the browser device id and its token, and what to do', () => {
    const url = new URL(demo!.pageUrl);
    expect(url.origin).toBe(demo!.coord.url);
    expect(url.pathname).toBe('/device');
    const fields = new URLSearchParams(url.hash.slice(1));
    expect(fields.get('device')).toBe('browser');
    expect(fields.get('token')).toBe(demo!.tokens.browser);
    const text = lines.join('\n');
    expect(text).toContain(demo!.pageUrl);
    expect(text).toMatch(/press Join/);
    // The coordinator was configured with both devices (the browser test joins with such a token).
    expect(demo!.coord.status().devices.map((d) => d.id).sort()).toEqual(['browser', 'node']);
  });
});
