// The coordinator's configuration: a YAML file, validated with zod, with errors that name the
// field (e.g. `pairs[1].target.slot: required`). Tokens given by environment variable or file are
// resolved here, at load, so that a missing secret fails at start-up and not at the first handshake.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { adapterConfigSchema, defaultAdapterConfig, type AdapterConfig } from './adapter/config.js';
import { ALIGNMENTS, type Alignment } from './adapter/pass-through.js';
import { gateConfigSchema, type GateConfig } from './gate/trust-gate.js';

/** A configuration that cannot be used; `issues` lists every problem as "field: message". */
export class ConfigError extends Error {
  constructor(
    readonly issues: string[],
    readonly source?: string,
  ) {
    super(`invalid coordinator config${source ? ` ${source}` : ''}:\n  ${issues.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

const SOURCE_MODES = ['real', 'noise'] as const;
export type SourceMode = (typeof SOURCE_MODES)[number];
/** Where a target computes G: 'train' (its training batches) or 'heldout' (its val split). */
const FEEDBACK_SOURCES = ['train', 'heldout'] as const;
export type FeedbackSource = (typeof FEEDBACK_SOURCES)[number];

const idSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_.:\-]+$/, { error: 'use letters, digits and _ . : - only' });
const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

/**
 * Adapter hyper-parameters a config may override: every field of the adapter config except the
 * rank (the pair decides it). Built from the adapter's own schema so the two cannot drift.
 */
const adapterShape = (adapterConfigSchema as unknown as { shape: Record<string, z.ZodType> }).shape;
export const adapterOverridesSchema = z.strictObject(
  Object.fromEntries(
    Object.entries(adapterShape)
      .filter(([k]) => k !== 'rank')
      .map(([k, v]) => [k, v.optional()]),
  ),
);
export type AdapterOverrides = Partial<Omit<AdapterConfig, 'rank'>>;

const endpointSchema = z.strictObject({ device: idSchema, slot: idSchema });

/** Gate settings a config may give: any subset; the rest come from defaults.gate, then the built-in defaults. */
const gateOverridesSchema = (gateConfigSchema as unknown as { partial(): z.ZodType<Partial<GateConfig>> }).partial();
/** 'auto': what the slot shapes share (equal rows, columns, both or neither). */
const alignSchema = z.enum(['auto', ...ALIGNMENTS]);
export type AlignSetting = z.infer<typeof alignSchema>;

/** A secret given exactly one way: inline, by environment variable, or by file. */
const secretFields = {
  token: z.string().min(1, { error: 'token is empty' }).optional(),
  tokenEnv: z.string().min(1).optional(),
  tokenFile: z.string().min(1).optional(),
};
function exactlyOneSecret(d: { token?: string; tokenEnv?: string; tokenFile?: string }, ctx: z.RefinementCtx): void {
  const given = [d.token, d.tokenEnv, d.tokenFile].filter((v) => v !== undefined).length;
  if (given !== 1) ctx.addIssue({ code: 'custom', message: `give exactly one of token, tokenEnv, tokenFile (got ${given})` });
}

const deviceSchema = z.strictObject({ id: idSchema, ...secretFields }).superRefine(exactlyOneSecret);

/** Who may read /status, /metrics and the dashboard: a secret of its own, never a device's. */
const viewerSchema = z
  .strictObject({
    /** shown in logs only */
    name: z.string().min(1).max(64).optional(),
    ...secretFields,
  })
  .superRefine(exactlyOneSecret);

/** Distillation on the probe split, for output pairs whose trial passed (docs/DESIGN.md §10). */
const distillSchema = z.strictObject({
  /** weight λ of the term λ·T²·KL(source ‖ target) */
  lambda: z.number().nonnegative().finite().default(1),
  temperature: z.number().positive().finite().default(2),
  /** probe examples per step */
  batchSize: posInt.max(4096).default(32),
});
export type DistillConfig = z.infer<typeof distillSchema>;

export const CHANNELS = ['auto', 'parameter', 'output'] as const;
export type ChannelSetting = (typeof CHANNELS)[number];

/**
 * A public probe split (protocol 3): examples [offset, offset + count) of a shipped corpus in the
 * order seeded by `seed`, offered to every device of its input space. Never labelled, never trained
 * on; the coordinator announces it by hash.
 */
const probeSchema = z.strictObject({
  id: idSchema.optional(),
  dataset: z.enum(['mnist']),
  seed: nonNegInt,
  offset: nonNegInt,
  count: posInt.max(10_000).default(500),
});

const pairSchema = z.strictObject({
  id: idSchema.optional(),
  source: endpointSchema,
  target: endpointSchema,
  rank: posInt.optional(),
  tCycle: posInt.optional(),
  k: posInt.optional(),
  tau: z.number().positive().finite().optional(),
  adapter: adapterOverridesSchema.optional(),
  /** 'noise' is the control: the source slice is replaced by Gaussian noise of equal shape and norm. */
  sourceMode: z.enum(SOURCE_MODES).default('real'),
  /** Where the target computes the feedback G (default defaults.feedback): its held-out split or its training batches. */
  feedback: z.enum(FEEDBACK_SOURCES).optional(),
  /** Where the adapter's output starts: the source's factors on the axes the slots share (default defaults.align). */
  align: alignSchema.optional(),
  /** Adapter learning rate for a pass-through start (default defaults.refineLr; 0: no adapter runs). */
  refineLr: z.number().nonnegative().finite().optional(),
  /** The pair's trust gate (merged over defaults.gate). */
  gate: gateOverridesSchema.optional(),
  /** Join-time transfer (default defaults.join): off, check (kept if the held-out loss falls), always, once (always, and the pair ends there: no live channel follows). */
  join: z.enum(['off', 'check', 'always', 'once']).optional(),
  /**
   * What the pair exchanges (default defaults.channel): 'parameter' (slices of the slots), 'output'
   * (the source's logits on the probe split: readout trial, then distillation), or 'auto': the
   * parameter channel where the slots share both axes, else the output channel where the devices
   * share an input space, a probe split and a task, else the pair is refused with the reasons.
   */
  channel: z.enum(CHANNELS).optional(),
  /** Distillation settings for the output channel (merged over defaults.distill). */
  distill: distillSchema.partial().optional(),
});

const rawConfigSchema = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(0),
  devices: z.array(deviceSchema).default([]),
  /** Tokens that may read the HTTP endpoints (/status, /metrics, the dashboard); none: they answer 401. */
  viewers: z.array(viewerSchema).default([]),
  defaults: z
    .strictObject({
      rank: posInt.default(8),
      tCycle: posInt.default(50),
      k: posInt.default(10),
      tau: z.number().positive().finite().default(0.5),
      adapter: adapterOverridesSchema.default({}),
      feedback: z.enum(FEEDBACK_SOURCES).default('heldout'),
      align: alignSchema.default('auto'),
      refineLr: z.number().nonnegative().finite().default(0),
      gate: gateOverridesSchema.default({}),
      join: z.enum(['off', 'check', 'always', 'once']).default('off'),
      channel: z.enum(CHANNELS).default('auto'),
      distill: distillSchema.prefault({}),
    })
    .prefault({}),
  pairs: z.array(pairSchema).default([]),
  /** Public probe splits, at most one per input space (the output channel needs one). */
  probes: z.array(probeSchema).default([]),
  autoPair: z
    .strictObject({
      enabled: z.boolean().default(false),
      /** 'first': each device's first registered slot; otherwise the slot of that name on each device. */
      slot: z.union([z.literal('first'), idSchema]).default('first'),
      sourceMode: z.enum(SOURCE_MODES).default('real'),
    })
    .prefault({}),
  limits: z
    .strictObject({
      maxMessageBytes: posInt.max(1 << 30).default(16 * 1024 * 1024),
      maxRank: posInt.max(4096).default(64),
    })
    .prefault({}),
  timing: z
    .strictObject({
      cycleTimeoutMs: posInt.default(30_000),
      sourceMaxAgeMs: posInt.default(120_000),
    })
    .prefault({}),
  /** Where adapters run (docs/DESIGN.md §11): 0 on the event loop; N or 'auto' (one per core) in worker threads. */
  throughput: z
    .strictObject({
      adapterWorkers: z.union([z.literal('auto'), nonNegInt.max(256)]).default(0),
      /** adapter requests waiting in the pool, per worker, beyond which new cycles are skipped as `overloaded` */
      maxQueuedPerWorker: posInt.default(16),
      /**
       * Where adapters run in workers: when cycles are shed, ask the devices to send slices further
       * apart (the `pace` event; coordinator/pacer.ts). windowMs: how often the pace is reconsidered.
       */
      pace: z
        .strictObject({
          enabled: z.boolean().default(true),
          windowMs: posInt.min(100).default(2000),
        })
        .prefault({}),
    })
    .prefault({}),
  checkpoint: z
    .strictObject({
      dir: z.string().min(1).optional(),
      everyUpdates: posInt.default(50),
      /** periodic checkpoints at most this often (ms); a shutdown's checkpoint is never held back */
      minIntervalMs: nonNegInt.default(10_000),
    })
    .prefault({}),
  /** 0 turns the periodic status log off. */
  statusEveryMs: nonNegInt.default(10_000),
});
type RawConfig = z.infer<typeof rawConfigSchema>;


export interface Endpoint {
  device: string;
  slot: string;
}

export interface DeviceConfig {
  id: string;
  /** The resolved secret. */
  token: string;
  /** Where the token came from, for logs (never the token itself). */
  tokenSource: string;
}

export interface ViewerConfig {
  name: string;
  /** The resolved secret. */
  token: string;
  tokenSource: string;
}

export interface PairConfig {
  id: string;
  source: Endpoint;
  target: Endpoint;
  /** Requested rank; the effective rank is capped by both slots and limits.maxRank. */
  rank: number;
  tCycle: number;
  k: number;
  tau: number;
  sourceMode: SourceMode;
  /** Sent to the target in its plan: where it computes G. */
  feedback: FeedbackSource;
  /** Where the adapter's output starts ('auto': decided from the slot shapes once both are known). */
  align: AlignSetting;
  /** Adapter learning rate when the start is a pass-through (0: the pass-through is used as is). */
  refineLr: number;
  /** The trust gate, fully resolved. */
  gate: GateConfig;
  /** Join-time transfer at the target's first transfer (pass-through starts only). */
  join: 'off' | 'check' | 'always' | 'once';
  /** defaults.adapter merged with the pair's own overrides. */
  adapter: AdapterOverrides;
  /** Created by autoPair rather than listed in the config. */
  auto: boolean;
  /** What the pair exchanges ('auto': decided once both devices registered). */
  channel: ChannelSetting;
  /** Distillation on the probe split (output channel). */
  distill: DistillConfig;
}

export interface ProbeConfig {
  id: string;
  dataset: 'mnist';
  seed: number;
  offset: number;
  count: number;
}

export interface CoordinatorConfig {
  host: string;
  port: number;
  devices: DeviceConfig[];
  /** Readers of the HTTP endpoints (see http-routes.ts). */
  viewers: ViewerConfig[];
  defaults: {
    rank: number;
    tCycle: number;
    k: number;
    tau: number;
    adapter: AdapterOverrides;
    feedback: FeedbackSource;
    align: AlignSetting;
    refineLr: number;
    gate: GateConfig;
    join: 'off' | 'check' | 'always' | 'once';
    channel: ChannelSetting;
    distill: DistillConfig;
  };
  pairs: PairConfig[];
  probes: ProbeConfig[];
  autoPair: { enabled: boolean; slot: 'first' | string; sourceMode: SourceMode };
  limits: { maxMessageBytes: number; maxRank: number };
  timing: { cycleTimeoutMs: number; sourceMaxAgeMs: number };
  /** adapterWorkers resolved ('auto': the cores); 0: adapters run on the event loop */
  throughput: { adapterWorkers: number; maxQueuedPerWorker: number; pace: { enabled: boolean; windowMs: number } };
  checkpoint: { dir?: string; everyUpdates: number; minIntervalMs: number };
  statusEveryMs: number;
}

export interface ParseOptions {
  /** Environment for `tokenEnv` (default process.env). */
  env?: Record<string, string | undefined>;
  /** Directory that relative `tokenFile` and `checkpoint.dir` paths are resolved against (default cwd). */
  baseDir?: string;
  /** Named in error messages (the file path). */
  source?: string;
}

/** `pairs.1.target.slot` → `pairs[1].target.slot`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out || '(config)';
}

/** The default id of a pair: readable, and unique per (source, target). */
export function defaultPairId(source: Endpoint, target: Endpoint): string {
  return `${source.device}.${source.slot}--${target.device}.${target.slot}`;
}

/**
 * Validate an already-parsed object (from YAML or built in code) and resolve the tokens.
 * Throws ConfigError listing every problem by field.
 */
export function parseCoordinatorConfig(obj: unknown, opts: ParseOptions = {}): CoordinatorConfig {
  const res = rawConfigSchema.safeParse(obj ?? {}, {
    error: (iss) => (iss.code === 'invalid_type' && iss.input === undefined ? 'required' : undefined),
  });
  if (!res.success) {
    throw new ConfigError(
      res.error.issues.map((i) => `${formatPath(i.path)}: ${i.message}`),
      opts.source,
    );
  }
  return resolveConfig(res.data, opts);
}

function resolveConfig(raw: RawConfig, opts: ParseOptions): CoordinatorConfig {
  const issues: string[] = [];
  const env = opts.env ?? process.env;
  const baseDir = opts.baseDir ?? process.cwd();

  const devices: DeviceConfig[] = [];
  const seen = new Set<string>();
  raw.devices.forEach((d, i) => {
    const at = `devices[${i}]`;
    if (seen.has(d.id)) issues.push(`${at}.id: duplicate device id "${d.id}"`);
    seen.add(d.id);
    const { token, tokenSource } = resolveSecret(d, at, env, baseDir, issues);
    if (token) devices.push({ id: d.id, token, tokenSource });
  });

  const viewers: ViewerConfig[] = [];
  const deviceTokens = new Map(devices.map((d) => [d.token, d.id]));
  raw.viewers.forEach((v, i) => {
    const at = `viewers[${i}]`;
    const { token, tokenSource } = resolveSecret(v, at, env, baseDir, issues);
    if (!token) return;
    // A device token must never open the dashboard: refuse a config that would make it so.
    const dev = deviceTokens.get(token);
    if (dev !== undefined) issues.push(`${at}: the viewer token is the token of device "${dev}"; give viewers a secret of their own`);
    viewers.push({ name: v.name ?? `viewer-${i}`, token, tokenSource });
  });

  const pairs: PairConfig[] = [];
  const pairIds = new Set<string>();
  const endpointsSeen = new Set<string>();
  raw.pairs.forEach((p, i) => {
    const at = `pairs[${i}]`;
    for (const end of ['source', 'target'] as const) {
      if (!seen.has(p[end].device)) issues.push(`${at}.${end}.device: unknown device "${p[end].device}" (not in devices)`);
    }
    if (p.source.device === p.target.device && p.source.slot === p.target.slot) {
      issues.push(`${at}.target: the target is the source itself`);
    }
    const id = p.id ?? defaultPairId(p.source, p.target);
    if (pairIds.has(id)) issues.push(`${at}.id: duplicate pair id "${id}"`);
    pairIds.add(id);
    const ends = `${p.source.device}/${p.source.slot}>${p.target.device}/${p.target.slot}`;
    if (endpointsSeen.has(ends)) issues.push(`${at}: another pair already links the same source and target`);
    endpointsSeen.add(ends);
    const rank = p.rank ?? raw.defaults.rank;
    if (rank > raw.limits.maxRank) issues.push(`${at}.rank: ${rank} is above limits.maxRank (${raw.limits.maxRank})`);
    const adapter = { ...raw.defaults.adapter, ...(p.adapter ?? {}) } as AdapterOverrides;
    try {
      defaultAdapterConfig(rank, adapter);
    } catch (err) {
      issues.push(`${at}.adapter: ${(err as Error).message.replace(/^invalid adapter config: /, '')}`);
    }
    let gate: GateConfig | undefined;
    try {
      gate = gateConfigSchema.parse({ ...raw.defaults.gate, ...(p.gate ?? {}) });
    } catch (err) {
      issues.push(`${at}.gate: ${err instanceof z.ZodError ? err.issues.map((x) => `${formatPath(x.path)}: ${x.message}`).join('; ') : (err as Error).message}`);
    }
    pairs.push({
      id,
      source: p.source,
      target: p.target,
      rank,
      tCycle: p.tCycle ?? raw.defaults.tCycle,
      k: p.k ?? raw.defaults.k,
      tau: p.tau ?? raw.defaults.tau,
      sourceMode: p.sourceMode,
      feedback: p.feedback ?? raw.defaults.feedback,
      align: p.align ?? raw.defaults.align,
      refineLr: p.refineLr ?? raw.defaults.refineLr,
      gate: gate ?? gateConfigSchema.parse({}),
      join: p.join ?? raw.defaults.join,
      adapter,
      auto: false,
      channel: p.channel ?? raw.defaults.channel,
      distill: { ...raw.defaults.distill, ...(p.distill ?? {}) },
    });
  });
  if (raw.defaults.rank > raw.limits.maxRank) {
    issues.push(`defaults.rank: ${raw.defaults.rank} is above limits.maxRank (${raw.limits.maxRank})`);
  }
  try {
    defaultAdapterConfig(Math.min(raw.defaults.rank, raw.limits.maxRank), raw.defaults.adapter as AdapterOverrides);
  } catch (err) {
    issues.push(`defaults.adapter: ${(err as Error).message.replace(/^invalid adapter config: /, '')}`);
  }
  let defaultGate: GateConfig | undefined;
  try {
    defaultGate = gateConfigSchema.parse(raw.defaults.gate);
  } catch (err) {
    issues.push(`defaults.gate: ${err instanceof z.ZodError ? err.issues.map((x) => `${formatPath(x.path)}: ${x.message}`).join('; ') : (err as Error).message}`);
  }
  if (issues.length) throw new ConfigError(issues, opts.source);

  return {
    host: raw.host,
    port: raw.port,
    devices,
    viewers,
    defaults: { ...raw.defaults, adapter: raw.defaults.adapter as AdapterOverrides, gate: defaultGate! },
    pairs,
    probes: raw.probes.map((p) => ({ ...p, id: p.id ?? `${p.dataset}-s${p.seed}-o${p.offset}-n${p.count}` })),
    autoPair: raw.autoPair,
    limits: raw.limits,
    timing: raw.timing,
    throughput: {
      adapterWorkers: raw.throughput.adapterWorkers === 'auto' ? availableParallelism() : raw.throughput.adapterWorkers,
      maxQueuedPerWorker: raw.throughput.maxQueuedPerWorker,
      pace: { ...raw.throughput.pace },
    },
    checkpoint: {
      dir: raw.checkpoint.dir === undefined ? undefined : resolve(baseDir, raw.checkpoint.dir),
      everyUpdates: raw.checkpoint.everyUpdates,
      minIntervalMs: raw.checkpoint.minIntervalMs,
    },
    statusEveryMs: raw.statusEveryMs,
  };
}

/** A secret given inline, by environment variable or by file; problems are pushed to `issues`. */
function resolveSecret(
  d: { token?: string; tokenEnv?: string; tokenFile?: string },
  at: string,
  env: Record<string, string | undefined>,
  baseDir: string,
  issues: string[],
): { token?: string; tokenSource: string } {
  if (d.token !== undefined) return { token: d.token, tokenSource: 'inline' };
  if (d.tokenEnv !== undefined) {
    const token = env[d.tokenEnv];
    if (token === undefined) issues.push(`${at}.tokenEnv: environment variable ${d.tokenEnv} is not set`);
    else if (token === '') issues.push(`${at}.tokenEnv: environment variable ${d.tokenEnv} is empty`);
    return { token, tokenSource: `env ${d.tokenEnv}` };
  }
  if (d.tokenFile !== undefined) {
    const path = resolve(baseDir, d.tokenFile);
    try {
      // A trailing newline is an editor's, not part of the secret.
      const token = readFileSync(path, 'utf8').replace(/\r?\n$/, '');
      if (token === '') issues.push(`${at}.tokenFile: ${path} is empty`);
      return { token, tokenSource: `file ${path}` };
    } catch (err) {
      issues.push(`${at}.tokenFile: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return { tokenSource: `file ${path}` };
    }
  }
  return { tokenSource: '' };
}

/** Read, parse and validate a YAML config file. Relative paths in it are resolved against its directory. */
export function loadCoordinatorConfig(path: string, opts: Omit<ParseOptions, 'source' | 'baseDir'> = {}): CoordinatorConfig {
  const abs = resolve(path);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (err) {
    throw new ConfigError([`cannot read ${abs}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`], abs);
  }
  let obj: unknown;
  try {
    obj = parseYaml(text);
  } catch (err) {
    throw new ConfigError([`not valid YAML: ${(err as Error).message}`], abs);
  }
  return parseCoordinatorConfig(obj, { ...opts, baseDir: dirname(abs), source: abs });
}

/** A 32-bit FNV-1a hash: derives a stable adapter seed from a pair id. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * The adapter config of a pair at its effective rank: the defaults of docs/DESIGN.md §3 and §5, then defaults.adapter,
 * then the pair's overrides. The seed is derived from the pair id (mixed with a configured seed),
 * so two pairs never start from the same weights by accident and a restart gets the same ones.
 */
export function pairAdapterConfig(pair: Pick<PairConfig, 'id' | 'adapter'>, rank: number): AdapterConfig {
  const seed = (hash32(pair.id) ^ (pair.adapter.seed ?? 0)) >>> 0;
  return defaultAdapterConfig(rank, { ...pair.adapter, seed });
}
