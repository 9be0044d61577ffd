// The slice pace a saturated coordinator asks of its devices (docs/DESIGN.md §11, PROTOCOL.md §4.14).
// Shedding cycles (backpressure.ts) keeps the coordinator's queues bounded, but every shed slice
// was still received, decoded and checked: at 1000 devices on 784×128 slots that alone takes the
// event loop's core, and the adapter workers starve behind it. So the coordinator also tells its
// devices how far apart to send slices, from what it saw in the last window:
// - many cycles shed while the event loop is nearly always busy → the interval at which the
//   active pairs offer what was actually started, with some headroom (longer still when shedding
//   goes on at the interval already asked for). Shedding beside an event loop with time to spare
//   costs little (small slices, or workers that are the limit): then the pace holds;
// - next to nothing shed → a shorter interval: the one that fills the measured capacity with some
//   headroom, dividing by at most maxShrink per window. The capacity is the cycles started per
//   second of the busiest part's busy time: the adapter workers', or the event loop's (whose
//   work grows with every slice received, shed or not). Where neither is measured, a blind probe
//   (×probeFactor); below minIntervalMs, off.
// Pure: the engine counts and decides when to announce.

export interface PacerOptions {
  /** a window with more than this fraction of its target slices shed counts as saturated */
  shedHigh: number;
  /** a window with at most this fraction shed counts as quiet */
  shedLow: number;
  /** the fraction of the measured capacity the chosen interval offers (saturated or quiet) */
  headroom: number;
  /** quiet windows in a row before the interval is shortened */
  quietWindows: number;
  /** each probe multiplies the interval by this */
  probeFactor: number;
  /** an interval shorter than this turns pacing off (0) */
  minIntervalMs: number;
  /** never ask for a longer interval (a source's slice must stay younger than sourceMaxAgeMs) */
  maxIntervalMs: number;
  /** a window with fewer target slices than this decides nothing */
  minSlices: number;
  /** a window with fewer started cycles, or a smaller busy fraction, does not update the capacity */
  minStarted: number;
  minBusy: number;
  /** a quiet window divides the interval by at most this */
  maxShrink: number;
  /** shedding counts as saturation only with the event loop at least this busy (where measured) */
  loopHigh: number;
  /**
   * The first pace is at most this many times the interval the pairs offered slices at: a first
   * window's capacity may be a start-up transient (adapters being created, code not yet optimised).
   */
  firstStep: number;
}

export const DEFAULT_PACER_OPTIONS: PacerOptions = {
  shedHigh: 0.1,
  shedLow: 0.02,
  headroom: 0.85,
  quietWindows: 2,
  probeFactor: 0.8,
  minIntervalMs: 250,
  maxIntervalMs: 60_000,
  minSlices: 8,
  minStarted: 4,
  minBusy: 0.05,
  maxShrink: 4,
  loopHigh: 0.8,
  firstStep: 8,
};

/** What the engine counted over one window. */
export interface PaceWindow {
  /** the window's length, ms */
  ms: number;
  /** target slices of adapter pairs that arrived (each a chance to start a cycle) */
  slices: number;
  /** of those, shed for lack of capacity (`overloaded`, or `superseded` as a pair's pending slice) */
  shed: number;
  /** cycles started in the window */
  started: number;
  /** active adapter pairs (each one's target offers slices) */
  activePairs: number;
  /** the adapter workers' busy fraction over the window (0..1), where the host measures it */
  busy?: number;
  /** the event loop's utilization over the window (0..1), where measured */
  loop?: number;
}

export interface PaceDecision {
  /** the interval to ask for, ms (0: no pace) */
  intervalMs: number;
  /** the window's shed fraction */
  shedFraction: number;
  /** cycles per second the coordinator can start, as last estimated (saturated: as started) */
  capacity?: number;
  why: 'saturated' | 'probe' | 'hold' | 'idle';
}

export class Pacer {
  private interval = 0;
  private quiet = 0;
  /** cycles/s the coordinator could start with its busiest part always busy (smoothed), once measured */
  private capacity?: number;
  readonly options: PacerOptions;

  constructor(options: Partial<PacerOptions> = {}) {
    this.options = { ...DEFAULT_PACER_OPTIONS, ...options };
    if (!(this.options.maxIntervalMs >= this.options.minIntervalMs)) throw new RangeError('pacer: maxIntervalMs must be at least minIntervalMs');
  }

  /** The interval currently asked for, ms (0: none). */
  get intervalMs(): number {
    return this.interval;
  }

  observe(w: PaceWindow): PaceDecision {
    const o = this.options;
    const shedFraction = w.slices > 0 ? w.shed / w.slices : 0;
    const started = w.ms > 0 ? (w.started * 1000) / w.ms : 0;
    const fitTo = (capacity: number) => (w.activePairs * 1000) / (o.headroom * capacity);
    if (w.slices < o.minSlices || w.ms <= 0) {
      // Too little seen to judge; with no traffic at all for a while, stop asking.
      if (w.slices === 0 && this.interval > 0 && ++this.quiet >= 4 * o.quietWindows) this.set(0);
      return { intervalMs: this.interval, shedFraction, why: 'idle' };
    }
    if (shedFraction > o.shedHigh && (w.loop === undefined || w.loop >= o.loopHigh)) {
      this.quiet = 0;
      // Saturated: the capacity is what was started. The interval at which the active pairs would
      // offer `headroom` of that, at first no more than firstStep times the interval they offered
      // at. Once pacing, the window may still hold the backlog of slices sent before the devices
      // heard of the pace, when little starts: lengthen by ×1.25 to ×1.5 rather than jump.
      if (started > 0) this.capacity = started;
      const fit = started > 0 ? fitTo(started) : Infinity;
      const offeredAt = (w.activePairs * w.ms) / w.slices;
      this.set(this.interval > 0 ? Math.max(1.25 * this.interval, Math.min(fit, 1.5 * this.interval)) : Math.max(Math.min(fit, o.firstStep * offeredAt), o.minIntervalMs));
      return { intervalMs: this.interval, shedFraction, capacity: started, why: 'saturated' };
    }
    // Not saturated: the busiest part (the workers, or the event loop) says how many cycles would
    // start were it always busy.
    const utilization = Math.max(w.busy ?? 0, w.loop ?? 0);
    const measured = w.busy !== undefined || w.loop !== undefined;
    if (measured && w.started >= o.minStarted && utilization >= o.minBusy) {
      const c = started / Math.min(1, utilization);
      this.capacity = this.capacity === undefined ? c : 0.5 * this.capacity + 0.5 * c;
    }
    if (shedFraction <= o.shedLow && this.interval > 0) {
      if (measured && this.capacity !== undefined) {
        // Shorten towards that capacity, by at most maxShrink per window.
        const next = Math.max(fitTo(this.capacity), this.interval / o.maxShrink);
        if (next < this.interval) {
          this.set(next < o.minIntervalMs ? 0 : next);
          return { intervalMs: this.interval, shedFraction, capacity: this.capacity, why: 'probe' };
        }
      } else if (++this.quiet >= o.quietWindows) {
        this.quiet = 0;
        const next = this.interval * o.probeFactor;
        this.set(next < o.minIntervalMs ? 0 : next);
        return { intervalMs: this.interval, shedFraction, why: 'probe' };
      }
    } else {
      this.quiet = 0;
    }
    return { intervalMs: this.interval, shedFraction, capacity: this.capacity, why: 'hold' };
  }

  private set(ms: number): void {
    this.interval = ms === 0 ? 0 : Math.round(Math.min(this.options.maxIntervalMs, ms));
  }
}
