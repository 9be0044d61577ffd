import type * as tf from '@tensorflow/tfjs';

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
