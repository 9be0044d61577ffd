// The device's feedback to the coordinator after k local steps (docs/DESIGN.md §5): the gradient G of
// the loss w.r.t. W_eff, projected onto the adapter's output factors. With K = s·(A′B′ − AB) and
// s held constant, ∂loss/∂A′ = s·G·B′ᵀ and ∂loss/∂B′ = s·A′ᵀ·G — low-rank sized, so the full G
// never leaves the device.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';
import { deviceArena, pad4, readFloat32Into, tensorFromArena, type GemmArena } from '../../shared/math/device-gemm.js';

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
  const arena = deviceArena();
  if (arena) return projectInArena(arena, G, generated, scale, m, n, A.shape[1]);
  return tf.tidy(() => {
    const s = tf.scalar(scale);
    // Explicit transposes: matMul with transposeB runs at half speed on wasm.
    const gA = tf.mul(tf.matMul(G, tf.transpose(B)), s) as tf.Tensor2D;
    const gB = tf.mul(tf.matMul(tf.transpose(A), G), s) as tf.Tensor2D;
    return { gA, gB };
  });
}

/**
 * projectFeedback in the device's arena (device-gemm.ts): one read-back of G and two gemms (Aᵀ read
 * in place), each result × s rounded to float32, as tf.mul(…, tf.scalar(s)) does; where the tfjs
 * path takes two transposes, two matMuls and two muls. Layout (floats): G m·n4 | B′ᵀ n·r4 | A′ m·r |
 * G·B′ᵀ m·r4 | A′ᵀ·G r·n4 | staging: G m·n (only when n is not a multiple of 4), B′ r·n.
 */
function projectInArena(arena: GemmArena, G: tf.Tensor2D, generated: LowRank, scale: number, m: number, n: number, r: number): Feedback {
  const n4 = pad4(n);
  const r4 = pad4(r);
  const oBt = m * n4;
  const oA = oBt + n * r4;
  const oGA = oA + m * r;
  const oGB = oGA + m * r4;
  const oStage = oGB + r * n4; // G when its rows need padding, then B′
  const f = arena.reserve(oStage + (n4 === n ? 0 : m * n) + r * n);
  if (n4 === n) readFloat32Into(G, f, 0);
  else {
    readFloat32Into(G, f, oStage);
    arena.copyRows(oStage, n, 0, n4, m, n);
    for (let i = 0; i < m; i++) f.fill(0, i * n4 + n, (i + 1) * n4);
  }
  readFloat32Into(generated.A, f, oA);
  // B′ᵀ (n×r4), zero-padded: r·n floats through JS
  const bStage = oStage + (n4 === n ? 0 : m * n);
  readFloat32Into(generated.B, f, bStage);
  for (let j = 0; j < n; j++) {
    for (let p = 0; p < r; p++) f[oBt + j * r4 + p] = f[bStage + p * n + j];
    for (let p = r; p < r4; p++) f[oBt + j * r4 + p] = 0;
  }
  arena.gemm(m, r4, n, 0, n4, 1, oBt, r4, oGA, r4); // G·B′ᵀ
  arena.gemm(r, n4, m, oA, 1, r, 0, n4, oGB, n4); // A′ᵀ·G, A′ read transposed
  arena.scale(oGA, scale, oGA, m * r4);
  arena.scale(oGB, scale, oGB, r * n4);
  return { gA: matrixFrom(f, oGA, m, r, r4), gB: matrixFrom(f, oGB, r, n, n4) };
}

/** rows×cols at float offset o (row length ld) of the arena view f, as a tensor. */
function matrixFrom(f: Float32Array, o: number, rows: number, cols: number, ld: number): tf.Tensor2D {
  if (ld === cols) return tensorFromArena<tf.Rank.R2>(f.subarray(o, o + rows * cols), [rows, cols]);
  const c = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) c[i * cols + j] = f[o + i * ld + j];
  return tf.tensor2d(c, [rows, cols]);
}
