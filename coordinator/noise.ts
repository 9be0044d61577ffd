// The noise-source control (docs/DESIGN.md §7 "What the measurements say"): a pair in sourceMode 'noise' feeds the
// adapter Gaussian noise instead of the source's slice, with each factor's shape and Frobenius norm
// kept, so any gain of the real source over this control is due to what the slice carries and not
// to its size.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../shared/math/low-rank.js';

/**
 * Gaussian noise of the same shape as `t`, scaled to the same Frobenius norm (zero if `t` is zero).
 * Deterministic for a given seed. The caller owns the result.
 */
export function noiseLikeTensor<T extends tf.Tensor>(t: T, seed: number): T {
  return tf.tidy(() => {
    const z = tf.randomNormal(t.shape, 0, 1, 'float32', seed);
    const target = tf.norm(t);
    const current = tf.norm(z);
    // current is > 0 with probability 1; the max() only guards the degenerate 1-element case.
    return tf.mul(z, tf.div(target, tf.maximum(current, 1e-30))) as T;
  });
}

/**
 * Replace both factors of a source slice by norm-matched noise, per factor. The caller owns the
 * result and keeps ownership of `source`.
 */
export function noiseLikeLowRank(source: LowRank, seed: number): LowRank {
  return {
    A: noiseLikeTensor(source.A, seed >>> 0),
    B: noiseLikeTensor(source.B, (seed ^ 0x9e3779b9) >>> 0),
  };
}

/** The seed of a pair's noise at a given cycle: reproducible, different at every cycle. */
export function noiseSeed(pairSeed: number, cycleId: number): number {
  return (Math.imul(pairSeed ^ 0x5bd1e995, 2654435761) + cycleId * 0x27d4eb2d) >>> 0;
}
