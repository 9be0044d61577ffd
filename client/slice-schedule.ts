// Which (slot, rank) slices are due at a step: every tCycle steps per pair, one slice for all
// pairs that share a slot (docs/DESIGN.md §9).
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
