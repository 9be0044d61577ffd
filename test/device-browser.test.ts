// The browser device in real headless Chromium (playwright-core, Debian's chromium): a coordinator
// and one Node device; the page at /device joins as a second device and the two cycle both ways.
// Also: the same device math in both runtimes, a wrong token refused with the coordinator's message
// shown, a reconnect that training survives, and image files picked from disk as the data. A
// screenshot of the page mid-run goes to test-artifacts/ (and docs/ with MERGENET_DOCS_SCREENSHOT=1).
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { deflateSync } from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MATH_PROBE, mathProbe, type MathProbeOutput } from '../client/browser/math-probe.js';
import { loadMnistAll } from '../client/data/mnist.js';
import { loadDeviceData } from '../client/data/registry.js';
import { DeviceClient } from '../client/device.js';
import { buildModel } from '../client/models/mnist-models.js';
import { parseCoordinatorConfig, serve, type RunningCoordinator } from '../coordinator/index.js';
import type { StatusSnapshot } from '../coordinator/status.js';
import { silentLogger } from '../shared/log.js';
import { setDeviceGemm } from '../shared/math/device-gemm.js';
import { initBackend } from '../shared/tf/backend.js';
import { launchChromium, type Chromium } from './helpers/chromium.js';
import { waitFor } from './helpers/two-device-fleet.js';

const DOCS = resolve(__dirname, '../docs');
const ARTIFACTS = resolve(__dirname, '../test-artifacts');
const TOKENS = { node: 'tok-node-1', browser: 'tok-browser-1' };
const CYCLES = 10;

let chrome: Chromium | undefined;
let coord: RunningCoordinator | undefined;
let nodeDevice: DeviceClient | undefined;
let nodeRun: Promise<void> | undefined;
let nodeModel: tf.LayersModel | undefined;
const pageErrors: string[] = [];

beforeAll(async () => {
  await initBackend('wasm', () => undefined);
  chrome = await launchChromium({ width: 1280, height: 860 });
  const config = parseCoordinatorConfig({
    host: '127.0.0.1',
    port: 0,
    devices: [
      { id: 'node', token: TOKENS.node },
      { id: 'browser', token: TOKENS.browser },
    ],
    defaults: { rank: 8, tCycle: 10, k: 3, tau: 0.5, gate: { guard: 'none' } },
    pairs: [
      { id: 'node-to-browser', source: { device: 'node', slot: 'dense_0' }, target: { device: 'browser', slot: 'dense_0' } },
      { id: 'browser-to-node', source: { device: 'browser', slot: 'dense_0' }, target: { device: 'node', slot: 'dense_0' } },
    ],
    timing: { cycleTimeoutMs: 30_000, sourceMaxAgeMs: 60_000 },
    statusEveryMs: 0,
  });
  coord = await serve(config, { logger: silentLogger() });
});

afterAll(async () => {
  nodeDevice?.stop();
  await nodeRun?.catch(() => undefined);
  nodeModel?.dispose();
  await chrome?.close();
  await coord?.close();
});

/** The Node device, once (each test may run alone with -t: those that cycle start it). */
function startNodeDevice(): void {
  if (nodeDevice) return;
  const data = loadDeviceData({ name: 'mnist', task: 'digit', trainSize: 500, valSize: 200, testSize: 500, offset: 0, layout: 'flat' }, 1);
  nodeModel = buildModel({ kind: 'mlp', inputShape: [784], hidden: [64], classes: 10 }, 2);
  nodeDevice = new DeviceClient({
    url: coord!.url,
    deviceId: 'node',
    token: TOKENS.node,
    model: nodeModel,
    data,
    rank: 8,
    trainer: { optimizer: 'adam', lr: 0.002, batchSize: 32 },
    seed: 2,
    evalEvery: 25,
    description: { name: 'node mlp', architecture: 'mlp 784-64-10', task: data.task, modality: 'image' },
    reconnect: { delayMs: 50, maxDelayMs: 500 },
  });
  nodeRun = nodeDevice.start();
}

async function openDevicePage(): Promise<Page> {
  const page = await chrome!.browser.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });
  page.on('response', (r) => {
    if (r.status() >= 400) pageErrors.push(`HTTP ${r.status()} ${r.url()}`);
  });
  const res = await page.goto(`${coord!.url}/device`);
  expect(res!.status()).toBe(200);
  await page.waitForFunction(`document.body.dataset.ready === 'true'`, undefined, { timeout: 30_000 });
  return page;
}

async function joinAs(page: Page, token: string): Promise<void> {
  await page.fill('[data-testid="device-id"]', 'browser');
  await page.fill('[data-testid="token"]', token);
  await page.selectOption('[data-testid="model"]', 'mlp-64');
  await page.selectOption('[data-testid="dataset"]', 'mnist');
  await page.fill('[data-testid="offset"]', '2000');
  await page.selectOption('[data-testid="backend"]', 'wasm');
  await page.click('[data-testid="join"]');
}

const sum = (rec: Record<string, number>) => Object.values(rec).reduce((a, b) => a + b, 0);
const updatesOf = (s: StatusSnapshot, id: string) => s.pairs.find((p) => p.id === id)?.updates ?? 0;

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf: Buffer): number {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A grey-level PNG (8-bit, no filter) of `side`×`side` values in [0, 255]. */
function greyPng(pixels: Uint8Array, side: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(side, 0);
  ihdr.writeUInt32BE(side, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // grey
  const rows = Buffer.alloc(side * (side + 1));
  for (let y = 0; y < side; y++) rows.set(pixels.subarray(y * side, (y + 1) * side), y * (side + 1) + 1);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

function maxAbsDiff(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

describe('the browser device in chromium', () => {
  it('computes the same slice, branch and feedback as Node on the wasm backend: bit for bit on the same path', async () => {
    const page = await openDevicePage();
    const inBrowser = (await page.evaluate(
      `window.mergenet.mathProbe(${JSON.stringify(DEFAULT_MATH_PROBE)}, 'wasm')`,
    )) as MathProbeOutput;
    // Tensor hygiene in both runtimes: a second probe leaves as many tensors alive as there were.
    const browserTensors = (await page.evaluate('window.mergenet.numTensors()')) as number;
    await page.evaluate(`window.mergenet.mathProbe(${JSON.stringify(DEFAULT_MATH_PROBE)}, 'wasm')`);
    expect(await page.evaluate('window.mergenet.numTensors()')).toBe(browserTensors);
    const nodeTensors = tf.memory().numTensors;
    // Node's default: the device's products on the SIMD arena (shared/math/device-gemm.ts), which
    // the browser bundle does not register; and Node on the browser's path, the tfjs ops.
    const inNode = mathProbe(DEFAULT_MATH_PROBE);
    const prev = setDeviceGemm(null);
    let inNodeTfjs: MathProbeOutput;
    try {
      inNodeTfjs = mathProbe(DEFAULT_MATH_PROBE);
    } finally {
      setDeviceGemm(prev);
    }
    expect(tf.memory().numTensors).toBe(nodeTensors);
    expect(inBrowser.backend).toBe('wasm');
    expect(inNode.backend).toBe('wasm');
    // Non-trivial values: a rank-8 slice of a 784×64 weight, a capped branch, a non-zero gradient.
    expect(inNode.A.length).toBe(784 * 8);
    expect(inNode.K.some((v) => v !== 0)).toBe(true);
    expect(inNode.gA.some((v) => v !== 0)).toBe(true);
    // Bit-identical on the same path: the same wasm binary (SIMD, no threads in either runtime), the
    // same seeded JS (seedrandom, the float64 kernels of shared/math/dense.ts, V8's Math in both),
    // the same order of operations.
    for (const key of ['A', 'B', 'K', 'G', 'gA', 'gB'] as const) {
      expect({ key, maxAbsDiff: maxAbsDiff(inBrowser[key], inNodeTfjs[key]) }).toEqual({ key, maxAbsDiff: 0 });
    }
    for (const key of ['scale', 'deltaNorm', 'weightNorm', 'gateGrad'] as const) expect(inBrowser[key]).toBe(inNodeTfjs[key]);
    // Against Node's default path: the same quantities up to float32 summation order.
    for (const key of ['A', 'B', 'K', 'G', 'gA', 'gB'] as const) {
      const scale = Math.max(...inNode[key].map(Math.abs));
      expect({ key, relDiff: maxAbsDiff(inBrowser[key], inNode[key]) / scale < 1e-4 }).toEqual({ key, relDiff: true });
    }
    for (const key of ['scale', 'deltaNorm', 'weightNorm'] as const) {
      expect({ key, close: Math.abs(inBrowser[key] - inNode[key]) <= 1e-4 * Math.abs(inNode[key]) }).toEqual({ key, close: true });
    }
    // s·⟨G, D⟩ sums products of both signs: its rounding is relative to the terms (≤ s·‖G‖·‖D‖), not the sum
    const terms = Math.abs(inNode.scale) * Math.sqrt(inNode.G.reduce((a, g) => a + g * g, 0)) * inNode.deltaNorm;
    expect(Math.abs(inBrowser.gateGrad - inNode.gateGrad)).toBeLessThanOrEqual(1e-4 * terms);
    await page.close();
  });

  it('joins as a second device and cycles both ways with the Node device: 0 drops, 0 rejects', async () => {
    startNodeDevice();

    const page = await openDevicePage();
    await joinAs(page, TOKENS.browser);
    await page.waitForFunction(`document.querySelector('[data-testid="connection"]').dataset.state === 'connected'`, undefined, { timeout: 60_000 });

    // ≥ 10 completed cycles (adapter updates from feedback) in each direction.
    await waitFor(
      () => {
        const s = coord!.status();
        return updatesOf(s, 'node-to-browser') >= CYCLES && updatesOf(s, 'browser-to-node') >= CYCLES;
      },
      60_000,
      `${CYCLES} cycles both ways`,
    );
    const s = coord!.status();
    const browserDev = s.devices.find((d) => d.id === 'browser')!;
    const nodeDev = s.devices.find((d) => d.id === 'node')!;
    expect([browserDev.connected, browserDev.registered, nodeDev.connected, nodeDev.registered]).toEqual([true, true, true, true]);
    expect(browserDev.model?.name).toBe('browser MLP 784-64');
    expect(browserDev.slots).toContainEqual({ name: 'dense_0', shape: [784, 64] });
    expect({ browser: sum(browserDev.rejects), node: sum(nodeDev.rejects) }).toEqual({ browser: 0, node: 0 });
    for (const p of s.pairs) {
      expect({ pair: p.id, drops: sum(p.drops) }).toEqual({ pair: p.id, drops: 0 });
      expect(p.updates).toBeGreaterThanOrEqual(CYCLES);
    }
    expect(s.totals.drops).toBe(0);
    cycleCounts = { nodeToBrowser: updatesOf(s, 'node-to-browser'), browserToNode: updatesOf(s, 'browser-to-node') };
    console.log(`[device-browser] cycles completed: node → browser ${cycleCounts.nodeToBrowser}, browser → node ${cycleCounts.browserToNode}`);

    // The page's own view: the device trained, applied transfers, sent feedback that was acknowledged.
    const st = (await page.evaluate('window.mergenet.status()')) as { step: number; transfersApplied: number; feedbackAcked: number; rejects: Record<string, number> };
    expect(st.transfersApplied).toBeGreaterThanOrEqual(CYCLES);
    expect(st.feedbackAcked).toBeGreaterThanOrEqual(CYCLES - 1);
    expect(sum(st.rejects)).toBe(0);
    expect(nodeDevice!.status().transfersApplied).toBeGreaterThanOrEqual(CYCLES);
    // …and what a person sees: progress, an accuracy, transfers applied, the chart drawn.
    await page.waitForFunction(`Number(document.querySelector('[data-testid="acc-chart"]').dataset.points) >= 2`, undefined, { timeout: 30_000 });
    expect(Number(await page.textContent('[data-testid="transfers-applied"]'))).toBeGreaterThanOrEqual(CYCLES);
    expect(Number(await page.textContent('[data-testid="step"]'))).toBeGreaterThan(0);
    expect(await page.textContent('[data-testid="val-acc"]')).toMatch(/^\d+\.\d %$/);
    expect(await page.textContent('[data-testid="pairs"]')).toMatch(/node-to-browser \(target, dense_0, r8\).*browser-to-node \(source, dense_0, r8\)/);
    // A screenshot mid-run: test-artifacts/ (git-ignored) every run; docs/browser-device.png, the
    // README's, only when asked (MERGENET_DOCS_SCREENSHOT=1), so a test run leaves the tree clean.
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'browser-device.png'), fullPage: true });
    expect(existsSync(join(ARTIFACTS, 'browser-device.png'))).toBe(true);
    if (process.env.MERGENET_DOCS_SCREENSHOT === '1') await page.screenshot({ path: join(DOCS, 'browser-device.png'), fullPage: true });

    // Offline and back: the transport is cut; the page keeps training and reconnects, and cycles resume.
    const before = st.step;
    const updatesBefore = updatesOf(coord!.status(), 'browser-to-node');
    await page.evaluate('window.mergenet.dropConnection()');
    await page.waitForFunction(
      `(() => { const s = window.mergenet.status(); return s.connections >= 2 && s.connected && s.step > ${before}; })()`,
      undefined,
      { timeout: 30_000, polling: 100 },
    );
    await waitFor(() => updatesOf(coord!.status(), 'browser-to-node') > updatesBefore + 2, 30_000, 'cycles after the reconnect');
    expect(pageErrors).toEqual([]);
    await page.close();
  });

  it('shows the coordinator refusal of a wrong token', async () => {
    const page = await openDevicePage();
    await joinAs(page, 'not-the-token');
    await page.waitForSelector('[data-testid="refusal"]:not([hidden])', { timeout: 30_000 });
    const text = await page.textContent('[data-testid="refusal"]');
    // The coordinator's own words (coordinator/auth.ts), and its code.
    expect(text).toBe('The coordinator refused this device: the token does not match device "browser" (bad_token)');
    expect(await page.textContent('[data-testid="log"]')).toMatch(/refused: bad_token/);
    // The form is usable again, and the refused attempt did not disturb the running pair.
    expect(await page.isDisabled('[data-testid="join"]')).toBe(false);
    await page.close();
  });

  it('trains on image files picked from disk, labelled by their folders, and cycles', async () => {
    // digits/3/*.png and digits/7/*.png: real MNIST digits drawn dark on light, as a scan would be
    // (the page inverts a light page to MNIST's light-on-dark).
    const dir = await mkdtemp(join(tmpdir(), 'mergenet-images-'));
    try {
      const all = loadMnistAll();
      for (const digit of [3, 7]) {
        await mkdir(join(dir, 'digits', String(digit)), { recursive: true });
        let written = 0;
        for (let i = 0; i < all.n && written < 20; i++) {
          if (all.y[i] !== digit) continue;
          const px = Uint8Array.from(all.x.subarray(i * 784, (i + 1) * 784), (v) => 255 - Math.round(255 * v));
          await writeFile(join(dir, 'digits', String(digit), `${written}.png`), greyPng(px, 28));
          written += 1;
        }
      }
      startNodeDevice();
      const page = await openDevicePage();
      await page.fill('[data-testid="device-id"]', 'browser');
      await page.fill('[data-testid="token"]', TOKENS.browser);
      await page.selectOption('[data-testid="model"]', 'mlp-64');
      await page.selectOption('[data-testid="dataset"]', 'folder');
      await page.setInputFiles('[data-testid="folder"]', join(dir, 'digits'));
      await page.selectOption('[data-testid="backend"]', 'wasm');
      await page.click('[data-testid="join"]');
      await page.waitForFunction(`/data: images, 32 training, 4 held-out and 4 test examples/.test(document.querySelector('[data-testid="log"]').textContent)`, undefined, { timeout: 30_000 });
      // It trains and takes part in its pairs like the shard-fed device did.
      await page.waitForFunction(`(() => { const s = window.mergenet.status(); return s && s.connected && s.step > 50 && s.transfersApplied >= 3; })()`, undefined, { timeout: 60_000, polling: 100 });
      const s = coord!.status().devices.find((d) => d.id === 'browser')!;
      expect(s.model?.task).toBe('images');
      expect(s.slots).toContainEqual({ name: 'out', shape: [64, 2] });
      expect(pageErrors).toEqual([]);
      await page.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

let cycleCounts: { nodeToBrowser: number; browserToNode: number } | undefined;
