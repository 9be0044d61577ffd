import * as tf from '@tensorflow/tfjs';

/** Rank-r factors of a slot: W ≈ A·B with A m×r and B r×n. */
export interface LowRank {
  A: tf.Tensor2D;
  B: tf.Tensor2D;
}

export function disposeLowRank(f: LowRank | undefined): void {
  if (!f) return;
  f.A.dispose();
  f.B.dispose();
}

/**
 * The rank-r part of a slice: the first r columns of A and rows of B (factors are ordered by
 * singular value). New tensors, even when r is already the slice's rank; the caller owns them.
 */
export function truncateLowRank(f: LowRank, r: number): LowRank {
  return tf.tidy(() => {
    if (f.A.shape[1] === r) return { A: tf.clone(f.A), B: tf.clone(f.B) };
    return { A: tf.slice(f.A, [0, 0], [f.A.shape[0], r]), B: tf.slice(f.B, [0, 0], [r, f.B.shape[1]]) };
  });
}
