// The experiment file (YAML): devices, pairs, seeds, baselines and output. Validated with zod so
// that every error names the field, e.g. `devices[1].dataset.task: Invalid option`.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { datasetSpecSchema } from '../../client/data/registry.js';
import { modelSpecSchema } from '../../client/models/registry.js';

const id = z.string().min(1).max(64).regex(/^[A-Za-z0-9_.\-]+$/, 'use letters, digits and _ . - only');
const posInt = z.number().int().positive();

export const BASELINES = ['alone', 'mergenet', 'noise', 'useless', 'wrong', 'fedavg', 'distill', 'copy'] as const;
export type Baseline = (typeof BASELINES)[number];
/**
 * The conditions that run the real coordinator and devices: mergenet, and its controls: 'noise'
 * (the coordinator replaces what the source sends by noise), 'useless' (the sources never train)
 * and 'wrong' (the sources learn every label shifted by one class).
 */
export const FLEET_BASELINES = ['mergenet', 'noise', 'useless', 'wrong'] as const;
export type FleetBaseline = (typeof FLEET_BASELINES)[number];
export function isFleetCondition(c: string): c is FleetBaseline {
  return (FLEET_BASELINES as readonly string[]).includes(c);
}

export const deviceSchema = z.strictObject({
  id,
  model: modelSpecSchema,
  dataset: datasetSpecSchema,
  backend: z.enum(['auto', 'wasm', 'cpu', 'tensorflow']).default('auto'),
  steps: posInt,
  batchSize: posInt.default(32),
  lr: z.number().positive().default(1e-3),
  optimizer: z.enum(['adam', 'sgd', 'momentum']).default('adam'),
  /** ≥ 1: the device sleeps (slowdown − 1)× each step's own time, standing in for weak hardware */
  slowdown: z.number().min(1).default(1),
  /** evaluate on the test split every this many steps */
  evalEvery: posInt.default(100),
  /** rank this device offers (pairs may use less) */
  rank: posInt.default(8),
  /** never changes its weights (learning rate 0): the untrained source of the 'useless' control */
  frozen: z.boolean().default(false),
});
export type DeviceSpec = z.infer<typeof deviceSchema>;

export const pairSpecSchema = z.strictObject({
  source: z.strictObject({ device: id, slot: z.string().min(1) }),
  target: z.strictObject({ device: id, slot: z.string().min(1) }),
  rank: posInt.default(8),
  tCycle: posInt.default(10),
  k: posInt.default(5),
  tau: z.number().positive().default(0.5),
  /** AdapterConfig overrides (lr, layers, heads, attnDim, …) */
  adapter: z.record(z.string(), z.number()).default({}),
  /** 'heldout' (G from the target's held-out split) or 'train' (its training batches) */
  feedback: z.enum(['train', 'heldout']).default('heldout'),
  /** where the adapter's output starts: 'auto' (what the slot shapes share), 'both', 'rows', 'cols', 'none' */
  align: z.enum(['auto', 'both', 'rows', 'cols', 'none']).default('auto'),
  /** adapter learning rate for a pass-through start (0: the pass-through is used as is) */
  refineLr: z.number().nonnegative().default(0),
  /** join-time transfer at the target's first transfer: 'off', 'check' (kept if its held-out loss falls), 'always' */
  join: z.enum(['off', 'check', 'always', 'once']).default('off'),
  /** trust gate overrides (enabled, init, lr, guard, decideAfter, alpha) */
  gate: z.record(z.string(), z.union([z.number(), z.boolean(), z.string()])).default({}),
  /** 'parameter' (slices), 'output' (logits on the probe split) or 'auto' (the coordinator decides) */
  channel: z.enum(['auto', 'parameter', 'output']).default('auto'),
  /** distillation settings of the output channel (lambda, temperature, batchSize) */
  distill: z.record(z.string(), z.number()).default({}),
});
export type PairSpec = z.infer<typeof pairSpecSchema>;

export const experimentSchema = z
  .strictObject({
    name: id,
    description: z.string().default(''),
    scenario: z.enum(['cross-architecture', 'cross-task', 'cross-modality', 'aligned', 'custom']).default('custom'),
    seeds: z.array(z.number().int().nonnegative()).min(1),
    /** the device whose accuracy the report is about */
    target: id,
    devices: z.array(deviceSchema).min(1),
    pairs: z.array(pairSpecSchema).default([]),
    baselines: z.array(z.enum(BASELINES)).min(1).default(['alone', 'mergenet', 'noise']),
    mode: z.enum(['process', 'inprocess']).default('process'),
    /**
     * Pace the devices to the coordinator: after a target slice, the target waits (up to this many
     * ms) for the coordinator's answer before its next step, so every cycle T_cycle allows happens
     * even when the coordinator is slower than the devices. 0: devices never wait.
     */
    paceTimeoutMs: z.number().int().nonnegative().default(30_000),
    /**
     * The public probe split of the output channel: MNIST examples [offset, offset + count) of each
     * run's seeded order (checked to overlap no device's train, held-out or test window).
     */
    probe: z.strictObject({ offset: z.number().int().nonnegative(), count: posInt.max(10_000).default(500) }).optional(),
    /** source steps before the target starts (a source trained for a while first) */
    sourceWarmup: z.number().int().nonnegative().default(0),
    /** copy oracle: which source slot initialises which target slot (same shape required) */
    copy: z
      .strictObject({
        sourceDevice: id,
        sourceSlot: z.string(),
        targetSlot: z.string(),
        /** the 'copy' condition copies only the rank-r part (A·B of the slice) instead of the whole slot */
        rank: posInt.optional(),
        /** extra conditions 'copy:rank<r>', one per rank, each copying only the rank-r part */
        ranks: z.array(posInt).default([]),
      })
      .optional(),
    /** distillation: soft labels from this device's model (trained alone first) on the target's own inputs */
    distill: z.strictObject({ teacher: id, alpha: z.number().min(0).max(1).default(0.5) }).optional(),
    /** federated averaging: these devices (default: all) train in lockstep and average every `every` steps */
    fedavg: z.strictObject({ every: posInt.default(10), devices: z.array(id).min(2).optional() }).optional(),
    output: z.string().default('runs'),
  })
  .superRefine((e, ctx) => {
    const ids = new Set<string>();
    e.devices.forEach((d, i) => {
      if (ids.has(d.id)) ctx.addIssue({ code: 'custom', path: ['devices', i, 'id'], message: `duplicate device id "${d.id}"` });
      ids.add(d.id);
    });
    if (!ids.has(e.target)) ctx.addIssue({ code: 'custom', path: ['target'], message: `no device "${e.target}"` });
    e.pairs.forEach((p, i) => {
      for (const end of ['source', 'target'] as const) {
        if (!ids.has(p[end].device)) ctx.addIssue({ code: 'custom', path: ['pairs', i, end, 'device'], message: `no device "${p[end].device}"` });
      }
      if (p.k > p.tCycle) ctx.addIssue({ code: 'custom', path: ['pairs', i, 'k'], message: `k (${p.k}) must not exceed tCycle (${p.tCycle})` });
    });
    if (e.baselines.some((b) => (FLEET_BASELINES as readonly string[]).includes(b)) && !e.pairs.some((p) => p.target.device === e.target)) {
      ctx.addIssue({ code: 'custom', path: ['pairs'], message: `${FLEET_BASELINES.join('/')} need a pair whose target is "${e.target}"` });
    }
    if (e.baselines.includes('copy') && !e.copy) ctx.addIssue({ code: 'custom', path: ['copy'], message: 'the copy baseline needs a `copy` section' });
    if (e.baselines.includes('distill') && !e.distill) ctx.addIssue({ code: 'custom', path: ['distill'], message: 'the distill baseline needs a `distill` section' });
    const known = (path: (string | number)[], dev: string, role: string) => {
      if (!ids.has(dev)) ctx.addIssue({ code: 'custom', path, message: `no device "${dev}"` });
      else if (dev === e.target) ctx.addIssue({ code: 'custom', path, message: `the ${role} must be another device than the target "${e.target}"` });
    };
    if (e.copy) known(['copy', 'sourceDevice'], e.copy.sourceDevice, 'copy source');
    if (e.distill) known(['distill', 'teacher'], e.distill.teacher, 'teacher');
    if (e.fedavg?.devices) {
      e.fedavg.devices.forEach((d, i) => {
        if (!ids.has(d)) ctx.addIssue({ code: 'custom', path: ['fedavg', 'devices', i], message: `no device "${d}"` });
      });
      if (!e.fedavg.devices.includes(e.target)) ctx.addIssue({ code: 'custom', path: ['fedavg', 'devices'], message: `must include the target "${e.target}"` });
    }
    if (e.baselines.includes('fedavg') && !e.fedavg?.devices && e.devices.length < 2) {
      ctx.addIssue({ code: 'custom', path: ['baselines'], message: 'fedavg needs at least two devices' });
    }
  });
export type Experiment = z.infer<typeof experimentSchema>;

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), '') || '(root)';
}

/** Validate an already-parsed experiment object; throws one Error listing every bad field. */
export function parseExperiment(obj: unknown, where = 'experiment'): Experiment {
  const res = experimentSchema.safeParse(obj);
  if (!res.success) {
    const lines = res.error.issues.slice(0, 10).map((i) => `  ${formatPath(i.path)}: ${i.message}`);
    throw new Error(`${where} is invalid:\n${lines.join('\n')}`);
  }
  return res.data;
}

/**
 * Apply `path=value` overrides to a parsed experiment object before validation, e.g.
 * `devices[1].dataset.labels=300` or `pairs[0].gate.guard=signtest`. Values are YAML scalars.
 */
export function applyOverrides(obj: unknown, sets: readonly string[]): unknown {
  for (const set of sets) {
    const eq = set.indexOf('=');
    if (eq <= 0) throw new Error(`--set: expected path=value, got "${set}"`);
    const keys = set
      .slice(0, eq)
      .replace(/\[(\d+)\]/g, '.$1')
      .split('.')
      .filter((k) => k !== '');
    const value: unknown = parseYaml(set.slice(eq + 1));
    let at = obj as Record<string, unknown>;
    keys.forEach((k, i) => {
      if (typeof at !== 'object' || at === null) throw new Error(`--set ${set}: "${keys.slice(0, i).join('.')}" is not an object`);
      if (i === keys.length - 1) at[k] = value;
      else {
        at[k] ??= /^\d+$/.test(keys[i + 1]) ? [] : {};
        at = at[k] as Record<string, unknown>;
      }
    });
  }
  return obj;
}

export function loadExperiment(path: string, sets: readonly string[] = []): Experiment {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read experiment file ${path}: ${(err as Error).message}`);
  }
  let obj: unknown;
  try {
    obj = parseYaml(text);
  } catch (err) {
    throw new Error(`${path} is not valid YAML: ${(err as Error).message}`);
  }
  return parseExperiment(applyOverrides(obj, sets), path);
}
