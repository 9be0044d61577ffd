// The device's side of its pairs' cycles (docs/DESIGN.md §9), kept apart from the socket so it can be
// reasoned about alone:
// - SliceMemory: the slices this device sent, by sliceId, so a `transfer` can be applied against
//   exactly the A·B it was computed from (a few recent ones per slot; older ones are freed).
// - SliceSchedule: which (slot, rank) slices are due at a step, every tCycle steps per pair, one
//   slice for all pairs that share a slot and rank.
// - FeedbackWindows: the k-step windows that follow each applied transfer. G must be the sum of
//   the per-step gradients over exactly that pair's window, and two pairs on one target slot can
//   have overlapping windows. The Trainer keeps one running sum per layer; it is flushed into every
//   open window of the layer whenever a window of that layer opens or closes, so each window gets
//   exactly the steps it spanned, at a cost proportional to window events, not to steps.
import * as tf from '@tensorflow/tfjs';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import type { PlanPair } from '../shared/protocol/messages.js';

// ---------------------------------------------------------------------------------------------
// Slices sent

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

// ---------------------------------------------------------------------------------------------
// When slices are due

export interface DueSlice {
  slot: string;
  /** the largest rank of any pair on the slot: one slice serves them all (the coordinator keeps the
   *  first r columns of A and rows of B for a pair of rank r) */
  rank: number;
  /** pairs whose cycle this slice is due for */
  pairIds: string[];
}

export class SliceSchedule {
  /** pairId → first step at which its next slice is due */
  private next = new Map<string, number>();
  private pairs: PlanPair[] = [];
  private slotRank = new Map<string, number>();

  /**
   * Adopt a plan's pairs at local step `step`. Pairs new to the schedule are due at once (a fresh
   * session needs fresh slices); pairs that persist with the same slot, rank and tCycle keep
   * their phase when `keepPhase` (a plan update within one session).
   */
  setPlan(pairs: readonly PlanPair[], step: number, keepPhase: boolean): void {
    const old = new Map(this.pairs.map((p) => [p.pairId, p]));
    const next = new Map<string, number>();
    const slotRank = new Map<string, number>();
    for (const p of pairs) {
      const prev = old.get(p.pairId);
      const same = prev && prev.slot === p.slot && prev.rank === p.rank && prev.tCycle === p.tCycle;
      next.set(p.pairId, keepPhase && same ? (this.next.get(p.pairId) ?? step) : step);
      slotRank.set(p.slot, Math.max(slotRank.get(p.slot) ?? 0, p.rank));
    }
    this.pairs = [...pairs];
    this.next = next;
    this.slotRank = slotRank;
  }

  clear(): void {
    this.pairs = [];
    this.next.clear();
    this.slotRank.clear();
  }

  /** The rank slices of `slot` are sent at (undefined if no pair uses the slot). */
  rankOf(slot: string): number | undefined {
    return this.slotRank.get(slot);
  }

  /**
   * The slices due at `step` (the step about to be reported to the coordinator), one per slot,
   * and advance each due pair by its tCycle.
   */
  due(step: number): DueSlice[] {
    const out = new Map<string, DueSlice>();
    for (const p of this.pairs) {
      const at = this.next.get(p.pairId) ?? step;
      if (step < at) continue;
      this.next.set(p.pairId, step + p.tCycle);
      const d = out.get(p.slot);
      if (d) d.pairIds.push(p.pairId);
      else out.set(p.slot, { slot: p.slot, rank: this.slotRank.get(p.slot)!, pairIds: [p.pairId] });
    }
    return [...out.values()];
  }
}

// ---------------------------------------------------------------------------------------------
// Feedback windows

/** What the windows need from the Trainer (client/trainer.ts implements it). */
export interface GradientAccumulator {
  startAccumulating(layer: string): void;
  takeAccumulated(layer: string): { G: tf.Tensor2D; steps: number };
  stopAccumulating(layer: string): void;
}

export interface WindowSpec {
  pairId: string;
  cycleId: number;
  /** the plan session the transfer arrived in; feedback is only ever sent in that session */
  session: string;
  layer: string;
  /** A′ (m×r), B′ (r×n): owned by the window from now on */
  generated: LowRank;
  /** the cap factor s applied to this pair's branch */
  scale: number;
  /** the trust gate g the branch was built with (K = s·g·D) */
  gate: number;
  /** D = A′B′ − AB of the branch, owned by the window: the gate's gradient is s·⟨G, D⟩ */
  delta?: tf.Tensor2D;
  /** ‖K‖/‖W‖ of the branch, reported with the feedback */
  branchRatio?: number;
  /** steps to train before the feedback is due */
  k: number;
  /** local step at which the window opened */
  openedAt: number;
  /**
   * Sum the training gradient for this window (default true). False when G comes from elsewhere
   * (held-out feedback), so no training-batch sum is kept only to be thrown away.
   */
  accumulate?: boolean;
}

interface OpenWindow extends WindowSpec {
  sum: tf.Tensor2D | undefined;
  /** steps flushed into `sum` */
  flushed: number;
  /** steps trained since the window opened (flushed or not yet) */
  trained: number;
  lossSum: number;
}

export interface ClosedWindow extends WindowSpec {
  /** Σ per-step ∂loss/∂W_eff over the window; the caller owns it (and `generated`, `delta`) */
  G: tf.Tensor2D;
  /** steps G sums over */
  steps: number;
  /** mean training loss over the window's steps */
  meanLoss: number;
}

export class FeedbackWindows {
  private readonly open = new Map<string, OpenWindow>();

  constructor(private readonly acc: GradientAccumulator) {}

  /** Pairs with an open window. */
  pairIds(): string[] {
    return [...this.open.keys()];
  }

  get size(): number {
    return this.open.size;
  }

  has(pairId: string): boolean {
    return this.open.has(pairId);
  }

  get(pairId: string): Readonly<WindowSpec> | undefined {
    return this.open.get(pairId);
  }

  /** The open windows on a layer that take the training gradient. */
  private windowsOn(layer: string): OpenWindow[] {
    return [...this.open.values()].filter((w) => w.layer === layer && w.accumulate !== false);
  }

  /** Move the layer's running sum into every open window on it. */
  private flush(layer: string): void {
    const ws = this.windowsOn(layer);
    if (ws.length === 0) return;
    const { G, steps } = this.acc.takeAccumulated(layer);
    try {
      if (steps === 0) return;
      for (const w of ws) {
        const prev = w.sum;
        w.sum = tf.tidy(() => (prev ? tf.add(prev, G) : tf.clone(G)) as tf.Tensor2D);
        prev?.dispose();
        w.flushed += steps;
      }
    } finally {
      G.dispose();
    }
  }

  /**
   * Open a window for a pair after its transfer was applied. A pair has at most one window: an
   * older one of the same pair is abandoned (its cycle is over on the coordinator's side).
   */
  openWindow(spec: WindowSpec): void {
    if (!(Number.isInteger(spec.k) && spec.k >= 1)) throw new Error(`window k must be an integer ≥ 1, got ${spec.k}`);
    this.abandon(spec.pairId);
    if (spec.accumulate !== false) {
      if (this.windowsOn(spec.layer).length > 0) this.flush(spec.layer);
      else this.acc.startAccumulating(spec.layer);
    }
    this.open.set(spec.pairId, { ...spec, sum: undefined, flushed: 0, trained: 0, lossSum: 0 });
  }

  /** Record that one training step was taken (after Trainer.step) with loss `loss`. */
  afterStep(loss: number): void {
    for (const w of this.open.values()) {
      w.trained += 1;
      w.lossSum += loss;
    }
  }

  /** Close and return every window that has trained its k steps. The caller owns G and generated. */
  takeReady(): ClosedWindow[] {
    const ready = [...this.open.values()].filter((w) => w.trained >= w.k);
    return ready.map((w) => this.close(w.pairId)!);
  }

  /** Close a window now, whatever its step count (e.g. at shutdown). The caller owns G and generated. */
  close(pairId: string): ClosedWindow | undefined {
    const w = this.open.get(pairId);
    if (!w) return undefined;
    this.flush(w.layer);
    this.open.delete(pairId);
    this.releaseLayer(w.layer);
    const { sum, flushed, trained, lossSum, ...spec } = w;
    void trained;
    const G = sum ?? (tf.zeros([spec.generated.A.shape[0], spec.generated.B.shape[1]]) as tf.Tensor2D);
    return { ...spec, G, steps: flushed, meanLoss: w.trained > 0 ? lossSum / w.trained : NaN };
  }

  /** Drop a pair's window without feedback (its session ended, or its pair left the plan). */
  abandon(pairId: string): boolean {
    const w = this.open.get(pairId);
    if (!w) return false;
    // Flush first so the other windows on this layer keep their share of the running sum.
    this.flush(w.layer);
    this.open.delete(pairId);
    this.releaseLayer(w.layer);
    w.sum?.dispose();
    w.delta?.dispose();
    disposeLowRank(w.generated);
    return true;
  }

  /** Abandon every window (a disconnect, a new session, shutdown). Returns how many there were. */
  abandonAll(): number {
    const ids = [...this.open.keys()];
    for (const id of ids) this.abandon(id);
    return ids.length;
  }

  private releaseLayer(layer: string): void {
    if (this.windowsOn(layer).length === 0) this.acc.stopAccumulating(layer);
  }
}

// ---------------------------------------------------------------------------------------------
// Transfers received, waiting for the next gap between steps

export interface QueuedTransfer {
  session: string;
  pairId: string;
  cycleId: number;
  sliceId: number;
  slot: string;
  adapterStep: number;
  /** the pair's trust gate for this transfer */
  gate: number;
  A: { values: Float32Array; shape: number[] };
  B: { values: Float32Array; shape: number[] };
}

export class TransferQueue {
  private items: QueuedTransfer[] = [];

  push(t: QueuedTransfer): void {
    // A newer transfer of the same pair supersedes one that was not applied yet.
    this.items = this.items.filter((x) => x.pairId !== t.pairId);
    this.items.push(t);
  }

  /** Everything queued, oldest first; the queue is emptied. */
  drain(): QueuedTransfer[] {
    const out = this.items;
    this.items = [];
    return out;
  }

  clear(): number {
    const n = this.items.length;
    this.items = [];
    return n;
  }

  get size(): number {
    return this.items.length;
  }
}
