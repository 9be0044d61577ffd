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
import { createSimdGemm, type SimdGemm } from '../../shared/math/simd-gemm.js';

/** Thrown by Workspace.f32 when the wasm memory is too small; `run` catches it. */
export class WorkspaceOverflow extends Error {
  constructor(readonly neededFloats: number) {
    super(`adapter workspace needs ${neededFloats} floats`);
    this.name = 'WorkspaceOverflow';
  }
}

const PAGE_FLOATS = 65536 / 4;

/**
 * A copy of the blocks handed out since the last reset (Workspace.snapshot), with the buffers they
 * were copied from: restoring puts the same values back at the same offsets, so views made before
 * the snapshot (e.g. a forward pass's tape) read them again.
 */
export interface WorkspaceSnapshot {
  readonly buf32: Float32Array;
  readonly f32: Float32Array;
  readonly buf64: Float64Array;
  readonly f64: Float64Array;
}

export class Workspace {
  /** The SIMD gemm whose memory holds the float32 blocks, or null (plain arrays, JS kernels only). */
  readonly simd: SimdGemm | null;
  private buf32: Float32Array;
  private used32 = 0;
  private buf64 = new Float64Array(1 << 14);
  private used64 = 0;
  /** A buffer was replaced since the last reset: earlier blocks are elsewhere, no snapshot. */
  private spilled = false;
  /** floats handed out since the last reset, spills included: the size a pass needs */
  private total32 = 0;
  private total64 = 0;

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
    // After a spill, one buffer of the whole pass's size, so the next pass stays in it (and can
    // be snapshot).
    if (this.spilled) {
      if (!this.simd && this.total32 > this.buf32.length) this.buf32 = new Float32Array(this.total32);
      if (this.total64 > this.buf64.length) this.buf64 = new Float64Array(this.total64);
    }
    this.total32 = 0;
    this.total64 = 0;
    this.used32 = 0;
    this.used64 = 0;
    this.spilled = false;
  }

  /**
   * Copy out every block handed out since the last reset, or null when they take more than
   * maxBytes or do not all live in the current buffers.
   */
  snapshot(maxBytes: number): WorkspaceSnapshot | null {
    if (this.spilled || 4 * this.used32 + 8 * this.used64 > maxBytes) return null;
    return { buf32: this.buf32, f32: this.buf32.slice(0, this.used32), buf64: this.buf64, f64: this.buf64.slice(0, this.used64) };
  }

  /**
   * Reset, then put a snapshot's blocks back where they were; false (and nothing restored) when a
   * buffer has been replaced since (a grown wasm memory detaches the old views).
   */
  restore(snap: WorkspaceSnapshot): boolean {
    if (snap.buf32 !== this.buf32 || snap.buf64 !== this.buf64 || this.buf32.length === 0) return false;
    this.reset();
    this.buf32.set(snap.f32);
    this.buf64.set(snap.f64);
    this.used32 = snap.f32.length;
    this.used64 = snap.f64.length;
    return true;
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
      this.spilled = true;
    }
    const out = this.buf32.subarray(this.used32, this.used32 + n);
    this.used32 += size;
    this.total32 += size;
    if (zero) out.fill(0);
    return out;
  }

  /** A float64 block of n elements (gradient accumulators), zeroed only when asked. */
  f64(n: number, zero = false): Float64Array {
    if (this.used64 + n > this.buf64.length) {
      this.buf64 = new Float64Array(Math.max(2 * this.buf64.length, this.used64 + n));
      this.used64 = 0;
      this.spilled = true;
    }
    const out = this.buf64.subarray(this.used64, this.used64 + n);
    this.used64 += n;
    this.total64 += n;
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
