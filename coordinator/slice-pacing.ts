// The engine's side of the slice pace (pacer.ts decides): it counts a window's target slices,
// shed cycles and started cycles, asks the pacer at each tick, and says when the devices need to
// hear of a new interval (a change of more than `announceChange`, or pacing turning on or off), so
// that a fleet of a thousand is not told of every small step.
import { Pacer, type PaceDecision, type PacerOptions } from './pacer.js';

export interface SlicePacingOptions extends Partial<PacerOptions> {
  /** relative change of the interval worth announcing */
  announceChange?: number;
}

export interface PaceTick extends PaceDecision {
  /** the devices must be told: the interval to announce */
  announce?: number;
  /** the window's measures: the workers' busy fraction and the event loop's utilization (0..1), where measured */
  busy?: number;
  loop?: number;
}

export class SlicePacing {
  private readonly pacer: Pacer;
  private readonly announceChange: number;
  private slices = 0;
  private shed = 0;
  private started = 0;
  private windowStart: number;
  private announced = 0;
  private busyAtStart?: number;

  constructor(now: number, opts: SlicePacingOptions = {}) {
    const { announceChange = 0.15, ...pacer } = opts;
    this.pacer = new Pacer(pacer);
    this.announceChange = announceChange;
    this.windowStart = now;
  }

  /** The interval the devices were last told (0: none). */
  get intervalMs(): number {
    return this.announced;
  }

  /** A target slice of an adapter pair arrived. */
  countSlice(): void {
    this.slices++;
  }

  /** A cycle was shed for lack of capacity (`overloaded`, or a pending slice `superseded`). */
  countShed(): void {
    this.shed++;
  }

  /** A cycle was handed to the adapter. */
  countStarted(): void {
    this.started++;
  }

  /**
   * Close the window at `now` and decide. `busyMs`: the adapter host's busy time so far, summed
   * over its `workers` (absent where it does not measure it); `loop`: the event loop's
   * utilization over the window (0..1), where measured.
   */
  tick(now: number, activePairs: number, busyMs?: number, workers = 1, loop?: number): PaceTick {
    const ms = now - this.windowStart;
    const busy = busyMs !== undefined && this.busyAtStart !== undefined && ms > 0 ? (busyMs - this.busyAtStart) / (ms * workers) : undefined;
    this.busyAtStart = busyMs;
    const d = this.pacer.observe({ ms, slices: this.slices, shed: this.shed, started: this.started, activePairs, busy, loop });
    this.slices = this.shed = this.started = 0;
    this.windowStart = now;
    const was = this.announced;
    const next = d.intervalMs;
    const worth = (was === 0) !== (next === 0) || Math.abs(next - was) > this.announceChange * was;
    if (!worth) return { ...d, busy, loop };
    this.announced = next;
    return { ...d, busy, loop, announce: next };
  }
}
