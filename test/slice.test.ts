import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { Matrix, QrDecomposition } from 'ml-matrix';
import seedrandom from 'seedrandom';
import { initBackend } from '../shared/tf/backend.js';
import { exactSlice, lowRankSlice, sliceFloats } from '../shared/math/slice.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { squaredRelError } from './helpers/low-rank-error.js';

beforeAll(async () => {
  await initBackend();
});

/** A random matrix with orthonormal columns (QR of a Gaussian), float64. */
function orthonormal(rows: number, cols: number, rng: () => number): Matrix {
  const g = new Matrix(rows, cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      g.set(i, j, Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng()));
    }
  }
  return new QrDecomposition(g).orthogonalMatrix;
}

/**
 * W = Σ_i sign_i · s_i · u_i v_iᵀ with s_i = 0.8^i and random orthonormal u, v. `flip` negates
 * both u_i and v_i of the listed pairs: the same matrix, written with the other SVD signs.
 */
function decaying(m: number, n: number, seed: number, flip: (i: number) => boolean = () => false): tf.Tensor2D {
  const rng = seedrandom(`decaying:${seed}`);
  const k = Math.min(m, n);
  const U = orthonormal(m, k, rng);
  const V = orthonormal(n, k, rng);
  const us = U.to2DArray();
  const vs = V.to2DArray();
  for (let p = 0; p < k; p++) {
    if (!flip(p)) continue;
    for (let i = 0; i < m; i++) us[i][p] = -us[i][p];
    for (let j = 0; j < n; j++) vs[j][p] = -vs[j][p];
  }
  const w = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let p = 0; p < k; p++) acc += us[i][p] * 0.8 ** p * vs[j][p];
      w[i * n + j] = acc;
    }
  }
  return tf.tensor2d(w, [m, n]);
}

function relError(W: tf.Tensor2D, f: LowRank): number {
  return Math.sqrt(squaredRelError(W, f));
}

function maxAbsDiff(x: tf.Tensor, y: tf.Tensor): number {
  expect(x.shape).toEqual(y.shape);
  const a = x.dataSync();
  const b = y.dataSync();
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

function expectCanonical(f: LowRank): void {
  const [m, r] = f.A.shape;
  const a = f.A.dataSync();
  for (let j = 0; j < r; j++) {
    let best = 0;
    for (let i = 0; i < m; i++) if (Math.abs(a[i * r + j]) > Math.abs(a[best * r + j])) best = i;
    expect(a[best * r + j]).toBeGreaterThan(0);
  }
}

const SHAPES: [number, number][] = [
  [64, 10],
  [784, 128],
  [784, 64], // the zoo MLP's dense_0 at rank 8: the device's hot path
  [200, 300],
  [40, 500],
];

describe('lowRankSlice', () => {
  for (const [m, n] of SHAPES) {
    it(`matches the exact truncated SVD's error on a decaying spectrum [${m}, ${n}]`, () => {
      const W = decaying(m, n, m + n);
      for (const r of [1, 4, 8, Math.min(m, n)]) {
        const exact = exactSlice(W, r);
        const approx = lowRankSlice(W, r, { seed: 3 });
        expect(approx.A.shape).toEqual([m, r]);
        expect(approx.B.shape).toEqual([r, n]);
        const eExact = relError(W, exact);
        const eApprox = relError(W, approx);
        // The exact truncated error of this spectrum is known in closed form (up to float32).
        const k = Math.min(m, n);
        let tail = 0;
        let total = 0;
        for (let i = 0; i < k; i++) {
          total += 0.64 ** i;
          if (i >= r) tail += 0.64 ** i;
        }
        expect(Math.abs(eExact - Math.sqrt(tail / total))).toBeLessThan(1e-4);
        expect(Math.abs(eApprox - eExact)).toBeLessThan(1e-3);
        expectCanonical(approx);
        expectCanonical(exact);
        disposeLowRank(exact);
        disposeLowRank(approx);
      }
      W.dispose();
    });
  }

  it('gives the same factors whatever the construction signs and the sketch seed', () => {
    for (const [m, n] of [[784, 128], [200, 300], [784, 64]] as [number, number][]) {
      const W = decaying(m, n, 11);
      const Wflip = decaying(m, n, 11, (i) => i % 2 === 1 || i === 0);
      for (const r of [1, 4, 8]) {
        const ref = lowRankSlice(W, r, { seed: 0 });
        const exact = exactSlice(W, r);
        const others = [
          lowRankSlice(Wflip, r, { seed: 0 }),
          lowRankSlice(W, r, { seed: 1 }),
          lowRankSlice(Wflip, r, { seed: 12345 }),
          exactSlice(Wflip, r),
        ];
        for (const f of [...others, exact]) {
          expect(maxAbsDiff(f.A, ref.A)).toBeLessThan(1e-4);
          expect(maxAbsDiff(f.B, ref.B)).toBeLessThan(1e-4);
        }
        // −W = (−U)·S·Vᵀ: with canonical signs A stays put and the sign moves into B.
        const Wneg = W.neg();
        const neg = lowRankSlice(Wneg, r, { seed: 4 });
        const minusB = ref.B.neg();
        expect(maxAbsDiff(neg.A, ref.A)).toBeLessThan(1e-4);
        expect(maxAbsDiff(neg.B, minusB)).toBeLessThan(1e-4);
        expect(maxAbsDiff(neg.B, ref.B)).toBeGreaterThan(1e-2);
        [ref, exact, neg, ...others].forEach(disposeLowRank);
        [Wneg, minusB].forEach((t) => t.dispose());
      }
      W.dispose();
      Wflip.dispose();
    }
  });

  it('returns balanced SVD factors: AᵀA = B·Bᵀ = diag(s), s non-increasing, on flat spectra too', () => {
    for (const [m, n] of [[784, 64], [64, 784], [300, 90]] as [number, number][]) {
      const W = tf.randomNormal([m, n], 0, 1, 'float32', m + n) as tf.Tensor2D;
      const r = 8;
      const f = lowRankSlice(W, r, { seed: 2 });
      const ata = tf.tidy(() => tf.matMul(f.A, f.A, true, false).dataSync());
      const bbt = tf.tidy(() => tf.matMul(f.B, f.B, false, true).dataSync());
      const s1 = ata[0];
      for (let i = 0; i < r; i++) {
        if (i > 0) expect(ata[i * r + i]).toBeLessThanOrEqual(ata[(i - 1) * r + i - 1] * (1 + 1e-6));
        for (let j = 0; j < r; j++) {
          expect(Math.abs(ata[i * r + j] - bbt[i * r + j])).toBeLessThan(1e-5 * s1);
          if (i !== j) expect(Math.abs(ata[i * r + j])).toBeLessThan(1e-5 * s1);
        }
      }
      // A flat spectrum is the hard case for a sketch: the error is still close to the optimum.
      const exact = exactSlice(W, r);
      expect(relError(W, f)).toBeLessThan(relError(W, exact) * 1.02);
      expectCanonical(f);
      [f, exact].forEach(disposeLowRank);
      W.dispose();
    }
  });

  it('is deterministic for a seed', () => {
    const W = tf.randomNormal([300, 90], 0, 1, 'float32', 5) as tf.Tensor2D;
    const f1 = lowRankSlice(W, 6, { seed: 9 });
    const f2 = lowRankSlice(W, 6, { seed: 9 });
    expect(maxAbsDiff(f1.A, f2.A)).toBe(0);
    expect(maxAbsDiff(f1.B, f2.B)).toBe(0);
    [f1, f2].forEach(disposeLowRank);
    W.dispose();
  });

  it('handles rank-deficient and zero matrices', () => {
    // Rank 2 matrix, rank 5 requested: the extra components are zero, the product is exact.
    const W = tf.tidy(() => tf.matMul(tf.randomNormal([120, 2], 0, 1, 'float32', 1), tf.randomNormal([2, 70], 0, 1, 'float32', 2))) as tf.Tensor2D;
    const f = lowRankSlice(W, 5);
    expect(relError(W, f)).toBeLessThan(1e-5);
    const zero = tf.zeros([50, 40]) as tf.Tensor2D;
    const z = lowRankSlice(zero, 3);
    expect(maxAbsDiff(z.A, tf.zeros([50, 3]))).toBe(0);
    expect(maxAbsDiff(z.B, tf.zeros([3, 40]))).toBe(0);
    [f, z].forEach(disposeLowRank);
    W.dispose();
    zero.dispose();
  });

  it('slices weights far from unit scale as the scaled factors, without overflow or denormals', () => {
    // W·Wᵀ squares the scale: 1e±25 entries would overflow or underflow float32 in the products.
    for (const [m, n] of [[300, 60], [60, 300]] as [number, number][]) {
      const W = decaying(m, n, 21);
      const f = lowRankSlice(W, 4, { seed: 1 });
      for (const c of [1e-25, 1e25]) {
        const Wc = tf.tidy(() => tf.mul(W, c)) as tf.Tensor2D;
        const fc = lowRankSlice(Wc, 4, { seed: 1 });
        // A = U·√S: each factor scales by √c.
        const root = Math.sqrt(c);
        const rel = (x: tf.Tensor, y: tf.Tensor) => {
          const a = x.dataSync();
          const b = y.dataSync();
          let d = 0;
          let big = 0;
          for (let i = 0; i < a.length; i++) {
            d = Math.max(d, Math.abs(a[i] / root - b[i]));
            big = Math.max(big, Math.abs(b[i]));
          }
          return d / big;
        };
        expect(rel(fc.A, f.A)).toBeLessThan(1e-5);
        expect(rel(fc.B, f.B)).toBeLessThan(1e-5);
        disposeLowRank(fc);
        Wc.dispose();
      }
      disposeLowRank(f);
      W.dispose();
    }
  });

  it('rejects bad ranks and inputs with readable errors', () => {
    const W = tf.randomNormal([20, 12]) as tf.Tensor2D;
    expect(() => lowRankSlice(W, 13)).toThrow(/rank must be an integer in \[1, min\(m, n\)\] = \[1, 12\].*\[20, 12\].*got 13/);
    expect(() => lowRankSlice(W, 0)).toThrow(/rank .*got 0/);
    expect(() => lowRankSlice(W, 2.5)).toThrow(/rank .*got 2.5/);
    expect(() => exactSlice(W, 13)).toThrow(/exactSlice: rank/);
    expect(() => lowRankSlice(W, 2, { oversample: -1 })).toThrow(/oversample/);
    expect(() => lowRankSlice(W, 2, { powerIters: 1.5 })).toThrow(/powerIters/);
    const ints = tf.zeros([4, 3], 'int32') as tf.Tensor2D;
    expect(() => lowRankSlice(ints, 1)).toThrow(/float32, got int32/);
    ints.dispose();
    const v = tf.zeros([5]);
    expect(() => lowRankSlice(v as unknown as tf.Tensor2D, 1)).toThrow(/2-D tensor/);
    const bad = tf.tensor2d([1, NaN, 3, 4, 5, 6], [3, 2]);
    expect(() => lowRankSlice(bad, 1)).toThrow(/non-finite/);
    expect(() => exactSlice(bad, 1)).toThrow(/non-finite/);
    const bad2 = tf.tidy(() => tf.randomNormal([40, 30]).add(tf.oneHot([3], 30).mul(Infinity).reshape([1, 30]))) as tf.Tensor2D;
    expect(() => lowRankSlice(bad2, 2)).toThrow(/non-finite/);
    [W, v, bad, bad2].forEach((t) => t.dispose());
  });

  it('does not leak tensors over 50 calls', () => {
    const W = tf.randomNormal([256, 64], 0, 1, 'float32', 4) as tf.Tensor2D;
    const small = tf.randomNormal([10, 6], 0, 1, 'float32', 4) as tf.Tensor2D;
    disposeLowRank(lowRankSlice(W, 4)); // warm-up
    const before = tf.memory().numTensors;
    for (let i = 0; i < 50; i++) {
      disposeLowRank(lowRankSlice(W, 1 + (i % 8), { seed: i }));
      disposeLowRank(lowRankSlice(small, 6)); // exact path
      disposeLowRank(exactSlice(small, 3));
    }
    expect(tf.memory().numTensors).toBe(before);
    W.dispose();
    small.dispose();
  });

  it('counts slice floats', () => {
    expect(sliceFloats(784, 128, 8)).toBe(8 * (784 + 128));
  });
});
