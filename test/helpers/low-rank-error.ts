// How far a rank-r slice is from its slot, computed independently of the slice code.
import type * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';

/** ‖W − A·B‖²_F / ‖W‖²_F, in float64. */
export function squaredRelError(W: tf.Tensor2D, f: LowRank): number {
  const [m, n] = W.shape;
  const r = f.A.shape[1];
  const w = W.dataSync();
  const a = f.A.dataSync();
  const b = f.B.dataSync();
  let num = 0;
  let den = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let p = 0; p < r; p++) acc += a[i * r + p] * b[p * n + j];
      num += (w[i * n + j] - acc) ** 2;
      den += w[i * n + j] ** 2;
    }
  }
  return num / den;
}
