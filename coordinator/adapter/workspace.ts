// Scratch memory for the adapter kernels: a bump allocator of float32 blocks and one of float64
// blocks, reset at the start of every forward or VJP. One workspace per thread is shared by every
// adapter in it (the kernels are synchronous), so scratch memory is bounded by the largest pair,
// not by the number of pairs, and steady-state cycles allocate nothing.
//
// Where WebAssembly SIMD is available, the float32 blocks live in the memory of the SIMD gemm
// (simd-gemm.ts), so that the attention products can run on them in place. Growing a
// WebAssembly.Memory detaches every view of it, so a pass that runs out of room is abandoned
// (WorkspaceOverflow), the memory grows, and `run` starts the pass again; this happens only the
// first time a larger pair is seen.
import { createSimdGemm, type SimdGemm } from './simd-gemm.js';

/** Thrown by Workspace.f32 when the wasm memory is too small; `run` catches it. */
export class WorkspaceOverflow extends Error {
  constructor(readonly neededFloats: number) {
    super(`adapter workspace needs ${neededFloats} floats`);
    this.name = 'WorkspaceOverflow';
  }
}

const PAGE_FLOATS = 65536 / 4;

export class Workspace {
  /** The SIMD gemm whose memory holds the float32 blocks, or null (plain arrays, JS kernels only). */
  readonly simd: SimdGemm | null;
  private buf32: Float32Array;
  private used32 = 0;
  private buf64 = new Float64Array(1 << 14);
  private used64 = 0;

  constructor(options: { simd?: boolean } = {}) {
    this.simd = options.simd === false ? null : createSimdGemm();
    this.buf32 = this.simd ? new Float32Array(this.simd.memory.buffer) : new Float32Array(1 << 14);
  }

  /** Run one pass with a fresh workspace, growing it and starting over if it ran out of room. */
  run<T>(pass: () => T): T {
    for (;;) {
      this.reset();
      try {
        return pass();
      } catch (err) {
        if (!(err instanceof WorkspaceOverflow)) throw err;
        this.grow32(Math.max(2 * this.buf32.length, err.neededFloats));
      }
    }
  }

  /** Forget every block handed out; blocks from before must not be used afterwards. */
  reset(): void {
    this.used32 = 0;
    this.used64 = 0;
  }

  /**
   * A float32 block of n elements, 16-byte aligned; zeroed only when asked (most blocks are fully
   * overwritten).
   */
  f32(n: number, zero = false): Float32Array {
    const size = (n + 3) & ~3;
    if (this.used32 + size > this.buf32.length) {
      if (this.simd) throw new WorkspaceOverflow(this.used32 + size);
      // Plain arrays: blocks already handed out stay valid (they view the old buffer).
      this.buf32 = new Float32Array(Math.max(2 * this.buf32.length, this.used32 + size));
      this.used32 = 0;
    }
    const out = this.buf32.subarray(this.used32, this.used32 + n);
    this.used32 += size;
    if (zero) out.fill(0);
    return out;
  }

  /** A float64 block of n elements (gradient accumulators), zeroed only when asked. */
  f64(n: number, zero = false): Float64Array {
    if (this.used64 + n > this.buf64.length) {
      this.buf64 = new Float64Array(Math.max(2 * this.buf64.length, this.used64 + n));
      this.used64 = 0;
    }
    const out = this.buf64.subarray(this.used64, this.used64 + n);
    this.used64 += n;
    if (zero) out.fill(0);
    return out;
  }

  private grow32(floats: number): void {
    if (!this.simd) return;
    const pages = Math.ceil(floats / PAGE_FLOATS) - this.simd.memory.buffer.byteLength / 65536;
    if (pages > 0) this.simd.memory.grow(pages);
    this.buf32 = new Float32Array(this.simd.memory.buffer);
  }

  /** Bytes held, for diagnostics. */
  get bytes(): number {
    return this.buf32.byteLength + this.buf64.byteLength;
  }
}

/** The workspace of this thread (main thread or worker). */
export const sharedWorkspace = new Workspace();
