// The cycle of docs/DESIGN.md §9 through the real coordinator over loopback sockets, with scripted
// devices: cycles complete, every accepted feedback is one adapter step, and the coordinator's
// tensor count stays flat across many cycles.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { serve, type RunningCoordinator } from '../coordinator/server.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';
import { completeCycle, FakeDevice, waitForEvent } from './helpers/fake-device.js';

const T = { slot: 'dense', m: 20, n: 6 };
const S = { slot: 'dense', m: 24, n: 5 };
const R = 4;

function config() {
  return parseCoordinatorConfig({
    devices: [
      { id: 'tgt', token: 'tgt-secret' },
      { id: 'src', token: 'src-secret' },
      { id: 'tgt2', token: 'tgt2-secret' },
    ],
    defaults: { rank: R, tCycle: 10, k: 2, align: 'none', gate: { guard: 'none' } },
    pairs: [
      { id: 'real', source: { device: 'src', slot: 'dense' }, target: { device: 'tgt', slot: 'dense' } },
      { id: 'noise', source: { device: 'src', slot: 'dense' }, target: { device: 'tgt2', slot: 'dense' }, sourceMode: 'noise', rank: 3 },
    ],
    statusEveryMs: 0,
  });
}

describe('coordinator cycle', () => {
  let coord: RunningCoordinator;
  let tgt: FakeDevice;
  let tgt2: FakeDevice;
  let src: FakeDevice;

  beforeAll(async () => {
    await initBackend();
    coord = await serve(config(), { logger: silentLogger() });
    src = await FakeDevice.connect({ url: coord.url, deviceId: 'src', token: 'src-secret' });
    tgt = await FakeDevice.connect({ url: coord.url, deviceId: 'tgt', token: 'tgt-secret' });
    tgt2 = await FakeDevice.connect({ url: coord.url, deviceId: 'tgt2', token: 'tgt2-secret' });
  });

  afterAll(async () => {
    for (const d of [src, tgt, tgt2]) d?.close();
    await coord?.close();
  });

  it('answers register with the plan, ranks capped by both slots', async () => {
    const srcPlan = await src.register([{ name: 'dense', shape: [S.m, S.n] }]);
    expect(srcPlan.pairs.map((p) => [p.pairId, p.role, p.rank]).sort()).toEqual([
      ['noise', 'source', 3],
      ['real', 'source', R],
    ]);
    const plan = await tgt.register([{ name: 'dense', shape: [T.m, T.n] }]);
    expect(plan.deviceId).toBe('tgt');
    expect(plan.pairs).toEqual([{ pairId: 'real', role: 'target', slot: 'dense', peerDevice: 'src', peerSlot: 'dense', rank: R, tCycle: 10, k: 2, tau: 0.5, feedback: 'heldout' }]);
    const plan2 = await tgt2.register([{ name: 'dense', shape: [T.m, T.n] }]);
    expect(plan2.pairs[0]).toMatchObject({ pairId: 'noise', role: 'target', rank: 3 });
  });

  it('waits for a source slice, then completes 20 cycles; adapter steps equal accepted feedback', async () => {
    // No source slice yet: the target's slice starts nothing.
    tgt.sendSlice({ ...T, rank: R, sliceId: 0, step: 0 });
    await tgt.barrier();
    expect(tgt.transfers).toEqual([]);
    expect(coord.status().pairs.find((p) => p.id === 'real')!.skips.no_source).toBe(1);

    // The source sends a larger rank than needed: it is truncated to each pair's rank.
    src.sendSlice({ ...S, rank: 5, sliceId: 1, step: 100 });
    await src.barrier();
    let accepted = 0;
    let lastStep = 0;
    for (let i = 1; i <= 20; i++) {
      const { transfer, update } = await completeCycle(coord, tgt, { ...T, rank: R, sliceId: i, step: i * 10 });
      expect(transfer.A.shape).toEqual([T.m, R]);
      expect(transfer.B.shape).toEqual([R, T.n]);
      expect(transfer.cycleId).toBe(i - 1);
      expect(transfer.adapterStep).toBe(i - 1);
      accepted++;
      expect(update.step).toBe(accepted);
      lastStep = update.step;
    }
    const st = coord.status();
    const pair = st.pairs.find((p) => p.id === 'real')!;
    expect(pair.updates).toBe(accepted);
    expect(pair.adapterStep).toBe(accepted);
    expect(lastStep).toBe(20);
    expect(pair.cyclesStarted).toBe(20);
    expect(pair.lastGradNorm).toBeGreaterThan(0);
    expect(st.devices.find((d) => d.id === 'tgt')!.metrics).toMatchObject({ loss: 1, valAcc: 0.5 });
  });

  it('respects T_cycle: a slice fewer than tCycle steps after the last cycle start waits', async () => {
    src.sendSlice({ ...S, rank: 5, sliceId: 900, step: 900 });
    await src.barrier();
    await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 999, step: 5000 });
    const before = coord.status().pairs.find((p) => p.id === 'real')!;
    const transfers = tgt.transfers.length;
    tgt.sendSlice({ ...T, rank: R, sliceId: 1000, step: 5005 }); // the last cycle started at step 5000
    await tgt.barrier();
    expect(tgt.transfers.length).toBe(transfers);
    const after = coord.status().pairs.find((p) => p.id === 'real')!;
    expect(after.skips.too_soon ?? 0).toBe((before.skips.too_soon ?? 0) + 1);
    expect(after.cyclesStarted).toBe(before.cyclesStarted);
  });

  it('the noise pair cycles too, on norm-matched noise', async () => {
    for (let i = 0; i < 3; i++) {
      const { transfer } = await completeCycle(coord, tgt2, { ...T, rank: 3, sliceId: 50 + i, step: 1000 + i * 10 });
      expect(transfer.A.shape).toEqual([T.m, 3]);
      expect(transfer.pairId).toBe('noise');
    }
    expect(coord.status().pairs.find((p) => p.id === 'noise')!.adapterStep).toBe(3);
  });

  it('a fresh adapter is the identity: the first transfer of a new pair returns the target slice', async () => {
    // The real pair's first transfer (cycle 0) was produced before any update, by a fresh adapter.
    const first = tgt.transfers.find((t) => t.pairId === 'real' && t.cycleId === 0)!;
    expect(first.adapterStep).toBe(0);
    // sliceId 1 was the slice of cycle 0; its A was pseudoRandom(seed = 1*7919+17).
    const { pseudoRandom } = await import('./helpers/fake-device.js');
    const A = pseudoRandom(T.m * R, 1 * 7919 + 17);
    const maxDiff = Math.max(...Array.from(first.A.values, (v, i) => Math.abs(v - A[i])));
    expect(maxDiff).toBeLessThan(1e-5);
  });

  it('keeps tf.memory().numTensors flat across 200 cycles', async () => {
    // Warm up once so lazily created kernels and constants are counted before the baseline.
    let sliceId = 5000;
    let step = 100_000;
    const stepsBefore = coord.status().pairs.find((p) => p.id === 'real')!.adapterStep;
    src.sendSlice({ ...S, rank: R, sliceId: sliceId++, step });
    await completeCycle(coord, tgt, { ...T, rank: R, sliceId: sliceId++, step: (step += 10) });
    const base = tf.memory().numTensors;
    const t0 = Date.now();
    for (let i = 0; i < 200; i++) {
      if (i % 20 === 0) src.sendSlice({ ...S, rank: R, sliceId: sliceId++, step: step + i }); // replaced slices are disposed
      await completeCycle(coord, tgt, { ...T, rank: R, sliceId: sliceId++, step: (step += 10) });
    }
    const ms = Date.now() - t0;
    expect(tf.memory().numTensors).toBe(base);
    console.log(`200 cycles in ${ms} ms (${(ms / 200).toFixed(1)} ms/cycle); numTensors ${base} → ${tf.memory().numTensors}`);
    expect(coord.status().pairs.find((p) => p.id === 'real')!.adapterStep).toBe(stepsBefore + 201);
  });

  it('emits cycle events', async () => {
    const ev = waitForEvent(coord, 'cycle', (c) => c.pairId === 'real');
    const tp = tgt.next('transfer');
    tgt.sendSlice({ ...T, rank: R, sliceId: 99_999, step: 10_000_000 });
    const c = await ev;
    const t = await tp;
    expect(c.cycleId).toBe(t.cycleId);
    tgt.sendFeedback(t);
    await waitForEvent(coord, 'update', (u) => u.cycleId === t.cycleId);
  });
});
