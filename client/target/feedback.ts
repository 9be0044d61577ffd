// The device's feedback to the coordinator after k local steps (docs/DESIGN.md §5): the gradient G of
// the loss w.r.t. W_eff, projected onto the adapter's output factors. With K = s·(A′B′ − AB) and
// s held constant, ∂loss/∂A′ = s·G·B′ᵀ and ∂loss/∂B′ = s·A′ᵀ·G — low-rank sized, so the full G
// never leaves the device.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';

export interface Feedback {
  /** s·G·B′ᵀ, m×r. */
  gA: tf.Tensor2D;
  /** s·A′ᵀ·G, r×n. */
  gB: tf.Tensor2D;
}

/**
 * Project G (m×n, Σ of per-step ∂loss/∂W_eff) onto the generated factors A′ (m×r), B′ (r×n)
 * with the branch's cap factor `scale`. The caller owns gA and gB.
 */
export function projectFeedback(G: tf.Tensor2D, generated: LowRank, scale: number): Feedback {
  const { A, B } = generated;
  if (G.rank !== 2 || A.rank !== 2 || B.rank !== 2) {
    throw new Error(`projectFeedback: G, A′ and B′ must be 2-D, got [${G.shape}], [${A.shape}], [${B.shape}]`);
  }
  const [m, n] = G.shape;
  if (A.shape[0] !== m || B.shape[1] !== n || A.shape[1] !== B.shape[0]) {
    throw new Error(
      `projectFeedback: factors A′ [${A.shape}] · B′ [${B.shape}] do not fit G [${m}, ${n}] ` +
        `(need A′ [${m}, r] and B′ [r, ${n}])`,
    );
  }
  if (!Number.isFinite(scale)) throw new Error(`projectFeedback: scale must be finite, got ${scale}`);
  return tf.tidy(() => {
    const s = tf.scalar(scale);
    // Explicit transposes: matMul with transposeB runs at half speed on wasm.
    const gA = tf.mul(tf.matMul(G, tf.transpose(B)), s) as tf.Tensor2D;
    const gB = tf.mul(tf.matMul(tf.transpose(A), G), s) as tf.Tensor2D;
    return { gA, gB };
  });
}
