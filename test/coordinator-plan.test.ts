// Plans: ranks capped by both slots, updated plans when a peer registers, autoPair both ways
// (restored from a checkpoint when the devices come back), stale source slices, and the noise
// control's norm matching.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { noiseLikeLowRank } from '../coordinator/noise.js';
import { serve } from '../coordinator/server.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';
import { completeCycle, FakeDevice } from './helpers/fake-device.js';

const dev = (id: string) => ({ id, token: `${id}-secret` });
const connect = (url: string, id: string) => FakeDevice.connect({ url, deviceId: id, token: `${id}-secret` });

describe('coordinator plans', () => {
  let dir: string;
  beforeAll(async () => {
    await initBackend();
    dir = await mkdtemp(join(tmpdir(), 'mergenet-plan-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a plan before the peer registers has a provisional rank, lowered when the peer registers', async () => {
    const coord = await serve(
      parseCoordinatorConfig({
        devices: [dev('a'), dev('b')],
        defaults: { rank: 8, tCycle: 1, align: 'none', gate: { guard: 'none' } },
        pairs: [{ id: 'ab', source: { device: 'a', slot: 'w' }, target: { device: 'b', slot: 'v' } }],
        statusEveryMs: 0,
      }),
      { logger: silentLogger() },
    );
    const a = await connect(coord.url, 'a');
    const b = await connect(coord.url, 'b');
    try {
      const planA = await a.register([{ name: 'w', shape: [100, 50] }]);
      expect(planA.pairs).toEqual([expect.objectContaining({ pairId: 'ab', role: 'source', rank: 8 })]);
      expect(coord.status().pairs[0].hasAdapter).toBe(false);
      const planB = await b.register([{ name: 'v', shape: [30, 5] }]);
      expect(planB.pairs).toEqual([expect.objectContaining({ pairId: 'ab', role: 'target', rank: 5, peerDevice: 'a', peerSlot: 'w' })]);
      const updated = await a.next('plan');
      expect(updated.pairs[0].rank).toBe(5);
      expect(coord.status().pairs[0]).toMatchObject({ hasAdapter: true, rank: 5 });
      // The session in the plan is the device's current one.
      expect(updated.session).toBe(coord.status().devices.find((d) => d.id === 'a')!.session);
    } finally {
      a.close();
      b.close();
      await coord.close();
    }
  });

  it('does not use a source slice older than sourceMaxAgeMs', async () => {
    const clock = { now: 0 };
    const coord = await serve(
      parseCoordinatorConfig({
        devices: [dev('a'), dev('b')],
        defaults: { rank: 2, tCycle: 1, align: 'none', gate: { guard: 'none' } },
        pairs: [{ id: 'ab', source: { device: 'a', slot: 'w' }, target: { device: 'b', slot: 'w' } }],
        timing: { sourceMaxAgeMs: 200 },
        statusEveryMs: 0,
      }),
      { logger: silentLogger(), clock: () => clock.now },
    );
    const a = await connect(coord.url, 'a');
    const b = await connect(coord.url, 'b');
    try {
      await a.register([{ name: 'w', shape: [6, 4] }]);
      await b.register([{ name: 'w', shape: [5, 3] }]);
      a.sendSlice({ slot: 'w', m: 6, n: 4, rank: 2, sliceId: 0, step: 0 });
      await completeCycle(coord, b, { slot: 'w', m: 5, n: 3, rank: 2, sliceId: 1, step: 1 });
      clock.now += 201; // the source slice is now older than sourceMaxAgeMs
      b.sendSlice({ slot: 'w', m: 5, n: 3, rank: 2, sliceId: 2, step: 2 });
      await b.barrier();
      expect(b.transfers.map((t) => t.sliceId)).toEqual([1]);
      expect(coord.status().pairs[0].skips.source_too_old).toBe(1);
      // A fresh source slice unblocks the pair.
      a.sendSlice({ slot: 'w', m: 6, n: 4, rank: 2, sliceId: 3, step: 3 });
      await a.barrier();
      const { update } = await completeCycle(coord, b, { slot: 'w', m: 5, n: 3, rank: 2, sliceId: 4, step: 4 });
      expect(update.step).toBe(2);
    } finally {
      a.close();
      b.close();
      await coord.close();
    }
  });

  it('autoPair pairs registered devices both ways, updates plans, and restores auto pairs from a checkpoint', async () => {
    const cfg = parseCoordinatorConfig({
      devices: [dev('a'), dev('b'), dev('c')],
      defaults: { rank: 8, tCycle: 1, align: 'none', gate: { guard: 'none' } },
      autoPair: { enabled: true },
      checkpoint: { dir },
      statusEveryMs: 0,
    });
    let coord = await serve(cfg, { logger: silentLogger() });
    let a = await connect(coord.url, 'a');
    let b = await connect(coord.url, 'b');
    const c = await connect(coord.url, 'c');
    let stepAB: number;
    try {
      expect((await a.register([{ name: 'first', shape: [30, 5] }, { name: 'second', shape: [40, 40] }])).pairs).toEqual([]);
      const planB = await b.register([{ name: 'only', shape: [12, 10] }]);
      expect(planB.pairs.map((p) => [p.pairId, p.role, p.slot, p.peerSlot, p.rank]).sort()).toEqual([
        ['auto:a.first--b.only', 'target', 'only', 'first', 5],
        ['auto:b.only--a.first', 'source', 'only', 'first', 5],
      ]);
      const planA = await a.next('plan');
      expect(planA.pairs).toHaveLength(2);
      const planC = await c.register([{ name: 'k', shape: [9, 9] }]);
      expect(planC.pairs).toHaveLength(4);
      expect((await a.next('plan')).pairs).toHaveLength(4);
      expect((await b.next('plan')).pairs).toHaveLength(4);
      expect(coord.status().pairs).toHaveLength(6);

      a.sendSlice({ slot: 'first', m: 30, n: 5, rank: 5, sliceId: 0, step: 0 });
      // b.only serves pairs of rank 5 (with a) and 8 (with c): its slices must carry rank 8.
      const rej = b.next('reject');
      b.sendSlice({ slot: 'only', m: 12, n: 10, rank: 5, sliceId: 0, step: 0 });
      expect(await rej).toMatchObject({ code: 'rank_out_of_bounds' });
      for (let i = 1; i <= 3; i++) {
        const { transfer } = await completeCycle(coord, b, { slot: 'only', m: 12, n: 10, rank: 8, sliceId: i, step: i });
        expect(transfer.pairId).toBe('auto:a.first--b.only');
      }
      stepAB = coord.status().pairs.find((p) => p.id === 'auto:a.first--b.only')!.adapterStep;
      expect(stepAB).toBe(3);
    } finally {
      a.close();
      b.close();
      c.close();
      await coord.close();
    }

    // Restart: auto pairs come back when their devices register, at the saved step.
    coord = await serve(cfg, { logger: silentLogger() });
    a = await connect(coord.url, 'a');
    b = await connect(coord.url, 'b');
    try {
      expect(coord.status().pairs).toHaveLength(0);
      await a.register([{ name: 'first', shape: [30, 5] }]);
      await b.register([{ name: 'only', shape: [12, 10] }]);
      const ab = coord.status().pairs.find((p) => p.id === 'auto:a.first--b.only')!;
      expect(ab).toMatchObject({ adapterStep: stepAB, nextCycleId: 3, auto: true });
      // Pairs with c (not back yet) are carried in the next checkpoint, not lost.
      await coord.checkpoint();
    } finally {
      a.close();
      b.close();
      await coord.close();
    }
    const coord3 = await serve(cfg, { logger: silentLogger() });
    const c3 = await connect(coord3.url, 'c');
    const a3 = await connect(coord3.url, 'a');
    try {
      await a3.register([{ name: 'first', shape: [30, 5] }]);
      await c3.register([{ name: 'k', shape: [9, 9] }]);
      expect(coord3.status().pairs.map((p) => p.id).sort()).toEqual(['auto:a.first--c.k', 'auto:c.k--a.first']);
    } finally {
      a3.close();
      c3.close();
      await coord3.close();
    }
  });

  it('noise control: same shapes and Frobenius norms per factor, different values', () => {
    const src = { A: tf.randomNormal([30, 4], 0, 2, 'float32', 1) as tf.Tensor2D, B: tf.randomUniform([4, 7], -1, 1, 'float32', 2) as tf.Tensor2D };
    const before = tf.memory().numTensors;
    const noise = noiseLikeLowRank(src, 123);
    expect(tf.memory().numTensors).toBe(before + 2);
    for (const k of ['A', 'B'] as const) {
      expect(noise[k].shape).toEqual(src[k].shape);
      const n0 = tf.norm(src[k]).dataSync()[0];
      const n1 = tf.norm(noise[k]).dataSync()[0];
      expect(Math.abs(n1 - n0) / n0).toBeLessThan(1e-5);
      const corr = tf.sum(tf.mul(src[k], noise[k])).dataSync()[0] / (n0 * n1);
      expect(Math.abs(corr)).toBeLessThan(0.6);
    }
    const again = noiseLikeLowRank(src, 123);
    expect(Array.from(again.A.dataSync())).toEqual(Array.from(noise.A.dataSync()));
    tf.dispose([src.A, src.B, noise.A, noise.B, again.A, again.B]);
  });
});
