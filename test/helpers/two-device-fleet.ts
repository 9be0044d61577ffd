// A coordinator with a viewer token and two small MLP devices cycling both ways on real sockets
// (loopback, a free port): what the HTTP-endpoint and dashboard tests look at.
import type * as tf from '@tensorflow/tfjs';
import { DeviceClient } from '../../client/device.js';
import { loadDeviceData } from '../../client/data/registry.js';
import { buildModel } from '../../client/models/mnist-models.js';
import { parseCoordinatorConfig, serve, type RunningCoordinator } from '../../coordinator/index.js';
import { silentLogger } from '../../shared/log.js';

export const VIEWER_TOKEN = 'viewer-secret-1';
export const deviceToken = (id: string) => `tok-${id}`;

export interface Fleet {
  coord: RunningCoordinator;
  devices: DeviceClient[];
  /** start both devices (they train until stop) */
  start(): void;
  stop(): Promise<void>;
}

export async function startTwoDeviceFleet(opts: { dashboardEveryMs?: number } = {}): Promise<Fleet> {
  const ids = ['a', 'b'];
  const config = parseCoordinatorConfig({
    host: '127.0.0.1',
    port: 0,
    devices: ids.map((id) => ({ id, token: deviceToken(id) })),
    viewers: [{ name: 'test', token: VIEWER_TOKEN }],
    defaults: { rank: 4, tCycle: 6, k: 3, tau: 0.5 },
    pairs: [
      { id: 'a-to-b', source: { device: 'a', slot: 'dense_1' }, target: { device: 'b', slot: 'dense_1' } },
      { id: 'b-to-a', source: { device: 'b', slot: 'dense_1' }, target: { device: 'a', slot: 'dense_1' } },
    ],
    timing: { cycleTimeoutMs: 20_000, sourceMaxAgeMs: 60_000 },
    statusEveryMs: 0,
  });
  const coord = await serve(config, { logger: silentLogger(), dashboardEveryMs: opts.dashboardEveryMs ?? 300 });
  const models: tf.LayersModel[] = [];
  const devices = ids.map((id, i) => {
    const data = loadDeviceData({ name: 'mnist', task: 'digit', trainSize: 200, valSize: 100, testSize: 100, offset: i * 300, layout: 'flat' }, 1);
    const model: tf.LayersModel = buildModel({ kind: 'mlp', inputShape: [784], hidden: [32, 16], classes: 10 }, i + 1);
    models.push(model);
    return new DeviceClient({
      url: coord.url,
      deviceId: id,
      token: deviceToken(id),
      model,
      data,
      rank: 4,
      trainer: { optimizer: 'adam', lr: 0.002, batchSize: 16 },
      seed: i + 1,
      evalEvery: 20,
      description: { name: `mlp-${id}`, architecture: 'mlp 784-32-16-10', task: data.task, modality: 'image' },
      reconnect: { delayMs: 50, maxDelayMs: 500 },
    });
  });
  const runs: Promise<void>[] = [];
  return {
    coord,
    devices,
    start() {
      for (const d of devices) runs.push(d.start());
    },
    async stop() {
      for (const d of devices) d.stop();
      await Promise.allSettled(runs);
      await coord.close();
      for (const m of models) m.dispose();
    },
  };
}

export function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = async () => {
      try {
        if (await cond()) return resolve();
      } catch {
        // not yet
      }
      if (Date.now() - t0 > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 50);
    };
    void tick();
  });
}
