// The float32 products of a device's MergeNet work (the slice's products with W, the knowledge
// branch's A′B′ − AB, the feedback's G·B′ᵀ and A′ᵀ·G) on plain arrays, through a WebAssembly SIMD
// gemm, instead of tfjs ops: on the wasm backend each op costs ~50–100 µs of dispatch and every
// read-back another copy, which made up most of a device's per-cycle overhead on a 784×64 slot
// (docs/DESIGN.md §2). The operands are small enough (a slot, a few dozen columns) that one read of
// W and a few thin products in one arena beat a chain of backend calls several times over.
//
// The slot-sized elementwise passes (norms, differences, scalings) run in simd-vec.ts's kernels on
// the same memory: in V8 a plain loop over a 784×64 Float32Array costs ~0.1 ms a pass.
//
// The gemm is the adapter's (shared/math/simd-gemm.ts). That module imports node:v8 (to
// enable relaxed SIMD), which the isomorphic device core must not reach, so it is not imported
// here: a Node entry registers it through setDeviceGemm (shared/tf/backend.ts does, on import).
// Without a registered gemm (the browser bundle, or setDeviceGemm(null)), every caller takes its
// tfjs path, which computes the same quantities in the same float32 precision.

/** gemm(M, N, K, A, lda, B, ldb, C, ldc, acc, aStep) of simd-gemm.ts: byte offsets, N % 4 = 0. */
export type GemmFn = (m: number, n: number, k: number, a: number, lda: number, b: number, ldb: number, c: number, ldc: number, acc: number, aStep: number) => void;

/** The part of simd-gemm.ts's SimdGemm used here. */
export interface GemmModule {
  memory: { readonly buffer: ArrayBuffer; grow(pages: number): number };
  gemm: GemmFn;
}

import * as tf from '@tensorflow/tfjs';
import { createSimdVec, type SimdVec } from './simd-vec.js';

const PAGE_BYTES = 65536;
/** The memory's first 16 bytes are the arena's own scratch; callers' float offsets start after it. */
const BASE = 16;
/** Byte address of float offset `off`. */
const at = (off: number) => BASE + 4 * off;

/**
 * One growable float32 arena in the gemm's memory. A caller reserves what one call needs, lays its
 * buffers out by float offset, and must not keep views across calls (growing replaces the buffer).
 * Single-threaded and synchronous: no caller holds it while another runs.
 */
export class GemmArena {
  private f32View: Float32Array;
  private f64View: Float64Array;
  /** the scratch bytes before BASE, as floats */
  private scratch: Float32Array;

  constructor(private readonly mod: GemmModule, private readonly vec: SimdVec) {
    this.f32View = new Float32Array(mod.memory.buffer, BASE);
    this.f64View = new Float64Array(mod.memory.buffer, BASE);
    this.scratch = new Float32Array(mod.memory.buffer, 0, BASE / 4);
  }

  /**
   * The arena as float64 (index d is float offset 2d): valid, like reserve's view, until the next
   * reserve that grows the memory.
   */
  get f64(): Float64Array {
    return this.f64View;
  }

  /**
   * C[m, n] = A[m, k]·B[k, n] in float64, offsets in doubles (as f64's indices), A[i, p] at
   * a + i·lda + p·aStep. n must be even.
   */
  gemm64(m: number, n: number, k: number, a: number, lda: number, aStep: number, b: number, ldb: number, c: number, ldc: number): void {
    this.vec.gemm64(m, n, k, BASE + 8 * a, lda, aStep, BASE + 8 * b, ldb, BASE + 8 * c, ldc);
  }

  /** The arena as float32, at least `floats` long. Views taken before this call may be stale. */
  reserve(floats: number): Float32Array {
    const bytes = BASE + floats * 4;
    const have = this.mod.memory.buffer.byteLength;
    if (bytes > have) this.mod.memory.grow(Math.ceil((bytes - have) / PAGE_BYTES));
    if (this.f32View.buffer !== this.mod.memory.buffer) {
      this.f32View = new Float32Array(this.mod.memory.buffer, BASE);
      this.f64View = new Float64Array(this.mod.memory.buffer, BASE);
      this.scratch = new Float32Array(this.mod.memory.buffer, 0, BASE / 4);
    }
    return this.f32View;
  }

  /**
   * C[m, n] = A[m, k]·B[k, n] (with `acc`, C += A·B, continuing each entry's float32 sum), offsets
   * in floats: A[i, p] at a + i·lda + p·aStep (aStep 1 and lda = row length for row-major A; lda 1
   * and aStep = m's row length to read a row-major k×m matrix transposed), B row-major with row
   * length ldb, C with ldc. n must be a multiple of 4.
   */
  gemm(m: number, n: number, k: number, a: number, lda: number, aStep: number, b: number, ldb: number, c: number, ldc: number, acc = false): void {
    this.mod.gemm(m, n, k, at(a), lda, at(b), ldb, at(c), ldc, acc ? 1 : 0, aStep);
  }

  // Elementwise passes over n floats at float offsets: the kernels take whole blocks of 4 (8 for
  // the reductions), the rest is done here (Float32Array stores round as the float32 ops would).

  /** Σ x² in float64 (non-finite if any x is). */
  sumSq(p: number, n: number): number {
    const n8 = n & ~7;
    let s = this.vec.sumSq(at(p), n8);
    for (let i = n8; i < n; i++) s += this.f32View[p + i] * this.f32View[p + i];
    return s;
  }

  /** Σ fround(a − b)² in float64, without storing the differences. */
  diffSumSq(a: number, b: number, n: number): number {
    const n8 = n & ~7;
    let s = this.vec.diffSumSq(at(a), at(b), n8);
    for (let i = n8; i < n; i++) {
      const d = Math.fround(this.f32View[a + i] - this.f32View[b + i]);
      s += d * d;
    }
    return s;
  }

  /** [Σ x², max |x|] in one pass; both NaN if any x is NaN, the sum ±Infinity if any is infinite. */
  sumSqMaxAbs(p: number, n: number): [number, number] {
    const n8 = n & ~7;
    let s = this.vec.sumSqMax(at(p), n8, 0);
    let mx = n8 > 0 ? this.scratch[0] : 0;
    for (let i = n8; i < n; i++) {
      const x = this.f32View[p + i];
      s += x * x;
      if (Math.abs(x) > mx) mx = Math.abs(x);
    }
    return Number.isNaN(s) ? [NaN, NaN] : [s, mx];
  }

  /**
   * rows×cols floats from `src` (row length srcLd) to `dst` (row length dstLd), float offsets; the
   * kernel moves whole vectors of 4, the rest of each row is moved here.
   */
  copyRows(src: number, srcLd: number, dst: number, dstLd: number, rows: number, cols: number): void {
    const c4 = cols & ~3;
    if (c4 > 0) this.vec.copyRows(at(src), 4 * srcLd, at(dst), 4 * dstLd, rows, 4 * c4);
    if (c4 < cols) {
      const f = this.f32View;
      for (let i = 0; i < rows; i++) for (let j = c4; j < cols; j++) f[dst + i * dstLd + j] = f[src + i * srcLd + j];
    }
  }

  /** c = a − b */
  sub(a: number, b: number, c: number, n: number): void {
    const n4 = n & ~3;
    this.vec.sub(at(a), at(b), at(c), n4);
    const f = this.f32View;
    for (let i = n4; i < n; i++) f[c + i] = f[a + i] - f[b + i];
  }

  /** c = a + b */
  add(a: number, b: number, c: number, n: number): void {
    const n4 = n & ~3;
    this.vec.add(at(a), at(b), at(c), n4);
    const f = this.f32View;
    for (let i = n4; i < n; i++) f[c + i] = f[a + i] + f[b + i];
  }

  /** c = a·s, s rounded to float32 first (as tf.scalar(s) is) */
  scale(a: number, s: number, c: number, n: number): void {
    const n4 = n & ~3;
    const s32 = Math.fround(s);
    this.vec.scale(at(a), s32, at(c), n4);
    const f = this.f32View;
    for (let i = n4; i < n; i++) f[c + i] = f[a + i] * s32;
  }

  /** c = k + (x − y) */
  addSub(k: number, x: number, y: number, c: number, n: number): void {
    const n4 = n & ~3;
    this.vec.addSub(at(k), at(x), at(y), at(c), n4);
    const f = this.f32View;
    for (let i = n4; i < n; i++) f[c + i] = f[k + i] + Math.fround(f[x + i] - f[y + i]);
  }
}

/** n rounded up to a multiple of 4 (the gemm's column blocks). */
export function pad4(n: number): number {
  return (n + 3) & ~3;
}

let factory: (() => GemmModule | null) | null = null;
/** One arena per factory: switching back and forth (tests, benchmarks) does not rebuild it. */
const arenas = new WeakMap<() => GemmModule | null, GemmArena | null>();

/**
 * Register the gemm the device's plain-array paths use (null: none, every caller takes its tfjs
 * path). The module is created on first use. Returns the previous factory (tests switch paths).
 */
export function setDeviceGemm(f: (() => GemmModule | null) | null): (() => GemmModule | null) | null {
  const prev = factory;
  factory = f;
  return prev;
}

/** The arena of the registered gemm, or null when there is none (or it cannot be built here). */
export function deviceArena(): GemmArena | null {
  if (!factory) return null;
  let arena = arenas.get(factory);
  if (arena === undefined) {
    const mod = factory();
    const vec = mod ? createSimdVec(mod.memory) : null;
    arena = mod && vec ? new GemmArena(mod, vec) : null;
    arenas.set(factory, arena);
  }
  return arena;
}

/**
 * A float32 tensor of the values in `view` (a view into the arena). The wasm backend copies a
 * tensor's values into its own heap when it makes it, so the view is handed over as is; other
 * backends (cpu, webgl) may keep the array itself, which the arena will overwrite, so they get a copy.
 */
export function tensorFromArena<R extends tf.Rank>(view: Float32Array, shape: tf.ShapeMap[R]): tf.Tensor<R> {
  return tf.tensor(tf.getBackend() === 'wasm' ? view : view.slice(), shape, 'float32') as tf.Tensor<R>;
}

/** What readFloat32Into uses of tfjs-backend-wasm's BackendWasm (as its own readSync does). */
interface WasmBackendView {
  dataIdMap?: { has(dataId: object): boolean; get(dataId: object): { memoryOffset?: number | null; dtype?: string } | undefined };
  wasm?: { HEAPF32?: Float32Array };
}

/**
 * Copy a float32 tensor's values into `dst` from index `off`. On the wasm backend straight from its
 * heap, which is what its readSync does before it copies them once more into a fresh array: that
 * array is the cost, 20–150 µs for a 784×64 slot depending on the allocator's state (a tenth of a
 * device's cycle), where this copy takes a few. BackendWasm's fields are checked before use;
 * anything unexpected (another backend, data not on this one, another dtype) reads by dataSync.
 */
export function readFloat32Into(t: tf.Tensor, dst: Float32Array, off: number): void {
  if (t.dtype === 'float32' && tf.getBackend() === 'wasm') {
    const b = tf.backend() as unknown as WasmBackendView;
    const heap = b.wasm?.HEAPF32;
    if (heap && b.dataIdMap?.has(t.dataId)) {
      const info = b.dataIdMap.get(t.dataId);
      const at = info?.memoryOffset;
      if (info?.dtype === 'float32' && typeof at === 'number' && at % 4 === 0 && at / 4 + t.size <= heap.length) {
        dst.set(heap.subarray(at / 4, at / 4 + t.size), off);
        return;
      }
    }
  }
  dst.set(t.dataSync() as Float32Array, off);
}
