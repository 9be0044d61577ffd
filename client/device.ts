// The device client (docs/DESIGN.md §9, docs/PROTOCOL.md): trains its model on its own data without
// ever waiting on the network, and takes part in its pairs' MergeNet cycles over socket.io.
//
// One loop owns the model. Each iteration: apply the transfers that arrived since the last step,
// take one training step, close the feedback windows that reached k steps, send the slices that
// are due, maybe evaluate, then yield to the event loop so socket events are processed. Socket
// handlers only decode, validate and queue; nothing touches the model outside the loop.
//
// The parts, each free of the others' concerns:
// - device-link.ts: the socket.io edge (connection, backoff, decoding, encoding, byte counts);
// - local-training-loop.ts: the steps on local data, slowdown and evaluation;
// - target/: the target side of its pairs' cycles (transfers, branches, windows, feedback) and
//   slice-schedule.ts (when slices are due), without sockets.
// This class composes them and owns what ties them together: the current plan and session.
import type * as tf from '@tensorflow/tfjs';
import { TypedEmitter } from './emitter.js';
import { CodecError, tensorToWire, wireToFloat32 } from '../shared/codec/tensor-codec.js';
import { silentLogger, type Logger } from '../shared/log.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { mulberry32 } from '../shared/math/prng.js';
import { lowRankSlice, SliceHistory } from '../shared/math/slice.js';
import { EVENTS } from '../shared/protocol/events.js';
import {
  describeZodError,
  handshakeSchema,
  registerSchema,
  type Metrics,
  type PlanMsg,
  type PlanPair,
  type RegisterMsg,
  type FeedbackAckMsg,
  type RejectMsg,
  type SliceMsg,
  type TransferMsg,
  type TeacherMsg,
} from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { SliceSchedule } from './slice-schedule.js';
import { checkDeviceOptions } from './device-options.js';
import { OutputChannel, type ProbeLoader } from './target/output-channel.js';
import { FeedbackWindows, HeldoutFeedback, SliceMemory, TransferApplier, TransferQueue, windowFeedback, type ClosedWindow, type SliceMemoryLimits } from './target/index.js';
import type { DeviceData } from './data/dataset.js';
import type { DeviceEvents, DeviceStatus, EvalEvent, IgnoredEvent } from './device-events.js';
import { normalizeCoordinatorUrl } from './coordinator-url.js';
import { CoordinatorUnreachableError, DeviceLink, DeviceRefusedError, type ConnectAttemptFailure, type ReconnectOptions } from './device-link.js';
import { KnowledgeBranches } from './knowledge-branch.js';
import { LocalTrainingLoop } from './local-training-loop.js';
import { listSlots, slotInfo } from './slot.js';
import type { OptimizerName } from './trainer.js';

export type {
  DeviceEvents,
  DeviceStatus,
  EvalEvent,
  FeedbackEvent,
  IgnoredEvent,
  SliceEvent,
  StepEvent,
  TransferEvent,
} from './device-events.js';
export { CoordinatorUnreachableError, DeviceRefusedError, FATAL_HANDSHAKE_CODES, type ConnectAttemptFailure, type ReconnectOptions } from './device-link.js';

export interface DeviceDescription {
  name: string;
  architecture: string;
  task: string;
  modality: string;
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
  /**
   * Give up (start() rejects with CoordinatorUnreachableError) when no connection could be made
   * this many ms after start(). Only the first connection is bounded: a device that was connected
   * and lost the coordinator keeps training and retrying. Default: retry forever (0 too).
   */
  connectTimeoutMs?: number;
  /** Bounds on the slices remembered for transfers still to come (see SliceMemory). */
  sliceMemory?: SliceMemoryLimits;
  /** ms to wait at stop, after the last message left, before disconnecting (default 100). */
  lingerMs?: number;
  /** socket.io path (default "/socket.io"). */
  path?: string;
  /**
   * Pace this device to the coordinator: after sending a target slice, wait (up to this many ms)
   * for each of its target pairs' answer (a transfer or a skip) before the next step. 0 or absent:
   * never wait (the default for a device in the field; simulations use it to make every cycle
   * happen as in the paper's loop).
   */
  paceTimeoutMs?: number;
  /**
   * The input space of the device's examples (e.g. "mnist"), registered so that the coordinator
   * can pair it through the output channel with devices of the same space (protocol 3).
   */
  inputSpace?: string;
  /** How to get a probe split's examples the plan names (the Node device reads shipped corpora). */
  loadProbe?: ProbeLoader;
}

function bump(rec: Record<string, number>, key: string): void {
  rec[key] = (rec[key] ?? 0) + 1;
}

export class DeviceClient extends TypedEmitter<DeviceEvents> {
  readonly deviceId: string;
  private readonly opts: DeviceClientOptions;
  private readonly log: Logger;
  private readonly loop: LocalTrainingLoop;
  private readonly link: DeviceLink;
  private readonly branches: KnowledgeBranches;
  private readonly slices: SliceMemory;
  private readonly schedule = new SliceSchedule();
  /**
   * Per slot: the previous slice's subspace, so the next slice of the slot is warm-started
   * (SliceHistory; cold every 16th slice, after a change of rank, and after W was written).
   */
  private readonly sliceHistories = new Map<string, SliceHistory>();
  private sliceHistoryWrites = 0;
  private readonly windows: FeedbackWindows;
  private readonly transfers = new TransferQueue();
  private readonly applier: TransferApplier;
  private readonly heldout: HeldoutFeedback;
  private readonly output: OutputChannel;
  /** slot name → [m, n] of the slots this device offers */
  private readonly slotShapes = new Map<string, [number, number]>();

  private plan: PlanMsg | undefined;
  private nextSliceId = 0;
  private started = false;
  private stopping = false;
  private stoppedFlag = false;
  private fatal: Error | undefined;
  private everConnected = false;
  private lastConnectFailure: ConnectAttemptFailure | undefined;
  private connectAttempts = 0;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  /** the coordinator URL as used (a missing scheme added) */
  readonly url: string;

  /** `pairId@sliceId` → ms deadline: target slices whose answer the paced loop waits for */
  private readonly awaiting = new Map<string, number>();
  private wakePacer: (() => void) | undefined;
  private skipsReceived: Record<string, number> = {};
  private slicesSent = 0;
  /** draws each slot's phase when a pace comes (seeded: a simulation repeats) */
  private readonly paceRandom: () => number;
  private readonly ignored: Record<string, number> = {};
  private feedbackSent = 0;
  /** feedback_ack received for pairs this device is the target of; the latest adapter step per pair */
  private feedbackAcked = 0;
  private readonly adapterSteps: Record<string, number> = {};
  private windowsAbandoned = 0;
  private readonly rejects: Record<string, number> = {};

  constructor(opts: DeviceClientOptions) {
    super();
    this.opts = opts;
    this.deviceId = opts.deviceId;
    this.paceRandom = mulberry32((opts.seed ^ 0x9e3779b9) >>> 0);
    this.log = (opts.logger ?? silentLogger()).child({ device: opts.deviceId });
    const url = normalizeCoordinatorUrl(opts.url); // throws naming the URL when it cannot work
    if (url.notice) this.log.warn({ url: url.url }, url.notice);
    this.url = url.url;
    const hs = handshakeSchema.safeParse({ deviceId: opts.deviceId, token: opts.token, protocolVersion: PROTOCOL_VERSION });
    if (!hs.success) throw new Error(`device handshake: ${describeZodError(hs.error)}`);
    checkDeviceOptions(opts);
    const names = opts.slots ?? listSlots(opts.model).map((s) => s.layer);
    if (names.length === 0) throw new Error('the model has no layer that can serve as a slot (dense, conv or embedding)');
    for (const name of names) {
      const info = slotInfo(opts.model, name); // throws naming the available slots
      if (this.slotShapes.has(name)) throw new Error(`slot "${name}" is listed twice`);
      this.slotShapes.set(name, info.shape);
    }
    // The registration must be valid before anything connects: the coordinator would refuse it.
    const reg = registerSchema.safeParse(this.registration(0));
    if (!reg.success) throw new Error(`device registration: ${describeZodError(reg.error)}`);
    this.loop = new LocalTrainingLoop(opts.model, opts.data, { ...opts.trainer, seed: opts.seed, evalEvery: opts.evalEvery, evalTest: opts.evalTest ?? false });
    this.branches = new KnowledgeBranches(opts.model);
    this.slices = new SliceMemory(opts.sliceMemory);
    this.windows = new FeedbackWindows(this.loop.trainer);
    this.heldout = new HeldoutFeedback(this.loop.trainer, this.loop.val, opts.trainer.batchSize, opts.seed);
    this.output = new OutputChannel({
      model: opts.model,
      trainer: this.loop.trainer,
      branches: this.branches,
      heldout: this.loop.val,
      train: this.loop.train,
      seed: opts.seed,
      loadProbe: opts.loadProbe,
      events: {
        ignore: (reason, detail, pairId) => this.ignore({ reason, detail, pairId }),
        log: (level, obj, msg) => this.log[level](obj, msg),
      },
    });
    this.applier = new TransferApplier({
      branches: this.branches,
      slices: this.slices,
      windows: this.windows,
      heldout: this.heldout,
      log: this.log,
      ignore: (e) => this.ignore(e),
      applied: (e) => this.emit('transfer', e),
    });
    this.link = new DeviceLink(
      {
        url: this.url,
        path: opts.path,
        deviceId: opts.deviceId,
        token: opts.token,
        reconnect: opts.reconnect,
        lingerMs: opts.lingerMs,
        log: this.log,
        stopping: () => this.stopping,
        plan: () => this.plan,
      },
      {
        connected: (connections) => this.onConnect(connections),
        disconnected: (reason) => this.onDisconnect(reason),
        refused: (err) => this.refused(err),
        connectFailed: (f) => this.onConnectFailed(f),
        plan: (plan) => this.onPlan(plan),
        transfer: (t) => this.onTransfer(t),
        skip: (k) => {
          bump(this.skipsReceived, k.reason);
          this.answered(k.pairId, k.sliceId);
        },
        pace: (p) => {
          if (!this.plan) return; // a pace belongs to a session; one before its plan has none to pace
          this.schedule.setPace(p.sliceIntervalMs, performance.now(), this.paceRandom);
          this.log.info({ sliceIntervalMs: p.sliceIntervalMs }, 'slice pace');
        },
        reject: (r) => this.onReject(r),
        feedbackAck: (a) => this.onFeedbackAck(a),
        teacher: (t) => this.onTeacher(t),
        badMessage: (event, err) => this.ignore({ reason: `bad_${event}`, detail: err.message }),
      },
    );
  }

  /** The slots offered at registration, with their 2-D shapes. */
  slots(): { name: string; shape: [number, number] }[] {
    return [...this.slotShapes].map(([name, shape]) => ({ name, shape: [...shape] as [number, number] }));
  }

  /** The registration message at local step `step`. */
  private registration(step: number): RegisterMsg {
    const msg: RegisterMsg = { deviceId: this.deviceId, model: { ...this.opts.description }, slots: this.slots(), rank: this.opts.rank, step };
    if (this.opts.inputSpace) msg.inputSpace = this.opts.inputSpace;
    const out = this.opts.model.outputs[0]?.shape;
    const classes = out?.[out.length - 1];
    if (typeof classes === 'number' && classes > 0) msg.outputs = classes;
    return msg;
  }

  status(): DeviceStatus {
    return {
      output: this.output.status(),
      deviceId: this.deviceId,
      step: this.loop.step,
      connected: this.link.connected,
      session: this.plan?.session,
      pairs: this.plan ? this.plan.pairs.map((p) => ({ ...p })) : [],
      connections: this.link.connections,
      slicesSent: this.slicesSent,
      sliceStarts: [...this.sliceHistories.values()].reduce(
        (t, h) => ({ cold: t.cold + h.counts.cold, warm: t.warm + h.counts.warm, fallback: t.fallback + h.counts.fallback }),
        { cold: 0, warm: 0, fallback: 0 },
      ),
      transfersReceived: this.link.transfersReceived,
      transfersApplied: this.applier.count,
      joined: [...this.applier.joined],
      ignored: { ...this.ignored },
      feedbackSent: this.feedbackSent,
      feedbackAcked: this.feedbackAcked,
      adapterSteps: { ...this.adapterSteps },
      windowsAbandoned: this.windowsAbandoned,
      openWindows: this.windows.size,
      branches: this.stoppedFlag ? [] : this.branches.pairs(),
      slicesRemembered: this.slices.size,
      slicesEvicted: this.slices.evicted,
      rejects: { ...this.rejects },
      skips: { ...this.skipsReceived },
      slicePace: { intervalMs: this.schedule.pace, deferred: this.schedule.deferred },
      loss: this.loop.lastLoss,
      valAcc: this.loop.lastValAcc,
      testAcc: this.loop.lastTestAcc,
      stepsPerSec: this.loop.stepsPerSec,
      stopped: this.stoppedFlag,
      wire: Object.fromEntries(Object.entries(this.link.wire).map(([k, v]) => [k, { ...v }])),
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
    const limit = this.opts.connectTimeoutMs ?? 0;
    if (limit > 0) {
      this.connectTimer = setTimeout(() => {
        if (this.everConnected || this.stopping) return;
        this.fatal = new CoordinatorUnreachableError(this.url, limit, this.connectAttempts, this.lastConnectFailure);
        this.stopping = true;
      }, limit);
      (this.connectTimer as { unref?: () => void }).unref?.(); // Node: do not keep the process alive
    }
    this.link.connect();
    let failure: unknown;
    try {
      await this.loop.run(
        {
          proceed: () => !this.stopping && !this.fatal,
          pace: () => this.paceWait(),
          beforeStep: () => {
            this.applier.apply(this.transfers.drain(), this.plan, this.loop.step);
            this.output.beforeStep(this.plan, this.loop.step);
            this.heldout.accumulate(this.windows);
          },
          afterStep: (loss) => {
            this.windows.afterStep(loss);
            this.emit('step', { step: this.loop.step, loss });
            this.sendReadyFeedback();
            this.sendDueSlices();
            this.sendOutputChannel();
          },
          evaluated: (ev) => this.onEvaluated(ev),
        },
        this.opts.maxSteps,
        this.opts.slowdown,
      );
    } catch (err) {
      failure = err;
    } finally {
      if (!this.fatal) await this.link.flushOutgoing().catch(() => undefined);
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
    this.link.dropConnection();
  }

  // ------------------------------------------------------------------------------------------
  // sessions: a connection, then the plan it brought

  private onConnect(connections: number): void {
    this.everConnected = true;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.endSession('new connection');
    this.log.info({ connections, step: this.loop.step }, 'connected; registering');
    this.emit('connect', { connections });
    this.link.send(EVENTS.register, this.registration(this.loop.step));
  }

  private onDisconnect(reason: string): void {
    const { windows, transfers } = this.endSession(reason);
    this.awaiting.clear();
    this.wakePacer?.();
    this.log.warn({ reason, step: this.loop.step, abandonedWindows: windows, droppedTransfers: transfers }, 'disconnected');
    this.emit('disconnect', { reason, abandonedWindows: windows, droppedTransfers: transfers });
  }

  private onConnectFailed(f: ConnectAttemptFailure): void {
    this.lastConnectFailure = f;
    this.connectAttempts += 1;
    this.emit('unreachable', f);
  }

  private refused(err: DeviceRefusedError): void {
    this.fatal = err;
    this.stopping = true;
  }

  /** Forget the current session: its windows and queued transfers can never produce feedback. */
  private endSession(why: string): { windows: number; transfers: number } {
    const windows = this.windows.abandonAll();
    const transfers = this.transfers.clear();
    const trials = this.output.endSession();
    this.windowsAbandoned += windows + trials;
    if (transfers) this.ignored.session_ended = (this.ignored.session_ended ?? 0) + transfers;
    if (this.plan) this.log.debug({ session: this.plan.session, why }, 'session ended');
    this.plan = undefined;
    this.schedule.clear();
    // Transfers of the old session will never be applied: their slices can go.
    this.slices.clear();
    this.applier.forgetSession();
    return { windows, transfers };
  }

  // ------------------------------------------------------------------------------------------
  // inbound messages, already decoded by the link (check against the plan and queue; never touch
  // the model here)

  private onPlan(plan: PlanMsg): void {
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
    // Output pairs exchange logits, not slices: they have their own cadence (OutputChannel).
    this.schedule.setPlan(pairs.filter((p) => p.channel !== 'output' && (p.role === 'source' || p.role === 'target')), this.loop.step, sameSession);
    this.output.setProbe(plan.probe);
    // Branches are model state, changed only between steps: removals happen at the next step.
    this.log.info(
      { session: plan.session, pairs: pairs.map((p) => `${p.pairId}:${p.role}:${p.slot}`), step: this.loop.step },
      'plan received',
    );
    this.emit('plan', this.plan);
  }

  /** A target slice got its answer for one pair: the paced loop may go on once all have. */
  private answered(pairId: string, sliceId: number): void {
    if (this.awaiting.delete(`${pairId}@${sliceId}`) && this.awaiting.size === 0) this.wakePacer?.();
  }

  /**
   * The paced loop's wait before a step: until every awaited answer came, the earliest deadline
   * passed, or the connection dropped. Undefined (no wait) when nothing is awaited.
   */
  private paceWait(): Promise<void> | undefined {
    if (this.awaiting.size === 0) return undefined;
    if (!this.link.connected || this.stopping) {
      this.awaiting.clear();
      return undefined;
    }
    const deadline = Math.min(...this.awaiting.values());
    const ms = Math.max(0, deadline - performance.now());
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakePacer = undefined;
        // Answers that did not come in time are not waited for again.
        const now = performance.now();
        for (const [k, d] of this.awaiting) if (d <= now) this.awaiting.delete(k);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakePacer = done;
    });
  }

  private onTransfer(t: TransferMsg): void {
    this.answered(t.pairId, t.sliceId);
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
    this.transfers.push({
      session: plan.session,
      pairId: t.pairId,
      cycleId: t.cycleId,
      sliceId: t.sliceId,
      slot: t.slot,
      adapterStep: t.adapterStep,
      gate: t.gate,
      A,
      B,
    });
  }

  private onTeacher(t: TeacherMsg): void {
    this.answered(t.pairId, t.requestId);
    const plan = this.plan;
    if (!plan) return this.ignore({ reason: 'no_plan', pairId: t.pairId, cycleId: t.cycleId });
    const pair = plan.pairs.find((p) => p.pairId === t.pairId);
    if (!pair || pair.role !== 'target' || pair.channel !== 'output') {
      return this.ignore({ reason: 'not_an_output_target_pair', pairId: t.pairId, cycleId: t.cycleId });
    }
    const count = this.output.probeCount;
    const classes = this.output.classes;
    let values: Float32Array;
    try {
      values = wireToFloat32(t.values, { name: 'teacher.values', shape: [count, classes] }).values;
    } catch (err) {
      if (err instanceof CodecError) return this.ignore({ reason: `teacher_${err.code}`, pairId: t.pairId, cycleId: t.cycleId, detail: err.message });
      throw err;
    }
    this.output.push({ session: plan.session, pairId: t.pairId, cycleId: t.cycleId, phase: t.phase, gate: t.gate, sourceStep: t.sourceStep, values, classes });
  }

  private onReject(r: RejectMsg): void {
    bump(this.rejects, r.code);
    this.log.warn({ code: r.code, reason: r.reason, event: r.event, ref: r.ref }, 'coordinator rejected a message');
    this.emit('reject', r);
    // A refused registration leaves the device without a plan for good; retrying the same
    // message would be refused again.
    if (r.event === EVENTS.register && r.code !== 'internal') this.refused(new DeviceRefusedError(r.code, r.reason));
  }

  /** An ack counts only for a pair this device is the target of in its current plan. */
  private onFeedbackAck(a: FeedbackAckMsg): void {
    const pair = this.plan?.pairs.find((p) => p.pairId === a.pairId);
    if (!pair || pair.role !== 'target') {
      this.ignore({ reason: 'ack_unknown_pair', pairId: a.pairId, cycleId: a.cycleId });
      return;
    }
    this.feedbackAcked += 1;
    this.adapterSteps[a.pairId] = a.adapterStep;
  }

  private ignore(e: IgnoredEvent): void {
    bump(this.ignored, e.reason);
    this.log.warn(e, 'ignored an inbound message');
    this.emit('ignored', e);
  }

  // ------------------------------------------------------------------------------------------
  // outbound: what the loop produced after a step

  private sendReadyFeedback(): void {
    const ready = this.windows.takeReady();
    if (ready.length === 0) return;
    // One evaluation serves every feedback of this step.
    const valAcc = this.loop.valAccuracy();
    for (const w of ready) this.sendFeedback(w, valAcc);
  }

  private sendFeedback(w: ClosedWindow, valAcc: number | undefined): void {
    try {
      if (!this.plan || this.plan.session !== w.session || !this.link.connected) {
        this.windowsAbandoned += 1;
        return;
      }
      const held = this.heldout.take(w.pairId);
      const metrics: Metrics = { step: this.loop.step, loss: w.meanLoss };
      if (valAcc !== undefined) metrics.valAcc = valAcc;
      const trainAcc = this.loop.trainAcc;
      if (trainAcc !== undefined) metrics.trainAcc = trainAcc;
      if (this.loop.stepsPerSec !== undefined) metrics.stepsPerSec = this.loop.stepsPerSec;
      const fb = windowFeedback(w, held, metrics);
      if (!fb.valid) {
        this.log.error({ pairId: w.pairId, cycleId: w.cycleId }, 'feedback is not finite or not valid; not sent');
        this.windowsAbandoned += 1;
        return;
      }
      if (!this.link.send(EVENTS.feedback, fb.msg, `feedback:${w.pairId}`)) {
        this.windowsAbandoned += 1;
        return;
      }
      this.feedbackSent += 1;
      this.emit('feedback', {
        pairId: w.pairId,
        cycleId: w.cycleId,
        slot: w.layer,
        step: this.loop.step,
        steps: fb.msg.steps,
        scale: w.scale,
        gate: w.gate,
        gateGrad: fb.gateGrad,
        loss: w.meanLoss,
        valAcc,
        gANorm: fb.gANorm,
        gBNorm: fb.gBNorm,
        feedback: held ? 'heldout' : 'train',
      });
    } finally {
      w.G.dispose();
      w.delta?.dispose();
      disposeLowRank(w.generated);
    }
  }

  private sendDueSlices(): void {
    if (!this.plan || !this.link.connected) return;
    const step = this.loop.step;
    if (this.branches.weightWrites !== this.sliceHistoryWrites) {
      // W jumped (join-time transfer, a kept readout): no previous subspace is a safe start.
      for (const h of this.sliceHistories.values()) h.reset();
      this.sliceHistoryWrites = this.branches.weightWrites;
    }
    for (const due of this.schedule.due(step, performance.now())) {
      const sliceId = this.nextSliceId++;
      const W = this.branches.weight(due.slot); // W, not W_eff: the branch is not knowledge of this device
      let history = this.sliceHistories.get(due.slot);
      if (!history) this.sliceHistories.set(due.slot, (history = new SliceHistory()));
      let factors: LowRank;
      try {
        factors = lowRankSlice(W, due.rank, { seed: (this.opts.seed * 1_000_003 + sliceId) >>> 0, history });
      } finally {
        W.dispose();
      }
      const A = factors.A.dataSync() as Float32Array;
      const B = factors.B.dataSync() as Float32Array;
      const msg: SliceMsg = {
        slot: due.slot,
        sliceId,
        step,
        rank: due.rank,
        A: tensorToWire(A, factors.A.shape),
        B: tensorToWire(B, factors.B.shape),
      };
      // Only a target slot's slices can come back in a transfer.
      const isTarget = this.plan.pairs.some((p) => p.role === 'target' && p.slot === due.slot);
      if (isTarget) this.slices.remember({ sliceId, slot: due.slot, rank: due.rank, step, factors });
      else disposeLowRank(factors);
      if (this.link.send(EVENTS.slice, msg, `slice:${due.slot}`)) {
        this.slicesSent += 1;
        const pace = this.opts.paceTimeoutMs ?? 0;
        if (pace > 0 && isTarget) {
          // The coordinator answers a target slice once per target pair of the slot.
          const deadline = performance.now() + pace;
          for (const p of this.plan.pairs) if (p.role === 'target' && p.slot === due.slot) this.awaiting.set(`${p.pairId}@${sliceId}`, deadline);
        }
        this.emit('slice', { slot: due.slot, sliceId, rank: due.rank, step, pairIds: due.pairIds });
      }
    }
  }

  /** The output channel's messages due after this step: trial feedback, logits, teacher requests. */
  private sendOutputChannel(): void {
    if (!this.plan || !this.link.connected || !this.output.ready) return;
    const step = this.loop.step;
    const metrics: Metrics = { step, loss: this.loop.lastLoss ?? 0 };
    const trainAcc = this.loop.trainAcc;
    if (trainAcc !== undefined) metrics.trainAcc = trainAcc;
    for (const fb of this.output.takeReadyFeedback(step, metrics)) {
      if (this.link.send(EVENTS.teacherFeedback, fb, `teacher_feedback:${fb.pairId}`)) this.feedbackSent += 1;
      else this.windowsAbandoned += 1;
    }
    const logits = this.output.logitsDue(this.plan, step);
    if (logits) this.link.send(EVENTS.logits, logits, 'logits');
    const pace = this.opts.paceTimeoutMs ?? 0;
    for (const req of this.output.requestsDue(this.plan, step)) {
      if (this.link.send(EVENTS.teacherRequest, req, `teacher_request:${req.pairId}`) && pace > 0) {
        this.awaiting.set(`${req.pairId}@${req.requestId}`, performance.now() + pace);
      }
    }
  }

  private onEvaluated(ev: EvalEvent): void {
    this.emit('eval', ev);
    const stepsPerSec = this.loop.stepsPerSec;
    if (this.plan && Number.isFinite(ev.loss)) {
      const m: Metrics = { step: ev.step, loss: ev.loss };
      if (ev.valAcc !== undefined) m.valAcc = ev.valAcc;
      if (stepsPerSec !== undefined && Number.isFinite(stepsPerSec)) m.stepsPerSec = stepsPerSec;
      this.link.send(EVENTS.metrics, m);
    }
  }

  private shutdown(): void {
    if (this.stoppedFlag) return;
    this.stoppedFlag = true;
    this.stopping = true;
    // A pending connect deadline would keep the process alive after the device stopped.
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.link.close();
    this.windowsAbandoned += this.windows.abandonAll();
    this.transfers.clear();
    this.plan = undefined;
    this.slices.dispose();
    this.heldout.dropAll();
    this.output.dispose();
    // The kernels keep W_eff (the model infers with its knowledge branches); only K is freed.
    this.branches.dispose();
    this.loop.close();
    this.log.info({ step: this.loop.step, feedbackSent: this.feedbackSent, transfersApplied: this.applier.count }, 'device stopped');
    this.emit('stopped', this.status());
  }
}
