// Configuration of one LPKA adapter and its AdamW optimiser (docs/DESIGN.md §3 "The LPKA
// adapter" and §5 "Feedback and the adapter update"). One object covers both, because the
// coordinator creates, checkpoints and restores them together, one per pair.
import { z } from 'zod';
import type { AdamWConfig } from './adamw.js';

/**
 * The adapter's shape and seed, plus the hyper-parameters of its AdamW optimiser (AdamWConfig;
 * defaults lr 1e-4, beta1 0.9, beta2 0.999, eps 1e-8, weightDecay 0.01, clipNorm 50).
 */
export interface AdapterConfig extends AdamWConfig {
  /** Rank r of the slices: the width of every token. */
  rank: number;
  /** Knowledge-transfer layers (default 2). */
  layers: number;
  /** Attention heads (default 4). */
  heads: number;
  /** Width of the q/k/v projections (default 32); divisible by `heads`. */
  attnDim: number;
  /** Hidden width of each token-wise FFN (default 4·rank). */
  ffnDim: number;
  /** Seed of the deterministic initialisation. */
  seed: number;
  /**
   * Scale of the residual branches' output projections (MHA Wo, FFN W2) as a multiple of their
   * Glorot-uniform limit. Absent or 0 (the default) initialises them to zero, so a fresh adapter is
   * exactly the identity; tests set it > 0 so that every parameter receives gradient at once.
   */
  initScale?: number;
}

const posInt = (what: string, max: number) =>
  z
    .number({ error: `${what} must be a number` })
    .int({ error: `${what} must be an integer` })
    .min(1, { error: `${what} must be at least 1` })
    .max(max, { error: `${what} must be at most ${max}` });

const finite = (what: string) => z.number({ error: `${what} must be a finite number` });

export const adapterConfigSchema = z
  .strictObject({
    rank: posInt('rank', 4096),
    layers: posInt('layers', 64),
    heads: posInt('heads', 256),
    attnDim: posInt('attnDim', 8192),
    ffnDim: posInt('ffnDim', 65536),
    lr: finite('lr').min(0, { error: 'lr must be ≥ 0' }),
    beta1: finite('beta1').min(0, { error: 'beta1 must be in [0, 1)' }).lt(1, { error: 'beta1 must be in [0, 1)' }),
    beta2: finite('beta2').min(0, { error: 'beta2 must be in [0, 1)' }).lt(1, { error: 'beta2 must be in [0, 1)' }),
    eps: finite('eps').gt(0, { error: 'eps must be > 0' }),
    weightDecay: finite('weightDecay').min(0, { error: 'weightDecay must be ≥ 0' }),
    clipNorm: finite('clipNorm').gt(0, { error: 'clipNorm must be > 0' }),
    seed: z
      .number({ error: 'seed must be a number' })
      .int({ error: 'seed must be an integer' })
      .min(0, { error: 'seed must be ≥ 0' })
      .max(0xffffffff, { error: 'seed must fit in 32 bits' }),
    initScale: finite('initScale').min(0, { error: 'initScale must be ≥ 0' }).optional(),
  })
  .refine((c) => c.attnDim % c.heads === 0, {
    error: 'attnDim must be divisible by heads',
    path: ['attnDim'],
  });

/** Validate any value as an AdapterConfig; the Error lists every problem as "field: message". */
export function parseAdapterConfig(value: unknown): AdapterConfig {
  const res = adapterConfigSchema.safeParse(value);
  if (!res.success) {
    const lines = res.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(config)'}: ${i.message}`);
    throw new Error(`invalid adapter config: ${lines.join('; ')}`);
  }
  return res.data;
}

/** The defaults of docs/DESIGN.md §3 and §5 for rank r, with optional overrides; validated. */
export function defaultAdapterConfig(rank: number, overrides: Partial<Omit<AdapterConfig, 'rank'>> = {}): AdapterConfig {
  return parseAdapterConfig({
    rank,
    layers: 2,
    heads: 4,
    attnDim: 32,
    ffnDim: 4 * rank,
    lr: 1e-4,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0.01,
    clipNorm: 50,
    seed: 0,
    ...overrides,
  });
}
