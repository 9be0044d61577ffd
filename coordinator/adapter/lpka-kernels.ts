// Hand-written Float32Array kernels for the LPKA adapter: linear, LayerNorm, GELU (tanh form) and
// multi-head softmax attention, forward and backward. They replace tfjs ops because at the adapter's
// sizes (tokens of width r = 8..64, ~100 small parameters) tfjs spent most of a cycle in op dispatch.
//
// Conventions, chosen so that V8 compiles every kernel for one array type per argument:
// - Matrices are row-major. Forward activations are Float32Array; gradients and accumulators are
//   Float64Array (sums over thousands of tokens stay accurate).
// - Inner loops run along contiguous memory (i-k-j order). Attention keeps K and V transposed
//   ([d, s]) so that the loops over the s keys are the long, contiguous ones.
// - Kernels allocate nothing: callers pass every output and scratch buffer.
type F32 = Float32Array;
type F64 = Float64Array;

/** y[n, out] = x[n, in]·W[in, out] + b. `acc` is scratch of at least `out` elements. */
export function linearForward(x: F32, n: number, inDim: number, W: F32, b: F32, outDim: number, y: F32, acc: F64): void {
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < outDim; j++) acc[j] = 0;
    const xo = i * inDim;
    for (let k = 0; k < inDim; k++) {
      const a = x[xo + k];
      const wo = k * outDim;
      for (let j = 0; j < outDim; j++) acc[j] += a * W[wo + j];
    }
    const yo = i * outDim;
    for (let j = 0; j < outDim; j++) y[yo + j] = acc[j] + b[j];
  }
}

/**
 * Backward of y = x·W + b for upstream dy[n, out]: dW += xᵀ·dy, db += Σ rows of dy, and, when dx is
 * given, dx += dy·Wᵀ (accumulated: several branches feed one input).
 */
export function linearBackward(x: F32, n: number, inDim: number, W: F32, outDim: number, dy: F64, dx: F64 | null, dW: F64, db: F64): void {
  for (let i = 0; i < n; i++) {
    const xo = i * inDim;
    const yo = i * outDim;
    for (let j = 0; j < outDim; j++) db[j] += dy[yo + j];
    for (let k = 0; k < inDim; k++) {
      const a = x[xo + k];
      const wo = k * outDim;
      let s = 0;
      for (let j = 0; j < outDim; j++) {
        const g = dy[yo + j];
        dW[wo + j] += a * g;
        s += g * W[wo + j];
      }
      if (dx !== null) dx[xo + k] += s;
    }
  }
}

/**
 * Row-wise LayerNorm over width w: y = (x − mean)/√(var + eps)·gain + bias. Writes the normalised
 * rows (xhat) and 1/√(var + eps) per row (rstd) for the backward pass.
 */
export function layerNormForward(x: F32, n: number, w: number, gain: F32, bias: F32, eps: number, y: F32, xhat: F32, rstd: F32): void {
  for (let i = 0; i < n; i++) {
    const o = i * w;
    let mu = 0;
    for (let j = 0; j < w; j++) mu += x[o + j];
    mu /= w;
    let v = 0;
    for (let j = 0; j < w; j++) {
      const c = x[o + j] - mu;
      v += c * c;
    }
    const rs = 1 / Math.sqrt(v / w + eps);
    rstd[i] = rs;
    for (let j = 0; j < w; j++) {
      const h = (x[o + j] - mu) * rs;
      xhat[o + j] = h;
      y[o + j] = h * gain[j] + bias[j];
    }
  }
}

/**
 * Backward of layerNormForward: dgain += Σ dy⊙xhat, dbias += Σ dy, and, when dx is given,
 * dx += rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat⊙xhat)) with dxhat = dy⊙gain.
 */
export function layerNormBackward(dy: F64, n: number, w: number, gain: F32, xhat: F32, rstd: F32, dx: F64 | null, dgain: F64, dbias: F64): void {
  for (let i = 0; i < n; i++) {
    const o = i * w;
    let m1 = 0;
    let m2 = 0;
    for (let j = 0; j < w; j++) {
      const g = dy[o + j];
      const h = xhat[o + j];
      dgain[j] += g * h;
      dbias[j] += g;
      const dh = g * gain[j];
      m1 += dh;
      m2 += dh * h;
    }
    if (dx === null) continue;
    m1 /= w;
    m2 /= w;
    const rs = rstd[i];
    for (let j = 0; j < w; j++) dx[o + j] += rs * (dy[o + j] * gain[j] - m1 - xhat[o + j] * m2);
  }
}

const GELU_C = Math.sqrt(2 / Math.PI);
const GELU_K = 0.044715;

// tanh as Eigen's float rational approximation (odd degree-13 over even degree-6 polynomial, x
// clamped to ±7.905): within 2.7e-7 of Math.tanh everywhere, ~3× cheaper than the Math.tanh call
// that was a tenth of a small pair's pass. The float32 activations carry 6e-8 relative rounding
// anyway, and the kernels stay within 1e-5 of the tfjs reference.
const TANH_CLAMP = 7.90531110763549805;
const [TA1, TA3, TA5, TA7, TA9, TA11, TA13] = [
  4.89352455891786e-3, 6.37261928875436e-4, 1.48572235717979e-5, 5.12229709037114e-8, -8.60467152213735e-11,
  2.00018790482477e-13, -2.76076847742355e-16,
];
const [TB0, TB2, TB4, TB6] = [4.89352518554385e-3, 2.26843463243900e-3, 1.18534705686654e-4, 1.19825839466702e-6];

/** tanh(x) within 2.7e-7 absolute (see above). */
export function tanhApprox(x: number): number {
  const c = x > TANH_CLAMP ? TANH_CLAMP : x < -TANH_CLAMP ? -TANH_CLAMP : x;
  const x2 = c * c;
  const p = c * (TA1 + x2 * (TA3 + x2 * (TA5 + x2 * (TA7 + x2 * (TA9 + x2 * (TA11 + x2 * TA13))))));
  const q = TB0 + x2 * (TB2 + x2 * (TB4 + x2 * TB6));
  return p / q;
}

/**
 * g = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), elementwise over `len` values, and its derivative
 * gelu′(x) into gd (float32) for geluBackward: the backward then needs no second tanh.
 */
export function geluForward(x: F32, len: number, g: F32, gd: F32): void {
  for (let i = 0; i < len; i++) {
    const v = x[i];
    const t = tanhApprox(GELU_C * (v + GELU_K * v * v * v));
    g[i] = 0.5 * v * (1 + t);
    gd[i] = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * GELU_C * (1 + 3 * GELU_K * v * v);
  }
}

/** dx = dg·gelu′(x), overwriting dx, from the derivative geluForward kept. */
export function geluBackward(gd: F32, dg: F64, len: number, dx: F64): void {
  for (let i = 0; i < len; i++) dx[i] = dg[i] * gd[i];
}

/** out[c, r] = inᵀ for in[r, c] (float32). */
export function transpose32(src: F32, rows: number, cols: number, out: F32): void {
  for (let i = 0; i < rows; i++) {
    const o = i * cols;
    for (let j = 0; j < cols; j++) out[j * rows + i] = src[o + j];
  }
}

/** out[c, r] = inᵀ for in[r, c] (float64). */
export function transpose64(src: F64, rows: number, cols: number, out: F64): void {
  for (let i = 0; i < rows; i++) {
    const o = i * cols;
    for (let j = 0; j < cols; j++) out[j * rows + i] = src[o + j];
  }
}

/**
 * Multi-head softmax attention. Q: [nq, d] (already scaled by 1/√dh), Kt and Vt: [d, ns] (keys and
 * values transposed), head h owning features h·dh … (h+1)·dh − 1. Writes O [nq, d], the log-sum-exp
 * of each (query, head) row of scores (lse [nq, heads]) and, when P is given, the probabilities
 * (P [nq, heads, ns]) so the backward pass need not recompute them. `row` is scratch of ns.
 */
export function attentionForward(Q: F32, Kt: F32, Vt: F32, nq: number, ns: number, d: number, heads: number, O: F32, lse: F32, P: F32 | null, row: F64): void {
  const dh = d / heads;
  for (let i = 0; i < nq; i++) {
    for (let h = 0; h < heads; h++) {
      const c0 = h * dh;
      const qo = i * d + c0;
      for (let j = 0; j < ns; j++) row[j] = 0;
      for (let t = 0; t < dh; t++) {
        const q = Q[qo + t];
        const ko = (c0 + t) * ns;
        for (let j = 0; j < ns; j++) row[j] += q * Kt[ko + j];
      }
      let max = -Infinity;
      for (let j = 0; j < ns; j++) if (row[j] > max) max = row[j];
      let sum = 0;
      for (let j = 0; j < ns; j++) {
        const e = Math.exp(row[j] - max);
        row[j] = e;
        sum += e;
      }
      const inv = 1 / sum;
      if (P !== null) {
        const po = (i * heads + h) * ns;
        for (let j = 0; j < ns; j++) P[po + j] = row[j] * inv;
      }
      for (let t = 0; t < dh; t++) {
        const vo = (c0 + t) * ns;
        let s = 0;
        for (let j = 0; j < ns; j++) s += row[j] * Vt[vo + j];
        O[qo + t] = s * inv;
      }
      lse[i * heads + h] = max + Math.log(sum);
    }
  }
}

/**
 * Backward of attentionForward for upstream dO [nq, d]: dQ [nq, d] (overwritten), dKt and dVt
 * ([d, ns], accumulated). Per (query, head) row: dP = dO·Vᵀ, dS = P⊙(dP − dO·O), dQ = dS·K,
 * dK += dSᵀ·Q, dV += Pᵀ·dO. P comes from the forward pass when it kept it, else it is recomputed
 * from Q, K and lse. `prow` and `drow` are scratch of ns.
 */
export function attentionBackward(
  Q: F32, Kt: F32, Vt: F32, O: F32, lse: F32, P: F32 | null, dO: F64,
  nq: number, ns: number, d: number, heads: number,
  dQ: F64, dKt: F64, dVt: F64, prow: F64, drow: F64,
): void {
  const dh = d / heads;
  for (let i = 0; i < nq; i++) {
    for (let h = 0; h < heads; h++) {
      const c0 = h * dh;
      const qo = i * d + c0;
      if (P !== null) {
        const po = (i * heads + h) * ns;
        for (let j = 0; j < ns; j++) prow[j] = P[po + j];
      } else {
        for (let j = 0; j < ns; j++) prow[j] = 0;
        for (let t = 0; t < dh; t++) {
          const q = Q[qo + t];
          const ko = (c0 + t) * ns;
          for (let j = 0; j < ns; j++) prow[j] += q * Kt[ko + j];
        }
        const l = lse[i * heads + h];
        for (let j = 0; j < ns; j++) prow[j] = Math.exp(prow[j] - l);
      }
      let D = 0;
      for (let t = 0; t < dh; t++) D += dO[qo + t] * O[qo + t];
      for (let j = 0; j < ns; j++) drow[j] = 0;
      for (let t = 0; t < dh; t++) {
        const g = dO[qo + t];
        const vo = (c0 + t) * ns;
        for (let j = 0; j < ns; j++) {
          drow[j] += g * Vt[vo + j];
          dVt[vo + j] += prow[j] * g;
        }
      }
      for (let j = 0; j < ns; j++) drow[j] = prow[j] * (drow[j] - D);
      for (let t = 0; t < dh; t++) {
        const q = Q[qo + t];
        const ko = (c0 + t) * ns;
        let s = 0;
        for (let j = 0; j < ns; j++) {
          const ds = drow[j];
          s += ds * Kt[ko + j];
          dKt[ko + j] += ds * q;
        }
        dQ[qo + t] = s;
      }
    }
  }
}
