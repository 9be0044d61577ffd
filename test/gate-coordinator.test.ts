// The trust gate through the real coordinator: an aligned pair starts as a pass-through of the
// source with the gate's start value; the guard's decision is logged as an event, a refused pair
// leaves both plans for good, an accepted one keeps cycling.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { serve, type RunningCoordinator } from '../coordinator/server.js';
import { sigmoid } from '../coordinator/gate/trust-gate.js';
import type { GateEvent } from '../coordinator/events.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';
import { completeCycle, FakeDevice, pseudoRandom, waitForEvent, wire } from './helpers/fake-device.js';

const R = 3;
const SHAPE = { m: 12, n: 5 };

function config(align = 'auto', guard = 'relevance', join = 'off') {
  return parseCoordinatorConfig({
    devices: [
      { id: 'src', token: 'src-secret' },
      { id: 'tgt', token: 'tgt-secret' },
    ],
    defaults: { rank: R, tCycle: 1, k: 1, align, join, gate: { decideAfter: 8, guard } },
    pairs: [{ id: 'p', source: { device: 'src', slot: 'w' }, target: { device: 'tgt', slot: 'w' } }],
    statusEveryMs: 0,
  });
}

/** The source's slot has another shape: no shared axis, so the LPKA starts as the identity. */
const OTHER = { m: 9, n: 4 };

describe('trust gate in the coordinator', () => {
  let coord: RunningCoordinator | undefined;
  const devices: FakeDevice[] = [];

  beforeAll(async () => {
    await initBackend();
  });
  afterEach(async () => {
    for (const d of devices.splice(0)) d.close();
    await coord?.close();
    coord = undefined;
  });

  async function start(sourceShape = SHAPE, align = 'auto', guard = 'relevance', join = 'off'): Promise<{ src: FakeDevice; tgt: FakeDevice; c: RunningCoordinator }> {
    const c = await serve(config(align, guard, join), { logger: silentLogger() });
    coord = c;
    const src = await FakeDevice.connect({ url: c.url, deviceId: 'src', token: 'src-secret' });
    const tgt = await FakeDevice.connect({ url: c.url, deviceId: 'tgt', token: 'tgt-secret' });
    devices.push(src, tgt);
    await src.register([{ name: 'w', shape: [sourceShape.m, sourceShape.n] }]);
    await tgt.register([{ name: 'w', shape: [SHAPE.m, SHAPE.n] }]);
    src.sendSlice({ slot: 'w', ...sourceShape, rank: R, sliceId: 0, step: 0 });
    await src.barrier();
    return { src, tgt, c };
  }

  it('same-shape slots: the transfer is the source slice itself, gated at sigmoid(θ₀), and no adapter runs', async () => {
    const { tgt, c } = await start();
    const { transfer } = await completeCycle(c, tgt, { slot: 'w', ...SHAPE, rank: R, sliceId: 1, step: 1 }, undefined);
    // The source's slice 0 was pseudoRandom(seed = 0*7919+17) for A (see FakeDevice.sendSlice).
    const A = pseudoRandom(SHAPE.m * R, 0 * 7919 + 17);
    expect(Array.from(transfer.A.values)).toEqual(Array.from(A));
    expect(transfer.gate).toBeCloseTo(sigmoid(-3), 12);
    const st = c.status().pairs[0];
    expect(st.alignment).toBe('both');
    expect(st.hasAdapter).toBe(false);
    expect(st.gate.updates).toBe(1);
  });

  it('source guard: refuses a source whose slice keeps raising the held-out loss: the pair leaves both plans for good', async () => {
    const { src, tgt, c } = await start(SHAPE, 'auto', 'source');
    const decided = waitForEvent(c, 'gate', () => true) as Promise<GateEvent>;
    const replan = tgt.next('plan', (p) => p.pairs.length === 0);
    const srcReplan = src.next('plan', (p) => p.pairs.length === 0);
    for (let i = 1; i <= 8 && c.status().pairs[0].active; i++) {
      const t = tgt.next('transfer', (x) => x.sliceId === i);
      tgt.sendSlice({ slot: 'w', ...SHAPE, rank: R, sliceId: i, step: i });
      const transfer = await t;
      const u = waitForEvent(c, 'update', (e) => e.cycleId === transfer.cycleId);
      tgt.sendFeedback(transfer, { gateGrad: 0.5, sourceGrad: 0.5 });
      await u;
    }
    const ev = await decided;
    expect(ev.decision).toBe('refused');
    expect(ev.reason).toMatch(/raises the held-out loss/);
    expect(ev.gate).toBe(0);
    await replan;
    await srcReplan;
    const st = c.status().pairs[0];
    expect(st.active).toBe(false);
    expect(st.inactiveReason).toMatch(/refused by its trust gate/);
    expect(st.gate).toMatchObject({ decision: 'refused', value: 0 });
    // A later target slice starts nothing: the pair is out of the plan.
    const before = st.cyclesStarted;
    tgt.sendSlice({ slot: 'w', ...SHAPE, rank: R, sliceId: 50, step: 50 });
    await tgt.barrier();
    expect(c.status().pairs[0].cyclesStarted).toBe(before);
  });

  it('source guard: accepts a source whose slice keeps lowering the held-out loss, and the pair goes on', async () => {
    const { tgt, c } = await start(SHAPE, 'auto', 'source');
    const decided = waitForEvent(c, 'gate', () => true) as Promise<GateEvent>;
    let last = 0;
    for (let i = 1; i <= 8; i++) {
      const { transfer } = await completeCycle(c, tgt, { slot: 'w', ...SHAPE, rank: R, sliceId: i, step: i }, undefined, { gateGrad: -0.5, sourceGrad: -0.5 });
      expect(transfer.gate).toBeGreaterThanOrEqual(last);
      last = transfer.gate;
    }
    const ev = await decided;
    expect(ev.decision).toBe('accepted');
    expect(ev.reason).toMatch(/7 of 7 held-out gradients favoured the source/);
    const st = c.status().pairs[0];
    expect(st.active).toBe(true);
    expect(st.gate.value).toBeGreaterThan(sigmoid(-3));
  });

  it('relevance guard (default): accepts a source whose factor lies along the held-out gradient, read off gA', async () => {
    const { tgt, c } = await start();
    const decided = waitForEvent(c, 'gate', () => true) as Promise<GateEvent>;
    for (let i = 1; i <= 3; i++) {
      const t = tgt.next('transfer', (x) => x.sliceId === i);
      tgt.sendSlice({ slot: 'w', ...SHAPE, rank: R, sliceId: i, step: i });
      const transfer = await t;
      // gA ∝ G·B′ᵀ: here G·B′ᵀ points along A′ itself, and the gate's own gradient says nothing.
      const u = waitForEvent(c, 'update', (e) => e.cycleId === transfer.cycleId);
      tgt.sendFeedback(transfer, { gA: wire(transfer.A.values, transfer.A.shape), gateGrad: 0 });
      await u;
    }
    const ev = await decided;
    expect(ev.decision).toBe('accepted');
    expect(ev.reason).toMatch(/beat all 9 random factors with its directions' norms in 3 of 3/);
    const st = c.status().pairs[0];
    expect(st.active).toBe(true);
    expect(st.gateTrace!.map((p) => p.beatShadows)).toEqual([true, true, true]);
  });

  it('relevance guard (default): refuses a source whose factor is no more aligned with gA than noise', async () => {
    const { tgt, c } = await start();
    const decided = waitForEvent(c, 'gate', () => true) as Promise<GateEvent>;
    for (let i = 1; i <= 8 && c.status().pairs[0].active; i++) {
      // gA unrelated to A′ (FakeDevice's default: pseudo-random); sourceGrad says "more, please".
      await completeCycle(c, tgt, { slot: 'w', ...SHAPE, rank: R, sliceId: i, step: i }, undefined, { gateGrad: -0.5, sourceGrad: -0.5 });
    }
    const ev = await decided;
    expect(ev.decision).toBe('refused');
    expect(ev.reason).toMatch(/beat all 9 random factors with its directions' norms in [0-2] of 8/);
    expect(c.status().pairs[0].active).toBe(false);
  });

  it('join: once: the target is asked to join at the first transfer, and the pair ends after it', async () => {
    const { src, tgt, c } = await start(SHAPE, 'auto', 'relevance', 'once');
    expect(c.status().pairs[0].active).toBe(true);
    const replan = tgt.next('plan', (p) => p.pairs.length === 0);
    const srcReplan = src.next('plan', (p) => p.pairs.length === 0);
    await completeCycle(c, tgt, { slot: 'w', ...SHAPE, rank: R, sliceId: 1, step: 1 });
    await replan;
    await srcReplan;
    const st = c.status().pairs[0];
    expect(st).toMatchObject({ active: false, cyclesStarted: 1, updates: 1 });
    expect(st.inactiveReason).toMatch(/join only \(join: once\)/);
    tgt.sendSlice({ slot: 'w', ...SHAPE, rank: R, sliceId: 2, step: 2 });
    await tgt.barrier();
    expect(c.status().pairs[0].cyclesStarted).toBe(1);
  });

  it('no shared axis, by default: the pair is refused before it runs, and says why', async () => {
    const c = await serve(config(), { logger: silentLogger() });
    coord = c;
    const src = await FakeDevice.connect({ url: c.url, deviceId: 'src', token: 'src-secret' });
    const tgt = await FakeDevice.connect({ url: c.url, deviceId: 'tgt', token: 'tgt-secret' });
    devices.push(src, tgt);
    const decided = waitForEvent(c, 'gate', () => true) as Promise<GateEvent>;
    await src.register([{ name: 'w', shape: [OTHER.m, OTHER.n] }]);
    const plan = await tgt.register([{ name: 'w', shape: [SHAPE.m, SHAPE.n] }]);
    const ev = await decided;
    expect(ev).toMatchObject({ decision: 'refused', updates: 0 });
    expect(ev.reason).toMatch(/no shared axis/);
    expect(plan.pairs).toEqual([]);
    const st = c.status().pairs[0];
    expect(st).toMatchObject({ active: false, alignment: 'none', cyclesStarted: 0 });
    expect(st.inactiveReason).toMatch(/refused by its trust gate: no shared axis/);
  });

  it('no shared axis, run on request (align: none): the guard tests the whole gate gradient', async () => {
    const { tgt, c } = await start(OTHER, 'none');
    const decided = waitForEvent(c, 'gate', () => true) as Promise<GateEvent>;
    for (let i = 1; i <= 8; i++) {
      // sourceGrad says "more, please" every time, but the whole gradient's sign is a coin toss.
      const gateGrad = i % 2 === 0 ? 0.5 : -0.5;
      await completeCycle(c, tgt, { slot: 'w', ...SHAPE, rank: R, sliceId: i, step: i }, undefined, { gateGrad, sourceGrad: -0.5 });
    }
    const ev = await decided;
    expect(c.status().pairs[0].alignment).toBe('none');
    expect(ev.decision).toBe('refused');
    expect(ev.reason).toMatch(/4 of 8 .*no significant evidence/);
  });
});
