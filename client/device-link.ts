// The device's edge to the coordinator (docs/PROTOCOL.md): one socket.io-client connection with
// auth, reconnection with backoff, refusal of fatal handshakes, decoding and validating inbound
// messages, encoding outbound ones and counting their bytes. It knows nothing of models or
// cycles: what arrives goes to typed handlers, which only queue, so training never waits on it.
import { io, type Socket } from 'socket.io-client';
import { decodeMessage, encodeMessage } from '../shared/codec/tensor-codec.js';
import type { Logger } from '../shared/log.js';
import { ERROR_CODES, isErrorCode, type ErrorCode } from '../shared/protocol/errors.js';
import { EVENTS, type ClientToServerEvents, type DeviceEvent, type DeviceMessage, type ServerToClientEvents } from '../shared/protocol/events.js';
import {
  describeZodError,
  planSchema,
  rejectSchema,
  paceSchema,
  skipSchema,
  feedbackAckSchema,
  type FeedbackAckMsg,
  transferSchema,
  teacherSchema,
  type TeacherMsg,
  type PlanMsg,
  type RejectMsg,
  type PaceMsg,
  type SkipMsg,
  type TransferMsg,
} from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { describeConnectFailure, type ConnectFailure } from './connect-failure.js';
import { sleep } from './yield.js';

/**
 * Handshake refusals that retrying cannot fix (the same auth would be refused again): start()
 * rejects with them. `invalid_message` here means the auth object itself was malformed.
 */
export const FATAL_HANDSHAKE_CODES: readonly ErrorCode[] = ['unauthorized', 'bad_token', 'unknown_device', 'protocol_version', 'invalid_message'];

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

/** Thrown (start() rejects with it) when no connection could be made within the connect timeout. */
export class CoordinatorUnreachableError extends Error {
  constructor(
    readonly url: string,
    readonly timeoutMs: number,
    readonly attempts: number,
    readonly lastFailure: ConnectFailure | undefined,
  ) {
    super(
      `could not reach the coordinator at ${url} within ${timeoutMs / 1000} s (${attempts} attempt${attempts === 1 ? '' : 's'}): ` +
        (lastFailure?.cause ?? 'no answer'),
    );
    this.name = 'CoordinatorUnreachableError';
  }
}

/** One failed connection attempt, and why. */
export interface ConnectAttemptFailure extends ConnectFailure {
  url: string;
  /** failed attempts since the last successful connection (this one included) */
  attempt: number;
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

export interface DeviceLinkOptions {
  url: string;
  /** socket.io path (default "/socket.io"). */
  path?: string;
  deviceId: string;
  token: string;
  reconnect?: ReconnectOptions;
  /** ms to wait at close, after the last message left, before disconnecting (default 100). */
  lingerMs?: number;
  log: Logger;
  /** true once the device is shutting down: no reconnect is attempted then */
  stopping(): boolean;
  /** the current plan: outbound messages (register excepted) need one; it bounds message size */
  plan(): PlanMsg | undefined;
}

/** What the link reports. Handlers run on socket events, between training steps. */
export interface DeviceLinkHandlers {
  connected(connections: number): void;
  disconnected(reason: string): void;
  /** the handshake was refused for good; the link has given up */
  refused(err: DeviceRefusedError): void;
  /** an attempt to connect failed for a reason retrying may fix; the link retries with backoff */
  connectFailed(f: ConnectAttemptFailure): void;
  /** a plan for this device and protocol version (its pairs not yet checked against the slots) */
  plan(plan: PlanMsg): void;
  transfer(t: TransferMsg): void;
  /** a target slice that started no cycle of one pair */
  skip(s: SkipMsg): void;
  /** the coordinator asks for slices at least this far apart (0: no pace) */
  pace(p: PaceMsg): void;
  reject(r: RejectMsg): void;
  /** the coordinator accepted a feedback (schema-checked here; the device checks it against its plan) */
  feedbackAck(a: FeedbackAckMsg): void;
  /** protocol 3: an output pair's teacher (the source's logits on the probe split) */
  teacher(t: TeacherMsg): void;
  /** an inbound message that could not be decoded or handled; it never stops training */
  badMessage(event: string, err: Error): void;
}

type DeviceSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

export class DeviceLink {
  /** (re)connections made, the first included */
  connections = 0;
  transfersReceived = 0;
  /** payload bytes by message key (see DeviceStatus.wire) */
  readonly wire: Record<string, { messages: number; bytes: number }> = {};
  private socket: DeviceSocket | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private manualAttempts = 0;
  /** failed attempts since the last successful connection */
  private failedAttempts = 0;

  constructor(
    private readonly opts: DeviceLinkOptions,
    private readonly on: DeviceLinkHandlers,
  ) {}

  get connected(): boolean {
    return this.socket?.connected ?? false;
  }

  connect(): void {
    const r = this.opts.reconnect ?? {};
    const socket: DeviceSocket = io(this.opts.url, {
      path: this.opts.path,
      auth: { deviceId: this.opts.deviceId, token: this.opts.token, protocolVersion: PROTOCOL_VERSION },
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
    socket.on(EVENTS.skip, (buf) => this.guard('skip', () => this.onSkip(buf)));
    socket.on(EVENTS.pace, (buf) => this.guard('pace', () => this.onPace(buf)));
    socket.on(EVENTS.feedbackAck, (buf) => this.guard('feedback_ack', () => this.onFeedbackAck(buf)));
    socket.on(EVENTS.teacher, (buf) => this.guard('teacher', () => this.onTeacher(buf)));
  }

  /**
   * Emit only on a live connection with a plan (register excepted): socket.io would otherwise
   * buffer the message and deliver it after a reconnect, i.e. into a newer session.
   */
  send<E extends DeviceEvent>(event: E, msg: DeviceMessage<E>, wireKey: string = event): boolean {
    const socket = this.socket;
    if (!socket?.connected) return false;
    const plan = this.opts.plan();
    if (event !== EVENTS.register && !plan) return false;
    let buf: Uint8Array;
    try {
      buf = encodeMessage(msg, { maxBytes: plan?.maxMessageBytes });
    } catch (err) {
      this.opts.log.error({ event, err: (err as Error).message }, 'message not sent');
      return false;
    }
    (socket.emit as (ev: string, p: Uint8Array) => unknown)(event, buf);
    this.countWire(wireKey, buf);
    return true;
  }

  /** Cut the transport abruptly, as a network failure would (no disconnect handshake). */
  dropConnection(): void {
    const engine = (this.socket?.io as unknown as { engine?: { close(): void } } | undefined)?.engine;
    engine?.close();
  }

  /**
   * Before disconnecting, let the last messages (e.g. the feedback of the final step) leave and be
   * handled: socket.io drops events that the server reads in the same batch as a disconnect.
   */
  async flushOutgoing(): Promise<void> {
    const socket = this.socket;
    if (!socket?.connected) return;
    const engine = (socket.io as unknown as { engine?: { writeBuffer?: unknown[] } }).engine;
    const deadline = performance.now() + 1000;
    while ((engine?.writeBuffer?.length ?? 0) > 0 && socket.connected && performance.now() < deadline) await sleep(5);
    const linger = this.opts.lingerMs ?? 100;
    if (linger > 0 && socket.connected) await sleep(linger);
  }

  /** Close for good: no handler runs and no reconnect happens after this. */
  close(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    if (this.socket) {
      this.socket.removeAllListeners();
      this.closeGracefully(this.socket);
    }
  }

  /**
   * Close by closing the transport (a WebSocket close, after the write buffer drained) rather than
   * with socket.io's DISCONNECT packet: a socket.io server handles events on the next tick and
   * drops those it read in the same batch as a DISCONNECT, so a busy coordinator would lose the
   * last feedback. A transport close is seen in a later I/O callback, after those events ran.
   */
  private closeGracefully(socket: DeviceSocket): void {
    const manager = socket.io;
    manager.reconnection(false);
    const engine = (manager as unknown as { engine?: { close(): void } }).engine;
    if (socket.connected && engine) engine.close();
    socket.disconnect(); // no packet once the transport is closed; stops any pending reconnect
  }

  // ------------------------------------------------------------------------------------------
  // connection lifecycle

  private onConnect(): void {
    this.connections += 1;
    this.manualAttempts = 0;
    this.failedAttempts = 0;
    this.on.connected(this.connections);
  }

  private onDisconnect(reason: string): void {
    this.on.disconnected(reason);
    // socket.io does not reconnect by itself after a server-side disconnect. (The coordinator
    // also closes a connection that a newer one of the same device id replaced: two processes
    // running as one device will keep replacing each other.)
    if (reason === 'io server disconnect' && !this.opts.stopping()) this.scheduleManualReconnect();
  }

  private onConnectError(err: Error & { data?: unknown }): void {
    const data = (err.data ?? {}) as { code?: unknown; reason?: unknown };
    const code = typeof data.code === 'string' ? data.code : isErrorCode(err.message) ? err.message : undefined;
    const reason = typeof data.reason === 'string' ? data.reason : err.message;
    if (code && (FATAL_HANDSHAKE_CODES as readonly string[]).includes(code)) {
      this.opts.log.error({ code, reason }, 'handshake refused');
      this.on.refused(new DeviceRefusedError(code, reason));
      this.socket?.disconnect();
      return;
    }
    // Not a refusal: the coordinator could not be reached (or failed the handshake): say why.
    const failure = code ? { code, cause: `${code}: ${reason}` } : describeConnectFailure(this.opts.url, err);
    this.failedAttempts += 1;
    this.opts.log.warn({ url: this.opts.url, code: failure.code, cause: failure.cause, attempt: this.failedAttempts }, 'connection attempt failed; retrying with backoff');
    this.on.connectFailed({ ...failure, url: this.opts.url, attempt: this.failedAttempts });
    // A refusal by server middleware leaves the socket inactive: socket.io will not retry it.
    if (this.socket && !this.socket.active && !this.opts.stopping()) this.scheduleManualReconnect();
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
      if (!this.opts.stopping()) this.socket?.connect();
    }, delay);
  }

  // ------------------------------------------------------------------------------------------
  // inbound messages (decode and validate, then hand over)

  /** A bad message from the coordinator is reported and dropped; it never stops training. */
  private guard(event: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.on.badMessage(event, err as Error);
    }
  }

  private onPlan(buf: unknown): void {
    const res = planSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`plan: ${describeZodError(res.error)}`);
    const plan = res.data;
    if (plan.deviceId !== this.opts.deviceId) throw new Error(`plan is for device "${plan.deviceId}", not "${this.opts.deviceId}"`);
    if (plan.protocolVersion !== PROTOCOL_VERSION) {
      throw new Error(`plan speaks protocol ${plan.protocolVersion}, this device ${PROTOCOL_VERSION}`);
    }
    this.on.plan(plan);
  }

  private onTransfer(buf: unknown): void {
    this.transfersReceived += 1;
    const res = transferSchema.safeParse(decodeMessage(buf, { maxBytes: this.opts.plan()?.maxMessageBytes }));
    if (!res.success) throw new Error(`transfer: ${describeZodError(res.error)}`);
    this.countWire(`transfer:${res.data.pairId}`, buf);
    this.on.transfer(res.data);
  }

  private onSkip(buf: unknown): void {
    const res = skipSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`skip: ${describeZodError(res.error)}`);
    this.on.skip(res.data);
  }

  private onPace(buf: unknown): void {
    const res = paceSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`pace: ${describeZodError(res.error)}`);
    this.on.pace(res.data);
  }

  private onReject(buf: unknown): void {
    const res = rejectSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`reject: ${describeZodError(res.error)}`);
    this.on.reject(res.data);
  }

  private onFeedbackAck(buf: unknown): void {
    const res = feedbackAckSchema.safeParse(decodeMessage(buf));
    if (!res.success) throw new Error(`feedback_ack: ${describeZodError(res.error)}`);
    this.on.feedbackAck(res.data);
  }

  private onTeacher(buf: unknown): void {
    const res = teacherSchema.safeParse(decodeMessage(buf, { maxBytes: this.opts.plan()?.maxMessageBytes }));
    if (!res.success) throw new Error(`teacher: ${describeZodError(res.error)}`);
    this.countWire(`teacher:${res.data.pairId}`, buf);
    this.on.teacher(res.data);
  }

  private countWire(key: string, buf: unknown): void {
    const bytes = buf instanceof Uint8Array ? buf.byteLength : buf instanceof ArrayBuffer ? buf.byteLength : 0;
    const c = (this.wire[key] ??= { messages: 0, bytes: 0 });
    c.messages += 1;
    c.bytes += bytes;
  }
}
