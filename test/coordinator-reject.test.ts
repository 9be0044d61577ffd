// Refusals: every bad handshake and every bad message gets its own code, changes nothing, and
// does not disturb a healthy pair that keeps cycling meanwhile. Every test makes its own "bad"
// connection (a fresh session), so each runs alone (`-t`) or in any order.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeMessage } from '../shared/codec/tensor-codec.js';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { serve, TRANSPORT_LIMIT_FACTOR, type RunningCoordinator } from '../coordinator/server.js';
import { silentLogger } from '../shared/log.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { initBackend } from '../shared/tf/backend.js';
import { completeCycle, FakeDevice, pseudoRandom, waitForEvent, wire, type DecodedTransfer } from './helpers/fake-device.js';

const R = 4;
const T = { slot: 'dense', m: 20, n: 6 };
const S = { slot: 'dense', m: 24, n: 5 };
const MAX_BYTES = 64 * 1024;
const TIMEOUT_MS = 1500;

describe('coordinator refusals', () => {
  let coord: RunningCoordinator;
  let src: FakeDevice;
  let good: FakeDevice;
  let bad: FakeDevice;
  let stop = false;
  let loop: Promise<number>;
  let goodSliceId = 1;
  let tensorsBefore = 0;
  let badSliceId = 1000;

  /**
   * A new connection of device "bad" (replacing any earlier one, whose in-flight cycle is then
   * dropped), registered unless `register` is false.
   */
  async function freshBad(register = true): Promise<FakeDevice> {
    const old = bad;
    bad = await FakeDevice.connect({ url: coord.url, deviceId: 'bad', token: 'bad-secret' });
    await old?.disconnected();
    if (register) await bad.register([{ name: 'dense', shape: [T.m, T.n] }]);
    return bad;
  }

  /** A cycle of the "bad" pair started: its transfer. */
  async function badTransfer(): Promise<DecodedTransfer> {
    const sliceId = badSliceId++;
    const tp = bad.next('transfer', (t) => t.sliceId === sliceId);
    bad.sendSlice({ ...T, rank: R, sliceId, step: sliceId * 10 });
    return tp;
  }

  const badPair = () => coord.status().pairs.find((p) => p.id === 'bad')!;

  /** The healthy pair cycles in the background for the whole file. */
  async function cycleForever(): Promise<number> {
    let n = 0;
    while (!stop) {
      await completeCycle(coord, good, { ...T, rank: R, sliceId: goodSliceId, step: goodSliceId * 10 });
      goodSliceId++;
      n++;
    }
    return n;
  }

  /** Wait until the healthy pair has made `k` more updates. */
  async function goodKeepsCycling(k = 2): Promise<void> {
    for (let i = 0; i < k; i++) await waitForEvent(coord, 'update', (u) => u.pairId === 'good');
  }

  async function expectReject(send: () => void, code: string, event: string): Promise<void> {
    const p = bad.next('reject', () => true, 5000);
    send();
    const r = await p;
    expect(r.code, r.reason).toBe(code);
    expect(r.event).toBe(event);
    expect(r.reason.length).toBeGreaterThan(5);
    expect(bad.connected).toBe(true);
  }

  beforeAll(async () => {
    await initBackend();
    tensorsBefore = tf.memory().numTensors;
    coord = await serve(
      parseCoordinatorConfig({
        devices: [
          { id: 'src', token: 'src-secret' },
          { id: 'good', token: 'good-secret' },
          { id: 'bad', token: 'bad-secret' },
        ],
        defaults: { rank: R, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' } },
        pairs: [
          { id: 'good', source: { device: 'src', slot: 'dense' }, target: { device: 'good', slot: 'dense' } },
          { id: 'bad', source: { device: 'src', slot: 'dense' }, target: { device: 'bad', slot: 'dense' } },
        ],
        limits: { maxMessageBytes: MAX_BYTES },
        timing: { cycleTimeoutMs: TIMEOUT_MS },
        statusEveryMs: 0,
      }),
      { logger: silentLogger() },
    );
    src = await FakeDevice.connect({ url: coord.url, deviceId: 'src', token: 'src-secret' });
    good = await FakeDevice.connect({ url: coord.url, deviceId: 'good', token: 'good-secret' });
    bad = await FakeDevice.connect({ url: coord.url, deviceId: 'bad', token: 'bad-secret' });
    await src.register([{ name: 'dense', shape: [S.m, S.n] }]);
    await good.register([{ name: 'dense', shape: [T.m, T.n] }]);
    src.sendSlice({ ...S, rank: R, sliceId: 0, step: 0 });
    loop = cycleForever();
    await goodKeepsCycling(2);
  });

  afterAll(async () => {
    stop = true;
    await loop?.catch(() => undefined);
    for (const d of [src, good, bad]) d?.close();
    await coord?.close();
    // close() disposes every tensor the coordinator held, despite all the drops
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });

  describe('handshake', () => {
    const base = () => ({ url: coord.url, deviceId: 'bad' });
    it('no token → unauthorized', async () => {
      const r = await FakeDevice.refusal({ ...base() });
      expect(r.code).toBe('unauthorized');
      expect(r.reason).toMatch(/token/);
    });
    it('wrong token → bad_token', async () => {
      expect((await FakeDevice.refusal({ ...base(), token: 'bad-secreT' })).code).toBe('bad_token');
      expect((await FakeDevice.refusal({ ...base(), token: 'x' })).code).toBe('bad_token');
      // another device's token does not open this one
      expect((await FakeDevice.refusal({ ...base(), token: 'good-secret' })).code).toBe('bad_token');
    });
    it('unknown device → unknown_device', async () => {
      expect((await FakeDevice.refusal({ url: coord.url, deviceId: 'nobody', token: 'bad-secret' })).code).toBe('unknown_device');
    });
    it('protocol version → protocol_version', async () => {
      expect((await FakeDevice.refusal({ ...base(), token: 'bad-secret', protocolVersion: PROTOCOL_VERSION + 1 })).code).toBe('protocol_version');
    });
    it('malformed auth → invalid_message', async () => {
      const r = await FakeDevice.refusal({ ...base(), auth: { deviceId: 'has spaces', token: 'bad-secret', protocolVersion: PROTOCOL_VERSION } });
      expect(r.code).toBe('invalid_message');
      expect(r.reason).toMatch(/deviceId/);
    });
    it('counts refusals and keeps the healthy pair cycling', async () => {
      const before = coord.status().drops;
      await FakeDevice.refusal({ ...base() });
      await FakeDevice.refusal({ ...base(), token: 'x' });
      await FakeDevice.refusal({ ...base(), token: 'y' });
      const st = coord.status();
      expect(st.drops.unauthorized).toBe((before.unauthorized ?? 0) + 1);
      expect(st.drops.bad_token).toBe((before.bad_token ?? 0) + 2);
      await goodKeepsCycling();
    });
  });

  describe('messages', () => {
    it('before register → not_registered', async () => {
      await freshBad(false);
      await expectReject(() => bad.sendSlice({ ...T, rank: R, sliceId: 1, step: 1 }), 'not_registered', 'slice');
    });

    it('a spoofed device id in register → spoofed_device', async () => {
      await freshBad(false);
      const goodPlan = coord.status().devices.find((d) => d.id === 'good')!;
      const p = bad.next('reject');
      bad.socket.emit(
        'register',
        encodeMessage({ deviceId: 'good', model: { name: 'x', architecture: 'x', task: 'x', modality: 'x' }, slots: [{ name: 'dense', shape: [T.m, T.n] }], rank: R, step: 0 }),
      );
      const r = await p;
      expect(r.code).toBe('spoofed_device');
      // No plan for the spoofer; nothing changed for "good": same registration, still cycling.
      expect(bad.plan).toBeUndefined();
      expect(coord.status().devices.find((d) => d.id === 'good')!.slots).toEqual(goodPlan.slots);
      await goodKeepsCycling();
      expect(good.rejects).toEqual([]);
    });

    it('a fresh connection registers and gets its plan', async () => {
      await freshBad(false);
      const plan = await bad.register([{ name: 'dense', shape: [T.m, T.n] }]);
      expect(plan.pairs.map((p) => p.pairId)).toEqual(['bad']);
    });

    it('malformed bytes → malformed', async () => {
      await freshBad();
      await expectReject(() => bad.sendRaw('slice', Buffer.from([0xc1, 0x00, 0x01])), 'malformed', 'slice');
      await expectReject(() => bad.sendRaw('feedback', 'not binary'), 'malformed', 'feedback');
      // A valid value followed by trailing garbage is not one MessagePack value.
      await expectReject(() => bad.sendRaw('metrics', Buffer.concat([encodeMessage({ step: 1, loss: 1 }), Buffer.from([0x01])])), 'malformed', 'metrics');
    });

    it('schema violations → invalid_message naming the field', async () => {
      await freshBad();
      const p = bad.next('reject');
      bad.socket.emit('slice', encodeMessage({ slot: 'dense', sliceId: 1, step: 1, rank: R, A: wire(new Float32Array(T.m * R), [T.m, R]) }));
      const r = await p;
      expect(r.code).toBe('invalid_message');
      expect(r.reason).toMatch(/\bB\b/);
    });

    it('unknown slot → unknown_slot; rank out of bounds → rank_out_of_bounds', async () => {
      await freshBad();
      await expectReject(() => bad.sendSlice({ ...T, slot: 'nope', rank: R, sliceId: 2, step: 2 }), 'unknown_slot', 'slice');
      await expectReject(() => bad.sendSlice({ ...T, rank: 7, sliceId: 2, step: 2 }), 'rank_out_of_bounds', 'slice'); // > min(20, 6)
      await expectReject(() => bad.sendSlice({ ...T, rank: 2, sliceId: 2, step: 2 }), 'rank_out_of_bounds', 'slice'); // < pair rank 4
    });

    it('wrong shape → shape_mismatch', async () => {
      await freshBad();
      await expectReject(
        () => bad.sendSlice({ ...T, rank: R, sliceId: 3, step: 3, A: wire(pseudoRandom((T.m + 1) * R, 1), [T.m + 1, R]) }),
        'shape_mismatch',
        'slice',
      );
      await expectReject(() => bad.sendSlice({ ...T, rank: R, sliceId: 3, step: 3, B: wire(pseudoRandom(R * T.n, 1), [T.n, R]) }), 'shape_mismatch', 'slice');
    });

    it('bad tensor encoding → bad_tensor', async () => {
      await freshBad();
      const A = { dtype: 'float32', shape: [T.m, R], data: new Uint8Array(3) };
      await expectReject(() => bad.sendSlice({ ...T, rank: R, sliceId: 4, step: 4, A: A as never }), 'bad_tensor', 'slice');
    });

    it('NaN → non_finite; Inf → non_finite; nothing starts', async () => {
      await freshBad();
      const before = badPair().cyclesStarted;
      const nan = pseudoRandom(T.m * R, 3);
      nan[7] = NaN;
      await expectReject(() => bad.sendSlice({ ...T, rank: R, sliceId: 5, step: 5, A: wire(nan, [T.m, R]) }), 'non_finite', 'slice');
      expect(bad.rejects.at(-1)!.reason).toMatch(/NaN/);
      const inf = pseudoRandom(R * T.n, 3);
      inf[0] = -Infinity;
      await expectReject(() => bad.sendSlice({ ...T, rank: R, sliceId: 5, step: 5, B: wire(inf, [R, T.n]) }), 'non_finite', 'slice');
      expect(bad.rejects.at(-1)!.reason).toMatch(/Infinity/);
      expect(badPair().cyclesStarted).toBe(before);
      await goodKeepsCycling();
    });

    it('oversize → oversize (below the transport limit the connection survives)', async () => {
      await freshBad();
      const big = new Float32Array(Math.floor((2 * MAX_BYTES) / 4)); // 2× our limit, < TRANSPORT_LIMIT_FACTOR×
      expect(2 * MAX_BYTES).toBeLessThan(TRANSPORT_LIMIT_FACTOR * MAX_BYTES);
      const payload = encodeMessage({ slot: 'dense', sliceId: 6, step: 6, rank: R, A: wire(big, [big.length / R, R]), B: wire(new Float32Array(R * T.n), [R, T.n]) }, { maxBytes: 1 << 30 });
      await expectReject(() => bad.sendRaw('slice', payload), 'oversize', 'slice');
      await goodKeepsCycling();
    });

    it('a feedback with NaN or a wrong shape is refused and leaves the cycle open; then the real one applies', async () => {
      await freshBad();
      const t = await badTransfer();
      const stepBefore = badPair().adapterStep;
      const gA = pseudoRandom(T.m * R, 9, 0.01);
      gA[3] = NaN;
      await expectReject(() => bad.sendFeedback(t, { gA: wire(gA, [T.m, R]) }), 'non_finite', 'feedback');
      await expectReject(() => bad.sendFeedback(t, { gB: wire(new Float32Array(R * (T.n + 1)), [R, T.n + 1]) }), 'shape_mismatch', 'feedback');
      expect(bad.rejects.at(-1)!.ref).toMatchObject({ pairId: 'bad', cycleId: t.cycleId });
      await expectReject(() => bad.sendFeedback({ ...t, pairId: 'good' }), 'unknown_pair', 'feedback');
      expect(badPair().adapterStep).toBe(stepBefore);
      const up = waitForEvent(coord, 'update', (u) => u.pairId === 'bad');
      bad.sendFeedback(t);
      expect((await up).step).toBe(stepBefore + 1);
    });

    it('a replayed cycle id → stale_cycle, and no second update', async () => {
      await freshBad();
      const { transfer: done } = await completeCycle(coord, bad, { ...T, rank: R, sliceId: badSliceId, step: badSliceId++ * 10 });
      const step = badPair().adapterStep;
      const stale = badPair().drops.stale_cycle ?? 0;
      await expectReject(() => bad.sendFeedback(done), 'stale_cycle', 'feedback');
      expect(bad.rejects.at(-1)!.reason).toMatch(/already applied/);
      await expectReject(() => bad.sendFeedback({ ...done, cycleId: done.cycleId + 1000 }), 'stale_cycle', 'feedback');
      expect(bad.rejects.at(-1)!.reason).toMatch(/never started/);
      await goodKeepsCycling();
      expect(badPair().adapterStep).toBe(step);
      expect(badPair().drops.stale_cycle).toBe(stale + 2);
    });

    it('a reconnect replaces the session: the old cycle is dropped as session_replaced', async () => {
      await freshBad();
      const t = await badTransfer();
      const step = badPair().adapterStep;
      const dropped = waitForEvent(coord, 'drop', (d) => d.code === 'session_replaced' && d.pairId === 'bad' && d.cycleId === t.cycleId);
      const old = bad;
      await freshBad(false); // waits until the old connection is closed
      await dropped;
      expect(old.connected).toBe(false);
      await bad.register([{ name: 'dense', shape: [T.m, T.n] }]);
      await expectReject(() => bad.sendFeedback(t), 'session_replaced', 'feedback');
      expect(badPair().adapterStep).toBe(step);
      // and the pair resumes on the new session
      const { update } = await completeCycle(coord, bad, { ...T, rank: R, sliceId: badSliceId, step: badSliceId++ * 10 });
      expect(update.step).toBe(step + 1);
    });

    it('an update that fails inside the adapter → internal; the adapter is unchanged and the server lives', async () => {
      await freshBad();
      const t = await badTransfer();
      const before = coord.exportAdapterState('bad')!;
      // Finite values whose pull-back overflows float32: AdamW refuses a non-finite gradient norm.
      const huge = new Float32Array(T.m * R).fill(3e38);
      await expectReject(() => bad.sendFeedback(t, { gA: wire(huge, [T.m, R]) }), 'internal', 'feedback');
      expect(Buffer.from(coord.exportAdapterState('bad')!).equals(Buffer.from(before))).toBe(true);
      // The cycle ended; the pair goes on with the next slice.
      await expectReject(() => bad.sendFeedback(t), 'stale_cycle', 'feedback');
      const { update } = await completeCycle(coord, bad, { ...T, rank: R, sliceId: badSliceId, step: badSliceId++ * 10 });
      expect(update.step).toBe(badPair().adapterStep);
    });

    it('the healthy device never saw a reject and kept cycling throughout', async () => {
      await goodKeepsCycling();
      expect(good.rejects).toEqual([]);
      const g = coord.status().pairs.find((p) => p.id === 'good')!;
      expect(g.updates).toBe(g.adapterStep);
      expect(Object.keys(g.drops)).toEqual([]);
    });
  });
});

describe('coordinator refusals: deadlines, on a controlled clock', () => {
  let coord: RunningCoordinator;
  let src: FakeDevice;
  let tgt: FakeDevice;
  const clock = { now: 1_000_000 };

  beforeAll(async () => {
    await initBackend();
    coord = await serve(
      parseCoordinatorConfig({
        devices: [
          { id: 'src', token: 'src-secret' },
          { id: 'tgt', token: 'tgt-secret' },
        ],
        defaults: { rank: R, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' } },
        pairs: [{ id: 'p', source: { device: 'src', slot: 'dense' }, target: { device: 'tgt', slot: 'dense' } }],
        timing: { cycleTimeoutMs: TIMEOUT_MS },
        statusEveryMs: 0,
      }),
      { logger: silentLogger(), clock: () => clock.now },
    );
    src = await FakeDevice.connect({ url: coord.url, deviceId: 'src', token: 'src-secret' });
    tgt = await FakeDevice.connect({ url: coord.url, deviceId: 'tgt', token: 'tgt-secret' });
    await src.register([{ name: 'dense', shape: [S.m, S.n] }]);
    await tgt.register([{ name: 'dense', shape: [T.m, T.n] }]);
    src.sendSlice({ ...S, rank: R, sliceId: 0, step: 0 });
    await src.barrier();
  });

  afterAll(async () => {
    src?.close();
    tgt?.close();
    await coord?.close();
  });

  it('feedback after the deadline → cycle_timeout, never applied; the pair goes on', async () => {
    const tp = tgt.next('transfer', (t) => t.sliceId === 11);
    tgt.sendSlice({ ...T, rank: R, sliceId: 11, step: 110 });
    const t = await tp;
    const step = coord.status().pairs[0].adapterStep;
    clock.now += TIMEOUT_MS + 1;
    const dropped = waitForEvent(coord, 'drop', (d) => d.code === 'cycle_timeout' && d.cycleId === t.cycleId);
    const r = tgt.next('reject');
    tgt.sendFeedback(t);
    expect((await r).code).toBe('cycle_timeout');
    expect((await dropped).event).toBe('cycle');
    expect(coord.status().pairs[0].adapterStep).toBe(step);
    // counted twice for the pair: the cycle dropped, and the feedback refused
    expect(coord.status().pairs[0].drops.cycle_timeout).toBe(2);
    const { update } = await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 12, step: 120 });
    expect(update.step).toBe(step + 1);
  });
});
