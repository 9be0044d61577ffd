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
export function symmetricEigen(sym: ArrayLike<number>, n: number): SymmetricEigen {
  const a = new Float64Array(n * n);
  for (let p = 0; p < n; p++) for (let q = 0; q < n; q++) a[p * n + q] = 0.5 * (sym[p * n + q] + sym[q * n + p]);
  const v = new Float64Array(n * n);
  for (let p = 0; p < n; p++) v[p * n + p] = 1;
  let total = 0;
  for (let i = 0; i < a.length; i++) total += a[i] * a[i];
  for (let sweep = 0; sweep < 64 && total > 0; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q] * a[p * n + q];
    // Converged once the off-diagonal mass is at rounding level of the whole matrix.
    if (off <= 1e-32 * total) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        // Rotation zeroing a[p][q] (Golub & Van Loan, Algorithm 8.4.1), the smaller angle.
        const tau = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.abs(tau) > 1e150 ? 1 / (2 * tau) : (tau >= 0 ? 1 : -1) / (Math.abs(tau) + Math.sqrt(1 + tau * tau));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = t * c;
        // Jᵀ·A·J touches rows and columns p, q only; A stays symmetric, so update both halves in
        // one pass, and the two diagonal entries in closed form.
        for (let k = 0; k < n; k++) {
          if (k === p || k === q) continue;
          const akp = a[k * n + p];
          const akq = a[k * n + q];
          const np = c * akp - s * akq;
          const nq = s * akp + c * akq;
          a[k * n + p] = np;
          a[p * n + k] = np;
          a[k * n + q] = nq;
          a[q * n + k] = nq;
        }
        a[p * n + p] -= t * apq;
        a[q * n + q] += t * apq;
        a[p * n + q] = 0;
        a[q * n + p] = 0;
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => a[j * n + j] - a[i * n + i] || i - j);
  const values = new Float64Array(n);
  const vectors = new Float64Array(n * n);
  order.forEach((src, dst) => {
    values[dst] = a[src * n + src];
    for (let k = 0; k < n; k++) vectors[k * n + dst] = v[k * n + src];
  });
  return { values, vectors };
}
