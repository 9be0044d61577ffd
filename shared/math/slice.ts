// Slice: the rank-r factors A (m×r), B (r×n) of a slot W ≈ A·B, from a truncated SVD
// W ≈ U S Vᵀ with A = U·√S and B = √S·Vᵀ and canonical signs (docs/DESIGN.md §2 "Slots and slices").
//
// Where the work happens, and why:
// - the products with W (the only O(m·n) work) run on the tfjs backend;
// - the orthonormalisations run in float64 JS (ml-matrix's thin Householder QR): tf.linalg.qr
//   builds an m×m Q internally and took ~0.8 s on a 2048×40 input on wasm, while this takes
//   milliseconds;
// - the SVD of the small sketched matrix uses ml-matrix (tfjs has no SVD), always on a tall
//   matrix, since ml-matrix's SVD of a wide matrix needs its autoTranspose switch.
import * as tf from '@tensorflow/tfjs';
import { Matrix, QrDecomposition, SingularValueDecomposition } from 'ml-matrix';
import seedrandom from 'seedrandom';
import type { LowRank } from './low-rank.js';

export interface LowRankSliceOptions {
  /** Extra sketch columns beyond the rank. Default 8. */
  oversample?: number;
  /**
   * Power iterations (each one multiplies by W·Wᵀ and re-orthonormalises). Default 2: with one,
   * the reconstruction error is already within 1e-5 of the exact SVD's on a 0.8^i spectrum, but
   * the factors themselves move by ~1e-3 between sketch seeds; with two they agree to ~2e-5, and
   * the adapter consumes the factors, not just their product.
   */
  powerIters?: number;
  /** Seed of the Gaussian sketch: the same seed gives the same factors. Default 0. */
  seed?: number;
}

/** Floats in a rank-r slice of an m×n slot (what travels instead of m·n). */
export function sliceFloats(m: number, n: number, r: number): number {
  return r * (m + n);
}

/**
 * Randomized truncated SVD of W (Halko, Martinsson & Tropp 2011): Gaussian sketch, power
 * iterations, QR, SVD of the small projected matrix. Returns A = U·√S (m×r) and B = √S·Vᵀ (r×n)
 * with canonical signs (each column of U has its largest-magnitude entry positive).
 * When the sketch would span min(m,n) columns anyway, the exact SVD is used instead.
 * The caller owns the returned tensors.
 */
export function lowRankSlice(W: tf.Tensor2D, rank: number, opts: LowRankSliceOptions = {}): LowRank {
  const [m, n] = checkArgs('lowRankSlice', W, rank);
  const oversample = opts.oversample ?? 8;
  const powerIters = opts.powerIters ?? 2;
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(oversample) || oversample < 0) {
    throw new Error(`lowRankSlice: oversample must be a non-negative integer, got ${oversample}`);
  }
  if (!Number.isInteger(powerIters) || powerIters < 0) {
    throw new Error(`lowRankSlice: powerIters must be a non-negative integer, got ${powerIters}`);
  }
  const k = Math.min(m, n);
  const l = Math.min(rank + oversample, k);
  // A sketch of min(m,n) columns spans W's whole range: nothing to gain over the exact SVD.
  if (l >= k) return exactSlice(W, rank);

  // Y = W·Ω, Ω an n×l seeded Gaussian.
  const omega = gaussian(n, l, seed);
  let q = orthonormalize(mulW(W, omega, n, l, false), m, l);
  for (let it = 0; it < powerIters; it++) {
    const z = orthonormalize(mulW(W, q, m, l, true), n, l);
    q = orthonormalize(mulW(W, z, n, l, false), m, l);
  }
  // smallᵀ = Wᵀ·Q (n×l, tall) = V' S U'ᵀ, so small = Qᵀ·W = U' S V'ᵀ.
  const smallT = mulW(W, q, m, l, true);
  checkFinite(smallT);
  const svd = new SingularValueDecomposition(toMatrix(smallT, n, l));
  const s = svd.diagonal;
  const V = svd.leftSingularVectors; // n×l: right singular vectors of W
  const Us = svd.rightSingularVectors; // l×l: left singular vectors of small
  // U = Q·U_small, top r columns only.
  const us = new Float64Array(l * rank);
  for (let p = 0; p < l; p++) for (let j = 0; j < rank; j++) us[p * rank + j] = Us.get(p, j);
  const U = new Float64Array(m * rank);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < l; p++) {
      const qip = q[i * l + p];
      if (qip === 0) continue;
      for (let j = 0; j < rank; j++) U[i * rank + j] += qip * us[p * rank + j];
    }
  }
  return canonicalFactors(
    m, n, rank, s,
    (i, j) => U[i * rank + j],
    (c, j) => V.get(c, j),
  );
}

/**
 * Exact truncated SVD (ml-matrix, float64) with the same canonical signs as lowRankSlice.
 * O(m·n·min(m,n)): meant for tests, benchmarks and small slots. The caller owns the tensors.
 */
export function exactSlice(W: tf.Tensor2D, rank: number): LowRank {
  const [m, n] = checkArgs('exactSlice', W, rank);
  const data = W.dataSync();
  checkFinite(data);
  if (m >= n) {
    const svd = new SingularValueDecomposition(toMatrix(data, m, n));
    const U = svd.leftSingularVectors;
    const V = svd.rightSingularVectors;
    return canonicalFactors(m, n, rank, svd.diagonal, (i, j) => U.get(i, j), (c, j) => V.get(c, j));
  }
  // Wide: decompose Wᵀ = U' S V'ᵀ, so W = V' S U'ᵀ.
  const svd = new SingularValueDecomposition(toMatrix(data, m, n).transpose());
  const U = svd.rightSingularVectors;
  const V = svd.leftSingularVectors;
  return canonicalFactors(m, n, rank, svd.diagonal, (i, j) => U.get(i, j), (c, j) => V.get(c, j));
}

function checkArgs(fn: string, W: tf.Tensor, rank: number): [number, number] {
  if (W.rank !== 2) throw new Error(`${fn}: W must be a 2-D tensor, got shape [${W.shape.join(', ')}]`);
  if (W.dtype !== 'float32') throw new Error(`${fn}: W must be float32, got ${W.dtype}`);
  const [m, n] = W.shape as [number, number];
  const k = Math.min(m, n);
  if (!Number.isInteger(rank) || rank < 1 || rank > k) {
    throw new Error(
      `${fn}: rank must be an integer in [1, min(m, n)] = [1, ${k}] for W of shape [${m}, ${n}], got ${rank}`,
    );
  }
  return [m, n];
}

/** W·X (m×n · n×cols) or Wᵀ·X (n×m · m×cols) on the tfjs backend, back as float32. */
function mulW(W: tf.Tensor2D, x: ArrayLike<number>, rows: number, cols: number, transposeW: boolean): Float32Array {
  // The array is not returned through tf.tidy: tidy walks its result element by element.
  let out: Float32Array | undefined;
  tf.tidy(() => {
    const f32 = x instanceof Float32Array ? x : Float32Array.from(x);
    const xt = tf.tensor2d(f32, [rows, cols], 'float32');
    out = tf.matMul(W, xt, transposeW, false).dataSync() as Float32Array;
  });
  return out!;
}

function gaussian(rows: number, cols: number, seed: number): Float32Array {
  const rng = seedrandom(`lowRankSlice:${seed}`);
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < out.length; i += 2) {
    // Box–Muller; 1 - rng() is in (0, 1], so the log is finite.
    const rad = Math.sqrt(-2 * Math.log(1 - rng()));
    const ang = 2 * Math.PI * rng();
    out[i] = rad * Math.cos(ang);
    if (i + 1 < out.length) out[i + 1] = rad * Math.sin(ang);
  }
  return out;
}

/**
 * Orthonormal basis of the columns of a row-major rows×cols matrix (rows ≥ cols): the thin Q of a
 * Householder QR (ml-matrix, float64), row-major rows×cols. Householder rather than Gram–Schmidt:
 * Q stays orthonormal even when the input is rank-deficient (a zero or low-rank W).
 */
function orthonormalize(y: ArrayLike<number>, rows: number, cols: number): Float64Array {
  checkFinite(y);
  const Q = new QrDecomposition(toMatrix(y, rows, cols)).orthogonalMatrix;
  const q = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) q[i * cols + j] = Q.get(i, j);
  return q;
}

function toMatrix(data: ArrayLike<number>, rows: number, cols: number): Matrix {
  const mat = new Matrix(rows, cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) mat.set(i, j, data[i * cols + j]);
  }
  return mat;
}

function checkFinite(data: ArrayLike<number>): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw new Error('slice: W contains non-finite values (NaN or Infinity)');
  }
}

/**
 * A = U·√S, B = √S·Vᵀ from the top r singular triplets, each column of U flipped so that its
 * largest-magnitude entry is positive (the matching row of B flips with it). SVD signs are
 * arbitrary and attention over the factors is not sign-invariant, so both ends of a transfer
 * must agree on them.
 */
function canonicalFactors(
  m: number,
  n: number,
  r: number,
  s: ArrayLike<number>,
  u: (i: number, j: number) => number,
  v: (c: number, j: number) => number,
): LowRank {
  const a = new Float32Array(m * r);
  const b = new Float32Array(r * n);
  for (let j = 0; j < r; j++) {
    let best = 0;
    let bestAbs = -1;
    for (let i = 0; i < m; i++) {
      const x = Math.abs(u(i, j));
      if (x > bestAbs) {
        bestAbs = x;
        best = i;
      }
    }
    const sign = u(best, j) < 0 ? -1 : 1;
    const root = Math.sqrt(Math.max(0, s[j]));
    for (let i = 0; i < m; i++) a[i * r + j] = sign * root * u(i, j);
    for (let c = 0; c < n; c++) b[j * n + c] = sign * root * v(c, j);
  }
  return { A: tf.tensor2d(a, [m, r]), B: tf.tensor2d(b, [r, n]) };
}
