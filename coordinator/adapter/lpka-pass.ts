// The LPKA forward pass and its vector-Jacobian product, composed from the Float32Array kernels of
// lpka-kernels.ts (the math is described at the top of lpka.ts). Every intermediate lives in a
// Workspace; the forward pass records what the backward pass needs (a "tape") in the same workspace.
import {
  attentionBackward, attentionForward, geluBackward, geluForward, layerNormBackward, layerNormForward,
  linearBackward, linearForward, transpose32, transpose64,
} from './lpka-kernels.js';
import { ATTN_ROW_BLOCK, attentionBackwardSimd, attentionForwardSimd } from './attention-simd.js';
import { linearBackwardSimd, linearForwardSimd, simdLinearFits } from './linear-simd.js';
import type { Workspace } from './workspace.js';

type F32 = Float32Array;
type F64 = Float64Array;
export type TokenSet = 'rows' | 'cols';
export const SETS: readonly TokenSet[] = ['rows', 'cols'];

/** LayerNorm epsilon inside the adapter (not configurable: it is part of the function). */
export const LN_EPS = 1e-5;

/**
 * Keep the attention probabilities for the backward pass when they total at most this many floats
 * (96 MB: enough for 960×160 / 2048×100 slots, 19.2 M floats, at any rank); above it they are
 * recomputed, which costs one more score product and softmax per element (a quarter more VJP time
 * at 784×128 / 800×128, a third at 960×160 / 2048×100). Autograd keeps them too. The workspace keeps
 * its high-water mark, so a thread that once updated such a pair holds this much from then on.
 */
const KEEP_PROBS_LIMIT = 24 << 20;

/**
 * The same limit for a forward whose tape is kept for the update (keepProbs 'tape'): 4 MB, so that
 * without its probabilities the tape of a 784×128 / 800×128 pair fits KEEP_TAPE_BYTES and its cycle
 * runs one forward. The SIMD backward recomputes probabilities with the forward's own steps
 * (softmaxRows), so the VJP's bits do not depend on which were kept; the scalar attention
 * recomputes them as exp(s − lse), so without SIMD every forward uses this limit.
 */
const KEEP_PROBS_TAPE_LIMIT = 1 << 20;

export interface LnViews<T> { gain: T; bias: T }
export interface AttnViews<T> { Wq: T; bq: T; Wk: T; bk: T; Wv: T; bv: T; Wo: T; bo: T }
export interface FfnViews<T> { W1: T; b1: T; W2: T; b2: T }
/** One layer's parameters (or gradients), as views into one flat buffer. */
export interface LayerViews<T> {
  lnQuery: Record<TokenSet, LnViews<T>>;
  lnSource: Record<TokenSet, LnViews<T>>;
  attn: Record<TokenSet, Record<TokenSet, AttnViews<T>>>;
  lnFfn: Record<TokenSet, LnViews<T>>;
  ffn: Record<TokenSet, FfnViews<T>>;
}

/** Build per-layer views from a lookup by parameter name (names as in lpkaParamSpecs). */
export function layerViews<T>(layers: number, get: (name: string) => T): LayerViews<T>[] {
  const out: LayerViews<T>[] = [];
  for (let l = 0; l < layers; l++) {
    const p = `layer${l}`;
    const ln = (prefix: string): LnViews<T> => ({ gain: get(`${prefix}/gain`), bias: get(`${prefix}/bias`) });
    const attn = (q: TokenSet, k: TokenSet): AttnViews<T> => {
      const a = `${p}/attn_${q}_${k}`;
      return {
        Wq: get(`${a}/Wq`), bq: get(`${a}/bq`), Wk: get(`${a}/Wk`), bk: get(`${a}/bk`),
        Wv: get(`${a}/Wv`), bv: get(`${a}/bv`), Wo: get(`${a}/Wo`), bo: get(`${a}/bo`),
      };
    };
    const ffn = (s: TokenSet): FfnViews<T> => ({
      W1: get(`${p}/ffn_${s}/W1`), b1: get(`${p}/ffn_${s}/b1`), W2: get(`${p}/ffn_${s}/W2`), b2: get(`${p}/ffn_${s}/b2`),
    });
    out.push({
      lnQuery: { rows: ln(`${p}/ln_query_rows`), cols: ln(`${p}/ln_query_cols`) },
      lnSource: { rows: ln(`${p}/ln_source_rows`), cols: ln(`${p}/ln_source_cols`) },
      attn: {
        rows: { rows: attn('rows', 'rows'), cols: attn('rows', 'cols') },
        cols: { rows: attn('cols', 'rows'), cols: attn('cols', 'cols') },
      },
      lnFfn: { rows: ln(`${p}/ln_ffn_rows`), cols: ln(`${p}/ln_ffn_cols`) },
      ffn: { rows: ffn('rows'), cols: ffn('cols') },
    });
  }
  return out;
}

/** out[c, ns4] = srcᵀ for src [ns, c]; the pad columns ns … ns4−1 must already be zero. */
function transposePadded(src: F32, ns: number, c: number, out: F32, ns4: number): void {
  for (let j = 0; j < ns; j++) {
    const o = j * c;
    for (let t = 0; t < c; t++) out[t * ns4 + j] = src[o + t];
  }
}

/** out[ns, c] = the first ns columns of src [c, ns4], transposed. */
function untransposePadded(src: F32, c: number, ns: number, ns4: number, out: F64 | F32): void {
  for (let t = 0; t < c; t++) {
    const o = t * ns4;
    for (let j = 0; j < ns; j++) out[j * c + t] = src[o + j];
  }
}

/** Whether the parameters are views into the gemm's memory (then the linear layers can use it). */
function paramsInGemmMemory(W: readonly LayerViews<F32>[], ws: Workspace): boolean {
  return ws.simd !== null && W.length > 0 && W[0].lnQuery.rows.gain.buffer === ws.simd.memory.buffer;
}

/** The adapter's shape, as the kernels need it. */
export interface PassShape {
  rank: number;
  heads: number;
  attnDim: number;
  ffnDim: number;
}

/** Rank-r factors as plain arrays: A [m, r] and B [r, n], row-major float32. */
export interface Factors {
  A: Float32Array;
  B: Float32Array;
  m: number;
  n: number;
}

/** K and V are kept row-major only on the SIMD path; ns4 is the padded key count there (else ns). */
interface AttnTape { Q: F32; K: F32 | null; V: F32 | null; Kt: F32; Vt: F32; O: F32; lse: F32; P: F32 | null; ns4: number }
interface QueryTape {
  xIn: F32; xq: F32; xqHat: F32; xqRstd: F32;
  attn: Record<TokenSet, AttnTape>;
  z: F32; zHat: F32; zRstd: F32; h1: F32; g: F32; gd: F32;
}
interface LayerTape {
  y: Record<TokenSet, F32>; yHat: Record<TokenSet, F32>; yRstd: Record<TokenSet, F32>;
  q: Record<TokenSet, QueryTape>;
}

export interface ForwardResult {
  /** Final row tokens [m, r] (= A′) and column tokens [n, r] (= B′ᵀ), in the workspace. */
  rows: F32;
  cols: F32;
  counts: { query: Record<TokenSet, number>; source: Record<TokenSet, number> };
  tapes: LayerTape[];
}

/**
 * The forward pass. `keepProbs` asks to keep the attention probabilities for a backward pass (they
 * are kept only if they fit KEEP_PROBS_LIMIT, or KEEP_PROBS_TAPE_LIMIT for 'tape'). Results live
 * in `ws` until its next reset.
 */
export function forwardPass(shape: PassShape, W: readonly LayerViews<F32>[], target: Factors, source: Factors, ws: Workspace, keepProbs: boolean | 'tape'): ForwardResult {
  const { rank: r, heads, attnDim: d, ffnDim: f } = shape;
  const scale = 1 / Math.sqrt(d / heads);
  const count = { query: { rows: target.m, cols: target.n }, source: { rows: source.m, cols: source.n } };
  const acc = ws.f64(Math.max(r, d, f));
  const maxS = Math.max(source.m, source.n);
  const row = ws.f64(maxS);
  const nq = target.m + target.n;
  // The SIMD path needs head widths in whole 4-lane vectors.
  const simd = ws.simd !== null && (d / heads) % 4 === 0 ? ws.simd : null;
  const limit = keepProbs === 'tape' || simd === null ? KEEP_PROBS_TAPE_LIMIT : KEEP_PROBS_LIMIT;
  // the floats the kept probabilities take: [heads, nq, ns4] per layer and key set
  const probFloats = W.length * heads * nq * (((source.m + 3) & ~3) + ((source.n + 3) & ~3));
  const keep = keepProbs !== false && probFloats <= limit;

  // The linear layers run on the gemm when the parameters live in its memory (LpkaAdapter puts them
  // there); then the inputs are copied in too, so every activation is a gemm operand.
  const gemmLinear = paramsInGemmMemory(W, ws);
  const lin = (x: F32, n: number, inDim: number, Wm: F32, b: F32, outDim: number, y: F32): void => {
    if (gemmLinear && simdLinearFits(inDim, outDim)) linearForwardSimd(ws.simd!, x, n, inDim, Wm, b, outDim, y);
    else linearForward(x, n, inDim, Wm, b, outDim, y, acc);
  };
  const inRows = (a: F32): F32 => {
    if (!gemmLinear) return a;
    const copy = ws.f32(a.length);
    copy.set(a);
    return copy;
  };

  let x: Record<TokenSet, F32> = { rows: inRows(target.A), cols: ws.f32(target.n * r) };
  transpose32(target.B, r, target.n, x.cols);
  const src: Record<TokenSet, F32> = { rows: inRows(source.A), cols: ws.f32(source.n * r) };
  transpose32(source.B, r, source.n, src.cols);

  // With the projections on the gemm, Kᵀ and Vᵀ come from a second product, Wᵀ·yᵀ on the (r-wide,
  // so cheap) transposed source tokens, rather than transposing the d-wide K and V: the same sums in
  // the same order, so the same bits. Their pad columns then hold the bias instead of 0, which is
  // harmless: pad scores are overwritten before the softmax and pad probabilities are 0.
  const ktByGemm = simd !== null && gemmLinear && simdLinearFits(r, d);
  const yT = {} as Record<TokenSet, F32>;
  const projT = (Wm: F32, b: F32, y: F32, ns4: number, out: F32): void => {
    for (let t = 0; t < d; t++) out.fill(b[t], t * ns4, (t + 1) * ns4);
    simd!.gemm(d, ns4, r, Wm.byteOffset, 1, y.byteOffset, ns4, out.byteOffset, ns4, 1, d);
  };

  const tapes: LayerTape[] = [];
  for (const L of W) {
    const tape = { y: {}, yHat: {}, yRstd: {}, q: {} } as LayerTape;
    for (const ks of SETS) {
      const n = count.source[ks];
      tape.y[ks] = ws.f32(n * r);
      tape.yHat[ks] = ws.f32(n * r);
      tape.yRstd[ks] = ws.f32(n);
      layerNormForward(src[ks], n, r, L.lnSource[ks].gain, L.lnSource[ks].bias, LN_EPS, tape.y[ks], tape.yHat[ks], tape.yRstd[ks]);
      if (ktByGemm) {
        const ns4 = (n + 3) & ~3;
        yT[ks] = ws.f32(r * ns4, true);
        transposePadded(tape.y[ks], n, r, yT[ks], ns4);
      }
    }
    const mid = {} as Record<TokenSet, F32>;
    for (const qs of SETS) {
      const N = count.query[qs];
      const xq = ws.f32(N * r);
      const xqHat = ws.f32(N * r);
      const xqRstd = ws.f32(N);
      layerNormForward(x[qs], N, r, L.lnQuery[qs].gain, L.lnQuery[qs].bias, LN_EPS, xq, xqHat, xqRstd);
      const attn = {} as Record<TokenSet, AttnTape>;
      const branch = {} as Record<TokenSet, F32>;
      for (const ks of SETS) {
        const P = L.attn[qs][ks];
        const ns = count.source[ks];
        const Q = ws.f32(N * d);
        lin(xq, N, r, P.Wq, P.bq, d, Q);
        for (let i = 0; i < Q.length; i++) Q[i] *= scale;
        const O = ws.f32(N * d);
        const lse = ws.f32(N * heads);
        if (simd !== null) {
          const ns4 = (ns + 3) & ~3;
          const K = ws.f32(ns * d);
          const V = ws.f32(ns * d);
          const Kt = ws.f32(d * ns4, !ktByGemm);
          const Vt = ws.f32(d * ns4, !ktByGemm);
          lin(tape.y[ks], ns, r, P.Wk, P.bk, d, K);
          lin(tape.y[ks], ns, r, P.Wv, P.bv, d, V);
          if (ktByGemm) {
            projT(P.Wk, P.bk, yT[ks], ns4, Kt);
            projT(P.Wv, P.bv, yT[ks], ns4, Vt);
          } else {
            transposePadded(K, ns, d, Kt, ns4);
            transposePadded(V, ns, d, Vt, ns4);
          }
          const probs = keep ? ws.f32(heads * N * ns4) : null;
          const block = Math.min(N, ATTN_ROW_BLOCK);
          const scratch = ws.f32(keep ? 0 : block * ns4);
          attentionForwardSimd(simd, Q, V, Kt, N, ns, ns4, d, heads, O, lse, probs, scratch, ws.f32(2 * block));
          attn[ks] = { Q, K, V, Kt, Vt, O, lse, P: probs, ns4 };
        } else {
          const K = ws.f32(ns * d);
          const Kt = ws.f32(d * ns);
          lin(tape.y[ks], ns, r, P.Wk, P.bk, d, K);
          transpose32(K, ns, d, Kt);
          const Vt = ws.f32(d * ns);
          lin(tape.y[ks], ns, r, P.Wv, P.bv, d, K); // K's buffer reused for V
          transpose32(K, ns, d, Vt);
          const probs = keep ? ws.f32(N * heads * ns) : null;
          attentionForward(Q, Kt, Vt, N, ns, d, heads, O, lse, probs, row);
          attn[ks] = { Q, K: null, V: null, Kt, Vt, O, lse, P: probs, ns4: ns };
        }
        branch[ks] = ws.f32(N * r);
        lin(O, N, d, P.Wo, P.bo, r, branch[ks]);
      }
      const m = ws.f32(N * r);
      const xin = x[qs];
      for (let i = 0; i < m.length; i++) m[i] = xin[i] + 0.5 * (branch.rows[i] + branch.cols[i]);
      mid[qs] = m;
      tape.q[qs] = { xIn: xin, xq, xqHat, xqRstd, attn } as QueryTape;
    }
    const next = {} as Record<TokenSet, F32>;
    for (const qs of SETS) {
      const N = count.query[qs];
      const F = L.ffn[qs];
      const T = tape.q[qs];
      T.z = ws.f32(N * r);
      T.zHat = ws.f32(N * r);
      T.zRstd = ws.f32(N);
      layerNormForward(mid[qs], N, r, L.lnFfn[qs].gain, L.lnFfn[qs].bias, LN_EPS, T.z, T.zHat, T.zRstd);
      T.h1 = ws.f32(N * f);
      lin(T.z, N, r, F.W1, F.b1, f, T.h1);
      T.g = ws.f32(N * f);
      T.gd = ws.f32(N * f);
      geluForward(T.h1, N * f, T.g, T.gd);
      const out = ws.f32(N * r);
      lin(T.g, N, f, F.W2, F.b2, r, out);
      const mq = mid[qs];
      for (let i = 0; i < out.length; i++) out[i] = mq[i] + out[i];
      next[qs] = out;
    }
    x = next;
    tapes.push(tape);
  }
  return { rows: x.rows, cols: x.cols, counts: count, tapes };
}

/**
 * The SIMD attention backward for upstream dO32 [N, d] (float32, in the gemm's memory), its
 * outputs and scratch taken from `ws`: dQ [N, d] and dKᵀ, dVᵀ [d, ns4], float32.
 */
function attentionBackwardInWorkspace(ws: Workspace, A: AttnTape, dO32: F32, N: number, ns: number, d: number, heads: number): { dQ32: F32; dKt: F32; dVt: F32 } {
  const ns4 = A.ns4;
  const dQ32 = ws.f32(N * d);
  const dKt = ws.f32(d * ns4);
  const dVt = ws.f32(d * ns4);
  const block = Math.min(N, ATTN_ROW_BLOCK);
  const S = ws.f32(A.P === null ? block * ns4 : 0);
  const stats = ws.f32(A.P === null ? 2 * block : 0);
  const dS = ws.f32(block * ns4);
  attentionBackwardSimd(ws.simd!, A.Q, A.K!, A.Kt, A.Vt, A.O, A.P, dO32, N, ns, ns4, d, heads, dQ32, dKt, dVt, S, stats, dS, ws.f32(block));
  return { dQ32, dKt, dVt };
}

/**
 * Accumulate into G (zeroed by the caller) the gradients of ⟨rows, dRows⟩ + ⟨cols, dCols⟩ with
 * respect to every parameter, for the forward pass `fw` (which must still be in `ws`).
 */
export function backwardPass(shape: PassShape, W: readonly LayerViews<F32>[], G: readonly LayerViews<F64>[], fw: ForwardResult, dRows: F64, dCols: F64, ws: Workspace): void {
  const { rank: r, heads, attnDim: d, ffnDim: f } = shape;
  const scale = 1 / Math.sqrt(d / heads);
  const { query: nQuery, source: nSource } = fw.counts;
  const maxS = Math.max(nSource.rows, nSource.cols);
  const prow = ws.f64(maxS);
  const drow = ws.f64(maxS);
  let dx: Record<TokenSet, F64> = { rows: dRows, cols: dCols };
  const gemmLinear = paramsInGemmMemory(W, ws);
  const linB = (x: F32, n: number, inDim: number, Wm: F32, outDim: number, dy: F64, dxo: F64 | null, dW: F64, db: F64): void => {
    if (gemmLinear && simdLinearFits(inDim, outDim)) linearBackwardSimd(ws.simd!, ws, x, n, inDim, Wm, outDim, dy, dxo, dW, db);
    else linearBackward(x, n, inDim, Wm, outDim, dy, dxo, dW, db);
  };
  for (let l = W.length - 1; l >= 0; l--) {
    const L = W[l];
    const GL = G[l];
    const tape = fw.tapes[l];
    const dy: Record<TokenSet, F64> = { rows: ws.f64(nSource.rows * r, true), cols: ws.f64(nSource.cols * r, true) };
    const dPrev = {} as Record<TokenSet, F64>;
    for (const qs of SETS) {
      const N = nQuery[qs];
      const T = tape.q[qs];
      const dOut = dx[qs];
      // FFN branch: out = mid + W2·gelu(W1·LN(mid) + b1) + b2
      const dg = ws.f64(N * f, true);
      linB(T.g, N, f, L.ffn[qs].W2, r, dOut, dg, GL.ffn[qs].W2, GL.ffn[qs].b2);
      const dh1 = ws.f64(N * f);
      geluBackward(T.gd, dg, N * f, dh1);
      const dz = ws.f64(N * r, true);
      linB(T.z, N, r, L.ffn[qs].W1, f, dh1, dz, GL.ffn[qs].W1, GL.ffn[qs].b1);
      const dMid = ws.f64(N * r);
      dMid.set(dOut);
      layerNormBackward(dz, N, r, L.lnFfn[qs].gain, T.zHat, T.zRstd, dMid, GL.lnFfn[qs].gain, GL.lnFfn[qs].bias);
      // attention branches: mid = x + ½(a_rows + a_cols)
      const dA = ws.f64(N * r);
      for (let i = 0; i < dA.length; i++) dA[i] = 0.5 * dMid[i];
      const dxq = ws.f64(N * r, true);
      for (const ks of SETS) {
        const P = L.attn[qs][ks];
        const GP = GL.attn[qs][ks];
        const A = T.attn[ks];
        const ns = nSource[ks];
        if (A.K !== null && ws.simd !== null && gemmLinear && simdLinearFits(d, r) && simdLinearFits(r, d)) {
          // All on the gemm: dO comes out of the output projection's backward in float32 and dK, dV
          // go into the projections' backward in float32, without float64 copies (same bits: those
          // copies held float32 values exactly).
          const simd = ws.simd;
          const ns4 = A.ns4;
          const dO32 = ws.f32(N * d);
          linearBackwardSimd(simd, ws, A.O, N, d, P.Wo, r, dA, null, GP.Wo, GP.bo, dO32);
          const { dQ32, dKt, dVt } = attentionBackwardInWorkspace(ws, A, dO32, N, ns, d, heads);
          // scaled in place: the float32 rounding of the product is what the gemm was given before,
          // when the scaled dQ went through float64
          for (let i = 0; i < dQ32.length; i++) dQ32[i] *= scale;
          linearBackwardSimd(simd, ws, T.xq, N, r, P.Wq, d, dQ32, dxq, GP.Wq, GP.bq);
          const dK32 = ws.f32(ns * d);
          untransposePadded(dKt, d, ns, ns4, dK32);
          linearBackwardSimd(simd, ws, tape.y[ks], ns, r, P.Wk, d, dK32, dy[ks], GP.Wk, GP.bk);
          untransposePadded(dVt, d, ns, ns4, dK32); // dK32's buffer reused for dV
          linearBackwardSimd(simd, ws, tape.y[ks], ns, r, P.Wv, d, dK32, dy[ks], GP.Wv, GP.bv);
          continue;
        }
        const dO = ws.f64(N * d, true);
        linB(A.O, N, d, P.Wo, r, dA, dO, GP.Wo, GP.bo);
        const dQ = ws.f64(N * d);
        const dK = ws.f64(ns * d);
        const dV = ws.f64(ns * d);
        if (A.K !== null && ws.simd !== null) {
          const ns4 = A.ns4;
          const dO32 = ws.f32(N * d);
          for (let i = 0; i < dO32.length; i++) dO32[i] = dO[i];
          const { dQ32, dKt, dVt } = attentionBackwardInWorkspace(ws, A, dO32, N, ns, d, heads);
          for (let i = 0; i < dQ.length; i++) dQ[i] = dQ32[i];
          untransposePadded(dKt, d, ns, ns4, dK);
          untransposePadded(dVt, d, ns, ns4, dV);
        } else {
          const dKt = ws.f64(d * ns, true);
          const dVt = ws.f64(d * ns, true);
          attentionBackward(A.Q, A.Kt, A.Vt, A.O, A.lse, A.P, dO, N, ns, d, heads, dQ, dKt, dVt, prow, drow);
          transpose64(dKt, d, ns, dK);
          transpose64(dVt, d, ns, dV);
        }
        for (let i = 0; i < dQ.length; i++) dQ[i] *= scale;
        linB(T.xq, N, r, P.Wq, d, dQ, dxq, GP.Wq, GP.bq);
        linB(tape.y[ks], ns, r, P.Wk, d, dK, dy[ks], GP.Wk, GP.bk);
        linB(tape.y[ks], ns, r, P.Wv, d, dV, dy[ks], GP.Wv, GP.bv);
      }
      const dIn = ws.f64(N * r);
      dIn.set(dMid);
      layerNormBackward(dxq, N, r, L.lnQuery[qs].gain, T.xqHat, T.xqRstd, dIn, GL.lnQuery[qs].gain, GL.lnQuery[qs].bias);
      dPrev[qs] = dIn;
    }
    // The source tokens are inputs, not parameters: only the LayerNorm's gain and bias get gradient.
    for (const ks of SETS) {
      layerNormBackward(dy[ks], nSource[ks], r, L.lnSource[ks].gain, tape.yHat[ks], tape.yRstd[ks], null, GL.lnSource[ks].gain, GL.lnSource[ks].bias);
    }
    dx = dPrev;
  }
}
