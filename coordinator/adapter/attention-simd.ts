// Multi-head softmax attention, forward and backward, with every score-sized product done by the
// WebAssembly SIMD gemm (simd-gemm.ts). Same math as attentionForward/attentionBackward in
// lpka-kernels.ts (which remain the fallback), arranged as per-head matrix products:
//   S = Q_h·K_hᵀ, P = softmax(S), O_h = P·V_h;
//   dP = dO_h·V_hᵀ, dS = P⊙(dP − rowsum(dO_h⊙O_h)), dQ_h = dS·K_h, dK_hᵀ = Q_hᵀ·dS, dV_hᵀ = dO_hᵀ·P.
// Every buffer passed here must live in the gemm's memory (Workspace.f32 blocks). Score rows are
// padded to ns4 = ns rounded up to 4; the pads are set to −1e30 before the softmax, so they get
// probability exactly 0.
import type { SimdGemm } from './simd-gemm.js';

type F32 = Float32Array;

/** Byte offset of a view into the gemm's memory. */
const at = (a: F32, offsetElements = 0): number => a.byteOffset + 4 * offsetElements;

/**
 * Forward. Q [nq, d] (scaled), V [ns, d], Kt [d, ns4] (zero-padded). Writes O [nq, d], lse
 * [nq, heads] and the probabilities: into P [heads, nq, ns4] when given, else into S [nq, ns4]
 * (scratch, overwritten per head). `stats` is scratch of 2·nq (each row's max and sum).
 */
export function attentionForwardSimd(
  simd: SimdGemm, Q: F32, V: F32, Kt: F32, nq: number, ns: number, ns4: number, d: number, heads: number,
  O: F32, lse: F32, P: F32 | null, S: F32, stats: F32,
): void {
  const { gemm, softmaxRows } = simd;
  const dh = d / heads;
  for (let h = 0; h < heads; h++) {
    const c0 = h * dh;
    const probs = P === null ? S : P.subarray(h * nq * ns4, (h + 1) * nq * ns4);
    gemm(nq, ns4, dh, at(Q, c0), d, at(Kt, c0 * ns4), ns4, at(probs), ns4, 0, 1);
    softmaxRows(at(probs), nq, ns, ns4, at(stats));
    for (let i = 0; i < nq; i++) lse[i * heads + h] = stats[2 * i] + Math.log(stats[2 * i + 1]);
    gemm(nq, dh, ns, at(probs), ns4, at(V, c0), d, at(O, c0), d, 0, 1);
  }
}

/**
 * Rows of the score matrices per k-chunk in headGradT: a chunk of a 928-key row is 3.7 KB, so 64
 * rows (240 KB) stay in L2 while every column block walks down them.
 */
const K_CHUNK = 64;

/**
 * out[c0 … c0+dh−1 rows, ns4] = X_hᵀ·Y for X [nq, d] (head columns c0 …, read transposed in
 * place) and Y [nq, ns4]. Each column block of the gemm walks down all nq rows of Y, one page
 * apart, which the prefetchers do not follow; in k-chunks the walk stays in cache. Accumulating
 * chunk after chunk adds in the same order as one pass: the same bits.
 */
function headGradT(gemm: SimdGemm['gemm'], X: F32, c0: number, d: number, dh: number, Y: F32, nq: number, ns4: number, out: F32): void {
  for (let k0 = 0; k0 < nq; k0 += K_CHUNK) {
    const k = Math.min(K_CHUNK, nq - k0);
    gemm(dh, ns4, k, at(X, k0 * d + c0), 1, at(Y, k0 * ns4), ns4, at(out, c0 * ns4), ns4, k0 === 0 ? 0 : 1, d);
  }
}

/**
 * Backward for upstream dO [nq, d]: writes dQ
 * [nq, d] and dKt, dVt [d, ns4] (all overwritten). K [ns, d] row-major; Vt [d, ns4]. P from the
 * forward pass when it kept it, else recomputed into S from Q, Kt and lse. dS is scratch [nq, ns4],
 * Drow scratch of nq.
 */
export function attentionBackwardSimd(
  simd: SimdGemm, Q: F32, K: F32, Kt: F32, Vt: F32, O: F32, lse: F32, P: F32 | null,
  dO: F32, nq: number, ns: number, ns4: number, d: number, heads: number,
  dQ: F32, dKt: F32, dVt: F32, S: F32, dS: F32, Drow: F32,
): void {
  const { gemm, expRows, softmaxGradRows } = simd;
  const dh = d / heads;
  for (let h = 0; h < heads; h++) {
    const c0 = h * dh;
    let probs: F32;
    if (P !== null) probs = P.subarray(h * nq * ns4, (h + 1) * nq * ns4);
    else {
      probs = S;
      gemm(nq, ns4, dh, at(Q, c0), d, at(Kt, c0 * ns4), ns4, at(S), ns4, 0, 1);
      expRows(at(S), nq, ns, ns4, at(lse, h), heads);
    }
    // dP = dO_h·V_hᵀ, then dS = P⊙(dP − D) with D = dO_h·O_h per row
    gemm(nq, ns4, dh, at(dO, c0), d, at(Vt, c0 * ns4), ns4, at(dS), ns4, 0, 1);
    for (let i = 0; i < nq; i++) {
      const qo = i * d + c0;
      let D = 0;
      for (let t = 0; t < dh; t++) D += dO[qo + t] * O[qo + t];
      Drow[i] = D;
    }
    softmaxGradRows(at(probs), at(dS), nq, ns4, at(Drow));
    gemm(nq, dh, ns, at(dS), ns4, at(K, c0), d, at(dQ, c0), d, 0, 1);
    headGradT(gemm, Q, c0, d, dh, dS, nq, ns4, dKt);
    headGradT(gemm, dO, c0, d, dh, probs, nq, ns4, dVt);
  }
}
