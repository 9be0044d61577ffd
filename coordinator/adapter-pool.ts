// A pool of worker threads that hold and run the coordinator's adapters, so that adapter work
// leaves the event loop that does I/O, validation and bookkeeping (issue 9).
//
// Pair affinity: a pair's adapter and optimiser state live in one worker, chosen when the pair is
// created or restored (the worker holding the fewest pairs), and every request of the pair goes
// there. Workers are plain worker_threads rather than a task pool (piscina, tinypool), because
// those hand a task to whichever worker is free, while here the state decides the worker.
// Requests of one pair must not overlap (the engine has at most one cycle in flight per pair);
// requests of different pairs run in parallel across workers.
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { StepResult } from './adapter/adamw.js';
import type { AdapterConfig } from './adapter/config.js';
import type { Factors } from './adapter/lpka.js';
import type { PoolReply, PoolRequest } from './adapter-worker.js';

type Body<R> = R extends unknown ? Omit<R, 'id'> : never;

interface Slot {
  worker: Worker;
  pairs: number;
  pending: Map<number, { resolve(v: unknown): void; reject(e: Error): void }>;
}

export class AdapterPool {
  private readonly slots: Slot[];
  private readonly home = new Map<string, Slot>();
  private nextId = 0;
  private closed = false;
  private busy = 0;

  /** `size` worker threads (default: the machine's available parallelism). */
  constructor(size = availableParallelism()) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`adapter pool: size must be a positive integer, got ${size}`);
    const boot = fileURLToPath(new URL('./adapter-worker-boot.mjs', import.meta.url));
    const entry = new URL('./adapter-worker.ts', import.meta.url).href;
    this.slots = Array.from({ length: size }, () => {
      const slot: Slot = { worker: new Worker(boot, { workerData: { entry } }), pairs: 0, pending: new Map() };
      slot.worker.on('message', (reply: PoolReply) => {
        this.busy += reply.ms;
        const p = slot.pending.get(reply.id);
        if (!p) return;
        slot.pending.delete(reply.id);
        if (reply.ok) p.resolve(reply.result);
        else p.reject(new Error(reply.error));
      });
      slot.worker.on('error', (err) => {
        for (const p of slot.pending.values()) p.reject(err);
        slot.pending.clear();
      });
      return slot;
    });
  }

  get size(): number {
    return this.slots.length;
  }

  /** ms the workers have spent on requests so far, summed over workers. */
  get busyMs(): number {
    return this.busy;
  }

  /** The worker index that holds `pairId`, if any (for tests and status). */
  workerOf(pairId: string): number | undefined {
    const s = this.home.get(pairId);
    return s ? this.slots.indexOf(s) : undefined;
  }

  private send<T>(slot: Slot, body: Body<PoolRequest>, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.closed) return Promise.reject(new Error('adapter pool: closed'));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      slot.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      slot.worker.postMessage({ ...body, id } as PoolRequest, transfer);
    });
  }

  private homeOf(pairId: string): Slot {
    const s = this.home.get(pairId);
    if (!s) throw new Error(`adapter pool: unknown pair ${pairId}`);
    return s;
  }

  /** The least-loaded worker becomes the pair's home (kept if it already has one). */
  private assign(pairId: string): Slot {
    let s = this.home.get(pairId);
    if (!s) {
      s = this.slots.reduce((a, b) => (b.pairs < a.pairs ? b : a));
      s.pairs++;
      this.home.set(pairId, s);
    }
    return s;
  }

  /** A fresh adapter and optimiser for the pair. Resolves with its parameter count. */
  create(pairId: string, config: AdapterConfig): Promise<number> {
    return this.send(this.assign(pairId), { op: 'create', pairId, config });
  }

  /** A′, B′ for the pair; the worker keeps (target, source) for the next update. Inputs are copied. */
  async forward(pairId: string, target: Factors, source: Factors): Promise<Factors> {
    return this.send(this.homeOf(pairId), { op: 'forward', pairId, target, source });
  }

  /** One update (VJP at the last forward's input, clip, AdamW) from gA [m, r] and gB [r, n]. */
  async update(pairId: string, gA: Float32Array, gB: Float32Array): Promise<StepResult> {
    return this.send(this.homeOf(pairId), { op: 'update', pairId, gA, gB });
  }

  /** serializeAdapterState bytes of the pair (for checkpoints). */
  async exportState(pairId: string): Promise<Uint8Array> {
    return this.send(this.homeOf(pairId), { op: 'exportState', pairId });
  }

  /** Replace (or create) the pair's adapter from serializeAdapterState bytes. Resolves with its step. */
  restore(pairId: string, bytes: Uint8Array): Promise<number> {
    return this.send(this.assign(pairId), { op: 'restore', pairId, bytes });
  }

  /** Forget the pair's adapter. */
  async drop(pairId: string): Promise<void> {
    const s = this.home.get(pairId);
    if (!s) return;
    this.home.delete(pairId);
    s.pairs--;
    await this.send(s, { op: 'drop', pairId });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    for (const s of this.slots) for (const p of s.pending.values()) p.reject(new Error('adapter pool: closed'));
  }
}
