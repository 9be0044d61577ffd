// The device client against a small scripted socket.io coordinator on loopback: handshake,
// registration, slices of W (not W_eff), transfers on a slot shared by two pairs with overlapping
// windows, feedback, dropped connections and sessions, refusal, and tensor hygiene.
import * as tf from '@tensorflow/tfjs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, type Socket as ServerSocket } from 'socket.io';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient, DeviceRefusedError } from '../client/device.js';
import type { DeviceData, Split } from '../client/data/dataset.js';
import { decodeMessage, encodeMessage, tensorToWire, wireToFloat32 } from '../shared/codec/tensor-codec.js';
import {
  feedbackSchema,
  handshakeSchema,
  metricsSchema,
  registerSchema,
  sliceSchema,
  type FeedbackMsg,
  type PlanPair,
  type RegisterMsg,
} from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { initBackend } from '../shared/tf/backend.js';
import { PausableProxy } from './helpers/pausable-proxy.js';

beforeAll(async () => {
  await initBackend();
  // tfjs allocates a few process-wide tensors (cached scalars) on a model's first training step;
  // do that once here so the hygiene checks below measure only the device.
  await new DeviceClient({
    url: 'http://127.0.0.1:9', deviceId: 'warm', token: 't', model: mlp(0), data: data(0), rank: 2,
    trainer: { optimizer: 'sgd', lr: 0.01, batchSize: 8 }, seed: 0, maxSteps: 3, evalEvery: 1,
    description: { name: 'w', architecture: 'w', task: 'w', modality: 'w' },
  }).start();
});

const FEATURES = 16;
const CLASSES = 3;

function clusters(n: number, seed: number): Split {
  // Three Gaussian blobs: learnable, so accuracies are meaningful.
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const x = new Float32Array(n * FEATURES);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % CLASSES;
    for (let j = 0; j < FEATURES; j++) x[i * FEATURES + j] = (j % CLASSES === y[i] ? 1.5 : 0) + (rnd() - 0.5) * 2;
  }
  return { x, y, n, inputShape: [FEATURES], numClasses: CLASSES };
}

function data(seed: number): DeviceData {
  return { train: clusters(240, seed), val: clusters(60, seed + 1), test: clusters(60, seed + 2), task: 'blobs' };
}

function mlp(seed: number): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.dense({ inputShape: [FEATURES], units: 12, activation: 'relu', name: 'dense_0', kernelInitializer: tf.initializers.glorotUniform({ seed }) }));
  m.add(tf.layers.dense({ units: CLASSES, activation: 'softmax', name: 'out', kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
  return m;
}

interface Cycle {
  pairId: string;
  cycleId: number;
  session: string;
  k: number;
}

/** A scripted coordinator: checks tokens, plans fixed pairs, answers target slices with transfers. */
class ScriptedCoordinator {
  io!: Server;
  url = '';
  sessions = new Map<string, string>(); // deviceId → current session
  registers: RegisterMsg[] = [];
  slices: { slot: string; sliceId: number; A: Float32Array; B: Float32Array; shapeA: number[]; shapeB: number[]; session: string; at: number }[] = [];
  transfersSent: Cycle[] = [];
  feedback: (FeedbackMsg & { session: string })[] = [];
  staleFeedback = 0;
  metrics = 0;
  cycles = new Map<number, Cycle>();
  inFlight = new Set<string>();
  nextCycle = 1;
  nextSession = 1;
  sockets = new Map<string, ServerSocket>();
  /** answer accepted feedback with feedback_ack (protocol v2), as the real coordinator does */
  ack = false;
  /** called after a transfer is emitted */
  onTransfer: (c: Cycle, s: ServerSocket) => void = () => {};
  private feedbackWaiters: { n: number; resolve: () => void }[] = [];

  constructor(
    readonly pairs: PlanPair[],
    readonly tokens: Record<string, string>,
    readonly transform: (A: Float32Array, B: Float32Array) => { A: Float32Array; B: Float32Array } = (A, B) => ({
      A: A.map((v, i) => v * 1.2 + ((i % 5) - 2) * 0.05),
      B,
    }),
  ) {}

  /** Listen on 127.0.0.1:`port` (0: a free port). */
  async listen(port = 0): Promise<void> {
    const http = createServer();
    this.io = new Server(http, { maxHttpBufferSize: 1e7 });
    this.io.use((socket, next) => {
      const hs = handshakeSchema.safeParse(socket.handshake.auth);
      const fail = (code: string, reason: string) => {
        const err = new Error(reason) as Error & { data: unknown };
        err.data = { code, reason };
        next(err);
      };
      if (!hs.success) return fail('unauthorized', 'no token');
      if (hs.data.protocolVersion !== PROTOCOL_VERSION) return fail('protocol_version', 'bad version');
      const want = this.tokens[hs.data.deviceId];
      if (want === undefined) return fail('unknown_device', hs.data.deviceId);
      if (want !== hs.data.token) return fail('bad_token', 'token does not match');
      socket.data.deviceId = hs.data.deviceId;
      next();
    });
    this.io.on('connection', (socket) => this.onConnection(socket));
    await new Promise<void>((r) => http.listen(port, '127.0.0.1', () => r()));
    this.url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  }

  private onConnection(socket: ServerSocket): void {
    const deviceId = socket.data.deviceId as string;
    const session = `s${this.nextSession++}`;
    this.sockets.set(deviceId, socket);
    socket.on('register', (buf: Buffer) => {
      const reg = registerSchema.parse(decodeMessage(buf));
      this.registers.push(reg);
      this.sessions.set(deviceId, session);
      // Cycles of the device's earlier sessions are over.
      for (const p of this.pairs) this.inFlight.delete(p.pairId);
      socket.emit('plan', encodeMessage({ deviceId, session, protocolVersion: PROTOCOL_VERSION, maxMessageBytes: 1e6, pairs: this.pairs }));
    });
    socket.on('slice', (buf: Buffer) => {
      const s = sliceSchema.parse(decodeMessage(buf));
      const A = wireToFloat32(s.A);
      const B = wireToFloat32(s.B);
      this.slices.push({ slot: s.slot, sliceId: s.sliceId, A: A.values, B: B.values, shapeA: A.shape, shapeB: B.shape, session, at: performance.now() });
      for (const p of this.pairs) {
        if (p.role !== 'target' || p.slot !== s.slot || p.rank > s.rank || this.inFlight.has(p.pairId)) continue;
        const c: Cycle = { pairId: p.pairId, cycleId: this.nextCycle++, session, k: p.k };
        this.cycles.set(c.cycleId, c);
        this.inFlight.add(p.pairId);
        // Truncate the slice to the pair's rank, as the coordinator does.
        const [m, R] = A.shape;
        const n = B.shape[1];
        const r = p.rank;
        const At = new Float32Array(m * r);
        for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) At[i * r + j] = A.values[i * R + j];
        const Bt = B.values.slice(0, r * n);
        const out = this.transform(At, Bt);
        socket.emit('transfer', encodeMessage({
          pairId: p.pairId, cycleId: c.cycleId, sliceId: s.sliceId, slot: s.slot,
          A: tensorToWire(out.A, [m, r]), B: tensorToWire(out.B, [r, n]), adapterStep: c.cycleId, gate: 1,
        }));
        this.transfersSent.push(c);
        this.onTransfer(c, socket);
      }
    });
    socket.on('feedback', (buf: Buffer) => {
      const f = feedbackSchema.parse(decodeMessage(buf));
      const c = this.cycles.get(f.cycleId);
      if (!c || c.session !== this.sessions.get(deviceId) || c.session !== session || c.pairId !== f.pairId) {
        this.staleFeedback += 1;
        return;
      }
      this.cycles.delete(f.cycleId);
      this.inFlight.delete(f.pairId);
      this.feedback.push({ ...f, session });
      if (this.ack) socket.emit('feedback_ack', encodeMessage({ pairId: f.pairId, cycleId: f.cycleId, adapterStep: this.feedback.length, updates: this.feedback.length }));
      this.feedbackWaiters = this.feedbackWaiters.filter((w) => (this.feedback.length >= w.n ? (w.resolve(), false) : true));
    });
    socket.on('metrics', (buf: Buffer) => {
      metricsSchema.parse(decodeMessage(buf));
      this.metrics += 1;
    });
  }

  /** Resolves once `n` feedback messages were accepted (fails after `timeoutMs`: a bound, not a wait). */
  feedbackCount(n: number, timeoutMs = 20_000): Promise<void> {
    if (this.feedback.length >= n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${this.feedback.length} of ${n} feedback arrived within ${timeoutMs} ms`)), timeoutMs);
      this.feedbackWaiters.push({ n, resolve: () => (clearTimeout(timer), resolve()) });
    });
  }

  /** Send a new plan in the device's current session, with these pairs. */
  replan(deviceId: string, pairs: PlanPair[]): void {
    this.pairs.splice(0, this.pairs.length, ...pairs);
    this.sockets.get(deviceId)!.emit('plan', encodeMessage({
      deviceId, session: this.sessions.get(deviceId)!, protocolVersion: PROTOCOL_VERSION, maxMessageBytes: 1e6, pairs,
    }));
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.io.close(() => r()));
  }
}

let coord: ScriptedCoordinator | undefined;
afterEach(async () => {
  await coord?.close();
  coord = undefined;
});

const pair = (pairId: string, role: 'source' | 'target', slot: string, tCycle: number, k: number, rank = 3): PlanPair => ({
  pairId, role, slot, peerDevice: 'peer', peerSlot: 'x', rank, tCycle, k, tau: 0.5,
});

function device(url: string, extra: Partial<ConstructorParameters<typeof DeviceClient>[0]> = {}): DeviceClient {
  return new DeviceClient({
    url,
    deviceId: 'dev-a',
    token: 'secret-a',
    data: data(7),
    rank: 3,
    trainer: { optimizer: 'sgd', lr: 0.02, batchSize: 16 },
    seed: 3,
    evalEvery: 50,
    description: { name: 'blob-mlp', architecture: 'mlp-16-12-3', task: 'blobs', modality: 'tabular' },
    reconnect: { delayMs: 50, maxDelayMs: 400 },
    ...extra,
    model: extra.model ?? mlp(1),
  });
}

describe('DeviceClient against a scripted coordinator', () => {
  it('runs cycles on a slot shared by two pairs, with exact window lengths and flat tensors', async () => {
    coord = new ScriptedCoordinator(
      // p2 has a lower rank than p1 on the same slot: the slot's slices carry rank 3, and p2 uses
      // their first 2 components.
      [pair('p1', 'target', 'dense_0', 6, 4), pair('p2', 'target', 'dense_0', 9, 7, 2), pair('p3', 'source', 'out', 10, 1, 2)],
      { 'dev-a': 'secret-a' },
    );
    await coord.listen();
    const model = mlp(1);
    const before = tf.memory().numTensors; // the model's own weights
    const dev = device(coord.url, { maxSteps: 400, model });
    const samples: number[] = [];
    const transfers: { pairId: string; scale: number }[] = [];
    dev.on('step', ({ step }) => {
      if (step % 10 === 0) samples.push(tf.memory().numTensors);
    });
    dev.on('transfer', (t) => transfers.push(t));
    let maxRemembered = 0;
    dev.on('feedback', () => (maxRemembered = Math.max(maxRemembered, dev.status().slicesRemembered)));
    await dev.start();

    const reg = coord.registers[0];
    expect(reg.deviceId).toBe('dev-a');
    expect(reg.slots).toEqual([{ name: 'dense_0', shape: [16, 12] }, { name: 'out', shape: [12, 3] }]);
    expect(reg.model.architecture).toBe('mlp-16-12-3');
    // (that training does not wait for the connection is shown by the offline test below)

    // Slices: one per (slot, rank) when due, of the planned ranks.
    const dense = coord.slices.filter((s) => s.slot === 'dense_0');
    const out = coord.slices.filter((s) => s.slot === 'out');
    expect(out.length).toBeGreaterThanOrEqual(35); // every 10 steps of 400
    expect(out.every((s) => s.shapeA.join() === '12,2' && s.shapeB.join() === '2,3')).toBe(true);
    expect(dense.every((s) => s.shapeA.join() === '16,3' && s.shapeB.join() === '3,12')).toBe(true);
    const ids = coord.slices.map((s) => s.sliceId);
    expect(new Set(ids).size).toBe(ids.length);

    // Both pairs cycled many times; every feedback spans exactly its pair's k steps.
    const byPair = (id: string) => coord!.feedback.filter((f) => f.pairId === id);
    expect(byPair('p1').length).toBeGreaterThanOrEqual(20);
    expect(byPair('p2').length).toBeGreaterThanOrEqual(15);
    expect(byPair('p3').length).toBe(0);
    for (const f of coord.feedback) {
      expect(f.steps).toBe(f.pairId === 'p1' ? 4 : 7);
      expect(f.scale).toBeGreaterThan(0);
      expect(f.scale).toBeLessThanOrEqual(1);
      const r = f.pairId === 'p1' ? 3 : 2;
      const gA = wireToFloat32(f.gA, { shape: [16, r] });
      const gB = wireToFloat32(f.gB, { shape: [r, 12] });
      expect(gA.values.some((v) => v !== 0)).toBe(true);
      expect(gB.values.some((v) => v !== 0)).toBe(true);
      expect(f.metrics.valAcc).toBeGreaterThanOrEqual(0);
      expect(f.metrics.loss).toBeGreaterThan(0);
    }
    expect(coord.staleFeedback).toBe(0);
    expect(coord.metrics).toBe(8); // evalEvery 50 of 400
    // The model learned on its own data meanwhile.
    expect(dev.status().valAcc!).toBeGreaterThan(0.6);
    expect(dev.status().feedbackSent).toBe(coord.feedback.length);
    expect(dev.status().transfersApplied).toBe(transfers.length);
    expect(transfers.every((t) => t.scale > 0 && t.scale <= 1)).toBe(true);
    // Only target-slot slices are kept, and only until the pairs' transfers have moved past them.
    expect(maxRemembered).toBeGreaterThan(0);
    expect(maxRemembered).toBeLessThanOrEqual(6);
    expect(dev.status().slicesEvicted).toBe(0);

    // Tensors: flat during the run, and everything the device made is freed at the end except the
    // model (which it does not own).
    const half = Math.floor(samples.length / 2);
    expect(Math.max(...samples.slice(half))).toBeLessThanOrEqual(Math.max(...samples.slice(2, half)));
    expect(tf.memory().numTensors).toBe(before);
    expect(dev.status().connected).toBe(false);
    expect(dev.status().stopped).toBe(true);
  });

  it('a new plan replaces the old one: the branch of a pair that left is removed, the rest go on', async () => {
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 4, 2), pair('p2', 'target', 'dense_0', 5, 3)], { 'dev-a': 'secret-a' });
    await coord.listen();
    const model = mlp(1);
    const dev = device(coord.url, { maxSteps: 100_000, evalEvery: 0, model });
    let replannedAt: number | undefined;
    let branchesAfter: string[] | undefined;
    dev.on('feedback', () => {
      if (replannedAt === undefined && coord!.feedback.filter((f) => f.pairId === 'p2').length >= 3) {
        replannedAt = coord!.feedback.length;
        coord!.replan('dev-a', [pair('p1', 'target', 'dense_0', 4, 2)]);
      }
      if (replannedAt !== undefined && coord!.feedback.length >= replannedAt + 8) dev.stop();
    });
    dev.on('plan', (p) => {
      if (p.pairs.length !== 1) return;
      // The removal happens before the next step; check right after it.
      dev.once('step', () => {
        branchesAfter = dev.status().branches;
      });
    });
    await dev.start();
    expect(replannedAt).toBeDefined();
    expect(branchesAfter).toEqual(['p1']);
    const late = coord.feedback.slice(replannedAt!);
    expect(late.length).toBeGreaterThanOrEqual(8);
    // Feedback of p2 after the new plan can only be a window that closed before the device read it.
    expect(late.filter((f) => f.pairId === 'p2').length).toBeLessThanOrEqual(1);
    expect(coord.staleFeedback).toBe(0);
    expect(dev.status().pairs).toEqual([]);
  });

  it('slices W, not W_eff: a large knowledge branch does not show in the next slice', async () => {
    // The transfer adds a large offset, so K is capped at τ‖W‖ = 0.5‖W‖.
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 5, 2)], { 'dev-a': 'secret-a' }, (A, B) => ({
      A: A.map((v, i) => v + (i % 2 ? 3 : -3)),
      B,
    }));
    await coord.listen();
    const dev = device(coord.url, { maxSteps: 40, trainer: { optimizer: 'sgd', lr: 0.001, batchSize: 16 }, evalEvery: 0 });
    const scales: number[] = [];
    dev.on('transfer', (t) => scales.push(t.scale));
    await dev.start();
    expect(scales.length).toBeGreaterThanOrEqual(5);
    expect(scales.every((s) => s < 1)).toBe(true); // the cap bound
    const prod = (s: ScriptedCoordinator['slices'][number]) =>
      tf.tidy(() => tf.matMul(tf.tensor2d(s.A, s.shapeA as [number, number]), tf.tensor2d(s.B, s.shapeB as [number, number])));
    const ss = coord.slices;
    for (let i = 1; i < ss.length; i++) {
      // Consecutive slices differ by a few slow SGD steps, far below ‖K‖ = 0.5‖W‖.
      const [d, n] = tf.tidy(() => {
        const a = prod(ss[i - 1]);
        const b = prod(ss[i]);
        return [tf.norm(tf.sub(a, b)).dataSync()[0], tf.norm(a).dataSync()[0]];
      });
      expect(d).toBeLessThan(0.05 * n);
    }
  });

  it('abandons the cycle of a dropped connection, re-registers, and never sends old-session feedback', async () => {
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 5, 6)], { 'dev-a': 'secret-a' });
    await coord.listen();
    // Cut the transport right after the 3rd and 8th transfers (engine.io flushes the transfer
    // first): the device gets the transfer, but its k-step window cannot finish in that session.
    coord.onTransfer = (c, s) => {
      if (c.cycleId === 3 || c.cycleId === 8) s.conn.close();
    };
    const dev = device(coord.url, { maxSteps: 500, evalEvery: 0, slowdown: 1 });
    const disconnects: number[] = [];
    dev.on('disconnect', () => disconnects.push(dev.status().step));
    // Keep training going long enough for the third session to complete cycles.
    dev.on('feedback', () => {
      if (coord!.feedback.length >= 14 && coord!.sessions.get('dev-a') === 's3') dev.stop();
    });
    await dev.start();
    const st = dev.status();
    expect(disconnects.length).toBe(2);
    expect(st.connections).toBe(3);
    expect(coord.registers.length).toBe(3);
    // Registration carries the step the device had reached; it never restarted from 0.
    expect(coord.registers[1].step).toBeGreaterThan(0);
    expect(coord.registers[2].step).toBeGreaterThan(coord.registers[1].step);
    expect(coord.staleFeedback).toBe(0);
    const fbCycles = new Set(coord.feedback.map((f) => f.cycleId));
    expect(fbCycles.has(3)).toBe(false);
    expect(fbCycles.has(8)).toBe(false);
    // Feedback arrived in every session, and each in the session of its own transfer.
    expect(new Set(coord.feedback.map((f) => f.session))).toEqual(new Set(['s1', 's2', 's3']));
    expect(st.windowsAbandoned + (st.ignored.session_ended ?? 0)).toBeGreaterThanOrEqual(2);
    expect(st.step).toBeGreaterThan(coord.registers[2].step);
  });

  it('device-side drop (dropConnection) reconnects with backoff and resumes its pairs', async () => {
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 4, 3)], { 'dev-a': 'secret-a' });
    await coord.listen();
    const dev = device(coord.url, { maxSteps: 2000, evalEvery: 0 });
    let dropped = false;
    dev.on('feedback', () => {
      const n = coord!.feedback.length;
      if (n === 5 && !dropped) {
        dropped = true;
        dev.dropConnection();
      }
      if (n >= 12) dev.stop();
    });
    await dev.start();
    expect(dev.status().connections).toBe(2);
    expect(coord.feedback.length).toBeGreaterThanOrEqual(12);
    expect(new Set(coord.feedback.map((f) => f.session))).toEqual(new Set(['s1', 's2']));
    expect(coord.staleFeedback).toBe(0);
  });

  it('the last feedback before stop() reaches a coordinator that is busy at that moment', async () => {
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 4, 2)], { 'dev-a': 'secret-a' });
    await coord.listen();
    // The device talks through a proxy. When the 5th transfer goes out, the proxy stops passing
    // the device's bytes on (a coordinator busy with an adapter step), until the device has
    // stopped and its WebSocket close frame is held too: the 5th feedback and the close then
    // reach the coordinator in one batch.
    const proxy = new PausableProxy(Number(new URL(coord.url).port));
    await proxy.listen();
    try {
      coord.onTransfer = (c) => {
        if (c.cycleId === 5) proxy.hold();
      };
      const dev = device(proxy.url, { maxSteps: 100_000, evalEvery: 0, lingerMs: 0 });
      dev.on('feedback', (f) => {
        if (f.cycleId === 5) dev.stop();
      });
      await dev.start();
      expect(dev.status().feedbackSent).toBe(5);
      await proxy.closeFrameHeld();
      proxy.release();
      await coord.feedbackCount(5);
      expect(coord.feedback.map((f) => f.cycleId)).toEqual([1, 2, 3, 4, 5]);
    } finally {
      await proxy.close();
    }
  });

  it('honours the coordinator\'s slice pace: slices of a slot at least the interval apart, every due one again at pace 0', async () => {
    coord = new ScriptedCoordinator([pair('p3', 'source', 'out', 1, 1, 2)], { 'dev-a': 'secret-a' });
    await coord.listen();
    const dev = device(coord.url, { maxSteps: 100_000, evalEvery: 0 });
    const PACE = 150;
    const run = dev.start();
    const until = (cond: () => boolean, what: string, ms = 20_000) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms);
        const poll = setInterval(() => cond() && (clearInterval(poll), clearTimeout(timer), resolve()), 5);
      });
    // unpaced: a slice every step (tCycle 1)
    await until(() => coord!.slices.length >= 20, 'twenty slices');
    coord.sockets.get('dev-a')!.emit('pace', encodeMessage({ sliceIntervalMs: PACE }));
    await until(() => dev.status().slicePace.intervalMs === PACE, 'the pace adopted');
    // slices that arrive from here on were sent under the pace (less the loopback's transit)
    const adoptedAt = performance.now() + 10;
    await until(() => coord!.slices.filter((s) => s.at > adoptedAt).length >= 5, 'five paced slices');
    // back to no pace: every step's slice again
    const liftedAt = performance.now();
    coord.sockets.get('dev-a')!.emit('pace', encodeMessage({ sliceIntervalMs: 0 }));
    await until(() => dev.status().slicePace.intervalMs === 0, 'the pace lifted');
    const fromUnpaced = coord.slices.length;
    await until(() => coord!.slices.length >= fromUnpaced + 20, 'twenty slices after the pace was lifted');
    const unpacedMs = coord.slices[fromUnpaced + 19].at - coord.slices[fromUnpaced].at;
    // a bad pace is counted and changes nothing
    coord.sockets.get('dev-a')!.emit('pace', encodeMessage({ sliceIntervalMs: -5 }));
    await until(() => (dev.status().ignored.bad_pace ?? 0) === 1, 'the bad pace ignored');
    dev.stop();
    await run;

    // Paced slices: each gap at least the interval, less a little for the loopback's jitter on arrival.
    const paced = coord.slices.filter((s) => s.at > adoptedAt && s.at < liftedAt);
    expect(paced.length).toBeGreaterThanOrEqual(5);
    const gaps = paced.slice(1).map((s, i) => s.at - paced[i].at);
    expect(Math.min(...gaps)).toBeGreaterThan(PACE - 30);
    // ...while unpaced, twenty slices took far less than twenty intervals
    expect(unpacedMs).toBeLessThan(19 * PACE);
    const st = dev.status();
    expect(st.slicePace).toMatchObject({ intervalMs: 0 });
    expect(st.slicePace.deferred).toBeGreaterThan(0);
  });

  it('counts feedback_ack for its target pairs and ignores acks it cannot place', async () => {
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 4, 2)], { 'dev-a': 'secret-a' });
    coord.ack = true;
    await coord.listen();
    const dev = device(coord.url, { maxSteps: 100_000, evalEvery: 0 });
    dev.on('feedback', () => {
      if (coord!.feedback.length === 1) {
        const s = coord!.sockets.get('dev-a')!;
        s.emit('feedback_ack', encodeMessage({ pairId: 'nope', cycleId: 0, adapterStep: 1, updates: 1 })); // not a pair of the plan
        s.emit('feedback_ack', encodeMessage({ pairId: 'p1', cycleId: -1, adapterStep: 1, updates: 1 })); // fails the schema
      }
    });
    const acked = new Promise<void>((resolve) => dev.on('step', () => dev.status().feedbackAcked >= 5 && resolve()));
    const run = dev.start();
    await acked;
    dev.stop();
    await run;
    const st = dev.status();
    expect(st.feedbackAcked).toBeGreaterThanOrEqual(5);
    expect(st.feedbackAcked).toBeLessThanOrEqual(st.feedbackSent);
    expect(st.adapterSteps.p1).toBe(st.feedbackAcked);
    expect(st.ignored.ack_unknown_pair).toBe(1);
    expect(st.ignored.bad_feedback_ack).toBe(1);
  });

  it('a refused handshake rejects start() with the code, and does not retry', async () => {
    coord = new ScriptedCoordinator([], { 'dev-a': 'secret-a' });
    await coord.listen();
    let connections = 0;
    coord.io.on('connection', () => (connections += 1));
    const bad = device(coord.url, { token: 'wrong' });
    await expect(bad.start()).rejects.toSatisfy((e: unknown) => e instanceof DeviceRefusedError && e.code === 'bad_token' && /bad_token/.test(e.message));
    const unknown = device(coord.url, { deviceId: 'nobody' });
    await expect(unknown.start()).rejects.toThrow(/unknown_device/);
    expect(connections).toBe(0);
    expect(bad.status().step).toBeLessThan(50);
  });

  it('keeps training while no coordinator is reachable, then joins when one appears', async () => {
    // Reserve a port, close it, start the device against it, then bring the coordinator up there.
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 4, 2)], { 'dev-a': 'secret-a' });
    await coord.listen();
    const url = coord.url;
    const port = Number(new URL(url).port);
    await coord.close();
    coord = undefined;
    const dev = device(url, { maxSteps: 100_000, evalEvery: 0, reconnect: { delayMs: 50, maxDelayMs: 200 } });
    // Offline for 30 steps (and several failed connection attempts): training goes on.
    const offlineSteps = new Promise<void>((resolve) => dev.on('step', ({ step }) => step === 30 && resolve()));
    const run = dev.start();
    await offlineSteps;
    const offline = dev.status();
    expect(offline.connected).toBe(false);
    expect(offline.connections).toBe(0);
    coord = new ScriptedCoordinator([pair('p1', 'target', 'dense_0', 4, 2)], { 'dev-a': 'secret-a' });
    await coord.listen(port);
    await coord.feedbackCount(3);
    dev.stop();
    await run;
    expect(coord.registers[0].step).toBeGreaterThanOrEqual(offline.step);
  });
});
