// The scalar options of a DeviceClient, checked with zod at construction so a bad value fails
// before anything connects, with a message that names the option.
import { z } from 'zod';
import { describeZodError } from '../shared/protocol/messages.js';

const nonNegInt = z.number().int().nonnegative();

export const deviceScalarOptionsSchema = z.object({
  rank: z.number().int().min(1),
  evalEvery: nonNegInt,
  slowdown: z.number().min(1).finite().optional(),
  paceTimeoutMs: z.number().nonnegative().finite().optional(),
  maxSteps: nonNegInt.optional(),
  seed: z.number().int(),
  lingerMs: z.number().nonnegative().finite().optional(),
  trainer: z.object({
    optimizer: z.enum(['sgd', 'adam', 'momentum']),
    // 0: a frozen device (the untrained-source control) that never changes its weights
    lr: z.number().nonnegative().finite(),
    batchSize: z.number().int().min(1),
  }),
});

/** Throws `device options: <field>: <problem>` for the first bad scalar options. */
export function checkDeviceOptions(opts: unknown): void {
  const res = deviceScalarOptionsSchema.safeParse(opts);
  if (!res.success) throw new Error(`device options: ${describeZodError(res.error)}`);
}
