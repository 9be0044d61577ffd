// The WebAssembly SIMD kernels of simd-gemm.ts against scalar float32 references: the gemm over
// shapes that exercise every row and column block (and their remainders), strides and
// accumulation, bit for bit; the softmax row helpers within float32 rounding.
import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import { createSimdGemm, type SimdGemm } from '../shared/math/simd-gemm.js';

// the plain module (no fused multiply-adds), whose products are exact to the scalar order
const simd = createSimdGemm(64, false)!;

/** expRow over rows of n4 floats in [−35, 5) with a −1e30 pad: each within 5e-6 of exp(x − shift), the pad 0, the sum too. */
function expectExpRows(g: SimdGemm, sizes: number[], seed: string): void {
  const rng = seedrandom(seed);
  const mem = new Float32Array(g.memory.buffer);
  for (const n4 of sizes) {
    const x = Float32Array.from({ length: n4 }, () => 40 * rng() - 35);
    x[0] = -1e30; // a pad: exactly 0
    mem.set(x);
    const shift = 2 * rng();
    const sum = g.expRow(0, n4, shift);
    let ref = 0;
    for (let i = 0; i < n4; i++) {
      const e = Math.exp(x[i] - shift);
      ref += e;
      expect(Math.abs(mem[i] - e)).toBeLessThanOrEqual(5e-6 * e + 1e-38);
    }
    expect(mem[0]).toBe(0);
    expect(Math.abs(sum - ref) / ref).toBeLessThan(5e-6);
  }
}

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
            simd.gemm(m, n, k, 4 * ao, lda, 4 * bo, ldb, 4 * co, ldc, acc ? 1 : 0, 1);
            gemmRef(m, n, k, a, lda, b, ldb, c, ldc, acc);
            const got = mem.subarray(co, co + m * ldc);
            for (let i = 0; i < m; i++) {
              for (let j = 0; j < ldc; j++) expect(got[i * ldc + j], `${m}×${n}×${k} acc ${acc} [${i}, ${j}]`).toBe(c[i * ldc + j]);
            }
            // A read transposed in place: the same a, stored [k, m] with row length m + 1
            const ldt = m + 1;
            const at = new Float32Array(k * ldt);
            for (let i = 0; i < m; i++) for (let t = 0; t < k; t++) at[t * ldt + i] = a[i * lda + t];
            mem.set(at, ao);
            simd.gemm(m, n, k, 4 * ao, 1, 4 * bo, ldb, 4 * co, ldc, 1, ldt);
            gemmRef(m, n, k, a, lda, b, ldb, c, ldc, true);
            for (let i = 0; i < m * ldc; i++) expect(got[i], `transposed ${m}×${n}×${k} [${i}]`).toBe(c[i]);
          }
        }
      }
    }
  });

  it('runs the softmax row loops exactly as the per-row functions', () => {
    const rng = seedrandom('rows');
    const mem = new Float32Array(simd.memory.buffer);
    for (const [rows, ns] of [[1, 1], [3, 5], [7, 16], [5, 130]]) {
      const ns4 = (ns + 3) & ~3;
      const x = Float32Array.from({ length: rows * ns4 }, () => 6 * rng() - 3);
      const [po, qo, so, to] = [0, 4096, 8192, 12288];
      // softmaxRows against pads + rowMax + expRow + scaleRow
      mem.set(x, po);
      mem.set(x, qo);
      simd.softmaxRows(4 * po, rows, ns, ns4, 4 * so);
      for (let i = 0; i < rows; i++) {
        const p = 4 * (qo + i * ns4);
        for (let j = ns; j < ns4; j++) mem[qo + i * ns4 + j] = -1e30;
        const max = simd.rowMax(p, ns4);
        const sum = simd.expRow(p, ns4, max);
        simd.scaleRow(p, ns4, 1 / sum);
        expect(mem[so + 2 * i]).toBe(Math.fround(max));
        expect(mem[so + 2 * i + 1]).toBe(Math.fround(sum));
      }
      expect(mem.slice(po, po + rows * ns4)).toEqual(mem.slice(qo, qo + rows * ns4));
      // the probabilities sum to 1 and the pads get 0
      for (let i = 0; i < rows; i++) {
        let s = 0;
        for (let j = 0; j < ns4; j++) s += mem[po + i * ns4 + j];
        expect(Math.abs(s - 1)).toBeLessThan(1e-5);
        for (let j = ns; j < ns4; j++) expect(mem[po + i * ns4 + j]).toBe(0);
      }
      // expRows (shifts with a stride) against pads + expRow
      const stride = 3;
      for (let i = 0; i < rows; i++) mem[to + i * stride] = rng();
      mem.set(x, po);
      mem.set(x, qo);
      simd.expRows(4 * po, rows, ns, ns4, 4 * to, stride);
      for (let i = 0; i < rows; i++) {
        for (let j = ns; j < ns4; j++) mem[qo + i * ns4 + j] = -1e30;
        simd.expRow(4 * (qo + i * ns4), ns4, mem[to + i * stride]);
      }
      expect(mem.slice(po, po + rows * ns4)).toEqual(mem.slice(qo, qo + rows * ns4));
      // softmaxGradRows against softmaxGradRow
      const g = Float32Array.from({ length: rows * ns4 }, () => rng() - 0.5);
      for (let i = 0; i < rows; i++) mem[to + i] = rng();
      mem.set(g, so);
      mem.set(g, so + 2048);
      simd.softmaxGradRows(4 * po, 4 * so, rows, ns4, 4 * to);
      for (let i = 0; i < rows; i++) simd.softmaxGradRow(4 * (po + i * ns4), 4 * (so + 2048 + i * ns4), ns4, mem[to + i]);
      expect(mem.slice(so, so + rows * ns4)).toEqual(mem.slice(so + 2048, so + 2048 + rows * ns4));
    }
  });

  it('expRow is exp(x − shift) within 5e-6 relative, with its sum, over odd and even vector counts', () => {
    expectExpRows(simd, [4, 8, 12, 64, 132], 'exp');
  });

  it('rowMax is the maximum of exactly its n4 floats', () => {
    const rng = seedrandom('max');
    const mem = new Float32Array(simd.memory.buffer);
    for (let n4 = 4; n4 <= 80; n4 += 4) {
      const x = Float32Array.from({ length: n4 }, () => rng() - 2);
      x[Math.floor(rng() * n4)] = 1 + rng();
      mem.set(x);
      mem.fill(100, n4, n4 + 64); // what follows must not count
      expect(simd.rowMax(0, n4)).toBe(Math.max(...x));
    }
  });

  it('with relaxed-SIMD fused multiply-adds (where V8 accepts them), equals the product within float32 rounding', () => {
    const fused = createSimdGemm(64, true)!;
    if (!fused.fused) return; // relaxed SIMD unavailable: the plain module is used, tested above
    const rng = seedrandom('fma');
    const mem = new Float32Array(fused.memory.buffer);
    for (const [m, n, k] of [[5, 12, 8], [8, 36, 11], [13, 20, 64]]) {
      const a = Float32Array.from({ length: m * k }, () => rng() * 2 - 1);
      const b = Float32Array.from({ length: k * n }, () => rng() * 2 - 1);
      mem.set(a, 0);
      mem.set(b, 4096);
      fused.gemm(m, n, k, 0, k, 4 * 4096, n, 4 * 8192, n, 0, 1);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let s = 0;
          let scale = 0;
          for (let t = 0; t < k; t++) {
            s += a[i * k + t] * b[t * n + j];
            scale += Math.abs(a[i * k + t] * b[t * n + j]);
          }
          expect(Math.abs(mem[8192 + i * n + j] - s)).toBeLessThanOrEqual(1e-6 * scale);
        }
      }
    }
  });

  it('with relaxed-SIMD fused multiply-adds, expRow is exp(x − shift) within 5e-6 relative', () => {
    const fused = createSimdGemm(64, true)!;
    if (!fused.fused) return;
    expectExpRows(fused, [4, 12, 132], 'fma-exp');
  });

  it('uses the fused module by default where V8 accepts it, the plain one with MERGENET_WASM_RELAXED_SIMD=0', () => {
    const saved = process.env.MERGENET_WASM_RELAXED_SIMD;
    try {
      delete process.env.MERGENET_WASM_RELAXED_SIMD;
      expect(createSimdGemm(1)!.fused).toBe(createSimdGemm(1, true)!.fused);
      process.env.MERGENET_WASM_RELAXED_SIMD = '0';
      expect(createSimdGemm(1)!.fused).toBe(false);
    } finally {
      if (saved === undefined) delete process.env.MERGENET_WASM_RELAXED_SIMD;
      else process.env.MERGENET_WASM_RELAXED_SIMD = saved;
    }
  });
});
