// Input of the report generator: one simulated experiment, all conditions and seeds for one target.
import type { GateTracePoint } from '../../coordinator/gate/trust-gate.js';

/** Training condition of the target. Variants such as 'mergenet:heldout' are allowed. */
export type Condition = 'alone' | 'mergenet' | 'noise' | 'fedavg' | 'distill' | 'copy' | (string & {});

import type { CurvePoint } from '../../client/curve-recorder.js';

/** One point of an accuracy curve: defined once, with the recorder every training loop uses. */
export type { CurvePoint };

export interface ConditionRun {
  condition: Condition;
  seed: number;
  /** The target device id. */
  device: string;
  /** Test accuracy (0..1) over steps. */
  curve: CurvePoint[];
  /** 0..1 */
  finalAcc: number;
  /** 0..1 */
  bestAcc: number;
  /** Bytes on the wire for this target's transfers (0 for alone). */
  bytesSent: number;
  /** What sending full slot weights would have cost for the same cycles. */
  bytesFullWeights: number;
  wallMs: number;
  /** E.g. mean branch ratio ‖K‖/‖W‖, cycles, drops. */
  extra?: Record<string, number>;
  /** Fleet runs: the other devices' test accuracy curves, by device id. */
  sources?: Record<string, CurvePoint[]>;
  /** The trust gate of each of the target's pairs over its updates, and the guard's decision. */
  gates?: { pairId: string; decision: string; reason?: string; channel?: string; trace: GateTracePoint[] }[];
}

export interface DeviceInfo {
  id: string;
  model: string;
  dataset: string;
  task: string;
  modality: string;
}

export interface PairInfo {
  source: string;
  sourceSlot: string;
  target: string;
  targetSlot: string;
  rank: number;
  tCycle: number;
  k: number;
}

export interface ExperimentResult {
  name: string;
  description: string;
  scenario: string;
  startedAt: string;
  finishedAt: string;
  backend: string;
  mode: 'process' | 'inprocess';
  /** Target device id. */
  target: string;
  devices: DeviceInfo[];
  pairs: PairInfo[];
  seeds: number[];
  runs: ConditionRun[];
  notes?: string[];
}
