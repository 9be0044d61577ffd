// Every payload of every event, as a zod schema (the runtime guard) and its TypeScript type.
// On the wire each event carries ONE argument: a MessagePack buffer (shared/codec/tensor-codec.ts)
// of the object described here. Tensors are WireTensor {dtype:"float32", shape, data: bin}.
import { z } from 'zod';
import type { WireTensor } from '../codec/tensor-codec.js';

const id = z.string().min(1).max(128).regex(/^[A-Za-z0-9_.:\-]+$/, 'use letters, digits and _ . : - only');
const count = z.number().int().nonnegative();
const posInt = z.number().int().positive();
const finite = z.number().finite();

/** Loose structural check; wireToFloat32 then checks dtype, byte length, shape and finiteness. */
export const wireTensorSchema = z.custom<WireTensor>(
  (v) => typeof v === 'object' && v !== null && 'data' in v && 'shape' in v && 'dtype' in v,
  { message: 'expected a tensor {dtype, shape, data}' },
);

/** socket.io handshake `auth` object (plain JSON, not MessagePack). */
export const handshakeSchema = z.object({
  deviceId: id,
  token: z.string().min(1, 'token is empty'),
  protocolVersion: z.number().int(),
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
});
export type TransferMsg = z.infer<typeof transferSchema>;

export const metricsSchema = z.object({
  step: count,
  loss: finite,
  /** accuracy on the device's own held-out split, 0..1 */
  valAcc: z.number().min(0).max(1).optional(),
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
  metrics: metricsSchema,
});
export type FeedbackMsg = z.infer<typeof feedbackSchema>;

export const rejectSchema = z.object({
  code: z.string(),
  reason: z.string(),
  /** the event that was refused */
  event: z.string(),
  ref: z.object({ pairId: z.string().optional(), cycleId: count.optional(), sliceId: count.optional(), slot: z.string().optional() }).optional(),
});
export type RejectMsg = z.infer<typeof rejectSchema>;

/** zod issue list → one readable line naming the fields. */
export function describeZodError(err: z.ZodError): string {
  return err.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}
