// Backpressure of the engine's cycles when adapters run in workers (issue 9; docs/DESIGN.md §11).
// A pair has at most one cycle in flight, counted from the moment its forward is handed to a
// worker until its update is back (or the cycle is dropped). A target slice that arrives while its
// pair is busy waits as the pair's one pending slice; a later one supersedes it (the latest
// wins, the superseded one is answered and counted). The requests handed to workers are counted,
// so a saturated coordinator can shed new cycles instead of queueing them without bound.
import type { Sender } from './engine.js';

/** A target slice waiting for its pair: the slice is the registry's (looked up again when it starts). */
export interface HeldSlice {
  sliceId: number;
  from: Sender;
}

export class Backpressure {
  private readonly forwarding = new Set<string>();
  private readonly held = new Map<string, HeldSlice>();
  private readonly running = new Set<Promise<unknown>>();

  /** Adapter requests handed to workers and not yet answered. */
  get queued(): number {
    return this.running.size;
  }

  /** Pairs holding a pending slice. */
  get pending(): number {
    return this.held.size;
  }

  isForwarding(pairId: string): boolean {
    return this.forwarding.has(pairId);
  }

  /** Run a pair's forward: the pair is busy until it settles. */
  forward<T>(pairId: string, p: Promise<T>): Promise<T> {
    this.forwarding.add(pairId);
    const done = () => this.forwarding.delete(pairId);
    p.then(done, done);
    return this.track(p);
  }

  /** Count a request until it settles (drain() waits for it). */
  track<T>(p: Promise<T>): Promise<T> {
    this.running.add(p);
    const done = () => this.running.delete(p);
    p.then(done, done);
    return p;
  }

  /** Hold a slice for a busy pair; returns the one it supersedes, if any. */
  hold(pairId: string, slice: HeldSlice): HeldSlice | undefined {
    const old = this.held.get(pairId);
    this.held.set(pairId, slice);
    return old;
  }

  take(pairId: string): HeldSlice | undefined {
    const h = this.held.get(pairId);
    this.held.delete(pairId);
    return h;
  }

  /** Forget every held slice (shutdown). */
  clearHeld(): void {
    this.held.clear();
  }

  /** Resolves once every request handed out so far, and any they led to, has settled. */
  async drain(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running]);
  }
}
