// What a DeviceClient reports: its status snapshot and the events it emits. Kept apart so the
// transport (device-link.ts) and the cycle logic (transfer-apply.ts, local-training-loop.ts) can
// speak these types without importing the client that composes them.
import type { OutputChannelStatus } from './target/output-channel.js';
import type { PlanMsg, PlanPair, RejectMsg } from '../shared/protocol/messages.js';

export interface DeviceStatus {
  /** the output channel (protocol 3): the probe split, logits sent, trials applied, pairs distilling */
  output: OutputChannelStatus;
  deviceId: string;
  step: number;
  connected: boolean;
  /** the plan's session id, undefined until a plan arrived on the current connection */
  session: string | undefined;
  pairs: PlanPair[];
  /** (re)connections made, the first included */
  connections: number;
  slicesSent: number;
  /**
   * How the randomized slices were taken, summed over slots (SliceHistory): warm from the slot's
   * previous subspace, or cold (first, every 16th, after a rank change or a write of W, and after
   * a warm result failed its guard: those are also counted in `fallback`). Slots small enough for
   * the exact SVD count in none.
   */
  sliceStarts: { cold: number; warm: number; fallback: number };
  transfersReceived: number;
  transfersApplied: number;
  /** target pairs whose join-time transfer was kept (written into W once) */
  joined: string[];
  /** inbound messages ignored (transfers not applied, bad plans), by reason */
  ignored: Record<string, number>;
  feedbackSent: number;
  /** feedback the coordinator acknowledged (`feedback_ack`): cycles known to be complete */
  feedbackAcked: number;
  /** the adapter step of each target pair, from its latest `feedback_ack` */
  adapterSteps: Record<string, number>;
  /** windows dropped without feedback (disconnects, new plans, shutdown) */
  windowsAbandoned: number;
  openWindows: number;
  /** pairs whose knowledge branch is in the model now */
  branches: string[];
  /** slices held for transfers still to come, and slices dropped by the memory limits */
  slicesRemembered: number;
  slicesEvicted: number;
  rejects: Record<string, number>;
  /** target slices the coordinator answered with a skip instead of a transfer, by reason */
  skips: Record<string, number>;
  /** the coordinator's slice pace in force (0: none), and the (slot, step)s at which it held a due slice back */
  slicePace: { intervalMs: number; deferred: number };
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
  /** the trust gate g of this transfer */
  gate: number;
  /** ‖A′B′ − AB‖_F before gate and cap */
  deltaNorm: number;
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
  gate: number;
  /** s·⟨G, D⟩, the scalar the coordinator trains the gate with */
  gateGrad: number;
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
  /** an attempt to connect failed (the URL and why); the device retries with backoff */
  unreachable: [{ url: string; cause: string; code?: string; attempt: number }];
  disconnect: [{ reason: string; abandonedWindows: number; droppedTransfers: number }];
  stopped: [DeviceStatus];
}
