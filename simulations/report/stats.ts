// Small-sample statistics for seed-level comparisons. Pure functions, no I/O.
import tCdf from '@stdlib/stats-base-dists-t-cdf';
import tQuantile from '@stdlib/stats-base-dists-t-quantile';

/** Arithmetic mean; NaN for an empty sample. */
export function mean(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

/** Sample standard deviation (n − 1 denominator); NaN when n < 2. */
export function sampleStd(xs: readonly number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const m = mean(xs);
  let ss = 0;
  for (const x of xs) ss += (x - m) * (x - m);
  return Math.sqrt(ss / (n - 1));
}

// ---- Student t distribution ----------------------------------------------------------------
// From @stdlib (maintained, tested against reference tables), not hand-written.

/** CDF of Student's t with df degrees of freedom (df > 0, may be fractional); NaN otherwise. */
export function studentTCdf(t: number, df: number): number {
  return tCdf(t, df);
}

/** Quantile of Student's t: the q with P(T ≤ q) = p (e.g. p = 0.975: df 4 → 2.776, df 9 → 2.262). */
export function studentTQuantile(p: number, df: number): number {
  return tQuantile(p, df);
}

/** Two-sided 95 % confidence interval of the mean of xs (Student t); [NaN, NaN] when n < 2. */
export function ci95OfMean(xs: readonly number[]): [number, number] {
  const n = xs.length;
  if (n < 2) return [NaN, NaN];
  const m = mean(xs);
  const half = (studentTQuantile(0.975, n - 1) * sampleStd(xs)) / Math.sqrt(n);
  return [m - half, m + half];
}

export interface PairedDiff {
  /** a − b per seed, only seeds present in both, in ascending seed order. */
  diffs: Map<number, number>;
  mean: number;
  std: number;
  /** 95 % CI of the mean difference; [NaN, NaN] when n < 2. */
  ci95: [number, number];
  n: number;
}

/** Paired difference a − b over the seeds present in both maps. */
export function pairedDiff(a: ReadonlyMap<number, number>, b: ReadonlyMap<number, number>): PairedDiff {
  const seeds = [...a.keys()].filter((s) => b.has(s)).sort((x, y) => x - y);
  const diffs = new Map<number, number>();
  for (const s of seeds) diffs.set(s, (a.get(s) as number) - (b.get(s) as number));
  const xs = [...diffs.values()];
  return { diffs, mean: mean(xs), std: sampleStd(xs), ci95: ci95OfMean(xs), n: xs.length };
}
