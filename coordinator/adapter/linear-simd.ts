// The adapter's linear layers (y = x·W + b) and their backward pass on the WebAssembly SIMD gemm.
// On small slots the projections, not the attention, were most of a cycle in scalar JS. Same
// contract as linearForward/linearBackward in lpka-kernels.ts, which remain the fallback; here x
// and W must live in the gemm's memory (Workspace.f32 blocks), and the widths must be multiples of 4.
import { transpose32 } from './lpka-kernels.js';
import type { SimdGemm } from '../../shared/math/simd-gemm.js';
import type { Workspace } from './workspace.js';

type F32 = Float32Array;
type F64 = Float64Array;

/** Whether a layer of these widths can run on the gemm. */
export function simdLinearFits(inDim: number, outDim: number): boolean {
  return inDim % 4 === 0 && outDim % 4 === 0;
}

/**
 * y[0 … total) = b repeated, by doubling copies: a few calls instead of one `set` per row (a set
 * costs more to call than to copy 32 floats, and a large pair's pass fills ~10⁵ rows).
 */
function fillRows(y: F32, b: F32, total: number): void {
  y.set(b, 0);
  for (let filled = b.length; filled < total; filled *= 2) y.copyWithin(filled, 0, Math.min(filled, total - filled));
}

/** y[n, out] = x[n, in]·W[in, out] + b (y in the gemm's memory). */
export function linearForwardSimd(simd: SimdGemm, x: F32, n: number, inDim: number, W: F32, b: F32, outDim: number, y: F32): void {
  fillRows(y, b, n * outDim);
  simd.gemm(n, outDim, inDim, x.byteOffset, inDim, W.byteOffset, outDim, y.byteOffset, outDim, 1, 1);
}

/**
 * Backward of linearForwardSimd: dW += xᵀ·dy, db += Σ rows of dy, and dx += dy·Wᵀ when dx is given.
 * dy may already be float32 in the gemm's memory (then it is used in place, as the attention's
 * dK, dV are: no float64 round trip), and `dx32` (in the gemm's memory) receives dy·Wᵀ itself,
 * overwritten, for a caller that wants it in float32 (the attention's dO): what dx += would add to
 * zeros, so the same bits.
 */
export function linearBackwardSimd(
  simd: SimdGemm, ws: Workspace, x: F32, n: number, inDim: number, W: F32, outDim: number,
  dy: F64 | F32, dx: F64 | null, dW: F64, db: F64, dx32: F32 | null = null,
): void {
  let dy32: F32;
  if (dy instanceof Float32Array && dy.buffer === simd.memory.buffer) dy32 = dy;
  else {
    dy32 = ws.f32(n * outDim);
    for (let i = 0; i < dy32.length; i++) dy32[i] = dy[i];
  }
  // db += Σ rows of dy, as 1ᵀ·dy on the gemm (scalar JS column sums were a tenth of a large pair's
  // backward): float32 sums in row order
  const ones = ws.f32(n);
  ones.fill(1);
  const db32 = ws.f32(outDim);
  simd.gemm(1, outDim, n, ones.byteOffset, n, dy32.byteOffset, outDim, db32.byteOffset, outDim, 0, 1);
  for (let j = 0; j < outDim; j++) db[j] += db32[j];
  // dW += xᵀ·dy, x read transposed in place (lda 1, aStep inDim)
  const dW32 = ws.f32(inDim * outDim);
  simd.gemm(inDim, outDim, n, x.byteOffset, 1, dy32.byteOffset, outDim, dW32.byteOffset, outDim, 0, inDim);
  for (let i = 0; i < dW32.length; i++) dW[i] += dW32[i];
  if (dx === null && dx32 === null) return;
  // dx += dy·Wᵀ (W is at most a few thousand floats: the transpose is cheap)
  const wt = ws.f32(outDim * inDim);
  transpose32(W, inDim, outDim, wt);
  const out = dx32 ?? ws.f32(n * inDim);
  simd.gemm(n, inDim, outDim, dy32.byteOffset, outDim, wt.byteOffset, inDim, out.byteOffset, inDim, 0, 1);
  if (dx !== null) for (let i = 0; i < out.length; i++) dx[i] += out[i];
}
