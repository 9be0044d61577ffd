// The device client (DESIGN.md §2, docs/PROTOCOL.md): trains its model on its own data without
// ever waiting on the network, and takes part in its pairs' MergeNet cycles over socket.io.
//
// One loop owns the model. Each iteration: apply the transfers that arrived since the last step,
// take one training step, close the feedback windows that reached k steps, send the slices that
// are due, maybe evaluate, then yield to the event loop so socket events are processed. Socket
// handlers only decode, validate and queue; nothing touches the model outside the loop.
import * as tf from '@tensorflow/tfjs';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { io, type Socket } from 'socket.io-client';
import { CodecError, decodeMessage, encodeMessage, tensorToWire, wireToFloat32 } from '../shared/codec/tensor-codec.js';
import { silentLogger, type Logger } from '../shared/log.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { lowRankSlice } from '../shared/math/slice.js';
import { ERROR_CODES, isErrorCode, type ErrorCode } from '../shared/protocol/errors.js';
import { EVENTS, type ClientToServerEvents, type ServerToClientEvents } from '../shared/protocol/events.js';
import {
  describeZodError,
  feedbackSchema,
  handshakeSchema,
  planSchema,
  registerSchema,
  rejectSchema,
  transferSchema,
  type FeedbackMsg,
  type Metrics,
  type PlanMsg,
  type PlanPair,
  type RegisterMsg,
  type RejectMsg,
  type SliceMsg,
} from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { FeedbackWindows, SliceMemory, SliceSchedule, TransferQueue, type ClosedWindow, type QueuedTransfer, type SliceMemoryLimits } from './cycle-state.js';
import { batchIterator, evaluateAccuracy, featureSize, withInputShape, type Batch, type DeviceData, type Split } from './data/dataset.js';
import { projectFeedback } from './feedback.js';
import { KnowledgeBranches } from './knowledge-branch.js';
import { listSlots, slotInfo } from './slot.js';
import { Trainer, type OptimizerName } from './trainer.js';

/**
 * Handshake refusals that retrying cannot fix (the same auth would be refused again): start()
 * rejects with them. `invalid_message` here means the auth object itself was malformed.
 */
export const FATAL_HANDSHAKE_CODES: readonly ErrorCode[] = ['unauthorized', 'bad_token', 'unknown_device', 'protocol_version', 'invalid_message'];

export interface DeviceDescription {
  name: string;
  architecture: string;
  task: string;
  modality: string;
}

export interface ReconnectOptions {
  /** First delay before reconnecting, ms (default 500). */
  delayMs?: number;
  /** Cap of the exponential backoff, ms (default 10 000). */
  maxDelayMs?: number;
  /** Jitter: each delay is multiplied by a factor in [1 − r, 1 + r] (default 0.5). */
  randomization?: number;
  /** Connection attempt timeout, ms (default 10 000). */
  timeoutMs?: number;
}

export interface DeviceClientOptions {
  url: string;
  deviceId: string;
  token: string;
  model: tf.LayersModel;
  data: DeviceData;
  /** Layers offered as slots (default: every slot of listSlots(model)). */
  slots?: string[];
  /** The rank this device prefers; the plan decides the rank of each pair. */
  rank: number;
  trainer: { optimizer: OptimizerName; lr: number; batchSize: number };
  seed: number;
  /** Stop after this many local steps (default: train until stop()). */
  maxSteps?: number;
  /** Evaluate on the val split and send `metrics` every this many steps (0 = never). */
  evalEvery: number;
  /** Also evaluate the test split at each evaluation (default false). */
  evalTest?: boolean;
  /** ≥ 1: after each step sleep (slowdown − 1)× that step's own time, standing in for weak hardware. */
  slowdown?: number;
  logger?: Logger;
  description: DeviceDescription;
  reconnect?: ReconnectOptions;
  /** Bounds on the slices remembered for transfers still to come (see SliceMemory). */
  sliceMemory?: SliceMemoryLimits;
  /** ms to wait at stop, after the last message left, before disconnecting (default 100). */
  lingerMs?: number;
  /** socket.io path (default "/socket.io"). */
  path?: string;
}

export interface DeviceStatus {
  deviceId: string;
  step: number;
  connected: boolean;
  /** the plan's session id, undefined until a plan arrived on the current connection */
  session: string | undefined;
  pairs: PlanPair[];
  /** (re)connections made, the first included */
  connections: number;
  slicesSent: number;
  transfersReceived: number;
  transfersApplied: number;
  /** inbound messages ignored (transfers not applied, bad plans), by reason */
  ignored: Record<string, number>;
  feedbackSent: number;
  /** windows dropped without feedback (disconnects, new plans, shutdown) */
  windowsAbandoned: number;
  openWindows: number;
  /** pairs whose knowledge branch is in the model now */
  branches: string[];
  /** slices held for transfers still to come, and slices dropped by the memory limits */
  slicesRemembered: number;
  slicesEvicted: number;
  rejects: Record<string, number>;
  loss: number | undefined;
  valAcc: number | undefined;
  testAcc: number | undefined;
  stepsPerSec: number | undefined;
  stopped: boolean;
  /**
   * Payload bytes (the MessagePack buffers) by message: sent `slice:<slot>`, `feedback:<pairId>`,
   * `metrics`, `register`; received `transfer:<pairId>`.
   */
  wire: Record<string, { messages: number; bytes: number }>;
}

export interface TransferEvent {
  pairId: string;
  cycleId: number;
  sliceId: number;
  slot: string;
  step: number;
  adapterStep: number;
  scale: number;
  branchNorm: number;
  weightNorm: number;
}
export interface FeedbackEvent {
  pairId: string;
  cycleId: number;
  slot: string;
  step: number;
  steps: number;
  scale: number;
  loss: number;
  valAcc: number | undefined;
  gANorm: number;
  gBNorm: number;
  /** where G was computed: the training batches, or the val split (plan `feedback: heldout`) */
  feedback: 'train' | 'heldout';
}
export interface SliceEvent {
  slot: string;
  sliceId: number;
  rank: number;
  step: number;
  pairIds: string[];
}
export interface EvalEvent {
  step: number;
  loss: number;
  /** undefined when the val split is empty */
  valAcc: number | undefined;
  testAcc?: number;
  stepsPerSec: number;
}
export interface StepEvent {
  step: number;
  loss: number;
}
export interface IgnoredEvent {
  reason: string;
  pairId?: string;
  cycleId?: number;
  detail?: string;
}

export interface DeviceEvents {
  step: [StepEvent];
  slice: [SliceEvent];
  transfer: [TransferEvent];
  feedback: [FeedbackEvent];
  reject: [RejectMsg];
  plan: [PlanMsg];
  eval: [EvalEvent];
  ignored: [IgnoredEvent];
  connect: [{ connections: number }];
  disconnect: [{ reason: string; abandonedWindows: number; droppedTransfers: number }];
  stopped: [DeviceStatus];
}

/** Thrown (start() rejects with it) when the coordinator refuses this device for good. */
export class DeviceRefusedError extends Error {
  constructor(
    readonly code: string,
    readonly reason: string,
  ) {
    const hint = isErrorCode(code) ? ` (${ERROR_CODES[code]})` : '';
    super(`coordinator refused device: ${code}: ${reason}${hint}`);
    this.name = 'DeviceRefusedError';
  }
}

function bump(rec: Record<string, number>, key: string): void {
  rec[key] = (rec[key] ?? 0) + 1;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The model's per-example input shape, when fully known. */
function modelInputShape(model: tf.LayersModel): number[] | undefined {
  const s = model.inputs[0]?.shape.slice(1);
  return s && s.every((d) => typeof d === 'number' && d > 0) ? (s as number[]) : undefined;
}

/** View a split with the model's example shape (e.g. MNIST [784] for a CNN taking [28, 28, 1]). */
function fitSplit(model: tf.LayersModel, split: Split): Split {
  const want = modelInputShape(model);
  if (!want || want.join(',') === split.inputShape.join(',')) return split;
  if (featureSize(want) !== featureSize(split.inputShape)) {
    throw new Error(`model expects examples of shape [${want.join(', ')}], the data has [${split.inputShape.join(', ')}]`);
  }
  return withInputShape(split, want);
}

/** The first r columns of A and rows of B. The caller owns the result. */
function truncateFactors(f: LowRank, r: number): LowRank {
  return tf.tidy(() => ({
    A: tf.slice(f.A, [0, 0], [f.A.shape[0], r]) as tf.Tensor2D,
    B: tf.slice(f.B, [0, 0], [r, f.B.shape[1]]) as tf.Tensor2D,
  }));
}

function norm(values: Float32Array): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i] * values[i];
  return Math.sqrt(s);
}

export class DeviceClient extends EventEmitter<DeviceEvents> {
  readonly deviceId: string;
  private readonly opts: DeviceClientOptions;
  private readonly log: Logger;
  private readonly model: tf.LayersModel;
  private readonly trainer: Trainer;
  private readonly branches: KnowledgeBranches;
  private readonly slices: SliceMemory;
  private readonly schedule = new SliceSchedule();
  private readonly windows: FeedbackWindows;
  private readonly transfers = new TransferQueue();
  /** pairId → the sliceId its latest applied transfer referred to (this session) */
  private readonly lastTransferSlice = new Map<string, number>();
  /** slot name → [m, n] of the slots this device offers */
  private readonly slotShapes = new Map<string, [number, number]>();
  private readonly train: Split;
  private readonly val: Split;
  private readonly test: Split;
  private batches: Iterator<Batch> | undefined;

  private socket: Socket<ServerToClientEvents, ClientToServerEvents> | undefined;
  private plan: PlanMsg | undefined;
  private step = 0;
  private nextSliceId = 0;
  private started = false;
  private stopping = false;
  private stoppedFlag = false;
  private fatal: Error | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private manualAttempts = 0;

  private connections = 0;
  private slicesSent = 0;
  private transfersReceived = 0;
  private transfersApplied = 0;
  private readonly ignored: Record<string, number> = {};
  private feedbackSent = 0;
  private windowsAbandoned = 0;
  private readonly rejects: Record<string, number> = {};
  private lastLoss: number | undefined;
  private lastValAcc: number | undefined;
  private lastTestAcc: number | undefined;
  private stepsPerSec: number | undefined;
  private readonly wire: Record<string, { messages: number; bytes: number }> = {};
  /** Held-out feedback: pairId → G summed over val batches since its window opened. */
  private readonly heldout = new Map<string, { layer: string; G: tf.Tensor2D | undefined; steps: number }>();
  private heldoutBatches: Iterator<Batch> | undefined;
  private lossSinceEval = 0;
  private stepsSinceEval = 0;
  private evalClock = 0;

  constructor(opts: DeviceClientOptions) {
    super();
    this.opts = opts;
    this.deviceId = opts.deviceId;
    this.log = (opts.logger ?? silentLogger()).child({ device: opts.deviceId });
    this.model = opts.model;
    const hs = handshakeSchema.safeParse({ deviceId: opts.deviceId, token: opts.token, protocolVersion: PROTOCOL_VERSION });
    if (!hs.success) throw new Error(`device handshake: ${describeZodError(hs.error)}`);
    if (!(Number.isInteger(opts.rank) && opts.rank >= 1)) throw new Error(`rank must be an integer ≥ 1, got ${opts.rank}`);
    if (!(Number.isInteger(opts.evalEvery) && opts.evalEvery >= 0)) throw new Error(`evalEvery must be an integer ≥ 0, got ${opts.evalEvery}`);
    if (opts.slowdown !== undefined && !(opts.slowdown >= 1 && Number.isFinite(opts.slowdown))) {
      throw new Error(`slowdown must be a finite number ≥ 1, got ${opts.slowdown}`);
    }
    if (opts.maxSteps !== undefined && !(Number.isInteger(opts.maxSteps) && opts.maxSteps >= 0)) {
      throw new Error(`maxSteps must be an integer ≥ 0, got ${opts.maxSteps}`);
    }
    if (!(Number.isInteger(opts.trainer.batchSize) && opts.trainer.batchSize >= 1)) {
      throw new Error(`batchSize must be an integer ≥ 1, got ${opts.trainer.batchSize}`);
    }
    const names = opts.slots ?? listSlots(opts.model).map((s) => s.layer);
    if (names.length === 0) throw new Error('the model has no layer that can serve as a slot (dense, conv or embedding)');
    for (const name of names) {
      const info = slotInfo(opts.model, name); // throws naming the available slots
      if (this.slotShapes.has(name)) throw new Error(`slot "${name}" is listed twice`);
      this.slotShapes.set(name, info.shape);
    }
    // The registration must be valid before anything connects: the coordinator would refuse it.
    const reg = registerSchema.safeParse({ deviceId: opts.deviceId, model: opts.description, slots: this.slots(), rank: opts.rank, step: 0 });
    if (!reg.success) throw new Error(`device registration: ${describeZodError(reg.error)}`);
    this.train = fitSplit(opts.model, opts.data.train);
    this.val = fitSplit(opts.model, opts.data.val);
    this.test = fitSplit(opts.model, opts.data.test);
    this.trainer = new Trainer(opts.model, { optimizer: opts.trainer.optimizer, lr: opts.trainer.lr });
    this.branches = new KnowledgeBranches(opts.model);
    this.slices = new SliceMemory(opts.sliceMemory);
    this.windows = new FeedbackWindows(this.trainer);
  }

  /** The slots offered at registration, with their 2-D shapes. */
  slots(): { name: string; shape: [number, number] }[] {
    return [...this.slotShapes].map(([name, shape]) => ({ name, shape: [...shape] as [number, number] }));
  }

  status(): DeviceStatus {
    return {
      deviceId: this.deviceId,
      step: this.step,
      connected: this.socket?.connected ?? false,
      session: this.plan?.session,
      pairs: this.plan ? this.plan.pairs.map((p) => ({ ...p })) : [],
      connections: this.connections,
      slicesSent: this.slicesSent,
      transfersReceived: this.transfersReceived,
      transfersApplied: this.transfersApplied,
      ignored: { ...this.ignored },
      feedbackSent: this.feedbackSent,
      windowsAbandoned: this.windowsAbandoned,
      openWindows: this.windows.size,
      branches: this.stoppedFlag ? [] : this.branches.pairs(),
      slicesRemembered: this.slices.size,
      slicesEvicted: this.slices.evicted,
      rejects: { ...this.rejects },
      loss: this.lastLoss,
      valAcc: this.lastValAcc,
      testAcc: this.lastTestAcc,
      stepsPerSec: this.stepsPerSec,
      stopped: this.stoppedFlag,
      wire: Object.fromEntries(Object.entries(this.wire).map(([k, v]) => [k, { ...v }])),
    };
  }

  /**
   * Connect and train until maxSteps or stop(). Resolves when training has finished and
   * everything is released; rejects if the coordinator refuses the device for good (bad token,
   * unknown id, protocol version) or training itself fails.
   */
  async start(): Promise<void> {
    if (this.started) throw new Error('DeviceClient.start() can only be called once');
    this.started = true;
    this.batches = batchIterator(this.train, this.opts.trainer.batchSize, this.opts.seed, { epochs: Infinity });
    this.connect();
    this.evalClock = performance.now();
    const max = this.opts.maxSteps ?? Infinity;
    const slowdown = this.opts.slowdown ?? 1;
    let failure: unknown;
    try {
      while (!this.stopping && !this.fatal && this.step < max) {
        const t0 = performance.now();
        this.applyTransfers();
        this.accumulateHeldout();
        const loss = this.trainOneStep();
        this.step += 1;
        this.lastLoss = loss;
        this.lossSinceEval += loss;
        this.stepsSinceEval += 1;
        this.windows.afterStep(loss);
        this.emit('step', { step: this.step, loss });
        this.sendReadyFeedback();
        this.sendDueSlices();
        if (this.opts.evalEvery > 0 && this.step % this.opts.evalEvery === 0) this.evaluate();
        const spent = performance.now() - t0;
        // Yield every step: socket events (transfers, plans) are handled between steps.
        if (slowdown > 1) await sleep((slowdown - 1) * spent);
        else await new Promise<void>((r) => setImmediate(r));
      }
    } catch (err) {
      failure = err;
    } finally {
      if (!this.fatal) await this.flushOutgoing().catch(() => undefined);
      this.shutdown();
    }
    if (failure) throw failure;
    if (this.fatal) throw this.fatal;
  }

  /** Ask the loop to stop after the current step; start() then resolves. */
  stop(): void {
    this.stopping = true;
    if (!this.started) this.shutdown();
  }

  /**
   * For tests and fault drills: cut the transport abruptly, as a network failure would (no
   * disconnect handshake). socket.io then reconnects with backoff and a new session begins.
   */
  dropConnection(): void {
    const engine = (this.socket?.io as unknown as { engine?: { close(): void } } | undefined)?.engine;
    engine?.close();
  }

  // ------------------------------------------------------------------------------------------
  // connection

  private connect(): void {
    const r = this.opts.reconnect ?? {};
    const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(this.opts.url, {
      path: this.opts.path,
      auth: { deviceId: this.deviceId, token: this.opts.token, protocolVersion: PROTOCOL_VERSION },
      transports: ['websocket'],
      reconnection: true,
      reconnectionDelay: r.delayMs ?? 500,
      reconnectionDelayMax: r.maxDelayMs ?? 10_000,
      randomizationFactor: r.randomization ?? 0.5,
      timeout: r.timeoutMs ?? 10_000,
    });
    this.socket = socket;
    socket.on('connect', () => this.onConnect());
    socket.on('disconnect', (reason) => this.onDisconnect(reason));
    socket.on('connect_error', (err) => this.onConnectError(err));
    socket.on(EVENTS.plan, (buf) => this.guard('plan', () => this.onPlan(buf)));
    socket.on(EVENTS.transfer, (buf) => this.guard('transfer', () => this.onTransfer(buf)));
    socket.on(EVENTS.reject, (buf) => this.guard('reject', () => this.onReject(buf)));
  }

  /** A bad message from the coordinator is logged and dropped; it never stops training. */
  private guard(event: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.ignore({ reason: `bad_${event}`, detail: (err as Error).message });
    }
  }

  private onConnect(): void {
    this.connections += 1;
    this.manualAttempts = 0;
    this.endSession('new connection');
    this.log.info({ connections: this.connections, step: this.step }, 'connected; registering');
    this.emit('connect', { connections: this.connections });
    const msg: RegisterMsg = {
      deviceId: this.deviceId,
      model: { ...this.opts.description },
      slots: this.slots(),
      rank: this.opts.rank,
      step: this.step,
    };
    this.send(EVENTS.register, msg);
  }

  private onDisconnect(reason: string): void {
    const { windows, transfers } = this.endSession(reason);
    this.log.warn({ reason, step: this.step, abandonedWindows: windows, droppedTransfers: transfers }, 'disconnected');
    this.emit('disconnect', { reason, abandonedWindows: windows, droppedTransfers: transfers });
    // socket.io does not reconnect by itself after a server-side disconnect. (The coordinator
    // also closes a connection that a newer one of the same device id replaced: two processes
    // running as one device will keep replacing each other.)
    if (reason === 'io server disconnect' && !this.stopping) this.scheduleManualReconnect();
  }

  private onConnectError(err: Error & { data?: unknown }): void {
    const data = (err.data ?? {}) as { code?: unknown; reason?: unknown };
    const code = typeof data.code === 'string' ? data.code : isErrorCode(err.message) ? err.message : undefined;
    const reason = typeof data.reason === 'string' ? data.reason : err.message;
    if (code && (FATAL_HANDSHAKE_CODES as readonly string[]).includes(code)) {
      this.log.error({ code, reason }, 'handshake refused');
      this.fatal = new DeviceRefusedError(code, reason);
      this.stopping = true;
      this.socket?.disconnect();
      return;
    }
    this.log.warn({ code, reason }, 'connection attempt failed; retrying with backoff');
    // A refusal by server middleware leaves the socket inactive: socket.io will not retry it.
    if (this.socket && !this.socket.active && !this.stopping) this.scheduleManualReconnect();
  }

  private scheduleManualReconnect(): void {
    if (this.reconnectTimer) return;
    const r = this.opts.reconnect ?? {};
    const base = r.delayMs ?? 500;
    const cap = r.maxDelayMs ?? 10_000;
    const jitter = r.randomization ?? 0.5;
    const raw = Math.min(cap, base * 2 ** Math.min(this.manualAttempts, 30));
    const delay = Math.min(cap, raw * (1 - jitter + 2 * jitter * Math.random()));
    this.manualAttempts += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.stopping) this.socket?.connect();
    }, delay);
  }

  /** Forget the current session: its windows and queued transfers can never produce feedback. */
  private endSession(why: string): { windows: number; transfers: number } {
    const windows = this.windows.abandonAll();
    const transfers = this.transfers.clear();
    this.windowsAbandoned += windows;
    if (transfers) this.ignored.session_ended = (this.ignored.session_ended ?? 0) + transfers;
    if (this.plan) this.log.debug({ session: this.plan.session, why }, 'session ended');
    this.plan = undefined;
    this.schedule.clear();
    // Transfers of the old session will never be applied: their slices can go.
    this.slices.clear();
    this.lastTransferSlice.clear();
    return { windows, transfers };
  }

  // ------------------------------------------------------------------------------------------
  // inbound messages (decode, validate, queue; never touch the model here)

  private maxBytes(): number | undefined {
    return this.plan?.maxMessageBytes;
  }

  private onPlan(buf: unknown): void {
    const res = planSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`plan: ${describeZodError(res.error)}`);
    const plan = res.data;
    if (plan.deviceId !== this.deviceId) throw new Error(`plan is for device "${plan.deviceId}", not "${this.deviceId}"`);
    if (plan.protocolVersion !== PROTOCOL_VERSION) {
      throw new Error(`plan speaks protocol ${plan.protocolVersion}, this device ${PROTOCOL_VERSION}`);
    }
    const pairs: PlanPair[] = [];
    for (const p of plan.pairs) {
      const shape = this.slotShapes.get(p.slot);
      if (!shape) {
        this.ignore({ reason: 'plan_unknown_slot', pairId: p.pairId, detail: `slot "${p.slot}" is not one of this device's` });
        continue;
      }
      if (p.rank > Math.min(shape[0], shape[1])) {
        this.ignore({ reason: 'plan_bad_rank', pairId: p.pairId, detail: `rank ${p.rank} exceeds slot "${p.slot}" [${shape.join('×')}]` });
        continue;
      }
      pairs.push(p);
    }
    const sameSession = this.plan?.session === plan.session;
    const kept = new Map(pairs.map((p) => [p.pairId, p]));
    // Windows of pairs that left the plan (or changed slot) can never be answered.
    for (const id of this.windows.pairIds()) {
      const p = kept.get(id);
      if (!sameSession || !p || p.role !== 'target' || p.slot !== this.windows.get(id)!.layer) {
        if (this.windows.abandon(id)) this.windowsAbandoned += 1;
      }
    }
    this.plan = { ...plan, pairs };
    this.schedule.setPlan(pairs.filter((p) => p.role === 'source' || p.role === 'target'), this.step, sameSession);
    // Branches are model state, changed only between steps: removals happen at the next step.
    this.log.info(
      { session: plan.session, pairs: pairs.map((p) => `${p.pairId}:${p.role}:${p.slot}`), step: this.step },
      'plan received',
    );
    this.emit('plan', this.plan);
  }

  private onTransfer(buf: unknown): void {
    this.transfersReceived += 1;
    const res = transferSchema.safeParse(decodeMessage(buf, { maxBytes: this.maxBytes() }));
    if (!res.success) throw new Error(`transfer: ${describeZodError(res.error)}`);
    const t = res.data;
    this.countWire(`transfer:${t.pairId}`, buf);
    const plan = this.plan;
    if (!plan) return this.ignore({ reason: 'no_plan', pairId: t.pairId, cycleId: t.cycleId });
    const pair = plan.pairs.find((p) => p.pairId === t.pairId);
    if (!pair || pair.role !== 'target' || pair.slot !== t.slot) {
      return this.ignore({ reason: 'not_a_target_pair', pairId: t.pairId, cycleId: t.cycleId, detail: `slot ${t.slot}` });
    }
    const [m, n] = this.slotShapes.get(pair.slot)!;
    let A, B;
    try {
      A = wireToFloat32(t.A, { name: 'transfer.A', shape: [m, pair.rank] });
      B = wireToFloat32(t.B, { name: 'transfer.B', shape: [pair.rank, n] });
    } catch (err) {
      if (err instanceof CodecError) return this.ignore({ reason: `transfer_${err.code}`, pairId: t.pairId, cycleId: t.cycleId, detail: err.message });
      throw err;
    }
    const q: QueuedTransfer = {
      session: plan.session,
      pairId: t.pairId,
      cycleId: t.cycleId,
      sliceId: t.sliceId,
      slot: t.slot,
      adapterStep: t.adapterStep,
      A,
      B,
    };
    this.transfers.push(q);
  }

  private onReject(buf: unknown): void {
    const res = rejectSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`reject: ${describeZodError(res.error)}`);
    const r = res.data;
    bump(this.rejects, r.code);
    this.log.warn({ code: r.code, reason: r.reason, event: r.event, ref: r.ref }, 'coordinator rejected a message');
    this.emit('reject', r);
    // A refused registration leaves the device without a plan for good; retrying the same
    // message would be refused again.
    if (r.event === EVENTS.register && r.code !== 'internal') {
      this.fatal = new DeviceRefusedError(r.code, r.reason);
      this.stopping = true;
    }
  }

  private ignore(e: IgnoredEvent): void {
    bump(this.ignored, e.reason);
    this.log.warn(e, 'ignored an inbound message');
    this.emit('ignored', e);
  }

  // ------------------------------------------------------------------------------------------
  // the loop's work between steps

  private trainOneStep(): number {
    const next = this.batches!.next();
    if (next.done) throw new Error('the training batch stream ended');
    const { xs, ys } = next.value;
    try {
      const loss = this.trainer.step(xs, ys);
      if (!Number.isFinite(loss)) throw new Error(`training loss is ${loss} at step ${this.step + 1}`);
      return loss;
    } finally {
      xs.dispose();
      ys.dispose();
    }
  }

  private applyTransfers(): void {
    const plan = this.plan;
    // Branches of pairs that are no longer this device's target pairs are removed first.
    const targets = new Map((plan?.pairs ?? []).filter((p) => p.role === 'target').map((p) => [p.pairId, p]));
    if (plan) {
      for (const id of this.branches.pairs()) {
        const p = targets.get(id);
        if (!p || p.slot !== this.branches.layerOf(id)) this.branches.remove(id);
      }
    }
    for (const t of this.transfers.drain()) {
      if (!plan || t.session !== plan.session) {
        this.ignore({ reason: 'session_ended', pairId: t.pairId, cycleId: t.cycleId });
        continue;
      }
      const pair = targets.get(t.pairId);
      if (!pair || pair.slot !== t.slot) {
        this.ignore({ reason: 'not_a_target_pair', pairId: t.pairId, cycleId: t.cycleId });
        continue;
      }
      const slice = this.slices.get(t.sliceId);
      if (!slice || slice.slot !== t.slot) {
        this.ignore({ reason: 'slice_gone', pairId: t.pairId, cycleId: t.cycleId, detail: `slice ${t.sliceId}` });
        continue;
      }
      if (slice.rank < pair.rank) {
        this.ignore({ reason: 'slice_rank', pairId: t.pairId, cycleId: t.cycleId, detail: `slice ${t.sliceId} has rank ${slice.rank} < ${pair.rank}` });
        continue;
      }
      const generated: LowRank = {
        A: tf.tensor2d(t.A.values, t.A.shape as [number, number]),
        B: tf.tensor2d(t.B.values, t.B.shape as [number, number]),
      };
      // The coordinator used the first r columns of A and rows of B (a rank-r slice of the same W,
      // since the factors are ordered by singular value); so must the branch.
      const current = slice.rank === pair.rank ? slice.factors : truncateFactors(slice.factors, pair.rank);
      let upd;
      try {
        upd = this.branches.set(t.pairId, t.slot, generated, current, pair.tau);
      } catch (err) {
        disposeLowRank(generated);
        this.ignore({ reason: 'branch_failed', pairId: t.pairId, cycleId: t.cycleId, detail: (err as Error).message });
        continue;
      } finally {
        if (current !== slice.factors) disposeLowRank(current);
      }
      this.windows.openWindow({
        pairId: t.pairId,
        cycleId: t.cycleId,
        session: t.session,
        layer: t.slot,
        generated,
        scale: upd.scale,
        k: pair.k,
        openedAt: this.step,
      });
      this.dropHeldout(t.pairId);
      if (pair.feedback === 'heldout') {
        if (this.val.n > 0) this.heldout.set(t.pairId, { layer: t.slot, G: undefined, steps: 0 });
        else this.log.warn({ pairId: t.pairId }, 'the plan asks for held-out feedback but the val split is empty: G comes from the training batches');
      }
      this.transfersApplied += 1;
      this.releaseSlices(pair.slot, t.pairId, t.sliceId, targets);
      this.log.debug({ pairId: t.pairId, cycleId: t.cycleId, step: this.step, ...upd }, 'transfer applied');
      this.emit('transfer', {
        pairId: t.pairId,
        cycleId: t.cycleId,
        sliceId: t.sliceId,
        slot: t.slot,
        step: this.step,
        adapterStep: t.adapterStep,
        ...upd,
      });
    }
  }

  /**
   * The coordinator starts each cycle of a pair on a newer target slice than the last, so once
   * every target pair of a slot has had a transfer, slices older than the oldest of those are
   * never needed again.
   */
  private releaseSlices(slot: string, pairId: string, sliceId: number, targets: Map<string, PlanPair>): void {
    this.lastTransferSlice.set(pairId, sliceId);
    let floor = Infinity;
    for (const p of targets.values()) {
      if (p.slot !== slot) continue;
      const used = this.lastTransferSlice.get(p.pairId);
      if (used === undefined) return;
      floor = Math.min(floor, used);
    }
    if (floor !== Infinity) this.slices.release(slot, floor);
  }

  private sendReadyFeedback(): void {
    const ready = this.windows.takeReady();
    if (ready.length === 0) return;
    // One evaluation serves every feedback of this step.
    const valAcc = this.val.n > 0 ? evaluateAccuracy(this.model, this.val) : undefined;
    if (valAcc !== undefined) this.lastValAcc = valAcc;
    for (const w of ready) this.sendFeedback(w, valAcc);
  }

  private sendFeedback(w: ClosedWindow, valAcc: number | undefined): void {
    try {
      if (!this.plan || this.plan.session !== w.session || !this.socket?.connected) {
        this.windowsAbandoned += 1;
        return;
      }
      const held = this.heldout.get(w.pairId);
      let steps = w.steps;
      if (held) {
        // Held-out feedback: G from the val batches of this window replaces the training G.
        this.heldout.delete(w.pairId);
        const shape = w.G.shape;
        w.G.dispose();
        w.G = held.G ?? (tf.zeros(shape) as tf.Tensor2D);
        steps = held.steps;
      }
      const fb = projectFeedback(w.G, w.generated, w.scale);
      const gA = fb.gA.dataSync() as Float32Array;
      const gB = fb.gB.dataSync() as Float32Array;
      const gAShape = fb.gA.shape;
      const gBShape = fb.gB.shape;
      fb.gA.dispose();
      fb.gB.dispose();
      const metrics: Metrics = { step: this.step, loss: w.meanLoss };
      if (valAcc !== undefined) metrics.valAcc = valAcc;
      if (this.stepsPerSec !== undefined) metrics.stepsPerSec = this.stepsPerSec;
      const msg: FeedbackMsg = {
        pairId: w.pairId,
        cycleId: w.cycleId,
        steps: Math.max(1, steps),
        scale: w.scale,
        gA: tensorToWire(gA, gAShape),
        gB: tensorToWire(gB, gBShape),
        metrics,
      };
      // A NaN in G would be refused; better not to send it and say why here.
      const check = feedbackSchema.safeParse(msg);
      if (!check.success || !gA.every(Number.isFinite) || !gB.every(Number.isFinite)) {
        this.log.error({ pairId: w.pairId, cycleId: w.cycleId }, 'feedback is not finite or not valid; not sent');
        this.windowsAbandoned += 1;
        return;
      }
      if (!this.send(EVENTS.feedback, msg, `feedback:${w.pairId}`)) {
        this.windowsAbandoned += 1;
        return;
      }
      this.feedbackSent += 1;
      this.emit('feedback', {
        pairId: w.pairId,
        cycleId: w.cycleId,
        slot: w.layer,
        step: this.step,
        steps: w.steps,
        scale: w.scale,
        loss: w.meanLoss,
        valAcc,
        gANorm: norm(gA),
        gBNorm: norm(gB),
        feedback: held ? 'heldout' : 'train',
      });
    } finally {
      w.G.dispose();
      disposeLowRank(w.generated);
    }
  }

  private sendDueSlices(): void {
    if (!this.plan || !this.socket?.connected) return;
    for (const due of this.schedule.due(this.step)) {
      const sliceId = this.nextSliceId++;
      const W = this.branches.weight(due.slot); // W, not W_eff: the branch is not knowledge of this device
      let factors: LowRank;
      try {
        factors = lowRankSlice(W, due.rank, { seed: (this.opts.seed * 1_000_003 + sliceId) >>> 0 });
      } finally {
        W.dispose();
      }
      const A = factors.A.dataSync() as Float32Array;
      const B = factors.B.dataSync() as Float32Array;
      const msg: SliceMsg = {
        slot: due.slot,
        sliceId,
        step: this.step,
        rank: due.rank,
        A: tensorToWire(A, factors.A.shape),
        B: tensorToWire(B, factors.B.shape),
      };
      // Only a target slot's slices can come back in a transfer.
      const isTarget = this.plan.pairs.some((p) => p.role === 'target' && p.slot === due.slot);
      if (isTarget) this.slices.remember({ sliceId, slot: due.slot, rank: due.rank, step: this.step, factors });
      else disposeLowRank(factors);
      if (this.send(EVENTS.slice, msg, `slice:${due.slot}`)) {
        this.slicesSent += 1;
        this.emit('slice', { slot: due.slot, sliceId, rank: due.rank, step: this.step, pairIds: due.pairIds });
      }
    }
  }

  private evaluate(): void {
    const now = performance.now();
    const elapsed = (now - this.evalClock) / 1000;
    this.stepsPerSec = elapsed > 0 ? this.stepsSinceEval / elapsed : undefined;
    const loss = this.stepsSinceEval > 0 ? this.lossSinceEval / this.stepsSinceEval : (this.lastLoss ?? NaN);
    const valAcc = this.val.n > 0 ? evaluateAccuracy(this.model, this.val) : undefined;
    if (valAcc !== undefined) this.lastValAcc = valAcc;
    const ev: EvalEvent = { step: this.step, loss, valAcc, stepsPerSec: this.stepsPerSec ?? 0 };
    if (this.opts.evalTest && this.test.n > 0) {
      ev.testAcc = evaluateAccuracy(this.model, this.test);
      this.lastTestAcc = ev.testAcc;
    }
    this.lossSinceEval = 0;
    this.stepsSinceEval = 0;
    this.emit('eval', ev);
    if (this.plan && Number.isFinite(loss)) {
      const m: Metrics = { step: this.step, loss };
      if (valAcc !== undefined) m.valAcc = valAcc;
      if (this.stepsPerSec !== undefined && Number.isFinite(this.stepsPerSec)) m.stepsPerSec = this.stepsPerSec;
      this.send(EVENTS.metrics, m);
    }
    // Evaluation time is not training time: restart the clock after it.
    this.evalClock = performance.now();
  }

  /**
   * Emit only on a live connection with a plan (register excepted): socket.io would otherwise
   * buffer the message and deliver it after a reconnect, i.e. into a newer session.
   */
  private send(event: keyof ClientToServerEvents, msg: unknown, wireKey: string = event): boolean {
    const socket = this.socket;
    if (!socket?.connected) return false;
    if (event !== EVENTS.register && !this.plan) return false;
    let buf: Buffer;
    try {
      buf = encodeMessage(msg, { maxBytes: this.maxBytes() });
    } catch (err) {
      this.log.error({ event, err: (err as Error).message }, 'message not sent');
      return false;
    }
    socket.emit(event, buf);
    this.countWire(wireKey, buf);
    return true;
  }

  private countWire(key: string, buf: unknown): void {
    const bytes = buf instanceof Uint8Array ? buf.byteLength : buf instanceof ArrayBuffer ? buf.byteLength : 0;
    const c = (this.wire[key] ??= { messages: 0, bytes: 0 });
    c.messages += 1;
    c.bytes += bytes;
  }

  /**
   * Held-out feedback: before each step, the gradient of the loss on one val batch at the
   * current weights (W_eff, with the branch in), added to every open held-out window of that
   * slot. No training step is taken on val data. Entries of windows that were abandoned go.
   */
  private accumulateHeldout(): void {
    if (this.heldout.size === 0) return;
    for (const id of [...this.heldout.keys()]) if (!this.windows.has(id)) this.dropHeldout(id);
    const layers = new Set([...this.heldout.values()].map((h) => h.layer));
    if (layers.size === 0) return;
    this.heldoutBatches ??= batchIterator(this.val, this.opts.trainer.batchSize, (this.opts.seed + 7919) >>> 0, { epochs: Infinity });
    const next = this.heldoutBatches.next();
    if (next.done) throw new Error('the held-out batch stream ended');
    const { xs, ys } = next.value;
    try {
      for (const layer of layers) {
        const g = this.trainer.gradientOn(xs, ys, layer);
        try {
          for (const h of this.heldout.values()) {
            if (h.layer !== layer) continue;
            const prev = h.G;
            h.G = (prev ? tf.add(prev, g) : tf.clone(g)) as tf.Tensor2D;
            prev?.dispose();
            h.steps += 1;
          }
        } finally {
          g.dispose();
        }
      }
    } finally {
      xs.dispose();
      ys.dispose();
    }
  }

  private dropHeldout(pairId: string): void {
    this.heldout.get(pairId)?.G?.dispose();
    this.heldout.delete(pairId);
  }

  /**
   * Before disconnecting, let the last messages (e.g. the feedback of the final step) leave and be
   * handled: socket.io drops events that the server reads in the same batch as a disconnect.
   */
  private async flushOutgoing(): Promise<void> {
    const socket = this.socket;
    if (!socket?.connected) return;
    const engine = (socket.io as unknown as { engine?: { writeBuffer?: unknown[] } }).engine;
    const deadline = performance.now() + 1000;
    while ((engine?.writeBuffer?.length ?? 0) > 0 && socket.connected && performance.now() < deadline) await sleep(5);
    const linger = this.opts.lingerMs ?? 100;
    if (linger > 0 && socket.connected) await sleep(linger);
  }

  /**
   * Close by closing the transport (a WebSocket close, after the write buffer drained) rather than
   * with socket.io's DISCONNECT packet: a socket.io server handles events on the next tick and
   * drops those it read in the same batch as a DISCONNECT, so a busy coordinator would lose the
   * last feedback. A transport close is seen in a later I/O callback, after those events ran.
   */
  private closeGracefully(socket: Socket<ServerToClientEvents, ClientToServerEvents>): void {
    const manager = socket.io;
    manager.reconnection(false);
    const engine = (manager as unknown as { engine?: { close(): void } }).engine;
    if (socket.connected && engine) engine.close();
    socket.disconnect(); // no packet once the transport is closed; stops any pending reconnect
  }

  private shutdown(): void {
    if (this.stoppedFlag) return;
    this.stoppedFlag = true;
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    if (this.socket) {
      this.socket.removeAllListeners();
      this.closeGracefully(this.socket);
    }
    this.windowsAbandoned += this.windows.abandonAll();
    this.transfers.clear();
    this.plan = undefined;
    this.slices.dispose();
    for (const id of [...this.heldout.keys()]) this.dropHeldout(id);
    // The kernels keep W_eff (the model infers with its knowledge branches); only K is freed.
    this.branches.dispose();
    this.trainer.dispose();
    this.batches?.return?.(undefined);
    this.log.info({ step: this.step, feedbackSent: this.feedbackSent, transfersApplied: this.transfersApplied }, 'device stopped');
    this.emit('stopped', this.status());
  }
}
