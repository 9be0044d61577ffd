// Ridge regression with an intercept, in plain Float64 arithmetic: the readout trial's map from a
// target's features on the probe split to a source's logits there (docs/DESIGN.md §10). The systems
// are tiny (features ≤ a few hundred), so a Cholesky solve beats any tensor round trip, and it is
// deterministic on every backend. Pure: no tensors, no I/O.

export interface RidgeFit {
  /** [d, c] row-major: the map from centred features to centred targets */
  W: Float64Array;
  /** [c]: the intercept */
  b: Float64Array;
  d: number;
  c: number;
  /** the ridge penalty used */
  alpha: number;
}

/**
 * Solve min_W,b ‖(X − 1μᵀ)W + 1ȳᵀ − Y‖² + α‖W‖² for X [n, d] and Y [n, c] (row-major). With
 * `relAlpha`, α = relAlpha · trace(X̃ᵀX̃)/d, a penalty on the scale of the features.
 */
export function ridgeFit(X: ArrayLike<number>, Y: ArrayLike<number>, n: number, d: number, c: number, relAlpha = 1e-2): RidgeFit {
  if (X.length !== n * d) throw new Error(`ridgeFit: X has ${X.length} values, expected ${n}×${d}`);
  if (Y.length !== n * c) throw new Error(`ridgeFit: Y has ${Y.length} values, expected ${n}×${c}`);
  if (n < 2) throw new Error('ridgeFit: needs at least 2 examples');
  const mx = new Float64Array(d);
  const my = new Float64Array(c);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) mx[j] += X[i * d + j];
    for (let k = 0; k < c; k++) my[k] += Y[i * c + k];
  }
  for (let j = 0; j < d; j++) mx[j] /= n;
  for (let k = 0; k < c; k++) my[k] /= n;
  // A = X̃ᵀX̃ + αI (d×d), R = X̃ᵀỸ (d×c)
  const A = new Float64Array(d * d);
  const R = new Float64Array(d * c);
  const xr = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) xr[j] = X[i * d + j] - mx[j];
    for (let j = 0; j < d; j++) {
      const xj = xr[j];
      if (xj === 0) continue;
      const row = j * d;
      for (let l = j; l < d; l++) A[row + l] += xj * xr[l];
      for (let k = 0; k < c; k++) R[j * c + k] += xj * (Y[i * c + k] - my[k]);
    }
  }
  let trace = 0;
  for (let j = 0; j < d; j++) trace += A[j * d + j];
  // A feature that never varies still gets a positive penalty, so the system stays definite.
  const alpha = Math.max(relAlpha * (trace / d), 1e-8);
  for (let j = 0; j < d; j++) {
    A[j * d + j] += alpha;
    for (let l = 0; l < j; l++) A[j * d + l] = A[l * d + j];
  }
  cholesky(A, d);
  const W = new Float64Array(d * c);
  const col = new Float64Array(d);
  for (let k = 0; k < c; k++) {
    for (let j = 0; j < d; j++) col[j] = R[j * c + k];
    choleskySolve(A, d, col);
    for (let j = 0; j < d; j++) W[j * c + k] = col[j];
  }
  // b = ȳ − μᵀW, so that predictions are X·W + b on uncentred features.
  const b = new Float64Array(c);
  for (let k = 0; k < c; k++) {
    let s = my[k];
    for (let j = 0; j < d; j++) s -= mx[j] * W[j * c + k];
    b[k] = s;
  }
  return { W, b, d, c, alpha };
}

/** In place: the lower Cholesky factor L of a symmetric positive definite A (d×d), A = LLᵀ. */
function cholesky(A: Float64Array, d: number): void {
  for (let j = 0; j < d; j++) {
    let s = A[j * d + j];
    for (let k = 0; k < j; k++) s -= A[j * d + k] * A[j * d + k];
    if (!(s > 0)) throw new Error('ridgeFit: the system is not positive definite (non-finite features?)');
    const ljj = Math.sqrt(s);
    A[j * d + j] = ljj;
    for (let i = j + 1; i < d; i++) {
      let t = A[i * d + j];
      for (let k = 0; k < j; k++) t -= A[i * d + k] * A[j * d + k];
      A[i * d + j] = t / ljj;
    }
  }
}

/** Solve LLᵀx = v in place, L from cholesky(). */
function choleskySolve(L: Float64Array, d: number, v: Float64Array): void {
  for (let i = 0; i < d; i++) {
    let s = v[i];
    for (let k = 0; k < i; k++) s -= L[i * d + k] * v[k];
    v[i] = s / L[i * d + i];
  }
  for (let i = d - 1; i >= 0; i--) {
    let s = v[i];
    for (let k = i + 1; k < d; k++) s -= L[k * d + i] * v[k];
    v[i] = s / L[i * d + i];
  }
}
