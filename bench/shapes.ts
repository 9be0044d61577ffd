// The slot shapes the adapter benches run, the PyTorch figures stated for them, and the inputs
// built for a shape: the two slots' rank-r slices and upstream gradients, as tensors and as the
// plain arrays an adapter worker gets.
import * as tf from '@tensorflow/tfjs';
import type { Factors } from '../coordinator/adapter/lpka.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { lowRankSlice } from '../shared/math/slice.js';

export const SHAPES: { target: [number, number]; source: [number, number] }[] = [
  { target: [64, 10], source: [128, 10] },
  { target: [784, 128], source: [800, 128] },
  { target: [960, 160], source: [2048, 100] },
];

/**
 * PyTorch, one thread, same LPKA, forward+update at r 8, as stated in issue 9: the bar to meet, and
 * what the benches report when the live reference (bench/pytorch-reference.ts) cannot start.
 */
export const PYTORCH_R8_MS = [2.7, 37, 86];
export const PYTORCH_STATED = 'stated (issue 9, one thread)';
export const PYTORCH_LIVE = 'live, interleaved';
export type PytorchSource = typeof PYTORCH_STATED | typeof PYTORCH_LIVE;

/** A matrix with a decaying spectrum, like a trained weight. */
export function decayingMatrix(m: number, n: number, seed: number): tf.Tensor2D {
  return tf.tidy(() => {
    const k = Math.min(m, n);
    const U = tf.linalg.qr(tf.randomNormal([m, k], 0, 1, 'float32', seed))[0];
    const V = tf.linalg.qr(tf.randomNormal([n, k], 0, 1, 'float32', seed + 1))[0];
    const s = tf.pow(tf.scalar(0.9), tf.range(0, k));
    return tf.matMul(tf.mul(U, s), V, false, true) as tf.Tensor2D;
  });
}

export interface PlainInputs {
  t: Factors;
  s: Factors;
  gA: Float32Array;
  gB: Float32Array;
}

/** One shape's inputs at rank r; the caller disposes them. */
export interface BenchInputs {
  /** the target and source slots */
  Wt: tf.Tensor2D;
  Ws: tf.Tensor2D;
  /** their rank-r slices and the upstream gradients of A′ and B′ (seeded, σ 1e-2) */
  t: LowRank;
  s: LowRank;
  gA: tf.Tensor2D;
  gB: tf.Tensor2D;
  /** the same as copies in plain arrays */
  arrays: PlainInputs;
  dispose(): void;
}

/** The inputs for `shape` at rank r (at most the smallest dimension); the same every call. */
export function benchInputs(shape: { target: [number, number]; source: [number, number] }, rank: number): BenchInputs {
  const Wt = decayingMatrix(shape.target[0], shape.target[1], 1);
  const Ws = decayingMatrix(shape.source[0], shape.source[1], 2);
  const t = lowRankSlice(Wt, rank);
  const s = lowRankSlice(Ws, rank);
  const gA = tf.randomNormal(t.A.shape, 0, 1e-2, 'float32', 3) as tf.Tensor2D;
  const gB = tf.randomNormal(t.B.shape, 0, 1e-2, 'float32', 4) as tf.Tensor2D;
  const plain = (f: LowRank): Factors => ({ A: Float32Array.from(f.A.dataSync()), B: Float32Array.from(f.B.dataSync()), m: f.A.shape[0], n: f.B.shape[1] });
  return {
    Wt, Ws, t, s, gA, gB,
    arrays: { t: plain(t), s: plain(s), gA: Float32Array.from(gA.dataSync()), gB: Float32Array.from(gB.dataSync()) },
    dispose: () => {
      tf.dispose([Wt, Ws, gA, gB]);
      disposeLowRank(t);
      disposeLowRank(s);
    },
  };
}
