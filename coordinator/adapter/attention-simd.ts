// Multi-head softmax attention, forward and backward, with every score-sized product done by the
// WebAssembly SIMD gemm (simd-gemm.ts). Same math as attentionForward/attentionBackward in
// lpka-kernels.ts (which remain the fallback), arranged as per-head matrix products:
//   S = Q_h·K_hᵀ, P = softmax(S), O_h = P·V_h;
//   dP = dO_h·V_hᵀ, dS = P⊙(dP − rowsum(dO_h⊙O_h)), dQ_h = dS·K_h, dK_hᵀ = Q_hᵀ·dS, dV_hᵀ = dO_hᵀ·P.
// Every buffer passed here must live in the gemm's memory (Workspace.f32 blocks). Score rows are
// padded to ns4 = ns rounded up to 4; the pads are set to −1e30 before the softmax, so they get
// probability exactly 0.
import type { SimdGemm } from '../../shared/math/simd-gemm.js';

type F32 = Float32Array;

/** Byte offset of a view into the gemm's memory. */
const at = (a: F32, offsetElements = 0): number => a.byteOffset + 4 * offsetElements;

/**
 * Query rows per block: every score-sized step (product, softmax, the products that read it) runs
 * on one block of rows while it is in cache (64 rows of 928 keys: 240 KB) instead of streaming the
 * whole [nq, ns4] matrix through memory once per step. Rows are independent and the dKᵀ, dVᵀ
 * products accumulate block after block in the order of one long product: the same bits.
 */
export const ATTN_ROW_BLOCK = 64;

/**
 * Forward. Q [nq, d] (scaled), V [ns, d], Kt [d, ns4] (zero-padded). Writes O [nq, d], lse
 * [nq, heads] and the probabilities: into P [heads, nq, ns4] when given, else into S
 * [min(nq, ATTN_ROW_BLOCK), ns4] (scratch). `stats` is scratch of 2·min(nq, ATTN_ROW_BLOCK).
 */
export function attentionForwardSimd(
  simd: SimdGemm, Q: F32, V: F32, Kt: F32, nq: number, ns: number, ns4: number, d: number, heads: number,
  O: F32, lse: F32, P: F32 | null, S: F32, stats: F32,
): void {
  const { gemm, softmaxRows } = simd;
  const dh = d / heads;
  for (let h = 0; h < heads; h++) {
    const c0 = h * dh;
    for (let i0 = 0; i0 < nq; i0 += ATTN_ROW_BLOCK) {
      const rows = Math.min(ATTN_ROW_BLOCK, nq - i0);
      const pr = P === null ? at(S) : at(P, (h * nq + i0) * ns4);
      gemm(rows, ns4, dh, at(Q, i0 * d + c0), d, at(Kt, c0 * ns4), ns4, pr, ns4, 0, 1);
      softmaxRows(pr, rows, ns, ns4, at(stats));
      for (let i = 0; i < rows; i++) lse[(i0 + i) * heads + h] = stats[2 * i] + Math.log(stats[2 * i + 1]);
      gemm(rows, dh, ns, pr, ns4, at(V, c0), d, at(O, i0 * d + c0), d, 0, 1);
    }
  }
}

/**
 * Backward for upstream dO [nq, d]: writes dQ [nq, d] and dKt, dVt [d, ns4] (all overwritten).
 * K [ns, d] row-major; Vt [d, ns4]. P from the forward pass when it kept it, else recomputed into S
 * from Q and Kt exactly as the forward computed it. S (when P is null) and dS are scratch
 * [min(nq, ATTN_ROW_BLOCK), ns4], stats (when P is null) scratch of 2·min(nq, ATTN_ROW_BLOCK), Drow
 * scratch of min(nq, ATTN_ROW_BLOCK).
 */
export function attentionBackwardSimd(
  simd: SimdGemm, Q: F32, K: F32, Kt: F32, Vt: F32, O: F32, P: F32 | null,
  dO: F32, nq: number, ns: number, ns4: number, d: number, heads: number,
  dQ: F32, dKt: F32, dVt: F32, S: F32, stats: F32, dS: F32, Drow: F32,
): void {
  const { gemm, softmaxRows, softmaxGradRows } = simd;
  const dh = d / heads;
  for (let h = 0; h < heads; h++) {
    const c0 = h * dh;
    for (let i0 = 0; i0 < nq; i0 += ATTN_ROW_BLOCK) {
      const rows = Math.min(ATTN_ROW_BLOCK, nq - i0);
      const q = at(Q, i0 * d + c0);
      const g = at(dO, i0 * d + c0);
      let pr: number;
      if (P !== null) pr = at(P, (h * nq + i0) * ns4);
      else {
        // the forward's own steps, so recomputed probabilities equal kept ones bit for bit
        pr = at(S);
        gemm(rows, ns4, dh, q, d, at(Kt, c0 * ns4), ns4, pr, ns4, 0, 1);
        softmaxRows(pr, rows, ns, ns4, at(stats));
      }
      // dP = dO_h·V_hᵀ, then dS = P⊙(dP − D) with D = dO_h·O_h per row
      gemm(rows, ns4, dh, g, d, at(Vt, c0 * ns4), ns4, at(dS), ns4, 0, 1);
      for (let i = 0; i < rows; i++) {
        const qo = (i0 + i) * d + c0;
        let D = 0;
        for (let t = 0; t < dh; t++) D += dO[qo + t] * O[qo + t];
        Drow[i] = D;
      }
      softmaxGradRows(pr, at(dS), rows, ns4, at(Drow));
      gemm(rows, dh, ns, at(dS), ns4, at(K, c0), d, at(dQ, i0 * d + c0), d, 0, 1);
      // dK_hᵀ += Q_hᵀ·dS, dV_hᵀ += dO_hᵀ·P over this block's rows (Q_h, dO_h read transposed in place)
      const acc = i0 === 0 ? 0 : 1;
      gemm(dh, ns4, rows, q, 1, at(dS), ns4, at(dKt, c0 * ns4), ns4, acc, d);
      gemm(dh, ns4, rows, g, 1, pr, ns4, at(dVt, c0 * ns4), ns4, acc, d);
    }
  }
}
