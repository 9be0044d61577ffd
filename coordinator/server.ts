// The coordinator at the edge: socket.io wiring, the handshake, and one handler per inbound event.
// Every handler validates its message completely (decode, schema, semantics, tensors) before it
// changes anything; a refused message gets a `reject` to its sender only, and is counted. The
// cycle of DESIGN.md §2 runs per pair: target slice + latest source slice → adapter → transfer →
// feedback → update.
import { EventEmitter } from 'node:events';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as tf from '@tensorflow/tfjs';
import { Server, type Socket } from 'socket.io';
import type { z } from 'zod';
import { CodecError, decodeMessage, encodeMessage, tensorToWire, wireToFloat32 } from '../shared/codec/tensor-codec.js';
import { createLogger, type Logger } from '../shared/log.js';
import type { LowRank } from '../shared/math/low-rank.js';
import { disposeLowRank } from '../shared/math/low-rank.js';
import { ERROR_CODES, ProtocolError, type ErrorCode } from '../shared/protocol/errors.js';
import { EVENTS, type ClientToServerEvents, type ServerToClientEvents } from '../shared/protocol/events.js';
import {
  describeZodError,
  feedbackSchema,
  handshakeSchema,
  metricsSchema,
  registerSchema,
  sliceSchema,
  type PlanMsg,
  type PlanPair,
  type RejectMsg,
  type TransferMsg,
} from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { initBackend } from '../shared/tf/backend.js';
import { Checkpointer, CheckpointError, type CheckpointPair } from './checkpoint.js';
import { hash32, type CoordinatorConfig, type PairConfig } from './config.js';
import { Pair, type CycleDropReason, type SkipReason } from './pair.js';
import { Registry, type StoredSlice } from './registry.js';
import { buildStatus, statusLogFields, type StatusSnapshot } from './status.js';

/**
 * socket.io's own limit, as a multiple of ours. The transport closes the connection, silently for
 * the sender, on a message above maxHttpBufferSize (its default is 1e6 bytes). Setting it a few
 * times above limits.maxMessageBytes lets oversize messages up to that size reach our decoder,
 * which answers with a proper `oversize` reject and keeps the connection (above it, socket.io
 * closes the connection; the client sees a disconnect). The long-polling
 * transport also base64-encodes binary (×4/3), which this margin covers.
 */
export const TRANSPORT_LIMIT_FACTOR = 4;

export interface ServeOptions {
  logger?: Logger;
  /** tfjs backend (see shared/tf/backend.ts); default: auto */
  backend?: string;
}

export interface UpdateEvent {
  pairId: string;
  cycleId: number;
  /** adapter step after this update */
  step: number;
  gradNorm: number;
  clipped: boolean;
}

export interface DropEvent {
  code: ErrorCode;
  reason: string;
  /** the refused event, 'handshake', or 'cycle' for a cycle abandoned by the coordinator */
  event: string;
  deviceId?: string;
  pairId?: string;
  cycleId?: number;
}

export interface CycleEvent {
  pairId: string;
  cycleId: number;
  sliceId: number;
  targetDevice: string;
  sourceMode: 'real' | 'noise';
  adapterStep: number;
}

export interface CoordinatorEvents {
  update: [UpdateEvent];
  drop: [DropEvent];
  cycle: [CycleEvent];
  register: [{ deviceId: string; session: string }];
  connect: [{ deviceId: string; session: string }];
  disconnect: [{ deviceId: string; session: string; reason: string }];
  checkpoint: [{ generation: number; updates: number }];
}

export interface RunningCoordinator {
  /** http://HOST:PORT (127.0.0.1 when listening on every interface) */
  readonly url: string;
  readonly port: number;
  readonly config: CoordinatorConfig;
  status(): StatusSnapshot;
  /** Write a checkpoint now (a no-op without checkpoint.dir). */
  checkpoint(): Promise<void>;
  /** Checkpoint, stop the socket.io and http servers, and dispose every tensor. Idempotent. */
  close(): Promise<void>;
  /** Serialized adapter state of a pair (undefined before its adapter exists). */
  exportAdapterState(pairId: string): Uint8Array | undefined;
  on<E extends keyof CoordinatorEvents>(event: E, cb: (...args: CoordinatorEvents[E]) => void): this;
  once<E extends keyof CoordinatorEvents>(event: E, cb: (...args: CoordinatorEvents[E]) => void): this;
  off<E extends keyof CoordinatorEvents>(event: E, cb: (...args: CoordinatorEvents[E]) => void): this;
}

interface SocketData {
  deviceId: string;
  session: string;
}

type CoordSocket = Socket<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData>;

/** What a handler knows about the message it is processing, for the reject it may send. */
interface Ctx {
  socket: CoordSocket;
  deviceId: string;
  session: string;
  event: string;
  ref: NonNullable<RejectMsg['ref']>;
  now: number;
}

function fail(code: ErrorCode, reason: string): never {
  throw new ProtocolError(code, reason);
}

function parseWith<T extends z.ZodType>(schema: T, raw: unknown, what: string): z.infer<T> {
  const res = schema.safeParse(raw);
  if (!res.success) fail('invalid_message', `${what}: ${describeZodError(res.error)}`);
  return res.data;
}

/** The first r columns of A and rows of B, as new tensors (the caller owns them). */
function truncate(s: StoredSlice, r: number): LowRank {
  return tf.tidy(() => {
    if (s.rank === r) return { A: tf.clone(s.A), B: tf.clone(s.B) };
    return { A: tf.slice(s.A, [0, 0], [s.A.shape[0], r]), B: tf.slice(s.B, [0, 0], [r, s.B.shape[1]]) };
  });
}

function minDim(shape: [number, number] | undefined): number {
  return shape ? Math.min(shape[0], shape[1]) : Infinity;
}

class Coordinator extends EventEmitter implements RunningCoordinator {
  url = '';
  port = 0;
  private readonly registry: Registry;
  private readonly pairs = new Map<string, Pair>();
  /** checkpointed pairs not (yet) recreated in this run: auto pairs wait for their devices */
  private readonly pendingRestore = new Map<string, CheckpointPair>();
  private readonly drops: Record<string, number> = {};
  private readonly deviceRejects = new Map<string, Record<string, number>>();
  private readonly checkpointer?: Checkpointer;
  private totalUpdates = 0;
  private readonly startedAt = Date.now();
  private http?: HttpServer;
  private io?: Server<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData>;
  private timers: NodeJS.Timeout[] = [];
  private closing?: Promise<void>;
  /** Set once restore() succeeded: only then may close() write a checkpoint (never over one it failed to read). */
  private restored = false;

  constructor(
    readonly config: CoordinatorConfig,
    private readonly log: Logger,
  ) {
    super();
    this.registry = new Registry(config.devices);
    for (const pc of config.pairs) this.pairs.set(pc.id, new Pair(pc));
    if (config.checkpoint.dir) this.checkpointer = new Checkpointer(config.checkpoint.dir);
  }

  // ---------------------------------------------------------------- start, stop, checkpoints

  /** Restore adapters and counters from checkpoint.dir, if it holds a checkpoint. */
  async restore(): Promise<void> {
    if (!this.checkpointer) {
      this.restored = true;
      return;
    }
    const loaded = await this.checkpointer.load();
    if (!loaded) {
      this.log.info({ dir: this.checkpointer.dir }, 'no checkpoint to restore; starting fresh');
      this.restored = true;
      return;
    }
    for (const saved of loaded.pairs) {
      const pair = this.pairs.get(saved.id);
      if (!pair) {
        if (saved.auto) {
          const autoRank = Math.min(this.config.defaults.rank, this.config.limits.maxRank);
          if (saved.state && saved.rank > autoRank) {
            throw new CheckpointError(`checkpoint auto pair ${saved.id} has an adapter of rank ${saved.rank}, above defaults.rank ${autoRank}`);
          }
          this.pendingRestore.set(saved.id, saved);
        }
        else this.log.warn({ pairId: saved.id }, 'checkpointed pair is no longer in the config; its state is not carried forward');
        continue;
      }
      this.restorePair(pair, saved);
    }
    this.totalUpdates = loaded.totals.updates;
    this.restored = true;
    this.log.info(
      { dir: this.checkpointer.dir, generation: loaded.generation, savedAt: loaded.savedAt, pairs: loaded.pairs.map((p) => ({ id: p.id, step: p.adapterStep })) },
      'restored checkpoint',
    );
  }

  private restorePair(pair: Pair, saved: CheckpointPair): void {
    const same = (a: { device: string; slot: string }, b: { device: string; slot: string }) => a.device === b.device && a.slot === b.slot;
    if (!same(pair.source, saved.source) || !same(pair.target, saved.target)) {
      throw new CheckpointError(
        `checkpoint pair ${saved.id} links ${saved.source.device}.${saved.source.slot} → ${saved.target.device}.${saved.target.slot}, ` +
          `but the config links ${pair.source.device}.${pair.source.slot} → ${pair.target.device}.${pair.target.slot}: ` +
          'give the pair another id, or use another checkpoint.dir',
      );
    }
    if (saved.state && saved.rank > pair.config.rank) {
      throw new CheckpointError(`checkpoint pair ${saved.id} has an adapter of rank ${saved.rank}, above the configured rank ${pair.config.rank}`);
    }
    pair.restore(saved);
    if (pair.adapterStep !== saved.adapterStep) {
      throw new CheckpointError(`checkpoint pair ${saved.id}: the manifest says adapter step ${saved.adapterStep}, its state file ${pair.adapterStep}`);
    }
  }

  async listen(): Promise<void> {
    const { host, port, limits } = this.config;
    this.http = createServer();
    this.io = new Server(this.http, {
      maxHttpBufferSize: TRANSPORT_LIMIT_FACTOR * limits.maxMessageBytes,
      serveClient: false,
    });
    this.io.use((socket, next) => this.authenticate(socket as CoordSocket, next));
    this.io.on('connection', (socket) => this.onConnection(socket as CoordSocket));
    await new Promise<void>((resolve, reject) => {
      this.http!.once('error', reject);
      this.http!.listen(port, host, () => {
        this.http!.off('error', reject);
        resolve();
      });
    });
    this.port = (this.http.address() as AddressInfo).port;
    const shownHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
    this.url = `http://${shownHost}:${this.port}`;

    // Sweep expired cycles so a dead target's remembered input is freed and counted promptly.
    const sweepMs = Math.min(5000, Math.max(50, Math.floor(this.config.timing.cycleTimeoutMs / 4)));
    this.timers.push(setInterval(() => this.sweep(), sweepMs).unref());
    if (this.config.statusEveryMs > 0) {
      this.timers.push(setInterval(() => this.log.info(statusLogFields(this.status()), 'status'), this.config.statusEveryMs).unref());
    }
    this.log.info(
      { url: this.url, devices: this.config.devices.map((d) => d.id), pairs: [...this.pairs.keys()], autoPair: this.config.autoPair.enabled, checkpointDir: this.config.checkpoint.dir },
      'coordinator listening',
    );
  }

  status(): StatusSnapshot {
    return buildStatus({
      url: this.url,
      startedAt: this.startedAt,
      now: Date.now(),
      devices: this.registry.all(),
      deviceRejects: this.deviceRejects,
      pairs: [...this.pairs.values()],
      drops: this.drops,
    });
  }

  exportAdapterState(pairId: string): Uint8Array | undefined {
    return this.pairs.get(pairId)?.exportState();
  }

  async checkpoint(): Promise<void> {
    if (!this.checkpointer || !this.restored) return;
    // Serialize every adapter now, synchronously, so the checkpoint is one consistent instant.
    const pairs = [...this.pairs.values()].map((p) => p.snapshot());
    for (const saved of this.pendingRestore.values()) pairs.push(saved);
    const updates = this.totalUpdates;
    const cyclesStarted = [...this.pairs.values()].reduce((a, p) => a + p.counters.cyclesStarted, 0);
    const generation = await this.checkpointer.save({ totals: { updates, cyclesStarted }, pairs });
    this.log.info({ dir: this.checkpointer.dir, generation, updates }, 'checkpoint written');
    this.emit('checkpoint', { generation, updates });
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    let checkpointError: unknown;
    try {
      await this.checkpoint();
    } catch (err) {
      checkpointError = err;
      this.log.error({ err }, 'checkpoint on close failed');
    }
    if (this.io) {
      // io.close() disconnects every socket and closes the http server.
      await new Promise<void>((resolve) => this.io!.close(() => resolve()));
    }
    for (const p of this.pairs.values()) p.dispose();
    this.registry.dispose();
    this.log.info({ url: this.url }, 'coordinator closed');
    if (checkpointError) throw checkpointError;
  }

  // ---------------------------------------------------------------- handshake and connections

  /**
   * Handshake (socket.io middleware). auth = {deviceId, token, protocolVersion}. Refusals arrive at
   * the client as `connect_error` with `data = {code, reason}`: unauthorized (no token),
   * invalid_message (auth malformed), protocol_version, unknown_device, bad_token.
   */
  private authenticate(socket: CoordSocket, next: (err?: Error) => void): void {
    const refuse = (code: ErrorCode, reason: string, deviceId?: string) => {
      this.countDrop(code);
      this.log.warn({ code, reason, deviceId, address: socket.handshake.address }, 'handshake refused');
      this.emit('drop', { code, reason, event: 'handshake', deviceId });
      const err = new Error(reason) as Error & { data?: unknown };
      err.data = { code, reason };
      next(err);
    };
    try {
      const auth = socket.handshake.auth as Record<string, unknown> | undefined;
      const deviceId = typeof auth?.deviceId === 'string' ? auth.deviceId : undefined;
      if (!auth || auth.token === undefined || auth.token === null || auth.token === '') {
        return refuse('unauthorized', 'no token in the handshake (auth.token)', deviceId);
      }
      const res = handshakeSchema.safeParse(auth);
      if (!res.success) return refuse('invalid_message', `handshake auth: ${describeZodError(res.error)}`, deviceId);
      const hs = res.data;
      if (hs.protocolVersion !== PROTOCOL_VERSION) {
        return refuse('protocol_version', `protocol version ${hs.protocolVersion} is not supported; this coordinator speaks ${PROTOCOL_VERSION}`, hs.deviceId);
      }
      const auth2 = this.registry.authenticate(hs.deviceId, hs.token);
      if (!auth2.ok) return refuse(auth2.code, auth2.reason, hs.deviceId);
      socket.data.deviceId = hs.deviceId;
      next();
    } catch (err) {
      this.log.error({ err }, 'handshake failed');
      refuse('internal', 'the coordinator failed to check the handshake');
    }
  }

  /**
   * A new, authenticated connection: a fresh session. An older connection of the same device is
   * disconnected, and its in-flight cycles (as a target) are dropped as session_replaced.
   */
  private onConnection(socket: CoordSocket): void {
    try {
      this.acceptConnection(socket);
    } catch (err) {
      this.log.error({ err, deviceId: socket.data.deviceId }, 'could not set up the connection');
      socket.disconnect(true);
    }
  }

  private acceptConnection(socket: CoordSocket): void {
    const deviceId = socket.data.deviceId;
    const now = Date.now();
    const { session, previousSocketId } = this.registry.connect(deviceId, socket.id, now);
    socket.data.session = session;
    if (previousSocketId) {
      this.log.info({ deviceId, previousSocketId }, 'device reconnected; disconnecting its previous connection');
      this.io?.sockets.sockets.get(previousSocketId)?.disconnect(true);
    }
    for (const pair of this.pairs.values()) {
      if (pair.target.device === deviceId && pair.inFlight && pair.inFlight.session !== session) this.dropCycle(pair, 'session_replaced');
    }
    this.log.info({ deviceId, session, address: socket.handshake.address }, 'device connected');
    this.emit('connect', { deviceId, session });

    socket.on(EVENTS.register, (p) => this.handle(socket, EVENTS.register, p, (ctx, raw) => this.onRegister(ctx, raw)));
    socket.on(EVENTS.slice, (p) => this.handle(socket, EVENTS.slice, p, (ctx, raw) => this.onSlice(ctx, raw)));
    socket.on(EVENTS.feedback, (p) => this.handle(socket, EVENTS.feedback, p, (ctx, raw) => this.onFeedback(ctx, raw)));
    socket.on(EVENTS.metrics, (p) => this.handle(socket, EVENTS.metrics, p, (ctx, raw) => this.onMetrics(ctx, raw)));
    socket.on('disconnect', (reason) => this.onDisconnect(socket, reason));
  }

  /**
   * A socket closed. The device is marked disconnected (if this was its current socket); its
   * in-flight cycles stay until their deadline or until it reconnects. Other pairs go on.
   */
  private onDisconnect(socket: CoordSocket, reason: string): void {
    const { deviceId, session } = socket.data;
    if (this.registry.disconnect(deviceId, socket.id, Date.now())) {
      this.log.info({ deviceId, session, reason }, 'device disconnected');
      this.emit('disconnect', { deviceId, session, reason });
    }
  }

  /**
   * Common frame of every inbound event: session check, decode under the size limit, then the
   * handler. Any failure becomes a `reject` to this socket only; an unexpected exception becomes
   * `internal` and never escapes to socket.io (which would take the process down).
   */
  private handle(socket: CoordSocket, event: string, payload: unknown, fn: (ctx: Ctx, raw: unknown) => void): void {
    if (this.closing) return;
    const ctx: Ctx = { socket, deviceId: socket.data.deviceId, session: socket.data.session, event, ref: {}, now: Date.now() };
    try {
      this.registry.touch(ctx.deviceId, ctx.now);
      if (this.registry.get(ctx.deviceId)?.session !== ctx.session) {
        fail('session_replaced', 'this connection was replaced by a newer one of the same device');
      }
      const raw = decodeMessage(payload, { maxBytes: this.config.limits.maxMessageBytes });
      fn(ctx, raw);
    } catch (err) {
      if (err instanceof ProtocolError) this.reject(ctx, err.code, err.reason);
      else if (err instanceof CodecError) this.reject(ctx, err.code, err.message);
      else {
        this.log.error({ err, deviceId: ctx.deviceId, event }, 'handler failed');
        this.reject(ctx, 'internal', `the coordinator failed to process this ${event}: ${(err as Error)?.message ?? String(err)}`);
      }
    }
  }

  /** Send `reject` to the message's sender and count the drop (globally, per device, per pair). */
  private reject(ctx: Ctx, code: ErrorCode, reason: string): void {
    this.countDrop(code);
    const perDevice = this.deviceRejects.get(ctx.deviceId) ?? {};
    perDevice[code] = (perDevice[code] ?? 0) + 1;
    this.deviceRejects.set(ctx.deviceId, perDevice);
    const pair = ctx.ref.pairId !== undefined ? this.pairs.get(ctx.ref.pairId) : undefined;
    if (pair && pair.target.device === ctx.deviceId) pair.countDrop(code);
    const ref = Object.keys(ctx.ref).length ? ctx.ref : undefined;
    const msg: RejectMsg = { code, reason, event: ctx.event, ref };
    this.log.warn({ deviceId: ctx.deviceId, event: ctx.event, code, reason, ref }, 'message rejected');
    try {
      ctx.socket.emit(EVENTS.reject, encodeMessage(msg));
    } catch (err) {
      this.log.error({ err }, 'could not send reject');
    }
    this.emit('drop', { code, reason, event: ctx.event, deviceId: ctx.deviceId, pairId: ctx.ref.pairId, cycleId: ctx.ref.cycleId });
  }

  private countDrop(code: string): void {
    this.drops[code] = (this.drops[code] ?? 0) + 1;
  }

  /**
   * The device's registration, which must come from this session: a reconnecting device registers
   * again (and so learns its new session's plan) before anything else. Earlier registrations are
   * kept only so that its peers' plans and ranks stay known while it is away.
   */
  private registrationOf(ctx: Ctx) {
    const reg = this.registry.get(ctx.deviceId)?.registration;
    if (!reg || reg.session !== ctx.session) fail('not_registered', 'send register (on this connection) and wait for plan first');
    return reg;
  }

  // ---------------------------------------------------------------- register and plans

  /**
   * `register` {deviceId, model, slots, rank, step}. The deviceId must be the authenticated one
   * (else spoofed_device); slot names unique; rank ≤ limits.maxRank. Records the device, creates
   * auto pairs, fixes pair ranks and adapters where both slots are now known, and answers `plan`
   * (and sends updated plans to other connected devices whose plan changed).
   */
  private onRegister(ctx: Ctx, raw: unknown): void {
    const msg = parseWith(registerSchema, raw, 'register');
    if (msg.deviceId !== ctx.deviceId) {
      fail('spoofed_device', `register names device "${msg.deviceId}" but this connection authenticated as "${ctx.deviceId}"`);
    }
    const names = new Set<string>();
    msg.slots.forEach((s, i) => {
      if (names.has(s.name)) fail('invalid_message', `register: slots[${i}].name: duplicate slot "${s.name}"`);
      names.add(s.name);
    });
    if (msg.rank > this.config.limits.maxRank) {
      fail('rank_out_of_bounds', `register: rank ${msg.rank} is above the coordinator limit ${this.config.limits.maxRank}`);
    }
    this.registry.register(ctx.deviceId, msg, ctx.session, ctx.now);
    if (this.config.autoPair.enabled) this.createAutoPairs();
    for (const pair of this.pairs.values()) {
      if (pair.source.device === ctx.deviceId || pair.target.device === ctx.deviceId) this.refreshPair(pair);
    }
    this.log.info(
      { deviceId: ctx.deviceId, model: msg.model, slots: msg.slots, rank: msg.rank, step: msg.step },
      'device registered',
    );
    for (const pair of this.pairs.values()) {
      for (const end of [pair.source, pair.target]) {
        if (end.device === ctx.deviceId && !names.has(end.slot)) {
          this.log.warn({ pairId: pair.id, deviceId: ctx.deviceId, slot: end.slot, registered: [...names] }, 'a pair names a slot this device did not register; the pair waits');
        }
      }
    }
    this.sendPlan(ctx.deviceId, true);
    for (const d of this.registry.registered()) if (d.id !== ctx.deviceId) this.sendPlan(d.id, false);
    this.emit('register', { deviceId: ctx.deviceId, session: ctx.session });
  }

  /** autoPair: every two registered devices, both ways, on the configured slot of each. */
  private createAutoPairs(): void {
    const { slot, sourceMode } = this.config.autoPair;
    const pick = (id: string): string | undefined => {
      const slots = this.registry.get(id)?.registration?.slots;
      if (!slots) return undefined;
      if (slot === 'first') return slots.keys().next().value;
      return slots.has(slot) ? slot : undefined;
    };
    const linked = new Set([...this.pairs.values()].map((p) => `${p.source.device}/${p.source.slot}>${p.target.device}/${p.target.slot}`));
    const devices = this.registry.registered();
    for (const s of devices) {
      for (const t of devices) {
        if (s.id === t.id) continue;
        const ss = pick(s.id);
        const ts = pick(t.id);
        if (!ss || !ts || linked.has(`${s.id}/${ss}>${t.id}/${ts}`)) continue;
        let id = `auto:${s.id}.${ss}--${t.id}.${ts}`;
        if (id.length > 128) id = `auto:${hash32(id).toString(16)}`;
        if (this.pairs.has(id)) continue;
        const d = this.config.defaults;
        const pc: PairConfig = {
          id,
          source: { device: s.id, slot: ss },
          target: { device: t.id, slot: ts },
          rank: Math.min(d.rank, this.config.limits.maxRank),
          tCycle: d.tCycle,
          k: d.k,
          tau: d.tau,
          sourceMode,
          adapter: { ...d.adapter },
          auto: true,
        };
        let pair = new Pair(pc);
        const saved = this.pendingRestore.get(id);
        if (saved) {
          try {
            this.restorePair(pair, saved);
          } catch (err) {
            // Checked at start-up; should this still fail, the pair starts fresh rather than
            // blocking every registration.
            this.log.error({ err, pairId: id }, 'could not restore an auto pair; it starts fresh');
            pair.dispose();
            pair = new Pair(pc);
          }
          this.pendingRestore.delete(id);
        }
        this.pairs.set(id, pair);
        linked.add(`${s.id}/${ss}>${t.id}/${ts}`);
        this.log.info({ pairId: id, restored: saved !== undefined }, 'auto pair created');
      }
    }
  }

  /**
   * Recompute a pair's effective rank and whether it can run. Before the adapter exists the rank is
   * the configured one capped by maxRank and both slots' min(m, n); once both slot shapes are known
   * the adapter is created, which fixes the rank.
   */
  private refreshPair(pair: Pair): void {
    const sShape = this.registry.slotShape(pair.source.device, pair.source.slot);
    const tShape = this.registry.slotShape(pair.target.device, pair.target.slot);
    const cap = Math.min(minDim(sShape), minDim(tShape));
    if (pair.hasAdapter) {
      if (cap < pair.rank) {
        pair.active = false;
        pair.inactiveReason = `a slot is now smaller (min dimension ${cap}) than the adapter's rank ${pair.rank}`;
        this.log.warn({ pairId: pair.id, reason: pair.inactiveReason }, 'pair inactive');
        return;
      }
    } else {
      pair.rank = Math.min(pair.config.rank, this.config.limits.maxRank, cap);
      if (sShape && tShape) pair.ensureAdapter();
    }
    pair.active = true;
    pair.inactiveReason = undefined;
  }

  private planFor(deviceId: string): PlanPair[] {
    const out: PlanPair[] = [];
    for (const p of this.pairs.values()) {
      if (!p.active) continue;
      for (const role of ['source', 'target'] as const) {
        const me = p[role];
        const peer = role === 'source' ? p.target : p.source;
        if (me.device !== deviceId || !this.registry.slotShape(deviceId, me.slot)) continue;
        const entry: PlanPair = { pairId: p.id, role, slot: me.slot, peerDevice: peer.device, peerSlot: peer.slot, rank: p.rank, tCycle: p.config.tCycle, k: p.config.k, tau: p.config.tau };
        // Only the target computes G; 'train' is the default and is left out of the plan.
        if (role === 'target' && p.config.feedback === 'heldout') entry.feedback = 'heldout';
        out.push(entry);
      }
    }
    return out;
  }

  /** Send a device its plan if it is connected and registered, and the plan changed (or `force`). */
  private sendPlan(deviceId: string, force: boolean): void {
    const d = this.registry.get(deviceId);
    if (!d || !d.connected || !d.registration || !d.session || !d.socketId) return;
    const pairs = this.planFor(deviceId);
    const key = JSON.stringify(pairs);
    if (!force && key === d.lastPlanKey) return;
    const socket = this.io?.sockets.sockets.get(d.socketId);
    if (!socket) return;
    const plan: PlanMsg = { deviceId, session: d.session, protocolVersion: PROTOCOL_VERSION, maxMessageBytes: this.config.limits.maxMessageBytes, pairs };
    socket.emit(EVENTS.plan, encodeMessage(plan));
    d.lastPlanKey = key;
    this.log.info({ deviceId, pairs: pairs.map((p) => `${p.pairId}:${p.role}:r${p.rank}`) }, 'plan sent');
  }

  // ---------------------------------------------------------------- slices and cycles

  /**
   * `slice` {slot, sliceId, step, rank, A [m, rank], B [rank, n]}. Checks: registered, slot known,
   * 1 ≤ rank ≤ min(m, n) and ≤ limits.maxRank, and rank ≥ the rank of every active pair of this slot
   * (a larger rank is truncated to each pair's rank; a smaller one cannot serve and is refused with
   * rank_out_of_bounds), tensor shapes, finite values. Then stores it as the slot's latest slice and
   * tries to start a cycle of every pair whose target is this slot.
   */
  private onSlice(ctx: Ctx, raw: unknown): void {
    const msg = parseWith(sliceSchema, raw, 'slice');
    ctx.ref.slot = msg.slot;
    ctx.ref.sliceId = msg.sliceId;
    const reg = this.registrationOf(ctx);
    const shape = reg.slots.get(msg.slot);
    if (!shape) fail('unknown_slot', `slot "${msg.slot}" was not registered by device "${ctx.deviceId}"`);
    const [m, n] = shape;
    const maxR = Math.min(m, n, this.config.limits.maxRank);
    if (msg.rank < 1 || msg.rank > maxR) {
      fail('rank_out_of_bounds', `rank ${msg.rank} is outside [1, ${maxR}] (slot [${m}, ${n}], limit ${this.config.limits.maxRank})`);
    }
    let needed = 0;
    for (const p of this.pairs.values()) {
      if (!p.active) continue;
      const uses = (p.source.device === ctx.deviceId && p.source.slot === msg.slot) || (p.target.device === ctx.deviceId && p.target.slot === msg.slot);
      if (uses) needed = Math.max(needed, p.rank);
    }
    if (msg.rank < needed) fail('rank_out_of_bounds', `rank ${msg.rank} is below ${needed}, the rank the plan gives this slot`);
    const A = wireToFloat32(msg.A, { name: 'slice.A', shape: [m, msg.rank] });
    const B = wireToFloat32(msg.B, { name: 'slice.B', shape: [msg.rank, n] });

    // Valid: from here on, state changes.
    const stored: StoredSlice = {
      slot: msg.slot,
      sliceId: msg.sliceId,
      step: msg.step,
      rank: msg.rank,
      A: tf.tensor2d(A.values, [m, msg.rank], 'float32'),
      B: tf.tensor2d(B.values, [msg.rank, n], 'float32'),
      at: ctx.now,
      session: ctx.session,
    };
    this.registry.storeSlice(ctx.deviceId, stored);
    for (const pair of this.pairs.values()) {
      if (pair.active && pair.target.device === ctx.deviceId && pair.target.slot === msg.slot) this.tryStartCycle(pair, stored, ctx);
    }
  }

  /**
   * Start a cycle of `pair` on a fresh target slice, if: no cycle is in flight (an expired one is
   * dropped as cycle_timeout first), the source slot has a slice younger than sourceMaxAgeMs and of
   * at least the pair's rank, and T_cycle target steps have passed since the pair's last cycle.
   * Otherwise the pair waits (counted in its `skips`). A failure here drops only this pair's cycle.
   */
  private tryStartCycle(pair: Pair, slice: StoredSlice, ctx: Ctx): void {
    const now = ctx.now;
    if (pair.inFlight) {
      if (pair.inFlightExpired(now)) this.dropCycle(pair, 'cycle_timeout');
      else return pair.countSkip('in_flight');
    }
    const src = this.registry.latestSlice(pair.source.device, pair.source.slot);
    const skip = (why: SkipReason) => pair.countSkip(why);
    if (!src) return skip('no_source');
    if (now - src.at > this.config.timing.sourceMaxAgeMs) return skip('source_too_old');
    if (src.rank < pair.rank) return skip('source_rank_too_low');
    const last = pair.counters.lastCycleStep;
    // A step count that went backwards means the device restarted its training: count afresh.
    if (last !== undefined && slice.step >= last && slice.step - last < pair.config.tCycle) return skip('too_soon');

    let cycleId: number | undefined;
    try {
      pair.ensureAdapter();
      const r = pair.rank;
      const started = pair.startCycle(truncate(slice, r), truncate(src, r), {
        session: ctx.session,
        sliceId: slice.sliceId,
        step: slice.step,
        now,
        timeoutMs: this.config.timing.cycleTimeoutMs,
      });
      cycleId = started.cycleId;
      let payload: Buffer;
      try {
        const msg: TransferMsg = {
          pairId: pair.id,
          cycleId,
          sliceId: slice.sliceId,
          slot: pair.target.slot,
          A: tensorToWire(started.out.A.dataSync() as Float32Array, started.out.A.shape),
          B: tensorToWire(started.out.B.dataSync() as Float32Array, started.out.B.shape),
          adapterStep: pair.adapterStep,
        };
        payload = encodeMessage(msg, { maxBytes: this.config.limits.maxMessageBytes });
      } finally {
        disposeLowRank(started.out);
      }
      ctx.socket.emit(EVENTS.transfer, payload);
      this.emit('cycle', { pairId: pair.id, cycleId, sliceId: slice.sliceId, targetDevice: pair.target.device, sourceMode: pair.config.sourceMode, adapterStep: pair.adapterStep });
    } catch (err) {
      this.log.error({ err, pairId: pair.id, cycleId }, 'could not start a cycle');
      if (pair.inFlight && pair.inFlight.cycleId === cycleId) this.dropCycle(pair, 'internal');
    }
  }

  /** Abandon a pair's in-flight cycle (its input is disposed) and count it. */
  private dropCycle(pair: Pair, reason: CycleDropReason): void {
    const c = pair.dropInFlight(reason);
    if (!c) return;
    this.countDrop(reason);
    this.log.info({ pairId: pair.id, cycleId: c.cycleId, reason }, 'cycle dropped');
    this.emit('drop', { code: reason, reason: ERROR_CODES[reason], event: 'cycle', deviceId: pair.target.device, pairId: pair.id, cycleId: c.cycleId });
  }

  private sweep(): void {
    try {
      const now = Date.now();
      for (const pair of this.pairs.values()) if (pair.inFlightExpired(now)) this.dropCycle(pair, 'cycle_timeout');
    } catch (err) {
      this.log.error({ err }, 'sweep failed');
    }
  }

  // ---------------------------------------------------------------- feedback and metrics

  /**
   * `feedback` {pairId, cycleId, steps, scale, gA [m, r], gB [r, n], metrics}. Checks: the pair
   * exists and this device is its target (unknown_pair); the cycle is the one in flight
   * (stale_cycle: replayed, finished or never started; or the precise reason it was abandoned:
   * session_replaced, cycle_timeout); same session; before the deadline (cycle_timeout, and the
   * cycle is dropped); gA and gB shaped as A′ and B′ and finite. Then the adapter takes one
   * vector-Jacobian AdamW step at the remembered input, the device's metrics are recorded, and a
   * checkpoint is written every checkpoint.everyUpdates updates.
   */
  private onFeedback(ctx: Ctx, raw: unknown): void {
    const msg = parseWith(feedbackSchema, raw, 'feedback');
    ctx.ref.pairId = msg.pairId;
    ctx.ref.cycleId = msg.cycleId;
    this.registrationOf(ctx);
    const pair = this.pairs.get(msg.pairId);
    if (!pair || pair.target.device !== ctx.deviceId) {
      fail('unknown_pair', `no pair "${msg.pairId}" has device "${ctx.deviceId}" as its target`);
    }
    const c = pair.inFlight;
    if (!c || c.cycleId !== msg.cycleId) {
      const ended = pair.endedAs(msg.cycleId);
      if (ended === 'session_replaced' || ended === 'cycle_timeout') fail(ended, `cycle ${msg.cycleId} of pair ${pair.id} was dropped: ${ERROR_CODES[ended]}`);
      const now = c ? `cycle ${c.cycleId} is in flight` : 'no cycle is in flight';
      const what = ended === 'completed' ? 'was already applied' : msg.cycleId >= pair.nextCycleId ? 'was never started' : 'is not in flight';
      fail('stale_cycle', `cycle ${msg.cycleId} of pair ${pair.id} ${what} (${now})`);
    }
    if (c.session !== ctx.session) fail('session_replaced', `cycle ${c.cycleId} was sent to an earlier connection of this device`);
    if (ctx.now > c.deadline) {
      this.dropCycle(pair, 'cycle_timeout');
      fail('cycle_timeout', `cycle ${c.cycleId} of pair ${pair.id} expired ${ctx.now - c.deadline} ms ago (timeout ${this.config.timing.cycleTimeoutMs} ms)`);
    }
    const gA = wireToFloat32(msg.gA, { name: 'feedback.gA', shape: c.outShapes.A });
    const gB = wireToFloat32(msg.gB, { name: 'feedback.gB', shape: c.outShapes.B });

    // Valid: apply.
    const tA = tf.tensor2d(gA.values, c.outShapes.A, 'float32');
    const tB = tf.tensor2d(gB.values, c.outShapes.B, 'float32');
    let res;
    try {
      // If the update throws, the cycle ends and handle() answers `internal` (counted once there).
      res = pair.applyFeedback(tA, tB, ctx.now);
    } finally {
      tA.dispose();
      tB.dispose();
    }
    this.registry.setMetrics(ctx.deviceId, msg.metrics, ctx.now);
    this.totalUpdates++;
    this.log.debug({ pairId: pair.id, cycleId: c.cycleId, step: res.step, gradNorm: res.gradNorm, clipped: res.clipped, steps: msg.steps, scale: msg.scale }, 'adapter updated');
    this.emit('update', { pairId: pair.id, cycleId: c.cycleId, step: res.step, gradNorm: res.gradNorm, clipped: res.clipped });
    const every = this.config.checkpoint.everyUpdates;
    if (this.checkpointer && this.totalUpdates % every === 0) {
      this.checkpoint().catch((err) => this.log.error({ err }, 'periodic checkpoint failed'));
    }
  }

  /** `metrics` {step, loss, valAcc?, stepsPerSec?}: kept as the device's latest metrics for status. */
  private onMetrics(ctx: Ctx, raw: unknown): void {
    const msg = parseWith(metricsSchema, raw, 'metrics');
    this.registrationOf(ctx);
    this.registry.setMetrics(ctx.deviceId, msg, ctx.now);
  }
}

/**
 * Start a coordinator: initialise the tfjs backend, restore checkpoint.dir if it holds a
 * checkpoint, and listen. Resolves once it accepts connections.
 */
export async function serve(config: CoordinatorConfig, opts: ServeOptions = {}): Promise<RunningCoordinator> {
  const log = opts.logger ?? createLogger('coordinator');
  await initBackend(opts.backend, (line) => log.info(line));
  const c = new Coordinator(config, log);
  try {
    await c.restore();
    await c.listen();
  } catch (err) {
    await c.close().catch(() => undefined);
    throw err;
  }
  return c;
}

/**
 * SIGINT/SIGTERM: checkpoint, close, exit 0 (close() checkpoints). A second signal during the
 * shutdown exits 1 at once. Returns a function that removes the handlers.
 */
export function installSignalHandlers(
  running: RunningCoordinator,
  logger: Logger,
  exit: (code: number) => void = (code) => process.exit(code),
): () => void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal during shutdown: exiting now');
      exit(1);
      return;
    }
    stopping = true;
    logger.info({ signal }, 'signal received: checkpointing and closing');
    running
      .close()
      .then(() => exit(0))
      .catch((err) => {
        logger.error({ err }, 'shutdown failed');
        exit(1);
      });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}
