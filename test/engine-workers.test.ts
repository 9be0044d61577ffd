// Adapters off the event loop (issue 9), through the engine's seam: the worker pool gives the same
// transfers, acks and adapter state as the main thread, bit for bit; backpressure holds one slice
// per busy pair (the latest wins, superseded ones are answered and counted), sheds cycles when the
// pool is saturated, and counts a feedback deadline from the transfer's send; drain() lets every
// accepted update land before the last checkpoint.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StepResult } from '../coordinator/adapter/adamw.js';
import type { AdapterConfig } from '../coordinator/adapter/config.js';
import type { Factors } from '../coordinator/adapter/lpka.js';
import type { AdapterHost } from '../coordinator/adapter-host.js';
import { deserializeAdapterState } from '../coordinator/adapter/state.js';
import { AdapterPool } from '../coordinator/adapter-pool.js';
import { Checkpointer, MANIFEST_NAME } from '../coordinator/checkpoint.js';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { CoordinatorEngine, type EngineOptions, type Outbox, type Sender } from '../coordinator/engine.js';
import { CoordinatorMetrics } from '../coordinator/metrics.js';
import { installSignalHandlers, serve } from '../coordinator/server.js';
import { wireToFloat32 } from '../shared/codec/tensor-codec.js';
import { silentLogger } from '../shared/log.js';
import { ProtocolError } from '../shared/protocol/errors.js';
import type { FeedbackMsg, SkipMsg, TransferMsg } from '../shared/protocol/messages.js';
import { initBackend } from '../shared/tf/backend.js';
import { FakeDevice, pseudoRandom, wire } from './helpers/fake-device.js';
import { parsePrometheusText, sampleValue } from './helpers/prom-text.js';
import { waitUntil } from './helpers/wait-until.js';

const R = 8;
const SRC: [number, number] = [128, 10];
const TGT: [number, number] = [64, 10];
const TIMEOUT_MS = 1000;

interface Sent {
  connectionId: string;
  event: string;
  msg: Record<string, unknown>;
}

/** An engine with `targets` target devices t0…, each paired with the one source, on small slots. */
function setup(targets: number, opts: { workers?: number; maxQueuedPerWorker?: number; host?: AdapterHost; checkpointDir?: string; pace?: boolean } = {}) {
  const clock = { now: 10_000 };
  const sent: Sent[] = [];
  const outbox: Outbox = {
    send: (connectionId, event, msg) => {
      sent.push({ connectionId, event, msg: msg as unknown as Record<string, unknown> });
      return true;
    },
    disconnect: () => undefined,
  };
  const ids = Array.from({ length: targets }, (_, i) => `t${i}`);
  const engineOpts: EngineOptions = opts.host ? { adapterHost: opts.host } : {};
  // the engine's coordinator events, as the server would emit them
  const events: { event: string; payload: unknown }[] = [];
  const engine = new CoordinatorEngine(
    parseCoordinatorConfig({
      devices: [{ id: 'src', token: 's' }, ...ids.map((id) => ({ id, token: id }))],
      // LPKA pairs (no pass-through) without a guard: the adapter runs every cycle.
      defaults: { rank: R, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' }, adapter: { lr: 0.01 } },
      pairs: ids.map((id) => ({ id: `p-${id}`, source: { device: 'src', slot: 'w' }, target: { device: id, slot: 'w' } })),
      timing: { cycleTimeoutMs: TIMEOUT_MS },
      throughput: { adapterWorkers: opts.workers ?? 0, maxQueuedPerWorker: opts.maxQueuedPerWorker ?? 8, pace: { enabled: opts.pace ?? true } },
      checkpoint: opts.checkpointDir ? { dir: opts.checkpointDir, everyUpdates: 1000 } : {},
      statusEveryMs: 0,
    }),
    silentLogger(),
    outbox,
    (event, ...args) => void events.push({ event, payload: args[0] }),
    () => clock.now,
    engineOpts,
  );
  let conn = 0;
  const join = (deviceId: string, shape: [number, number]) => {
    const connectionId = `c${++conn}`;
    const session = engine.connect(deviceId, connectionId, clock.now);
    const from = (): Sender => ({ deviceId, session, connectionId, now: clock.now });
    engine.register(from(), { deviceId, model: { name: 'm', architecture: 'a', task: 't', modality: 'x' }, slots: [{ name: 'w', shape }], rank: R, step: 0 });
    return from;
  };
  const src = join('src', SRC);
  const tgts = ids.map((id) => join(id, TGT));
  let step = 0;
  const slice = (from: () => Sender, shape: [number, number], sliceId: number): void => {
    engine.slice(from(), {
      slot: 'w', sliceId, step: ++step, rank: R,
      A: wire(pseudoRandom(shape[0] * R, sliceId * 3 + 1), [shape[0], R]),
      B: wire(pseudoRandom(R * shape[1], sliceId * 3 + 2), [R, shape[1]]),
    });
  };
  const of = <T>(event: string) => sent.filter((s) => s.event === event).map((s) => s.msg as unknown as T);
  const feedback = (t: TransferMsg, seed: number): FeedbackMsg => ({
    pairId: t.pairId, cycleId: t.cycleId, steps: 1, scale: 1, gateGrad: 0.01,
    gA: wire(pseudoRandom(TGT[0] * R, seed, 0.01), [TGT[0], R]),
    gB: wire(pseudoRandom(R * TGT[1], seed + 1, 0.01), [R, TGT[1]]),
    metrics: { step: 1, loss: 1 },
  });
  const refusal = (fn: () => void): string | undefined => {
    try {
      fn();
      return undefined;
    } catch (err) {
      if (err instanceof ProtocolError) return err.code;
      throw err;
    }
  };
  const close = async () => {
    engine.dispose();
    await engine.closeAdapterHost();
  };
  return { engine, clock, sent, events, src, tgts, join, slice, of, feedback, refusal, close };
}

const bits = (w: unknown, shape: number[]) => Array.from(new Uint32Array(wireToFloat32(w, { shape }).values.buffer));

/** Lets settled promises' callbacks run (replies of the fake host below). */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * A host whose every forward and update waits until the test releases it. Its "adapter" returns
 * the target factors unchanged and counts steps: the engine's bookkeeping is what is under test.
 */
class HeldHost implements AdapterHost {
  readonly size = 1;
  readonly forwards: { pairId: string; release(): void }[] = [];
  readonly updates: { pairId: string; release(): void }[] = [];
  private readonly steps = new Map<string, number>();
  create(pairId: string, _config: AdapterConfig): Promise<unknown> {
    this.steps.set(pairId, 0);
    return Promise.resolve(0);
  }
  forward(pairId: string, target: Factors): Promise<Factors> {
    return new Promise((resolve) => this.forwards.push({ pairId, release: () => resolve({ ...target, A: target.A.slice(), B: target.B.slice() }) }));
  }
  update(pairId: string): Promise<StepResult> {
    return new Promise((resolve) =>
      this.updates.push({
        pairId,
        release: () => {
          const step = this.steps.get(pairId)! + 1;
          this.steps.set(pairId, step);
          resolve({ gradNorm: 1, clipped: false, step });
        },
      }),
    );
  }
  exportState(pairId: string): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array([this.steps.get(pairId) ?? 0]));
  }
  restore(): Promise<unknown> {
    return Promise.resolve(0);
  }
  drop(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

describe('engine with adapters in worker threads', () => {
  const dirs: string[] = [];
  beforeAll(async () => {
    await initBackend();
  });
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('gives the same transfers, acks and adapter state as the main thread, bit for bit', async () => {
    const main = setup(3);
    const pool = setup(3, { workers: 2 });
    let sliceId = 0;
    for (let cycle = 0; cycle < 3; cycle++) {
      const sid = sliceId++;
      for (const e of [main, pool]) e.slice(e.src, SRC, sid);
      const tids = main.tgts.map(() => sliceId++);
      for (const e of [main, pool]) e.tgts.forEach((t, i) => e.slice(t, TGT, tids[i]));
      const want = 3 * (cycle + 1);
      await waitUntil(() => pool.of('transfer').length === want, 20_000, 'the pool engine\'s transfers');
      const mt = main.of<TransferMsg>('transfer').slice(-3);
      const pt = pool.of<TransferMsg>('transfer').slice(-3).sort((a, b) => a.pairId.localeCompare(b.pairId));
      expect(mt.length).toBe(3);
      mt.forEach((t, i) => {
        const p = pt[i];
        expect({ ...p, A: undefined, B: undefined }).toEqual({ ...t, A: undefined, B: undefined });
        expect(bits(p.A, [TGT[0], R])).toEqual(bits(t.A, [TGT[0], R]));
        expect(bits(p.B, [R, TGT[1]])).toEqual(bits(t.B, [R, TGT[1]]));
      });
      for (const e of [main, pool]) {
        const ts = e.of<TransferMsg>('transfer').slice(-3);
        for (const t of ts) {
          const i = Number(t.pairId.slice(3));
          expect(e.refusal(() => e.engine.feedback(e.tgts[i](), e.feedback(t, 100 * cycle + i)))).toBeUndefined();
        }
      }
      await waitUntil(() => pool.of('feedback_ack').length === want, 20_000, 'the pool engine\'s acks');
      const sortAcks = (a: { pairId: string }[]) => [...a].sort((x, y) => x.pairId.localeCompare(y.pairId));
      expect(sortAcks(pool.of<{ pairId: string }>('feedback_ack').slice(-3))).toEqual(sortAcks(main.of<{ pairId: string }>('feedback_ack').slice(-3)));
    }
    for (const id of main.engine.pairIds()) {
      const a = (await main.engine.adapterState(id))!;
      const b = (await pool.engine.adapterState(id))!;
      expect(Buffer.from(b).equals(Buffer.from(a))).toBe(true);
      expect(pool.engine.status('').pairs.find((p) => p.id === id)!.adapterStep).toBe(3);
    }
    expect(pool.engine.status('').totals.adapterWorkers).toBe(2);
    expect(() => pool.engine.exportAdapterState('p-t0')).toThrow(/lives in a worker/);
    await main.close();
    await pool.close();
  });

  it('holds one slice per busy pair (the latest wins), sheds cycles when saturated, and counts the deadline from the send', async () => {
    const host = new HeldHost();
    const e = setup(2, { host, maxQueuedPerWorker: 1 });
    const [t0, t1] = e.tgts;
    e.slice(e.src, SRC, 0);
    e.slice(t0, TGT, 1);
    expect(host.forwards.map((f) => f.pairId)).toEqual(['p-t0']);
    expect(e.of('transfer')).toEqual([]);
    // busy: the next slice is held, and a later one supersedes it (answered, counted)
    e.slice(t0, TGT, 2);
    expect(e.of('skip')).toEqual([]);
    e.slice(t0, TGT, 3);
    expect(e.of<SkipMsg>('skip')).toEqual([{ pairId: 'p-t0', sliceId: 2, reason: 'superseded' }]);
    // the pool is saturated (1 request per worker): another pair's cycle is skipped, not queued
    e.slice(t1, TGT, 4);
    expect(e.of<SkipMsg>('skip')[1]).toEqual({ pairId: 'p-t1', sliceId: 4, reason: 'overloaded' });
    expect(host.forwards.length).toBe(1);
    let st = e.engine.status('');
    expect(st.drops.superseded).toBe(1);
    expect(st.pairs.find((p) => p.id === 'p-t0')!.drops.superseded).toBe(1);
    expect(st.pairs.find((p) => p.id === 'p-t1')!.skips.overloaded).toBe(1);
    expect(st.totals).toMatchObject({ queueDepth: 1, pendingSlices: 1, adapterWorkers: 1 });
    const metrics = new CoordinatorMetrics();
    const prom = parsePrometheusText(await metrics.render(st, 0));
    metrics.close();
    expect(sampleValue(prom, 'mergenet_drops_total', { reason: 'superseded' })).toBe(1);
    expect(sampleValue(prom, 'mergenet_cycles_skipped_total', { reason: 'overloaded' })).toBe(1);
    expect(sampleValue(prom, 'mergenet_queue_depth', { queue: 'adapter' })).toBe(1);

    // The worker answers 5 s after the slice came: the feedback deadline counts from the send.
    e.clock.now += 5000;
    host.forwards[0].release();
    await flush();
    const [t] = e.of<TransferMsg>('transfer');
    expect(t).toMatchObject({ pairId: 'p-t0', cycleId: 0, sliceId: 1 });
    expect(e.engine.status('').pairs.find((p) => p.id === 'p-t0')!.inFlight).toEqual({ cycleId: 0, ageMs: 0, msToDeadline: TIMEOUT_MS });
    e.clock.now += TIMEOUT_MS; // at the deadline, counted from the send: still accepted
    expect(e.refusal(() => e.engine.feedback(t0(), e.feedback(t, 1)))).toBeUndefined();
    // while its update runs, the cycle can be neither replayed nor timed out
    expect(e.refusal(() => e.engine.feedback(t0(), e.feedback(t, 1)))).toBe('stale_cycle');
    e.clock.now += 10 * TIMEOUT_MS;
    e.engine.sweep();
    expect(e.engine.status('').drops.cycle_timeout).toBeUndefined();
    expect(host.forwards.length).toBe(1);

    // the update lands: acked, and the held slice (3, the latest) starts the next cycle
    host.updates[0].release();
    await flush();
    expect(e.of('feedback_ack')).toEqual([{ pairId: 'p-t0', cycleId: 0, adapterStep: 1, updates: 1 }]);
    expect(host.forwards.length).toBe(2);
    host.forwards[1].release();
    await flush();
    expect(e.of<TransferMsg>('transfer').map((x) => x.sliceId)).toEqual([1, 3]);
    st = e.engine.status('');
    expect(st.totals).toMatchObject({ queueDepth: 0, pendingSlices: 0 });
    await e.engine.drain();
    await e.close();
  });

  it('asks every connected device for a slice pace once cycles are shed, and tells a device that registers later', async () => {
    const host = new HeldHost();
    const e = setup(12, { host, maxQueuedPerWorker: 1 });
    e.slice(e.src, SRC, 0);
    // one forward takes the only place in the queue; the other eleven target slices are shed
    e.tgts.forEach((t, i) => e.slice(t, TGT, i + 1));
    expect(e.of<SkipMsg>('skip').filter((k) => k.reason === 'overloaded').length).toBe(11);
    e.clock.now += 2000;
    const tick = e.engine.paceTick(0.9)!;
    // 1 cycle started in 2 s (0.5/s) for 12 pairs: offered at 85 % of that would be 12/(0.85·0.5) s
    // = 28 s, but a first pace is at most 8× the interval they offered at (2 s): 16 s
    expect(tick).toMatchObject({ why: 'saturated', capacity: 0.5, announce: 16_000 });
    // the coordinator's `pace` event says why, with the window's measures (this host measures no busy time)
    expect(e.events.filter((x) => x.event === 'pace').map((x) => x.payload)).toEqual([{ sliceIntervalMs: 16_000, shedFraction: 11 / 12, capacity: 0.5, why: 'saturated', busy: undefined, loop: 0.9 }]);
    const paces = e.sent.filter((m) => m.event === 'pace');
    expect(paces.map((m) => m.connectionId).sort()).toEqual(Array.from({ length: 13 }, (_, i) => `c${i + 1}`).sort());
    expect(new Set(paces.map((m) => m.msg.sliceIntervalMs))).toEqual(new Set([16_000]));
    const st = e.engine.status('');
    expect(st.totals.sliceIntervalMs).toBe(16_000);
    const metrics = new CoordinatorMetrics();
    const prom = parsePrometheusText(await metrics.render(st, 0));
    metrics.close();
    expect(sampleValue(prom, 'mergenet_slice_pace_interval_seconds', {})).toBeCloseTo(16, 6);
    // the same decision again is not announced again
    e.clock.now += 2000;
    expect(e.engine.paceTick()!.announce).toBeUndefined();
    // a device that (re)connects gets its plan, then the pace in force
    const before = e.sent.length;
    e.join('t3', TGT);
    expect(e.sent.slice(before).filter((m) => m.connectionId === 'c14').map((m) => m.event)).toEqual(['plan', 'pace']);
    host.forwards[0].release();
    await flush();
    await e.engine.drain();
    await e.close();
  });

  it('no pace where it is turned off, or where adapters run on the event loop', async () => {
    const host = new HeldHost();
    const off = setup(12, { host, maxQueuedPerWorker: 1, pace: false });
    off.slice(off.src, SRC, 0);
    off.tgts.forEach((t, i) => off.slice(t, TGT, i + 1));
    off.clock.now += 2000;
    expect(off.engine.paceTick()).toBeUndefined();
    expect(off.of('pace')).toEqual([]);
    expect(off.engine.status('').totals.sliceIntervalMs).toBeUndefined();
    host.forwards[0].release();
    await flush();
    await off.engine.drain();
    await off.close();
    const main = setup(2);
    main.slice(main.src, SRC, 0);
    main.clock.now += 2000;
    expect(main.engine.paceTick()).toBeUndefined();
    await main.close();
  });

  it('a failed update in a worker ends the cycle as internal and frees the pair', async () => {
    const host = new HeldHost();
    host.update = () => Promise.reject(new Error('non-finite gradient norm'));
    const e = setup(1, { host });
    e.slice(e.src, SRC, 0);
    e.slice(e.tgts[0], TGT, 1);
    host.forwards[0].release();
    await flush();
    const [t] = e.of<TransferMsg>('transfer');
    expect(e.refusal(() => e.engine.feedback(e.tgts[0](), e.feedback(t, 1)))).toBeUndefined();
    await flush();
    const st = e.engine.status('');
    expect(st.drops.internal).toBe(1);
    expect(st.pairs[0]).toMatchObject({ updates: 0, adapterStep: 0, inFlight: undefined });
    expect(e.refusal(() => e.engine.feedback(e.tgts[0](), e.feedback(t, 1)))).toBe('stale_cycle');
    e.slice(e.tgts[0], TGT, 2);
    expect(host.forwards.length).toBe(2);
    await e.close();
  });

  it('drain(): updates still running in the workers land in the next checkpoint', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mergenet-workers-'));
    dirs.push(dir);
    const e = setup(4, { workers: 2, checkpointDir: dir });
    await e.engine.restore();
    e.slice(e.src, SRC, 0);
    e.tgts.forEach((t, i) => e.slice(t, TGT, 1 + i));
    await waitUntil(() => e.of('transfer').length === 4, 20_000, 'transfers');
    for (const t of e.of<TransferMsg>('transfer')) {
      const i = Number(t.pairId.slice(3));
      expect(e.refusal(() => e.engine.feedback(e.tgts[i](), e.feedback(t, i)))).toBeUndefined();
    }
    // Nothing has yielded to the event loop since: all four updates are still with the workers.
    expect(e.engine.status('').totals.queueDepth).toBe(4);
    expect(e.of('feedback_ack')).toEqual([]);
    const drained = e.engine.drain();
    // a slice during the shutdown starts nothing
    e.slice(e.tgts[0], TGT, 9);
    await drained;
    expect(e.of('feedback_ack').length).toBe(4);
    await e.engine.checkpoint();
    const loaded = (await new Checkpointer(dir).load())!;
    expect(loaded.totals.updates).toBe(4);
    for (const p of loaded.pairs) {
      expect(p).toMatchObject({ adapterStep: 1, counters: { updates: 1 } });
      expect(Buffer.from(p.state!).equals(Buffer.from((await e.engine.adapterState(p.id))!))).toBe(true);
    }
    expect(e.of('transfer').length).toBe(4);
    await e.close();
  });

  it('a checkpoint rewrites only the adapters that stepped since the previous one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mergenet-incremental-'));
    dirs.push(dir);
    const e = setup(3, { workers: 2, checkpointDir: dir });
    await e.engine.restore();
    const manifest = async () => JSON.parse(await readFile(join(dir, MANIFEST_NAME), 'utf8')) as { pairs: { id: string; adapterStep: number; state?: { file: string } }[] };
    const cycle = async (targets: number[], sliceIds: number[]) => {
      const before = e.of('feedback_ack').length;
      const sent = e.of('transfer').length;
      targets.forEach((i, k) => e.slice(e.tgts[i], TGT, sliceIds[k]));
      await waitUntil(() => e.of('transfer').length === sent + targets.length, 20_000, 'transfers');
      for (const t of e.of<TransferMsg>('transfer').slice(sent)) {
        const i = Number(t.pairId.slice(3));
        e.engine.feedback(e.tgts[i](), e.feedback(t, i));
      }
      await waitUntil(() => e.of('feedback_ack').length === before + targets.length, 20_000, 'acks');
    };
    e.slice(e.src, SRC, 0);
    await cycle([0, 1, 2], [1, 2, 3]);
    await e.engine.checkpoint();
    const first = await manifest();
    await cycle([1], [4]);
    await e.engine.checkpoint();
    const second = await manifest();
    const file = (m: typeof first, id: string) => m.pairs.find((p) => p.id === id)!.state!.file;
    expect(file(second, 'p-t0')).toBe(file(first, 'p-t0'));
    expect(file(second, 'p-t2')).toBe(file(first, 'p-t2'));
    expect(file(second, 'p-t1')).not.toBe(file(first, 'p-t1'));
    // the reused files are still there, and the whole checkpoint loads bit for bit
    const loaded = (await new Checkpointer(dir).load())!;
    expect(loaded.pairs.map((p) => [p.id, p.adapterStep])).toEqual([['p-t0', 1], ['p-t1', 2], ['p-t2', 1]]);
    for (const p of loaded.pairs) expect(Buffer.from(p.state!).equals(Buffer.from((await e.engine.adapterState(p.id))!))).toBe(true);
    await e.close();
  });
});

describe('throughput config', () => {
  it('defaults to adapters on the event loop; auto is one worker per core; errors name the field', () => {
    const base = { devices: [{ id: 'a', token: 'x' }] };
    expect(parseCoordinatorConfig(base).throughput).toEqual({ adapterWorkers: 0, maxQueuedPerWorker: 16, pace: { enabled: true, windowMs: 2000 } });
    expect(parseCoordinatorConfig({ ...base, throughput: { adapterWorkers: 'auto' } }).throughput.adapterWorkers).toBe(availableParallelism());
    expect(() => parseCoordinatorConfig({ ...base, throughput: { adapterWorkers: -1 } })).toThrow(/throughput\.adapterWorkers/);
    expect(() => parseCoordinatorConfig({ ...base, throughput: { maxQueuedPerWorker: 0 } })).toThrow(/throughput\.maxQueuedPerWorker/);
  });
});

describe('SIGTERM while adapter workers are busy', () => {
  let dir: string;
  beforeAll(async () => {
    await initBackend();
    dir = await mkdtemp(join(tmpdir(), 'mergenet-sigterm-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('the coordinator waits for the updates it accepted, checkpoints them, and exits 0', async () => {
    // A real pool whose updates wait for the test to let them through: the signal comes while all
    // three are out, and they reach the workers only after the shutdown has begun.
    const pool = new AdapterPool(2);
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let updatesOut = 0;
    const host: AdapterHost = {
      size: pool.size,
      create: (id, cfg) => pool.create(id, cfg),
      forward: (id, t, s) => pool.forward(id, t, s),
      update: (id, gA, gB) => {
        updatesOut++;
        return gate.then(() => pool.update(id, gA, gB));
      },
      exportState: (id) => pool.exportState(id),
      restore: (id, b) => pool.restore(id, b),
      drop: (id) => pool.drop(id),
      close: () => pool.close(),
    };
    const ids = ['t0', 't1', 't2'];
    const config = parseCoordinatorConfig({
      devices: [{ id: 'src', token: 'src-secret' }, ...ids.map((id) => ({ id, token: `${id}-secret` }))],
      defaults: { rank: R, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' } },
      pairs: ids.map((id) => ({ id: `p-${id}`, source: { device: 'src', slot: 'w' }, target: { device: id, slot: 'w' } })),
      checkpoint: { dir, everyUpdates: 1000 },
      statusEveryMs: 0,
    });
    const coord = await serve(config, { logger: silentLogger(), adapterHost: host });
    const src = await FakeDevice.connect({ url: coord.url, deviceId: 'src', token: 'src-secret' });
    await src.register([{ name: 'w', shape: SRC }]);
    const tgts = await Promise.all(ids.map((id) => FakeDevice.connect({ url: coord.url, deviceId: id, token: `${id}-secret` })));
    for (const t of tgts) await t.register([{ name: 'w', shape: TGT }]);
    src.sendSlice({ slot: 'w', sliceId: 0, step: 0, rank: R, m: SRC[0], n: SRC[1] });
    await src.barrier();
    const transfers = await Promise.all(
      tgts.map((t, i) => {
        const p = t.next('transfer');
        t.sendSlice({ slot: 'w', sliceId: 1 + i, step: 1, rank: R, m: TGT[0], n: TGT[1] });
        return p;
      }),
    );
    tgts.forEach((t, i) => t.sendFeedback(transfers[i]));
    await waitUntil(() => updatesOut === 3, 10_000, 'three updates handed to the workers');
    expect(coord.status().totals.queueDepth).toBe(3);
    const exited = new Promise<number>((resolve) => {
      const uninstall = installSignalHandlers(coord, silentLogger(), (code) => {
        uninstall();
        resolve(code);
      });
    });
    process.emit('SIGTERM', 'SIGTERM');
    open();
    expect(await exited).toBe(0);
    for (const d of [src, ...tgts]) d.close();
    const loaded = (await new Checkpointer(dir).load())!;
    expect(loaded.totals.updates).toBe(3);
    expect(loaded.pairs.map((p) => [p.id, p.adapterStep, p.counters.updates])).toEqual(ids.map((id) => [`p-${id}`, 1, 1]));
    for (const p of loaded.pairs) expect(deserializeAdapterState(p.state!).opt.stepCount).toBe(1);
  });
});
