// What a fleet run is given and what it gives back. A fleet run is one condition of one seed of an
// experiment with the REAL coordinator (serve()) and the REAL device client (DeviceClient): the
// devices either live in this process (inprocess.ts) or are child processes (processes.ts).
import type { SourceMode, StatusSnapshot } from '../../coordinator/index.js';
import type { DeviceSpec, PairSpec } from '../experiment/schema.js';
import type { CurvePoint } from '../report/types.js';

/** How the coordinator treats the experiment's pairs in this run: its own source mode. */
export type FleetPairMode = SourceMode;

/** Everything one device needs to join a fleet run (serialisable: it crosses the IPC channel). */
export interface DeviceJob {
  url: string;
  token: string;
  device: DeviceSpec;
  /** The experiment seed: data splits use it, model init and batch order deviceSeed(seed, id). */
  seed: number;
  /** Measure test accuracy at each evaluation (the target's curve needs it). */
  evalTest: boolean;
  /** tfjs backend for this device ('auto' or a name); only a child process can honour it per device. */
  backend?: string;
  /** pace the device to the coordinator (DeviceClientOptions.paceTimeoutMs); 0 or absent: never wait */
  paceTimeoutMs?: number;
}

/** Progress of one device, as the progress bars show it. */
export interface DeviceProgress {
  device: string;
  step: number;
  steps: number;
  /** training loss of the latest step */
  loss: number;
  /** latest test accuracy (or val accuracy when test is not evaluated) */
  acc?: number;
  transfers: number;
}

/** Bytes of one kind of message on the wire, as the device counted them. */
export interface WireCount {
  messages: number;
  bytes: number;
}

/** What one device reports when it has trained all its steps. */
export interface DeviceReport {
  device: string;
  steps: number;
  /** test accuracy after step s for s % evalEvery === 0 and the last step; loss = mean train loss since the previous point */
  curve: CurvePoint[];
  finalAcc: number;
  bestAcc: number;
  /** from the first step to the final evaluation, ms */
  wallMs: number;
  backend: string;
  slicesSent: number;
  transfersReceived: number;
  transfersApplied: number;
  /** target pairs whose join-time transfer was kept */
  joined?: string[];
  feedbackSent: number;
  windowsAbandoned: number;
  connections: number;
  rejects: Record<string, number>;
  ignored: Record<string, number>;
  /** mean ‖K‖/‖W‖ of the applied transfers, and the fraction where the cap bound (s < 1) */
  branchRatio?: number;
  capBound?: number;
  /**
   * Payload bytes (the MessagePack buffers handed to socket.io) by message, keyed
   * `slice:<slot>`, `transfer:<pairId>` and `feedback:<pairId>`, counted by this device's own
   * listeners on the device client's events.
   */
  wire: Record<string, WireCount>;
  /** the device's slots with their 2-D shapes */
  slots: { name: string; shape: [number, number] }[];
}

export interface FleetRunOptions {
  /** a label for logs and errors, e.g. "mergenet seed 1" */
  label: string;
  seed: number;
  /** the devices that take part (their specs from the experiment) */
  devices: DeviceSpec[];
  /** the device whose curve is the result; it evaluates test accuracy */
  target: string;
  /** the coordinator's pairs (may be empty: every device then trains alone) */
  pairs: PairSpec[];
  pairMode: FleetPairMode;
  /** the public probe split of the output channel (MNIST examples of this run's seeded order) */
  probe?: { offset: number; count: number };
  /** devices other than the target train this many steps before the target starts */
  sourceWarmup?: number;
  /** pace every device to the coordinator (see DeviceJob.paceTimeoutMs) */
  paceTimeoutMs?: number;
  /** tfjs backend of the coordinator (and of in-process devices); default auto */
  backend?: string;
  /** Fail the run if no device made progress for this long (default 180 s). */
  stallTimeoutMs?: number;
  /** Fail the run if it has not finished after this long (default: none). */
  timeoutMs?: number;
  onProgress?: (p: DeviceProgress) => void;
  /** Process mode: called with each child's pid once it runs (tests kill one to check crash handling). */
  onSpawn?: (device: string, pid: number) => void;
}

export interface FleetRunResult {
  label: string;
  devices: Record<string, DeviceReport>;
  /** the coordinator's status just before it closed */
  coordinator: StatusSnapshot;
  wallMs: number;
}

/** A fleet run that could not finish: which device failed and why (with a child's last stderr lines). */
export class FleetRunError extends Error {
  constructor(
    message: string,
    readonly label: string,
    readonly device?: string,
  ) {
    super(message);
    this.name = 'FleetRunError';
  }
}

