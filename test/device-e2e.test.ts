// Devices against the real coordinator (serve()) on loopback, with real sockets: three devices of
// two architectures cycling on several pairs (two of them sharing a target slot), and a device
// killed in the middle of a cycle and restarted.
import type * as tf from '@tensorflow/tfjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient, type DeviceClientOptions } from '../client/device.js';
import { waitUntil } from './helpers/wait-until.js';
import { loadDeviceData } from '../client/data/registry.js';
import { buildModel } from '../client/models/mnist-models.js';
import { parseCoordinatorConfig, serve, type DropEvent, type RunningCoordinator, type UpdateEvent } from '../coordinator/index.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';

beforeAll(async () => {
  await initBackend();
});

let coord: RunningCoordinator | undefined;
const devices: DeviceClient[] = [];
afterEach(async () => {
  for (const d of devices) d.stop();
  devices.length = 0;
  await coord?.close();
  coord = undefined;
});

type Arch = 'mlp32' | 'mlp16' | 'cnn';

function makeDevice(url: string, id: string, arch: Arch, seed: number, extra: Partial<DeviceClientOptions> = {}): DeviceClient {
  const image = arch === 'cnn';
  const task = arch === 'mlp16' ? 'parity' : 'digit';
  const data = loadDeviceData({ name: 'mnist', task, trainSize: 200, valSize: 100, testSize: 100, offset: seed * 300, layout: image ? 'image' : 'flat' }, 1);
  const classes = task === 'digit' ? 10 : 2;
  const model: tf.LayersModel = image
    ? buildModel({ kind: 'cnn', inputShape: [28, 28, 1], filters: [4], kernelSize: 3, dense: [16, 16], classes }, seed)
    : buildModel({ kind: 'mlp', inputShape: [784], hidden: arch === 'mlp32' ? [32, 16] : [16, 12], classes }, seed);
  const d = new DeviceClient({
    url,
    deviceId: id,
    token: `tok-${id}`,
    model,
    data,
    rank: 4,
    trainer: { optimizer: 'adam', lr: 0.002, batchSize: 16 },
    seed,
    evalEvery: 100,
    description: { name: `${arch}-${id}`, architecture: arch, task: data.task, modality: 'image' },
    reconnect: { delayMs: 50, maxDelayMs: 500 },
    ...extra,
  });
  devices.push(d);
  return d;
}

async function startCoordinator(ids: string[], pairs: { id: string; s: string; t: string }[]): Promise<RunningCoordinator> {
  const config = parseCoordinatorConfig({
    host: '127.0.0.1',
    port: 0,
    devices: ids.map((id) => ({ id, token: `tok-${id}` })),
    defaults: { rank: 4, tCycle: 6, k: 3, tau: 0.5, align: 'none', gate: { guard: 'none' } },
    // Hidden slots (dense_1: 32×16, 16×12, 16×16): the coordinator's adapter work grows with
    // m + n, and every device shares this process's one thread with it.
    pairs: pairs.map((p) => ({ id: p.id, source: { device: p.s, slot: 'dense_1' }, target: { device: p.t, slot: 'dense_1' } })),
    timing: { cycleTimeoutMs: 20_000, sourceMaxAgeMs: 60_000 },
    statusEveryMs: 0,
  });
  return serve(config, { logger: silentLogger() });
}

const waitFor = waitUntil;

const pairStatus = (c: RunningCoordinator, id: string) => c.status().pairs.find((p) => p.id === id)!;

describe('devices against the real coordinator', () => {
  it('three devices of two architectures complete ≥ 20 cycles per pair; adapter steps equal accepted feedback', async () => {
    const pairs = [
      { id: 'a-to-b', s: 'a', t: 'b' },
      { id: 'b-to-a', s: 'b', t: 'a' },
      { id: 'c-to-a', s: 'c', t: 'a' }, // shares a's target slot with b-to-a: overlapping windows
      { id: 'a-to-c', s: 'a', t: 'c' },
    ];
    coord = await startCoordinator(['a', 'b', 'c'], pairs);
    const updates: UpdateEvent[] = [];
    const drops: DropEvent[] = [];
    coord.on('update', (u) => updates.push(u));
    coord.on('drop', (d) => drops.push(d));
    const a = makeDevice(coord.url, 'a', 'mlp32', 1);
    const b = makeDevice(coord.url, 'b', 'mlp16', 2);
    const c = makeDevice(coord.url, 'c', 'cnn', 3);
    const runs = [a, b, c].map((d) => d.start());
    const c0 = coord;
    await waitFor(() => pairs.every((p) => pairStatus(c0, p.id).updates >= 20), 45_000, '20 updates per pair');
    for (const d of [a, b, c]) d.stop();
    await Promise.all(runs);
    // Feedback sent before a device's disconnect is delivered before it: wait until the coordinator
    // has answered every feedback each device sent (applied, or refused: then the test fails below).
    const answered = (d: DeviceClient, pairIds: string[]) =>
      pairIds.reduce((n, id) => n + pairStatus(c0, id).updates, 0) + drops.filter((x) => x.event === 'feedback' && x.deviceId === d.deviceId).length === d.status().feedbackSent;
    await waitFor(() => answered(a, ['b-to-a', 'c-to-a']) && answered(b, ['a-to-b']) && answered(c, ['a-to-c']), 10_000, 'every feedback answered');

    const st = coord.status();
    for (const p of pairs) {
      const ps = st.pairs.find((x) => x.id === p.id)!;
      expect(ps.updates, p.id).toBeGreaterThanOrEqual(20);
      expect(ps.adapterStep, p.id).toBe(ps.updates);
      expect(updates.filter((u) => u.pairId === p.id).length, p.id).toBe(ps.updates);
    }
    // Every feedback a device sent was accepted: per target device, feedback = its pairs' updates.
    const feedbackRejects = drops.filter((d) => d.event === 'feedback');
    expect(feedbackRejects).toEqual([]);
    expect(a.status().feedbackSent).toBe(pairStatus(coord, 'b-to-a').updates + pairStatus(coord, 'c-to-a').updates);
    expect(b.status().feedbackSent).toBe(pairStatus(coord, 'a-to-b').updates);
    expect(c.status().feedbackSent).toBe(pairStatus(coord, 'a-to-c').updates);
    for (const d of [a, b, c]) {
      const s = d.status();
      expect(s.rejects, d.deviceId).toEqual({});
      expect(s.ignored, d.deviceId).toEqual({});
      expect(s.valAcc!, d.deviceId).toBeGreaterThan(0.5);
      // acks arrive for accepted feedback (the last ones may be cut off by the device's own stop)
      expect(s.feedbackAcked, d.deviceId).toBeGreaterThanOrEqual(s.feedbackSent - 2);
      expect(s.feedbackAcked, d.deviceId).toBeLessThanOrEqual(s.feedbackSent);
    }
    // Slices of one slot are warm-started from the previous one (SliceHistory); every slice is
    // counted once, cold (guard fallbacks included) or warm, sent or not. b's slot is small enough for the
    // exact SVD, which keeps no history.
    for (const d of [a, c]) {
      const { cold, warm } = d.status().sliceStarts;
      expect(cold + warm, d.deviceId).toBeGreaterThanOrEqual(d.status().slicesSent);
      expect(warm, d.deviceId).toBeGreaterThan(cold);
    }
    expect(b.status().sliceStarts).toEqual({ cold: 0, warm: 0, fallback: 0 });
    expect(b.status().adapterSteps['a-to-b']).toBeLessThanOrEqual(pairStatus(coord, 'a-to-b').adapterStep);
    expect(b.status().adapterSteps['a-to-b']).toBeGreaterThanOrEqual(pairStatus(coord, 'a-to-b').adapterStep - 1);
    // The coordinator saw every device's registration and metrics.
    expect(st.devices.map((d) => [d.id, d.model?.architecture]).sort()).toEqual([['a', 'mlp32'], ['b', 'mlp16'], ['c', 'cnn']]);
    expect(st.devices.every((d) => d.metrics !== undefined)).toBe(true);
  });

  it('a device killed mid-cycle and restarted rejoins; its pairs resume; the dead cycle is never applied', async () => {
    const pairs = [
      { id: 'a-to-b', s: 'a', t: 'b' },
      { id: 'b-to-a', s: 'b', t: 'a' },
    ];
    coord = await startCoordinator(['a', 'b'], pairs);
    const updates: UpdateEvent[] = [];
    const drops: DropEvent[] = [];
    coord.on('update', (u) => updates.push(u));
    coord.on('drop', (d) => drops.push(d));
    const a = makeDevice(coord.url, 'a', 'mlp32', 1);
    const b1 = makeDevice(coord.url, 'b', 'mlp16', 2);
    const runA = a.start();

    // Kill b right after it applied its 6th transfer: the window is open, no feedback was sent.
    let killedCycle: number | undefined;
    b1.on('transfer', (t) => {
      if (t.pairId === 'a-to-b' && b1.status().transfersApplied === 6 && killedCycle === undefined) {
        killedCycle = t.cycleId;
        b1.dropConnection(); // the socket dies without a goodbye, as with a killed process
        b1.stop();
      }
    });
    await b1.start();
    expect(killedCycle).toBeDefined();
    const c0 = coord;
    // The five feedbacks b sent before it died may still be in the coordinator's socket buffer.
    await waitFor(() => pairStatus(c0, 'a-to-b').updates >= 5, 5000, 'the feedback sent before the kill');
    const before = { ab: pairStatus(c0, 'a-to-b').updates, ba: pairStatus(c0, 'b-to-a').updates };
    expect(before.ab).toBe(5);
    expect(pairStatus(c0, 'a-to-b').inFlight?.cycleId).toBe(killedCycle);

    // Restart: a new process would build its model afresh and count its steps from 0.
    const b2 = makeDevice(coord.url, 'b', 'mlp16', 2);
    const runB2 = b2.start();
    await waitFor(
      () => pairStatus(c0, 'a-to-b').updates >= before.ab + 8 && pairStatus(c0, 'b-to-a').updates >= before.ba + 8,
      40_000,
      'both pairs to resume',
    );
    a.stop();
    b2.stop();
    await Promise.all([runA, runB2]);
    // wait until the coordinator has answered every feedback sent (see the first test)
    const feedbackRejects = () => drops.filter((d) => d.event === 'feedback').length;
    await waitFor(
      () =>
        b1.status().feedbackSent + b2.status().feedbackSent + a.status().feedbackSent ===
        pairStatus(c0, 'a-to-b').updates + pairStatus(c0, 'b-to-a').updates + feedbackRejects(),
      10_000,
      'every feedback answered',
    );
    expect(feedbackRejects()).toBe(0);

    // The dead cycle was dropped (its session was replaced by the restarted device) and never applied.
    const dead = drops.filter((d) => d.pairId === 'a-to-b' && d.cycleId === killedCycle);
    expect(dead.map((d) => [d.event, d.code])).toEqual([['cycle', 'session_replaced']]);
    expect(updates.some((u) => u.pairId === 'a-to-b' && u.cycleId === killedCycle)).toBe(false);
    expect(b2.status().connections).toBe(1);
    expect(b2.status().rejects).toEqual({});
    const st = coord.status();
    for (const p of pairs) {
      const ps = st.pairs.find((x) => x.id === p.id)!;
      expect(ps.adapterStep).toBe(ps.updates);
      expect(updates.filter((u) => u.pairId === p.id).length).toBe(ps.updates);
    }
    // b's two lives sent exactly the feedback the coordinator applied for a-to-b.
    expect(b1.status().feedbackSent + b2.status().feedbackSent).toBe(pairStatus(coord, 'a-to-b').updates);
    expect(st.devices.find((d) => d.id === 'b')!.connections).toBe(2);
  });

  it('a dropped connection (same process) reconnects, re-registers and resumes without losing its training', async () => {
    const pairs = [
      { id: 'a-to-b', s: 'a', t: 'b' },
      { id: 'b-to-a', s: 'b', t: 'a' },
    ];
    coord = await startCoordinator(['a', 'b'], pairs);
    const updates: UpdateEvent[] = [];
    coord.on('update', (u) => updates.push(u));
    const a = makeDevice(coord.url, 'a', 'mlp32', 1);
    const b = makeDevice(coord.url, 'b', 'mlp16', 2);
    let droppedAt: { step: number; cycle: number } | undefined;
    b.on('transfer', (t) => {
      if (t.pairId === 'a-to-b' && b.status().transfersApplied === 4 && !droppedAt) {
        droppedAt = { step: b.status().step, cycle: t.cycleId };
        b.dropConnection();
      }
    });
    const runs = [a.start(), b.start()];
    const c0 = coord;
    await waitFor(() => droppedAt !== undefined && pairStatus(c0, 'a-to-b').updates >= 10, 40_000, 'a-to-b to resume');
    a.stop();
    b.stop();
    await Promise.all(runs);
    expect(b.status().connections).toBe(2);
    expect(updates.some((u) => u.pairId === 'a-to-b' && u.cycleId === droppedAt!.cycle)).toBe(false);
    expect(b.status().windowsAbandoned).toBeGreaterThanOrEqual(1);
    // Local training never restarted: the second registration carried on from the step reached.
    expect(b.status().step).toBeGreaterThan(droppedAt!.step);
    expect(coord.status().devices.find((d) => d.id === 'b')!.connections).toBe(2);
  });
});
