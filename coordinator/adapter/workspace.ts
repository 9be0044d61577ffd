// Scratch memory for the adapter kernels: a bump allocator over one Float32Array and one
// Float64Array, reset at the start of every forward or VJP. One workspace per thread is shared by
// every adapter in it (the kernels are synchronous), so scratch memory is bounded by the largest
// pair, not by the number of pairs, and steady-state cycles allocate nothing.

export class Workspace {
  private buf32 = new Float32Array(1 << 14);
  private used32 = 0;
  private buf64 = new Float64Array(1 << 14);
  private used64 = 0;

  /** Forget every block handed out; blocks from before must not be used afterwards. */
  reset(): void {
    this.used32 = 0;
    this.used64 = 0;
  }

  /** A float32 block of n elements; zeroed only when asked (most blocks are fully overwritten). */
  f32(n: number, zero = false): Float32Array {
    if (this.used32 + n > this.buf32.length) {
      // Blocks already handed out stay valid (they view the old buffer); the next reset starts in a
      // buffer big enough for everything this call sequence needed.
      this.buf32 = new Float32Array(Math.max(2 * this.buf32.length, this.used32 + n));
      this.used32 = 0;
    }
    const out = this.buf32.subarray(this.used32, this.used32 + n);
    this.used32 += n;
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

  /** Bytes held, for diagnostics. */
  get bytes(): number {
    return this.buf32.byteLength + this.buf64.byteLength;
  }
}

/** The workspace of this thread (main thread or worker). */
export const sharedWorkspace = new Workspace();
