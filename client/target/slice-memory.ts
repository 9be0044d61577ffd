// The slices this device sent, by sliceId, so a `transfer` can be applied against exactly the
// A·B it was computed from (docs/DESIGN.md §9). A few recent ones per slot; older ones are freed.
import { disposeLowRank, type LowRank } from '../../shared/math/low-rank.js';

export interface RememberedSlice {
  sliceId: number;
  slot: string;
  rank: number;
  /** local step at which the slice was taken */
  step: number;
  /** A (m×r), B (r×n): owned by the memory until evicted or disposed */
  factors: LowRank;
}

export interface SliceMemoryLimits {
  /** Most slices kept per slot (default 256). */
  maxPerSlot?: number;
  /** Most bytes of factors kept in all (default 256 MiB). */
  maxBytes?: number;
}

/**
 * The slices a transfer may still refer to. The device releases a slot's slices older than the
 * ones its pairs' latest transfers used (the coordinator only ever answers a newer slice), so in
 * steady state only a few are held; the limits bound memory when the coordinator is slow, at the
 * price of a transfer for an evicted slice being ignored.
 */
export class SliceMemory {
  private readonly bySlot = new Map<string, RememberedSlice[]>();
  private readonly byId = new Map<number, RememberedSlice>();
  private bytes = 0;
  readonly maxPerSlot: number;
  readonly maxBytes: number;
  /** slices dropped by the limits (not by release) */
  evicted = 0;

  constructor(limits: SliceMemoryLimits = {}) {
    this.maxPerSlot = limits.maxPerSlot ?? 256;
    this.maxBytes = limits.maxBytes ?? 256 * 1024 * 1024;
    if (!Number.isInteger(this.maxPerSlot) || this.maxPerSlot < 1) throw new Error(`maxPerSlot must be an integer ≥ 1, got ${this.maxPerSlot}`);
    if (!(this.maxBytes > 0)) throw new Error(`maxBytes must be > 0, got ${this.maxBytes}`);
  }

  private static bytesOf(s: RememberedSlice): number {
    return 4 * (s.factors.A.size + s.factors.B.size);
  }

  /** Takes ownership of `s.factors`; evicts (and frees) the oldest slices beyond the limits. */
  remember(s: RememberedSlice): void {
    if (this.byId.has(s.sliceId)) throw new Error(`slice ${s.sliceId} is already remembered`);
    const list = this.bySlot.get(s.slot) ?? [];
    list.push(s);
    this.bySlot.set(s.slot, list);
    this.byId.set(s.sliceId, s);
    this.bytes += SliceMemory.bytesOf(s);
    while (list.length > this.maxPerSlot) this.drop(list.shift()!, true);
    while (this.bytes > this.maxBytes && this.byId.size > 1) {
      // The globally oldest slice goes first (ids increase).
      const oldest = Math.min(...this.byId.keys());
      const o = this.byId.get(oldest)!;
      const l = this.bySlot.get(o.slot)!;
      l.splice(l.indexOf(o), 1);
      this.drop(o, true);
    }
  }

  private drop(s: RememberedSlice, evicted: boolean): void {
    this.byId.delete(s.sliceId);
    this.bytes -= SliceMemory.bytesOf(s);
    disposeLowRank(s.factors);
    if (evicted) this.evicted += 1;
  }

  /** The slice, still owned by the memory (do not dispose), or undefined if unknown or freed. */
  get(sliceId: number): RememberedSlice | undefined {
    return this.byId.get(sliceId);
  }

  /** Free the slices of `slot` with an id below `beforeSliceId`. Returns how many. */
  release(slot: string, beforeSliceId: number): number {
    const list = this.bySlot.get(slot);
    if (!list) return 0;
    let n = 0;
    while (list.length > 0 && list[0].sliceId < beforeSliceId) {
      this.drop(list.shift()!, false);
      n += 1;
    }
    return n;
  }

  get size(): number {
    return this.byId.size;
  }

  get byteSize(): number {
    return this.bytes;
  }

  /** Free everything (e.g. at the end of a session: its transfers can no longer arrive). */
  clear(): void {
    for (const s of this.byId.values()) disposeLowRank(s.factors);
    this.byId.clear();
    this.bySlot.clear();
    this.bytes = 0;
  }

  dispose(): void {
    this.clear();
  }
}
