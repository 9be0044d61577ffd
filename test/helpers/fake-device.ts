// A minimal scripted protocol peer: it speaks the wire protocol with hand-made payloads (no model,
// no tfjs), so tests can drive the coordinator precisely, including with broken messages.
import { io, type Socket } from 'socket.io-client';
import { decodeMessage, encodeMessage, tensorToWire, wireToFloat32, type WireTensor } from '../../shared/codec/tensor-codec.js';
import type { SkipMsg } from '../../shared/protocol/messages.js';
import type { QueuedTransfer } from '../../client/target/transfer-queue.js';
import type { ClientToServerEvents, ServerToClientEvents } from '../../shared/protocol/events.js';
import type { FeedbackAckMsg, FeedbackMsg, Metrics, PlanMsg, RegisterMsg, RejectMsg, SlotDesc } from '../../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../../shared/protocol/version.js';
import type { CoordinatorEvents, RunningCoordinator, UpdateEvent } from '../../coordinator/server.js';

export interface FakeDeviceOptions {
  url: string;
  deviceId: string;
  token?: string;
  protocolVersion?: number;
  /** replaces the whole handshake auth object (for malformed-handshake tests) */
  auth?: Record<string, unknown>;
  connectTimeoutMs?: number;
}

/** A refused handshake as the client sees it. */
export interface ConnectRefusal {
  message: string;
  code?: string;
  reason?: string;
}

/** A transfer as a device decodes it: what the real device queues, less its session. */
export type DecodedTransfer = Omit<QueuedTransfer, 'session'>;

type Inbound = { plan: PlanMsg; transfer: DecodedTransfer; reject: RejectMsg; feedback_ack: FeedbackAckMsg };

/** Deterministic pseudo-random floats in [-scale, scale) (mulberry32). */
export function pseudoRandom(n: number, seed: number, scale = 1): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

export function wire(values: Float32Array, shape: number[]): WireTensor {
  return tensorToWire(values, shape);
}

export class FakeDevice {
  plan?: PlanMsg;
  private readonly queues: { [K in keyof Inbound]: Inbound[K][] } = { plan: [], transfer: [], reject: [], feedback_ack: [] };
  private readonly waiters: { [K in keyof Inbound]: { pred: (m: Inbound[K]) => boolean; resolve: (m: Inbound[K]) => void }[] } = {
    plan: [],
    transfer: [],
    reject: [],
    feedback_ack: [],
  };
  /** every reject received, in order (never consumed by next()) */
  readonly rejects: RejectMsg[] = [];
  readonly transfers: DecodedTransfer[] = [];
  /** every skip received (a target slice that started no cycle of a pair), in order */
  readonly skips: SkipMsg[] = [];

  private constructor(
    readonly deviceId: string,
    readonly socket: Socket<ServerToClientEvents, ClientToServerEvents>,
  ) {
    socket.on('plan', (b) => {
      const p = decodeMessage(b) as PlanMsg;
      this.plan = p;
      this.push('plan', p);
    });
    socket.on('transfer', (b) => {
      const m = decodeMessage(b) as Record<string, unknown>;
      const t: DecodedTransfer = {
        pairId: m.pairId as string,
        cycleId: m.cycleId as number,
        sliceId: m.sliceId as number,
        slot: m.slot as string,
        adapterStep: m.adapterStep as number,
        gate: m.gate as number,
        A: wireToFloat32(m.A, { name: 'transfer.A' }),
        B: wireToFloat32(m.B, { name: 'transfer.B' }),
      };
      this.transfers.push(t);
      this.push('transfer', t);
    });
    socket.on('skip', (b) => {
      this.skips.push(decodeMessage(b) as SkipMsg);
    });
    socket.on('feedback_ack', (b) => this.push('feedback_ack', decodeMessage(b) as FeedbackAckMsg));
    socket.on('reject', (b) => {
      const r = decodeMessage(b) as RejectMsg;
      this.rejects.push(r);
      this.push('reject', r);
    });
  }

  private static open(opts: FakeDeviceOptions): Socket<ServerToClientEvents, ClientToServerEvents> {
    const auth = opts.auth ?? { deviceId: opts.deviceId, token: opts.token, protocolVersion: opts.protocolVersion ?? PROTOCOL_VERSION };
    return io(opts.url, { auth, transports: ['websocket'], reconnection: false, forceNew: true, timeout: opts.connectTimeoutMs ?? 5000 });
  }

  /** Connect and authenticate; rejects with a ConnectRefusal if the coordinator refuses. */
  static connect(opts: FakeDeviceOptions): Promise<FakeDevice> {
    const socket = FakeDevice.open(opts);
    const dev = new FakeDevice(opts.deviceId, socket);
    return new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(dev));
      socket.once('connect_error', (err: Error & { data?: { code?: string; reason?: string } }) => {
        socket.close();
        reject({ message: err.message, code: err.data?.code, reason: err.data?.reason } satisfies ConnectRefusal);
      });
    });
  }

  /** Connect expecting a refusal; resolves with it (and fails if the connection is accepted). */
  static async refusal(opts: FakeDeviceOptions): Promise<ConnectRefusal> {
    try {
      const d = await FakeDevice.connect(opts);
      d.close();
    } catch (e) {
      return e as ConnectRefusal;
    }
    throw new Error(`expected the coordinator to refuse ${opts.deviceId}, but it accepted the connection`);
  }

  private push<K extends keyof Inbound>(kind: K, msg: Inbound[K]): void {
    const ws = this.waiters[kind];
    const i = ws.findIndex((w) => w.pred(msg));
    if (i >= 0) {
      const [w] = ws.splice(i, 1);
      w.resolve(msg);
      return;
    }
    this.queues[kind].push(msg);
  }

  /** The next (queued or future) message of a kind that matches `pred`; consumed. */
  next<K extends keyof Inbound>(kind: K, pred: (m: Inbound[K]) => boolean = () => true, timeoutMs = 10_000): Promise<Inbound[K]> {
    const q = this.queues[kind];
    const i = q.findIndex(pred);
    if (i >= 0) return Promise.resolve(q.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (m: Inbound[K]) => {
          clearTimeout(timer);
          resolve(m);
        },
      };
      const timer = setTimeout(() => {
        const ws = this.waiters[kind];
        const j = ws.indexOf(w);
        if (j >= 0) ws.splice(j, 1);
        reject(new Error(`${this.deviceId}: no ${kind} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters[kind].push(w);
    });
  }

  /** Drop queued messages (e.g. transfers nobody will answer). */
  clear(kind?: keyof Inbound): void {
    for (const k of Object.keys(this.queues) as (keyof Inbound)[]) if (!kind || k === kind) this.queues[k].length = 0;
  }

  async register(slots: SlotDesc[], extra: Partial<RegisterMsg> = {}): Promise<PlanMsg> {
    const msg: RegisterMsg = {
      deviceId: this.deviceId,
      model: { name: 'fake', architecture: 'none', task: 'test', modality: 'none' },
      slots,
      rank: 4,
      step: 0,
      ...extra,
    };
    const planP = this.next('plan');
    this.socket.emit('register', encodeMessage(msg));
    return planP;
  }

  /** Send a slice of random factors of the given shape (or the given values). */
  sendSlice(s: { slot: string; sliceId: number; step: number; rank: number; m: number; n: number; seed?: number; A?: WireTensor; B?: WireTensor }): void {
    const seed = s.seed ?? s.sliceId * 7919 + 17;
    const A = s.A ?? wire(pseudoRandom(s.m * s.rank, seed), [s.m, s.rank]);
    const B = s.B ?? wire(pseudoRandom(s.rank * s.n, seed + 1), [s.rank, s.n]);
    this.socket.emit('slice', encodeMessage({ slot: s.slot, sliceId: s.sliceId, step: s.step, rank: s.rank, A, B }));
  }

  /** Send feedback for a transfer: small random gradients of A′'s and B′'s shapes unless given. */
  sendFeedback(t: Pick<DecodedTransfer, 'pairId' | 'cycleId'> & { A: { shape: number[] }; B: { shape: number[] } }, extra: Partial<FeedbackMsg> & { seed?: number } = {}): void {
    const seed = extra.seed ?? t.cycleId * 31 + 5;
    const [m, r] = t.A.shape;
    const [, n] = t.B.shape;
    const metrics: Metrics = { step: 0, loss: 1, valAcc: 0.5 };
    const { seed: _s, ...rest } = extra;
    const msg = {
      pairId: t.pairId,
      cycleId: t.cycleId,
      steps: 1,
      scale: 1,
      gA: wire(pseudoRandom(m * r, seed, 0.01), [m, r]),
      gB: wire(pseudoRandom(r * n, seed + 1, 0.01), [r, n]),
      gateGrad: 0.01,
      metrics,
      ...rest,
    };
    this.socket.emit('feedback', encodeMessage(msg));
  }

  sendMetrics(m: Metrics): void {
    this.socket.emit('metrics', encodeMessage(m));
  }

  /** Send arbitrary bytes (or anything) on an event. */
  sendRaw(event: keyof ClientToServerEvents | (string & {}), payload: unknown): void {
    (this.socket.emit as (ev: string, p: unknown) => void)(event, payload);
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /**
   * Resolves once the coordinator has handled every message this device sent before: one
   * connection's messages are handled in order, and an unknown event is answered at once with a
   * reject (kept out of `rejects`). Replaces sleeping "long enough" for a message to land.
   */
  async barrier(): Promise<void> {
    const p = this.next('reject', (r) => r.event === 'barrier');
    this.sendRaw('barrier', encodeMessage({}));
    await p;
    const i = this.rejects.findIndex((r) => r.event === 'barrier');
    if (i >= 0) this.rejects.splice(i, 1);
  }

  /** Resolves when this connection is closed (at once if it already is). */
  disconnected(): Promise<void> {
    if (!this.socket.connected) return Promise.resolve();
    return new Promise((r) => this.socket.once('disconnect', () => r()));
  }

  close(): void {
    this.socket.close();
  }
}

// ---------------------------------------------------------------- helpers for coordinator tests

/** Resolve with the first `event` of the coordinator whose payload matches `pred` (no sleeping). */
export function waitForEvent<E extends keyof CoordinatorEvents>(
  coord: RunningCoordinator,
  event: E,
  pred: (payload: CoordinatorEvents[E][0]) => boolean = () => true,
  timeoutMs = 10_000,
): Promise<CoordinatorEvents[E][0]> {
  return new Promise((resolve, reject) => {
    const cb = ((payload: CoordinatorEvents[E][0]) => {
      if (!pred(payload)) return;
      clearTimeout(timer);
      coord.off(event, cb);
      resolve(payload);
    }) as (...args: CoordinatorEvents[E]) => void;
    const timer = setTimeout(() => {
      coord.off(event, cb);
      reject(new Error(`no coordinator "${event}" event within ${timeoutMs} ms`));
    }, timeoutMs);
    coord.on(event, cb);
  });
}

export interface TargetScript {
  slot: string;
  m: number;
  n: number;
  rank: number;
  sliceId: number;
  step: number;
}

/**
 * One full cycle from the target's side: send a slice, wait for the transfer, answer with feedback,
 * and wait until the coordinator reports the update. Returns both.
 */
export async function completeCycle(
  coord: RunningCoordinator,
  target: FakeDevice,
  s: TargetScript,
  timeoutMs = 10_000,
  feedback: Partial<FeedbackMsg> = {},
): Promise<{ transfer: DecodedTransfer; update: UpdateEvent }> {
  const transferP = target.next('transfer', (t) => t.slot === s.slot && t.sliceId === s.sliceId, timeoutMs);
  target.sendSlice(s);
  const transfer = await transferP;
  const updateP = waitForEvent(coord, 'update', (u) => u.pairId === transfer.pairId && u.cycleId === transfer.cycleId, timeoutMs);
  target.sendFeedback(transfer, feedback);
  const update = await updateP;
  return { transfer, update };
}
