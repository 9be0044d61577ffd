// The simulated devices of `npm run bench:load`, run in a child process (so that the coordinator's
// process measures only itself). Each device speaks the wire protocol of docs/PROTOCOL.md over its
// own socket.io connection: register, a slice every `sliceMs` (sources and targets alike, with
// random factors) or less often where the coordinator asks for a slice pace (its `pace` event:
// a tick before the paced time sends nothing), and, as a target, feedback on every transfer at
// once (k steps of training are not simulated: the point is the coordinator's load). Every loop
// is bounded by `durationMs`.
// Input: one IPC message (LoadDevicesJob); output: one IPC message (LoadDevicesReport).
import { io, type Socket } from 'socket.io-client';
import { decodeMessage, encodeMessage, tensorToWire, type WireTensor } from '../shared/codec/tensor-codec.js';
import type { ClientToServerEvents, ServerToClientEvents } from '../shared/protocol/events.js';
import type { PlanMsg, RegisterMsg, RejectMsg } from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';

export interface LoadDeviceSpec {
  id: string;
  token: string;
  slot: string;
  shape: [number, number];
}

export interface LoadDevicesJob {
  url: string;
  rank: number;
  devices: LoadDeviceSpec[];
  /** devices that connect once the load runs, at evenly spaced times, to time their registration */
  late: LoadDeviceSpec[];
  sliceMs: number;
  durationMs: number;
  /** connections opened at once while registering the fleet */
  connectConcurrency: number;
  connectTimeoutMs: number;
}

export interface LoadDevicesReport {
  registered: number;
  failedToRegister: number;
  registerAllMs: number;
  loadMs: number;
  slicesSent: number;
  transfers: number;
  feedbackSent: number;
  /** slice → transfer latencies of the load phase, ms (sorted) */
  latencyMs: number[];
  lateRegisterMs: (number | null)[];
  rejects: Record<string, number>;
  /** target slices answered with a skip, by reason */
  skips: Record<string, number>;
  disconnects: number;
  /** `pace` messages received, and slice ticks they held back */
  paceMessages: number;
  slicesPaced: number;
  /** CPU of this devices' process over the load phase, in cores */
  cpuCores?: number;
}

type Sock = Socket<ServerToClientEvents, ClientToServerEvents>;

function randomWire(rows: number, cols: number, scale: number): WireTensor {
  const v = new Float32Array(rows * cols);
  for (let i = 0; i < v.length; i++) v[i] = (Math.random() * 2 - 1) * scale;
  return tensorToWire(v, [rows, cols]);
}

class SimDevice {
  socket?: Sock;
  plan?: PlanMsg;
  private sliceId = 0;
  private step = 0;
  /** the coordinator's slice pace (0: none) and the earliest time of the next slice */
  private paceMs = 0;
  private nextAt = 0;
  private readonly A: WireTensor;
  private readonly B: WireTensor;
  /** sliceId → when it was sent (targets only; cleared as transfers arrive) */
  readonly sentAt = new Map<number, number>();

  constructor(
    readonly spec: LoadDeviceSpec,
    private readonly job: LoadDevicesJob,
    private readonly stats: LoadDevicesReport,
    private readonly onLatency: (ms: number) => void,
  ) {
    this.A = randomWire(spec.shape[0], job.rank, 1);
    this.B = randomWire(job.rank, spec.shape[1], 1);
  }

  /** Connect and register; resolves with the time to the plan, or rejects. */
  connect(): Promise<number> {
    const t0 = performance.now();
    const socket: Sock = io(this.job.url, {
      auth: { deviceId: this.spec.id, token: this.spec.token, protocolVersion: PROTOCOL_VERSION },
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      timeout: this.job.connectTimeoutMs,
    });
    this.socket = socket;
    socket.on('reject', (b) => {
      const r = decodeMessage(b) as RejectMsg;
      this.stats.rejects[r.code] = (this.stats.rejects[r.code] ?? 0) + 1;
    });
    socket.on('transfer', (b) => this.onTransfer(b));
    socket.on('skip', (b) => {
      const r = decodeMessage(b) as { reason: string };
      this.stats.skips[r.reason] = (this.stats.skips[r.reason] ?? 0) + 1;
    });
    socket.on('pace', (b) => {
      const m = decodeMessage(b) as { sliceIntervalMs: number };
      this.stats.paceMessages++;
      this.paceMs = m.sliceIntervalMs;
      // as the reference device does: the next slice somewhere within one interval from now
      this.nextAt = performance.now() + Math.random() * this.paceMs;
    });
    socket.on('disconnect', () => {
      this.stats.disconnects++;
    });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.spec.id}: no plan within ${this.job.connectTimeoutMs} ms`)), this.job.connectTimeoutMs);
      socket.once('connect_error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.once('plan', (b) => {
        clearTimeout(timer);
        this.plan = decodeMessage(b) as PlanMsg;
        socket.on('plan', (b2) => {
          this.plan = decodeMessage(b2) as PlanMsg;
        });
        resolve(performance.now() - t0);
      });
      socket.once('connect', () => {
        const msg: RegisterMsg = {
          deviceId: this.spec.id,
          model: { name: 'load', architecture: 'none', task: 'load', modality: 'none' },
          slots: [{ name: this.spec.slot, shape: this.spec.shape }],
          rank: this.job.rank,
          step: 0,
        };
        socket.emit('register', encodeMessage(msg));
      });
    });
  }

  get isTarget(): boolean {
    return this.plan?.pairs.some((p) => p.role === 'target') ?? false;
  }

  sendSlice(): void {
    const s = this.socket;
    if (!s?.connected) return;
    const now = performance.now();
    if (this.paceMs > 0) {
      if (now < this.nextAt) {
        this.stats.slicesPaced++;
        return;
      }
      // one interval after this slice's scheduled time (ticks are sliceMs apart: counting from
      // the tick would make an interval just over sliceMs into two ticks)
      this.nextAt = Math.max(this.nextAt + this.paceMs, now);
    }
    const sliceId = this.sliceId++;
    this.step += 1;
    if (this.isTarget) this.sentAt.set(sliceId, now);
    s.emit('slice', encodeMessage({ slot: this.spec.slot, sliceId, step: this.step, rank: this.job.rank, A: this.A, B: this.B }));
    this.stats.slicesSent++;
    // A target's slice that started no cycle never gets a transfer: forget old ones.
    if (this.sentAt.size > 64) this.sentAt.delete(this.sentAt.keys().next().value!);
  }

  private onTransfer(b: Uint8Array): void {
    const now = performance.now();
    const m = decodeMessage(b) as { pairId: string; cycleId: number; sliceId: number; A: { shape: number[] }; B: { shape: number[] } };
    this.stats.transfers++;
    const sent = this.sentAt.get(m.sliceId);
    if (sent !== undefined) {
      this.sentAt.delete(m.sliceId);
      this.onLatency(now - sent);
    }
    const [rows, r] = m.A.shape;
    const cols = m.B.shape[1];
    this.socket?.emit(
      'feedback',
      encodeMessage({
        pairId: m.pairId,
        cycleId: m.cycleId,
        steps: 1,
        scale: 1,
        gateGrad: 0,
        gA: randomWire(rows, r, 0.01),
        gB: randomWire(r, cols, 0.01),
        metrics: { step: this.step, loss: 1 },
      }),
    );
    this.stats.feedbackSent++;
  }

  close(): void {
    this.socket?.close();
  }
}

async function run(job: LoadDevicesJob): Promise<LoadDevicesReport> {
  const stats: LoadDevicesReport = {
    registered: 0, failedToRegister: 0, registerAllMs: 0, loadMs: 0, slicesSent: 0, transfers: 0, feedbackSent: 0,
    latencyMs: [], lateRegisterMs: [], rejects: {}, skips: {}, disconnects: 0, paceMessages: 0, slicesPaced: 0,
  };
  let measuring = false;
  const latencies: number[] = [];
  const onLatency = (ms: number) => {
    if (measuring) latencies.push(ms);
  };
  const devices = job.devices.map((d) => new SimDevice(d, job, stats, onLatency));

  // Register the fleet, a bounded number of connections at a time.
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < devices.length) {
      const d = devices[next++];
      try {
        await d.connect();
        stats.registered++;
      } catch {
        stats.failedToRegister++;
      }
    }
  };
  await Promise.all(Array.from({ length: job.connectConcurrency }, worker));
  stats.registerAllMs = Math.round(performance.now() - t0);
  process.send?.({ kind: 'registered', registered: stats.registered, ms: stats.registerAllMs });

  // Load: every device sends a slice every sliceMs, phases spread evenly.
  measuring = true;
  const loadStart = performance.now();
  const cpuAtStart = process.cpuUsage();
  const timers: NodeJS.Timeout[] = [];
  devices.forEach((d, i) => {
    const offset = Math.floor((i / devices.length) * job.sliceMs);
    timers.push(
      setTimeout(() => {
        d.sendSlice();
        timers.push(setInterval(() => d.sendSlice(), job.sliceMs));
      }, offset),
    );
  });
  const lateDone = job.late.map(
    (spec, i) =>
      new Promise<void>((resolve) => {
        const at = ((i + 1) / (job.late.length + 1)) * job.durationMs;
        timers.push(
          setTimeout(() => {
            const dev = new SimDevice(spec, job, stats, () => {});
            devices.push(dev);
            dev.connect().then(
              (ms) => stats.lateRegisterMs.push(Math.round(ms)),
              () => stats.lateRegisterMs.push(null),
            ).finally(resolve);
          }, at),
        );
      }),
  );
  await new Promise((r) => setTimeout(r, job.durationMs));
  measuring = false;
  for (const t of timers) clearTimeout(t);
  stats.loadMs = Math.round(performance.now() - loadStart);
  const cpu = process.cpuUsage(cpuAtStart);
  stats.cpuCores = +((cpu.user + cpu.system) / 1000 / stats.loadMs).toFixed(2);
  // A late device still registering gets up to its connect timeout, never more.
  await Promise.all(lateDone);
  for (const d of devices) d.close();
  stats.latencyMs = latencies.sort((a, b) => a - b).map((x) => Math.round(x));
  return stats;
}

process.once('message', (job: LoadDevicesJob) => {
  run(job).then(
    (report) => process.send?.({ kind: 'report', report }, () => process.exit(0)),
    (err) => {
      process.stderr.write(`load-devices: ${(err as Error).stack ?? err}\n`);
      process.exit(1);
    },
  );
});
