// Seed-level summary of one experiment's target: per-condition accuracy, paired difference
// against 'alone' with a 95 % CI, bytes and wall time. Pure: no I/O.

import { mean, pairedDiff, sampleStd } from './stats.js';
import type { ConditionRun, ExperimentResult } from './types.js';

export const REFERENCE_CONDITION = 'alone';

export type Verdict =
  | 'reference'
  | 'better than alone'
  | 'worse than alone'
  | 'no significant difference'
  | 'too few paired seeds'
  | 'no alone baseline';

export interface MeanStd {
  mean: number;
  /** Sample std across seeds; NaN when n < 2. */
  std: number;
}

export interface ConditionSummary {
  condition: string;
  /** Seeds with a run for this condition. */
  n: number;
  seeds: number[];
  finalAcc: MeanStd;
  bestAcc: MeanStd;
  /** Paired difference of final accuracy vs 'alone', in percentage points; null for 'alone' itself. */
  diffVsAlone: null | {
    n: number;
    mean: number;
    std: number;
    ci95: [number, number];
    /** Per seed, points. */
    perSeed: { seed: number; diff: number }[];
  };
  verdict: Verdict;
  /** Mean bytes per run. */
  bytesSent: number;
  bytesFullWeights: number;
  /** Σ bytesSent / Σ bytesFullWeights; NaN when nothing would have been sent. */
  bytesRatio: number;
  wallMs: MeanStd;
  /** Mean over runs of every `extra` key present in any run of this condition. */
  extra: Record<string, number>;
}

export interface SeedRow {
  seed: number;
  /** Final accuracy (0..1) per condition; absent when that condition has no run for the seed. */
  finalAcc: Record<string, number | undefined>;
}

export interface Summary {
  device: string;
  /** Condition order used by every table: alone, mergenet, noise, then the rest as they appear. */
  conditions: string[];
  rows: ConditionSummary[];
  seeds: number[];
  perSeed: SeedRow[];
  /** Problems with the input that a reader should know about (duplicates, missing runs). */
  warnings: string[];
}

const PREFERRED_ORDER = ['alone', 'mergenet', 'noise', 'fedavg', 'distill', 'copy'];

/** Conditions present, in a stable reading order: known ones first (with their variants), then others. */
export function orderConditions(conditions: Iterable<string>): string[] {
  const seen: string[] = [];
  for (const c of conditions) if (!seen.includes(c)) seen.push(c);
  const rank = (c: string): number => {
    const base = c.split(':')[0];
    const i = PREFERRED_ORDER.indexOf(base);
    return i === -1 ? PREFERRED_ORDER.length : i;
  };
  // Stable sort keeps first-appearance order within the same rank; the bare name precedes variants.
  return seen
    .map((c, i) => ({ c, i }))
    .sort((x, y) => rank(x.c) - rank(y.c) || Number(x.c.includes(':')) - Number(y.c.includes(':')) || x.i - y.i)
    .map((e) => e.c);
}

function meanStd(xs: number[]): MeanStd {
  return { mean: mean(xs), std: sampleStd(xs) };
}

/** Verdict from a 95 % CI of (condition − alone). */
export function verdictFromCi(ci: [number, number], n: number): Verdict {
  if (n < 2 || !Number.isFinite(ci[0]) || !Number.isFinite(ci[1])) return 'too few paired seeds';
  if (ci[0] > 0) return 'better than alone';
  if (ci[1] < 0) return 'worse than alone';
  return 'no significant difference';
}

/** Runs of `device` grouped by condition, one per seed (the first wins; later duplicates are reported). */
function groupRuns(runs: ConditionRun[], device: string, warnings: string[]): Map<string, Map<number, ConditionRun>> {
  const byCondition = new Map<string, Map<number, ConditionRun>>();
  for (const r of runs) {
    if (r.device !== device) continue;
    let bySeed = byCondition.get(r.condition);
    if (!bySeed) byCondition.set(r.condition, (bySeed = new Map()));
    if (bySeed.has(r.seed)) {
      warnings.push(`duplicate run for condition '${r.condition}', seed ${r.seed}: only the first is used`);
      continue;
    }
    bySeed.set(r.seed, r);
  }
  return byCondition;
}

/** Summary of the target device (or another device id) of an experiment. */
export function summarize(result: ExperimentResult, device: string = result.target): Summary {
  const warnings: string[] = [];
  const others = new Set(result.runs.filter((r) => r.device !== device).map((r) => r.device));
  if (others.size > 0) warnings.push(`runs of other devices (${[...others].join(', ')}) are not in this summary`);

  const groups = groupRuns(result.runs, device, warnings);
  const conditions = orderConditions(groups.keys());
  const alone = groups.get(REFERENCE_CONDITION);
  const aloneFinal = new Map<number, number>();
  if (alone) for (const [s, r] of alone) aloneFinal.set(s, r.finalAcc);
  if (!alone && conditions.length > 0) warnings.push(`no '${REFERENCE_CONDITION}' runs: no paired differences`);

  const allSeeds = new Set<number>(result.seeds);
  for (const g of groups.values()) for (const s of g.keys()) allSeeds.add(s);
  const seeds = [...allSeeds].sort((a, b) => a - b);

  const rows: ConditionSummary[] = conditions.map((condition) => {
    const bySeed = groups.get(condition) as Map<number, ConditionRun>;
    const runSeeds = [...bySeed.keys()].sort((a, b) => a - b);
    const runs = runSeeds.map((s) => bySeed.get(s) as ConditionRun);
    const missing = result.seeds.filter((s) => !bySeed.has(s));
    if (missing.length > 0) warnings.push(`condition '${condition}' has no run for seed(s) ${missing.join(', ')}`);

    let diffVsAlone: ConditionSummary['diffVsAlone'] = null;
    let verdict: Verdict = 'reference';
    if (condition !== REFERENCE_CONDITION) {
      if (!alone) {
        verdict = 'no alone baseline';
      } else {
        const own = new Map<number, number>(runs.map((r) => [r.seed, r.finalAcc]));
        const pd = pairedDiff(own, aloneFinal);
        const pts = [...pd.diffs.entries()].map(([seed, d]) => ({ seed, diff: d * 100 }));
        diffVsAlone = {
          n: pd.n,
          mean: pd.mean * 100,
          std: pd.std * 100,
          ci95: [pd.ci95[0] * 100, pd.ci95[1] * 100],
          perSeed: pts,
        };
        verdict = verdictFromCi(pd.ci95, pd.n);
      }
    }

    const sent = runs.reduce((s, r) => s + r.bytesSent, 0);
    const full = runs.reduce((s, r) => s + r.bytesFullWeights, 0);
    const extraKeys = [...new Set(runs.flatMap((r) => Object.keys(r.extra ?? {})))].sort();
    const extra: Record<string, number> = {};
    for (const k of extraKeys) {
      const vals = runs.map((r) => r.extra?.[k]).filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
      extra[k] = mean(vals);
    }

    return {
      condition,
      n: runs.length,
      seeds: runSeeds,
      finalAcc: meanStd(runs.map((r) => r.finalAcc)),
      bestAcc: meanStd(runs.map((r) => r.bestAcc)),
      diffVsAlone,
      verdict,
      bytesSent: mean(runs.map((r) => r.bytesSent)),
      bytesFullWeights: mean(runs.map((r) => r.bytesFullWeights)),
      bytesRatio: full > 0 ? sent / full : NaN,
      wallMs: meanStd(runs.map((r) => r.wallMs)),
      extra,
    };
  });

  const perSeed: SeedRow[] = seeds.map((seed) => {
    const finalAcc: Record<string, number | undefined> = {};
    for (const c of conditions) finalAcc[c] = groups.get(c)?.get(seed)?.finalAcc;
    return { seed, finalAcc };
  });

  return { device, conditions, rows, seeds, perSeed, warnings };
}

export interface CurveBandPoint {
  x: number;
  mean: number;
  /** mean − 1 sample std across seeds (absent when fewer than 2 seeds have this step). */
  lo?: number;
  hi?: number;
  n: number;
}

/**
 * Accuracy (or loss) curves of each condition: the mean across seeds at every step, with a band
 * of ±1 sample std. Steps are matched exactly; a step that only some seeds logged averages those.
 */
export function curveBands(
  result: ExperimentResult,
  metric: 'acc' | 'loss' = 'acc',
  device: string = result.target,
): { condition: string; points: CurveBandPoint[] }[] {
  const groups = groupRuns(result.runs, device, []);
  return orderConditions(groups.keys()).map((condition) => {
    const byStep = new Map<number, number[]>();
    for (const run of (groups.get(condition) as Map<number, ConditionRun>).values()) {
      for (const p of run.curve) {
        const v = metric === 'acc' ? p.acc : p.loss;
        if (typeof v !== 'number' || !Number.isFinite(v)) continue;
        let arr = byStep.get(p.step);
        if (!arr) byStep.set(p.step, (arr = []));
        arr.push(v);
      }
    }
    const points = [...byStep.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([x, vs]) => {
        const m = mean(vs);
        const s = sampleStd(vs);
        return vs.length >= 2 ? { x, mean: m, lo: m - s, hi: m + s, n: vs.length } : { x, mean: m, n: vs.length };
      });
    return { condition, points };
  });
}
