// Where a pair's adapter lives when it is not on the event loop (issue 9): the worker pool
// (adapter-pool.ts) in production; tests inject a host whose replies they release by hand, to
// drive the engine's asynchronous cycle deterministically. Requests of one pair are answered in
// the order they were made (the pool pins a pair to one worker, whose port is FIFO).
import type { LowRank } from '../shared/math/low-rank.js';
import type { StepResult } from './adapter/adamw.js';
import type { AdapterConfig } from './adapter/config.js';
import type { Factors } from './adapter/lpka.js';

export interface AdapterHost {
  /** worker threads behind this host (for status) */
  readonly size: number;
  /** ms spent on requests so far, summed over workers, where the host measures it (the slice pace's capacity) */
  readonly busyMs?: number;
  create(pairId: string, config: AdapterConfig): Promise<unknown>;
  /** A′, B′; the host keeps (target, source) as the input of the pair's next update. */
  forward(pairId: string, target: Factors, source: Factors): Promise<Factors>;
  update(pairId: string, gA: Float32Array, gB: Float32Array): Promise<StepResult>;
  exportState(pairId: string): Promise<Uint8Array>;
  restore(pairId: string, bytes: Uint8Array): Promise<unknown>;
  drop(pairId: string): Promise<void>;
  close(): Promise<void>;
}

/** Copies of a factor pair's values (the worker gets its own; the tensors stay the caller's). */
export function factorsOf(f: LowRank): Factors {
  return { A: f.A.dataSync() as Float32Array, B: f.B.dataSync() as Float32Array, m: f.A.shape[0], n: f.B.shape[1] };
}

/** The shapes [m, r] and [r, n] of A′ and B′ returned by a host. */
export function factorShapes(f: Factors): { A: [number, number]; B: [number, number] } {
  const r = f.A.length / f.m;
  return { A: [f.m, r], B: [r, f.n] };
}
