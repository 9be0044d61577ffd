// Seeded random numbers for tests: deterministic, so a failure reproduces with the same values.

/** mulberry32: uniform in [0, 1), the same stream for the same 32-bit seed (the project's own). */
import { mulberry32 } from '../../shared/math/prng.js';

export { mulberry32 };

/** One standard normal draw (Box–Muller); consumes two values of rng. */
export function gaussian(rng: () => number): number {
  const u = Math.max(rng(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

/** n values uniform in [−1, 1), drawn in order from rng. */
export function uniformFrom(rng: () => number, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = 2 * rng() - 1;
  return out;
}

/** n values uniform in [−1, 1) from mulberry32(seed). */
export function uniform(n: number, seed: number): Float32Array {
  return uniformFrom(mulberry32(seed), n);
}
