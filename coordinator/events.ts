// What a running coordinator reports to its host (tests, the CLI, the fleet runner). Both halves
// emit them: the engine for cycles, updates and checkpoints, the socket edge for connections,
// refused handshakes and rejected messages.
import type { ErrorCode } from '../shared/protocol/errors.js';
import type { SourceMode } from './config.js';
import type { PaceDecision } from './pacer.js';

export interface UpdateEvent {
  pairId: string;
  cycleId: number;
  /** adapter step after this update (unchanged where the pair runs no adapter) */
  step: number;
  /** the adapter's gradient norm (0 where no adapter ran) */
  gradNorm: number;
  clipped: boolean;
  /** wall time of the pair's update (gate step, and the adapter's VJP and AdamW step where it runs), ms */
  adapterMs: number;
  /** the trust gate after this update */
  gate: number;
  /** ∂loss/∂θ of this update */
  gateGrad: number;
}

/** The gate's guard decided (docs/DESIGN.md §6). */
export interface GateEvent {
  pairId: string;
  decision: 'accepted' | 'refused';
  reason: string;
  gate: number;
  updates: number;
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
  sourceMode: SourceMode;
  adapterStep: number;
  /** the gate value the transfer carried */
  gate: number;
  /** wall time of the start and adapter forward pass that produced the transfer, ms */
  adapterMs: number;
}

export interface CoordinatorEvents {
  update: [UpdateEvent];
  drop: [DropEvent];
  cycle: [CycleEvent];
  gate: [GateEvent];
  register: [{ deviceId: string; session: string }];
  connect: [{ deviceId: string; session: string }];
  disconnect: [{ deviceId: string; session: string; reason: string }];
  /** a checkpoint is durable; startedAt is performance.now() when its write began taking state */
  checkpoint: [{ generation: number; updates: number; startedAt: number }];
  /**
   * the devices were asked for a new slice pace (coordinator/pacer.ts): why, with the window's
   * measures (capacity in cycles/s; busy, the workers' busy fraction; loop, the event loop's utilization)
   */
  pace: [{ sliceIntervalMs: number; shedFraction: number; capacity?: number; why: PaceDecision['why']; busy?: number; loop?: number }];
}

/** Emit one coordinator event (the engine gets this instead of an EventEmitter of its own). */
export type Notify = <E extends keyof CoordinatorEvents>(event: E, ...args: CoordinatorEvents[E]) => void;
