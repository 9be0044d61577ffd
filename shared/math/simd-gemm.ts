// A float32 matrix product and softmax row helpers in WebAssembly SIMD, for the attention score
// products and their exps, where scalar JS loops run several times slower than 4-wide vector code. The module is assembled here, byte by
// byte, from the listing below: no toolchain, no binary blob in the repository. It works on a
// WebAssembly.Memory that the caller's buffers live in (see Workspace).
//
//   gemm(M, N, K, A, lda, B, ldb, C, ldc, acc, aStep):  C[M, N] (+)= A[M, K] · B[K, N]
//   row-major; A, B, C are byte offsets, lda/ldb/ldc strides in elements; N a multiple of 4;
//   A[i, k] is at A + 4·(i·lda + k·aStep): aStep 1 is row-major A, lda 1 and aStep = its row length
//   read a row-major matrix transposed (so xᵀ·dy needs no transpose);
//   acc = 0 overwrites C, else adds to it. Rows of C go in blocks of four (4×8 then 4×4 columns,
//   A elements broadcast with load32_splat, so each B load feeds four rows), the last M mod 4 rows
//   one at a time (blocks of 16, 8 then 4 columns); every block is accumulated in registers over the
//   whole k loop (4 lanes per vector). Each element is summed over k in order, without fused
//   multiply-adds, so the blocking does not change a result bit.
//   rowMax(p, n4) → max of the n4 floats at p (n4 a multiple of 4)
//   expRow(p, n4, shift) → x ← exp(x − shift) in place; returns the sum. Polynomial exp: 2^n·2^f,
//     y = (x − shift)·log2 e ≥ −127, n = nearest(y) (2^−127 is built as 0, so −1e30 pads give
//     exactly 0), |f| ≤ ½, 2^f by a degree-5 near-minimax polynomial (2.2e-7 relative in float32 Horner,
//     as accurate as the degree-6 Taylor series of e^t it replaced, with 4 fewer vector steps; ≈1e-6
//     relative overall, from rounding y; Horner steps fused in the relaxed-SIMD module)
//   scaleRow(p, n4, s): x ← x·s
//   softmaxGradRow(p, ds, n4, D): ds ← p⊙(ds − D)   (the softmax backward, one row)
//   softmaxRows, expRows, softmaxGradRows: the same over many rows in one call (see their bodies)
import v8 from 'node:v8';
import { section, sleb, str, uleb } from './wasm-bytes.js';

const OP = {
  block: 0x02, loop: 0x03, if: 0x04, end: 0x0b, br: 0x0c, brIf: 0x0d, void: 0x40,
  localGet: 0x20, localSet: 0x21, localTee: 0x22, i32Const: 0x41, f32Load: 0x2a,
  i32Eqz: 0x45, i32GeS: 0x4e, i32Add: 0x6a, i32Mul: 0x6c, i32Shl: 0x74, f32Add: 0x92, f32Max: 0x97,
  simd: 0xfd,
};
// SIMD opcodes (after the 0xfd prefix, LEB128-encoded)
const SIMD = {
  load: 0x00, load32Splat: 0x09, store: 0x0b, const: 0x0c, f32x4Splat: 0x13, f32x4ExtractLane: 0x1f, f32x4Nearest: 0x6a,
  i32x4Shl: 0xab, i32x4Add: 0xae, f32x4Add: 0xe4, f32x4Sub: 0xe5, f32x4Mul: 0xe6, f32x4Max: 0xe9,
  i32x4TruncSatF32x4S: 0xf8,
};





// gemm parameter and local indices
const [M, N, K, A, LDA, B, LDB, C, LDC, ACC, ASTEP] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const [I, KK, J, CROW, AROW, NBYTES, APTR, BPTR, LDB4, JEND] = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20];
const [LDA4, LDC4, IEND4, CPTR, ASTEP4] = [21, 22, 23, 24, 25];
const GEMM_I32_LOCALS = 15;
const AV = 26; // v128: the splatted A element
const CV = [27, 28, 29, 30]; // v128: accumulators of one row block of C
const BV = [31, 32]; // v128: one k's B vectors in a 4-row block
const C4 = [33, 34, 35, 36, 37, 38, 39, 40]; // v128: 4 rows × 2 vectors of accumulators
const GEMM_V128_LOCALS = 15;

const get = (i: number) => [OP.localGet, i];
const set = (i: number) => [OP.localSet, i];
const simd = (op: number) => [OP.simd, ...uleb(op)];
const memarg = [2, 0]; // alignment hint 4 bytes, offset 0
const memargAt = (offset: number) => [2, ...uleb(offset)];
/** local = local + k */
const inc = (i: number, k: number) => [...get(i), OP.i32Const, ...sleb(k), OP.i32Add, ...set(i)];
/** local = local + other */
const incBy = (i: number, other: number) => [...get(i), ...get(other), OP.i32Add, ...set(i)];
/** out = base + (row·ld << 2) */
const rowPtr = (out: number, base: number, row: number, ld: number) => [
  ...get(base), ...get(row), ...get(ld), OP.i32Mul, OP.i32Const, 2, OP.i32Shl, OP.i32Add, ...set(out),
];
/** `while (a < b) { body }` as block/loop; the body sits two labels deep. */
const whileLt = (a: number, b: number, body: number[]) => [
  OP.block, OP.void, OP.loop, OP.void,
  ...get(a), ...get(b), OP.i32GeS, OP.brIf, 1,
  ...body,
  OP.br, 0, OP.end, OP.end,
];
/** `while (a <= b) { body }` */
const whileLe = (a: number, b: number, body: number[]) => [
  OP.block, OP.void, OP.loop, OP.void,
  ...get(a), ...get(b), 0x4a /* i32.gt_s */, OP.brIf, 1,
  ...body,
  OP.br, 0, OP.end, OP.end,
];

/**
 * c + a·b as v128 code: f32x4.mul then f32x4.add, or with `fused` the relaxed-SIMD
 * f32x4.relaxed_madd (one FMA on x64; one rounding instead of two, so results differ in the last
 * bits from the plain module).
 */
function madd(fused: boolean, c: number[], a: number[], b: number[]): number[] {
  return fused ? [...a, ...b, ...c, ...simd(0x105)] : [...c, ...a, ...b, ...simd(SIMD.f32x4Mul), ...simd(SIMD.f32x4Add)];
}

/**
 * The loop over column blocks of `width` bytes from J, shared by both block kinds: set up the
 * accumulators (`init`), run the k loop (`kBody`, then A and B stepped by one k), store them.
 */
function columnLoop(width: number, init: number[], kBody: number[], store: number[]): number[] {
  return [
    ...get(NBYTES), OP.i32Const, ...sleb(width), 0x6b /* i32.sub */, ...set(JEND),
    ...whileLe(J, JEND, [
      ...init,
      OP.i32Const, 0, ...set(KK),
      ...get(AROW), ...set(APTR),
      ...get(B), ...get(J), OP.i32Add, ...set(BPTR),
      ...whileLt(KK, K, [...kBody, ...incBy(APTR, ASTEP4), ...incBy(BPTR, LDB4), ...inc(KK, 1)]),
      ...store,
      ...inc(J, width),
    ]),
  ];
}

/**
 * One pass over the columns of C row i in blocks of nv vectors (4·nv floats), starting at J: each
 * block's accumulators stay in registers over the whole k loop, so C is read and written once.
 */
function columnBlocks(nv: number, fused: boolean): number[] {
  const width = 16 * nv;
  const init: number[] = [];
  for (let v = 0; v < nv; v++) {
    init.push(
      ...get(ACC), OP.if, 0x7b, // if (acc) load C else 0, as a v128
      ...get(CROW), ...get(J), OP.i32Add, ...simd(SIMD.load), ...memargAt(16 * v),
      0x05, // else
      ...f32x4Const(0),
      OP.end, ...set(CV[v]),
    );
  }
  const fma: number[] = [];
  for (let v = 0; v < nv; v++) {
    fma.push(...madd(fused, get(CV[v]), get(AV), [...get(BPTR), ...simd(SIMD.load), ...memargAt(16 * v)]), ...set(CV[v]));
  }
  const store: number[] = [];
  for (let v = 0; v < nv; v++) store.push(...get(CROW), ...get(J), OP.i32Add, ...get(CV[v]), ...simd(SIMD.store), ...memargAt(16 * v));
  return columnLoop(width, init, [...get(APTR), OP.f32Load, 2, 0, ...simd(SIMD.f32x4Splat), ...set(AV), ...fma], store);
}

/**
 * Four rows of C (from row I) in blocks of nv ≤ 2 vectors, starting at column J: per k, nv loads of
 * B and four load32_splats of A feed 4·nv multiply-adds, where the one-row blocks need a B load per
 * multiply-add. Same products, same summation order per element as columnBlocks.
 */
function rowBlock4(nv: number, fused: boolean): number[] {
  const width = 16 * nv;
  const acc = (r: number, v: number) => C4[2 * r + v];
  // the C pointer of row r of the block, at column J
  const cAt = (r: number) => [...get(CROW), ...get(J), OP.i32Add, ...(r === 0 ? [] : [...get(LDC4), OP.i32Const, r, OP.i32Mul, OP.i32Add])];
  const aAt = (r: number) => [...get(APTR), ...(r === 0 ? [] : [...get(LDA4), OP.i32Const, r, OP.i32Mul, OP.i32Add])];
  const init: number[] = [];
  for (let r = 0; r < 4; r++) {
    init.push(...cAt(r), ...set(CPTR));
    for (let v = 0; v < nv; v++) {
      init.push(
        ...get(ACC), OP.if, 0x7b,
        ...get(CPTR), ...simd(SIMD.load), ...memargAt(16 * v),
        0x05,
        ...f32x4Const(0),
        OP.end, ...set(acc(r, v)),
      );
    }
  }
  const fma: number[] = [];
  for (let v = 0; v < nv; v++) fma.push(...get(BPTR), ...simd(SIMD.load), ...memargAt(16 * v), ...set(BV[v]));
  for (let r = 0; r < 4; r++) {
    fma.push(...aAt(r), ...simd(SIMD.load32Splat), ...memarg, ...set(AV));
    for (let v = 0; v < nv; v++) {
      fma.push(...madd(fused, get(acc(r, v)), get(AV), get(BV[v])), ...set(acc(r, v)));
    }
  }
  const store: number[] = [];
  for (let r = 0; r < 4; r++) {
    store.push(...cAt(r), ...set(CPTR));
    for (let v = 0; v < nv; v++) store.push(...get(CPTR), ...get(acc(r, v)), ...simd(SIMD.store), ...memargAt(16 * v));
  }
  return columnLoop(width, init, fma, store);
}

function gemmBody(fma: boolean): number[] {
  const code = [
    ...get(N), OP.i32Const, 2, OP.i32Shl, ...set(NBYTES),
    ...get(LDB), OP.i32Const, 2, OP.i32Shl, ...set(LDB4),
    ...get(LDA), OP.i32Const, 2, OP.i32Shl, ...set(LDA4),
    ...get(LDC), OP.i32Const, 2, OP.i32Shl, ...set(LDC4),
    ...get(ASTEP), OP.i32Const, 2, OP.i32Shl, ...set(ASTEP4),
    ...get(M), OP.i32Const, 4, 0x6b /* i32.sub */, ...set(IEND4),
    OP.i32Const, 0, ...set(I),
    // rows in blocks of four, then one at a time
    ...whileLe(I, IEND4, [
      ...rowPtr(CROW, C, I, LDC),
      ...rowPtr(AROW, A, I, LDA),
      OP.i32Const, 0, ...set(J),
      ...rowBlock4(2, fma),
      ...rowBlock4(1, fma),
      ...inc(I, 4),
    ]),
    ...whileLt(I, M, [
      ...rowPtr(CROW, C, I, LDC),
      ...rowPtr(AROW, A, I, LDA),
      OP.i32Const, 0, ...set(J),
      ...columnBlocks(4, fma),
      ...columnBlocks(2, fma),
      ...columnBlocks(1, fma),
      ...inc(I, 1),
    ]),
    OP.end,
  ];
  const locals = [2, GEMM_I32_LOCALS, 0x7f, GEMM_V128_LOCALS, 0x7b];
  const body = [...locals, ...code];
  return [...uleb(body.length), ...body];
}

/** v128.const of four equal float32 lanes. */
function f32x4Const(x: number): number[] {
  const b = new Uint8Array(new Float32Array([x, x, x, x]).buffer);
  return [...simd(SIMD.const), ...b];
}

/** Sum or max of the four lanes of the v128 in local `v`, as an f32 on the stack. */
function horizontal(v: number, op: number): number[] {
  const lane = (l: number) => [...get(v), ...simd(SIMD.f32x4ExtractLane), l];
  return [...lane(0), ...lane(1), op, ...lane(2), op, ...lane(3), op];
}

function body(locals: number[], code: number[]): number[] {
  const b = [...locals, ...code, OP.end];
  return [...uleb(b.length), ...b];
}

// rowMax(p, n4) → f32; locals: 2 j, 3 nbytes, 4 jend4, 5–8 acc (v128). Four accumulators: one
// chain of dependent maxes is latency-bound; max is exact, so the order does not change the result.
function rowMaxBody(): number[] {
  const [P, N4, Jm, NB, JEND4] = [0, 1, 2, 3, 4];
  const ACCS = [5, 6, 7, 8];
  const maxInto = (acc: number, offset: number) => [
    ...get(acc), ...get(P), ...get(Jm), OP.i32Add, ...simd(SIMD.load), ...memargAt(offset), ...simd(SIMD.f32x4Max), ...set(acc),
  ];
  return body([2, 3, 0x7f, 4, 0x7b], [
    ...get(N4), OP.i32Const, 2, OP.i32Shl, ...set(NB),
    ...get(NB), OP.i32Const, ...sleb(64), 0x6b /* i32.sub */, ...set(JEND4),
    ...ACCS.flatMap((a) => [...f32x4Const(-Infinity), ...set(a)]),
    ...whileLe(Jm, JEND4, [...ACCS.flatMap((a, k) => maxInto(a, 16 * k)), ...inc(Jm, 64)]),
    ...whileLt(Jm, NB, [...maxInto(ACCS[0], 0), ...inc(Jm, 16)]),
    ...get(ACCS[0]), ...get(ACCS[1]), ...simd(SIMD.f32x4Max), ...get(ACCS[2]), ...get(ACCS[3]), ...simd(SIMD.f32x4Max),
    ...simd(SIMD.f32x4Max), ...set(ACCS[0]),
    ...horizontal(ACCS[0], OP.f32Max),
  ]);
}

// expRow(p, n4, shift) → f32 sum. The constants are set once into locals. The loop takes two
// vectors at a time with their steps interleaved: each is a ~15-deep chain of dependent
// operations (the polynomial), so two chains side by side keep the vector units busier.
/**
 * 2^f on [−½, ½], lowest degree first: a least-squares fit of the relative error on Chebyshev nodes,
 * reweighted toward minimax (7.7e-8 in exact arithmetic, 2.2e-7 in float32 Horner steps).
 */
const EXP2_COEFFS = [
  1.0000000710494517, 0.6931469497215021, 0.24022121689657167, 0.055507416995369006, 0.009675462310652971,
  0.0013267266830141317,
];

function expRowBody(fused: boolean): number[] {
  const [P, N4, SHIFT, Je, NB, JEND2] = [0, 1, 2, 3, 4, 5];
  let next = 6;
  const v = () => next++;
  const ACCV = v();
  const SH = v();
  const coeffs = [...EXP2_COEFFS].reverse();
  // 1.5·2²³ + 127: adding it rounds y to the nearest integer n and leaves n + 127 in the low bits
  const consts = [Math.LOG2E, -127, 12583039, ...coeffs];
  const KC = consts.map(() => v());
  const [K_LOG2E, K_M127, K_MAGIC] = KC;
  const KP = KC.slice(3);
  // per-chain registers: y, y + magic, n, f, result
  const regs = [0, 1].map(() => ({ Y: v(), MN: v(), NV: v(), TV: v(), RV: v() }));
  const v128Locals = next - 6;
  const init: number[] = [];
  consts.forEach((c, i) => init.push(...f32x4Const(c), ...set(KC[i])));
  /** the vector steps for `lanes` chains (c = 0, 1), chain c at byte offset 16·c from P + J */
  const steps = (lanes: number): number[] => {
    const each = (f: (r: (typeof regs)[0], c: number) => number[]) => regs.slice(0, lanes).flatMap((r, c) => f(r, c));
    const out: number[] = [];
    // y = max((x − shift)·log2 e, −127)
    out.push(...each((r, c) => [
      ...get(P), ...get(Je), OP.i32Add, ...simd(SIMD.load), ...memargAt(16 * c), ...get(SH), ...simd(SIMD.f32x4Sub),
      ...get(K_LOG2E), ...simd(SIMD.f32x4Mul), ...get(K_M127), ...simd(SIMD.f32x4Max), ...set(r.Y),
    ]));
    // n = nearest(y) by adding the magic number (round to nearest even, as f32x4.nearest); the sum's
    // low bits then hold n + 127 too, which spares a slow float→int conversion. f = y − n
    out.push(...each((r) => [...get(r.Y), ...get(K_MAGIC), ...simd(SIMD.f32x4Add), ...set(r.MN)]));
    out.push(...each((r) => [...get(r.MN), ...get(K_MAGIC), ...simd(SIMD.f32x4Sub), ...set(r.NV)]));
    out.push(...each((r) => [...get(r.Y), ...get(r.NV), ...simd(SIMD.f32x4Sub), ...set(r.TV)]));
    // poly(f), Horner
    out.push(...each((r) => [...get(KP[0]), ...set(r.RV)]));
    // (with `fused`, one FMA per step: the Horner chain is most of the exp's dependent steps)
    for (const k of KP.slice(1)) out.push(...each((r) => [...madd(fused, get(k), get(r.RV), get(r.TV)), ...set(r.RV)]));
    // r = poly(f) · 2^n, 2^n = bits(y + magic) << 23 (n + 127 in the exponent field; the magic's
    // own bits shift out)
    out.push(...each((r, c) => [
      ...get(r.RV), ...get(r.MN), OP.i32Const, 23, ...simd(SIMD.i32x4Shl),
      ...simd(SIMD.f32x4Mul), ...set(r.RV),
      ...get(P), ...get(Je), OP.i32Add, ...get(r.RV), ...simd(SIMD.store), ...memargAt(16 * c),
      ...get(ACCV), ...get(r.RV), ...simd(SIMD.f32x4Add), ...set(ACCV),
    ]));
    return out;
  };
  return body([2, 3, 0x7f, v128Locals, 0x7b], [
    ...init,
    ...get(N4), OP.i32Const, 2, OP.i32Shl, ...set(NB),
    ...get(NB), OP.i32Const, 32, 0x6b /* i32.sub */, ...set(JEND2),
    ...f32x4Const(0), ...set(ACCV),
    ...get(SHIFT), ...simd(SIMD.f32x4Splat), ...set(SH),
    ...whileLe(Je, JEND2, [...steps(2), ...inc(Je, 32)]),
    ...whileLt(Je, NB, [...steps(1), ...inc(Je, 16)]),
    ...horizontal(ACCV, OP.f32Add),
  ]);
}

// scaleRow(p, n4, s); locals: 3 j, 4 nbytes, 5 s4 (v128)
function scaleRowBody(): number[] {
  const [P, N4, S, Js, NB, S4] = [0, 1, 2, 3, 4, 5];
  return body([2, 2, 0x7f, 1, 0x7b], [
    ...get(N4), OP.i32Const, 2, OP.i32Shl, ...set(NB),
    ...get(S), ...simd(SIMD.f32x4Splat), ...set(S4),
    ...whileLt(Js, NB, [
      ...get(P), ...get(Js), OP.i32Add,
      ...get(P), ...get(Js), OP.i32Add, ...simd(SIMD.load), ...memarg, ...get(S4), ...simd(SIMD.f32x4Mul),
      ...simd(SIMD.store), ...memarg,
      ...inc(Js, 16),
    ]),
  ]);
}

// softmaxGradRow(p, ds, n4, D); locals: 4 j, 5 nbytes, 6 D4 (v128)
function softmaxGradRowBody(): number[] {
  const [P, DS, N4, D, Jg, NB, D4] = [0, 1, 2, 3, 4, 5, 6];
  return body([2, 2, 0x7f, 1, 0x7b], [
    ...get(N4), OP.i32Const, 2, OP.i32Shl, ...set(NB),
    ...get(D), ...simd(SIMD.f32x4Splat), ...set(D4),
    ...whileLt(Jg, NB, [
      ...get(DS), ...get(Jg), OP.i32Add,
      ...get(P), ...get(Jg), OP.i32Add, ...simd(SIMD.load), ...memarg,
      ...get(DS), ...get(Jg), OP.i32Add, ...simd(SIMD.load), ...memarg, ...get(D4), ...simd(SIMD.f32x4Sub),
      ...simd(SIMD.f32x4Mul), ...simd(SIMD.store), ...memarg,
      ...inc(Jg, 16),
    ]),
  ]);
}

// The row loops of the softmax and its backward, so that a whole head's score rows cost one call
// from JS (per-row calls were a tenth of a small pair's pass). They call the row functions above.
const FN = { rowMax: 1, expRow: 2, scaleRow: 3, softmaxGradRow: 4 };
const call = (f: number) => [0x10, f];
const f32Const = (x: number) => [0x43, ...new Uint8Array(new Float32Array([x]).buffer)];
const f32Store = (offset: number) => [0x38, 2, ...uleb(offset)];
const f32LoadAt = (offset: number) => [0x2a, 2, ...uleb(offset)];

/** x[ns … ns4−1] = −1e30 in the row at local rp (pads get probability exactly 0). */
function fillPads(rp: number, ns: number, ns4: number, j: number): number[] {
  return [
    ...get(ns), ...set(j),
    ...whileLt(j, ns4, [
      ...get(rp), ...get(j), OP.i32Const, 2, OP.i32Shl, OP.i32Add, ...f32Const(-1e30), ...f32Store(0),
      ...inc(j, 1),
    ]),
  ];
}

// softmaxRows(p, rows, ns, ns4, stats): per row, pads, then max, exp(x − max) and its sum, x·(1/sum);
// stats[2i] = max, stats[2i + 1] = sum. locals: 5 i, 6 rp, 7 j, 8 max (f32), 9 sum (f32)
function softmaxRowsBody(): number[] {
  const [P, ROWS, NS, NS4, STATS, Ir, RP, Jr, MAX, SUM] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  return body([2, 3, 0x7f, 2, 0x7d], [
    ...get(P), ...set(RP),
    ...whileLt(Ir, ROWS, [
      ...fillPads(RP, NS, NS4, Jr),
      ...get(RP), ...get(NS4), ...call(FN.rowMax), ...set(MAX),
      ...get(RP), ...get(NS4), ...get(MAX), ...call(FN.expRow), ...set(SUM),
      ...get(RP), ...get(NS4), ...f32Const(1), ...get(SUM), 0x95 /* f32.div */, ...call(FN.scaleRow),
      ...get(STATS), ...get(Ir), OP.i32Const, 3, OP.i32Shl, OP.i32Add, ...get(MAX), ...f32Store(0),
      ...get(STATS), ...get(Ir), OP.i32Const, 3, OP.i32Shl, OP.i32Add, ...get(SUM), ...f32Store(4),
      ...get(RP), ...get(NS4), OP.i32Const, 2, OP.i32Shl, OP.i32Add, ...set(RP),
      ...inc(Ir, 1),
    ]),
  ]);
}

// expRows(p, rows, ns, ns4, shifts, stride): per row i, pads, then x ← exp(x − shifts[i·stride]).
// locals: 6 i, 7 rp, 8 j
function expRowsBody(): number[] {
  const [P, ROWS, NS, NS4, SHIFTS, STRIDE, Ir, RP, Jr] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  return body([1, 3, 0x7f], [
    ...get(P), ...set(RP),
    ...whileLt(Ir, ROWS, [
      ...fillPads(RP, NS, NS4, Jr),
      ...get(RP), ...get(NS4),
      ...get(SHIFTS), ...get(Ir), ...get(STRIDE), OP.i32Mul, OP.i32Const, 2, OP.i32Shl, OP.i32Add, ...f32LoadAt(0),
      ...call(FN.expRow), 0x1a /* drop the sum */,
      ...get(RP), ...get(NS4), OP.i32Const, 2, OP.i32Shl, OP.i32Add, ...set(RP),
      ...inc(Ir, 1),
    ]),
  ]);
}

// softmaxGradRows(p, ds, rows, ns4, D): per row i, ds ← p⊙(ds − D[i]). locals: 5 i, 6 off
function softmaxGradRowsBody(): number[] {
  const [P, DS, ROWS, NS4, DP, Ir, OFF] = [0, 1, 2, 3, 4, 5, 6];
  return body([1, 2, 0x7f], [
    ...whileLt(Ir, ROWS, [
      ...get(Ir), ...get(NS4), OP.i32Mul, OP.i32Const, 2, OP.i32Shl, ...set(OFF),
      ...get(P), ...get(OFF), OP.i32Add, ...get(DS), ...get(OFF), OP.i32Add, ...get(NS4),
      ...get(DP), ...get(Ir), OP.i32Const, 2, OP.i32Shl, OP.i32Add, ...f32LoadAt(0),
      ...call(FN.softmaxGradRow),
      ...inc(Ir, 1),
    ]),
  ]);
}

function moduleBytes(fma: boolean): Uint8Array {
  const I32 = 0x7f;
  const F32 = 0x7d;
  const type = section(1, [
    8,
    0x60, 11, ...new Array(11).fill(I32), 0, // gemm
    0x60, 2, I32, I32, 1, F32, // rowMax
    0x60, 3, I32, I32, F32, 1, F32, // expRow
    0x60, 3, I32, I32, F32, 0, // scaleRow
    0x60, 4, I32, I32, I32, F32, 0, // softmaxGradRow
    0x60, 5, I32, I32, I32, I32, I32, 0, // softmaxRows
    0x60, 6, I32, I32, I32, I32, I32, I32, 0, // expRows
    0x60, 5, I32, I32, I32, I32, I32, 0, // softmaxGradRows
  ]);
  const imports = section(2, [1, ...str('env'), ...str('mem'), 0x02, 0x00, 1]);
  const funcs = section(3, [8, 0, 1, 2, 3, 4, 5, 6, 7]);
  const exports = section(7, [
    8, ...str('gemm'), 0x00, 0, ...str('rowMax'), 0x00, 1, ...str('expRow'), 0x00, 2, ...str('scaleRow'), 0x00, 3,
    ...str('softmaxGradRow'), 0x00, 4, ...str('softmaxRows'), 0x00, 5, ...str('expRows'), 0x00, 6,
    ...str('softmaxGradRows'), 0x00, 7,
  ]);
  const code = section(10, [
    8, ...gemmBody(fma), ...rowMaxBody(), ...expRowBody(fma), ...scaleRowBody(), ...softmaxGradRowBody(),
    ...softmaxRowsBody(), ...expRowsBody(), ...softmaxGradRowsBody(),
  ]);
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, ...type, ...imports, ...funcs, ...exports, ...code]);
}

export type GemmFn = (m: number, n: number, k: number, a: number, lda: number, b: number, ldb: number, c: number, ldc: number, acc: number, aStep: number) => void;

/** The part of a WebAssembly.Memory used here (the project's TS lib has no WebAssembly types). */
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Memory: new (d: { initial: number }) => WasmMemory;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}

export interface SimdGemm {
  memory: WasmMemory;
  /** whether the gemm uses relaxed-SIMD fused multiply-adds (see createSimdGemm) */
  fused: boolean;
  gemm: GemmFn;
  rowMax: (p: number, n4: number) => number;
  expRow: (p: number, n4: number, shift: number) => number;
  scaleRow: (p: number, n4: number, s: number) => void;
  softmaxGradRow: (p: number, ds: number, n4: number, D: number) => void;
  softmaxRows: (p: number, rows: number, ns: number, ns4: number, stats: number) => void;
  expRows: (p: number, rows: number, ns: number, ns4: number, shifts: number, stride: number) => void;
  softmaxGradRows: (p: number, ds: number, rows: number, ns4: number, D: number) => void;
}

const compiled = new Map<boolean, object | null>();

/**
 * Whether the gemm uses relaxed-SIMD fused multiply-adds: by default yes (about 15 % off a large
 * pair's forward+backward+step, measured at 784×128 / 800×128), MERGENET_WASM_RELAXED_SIMD=0 turns
 * them off. Node 20's V8 has relaxed SIMD only behind --experimental-wasm-relaxed-simd, so the
 * fused module is used only when it validates (setting the flag at run time if needed) and passes
 * selfCheck; otherwise the plain module. FMA results differ from the plain module's in the last bits
 * (within the tests' 1e-5 against the tfjs reference); every thread of a process makes the same
 * choice, so the worker pool and the main thread still agree.
 */
function relaxedRequested(): boolean {
  const v = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.MERGENET_WASM_RELAXED_SIMD;
  return v !== '0' && v !== 'false';
}

let flagSet = false;
function enableRelaxedSimd(): void {
  if (flagSet) return;
  flagSet = true;
  try {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  } catch {
    // the fused module then fails validation and the plain one is used
  }
}

/**
 * The fused gemm against float64 sums on a fixed product that runs every block kind (4-row and
 * single rows, every column width), and the fused exp against Math.exp: an experimental V8 feature
 * must compute what it claims before it is used by default. Each product element within 1e-6 of its
 * sum of magnitudes (float32 rounding), each exp within 5e-6 relative (as tested for the plain one).
 */
function selfCheck(wasm: WasmApi, mod: object): boolean {
  try {
    const memory = new wasm.Memory({ initial: 1 });
    const g = new wasm.Instance(mod, { env: { mem: memory } }).exports.gemm as GemmFn;
    const f = new Float32Array(memory.buffer);
    const [m, n, k] = [7, 28, 9];
    const [ao, bo, co] = [0, 1024, 2048];
    for (let i = 0; i < m * k; i++) f[ao + i] = Math.sin(1 + 3 * i);
    for (let i = 0; i < k * n; i++) f[bo + i] = Math.cos(2 + 5 * i);
    g(m, n, k, 4 * ao, k, 4 * bo, n, 4 * co, n, 0, 1);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        let mag = 0;
        for (let t = 0; t < k; t++) {
          const p = f[ao + i * k + t] * f[bo + t * n + j];
          s += p;
          mag += Math.abs(p);
        }
        if (!(Math.abs(f[co + i * n + j] - s) <= 1e-6 * mag)) return false;
      }
    }
    // and the exp (its polynomial uses the same fused multiply-adds)
    const expRow = new wasm.Instance(mod, { env: { mem: memory } }).exports.expRow as (p: number, n4: number, shift: number) => number;
    for (let i = 0; i < 36; i++) f[i] = 0.7 * i - 20;
    expRow(0, 36, 1);
    for (let i = 0; i < 36; i++) {
      const e = Math.exp(0.7 * i - 21);
      if (!(Math.abs(f[i] - e) <= 5e-6 * e)) return false;
    }
    return true;
  } catch {
    return false;
  }
}

function compile(wasm: WasmApi, fma: boolean): object | null {
  if (!compiled.has(fma)) {
    const bytes = moduleBytes(fma);
    // validate first: a thread started after another set the (process-wide) flag need not set it again
    let ok = wasm.validate(bytes);
    if (!ok && fma) {
      enableRelaxedSimd();
      ok = wasm.validate(bytes);
    }
    let mod = ok ? new wasm.Module(bytes) : null;
    if (mod !== null && fma && !selfCheck(wasm, mod)) mod = null;
    compiled.set(fma, mod);
  }
  return compiled.get(fma)!;
}

/**
 * A gemm instance on a fresh memory, or null where WebAssembly SIMD is unavailable. `fma` overrides
 * the MERGENET_WASM_RELAXED_SIMD choice (tests); `fused` in the result says what was built.
 */
export function createSimdGemm(initialPages = 16, fma = relaxedRequested()): SimdGemm | null {
  const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (!wasm) return null;
  let mod = fma ? compile(wasm, true) : null;
  const fused = mod !== null;
  mod ??= compile(wasm, false);
  if (mod === null) return null;
  const memory = new wasm.Memory({ initial: initialPages });
  const instance = new wasm.Instance(mod, { env: { mem: memory } });
  const e = instance.exports as unknown as Omit<SimdGemm, 'memory' | 'fused'>;
  return {
    memory, fused, gemm: e.gemm, rowMax: e.rowMax, expRow: e.expRow, scaleRow: e.scaleRow, softmaxGradRow: e.softmaxGradRow,
    softmaxRows: e.softmaxRows, expRows: e.expRows, softmaxGradRows: e.softmaxGradRows,
  };
}
