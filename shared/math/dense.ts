// Small dense float64 kernels on plain row-major arrays, for the few-column matrices of a
// randomized SVD (a sketch is at most a few dozen columns wide). At these sizes a tfjs op costs
// more in dispatch than the arithmetic, and ml-matrix's element accessors dominated its QR
// (~3 ms per 784×16 QR, most of a slice), so these loop over typed arrays directly. Inputs are
// Float64Array only: loops that also see Float32Array run several times slower in V8.

/**
 * Orthonormal basis of the columns of a row-major rows×cols matrix (rows ≥ cols): the thin Q of a
 * Householder QR, row-major rows×cols. Householder rather than Gram–Schmidt: Q stays orthonormal
 * even when the input is rank-deficient (a zero column leaves its reflector out).
 */
export function thinQ(a: Float64Array, rows: number, cols: number): Float64Array {
  if (rows < cols) throw new Error(`thinQ: need rows ≥ cols, got ${rows}×${cols}`);
  // Column-major working copy: a reflector walks down one column at a time.
  const c = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) c[j * rows + i] = a[i * cols + j];
  // Reflector j is I − β_j v_j v_jᵀ with v_j stored in rows j.. of column j of c.
  const beta = new Float64Array(cols);
  for (let j = 0; j < cols; j++) {
    const cj = j * rows;
    let scale = 0;
    for (let i = j; i < rows; i++) scale = Math.max(scale, Math.abs(c[cj + i]));
    if (scale === 0) continue; // zero column below the diagonal: no reflector
    let norm2 = 0;
    for (let i = j; i < rows; i++) {
      const x = c[cj + i] / scale;
      norm2 += x * x;
    }
    const norm = scale * Math.sqrt(norm2);
    // v = x − α e₁ with α = −sign(x₀)‖x‖, so v₀ never cancels.
    const alpha = c[cj + j] >= 0 ? -norm : norm;
    c[cj + j] -= alpha;
    let vv = 0;
    for (let i = j; i < rows; i++) vv += c[cj + i] * c[cj + i];
    beta[j] = 2 / vv;
    for (let k = j + 1; k < cols; k++) {
      const ck = k * rows;
      let dot = 0;
      for (let i = j; i < rows; i++) dot += c[cj + i] * c[ck + i];
      const f = beta[j] * dot;
      for (let i = j; i < rows; i++) c[ck + i] -= f * c[cj + i];
    }
  }
  // Q = H₀ H₁ … H_{cols−1} [I; 0], built column by column (column-major), last reflector first.
  const q = new Float64Array(rows * cols);
  for (let k = 0; k < cols; k++) q[k * rows + k] = 1;
  for (let j = cols - 1; j >= 0; j--) {
    if (beta[j] === 0) continue;
    const cj = j * rows;
    for (let k = j; k < cols; k++) {
      const qk = k * rows;
      let dot = 0;
      for (let i = j; i < rows; i++) dot += c[cj + i] * q[qk + i];
      const f = beta[j] * dot;
      if (f === 0) continue;
      for (let i = j; i < rows; i++) q[qk + i] -= f * c[cj + i];
    }
  }
  const out = new Float64Array(rows * cols);
  for (let j = 0; j < cols; j++) for (let i = 0; i < rows; i++) out[i * cols + j] = q[j * rows + i];
  return out;
}

/**
 * Least sine of the angle between a column and the span of the columns before it (after scaling
 * each to unit length) that orthoQ accepts for Cholesky QR: its Gram matrix then has a condition
 * number of at most a few hundred, and Q is orthonormal to ~1e-13.
 */
export const CHOL_QR_MIN_PIVOT = 0.1;

/**
 * Orthonormal basis of the columns of a row-major rows×cols matrix (rows ≥ cols), as thinQ, but by
 * Cholesky QR where that is accurate: R from the Cholesky factor of the Gram matrix of the columns
 * scaled to unit length, Q = A·D·R⁻¹ — about half thinQ's work, and the same span (the signs of the
 * columns may differ: R's diagonal is positive here). Columns that are nearly dependent (a pivot
 * below CHOL_QR_MIN_PIVOT), zero or not finite go to thinQ instead. A power iteration's basis
 * M·Q·P, whose columns are nearly orthogonal once it converges, takes the fast way.
 */
export function orthoQ(a: Float64Array, rows: number, cols: number): Float64Array {
  return cholQ(a, rows, cols) ?? thinQ(a, rows, cols);
}

function cholQ(a: Float64Array, rows: number, cols: number): Float64Array | undefined {
  if (rows < cols) return undefined;
  const T = cholQFactor(gram(a, rows, cols), cols, cols);
  if (!T) return undefined;
  // Q = A·T
  const q = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let i = 0; i < cols; i++) {
      const x = a[o + i];
      const ti = i * cols;
      for (let c = i; c < cols; c++) q[o + c] += x * T[ti + c];
    }
  }
  return q;
}

/**
 * Cholesky QR's right factor: for the Gram matrix G = AᵀA of cols columns (row-major, row length
 * ld ≥ cols), T = D·R⁻¹ (cols×cols, upper triangular, row length cols) with D = diag(1/‖a_j‖) and
 * RᵀR = D·G·D, so that A·T has orthonormal columns; undefined when orthoQ must take thinQ (a
 * pivot below CHOL_QR_MIN_PIVOT, a zero or non-finite column).
 */
export function cholQFactor(g: ArrayLike<number>, cols: number, ld: number): Float64Array | undefined {
  const d = new Float64Array(cols);
  for (let j = 0; j < cols; j++) {
    const v = g[j * ld + j];
    if (!(v > 0 && v < Infinity)) return undefined;
    d[j] = 1 / Math.sqrt(v);
  }
  // R upper triangular, RᵀR = D·G·D (unit diagonal)
  const R = new Float64Array(cols * cols);
  const min2 = CHOL_QR_MIN_PIVOT * CHOL_QR_MIN_PIVOT;
  for (let j = 0; j < cols; j++) {
    let s = g[j * ld + j] * d[j] * d[j];
    for (let k = 0; k < j; k++) s -= R[k * cols + j] * R[k * cols + j];
    if (!(s >= min2)) return undefined;
    const rjj = Math.sqrt(s);
    R[j * cols + j] = rjj;
    for (let i = j + 1; i < cols; i++) {
      let t = g[j * ld + i] * d[j] * d[i];
      for (let k = 0; k < j; k++) t -= R[k * cols + j] * R[k * cols + i];
      R[j * cols + i] = t / rjj;
    }
  }
  // T = D·R⁻¹, upper triangular (back substitution, column by column)
  const T = new Float64Array(cols * cols);
  for (let c = 0; c < cols; c++) {
    for (let i = c; i >= 0; i--) {
      let s = i === c ? 1 : 0;
      for (let k = i + 1; k <= c; k++) s -= R[i * cols + k] * T[k * cols + c];
      T[i * cols + c] = s / R[i * cols + i];
    }
  }
  for (let i = 0; i < cols; i++) for (let c = i; c < cols; c++) T[i * cols + c] *= d[i];
  return T;
}

/** YᵀY (cols×cols, row-major) of a row-major rows×cols matrix, accumulated in float64. */
export function gram(y: Float64Array, rows: number, cols: number): Float64Array {
  const g = new Float64Array(cols * cols);
  // Four rows per pass: the inner loop is only cols long, and this halves the loop overhead.
  let i = 0;
  for (; i + 3 < rows; i += 4) {
    const o0 = i * cols;
    const o1 = o0 + cols;
    const o2 = o1 + cols;
    const o3 = o2 + cols;
    for (let p = 0; p < cols; p++) {
      const a0 = y[o0 + p];
      const a1 = y[o1 + p];
      const a2 = y[o2 + p];
      const a3 = y[o3 + p];
      const gp = p * cols;
      for (let q = p; q < cols; q++) g[gp + q] += a0 * y[o0 + q] + a1 * y[o1 + q] + a2 * y[o2 + q] + a3 * y[o3 + q];
    }
  }
  for (; i < rows; i++) {
    const o = i * cols;
    for (let p = 0; p < cols; p++) {
      const a = y[o + p];
      const gp = p * cols;
      for (let q = p; q < cols; q++) g[gp + q] += a * y[o + q];
    }
  }
  for (let p = 0; p < cols; p++) for (let q = 0; q < p; q++) g[p * cols + q] = g[q * cols + p];
  return g;
}

/** X·M for row-major X (rows×inner) and M (inner×cols), float64 result. */
export function matMul(x: Float64Array, mat: Float64Array, rows: number, inner: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const oi = i * cols;
    const xi = i * inner;
    // Four terms of the inner sum per pass, as in gram().
    let p = 0;
    for (; p + 3 < inner; p += 4) {
      const a0 = x[xi + p];
      const a1 = x[xi + p + 1];
      const a2 = x[xi + p + 2];
      const a3 = x[xi + p + 3];
      const m0 = p * cols;
      const m1 = m0 + cols;
      const m2 = m1 + cols;
      const m3 = m2 + cols;
      for (let j = 0; j < cols; j++) out[oi + j] += a0 * mat[m0 + j] + a1 * mat[m1 + j] + a2 * mat[m2 + j] + a3 * mat[m3 + j];
    }
    for (; p < inner; p++) {
      const a = x[xi + p];
      const mp = p * cols;
      for (let j = 0; j < cols; j++) out[oi + j] += a * mat[mp + j];
    }
  }
  return out;
}

export interface SymmetricEigen {
  /** Eigenvalues, largest first (ties keep index order). */
  values: Float64Array;
  /** Row-major n×n; column j is the unit eigenvector of values[j]. */
  vectors: Float64Array;
}

/**
 * Eigendecomposition of a symmetric n×n matrix (row-major; only its symmetric part is used) by
 * cyclic Jacobi rotations. Jacobi rather than tridiagonal QR: for the ≤ few-dozen-wide Gram
 * matrices here it is as fast, short, and finds small eigenvalues to high relative accuracy.
 */
export function symmetricEigen(sym: ArrayLike<number>, n: number, opts: { offTol?: number } = {}): SymmetricEigen {
  // Converged once the off-diagonal mass is below offTol² of the whole matrix's (Frobenius, both
  // halves): by default 1e-16, rounding level. A caller whose results are float32 can stop at
  // ~1e-12 and save the last sweep, which only moves the vectors by ~1e-12 relative to the gaps.
  const tol2 = (opts.offTol ?? 1e-16) ** 2;
  // The upper triangle of A (a[p·n + q], p ≤ q) and Vᵀ (row j: eigenvector j), so that a rotation
  // writes each entry it changes once and walks rows of V contiguously.
  const a = new Float64Array(n * n);
  let total = 0;
  for (let p = 0; p < n; p++) {
    for (let q = p; q < n; q++) {
      const x = 0.5 * (sym[p * n + q] + sym[q * n + p]);
      a[p * n + q] = x;
      total += p === q ? x * x : 2 * x * x;
    }
  }
  const vt = new Float64Array(n * n);
  for (let p = 0; p < n; p++) vt[p * n + p] = 1;
  for (let sweep = 0; sweep < 64 && total > 0; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q] * a[p * n + q];
    if (2 * off <= tol2 * total) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const app = a[p * n + p];
        const aqq = a[q * n + q];
        // Negligible against both diagonal entries (below half a rounding of their geometric mean,
        // which keeps small eigenvalues' relative accuracy): zeroed without a rotation.
        if (Math.abs(apq) <= 1e-17 * Math.sqrt(Math.abs(app * aqq))) {
          a[p * n + q] = 0;
          continue;
        }
        // Rotation zeroing a[p][q] (Golub & Van Loan, Algorithm 8.4.1), the smaller angle.
        const tau = (aqq - app) / (2 * apq);
        const t = Math.abs(tau) > 1e150 ? 1 / (2 * tau) : (tau >= 0 ? 1 : -1) / (Math.abs(tau) + Math.sqrt(1 + tau * tau));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = t * c;
        // Jᵀ·A·J changes rows and columns p, q: in the upper triangle, a[k][p] and a[k][q] above
        // row p, a[p][k] and a[k][q] between, a[p][k] and a[q][k] after q; the two diagonal
        // entries in closed form.
        for (let k = 0; k < p; k++) {
          const x = a[k * n + p];
          const y = a[k * n + q];
          a[k * n + p] = c * x - s * y;
          a[k * n + q] = s * x + c * y;
        }
        for (let k = p + 1; k < q; k++) {
          const x = a[p * n + k];
          const y = a[k * n + q];
          a[p * n + k] = c * x - s * y;
          a[k * n + q] = s * x + c * y;
        }
        for (let k = q + 1; k < n; k++) {
          const x = a[p * n + k];
          const y = a[q * n + k];
          a[p * n + k] = c * x - s * y;
          a[q * n + k] = s * x + c * y;
        }
        a[p * n + p] = app - t * apq;
        a[q * n + q] = aqq + t * apq;
        a[p * n + q] = 0;
        const op = p * n;
        const oq = q * n;
        for (let k = 0; k < n; k++) {
          const x = vt[op + k];
          const y = vt[oq + k];
          vt[op + k] = c * x - s * y;
          vt[oq + k] = s * x + c * y;
        }
      }
    }
  }
  // Largest first, ties in index order (a stable insertion sort: no closures on this hot path).
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const d = a[i * n + i];
    let j = i;
    while (j > 0 && a[order[j - 1] * n + order[j - 1]] < d) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = i;
  }
  const values = new Float64Array(n);
  const vectors = new Float64Array(n * n);
  for (let dst = 0; dst < n; dst++) {
    const src = order[dst];
    values[dst] = a[src * n + src];
    for (let k = 0; k < n; k++) vectors[k * n + dst] = vt[src * n + k];
  }
  return { values, vectors };
}
