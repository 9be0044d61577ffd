// The defects an independent client found (issue 10, item 6), each pinned: extension types inside
// a tensor, 64-bit integers, extra tensor keys, unknown events, late feedback, acknowledgement of
// accepted feedback, the protocol version, and the rate limit on a misbehaving device's logs.
// Each test starts its own coordinator, so any one runs alone (`-t`).
import { Writable } from 'node:stream';
import { Packr } from 'msgpackr';
import { pino } from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { LogLimiter } from '../coordinator/log-limiter.js';
import { serve, type RunningCoordinator } from '../coordinator/server.js';
import { CodecError, decodeMessage, encodeMessage, MAX_DEPTH, wireToFloat32 } from '../shared/codec/tensor-codec.js';
import type { Logger } from '../shared/log.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { initBackend } from '../shared/tf/backend.js';
import { completeCycle, FakeDevice, pseudoRandom, waitForEvent, wire } from './helpers/fake-device.js';

const R = 2;
const T = { slot: 'w', m: 6, n: 4 };
const TIMEOUT_MS = 1000;

/** msgpack fixext4 of extension type `type` with 4 payload bytes. */
const fixext4 = (type: number, bytes = [0, 0, 0, 5]) => Buffer.from([0xd6, type, ...bytes]);

/** A valid tensor map, then `field` replaced by raw MessagePack bytes (an extension). */
function tensorWithRawField(field: 'dtype' | 'shape0', raw: Buffer): Buffer {
  // Build {dtype, shape, data} by hand so the raw bytes land exactly where a foreign encoder put them.
  const str = (s: string) => Buffer.concat([Buffer.from([0xa0 | s.length]), Buffer.from(s)]);
  const dtype = field === 'dtype' ? raw : str('float32');
  const shape = Buffer.concat([Buffer.from([0x92]), field === 'shape0' ? raw : Buffer.from([0x01]), Buffer.from([0x01])]);
  const data = Buffer.from([0xc4, 0x04, 0, 0, 0x80, 0x3f]);
  return Buffer.concat([Buffer.from([0x83]), str('dtype'), dtype, str('shape'), shape, str('data'), data]);
}

describe('codec: tensors and integers from foreign encoders', () => {
  it.each([
    ['a bigint extension (0x42) as dtype', 'dtype', fixext4(0x42)],
    ['a timestamp extension (-1) as dtype', 'dtype', fixext4(0xff)],
    ['a bigint extension (0x42) as a shape element', 'shape0', fixext4(0x42)],
    ['a typed-array extension (0x74) as a shape element', 'shape0', fixext4(0x74)],
  ] as const)('%s → bad_tensor with a readable reason', (_name, field, raw) => {
    const decoded = decodeMessage(tensorWithRawField(field, raw));
    let err: unknown;
    try {
      wireToFloat32(decoded, { name: 'slice.A' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CodecError);
    expect((err as CodecError).code).toBe('bad_tensor');
    expect((err as CodecError).message).toMatch(/^slice\.A: (dtype|shape)/);
  });

  it('data as a typed-array extension (0x74) instead of bin → bad_tensor', () => {
    const t = { dtype: 'float32', shape: [1], data: new Uint8Array(new Float32Array([1]).buffer) };
    const bytes = encodeMessage(t); // msgpackr packs a plain Uint8Array as its extension 0x74
    expect(bytes.includes(0x74)).toBe(true);
    expect(() => wireToFloat32(decodeMessage(bytes), { name: 'gA' })).toThrow(/^gA: data must be binary \(bin\)/);
    // the same bytes as a bin are fine
    expect(wireToFloat32(decodeMessage(encodeMessage({ ...t, data: Buffer.from(t.data) }))).values).toEqual(new Float32Array([1]));
  });

  it('the hand-built tensor is valid when no extension is in it (the test above bites)', () => {
    const ok = decodeMessage(tensorWithRawField('shape0', Buffer.from([0x01])));
    expect(wireToFloat32(ok).values).toEqual(new Float32Array([1]));
  });

  it('an extra key in a tensor → bad_tensor naming the key; a missing one too', () => {
    const t = { ...wire(new Float32Array([1, 2]), [2, 1]), scale: 1 };
    const err = (() => {
      try {
        wireToFloat32(decodeMessage(encodeMessage(t)));
      } catch (e) {
        return e as CodecError;
      }
    })();
    expect(err?.code).toBe('bad_tensor');
    expect(err?.message).toMatch(/unexpected key\(s\) "scale"/);
    const { dtype: _d, ...noDtype } = wire(new Float32Array([1]), [1]);
    expect(() => wireToFloat32(noDtype)).toThrow(/missing key\(s\) dtype/);
  });

  it('uint64 and int64 that are safe integers decode to numbers; larger ones stay bigints', () => {
    const packr = new Packr({ useRecords: false });
    const int64 = packr.pack({ step: 5n }); // msgpackr writes a bigint as int64 (0xd3)
    expect(int64.includes(0xd3)).toBe(true);
    const uint64 = Buffer.from(int64);
    uint64[uint64.indexOf(0xd3)] = 0xcf; // the same value as uint64, as Go's encoders write it
    expect(decodeMessage(int64)).toEqual({ step: 5 });
    expect(decodeMessage(uint64)).toEqual({ step: 5 });
    expect(decodeMessage(packr.pack({ v: BigInt(Number.MAX_SAFE_INTEGER) }))).toEqual({ v: Number.MAX_SAFE_INTEGER });
    expect(typeof (decodeMessage(packr.pack({ v: 2n ** 60n })) as { v: unknown }).v).toBe('bigint');
  });

  it(`nesting deeper than ${MAX_DEPTH} levels is malformed`, () => {
    let deep: unknown = 1;
    for (let i = 0; i <= MAX_DEPTH; i++) deep = [deep];
    expect(() => decodeMessage(encodeMessage({ deep }))).toThrow(/nests deeper/);
    let ok: unknown = 1;
    for (let i = 0; i < MAX_DEPTH - 1; i++) ok = [ok];
    expect(() => decodeMessage(encodeMessage({ ok }))).not.toThrow();
  });
});

describe('log limiter', () => {
  it('logs at most N lines per key per window, counts the rest and reports them with the next line', () => {
    let now = 0;
    const lim = new LogLimiter({ perWindow: 3, windowMs: 1000, now: () => now });
    const verdicts = Array.from({ length: 10 }, () => lim.admit('dev'));
    expect(verdicts.filter((v) => v.log)).toHaveLength(3);
    expect(lim.admit('other').log).toBe(true); // keys are independent
    expect(lim.suppressedTotal).toBe(7);
    now = 1000;
    expect(lim.admit('dev')).toEqual({ log: true, suppressed: 7 });
    expect(lim.admit('dev')).toEqual({ log: true, suppressed: 0 });
  });
});

// ---------------------------------------------------------------------------------------------
// Through a real coordinator, with a controlled clock.

interface Fixture {
  coord: RunningCoordinator;
  src: FakeDevice;
  tgt: FakeDevice;
  clock: { now: number };
  lines: Record<string, unknown>[];
}

let fx: Fixture | undefined;

async function start(opts: { logger?: Logger } = {}): Promise<Fixture> {
  const clock = { now: 1_000_000 };
  const lines: Record<string, unknown>[] = [];
  const logger =
    opts.logger ??
    pino(
      { level: 'info' },
      new Writable({
        write(chunk, _enc, cb) {
          for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
          cb();
        },
      }),
    );
  const coord = await serve(
    parseCoordinatorConfig({
      devices: [
        { id: 'src', token: 's' },
        { id: 'tgt', token: 't' },
      ],
      defaults: { rank: R, tCycle: 1, k: 1, gate: { guard: 'none' } },
      pairs: [{ id: 'p', source: { device: 'src', slot: T.slot }, target: { device: 'tgt', slot: T.slot } }],
      timing: { cycleTimeoutMs: TIMEOUT_MS },
      statusEveryMs: 0,
    }),
    { logger, clock: () => clock.now },
  );
  const src = await FakeDevice.connect({ url: coord.url, deviceId: 'src', token: 's' });
  const tgt = await FakeDevice.connect({ url: coord.url, deviceId: 'tgt', token: 't' });
  await src.register([{ name: T.slot, shape: [T.m, T.n] }]);
  await tgt.register([{ name: T.slot, shape: [T.m, T.n] }]);
  src.sendSlice({ ...T, rank: R, sliceId: 0, step: 0 });
  // A barrier: one socket's messages are handled in order, so once this reject is back the
  // source slice is stored (and a target slice will start a cycle).
  const barrier = src.next('reject');
  src.sendFeedback({ pairId: 'none', cycleId: 0, A: { shape: [1, 1] }, B: { shape: [1, 1] } });
  expect((await barrier).code).toBe('unknown_pair');
  fx = { coord, src, tgt, clock, lines };
  return fx;
}

describe('coordinator: protocol hardening', () => {
  beforeAll(async () => {
    await initBackend();
  });
  afterEach(async () => {
    if (!fx) return;
    fx.src.close();
    fx.tgt.close();
    await fx.coord.close();
    fx = undefined;
  });

  it('an extension type in a slice tensor → bad_tensor, never internal; logged once per message at most', async () => {
    const { tgt, lines } = await start();
    // the slice's other fields as a map16 of 5, then A appended raw (re-encoding would lose the extension)
    const rest = encodeMessage({ slot: T.slot, sliceId: 9, step: 9, rank: R, B: wire(pseudoRandom(R * T.n, 2), [R, T.n]) });
    expect([...rest.subarray(0, 3)]).toEqual([0xde, 0, 5]);
    const bytes = Buffer.concat([Buffer.from([0xde, 0, 6]), rest.subarray(3), Buffer.from([0xa1, 0x41]), tensorWithRawField('shape0', fixext4(0x42))]);
    const p = tgt.next('reject');
    tgt.sendRaw('slice', bytes);
    const r = await p;
    expect(r.code).toBe('bad_tensor');
    expect(r.reason).toMatch(/slice\.A: shape/);
    expect(lines.filter((l) => l.level === 50)).toEqual([]);
  });

  it('a slice whose integers are uint64/int64 is accepted and starts a cycle', async () => {
    const { tgt } = await start();
    const packr = new Packr({ useRecords: false, moreTypes: true });
    const A = wire(pseudoRandom(T.m * R, 3), [T.m, R]);
    const B = wire(pseudoRandom(R * T.n, 4), [R, T.n]);
    // every integer as int64 (sliceId, step, rank and the shape elements)
    const bytes = packr.pack({ slot: T.slot, sliceId: 7n, step: 7n, rank: BigInt(R), A: { ...A, shape: A.shape.map(BigInt) }, B: { ...B, shape: B.shape.map(BigInt) } });
    const t = tgt.next('transfer', (x) => x.sliceId === 7);
    tgt.sendRaw('slice', bytes);
    expect((await t).A.shape).toEqual([T.m, R]);
    expect(tgt.rejects).toEqual([]);
  });

  it('an integer beyond 2^53 → invalid_message naming the field', async () => {
    const { tgt } = await start();
    const packr = new Packr({ useRecords: false, moreTypes: true });
    const p = tgt.next('reject');
    tgt.sendRaw('metrics', packr.pack({ step: 2n ** 60n, loss: 1 }));
    const r = await p;
    expect(r.code).toBe('invalid_message');
    expect(r.reason).toMatch(/^metrics: step/);
  });

  it('a tensor with an extra key → bad_tensor', async () => {
    const { tgt } = await start();
    const p = tgt.next('reject');
    tgt.sendSlice({ ...T, rank: R, sliceId: 9, step: 9, A: { ...wire(pseudoRandom(T.m * R, 1), [T.m, R]), order: 'C' } as never });
    const r = await p;
    expect(r.code).toBe('bad_tensor');
    expect(r.reason).toMatch(/unexpected key\(s\) "order"/);
  });

  it('an unknown event → reject unknown_event naming it; the connection stays', async () => {
    const { coord, tgt } = await start();
    const p = tgt.next('reject');
    tgt.sendRaw('hello', encodeMessage({ hi: 1 }));
    const r = await p;
    expect(r).toMatchObject({ code: 'unknown_event', event: 'hello' });
    expect(r.reason).toMatch(/"hello"/);
    expect(tgt.connected).toBe(true);
    expect(coord.status().drops.unknown_event).toBe(1);
    // the pair still cycles
    await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 20, step: 20 });
  });

  it('accepted feedback is acknowledged with the adapter step it produced', async () => {
    const { coord, tgt } = await start();
    const ack = tgt.next('feedback_ack', (a) => a.pairId === 'p');
    const { transfer, update } = await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 30, step: 30 });
    expect(await ack).toEqual({ pairId: 'p', cycleId: transfer.cycleId, adapterStep: update.step, updates: coord.status().pairs[0].updates });
  });

  it('late feedback gets cycle_timeout, never stale_cycle: in flight, ended by a newer slice, and after many more cycles', async () => {
    const { coord, tgt, clock } = await start();
    // in flight, deadline passed
    const tp = tgt.next('transfer', (t) => t.sliceId === 40);
    tgt.sendSlice({ ...T, rank: R, sliceId: 40, step: 40 });
    const late = await tp;
    clock.now += TIMEOUT_MS + 1;
    let rp = tgt.next('reject');
    tgt.sendFeedback(late);
    expect((await rp).code).toBe('cycle_timeout');
    // a second late copy: the cycle is now ended (dropped) → still cycle_timeout
    rp = tgt.next('reject');
    tgt.sendFeedback(late);
    expect((await rp).code).toBe('cycle_timeout');
    // a newer slice drops an expired cycle too
    const tp2 = tgt.next('transfer', (t) => t.sliceId === 41);
    tgt.sendSlice({ ...T, rank: R, sliceId: 41, step: 41 });
    const late2 = await tp2;
    clock.now += TIMEOUT_MS + 1;
    const dropped = waitForEvent(coord, 'drop', (d) => d.code === 'cycle_timeout' && d.cycleId === late2.cycleId);
    const tp3 = tgt.next('transfer', (t) => t.sliceId === 42);
    tgt.sendSlice({ ...T, rank: R, sliceId: 42, step: 42 });
    await dropped;
    tgt.sendFeedback(await tp3);
    // 40 more cycles: more than any bounded memory of recent cycles
    for (let i = 0; i < 40; i++) await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 100 + i, step: 100 + i });
    for (const t of [late, late2]) {
      rp = tgt.next('reject');
      tgt.sendFeedback(t);
      expect((await rp).code).toBe('cycle_timeout');
    }
    // a replay of an applied cycle is stale_cycle, the other code
    const { transfer } = await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 200, step: 200 });
    rp = tgt.next('reject');
    tgt.sendFeedback(transfer);
    expect((await rp).code).toBe('stale_cycle');
  });

  it(`a version-${PROTOCOL_VERSION - 1} device is refused with protocol_version naming both versions`, async () => {
    const { coord } = await start();
    const r = await FakeDevice.refusal({ url: coord.url, deviceId: 'tgt', token: 't', protocolVersion: PROTOCOL_VERSION - 1 });
    expect(r.code).toBe('protocol_version');
    expect(r.reason).toContain(`version ${PROTOCOL_VERSION - 1}`);
    expect(r.reason).toContain(`version ${PROTOCOL_VERSION}`);
    expect(r.reason).toMatch(/upgrade the device/);
  });

  it('a device that keeps sending bad messages is logged at most 20 times a minute; every message is still rejected', async () => {
    const { coord, tgt, lines, clock } = await start();
    const N = 50;
    for (let i = 0; i < N; i++) tgt.sendRaw('slice', Buffer.from([0xc1]));
    for (let i = 0; i < N; i++) await tgt.next('reject');
    const rejected = () => lines.filter((l) => l.msg === 'message rejected' && l.deviceId === 'tgt');
    expect(tgt.rejects.filter((r) => r.code === 'malformed')).toHaveLength(N);
    expect(coord.status().drops.malformed).toBe(N);
    expect(rejected()).toHaveLength(20);
    // a minute later, the next line reports what was suppressed
    clock.now += 60_000;
    const p = tgt.next('reject');
    tgt.sendRaw('slice', Buffer.from([0xc1]));
    await p;
    expect(rejected().at(-1)).toMatchObject({ suppressed: N - 20 });
    expect(rejected()).toHaveLength(21);
  });
});
