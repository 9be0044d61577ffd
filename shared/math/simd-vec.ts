// Elementwise float32 kernels in WebAssembly SIMD, on the memory of the device's gemm
// (device-gemm.ts), for the slot-sized passes of a device's MergeNet work: ‖W‖²_F and max|W| of a
// slice, A′B′ − AB, the branch's K = s·D and kernel + (K_new − K_old). In V8 a plain JS loop over a
// 784×64 Float32Array costs ~0.1 ms per pass (more on a loaded core), a tfjs op ~50 µs of dispatch;
// these run each pass in a few µs. The module is assembled here byte by byte, as simd-gemm.ts is.
//
// Pointers are byte offsets into the memory, n a count of floats and a multiple of 4:
//   sumSq(p, n) → f64       Σ x², each x promoted to float64 first (so every square is exact),
//                            four float64x2 accumulators; NaN or ±Infinity make it non-finite;
//                            n a multiple of 8
//   sumSqMax(p, n, out) → f64  Σ x² as sumSq, and max |x| stored as a float32 at out, by
//                            f32x4.pmax (one instruction; f32x4.max's NaN handling costs several):
//                            NaN is not propagated there, the non-finite sum shows it
//   sub(a, b, c, n)         c = a − b
//   add(a, b, c, n)         c = a + b
//   scale(a, s, c, n)       c = a·s (s float32)
//   addSub(k, x, y, c, n)   c = k + (x − y)
//   diffSumSq(p, q, n) → f64   Σ (p − q)², each difference rounded to float32 first (as
//                            tf.sub gives it), then as sumSq; n a multiple of 8
//   gemm64(m, n, k, a, lda, aStep, b, ldb, c, ldc)   C = A·B in float64 (pointers in bytes, the
//                            rest in elements; A[i, p] at a + 8·(i·lda + p·aStep) as in the gemm;
//                            n even): row by row, C's row accumulated in memory, each entry summed
//                            over p in order, for the small matrices of a slice
//   copyRows(src, srcStride, dst, dstStride, rows, rowBytes)   a strided block copy, strides and
//                            rowBytes in bytes, rowBytes a multiple of 16
// Every float32 result is one IEEE operation per element, as the tfjs ops they replace compute it.
import { section, str, uleb } from './wasm-bytes.js';

const I32 = 0x7f;
const F32 = 0x7d;
const F64 = 0x7c;
const V128 = 0x7b;

const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];

const get = (i: number) => [0x20, ...uleb(i)];
const set = (i: number) => [0x21, ...uleb(i)];
const i32c = (v: number) => [0x41, ...uleb(v)]; // constants 0…63 only (uleb = sleb there)
const simd = (op: number) => [0xfd, ...uleb(op)];
const MEM = [2, 0]; // alignment hint 4 bytes, offset 0
const load = (p: number) => [...get(p), ...simd(0x00), ...MEM];
const I32_ADD = 0x6a;
const I32_SHL = 0x74;
const I32_GE_U = 0x4f;
const F32_MAX = 0x97;
const F64_ADD = 0xa0;
const V = {
  shuffle: 0x0d, f32Splat: 0x13, f64Splat: 0x14, f32Lane: 0x1f, f64Lane: 0x21, promoteLow: 0x5f,
  f32Abs: 0xe0, f32Add: 0xe4, f32Sub: 0xe5, f32Mul: 0xe6, f32Pmax: 0xeb, f64Add: 0xf0, f64Mul: 0xf2, store: 0x0b,
};

/** locals[end] = locals[p] + 4·n; while (p < end) { body; every pointer += 16 } */
function loop(p: number, n: number, end: number, pointers: number[], body: number[]): number[] {
  const step = pointers.flatMap((q) => [...get(q), ...i32c(16), I32_ADD, ...set(q)]);
  return [
    ...get(p), ...get(n), ...i32c(2), I32_SHL, I32_ADD, ...set(end),
    0x02, 0x40, 0x03, 0x40,
    ...get(p), ...get(end), I32_GE_U, 0x0d, 1,
    ...body,
    ...step,
    0x0c, 0, 0x0b, 0x0b,
  ];
}

/** A function body: local groups [count, type] and the instructions. */
function body(locals: [number, number][], code: number[]): number[] {
  const b = [...vec(locals.map(([c, t]) => [...uleb(c), t])), ...code, 0x0b];
  return [...uleb(b.length), ...b];
}

/** loop() over 8 floats a step (two vectors): locals[end] = p + 4·n, p (and `more`) += 32. */
function loop8(p: number, n: number, end: number, body: number[], more: number[] = []): number[] {
  return [
    ...get(p), ...get(n), ...i32c(2), I32_SHL, I32_ADD, ...set(end),
    0x02, 0x40, 0x03, 0x40,
    ...get(p), ...get(end), I32_GE_U, 0x0d, 1,
    ...body,
    ...[p, ...more].flatMap((q) => [...get(q), ...i32c(32), I32_ADD, ...set(q)]),
    0x0c, 0, 0x0b, 0x0b,
  ];
}

const HI = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

/**
 * The sum of squares and max |x| of 8 floats x at p (x = p − q, rounded to float32, with Q) into
 * accumulators: float64x2 S[0..3] (four independent chains, so the adds overlap) and float32x4
 * M[0..1]. X, D: scratch v128 locals.
 */
function sumSqMaxStep(P: number, S: number[], M: number[] | undefined, X: number, D: number, Q?: number): number[] {
  const out: number[] = [];
  for (let v = 0; v < 2; v++) {
    out.push(...get(P), ...simd(0x00), 2, 16 * v);
    if (Q !== undefined) out.push(...get(Q), ...simd(0x00), 2, 16 * v, ...simd(V.f32Sub));
    out.push(...set(X));
    for (let h = 0; h < 2; h++) {
      const acc = S[2 * v + h];
      out.push(...get(X), ...(h === 0 ? [] : [...get(X), ...simd(V.shuffle), ...HI]), ...simd(V.promoteLow), ...set(D));
      out.push(...get(acc), ...get(D), ...get(D), ...simd(V.f64Mul), ...simd(V.f64Add), ...set(acc));
    }
    // pmax(a, b) = a < b ? b : a
    if (M) out.push(...get(M[v]), ...get(X), ...simd(V.f32Abs), ...simd(V.f32Pmax), ...set(M[v]));
  }
  return out;
}

/** Σ of the four float64x2 accumulators, as an f64 on the stack. */
function sumOf(S: number[]): number[] {
  return [
    ...get(S[0]), ...get(S[1]), ...simd(V.f64Add), ...get(S[2]), ...get(S[3]), ...simd(V.f64Add), ...simd(V.f64Add), ...set(S[0]),
    ...get(S[0]), ...simd(V.f64Lane), 0, ...get(S[0]), ...simd(V.f64Lane), 1, F64_ADD,
  ];
}

/** max of the lanes of M0 and M1, as an f32 on the stack. */
function maxOf(M: number[]): number[] {
  const lane = (i: number) => [...get(M[0]), ...simd(V.f32Lane), i];
  return [...get(M[0]), ...get(M[1]), ...simd(V.f32Pmax), ...set(M[0]), ...lane(0), ...lane(1), F32_MAX, ...lane(2), ...lane(3), F32_MAX, F32_MAX];
}

// sumSq(p, n): locals 2 end, 3–6 S, 7 x, 8 d
function sumSqBody(): number[] {
  const [P, N, END, X, D] = [0, 1, 2, 7, 8];
  const S = [3, 4, 5, 6];
  return body([[1, I32], [6, V128]], [...loop8(P, N, END, sumSqMaxStep(P, S, undefined, X, D)), ...sumOf(S)]);
}

// diffSumSq(p, q, n): locals 3 end, 4–7 S, 8 x, 9 d
function diffSumSqBody(): number[] {
  const [P, Q, N, END, X, D] = [0, 1, 2, 3, 8, 9];
  const S = [4, 5, 6, 7];
  return body([[1, I32], [6, V128]], [...loop8(P, N, END, sumSqMaxStep(P, S, undefined, X, D, Q), [Q]), ...sumOf(S)]);
}

// sumSqMax(p, n, out): locals 3 end, 4–7 S, 8–9 M, 10 x, 11 d
function sumSqMaxBody(): number[] {
  const [P, N, OUT, END, X, D] = [0, 1, 2, 3, 10, 11];
  const S = [4, 5, 6, 7];
  const M = [8, 9];
  return body([[1, I32], [8, V128]], [
    ...loop8(P, N, END, sumSqMaxStep(P, S, M, X, D)),
    ...get(OUT), ...maxOf(M), 0x38, 2, 0, // f32.store
    ...sumOf(S),
  ]);
}

// sub(a, b, c, n): locals 4 end
function subBody(): number[] {
  const [A, B, C, N, END] = [0, 1, 2, 3, 4];
  return body([[1, I32]], loop(A, N, END, [A, B, C], [
    ...get(C), ...load(A), ...load(B), ...simd(V.f32Sub), ...simd(V.store), ...MEM,
  ]));
}

// add(a, b, c, n): locals 4 end
function addBody(): number[] {
  const [A, B, C, N, END] = [0, 1, 2, 3, 4];
  return body([[1, I32]], loop(A, N, END, [A, B, C], [
    ...get(C), ...load(A), ...load(B), ...simd(V.f32Add), ...simd(V.store), ...MEM,
  ]));
}

// scale(a, s, c, n): locals 4 end, 5 splat of s
function scaleBody(): number[] {
  const [A, S, C, N, END, SV] = [0, 1, 2, 3, 4, 5];
  return body([[1, I32], [1, V128]], [
    ...get(S), ...simd(V.f32Splat), ...set(SV),
    ...loop(A, N, END, [A, C], [...get(C), ...load(A), ...get(SV), ...simd(V.f32Mul), ...simd(V.store), ...MEM]),
  ]);
}

// addSub(k, x, y, c, n): locals 5 end
function addSubBody(): number[] {
  const [K, X, Y, C, N, END] = [0, 1, 2, 3, 4, 5];
  return body([[1, I32]], loop(K, N, END, [K, X, Y, C], [
    ...get(C), ...load(K), ...load(X), ...load(Y), ...simd(V.f32Sub), ...simd(V.f32Add), ...simd(V.store), ...MEM,
  ]));
}

// gemm64(m, n, k, a, lda, aStep, b, ldb, c, ldc): locals 10 i, 11 p, 12 jb, 13 nb, 14 crow, 15 brow,
// 16 av (v128)
function gemm64Body(): number[] {
  const [Mx, Nx, Kx, A, LDA, ASTEP, B, LDB, C, LDC, I, P, JB, NB, CROW, BROW, AV] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
  const mul = (a: number, b: number) => [...get(a), ...get(b), 0x6c /* i32.mul */];
  const bytes8 = [...i32c(3), I32_SHL];
  const zero = [...simd(0x0c), ...new Array(16).fill(0)];
  const whileLtU = (x: number, lim: number, inner: number[]) => [
    0x02, 0x40, 0x03, 0x40, ...get(x), ...get(lim), I32_GE_U, 0x0d, 1, ...inner, 0x0c, 0, 0x0b, 0x0b,
  ];
  return body([[6, I32], [1, V128]], [
    ...get(Nx), ...bytes8, ...set(NB),
    ...whileLtU(I, Mx, [
      ...get(C), ...mul(I, LDC), ...bytes8, I32_ADD, ...set(CROW),
      ...i32c(0), ...set(JB),
      ...whileLtU(JB, NB, [...get(CROW), ...get(JB), I32_ADD, ...zero, ...simd(V.store), 3, 0, ...get(JB), ...i32c(16), I32_ADD, ...set(JB)]),
      ...i32c(0), ...set(P),
      ...whileLtU(P, Kx, [
        // av = splat(A[i·lda + p·aStep])
        ...get(A), ...mul(I, LDA), ...mul(P, ASTEP), I32_ADD, ...bytes8, I32_ADD, 0x2b, 3, 0, ...simd(V.f64Splat), ...set(AV),
        ...get(B), ...mul(P, LDB), ...bytes8, I32_ADD, ...set(BROW),
        ...i32c(0), ...set(JB),
        ...whileLtU(JB, NB, [
          ...get(CROW), ...get(JB), I32_ADD,
          ...get(CROW), ...get(JB), I32_ADD, ...simd(0x00), 3, 0,
          ...get(AV), ...get(BROW), ...get(JB), I32_ADD, ...simd(0x00), 3, 0, ...simd(V.f64Mul),
          ...simd(V.f64Add), ...simd(V.store), 3, 0,
          ...get(JB), ...i32c(16), I32_ADD, ...set(JB),
        ]),
        ...get(P), ...i32c(1), I32_ADD, ...set(P),
      ]),
      ...get(I), ...i32c(1), I32_ADD, ...set(I),
    ]),
  ]);
}

// copyRows(src, ss, dst, ds, rows, rowBytes): locals 6 i, 7 j
function copyRowsBody(): number[] {
  const [SRC, SS, DST, DS, ROWS, RB, I, J] = [0, 1, 2, 3, 4, 5, 6, 7];
  const add = (a: number, b: number) => [...get(a), ...get(b), I32_ADD];
  return body([[2, I32]], [
    0x02, 0x40, 0x03, 0x40,
    ...get(I), ...get(ROWS), I32_GE_U, 0x0d, 1,
    ...i32c(0), ...set(J),
    0x02, 0x40, 0x03, 0x40,
    ...get(J), ...get(RB), I32_GE_U, 0x0d, 1,
    ...add(DST, J), ...add(SRC, J), ...simd(0x00), ...MEM, ...simd(V.store), ...MEM,
    ...get(J), ...i32c(16), I32_ADD, ...set(J),
    0x0c, 0, 0x0b, 0x0b,
    ...add(SRC, SS), ...set(SRC),
    ...add(DST, DS), ...set(DST),
    ...get(I), ...i32c(1), I32_ADD, ...set(I),
    0x0c, 0, 0x0b, 0x0b,
  ]);
}

function moduleBytes(): Uint8Array {
  const type = section(1, vec([
    [0x60, ...vec([[I32], [I32]]), ...vec([[F64]])], // sumSq
    [0x60, ...vec([[I32], [I32], [I32], [I32]]), 0], // sub, add
    [0x60, ...vec([[I32], [F32], [I32], [I32]]), 0], // scale
    [0x60, ...vec([[I32], [I32], [I32], [I32], [I32]]), 0], // addSub
    [0x60, ...vec([[I32], [I32], [I32]]), ...vec([[F64]])], // sumSqMax
    [0x60, ...vec([[I32], [I32], [I32], [I32], [I32], [I32]]), 0], // copyRows
    [0x60, ...vec([[I32], [I32], [I32], [I32], [I32], [I32], [I32], [I32], [I32], [I32]]), 0], // gemm64
  ]));
  // diffSumSq shares sumSqMax's type (i32, i32, i32) → f64
  const imports = section(2, vec([[...str('env'), ...str('mem'), 0x02, 0x00, 0]]));
  const funcs = section(3, vec([[0], [1], [1], [2], [3], [4], [5], [4], [6]]));
  const names = ['sumSq', 'sub', 'add', 'scale', 'addSub', 'sumSqMax', 'copyRows', 'diffSumSq', 'gemm64'];
  const exports = section(7, vec(names.map((name, i) => [...str(name), 0x00, i])));
  const code = section(10, vec([sumSqBody(), subBody(), addBody(), scaleBody(), addSubBody(), sumSqMaxBody(), copyRowsBody(), diffSumSqBody(), gemm64Body()]));
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, ...type, ...imports, ...funcs, ...exports, ...code]);
}

export interface SimdVec {
  sumSq(p: number, n: number): number;
  sumSqMax(p: number, n: number, out: number): number;
  copyRows(src: number, srcStride: number, dst: number, dstStride: number, rows: number, rowBytes: number): void;
  diffSumSq(p: number, q: number, n: number): number;
  gemm64(m: number, n: number, k: number, a: number, lda: number, aStep: number, b: number, ldb: number, c: number, ldc: number): void;
  sub(a: number, b: number, c: number, n: number): void;
  add(a: number, b: number, c: number, n: number): void;
  scale(a: number, s: number, c: number, n: number): void;
  addSub(k: number, x: number, y: number, c: number, n: number): void;
}

interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}

let compiled: object | null | undefined;

/** The kernels on `memory` (a WebAssembly.Memory), or null where WebAssembly SIMD is unavailable. */
export function createSimdVec(memory: object): SimdVec | null {
  const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (!wasm) return null;
  if (compiled === undefined) {
    const bytes = moduleBytes();
    compiled = wasm.validate(bytes) ? new wasm.Module(bytes) : null;
  }
  if (compiled === null) return null;
  return new wasm.Instance(compiled, { env: { mem: memory } }).exports as unknown as SimdVec;
}
