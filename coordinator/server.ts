// The coordinator at the socket edge: socket.io wiring, the handshake (checked by auth.ts), and one
// frame per inbound event: session check, decode, schema, then the transport-free engine
// (engine.ts), which holds the devices, pairs and cycles. Every refused message gets a `reject` to
// its sender only, and is counted; nothing a device sends can throw into socket.io. The same
// http server answers plain HTTP (http-routes.ts): health, status, Prometheus metrics, dashboard.
import { performance } from 'node:perf_hooks';
import { EventEmitter } from 'node:events';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, type Socket } from 'socket.io';
import type { z } from 'zod';
import { CodecError, decodeMessage, encodeMessage } from '../shared/codec/tensor-codec.js';
import { createLogger, type Logger } from '../shared/log.js';
import { ProtocolError, type ErrorCode } from '../shared/protocol/errors.js';
import {
  DEVICE_EVENTS,
  DEVICE_TO_COORDINATOR,
  EVENTS,
  type ClientToServerEvents,
  type DeviceEvent,
  type DeviceMessage,
  type ServerToClientEvents,
} from '../shared/protocol/events.js';
import { describeZodError, type RejectMsg } from '../shared/protocol/messages.js';
import { initBackend } from '../shared/tf/backend.js';
import { checkHandshake } from './auth.js';
import type { CoordinatorConfig } from './config.js';
import { DashboardFeed } from './dashboard-feed.js';
import { CoordinatorEngine, type EngineOptions, type RestoreSummary, type Sender } from './engine.js';
import type { CoordinatorEvents } from './events.js';
import { LogLimiter } from './log-limiter.js';
import { httpRoutes } from './http-routes.js';
import { CoordinatorMetrics } from './metrics.js';
import { statusLogFields, type StatusSnapshot, type WireTotals } from './status.js';
import { ViewerAuth } from './viewer-auth.js';

export type { CoordinatorEvents, CycleEvent, DropEvent, UpdateEvent } from './events.js';
export type { RestoreSummary } from './engine.js';

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
  /**
   * The clock of arrivals, deadlines and the sweep (default Date.now). Tests inject one to move
   * time past a deadline without waiting for it.
   */
  clock?: () => number;
  /** How often the dashboard samples the status and pushes it to open pages, ms (default 1000). */
  dashboardEveryMs?: number;
  /** Where adapters run, instead of the pool throughput.adapterWorkers asks for (tests hold its replies). */
  adapterHost?: EngineOptions['adapterHost'];
}

export interface RunningCoordinator {
  /** http://HOST:PORT (127.0.0.1 when listening on every interface) */
  readonly url: string;
  readonly port: number;
  readonly config: CoordinatorConfig;
  /** What start-up found in checkpoint.dir: nothing, or the checkpoint it resumed from. */
  readonly restored: RestoreSummary;
  status(): StatusSnapshot;
  /** Write a checkpoint now (a no-op without checkpoint.dir). */
  checkpoint(): Promise<void>;
  /** Checkpoint, stop the socket.io and http servers, and dispose every tensor. Idempotent. */
  close(): Promise<void>;
  /** Serialized adapter state of a pair (undefined before its adapter exists). */
  exportAdapterState(pairId: string): Uint8Array | undefined;
  /** The same, wherever the adapter lives (exportAdapterState throws where it lives in a worker). */
  adapterState(pairId: string): Promise<Uint8Array | undefined>;
  on<E extends keyof CoordinatorEvents>(event: E, cb: (...args: CoordinatorEvents[E]) => void): this;
  once<E extends keyof CoordinatorEvents>(event: E, cb: (...args: CoordinatorEvents[E]) => void): this;
  off<E extends keyof CoordinatorEvents>(event: E, cb: (...args: CoordinatorEvents[E]) => void): this;
}

interface SocketData {
  deviceId: string;
  session: string;
}

type CoordSocket = Socket<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData>;

/** What the frame knows about the message it is processing, for the reject it may send. */
interface Ctx extends Sender {
  socket: CoordSocket;
  event: string;
  ref: NonNullable<RejectMsg['ref']>;
}

function parseWith<T extends z.ZodType>(schema: T, raw: unknown, what: string): z.infer<T> {
  const res = schema.safeParse(raw);
  if (!res.success) throw new ProtocolError('invalid_message', `${what}: ${describeZodError(res.error)}`);
  return res.data;
}

class Coordinator extends EventEmitter implements RunningCoordinator {
  url = '';
  port = 0;
  readonly engine: CoordinatorEngine;
  restored: RestoreSummary = { resumed: false };
  private readonly metrics = new CoordinatorMetrics();
  private readonly feed: DashboardFeed;
  private readonly wire: WireTotals = { in: {}, out: {} };
  private http?: HttpServer;
  private io?: Server<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData>;
  private timers: NodeJS.Timeout[] = [];
  private closing?: Promise<void>;
  /** rejects and handler failures are logged at most 20 times per device (or address) per minute */
  private readonly logBudget: LogLimiter;

  constructor(
    readonly config: CoordinatorConfig,
    private readonly log: Logger,
    private readonly clock: () => number = Date.now,
    dashboardEveryMs = 1000,
    engineOptions: EngineOptions = {},
  ) {
    super();
    this.logBudget = new LogLimiter({ now: clock });
    this.feed = new DashboardFeed(() => this.status({ gateTraces: false }), dashboardEveryMs);
    this.on('cycle', (e) => this.metrics.observeAdapter('forward', e.adapterMs));
    this.on('update', (e) => this.metrics.observeAdapter('update', e.adapterMs));
    this.on('drop', (d) => this.feed.recordDrop(d));
    const socketOf = (id: string) => this.io?.sockets.sockets.get(id);
    this.engine = new CoordinatorEngine(
      config,
      log,
      {
        send: (id, event, msg, opts) => {
          const socket = socketOf(id);
          if (!socket) return false;
          // The one place coordinator → device messages are encoded.
          const payload = encodeMessage(msg, opts);
          (socket.emit as (ev: string, p: Buffer) => boolean)(event, payload);
          this.countWire('out', event, payload);
          return true;
        },
        disconnect: (id) => socketOf(id)?.disconnect(true),
      },
      (event, ...args) => this.emit(event, ...args),
      clock,
      engineOptions,
    );
  }

  // ---------------------------------------------------------------- start, stop, checkpoints

  async listen(): Promise<void> {
    const { host, port, limits } = this.config;
    this.http = createServer(
      httpRoutes({
        auth: new ViewerAuth(this.config.viewers),
        metrics: this.metrics,
        feed: this.feed,
        status: (opts) => this.status(opts),
        outboundQueue: () => this.outboundQueue(),
        log: this.log,
      }),
    );
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
    this.timers.push(setInterval(() => this.engine.sweep(), sweepMs).unref());
    if (this.config.throughput.pace.enabled) {
      // The event loop's utilization is one of the slice pace's two measures of load (pacer.ts).
      let elu = performance.eventLoopUtilization();
      this.timers.push(
        setInterval(() => {
          const now = performance.eventLoopUtilization();
          this.engine.paceTick(performance.eventLoopUtilization(now, elu).utilization);
          elu = now;
        }, this.config.throughput.pace.windowMs).unref(),
      );
    }
    this.feed.start();
    if (this.config.statusEveryMs > 0) {
      this.timers.push(setInterval(() => this.log.info(statusLogFields(this.status()), 'status'), this.config.statusEveryMs).unref());
    }
    this.log.info(
      { url: this.url, devices: this.config.devices.map((d) => d.id), pairs: this.engine.pairIds(), autoPair: this.config.autoPair.enabled, checkpointDir: this.config.checkpoint.dir },
      'coordinator listening',
    );
  }

  status(opts: { gateTraces?: boolean } = {}): StatusSnapshot {
    const copy = (r: WireTotals['in']) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, { ...v }]));
    return { ...this.engine.status(this.url, opts), wire: { in: copy(this.wire.in), out: copy(this.wire.out) } };
  }

  /** Messages queued in the sockets' write buffers (engine.io), waiting to leave. */
  private outboundQueue(): number {
    let n = 0;
    for (const socket of this.io?.sockets.sockets.values() ?? []) {
      n += (socket.conn as unknown as { writeBuffer?: unknown[] }).writeBuffer?.length ?? 0;
    }
    return n;
  }

  private countWire(dir: 'in' | 'out', event: string, payload: unknown): void {
    const bytes = payload instanceof Uint8Array ? payload.byteLength : payload instanceof ArrayBuffer ? payload.byteLength : 0;
    const c = (this.wire[dir][event] ??= { messages: 0, bytes: 0 });
    c.messages += 1;
    c.bytes += bytes;
  }

  exportAdapterState(pairId: string): Uint8Array | undefined {
    return this.engine.exportAdapterState(pairId);
  }

  adapterState(pairId: string): Promise<Uint8Array | undefined> {
    return this.engine.adapterState(pairId);
  }

  checkpoint(): Promise<void> {
    return this.engine.checkpoint();
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    // Open event streams would keep the http server from closing.
    this.feed.close();
    this.metrics.close();
    let checkpointError: unknown;
    try {
      // Adapter work still running in workers lands before the last checkpoint reads the state.
      await this.engine.drain();
      await this.checkpoint();
    } catch (err) {
      checkpointError = err;
      this.log.error({ err }, 'checkpoint on close failed');
    }
    if (this.io) {
      // io.close() disconnects every socket and closes the http server.
      await new Promise<void>((resolve) => this.io!.close(() => resolve()));
    }
    this.engine.dispose();
    await this.engine.closeAdapterHost();
    this.log.info({ url: this.url }, 'coordinator closed');
    if (checkpointError) throw checkpointError;
  }

  // ---------------------------------------------------------------- handshake and connections

  /**
   * Handshake (socket.io middleware), checked by auth.ts. Refusals arrive at the client as
   * `connect_error` with `data = {code, reason}`.
   */
  private authenticate(socket: CoordSocket, next: (err?: Error) => void): void {
    const refuse = (code: ErrorCode, reason: string, deviceId?: string) => {
      this.engine.countDrop(code);
      const budget = this.logBudget.admit(`address:${socket.handshake.address}`);
      if (budget.log) this.log.warn({ code, reason, deviceId, address: socket.handshake.address, suppressed: budget.suppressed || undefined }, 'handshake refused');
      this.emit('drop', { code, reason, event: 'handshake', deviceId });
      const err = new Error(reason) as Error & { data?: unknown };
      err.data = { code, reason };
      next(err);
    };
    try {
      const res = checkHandshake(socket.handshake.auth, (id) => this.engine.registry.get(id)?.tokenDigest);
      if (!res.ok) return refuse(res.code, res.reason, res.deviceId);
      socket.data.deviceId = res.deviceId;
      next();
    } catch (err) {
      this.log.error({ err }, 'handshake failed');
      refuse('internal', 'the coordinator failed to check the handshake');
    }
  }

  /**
   * A new, authenticated connection: a fresh session (the engine closes an older connection of the
   * same device and drops its in-flight cycles as session_replaced).
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
    const session = this.engine.connect(deviceId, socket.id, this.clock());
    socket.data.session = session;
    this.log.info({ deviceId, session, address: socket.handshake.address }, 'device connected');
    this.emit('connect', { deviceId, session });

    // Every device event of the protocol table: decoded, checked against its schema, then the
    // engine's handler; `refOf` says what of the message a reject refers to.
    const routes: { [E in DeviceEvent]: { run(ctx: Ctx, msg: DeviceMessage<E>): void; refOf?(msg: DeviceMessage<E>): Ctx['ref'] } } = {
      register: { run: (ctx, msg) => this.engine.register(ctx, msg) },
      slice: { run: (ctx, msg) => this.engine.slice(ctx, msg), refOf: (msg) => ({ slot: msg.slot, sliceId: msg.sliceId }) },
      feedback: { run: (ctx, msg) => this.engine.feedback(ctx, msg), refOf: (msg) => ({ pairId: msg.pairId, cycleId: msg.cycleId }) },
      metrics: { run: (ctx, msg) => this.engine.metrics(ctx, msg) },
      logits: { run: (ctx, msg) => this.engine.logits(ctx, msg) },
      teacher_request: { run: (ctx, msg) => this.engine.teacherRequest(ctx, msg), refOf: (msg) => ({ pairId: msg.pairId, sliceId: msg.requestId }) },
      teacher_feedback: { run: (ctx, msg) => this.engine.teacherFeedback(ctx, msg), refOf: (msg) => ({ pairId: msg.pairId, cycleId: msg.cycleId }) },
    };
    const route = <E extends DeviceEvent>(event: E) => {
      const { run, refOf } = routes[event];
      socket.on(event as DeviceEvent, (payload: Buffer | Uint8Array) =>
        this.handle(socket, event, payload, (ctx, raw) => {
          const msg = parseWith(DEVICE_TO_COORDINATOR[event], raw, event) as DeviceMessage<E>;
          if (refOf) Object.assign(ctx.ref, refOf(msg));
          run(ctx, msg);
        }),
      );
    };
    for (const event of Object.keys(DEVICE_TO_COORDINATOR) as DeviceEvent[]) route(event);
    // Any other event name: refused, never silently dropped (the sender learns of its mistake).
    socket.onAny((event: unknown) => {
      const name = typeof event === 'string' ? event : String(event);
      if (DEVICE_EVENTS.has(name)) return;
      this.handle(socket, name.slice(0, 64), undefined, () => {
        throw new ProtocolError('unknown_event', `event "${name.slice(0, 64)}" is not one a device may send (${[...DEVICE_EVENTS].join(', ')})`);
      });
    });
    socket.on('disconnect', (reason) => this.onDisconnect(socket, reason));
  }

  /**
   * A socket closed. The device is marked disconnected (if this was its current socket); its
   * in-flight cycles stay until their deadline or until it reconnects. Other pairs go on.
   */
  private onDisconnect(socket: CoordSocket, reason: string): void {
    const { deviceId, session } = socket.data;
    if (this.engine.disconnect(deviceId, socket.id, this.clock())) {
      this.log.info({ deviceId, session, reason }, 'device disconnected');
      this.emit('disconnect', { deviceId, session, reason });
    }
  }

  /**
   * Common frame of every inbound event: session check, decode under the size limit, then the
   * handler (schema, then the engine). Any failure becomes a `reject` to this socket only; an
   * unexpected exception becomes `internal` and never escapes to socket.io (which would take the
   * process down).
   */
  private handle(socket: CoordSocket, event: string, payload: unknown, fn: (ctx: Ctx, raw: unknown) => void): void {
    if (this.closing) return;
    const { deviceId, session } = socket.data;
    const ctx: Ctx = { socket, deviceId, session, connectionId: socket.id, event, ref: {}, now: this.clock() };
    this.countWire('in', event, payload);
    try {
      this.engine.admit(ctx);
      // An unknown event is refused by name, whatever its payload.
      const raw = DEVICE_EVENTS.has(event) ? decodeMessage(payload, { maxBytes: this.config.limits.maxMessageBytes }) : undefined;
      fn(ctx, raw);
    } catch (err) {
      if (err instanceof ProtocolError) this.reject(ctx, err.code, err.reason);
      else if (err instanceof CodecError) this.reject(ctx, err.code, err.message);
      else {
        const budget = this.logBudget.admit(`device:${ctx.deviceId}`);
        if (budget.log) this.log.error({ err, deviceId: ctx.deviceId, event, suppressed: budget.suppressed || undefined }, 'handler failed');
        this.reject(ctx, 'internal', `the coordinator failed to process this ${event}: ${(err as Error)?.message ?? String(err)}`, false);
      }
    }
  }

  /**
   * Send `reject` to the message's sender and count the drop (globally, per device, per pair).
   * The log line is rate-limited per device (`log` false: the caller logged it already).
   */
  private reject(ctx: Ctx, code: ErrorCode, reason: string, log = true): void {
    this.engine.countReject(ctx.deviceId, code, ctx.ref.pairId);
    const ref = Object.keys(ctx.ref).length ? ctx.ref : undefined;
    const msg: RejectMsg = { code, reason, event: ctx.event, ref };
    const budget = log ? this.logBudget.admit(`device:${ctx.deviceId}`) : { log: false as const };
    if (budget.log) this.log.warn({ deviceId: ctx.deviceId, event: ctx.event, code, reason, ref, suppressed: budget.suppressed || undefined }, 'message rejected');
    try {
      const buf = encodeMessage(msg);
      ctx.socket.emit(EVENTS.reject, buf);
      this.countWire('out', EVENTS.reject, buf);
    } catch (err) {
      this.log.error({ err }, 'could not send reject');
    }
    this.emit('drop', { code, reason, event: ctx.event, deviceId: ctx.deviceId, pairId: ctx.ref.pairId, cycleId: ctx.ref.cycleId });
  }
}

/**
 * Start a coordinator: initialise the tfjs backend, restore checkpoint.dir if it holds a
 * checkpoint, and listen. Resolves once it accepts connections.
 */
export async function serve(config: CoordinatorConfig, opts: ServeOptions = {}): Promise<RunningCoordinator> {
  const log = opts.logger ?? createLogger('coordinator');
  await initBackend(opts.backend, (line) => log.info(line));
  const c = new Coordinator(config, log, opts.clock, opts.dashboardEveryMs, { adapterHost: opts.adapterHost });
  try {
    c.restored = await c.engine.restore();
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
