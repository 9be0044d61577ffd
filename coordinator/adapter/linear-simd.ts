// The adapter's linear layers (y = x·W + b) and their backward pass on the WebAssembly SIMD gemm.
// On small slots the projections, not the attention, were most of a cycle in scalar JS. Same
// contract as linearForward/linearBackward in lpka-kernels.ts, which remain the fallback; here x
// and W must live in the gemm's memory (Workspace.f32 blocks), and the widths must be multiples of 4.
import { transpose32 } from './lpka-kernels.js';
import type { SimdGemm } from './simd-gemm.js';
import type { Workspace } from './workspace.js';

type F32 = Float32Array;
type F64 = Float64Array;

/** Whether a layer of these widths can run on the gemm. */
export function simdLinearFits(inDim: number, outDim: number): boolean {
  return inDim % 4 === 0 && outDim % 4 === 0;
}

/** y[n, out] = x[n, in]·W[in, out] + b (y in the gemm's memory). */
export function linearForwardSimd(simd: SimdGemm, x: F32, n: number, inDim: number, W: F32, b: F32, outDim: number, y: F32): void {
  for (let i = 0; i < n; i++) y.set(b, i * outDim);
  simd.gemm(n, outDim, inDim, x.byteOffset, inDim, W.byteOffset, outDim, y.byteOffset, outDim, 1);
}

/** Backward of linearForwardSimd: dW += xᵀ·dy, db += Σ rows of dy, and dx += dy·Wᵀ when dx is given. */
export function linearBackwardSimd(
  simd: SimdGemm, ws: Workspace, x: F32, n: number, inDim: number, W: F32, outDim: number,
  dy: F64, dx: F64 | null, dW: F64, db: F64,
): void {
  const dy32 = ws.f32(n * outDim);
  for (let i = 0; i < dy32.length; i++) dy32[i] = dy[i];
  for (let i = 0; i < n; i++) {
    const o = i * outDim;
    for (let j = 0; j < outDim; j++) db[j] += dy[o + j];
  }
  // dW += xᵀ·dy
  const xt = ws.f32(inDim * n);
  transpose32(x, n, inDim, xt);
  const dW32 = ws.f32(inDim * outDim);
  simd.gemm(inDim, outDim, n, xt.byteOffset, n, dy32.byteOffset, outDim, dW32.byteOffset, outDim, 0);
  for (let i = 0; i < dW32.length; i++) dW[i] += dW32[i];
  if (dx === null) return;
  // dx += dy·Wᵀ
  const wt = ws.f32(outDim * inDim);
  transpose32(W, inDim, outDim, wt);
  const dx32 = ws.f32(n * inDim);
  simd.gemm(n, inDim, outDim, dy32.byteOffset, outDim, wt.byteOffset, inDim, dx32.byteOffset, inDim, 0);
  for (let i = 0; i < dx32.length; i++) dx[i] += dx32[i];
}
