// Every payload of every event, as a zod schema (the runtime guard) and its TypeScript type.
// On the wire each event carries ONE argument: a MessagePack buffer (shared/codec/tensor-codec.ts)
// of the object described here. Tensors are WireTensor {dtype:"float32", shape, data: bin}.
import { z } from 'zod';
import type { WireTensor } from '../codec/tensor-codec.js';

const id = z.string().min(1).max(128).regex(/^[A-Za-z0-9_.:\-]+$/, 'use letters, digits and _ . : - only');
// Integers must be safe (|v| ≤ 2⁵³−1): the codec turns a 64-bit MessagePack int in that range into
// a number, and leaves a larger one a bigint, which these refuse.
const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const posInt = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const finite = z.number().finite();

/**
 * Only "some value is there": wireToFloat32 checks the keys, dtype, shape, byte length and
 * finiteness, so that every defect of a tensor is refused as `bad_tensor` (not `invalid_message`).
 */
export const wireTensorSchema = z.custom<WireTensor>((v) => v !== undefined, { message: 'expected a tensor {dtype, shape, data}' });

/** socket.io handshake `auth` object (plain JSON, not MessagePack). */
export const handshakeSchema = z.object({
  deviceId: id,
  token: z.string().min(1, 'token is empty'),
  protocolVersion: z.number().int().safe(),
});
export type Handshake = z.infer<typeof handshakeSchema>;

export const slotDescSchema = z.object({
  name: id,
  /** the slot as a 2-D matrix [m, n] (dense [in,out]; conv [kh·kw·cin, cout]) */
  shape: z.tuple([posInt, posInt]),
});
export type SlotDesc = z.infer<typeof slotDescSchema>;

export const registerSchema = z.object({
  deviceId: id,
  model: z.object({
    name: z.string().min(1).max(200),
    architecture: z.string().min(1).max(200),
    task: z.string().min(1).max(200),
    modality: z.string().min(1).max(64),
  }),
  slots: z.array(slotDescSchema).min(1).max(64),
  /** the rank this device prefers; pairs use the configured rank, capped by every bound */
  rank: posInt,
  /** local training step at registration (a reconnecting device continues counting) */
  step: count,
  /**
   * Protocol 3: the input space the device's examples live in (e.g. "mnist": 28×28 grey digits,
   * whatever the layout). Devices of one input space can share a probe split (the output channel).
   */
  inputSpace: id.optional(),
  /** Protocol 3: the number of classes the model outputs (its logits on the probe split have this width). */
  outputs: posInt.max(100_000).optional(),
});
export type RegisterMsg = z.infer<typeof registerSchema>;

export const planPairSchema = z.object({
  pairId: id,
  role: z.enum(['source', 'target']),
  slot: id,
  peerDevice: id,
  peerSlot: id,
  rank: posInt,
  /** device steps between cycles of this pair */
  tCycle: posInt,
  /** local steps to train on a transfer before sending feedback */
  k: posInt,
  /** cap of the knowledge branch: ‖K‖_F ≤ tau·‖W‖_F */
  tau: z.number().positive(),
  /**
   * Target pairs only: where G is computed. 'train' (the default when absent): the per-step
   * gradients of the training batches; 'heldout': gradients on batches of the device's own
   * held-out (val) split at the same weights, with no training step on them.
   */
  feedback: z.enum(['train', 'heldout']).optional(),
  /**
   * Target pairs only (protocol 2): a join-time transfer. At the pair's first transfer, a device
   * that has barely started training (≤ 2·tCycle steps) swaps the transfer's full A′B′ in for its
   * own AB in its trained weight, once: 'always', or 'check': only if that lowers its held-out
   * loss there and then (docs/DESIGN.md §6).
   */
  join: z.enum(['check', 'always']).optional(),
  /**
   * Protocol 3: what the pair exchanges. 'parameter' (the default when absent): slices, transfers
   * and feedback on the slot. 'output': the source sends its logits on the probe split; the target
   * asks for them every tCycle steps, tries them as a readout swap of its classifier slot `slot`
   * under the trust gate, and distils on the probe split once the gate accepted the source.
   */
  channel: z.enum(['parameter', 'output']).optional(),
  /** Output pairs: distillation weight λ and temperature T (the loss adds λ·T²·KL(source ‖ target) on P). */
  distill: z.object({ lambda: z.number().nonnegative().finite(), temperature: z.number().positive().finite(), batchSize: posInt.max(4096) }).optional(),
});
export type PlanPair = z.infer<typeof planPairSchema>;

export const planSchema = z.object({
  deviceId: id,
  /** changes at every (re)connection; feedback from an older session is dropped */
  session: id,
  protocolVersion: z.number().int(),
  maxMessageBytes: posInt,
  pairs: z.array(planPairSchema),
  /**
   * Optional, for people: why a pair this device is named in is not in `pairs`, or waits (a slot
   * it did not offer, a peer not registered yet), or why it has no pair at all. Never parsed.
   */
  notes: z.array(z.string().max(1000)).max(64).optional(),
  /** Protocol 3: the public probe split of this device's input space, if the coordinator has one. */
  probe: z.lazy(() => probeDescSchema).optional(),
});
export type PlanMsg = z.infer<typeof planSchema>;

export const sliceSchema = z.object({
  slot: id,
  /** device-chosen, increasing; echoed by `transfer` so the device knows which A,B it refers to */
  sliceId: count,
  step: count,
  rank: posInt,
  A: wireTensorSchema,
  B: wireTensorSchema,
});
export type SliceMsg = z.infer<typeof sliceSchema>;

export const transferSchema = z.object({
  pairId: id,
  cycleId: count,
  sliceId: count,
  slot: id,
  /** A′ (m×r) and B′ (r×n), the adapter's output for this target slot */
  A: wireTensorSchema,
  B: wireTensorSchema,
  adapterStep: count,
  /**
   * The pair's trust gate g = sigmoid(θ) in [0, 1] (protocol 2): the device applies the branch
   * K = s·g·(A′B′ − AB). 0 leaves the target exactly as it would be alone.
   */
  gate: z.number().min(0).max(1),
});
export type TransferMsg = z.infer<typeof transferSchema>;

export const metricsSchema = z.object({
  step: count,
  loss: finite,
  /** accuracy on the device's own held-out split, 0..1 */
  valAcc: z.number().min(0).max(1).optional(),
  /** accuracy over the device's last 10 training minibatches, 0..1 (the trust gate's guard reads it) */
  trainAcc: z.number().min(0).max(1).optional(),
  stepsPerSec: z.number().nonnegative().finite().optional(),
});
export type Metrics = z.infer<typeof metricsSchema>;

export const feedbackSchema = z.object({
  pairId: id,
  cycleId: count,
  /** local steps G was summed over (the plan's k, or fewer if the device stopped early) */
  steps: posInt,
  /** the cap factor s that was applied on the device */
  scale: z.number().min(0).max(1),
  /** gA = s·G·B′ᵀ (m×r), gB = s·A′ᵀ·G (r×n), G = Σ ∂loss/∂W_eff over the steps */
  gA: wireTensorSchema,
  gB: wireTensorSchema,
  /**
   * ⟨G, ∂K/∂g⟩ = s·⟨G, A′B′ − AB⟩ (protocol 2): the scalar the coordinator needs to train the
   * pair's trust gate, ∂loss/∂θ = g(1−g)·gateGrad.
   */
  gateGrad: finite,
  /**
   * s·⟨G, A′B′⟩ (protocol 2): the part of gateGrad that comes from the source's factors alone,
   * without the target's own slice that the swap takes out; the gate's guard tests its sign.
   */
  sourceGrad: finite.optional(),
  /** ‖K‖_F/‖W‖_F of the branch this feedback is about (for the coordinator's status) */
  branchRatio: z.number().nonnegative().finite().optional(),
  metrics: metricsSchema,
});
export type FeedbackMsg = z.infer<typeof feedbackSchema>;

/** Why a target slice did not start a cycle of one of its pairs (the pair waits for the next). */
export const SKIP_REASONS = ['no_source', 'source_too_old', 'source_rank_too_low', 'in_flight', 'too_soon', 'internal', 'superseded', 'overloaded', 'no_logits'] as const;
export type SkipReason = (typeof SKIP_REASONS)[number];

/**
 * Coordinator → target device (protocol 2): this slice started no cycle of this pair. Every target
 * slice of a pair is answered by a `transfer` or a `skip`, so a device can pace itself to the
 * coordinator (wait for the answer) instead of guessing.
 */
export const skipSchema = z.object({
  pairId: id,
  sliceId: count,
  reason: z.enum(SKIP_REASONS),
});
export type SkipMsg = z.infer<typeof skipSchema>;

/** Sent to the target after its feedback was accepted: the cycle is complete. */
export const feedbackAckSchema = z.object({
  pairId: id,
  cycleId: count,
  /** the adapter's step after this feedback (0 for a pair whose pass-through start runs no adapter) */
  adapterStep: count,
  /** the pair's accepted feedback so far, this one included (each is one step of its trust gate) */
  updates: posInt,
});
export type FeedbackAckMsg = z.infer<typeof feedbackAckSchema>;

/**
 * Coordinator → device: how far apart to send slices (docs/PROTOCOL.md §4.14). Sent when a
 * saturated coordinator starts shedding cycles, each time the interval changes, and after a plan
 * while it holds. A device that ignores it loses nothing but its slices' chance to be used.
 */
export const paceSchema = z.object({
  /** send each slot's slices at least this many ms apart, on average (0: as often as the plan says) */
  sliceIntervalMs: count,
});
export type PaceMsg = z.infer<typeof paceSchema>;

export const rejectSchema = z.object({
  code: z.string(),
  reason: z.string(),
  /** the event that was refused */
  event: z.string(),
  ref: z.object({ pairId: z.string().optional(), cycleId: count.optional(), sliceId: count.optional(), slot: z.string().optional() }).optional(),
});
export type RejectMsg = z.infer<typeof rejectSchema>;

// ---------------------------------------------------------------- protocol 3: the output channel

/**
 * A public probe split: unlabelled examples of one input space that every device of that space
 * may run its model on (never train on its labels). It is named, not shipped: `source` says which
 * examples of a shipped corpus it is, and `sha256` (of the examples as float32, little-endian,
 * row-major) lets a device check that what it loaded is the same.
 */
export const probeDescSchema = z.object({
  id,
  inputSpace: id,
  source: z.object({ dataset: id, seed: count, offset: count }),
  count: posInt.max(100_000),
  /** the per-example shape the hash was taken over (the device may view it in its own layout) */
  exampleShape: z.array(posInt).min(1).max(4),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ProbeDesc = z.infer<typeof probeDescSchema>;

/** Source device → coordinator: its model's log-probabilities on the whole probe split. */
export const logitsSchema = z.object({
  probeId: id,
  /** the source's local step at which they were computed */
  step: count,
  /** [count, outputs] log-probabilities (any per-row constant is irrelevant: softmax ignores it) */
  values: wireTensorSchema,
});
export type LogitsMsg = z.infer<typeof logitsSchema>;

/** Target device → coordinator, every tCycle steps of an output pair: the start of a cycle. */
export const teacherRequestSchema = z.object({
  pairId: id,
  /** device-chosen, increasing; echoed by `teacher` or `skip` (as sliceId) */
  requestId: count,
  step: count,
});
export type TeacherRequestMsg = z.infer<typeof teacherRequestSchema>;

/**
 * Coordinator → target: the source's latest logits on the probe split. phase 'trial': apply the
 * readout swap under `gate` and send `teacher_feedback` after k steps; 'distill': the gate accepted
 * the source, so distil on the probe split with the plan's λ (no feedback).
 */
export const teacherSchema = z.object({
  pairId: id,
  cycleId: count,
  requestId: count,
  phase: z.enum(['trial', 'distill']),
  gate: z.number().min(0).max(1),
  /** the source's step behind the logits */
  sourceStep: count,
  values: wireTensorSchema,
});
export type TeacherMsg = z.infer<typeof teacherSchema>;

/** Target → coordinator, k steps after a trial `teacher`: what the gate's update needs. */
export const teacherFeedbackSchema = z.object({
  pairId: id,
  cycleId: count,
  steps: posInt,
  /** s·⟨G_heldout, W_r − W⟩: the held-out gradient along the (capped) readout swap */
  gateGrad: finite,
  /** ‖K‖_F/‖W‖_F of the swap applied */
  branchRatio: z.number().nonnegative().finite().optional(),
  /**
   * The readout W_r itself as a classifier of the target's held-out examples: how many of `n` it
   * labelled right. The coordinator's guard keeps a source only if this beats chance.
   */
  readout: z.object({ hits: count, n: posInt }).refine((r) => r.hits <= r.n, 'hits must not exceed n').optional(),
  metrics: metricsSchema,
});
export type TeacherFeedbackMsg = z.infer<typeof teacherFeedbackSchema>;

/** zod issue list → one readable line naming the fields. */
export function describeZodError(err: z.ZodError): string {
  return err.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}
