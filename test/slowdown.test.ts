// The straggler slowdown: after each step a device with slowdown s sleeps (s − 1)× that step's
// own time. Checked with a controlled clock and a recorded sleep, so nothing here depends on how
// loaded the machine is (a measured speed ratio would).
import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

const sleeps: number[] = [];
// The loop sleeps through client/yield.ts (isomorphic: no node:timers/promises in the device core).
vi.mock('../client/yield.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../client/yield.js')>();
  return {
    ...real,
    sleep: (ms: number) => {
      sleeps.push(ms);
      return Promise.resolve();
    },
  };
});

const { DeviceClient } = await import('../client/device.js');
const { initBackend } = await import('../shared/tf/backend.js');

const FEATURES = 4;

function model(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.dense({ inputShape: [FEATURES], units: 2, activation: 'softmax', name: 'out', kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
  return m;
}

function split(n: number) {
  const x = new Float32Array(n * FEATURES).map((_, i) => (i % 7) / 7);
  const y = new Int32Array(n).map((_, i) => i % 2);
  return { x, y, n, inputShape: [FEATURES], numClasses: 2 };
}

/**
 * Run a device (no coordinator reachable) for `steps` steps on a fake clock that advances by 1 ms
 * at every reading, so a step's measured time is the same in every run; returns the sleeps.
 */
async function run(slowdown: number, steps: number): Promise<number[]> {
  sleeps.length = 0;
  let fake = 0;
  const spy = vi.spyOn(globalThis.performance, 'now').mockImplementation(() => ++fake);
  try {
    const m = model();
    await new DeviceClient({
      url: 'http://127.0.0.1:9', deviceId: 'd', token: 't', model: m,
      data: { train: split(32), val: split(8), test: split(8), task: 't' }, rank: 1,
      trainer: { optimizer: 'sgd', lr: 0.01, batchSize: 8 }, seed: 0, maxSteps: steps, evalEvery: 0, slowdown,
      description: { name: 'n', architecture: 'a', task: 't', modality: 'm' },
    }).start();
    m.dispose();
  } finally {
    spy.mockRestore();
  }
  return [...sleeps];
}

describe('slowdown', () => {
  beforeAll(async () => {
    await initBackend();
  });
  afterEach(() => vi.restoreAllMocks());

  it('sleeps (slowdown − 1)× each step’s own time after every step', async () => {
    const s3 = await run(3, 12);
    const s5 = await run(5, 12);
    expect(s3).toHaveLength(12);
    expect(s3.every((ms) => ms > 0)).toBe(true);
    // same steps, same measured times: (5 − 1) / (3 − 1) = 2 exactly, step by step
    expect(s5).toEqual(s3.map((ms) => 2 * ms));
    const s2 = await run(2, 12);
    expect(s2).toEqual(s3.map((ms) => ms / 2));
  });

  it('slowdown 1 never sleeps (it only yields to the event loop)', async () => {
    expect(await run(1, 12)).toEqual([]);
  });
});
