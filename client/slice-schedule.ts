// Which (slot, rank) slices are due at a step: every tCycle steps per pair, one slice for all
// pairs that share a slot (docs/DESIGN.md §9), and no sooner than the coordinator's pace allows
// (the `pace` event, docs/PROTOCOL.md §4.14): a slot held back by the pace keeps its pairs due,
// so their slice goes at the first step after the pace allows it.
import type { PlanPair } from '../shared/protocol/messages.js';

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
  /** the pace asked for, ms (0: none), and per slot the earliest time of its next slice */
  private paceMs = 0;
  private notBefore = new Map<string, number>();
  /** due slices the pace held back, counted once per (slot, step) */
  deferred = 0;

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

  /** Forget the plan and the pace (a new session starts without either). */
  clear(): void {
    this.pairs = [];
    this.next.clear();
    this.slotRank.clear();
    this.paceMs = 0;
    this.notBefore.clear();
  }

  /** The pace in force, ms (0: none). */
  get pace(): number {
    return this.paceMs;
  }

  /**
   * Adopt a pace at time `now` (ms). Each slot's next slice is drawn uniformly within one interval
   * from now: a fleet told at once must not send at once.
   */
  setPace(intervalMs: number, now: number, random: () => number): void {
    this.paceMs = intervalMs;
    this.notBefore.clear();
    if (intervalMs <= 0) return;
    for (const slot of this.slotRank.keys()) this.notBefore.set(slot, now + random() * intervalMs);
  }

  /** The rank slices of `slot` are sent at (undefined if no pair uses the slot). */
  rankOf(slot: string): number | undefined {
    return this.slotRank.get(slot);
  }

  /**
   * The slices due at `step` (the step about to be reported to the coordinator), one per slot,
   * and advance each due pair by its tCycle.
   */
  due(step: number, now = 0): DueSlice[] {
    const out = new Map<string, DueSlice>();
    const held = new Set<string>();
    for (const p of this.pairs) {
      const at = this.next.get(p.pairId) ?? step;
      if (step < at) continue;
      if (this.paceMs > 0 && now < (this.notBefore.get(p.slot) ?? -Infinity)) {
        held.add(p.slot);
        continue;
      }
      this.next.set(p.pairId, step + p.tCycle);
      const d = out.get(p.slot);
      if (d) d.pairIds.push(p.pairId);
      else out.set(p.slot, { slot: p.slot, rank: this.slotRank.get(p.slot)!, pairIds: [p.pairId] });
    }
    this.deferred += held.size;
    // The next slice one interval after this one's scheduled time, not after its actual one: a
    // slice goes at the first step after its time, and counting from there would stretch every
    // interval by up to a step (by up to a whole tCycle where that is near the pace).
    if (this.paceMs > 0) for (const slot of out.keys()) this.notBefore.set(slot, Math.max((this.notBefore.get(slot) ?? now) + this.paceMs, now));
    return [...out.values()];
  }
}
