// Summaries of repeated timings, shared by the benches.

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export interface Timing {
  medianMs: number;
  minMs: number;
}

/** Median and minimum, rounded to µs. */
export function timingOf(ms: readonly number[]): Timing {
  return { medianMs: +median(ms).toFixed(3), minMs: +Math.min(...ms).toFixed(3) };
}
