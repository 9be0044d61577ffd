// A pair's trust-gate trace (g after each update, and the evidence it read) for reports and
// /status, in columns of preallocated typed arrays. As one object per update it was ~100 bytes a
// point on the heap, grew through the first `capacity` updates of every pair (500 pairs × 512
// points took ~25 MB, over ~10 minutes of a fleet's run), and each status snapshot copied it; here
// a pair holds one fixed block from its start, and memory stays flat.
import type { GateTracePoint } from './trust-gate.js';

export const GATE_TRACE_CAPACITY = 512;

export class GateTrace {
  private readonly update: Float64Array;
  private readonly gate: Float64Array;
  /** NaN where the point has no such value */
  private readonly gateGrad: Float64Array;
  private readonly sourceGrad: Float64Array;
  private readonly trainAcc: Float64Array;
  /** 1 beat, 0 did not, -1 absent */
  private readonly beatShadows: Int8Array;
  private n = 0;

  constructor(readonly capacity = GATE_TRACE_CAPACITY) {
    if (!Number.isInteger(capacity) || capacity < 2) throw new Error(`gate trace: capacity must be an integer ≥ 2, got ${capacity}`);
    this.update = new Float64Array(capacity);
    this.gate = new Float64Array(capacity);
    this.gateGrad = new Float64Array(capacity);
    this.sourceGrad = new Float64Array(capacity);
    this.trainAcc = new Float64Array(capacity);
    this.beatShadows = new Int8Array(capacity);
  }

  get length(): number {
    return this.n;
  }

  /** Record a point; when full, every other point is dropped first (halve the resolution rather than forget the start, where the decision lives). */
  push(p: GateTracePoint): void {
    if (this.n === this.capacity) this.thin();
    const i = this.n++;
    this.update[i] = p.update;
    this.gate[i] = p.gate;
    this.gateGrad[i] = p.gateGrad ?? NaN;
    this.sourceGrad[i] = p.sourceGrad ?? NaN;
    this.trainAcc[i] = p.trainAcc ?? NaN;
    this.beatShadows[i] = p.beatShadows === undefined ? -1 : p.beatShadows ? 1 : 0;
  }

  /** The points, oldest first, as fresh objects (absent values left out). */
  points(): GateTracePoint[] {
    const out: GateTracePoint[] = new Array(this.n);
    for (let i = 0; i < this.n; i++) {
      const p: GateTracePoint = { update: this.update[i], gate: this.gate[i] };
      if (!Number.isNaN(this.gateGrad[i])) p.gateGrad = this.gateGrad[i];
      if (!Number.isNaN(this.sourceGrad[i])) p.sourceGrad = this.sourceGrad[i];
      if (!Number.isNaN(this.trainAcc[i])) p.trainAcc = this.trainAcc[i];
      if (this.beatShadows[i] !== -1) p.beatShadows = this.beatShadows[i] === 1;
      out[i] = p;
    }
    return out;
  }

  /** Keep the points at even indices. */
  private thin(): void {
    let w = 0;
    for (let i = 0; i < this.n; i += 2, w++) {
      this.update[w] = this.update[i];
      this.gate[w] = this.gate[i];
      this.gateGrad[w] = this.gateGrad[i];
      this.sourceGrad[w] = this.sourceGrad[i];
      this.trainAcc[w] = this.trainAcc[i];
      this.beatShadows[w] = this.beatShadows[i];
    }
    this.n = w;
  }
}
