import { describe, expect, it } from 'vitest';
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import seedrandom from 'seedrandom';
import { cholQFactor, gram, matMul, orthoQ, symmetricEigen, thinQ } from '../shared/math/dense.js';

function gaussianArray(len: number, seed: string): Float64Array {
  const rng = seedrandom(seed);
  return Float64Array.from({ length: len }, () => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng()));
}

/** Row-major rows×cols as an ml-matrix Matrix, the reference implementation. */
function toMatrix(a: ArrayLike<number>, rows: number, cols: number): Matrix {
  const m = new Matrix(rows, cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) m.set(i, j, a[i * cols + j]);
  return m;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

function expectOrthonormalColumns(q: Float64Array, rows: number, cols: number, tol = 1e-12): void {
  expect(maxAbsDiff(gram(q, rows, cols), Matrix.eye(cols).to1DArray())).toBeLessThan(tol);
}

/** Q·Qᵀ·A = A (within 1e-12 of A's largest value): Q spans A's column space. */
function expectSpans(q: Float64Array, a: Float64Array, rows: number, cols: number, what?: string): void {
  const qta = matMul(Float64Array.from(toMatrix(q, rows, cols).transpose().to1DArray()), a, cols, rows, cols);
  const back = matMul(q, qta, rows, cols, cols);
  let scale = 0;
  for (const v of a) scale = Math.max(scale, Math.abs(v));
  expect(maxAbsDiff(back, a), what).toBeLessThanOrEqual(1e-12 * Math.max(1, scale));
}

/** A rows×cols matrix of rank `rank` (product of two Gaussians). */
function lowRankArray(rows: number, cols: number, rank: number, seed: string): Float64Array {
  return matMul(gaussianArray(rows * rank, `${seed}:a`), gaussianArray(rank * cols, `${seed}:b`), rows, rank, cols);
}

describe('dense kernels', () => {
  it('gram and matMul match ml-matrix', () => {
    for (const [rows, inner, cols] of [[1, 1, 1], [7, 3, 5], [784, 16, 8], [65, 17, 9]]) {
      const x = gaussianArray(rows * inner, `x${rows}`);
      const y = gaussianArray(inner * cols, `y${cols}`);
      const ref = toMatrix(x, rows, inner).mmul(toMatrix(y, inner, cols)).to1DArray();
      expect(maxAbsDiff(matMul(x, y, rows, inner, cols), ref)).toBeLessThan(1e-12);
      const X = toMatrix(x, rows, inner);
      expect(maxAbsDiff(gram(x, rows, inner), X.transpose().mmul(X).to1DArray())).toBeLessThan(1e-11);
    }
  });

  it('thinQ spans the input with orthonormal columns, full rank, rank-deficient and zero', () => {
    const cases: [string, Float64Array, number, number][] = [
      ['random 64×16', gaussianArray(64 * 16, 'q1'), 64, 16],
      ['random 784×16', gaussianArray(784 * 16, 'q2'), 784, 16],
      ['square 9×9', gaussianArray(81, 'q3'), 9, 9],
      ['rank 2 of 40×13', lowRankArray(40, 13, 2, 'q4'), 40, 13],
      ['zero 20×5', new Float64Array(100), 20, 5],
      ['ill-conditioned 50×6', matMul(gaussianArray(50 * 6, 'q5'), Float64Array.from([1, 0, 0, 0, 0, 0, 0, 1e-6, 0, 0, 0, 0, 0, 0, 1e-12, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1e3, 0, 0, 0, 0, 0, 0, 1e-3]), 50, 6, 6), 50, 6],
    ];
    for (const [, a, rows, cols] of cases) {
      const q = thinQ(a, rows, cols);
      expectOrthonormalColumns(q, rows, cols);
      expectSpans(q, a, rows, cols);
    }
    expect(() => thinQ(new Float64Array(6), 2, 3)).toThrow(/rows ≥ cols/);
  });

  it('orthoQ spans the input with orthonormal columns: by Cholesky QR when the columns are well apart, else by thinQ', () => {
    // Columns scaled like Ritz values (a power iteration's M·Q·P): far apart in norm, nearly orthogonal.
    const base = thinQ(gaussianArray(64 * 16, 'o1'), 64, 16);
    const ritzLike = base.map((v, i) => v * 0.8 ** (2 * (i % 16)) + 1e-4 * Math.sin(i));
    const cases: [string, Float64Array, number, number, boolean][] = [
      ['Ritz-like 64×16', ritzLike, 64, 16, true],
      ['random 784×16', gaussianArray(784 * 16, 'o2'), 784, 16, true],
      ['rank 2 of 40×13', lowRankArray(40, 13, 2, 'o3'), 40, 13, false],
      ['zero 20×5', new Float64Array(100), 20, 5, false],
      ['two columns 1e-3 apart', (() => {
        const a = gaussianArray(30 * 4, 'o4');
        for (let i = 0; i < 30; i++) a[i * 4 + 1] = a[i * 4] + 1e-3 * a[i * 4 + 1];
        return a;
      })(), 30, 4, false],
    ];
    for (const [what, a, rows, cols, viaCholesky] of cases) {
      const q = orthoQ(a, rows, cols);
      expectOrthonormalColumns(q, rows, cols);
      expectSpans(q, a, rows, cols, what);
      // The Cholesky factor exists exactly when the fast way is taken; with it, Q = A·T.
      const T = cholQFactor(gram(a, rows, cols), cols, cols);
      expect(T !== undefined, what).toBe(viaCholesky);
      if (T) expect(maxAbsDiff(q, matMul(a, T, rows, cols, cols)), what).toBeLessThan(1e-15);
      else expect(maxAbsDiff(q, thinQ(a, rows, cols)), what).toBe(0);
    }
    // A Gram matrix stored with a longer row (ld > cols) gives the same factor.
    const g = gram(ritzLike, 64, 16);
    const wide = new Float64Array(16 * 18);
    for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) wide[i * 18 + j] = g[i * 16 + j];
    expect(cholQFactor(wide, 16, 18)).toEqual(cholQFactor(g, 16, 16));
  });

  it('symmetricEigen matches ml-matrix on random, repeated and singular spectra, largest first', () => {
    const n = 16;
    const g = gaussianArray(40 * n, 'e1');
    const cases: [string, Float64Array][] = [
      ['Gram of a Gaussian', gram(g, 40, n)],
      ['Gram of a rank-3 matrix', gram(lowRankArray(40, n, 3, 'e2'), 40, n)],
      ['indefinite', (() => {
        const a = gaussianArray(n * n, 'e3');
        return Float64Array.from(toMatrix(a, n, n).add(toMatrix(a, n, n).transpose()).to1DArray());
      })()],
      ['identity (all repeated)', Float64Array.from(Matrix.eye(n).to1DArray())],
      ['zero', new Float64Array(n * n)],
      ['diagonal, unsorted', Float64Array.from(Matrix.diag([3, -1, 7, 0, 2, 2, 5, 1, 0.5, 4, 6, 8, 9, 10, 11, 12]).to1DArray())],
    ];
    for (const [, a] of cases) {
      const { values, vectors } = symmetricEigen(a, n);
      for (let j = 1; j < n; j++) expect(values[j]).toBeLessThanOrEqual(values[j - 1]);
      expectOrthonormalColumns(vectors, n, n);
      // A·V = V·Λ, to rounding of the largest eigenvalue.
      const scale = Math.max(1, ...Array.from(values, Math.abs));
      const av = matMul(a, vectors, n, n, n);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
        expect(Math.abs(av[i * n + j] - vectors[i * n + j] * values[j])).toBeLessThan(1e-12 * scale);
      }
      const ref = new EigenvalueDecomposition(toMatrix(a, n, n), { assumeSymmetric: true }).realEigenvalues.sort((x, y) => y - x);
      expect(maxAbsDiff(values, ref)).toBeLessThan(1e-12 * scale);
    }
  });

  it('symmetricEigen keeps small eigenvalues of a graded spectrum to high relative accuracy', () => {
    // Q·diag(10^-i)·Qᵀ: the eigenvalues span 12 orders of magnitude.
    const n = 13;
    const q = thinQ(gaussianArray(n * n, 'graded'), n, n);
    const d = Array.from({ length: n }, (_, i) => 10 ** -i);
    const a = matMul(matMul(q, Float64Array.from(Matrix.diag(d).to1DArray()), n, n, n), Float64Array.from(toMatrix(q, n, n).transpose().to1DArray()), n, n, n);
    const { values } = symmetricEigen(a, n);
    // Absolute error at rounding of the largest; relative only as good as the input's rounding.
    for (let i = 0; i < n; i++) expect(Math.abs(values[i] - d[i])).toBeLessThan(1e-14);
  });

  it('symmetricEigen with a looser offTol stops at that off-diagonal size: eigenpairs to about offTol', () => {
    const n = 16;
    const a = gram(gaussianArray(40 * n, 'tol'), 40, n);
    const exact = symmetricEigen(a, n);
    const loose = symmetricEigen(a, n, { offTol: 1e-12 });
    const scale = exact.values[0];
    expect(maxAbsDiff(loose.values, exact.values)).toBeLessThan(1e-12 * scale);
    expectOrthonormalColumns(loose.vectors, n, n);
    // A·v = λ·v to the tolerance (the vectors' signs are Jacobi's, the same in both runs here)
    const av = matMul(a, loose.vectors, n, n, n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(Math.abs(av[i * n + j] - loose.vectors[i * n + j] * loose.values[j])).toBeLessThan(1e-11 * scale);
  });
});
