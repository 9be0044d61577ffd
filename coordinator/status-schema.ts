// The status snapshot (GET /status) as a zod schema: what a consumer of the endpoint can rely on.
// Strict objects, so a field added to status.ts without a line here fails the endpoint's test,
// and the type check below fails if the two disagree on a field's type.
import { z } from 'zod';
import type { StatusSnapshot } from './status.js';

const count = z.number().int().nonnegative();
const counts = z.record(z.string(), count);
const isoTime = z.iso.datetime();
const endpoint = z.strictObject({ device: z.string(), slot: z.string() });
const wireCounts = z.record(z.string(), z.strictObject({ messages: count, bytes: count }));

export const deviceStatusSchema = z.strictObject({
  id: z.string(),
  connected: z.boolean(),
  session: z.string().optional(),
  connections: count,
  lastSeen: isoTime.optional(),
  registered: z.boolean(),
  model: z.strictObject({ name: z.string(), architecture: z.string(), task: z.string(), modality: z.string() }).optional(),
  slots: z.array(z.strictObject({ name: z.string(), shape: z.tuple([z.number().int().positive(), z.number().int().positive()]) })),
  rank: z.number().int().positive().optional(),
  metrics: z
    .strictObject({
      step: count,
      loss: z.number(),
      valAcc: z.number().min(0).max(1).optional(),
      trainAcc: z.number().min(0).max(1).optional(),
      stepsPerSec: z.number().nonnegative().optional(),
      at: isoTime,
    })
    .optional(),
  rejects: counts,
});

export const pairStatusSchema = z.strictObject({
  id: z.string(),
  source: endpoint,
  target: endpoint,
  rank: z.number().int().positive(),
  active: z.boolean(),
  inactiveReason: z.string().optional(),
  joinDone: z.boolean(),
  auto: z.boolean(),
  sourceMode: z.enum(['real', 'noise']),
  tCycle: z.number().int().positive(),
  k: z.number().int().positive(),
  cyclesStarted: count,
  updates: count,
  drops: counts,
  skips: counts,
  lastGradNorm: z.number().optional(),
  lastClipped: z.boolean().optional(),
  sourceStepFirst: count.optional(),
  sourceStepLast: count.optional(),
  adapterStep: count,
  hasAdapter: z.boolean(),
  nextCycleId: count,
  lastTransferAt: isoTime.optional(),
  lastUpdateAt: isoTime.optional(),
  inFlight: z.strictObject({ cycleId: count, ageMs: z.number(), msToDeadline: z.number() }).optional(),
  alignment: z.enum(['both', 'rows', 'cols', 'none']).optional(),
  channel: z.enum(['parameter', 'output']).optional(),
  gate: z.strictObject({
    value: z.number().min(0).max(1),
    theta: z.number(),
    decision: z.enum(['pending', 'accepted', 'refused']),
    updates: count,
    reason: z.string().optional(),
    decidedAt: count.optional(),
  }),
  // absent where a snapshot leaves traces out: the dashboard's feed, /status?gateTraces=0
  gateTrace: z.array(
    z.strictObject({
      update: count,
      gate: z.number().min(0).max(1),
      gateGrad: z.number().optional(),
      sourceGrad: z.number().optional(),
      trainAcc: z.number().min(0).max(1).optional(),
      beatShadows: z.boolean().optional(),
    }),
  ).optional(),
  branchRatio: z.number().nonnegative().optional(),
});

export const statusSnapshotSchema = z.strictObject({
  at: isoTime,
  url: z.string(),
  uptimeMs: z.number().nonnegative(),
  devices: z.array(deviceStatusSchema),
  pairs: z.array(pairStatusSchema),
  totals: z.strictObject({
    devices: count,
    connected: count,
    registered: count,
    pairs: count,
    cyclesStarted: count,
    updates: count,
    inFlight: count,
    drops: count,
    queueDepth: count.optional(),
    adapterWorkers: count.optional(),
    pendingSlices: count.optional(),
    /** the slice pace asked of the devices, ms (0: none; absent: pacing off or adapters on the event loop) */
    sliceIntervalMs: count.optional(),
  }),
  drops: counts,
  wire: z.strictObject({ in: wireCounts, out: wireCounts }).optional(),
});

// Compile-time: the schema's type and StatusSnapshot must be assignable both ways.
type Parsed = z.infer<typeof statusSnapshotSchema>;
const toParsed = (s: StatusSnapshot): Parsed => s;
const toSnapshot = (s: Parsed): StatusSnapshot => s;
void toParsed;
void toSnapshot;
