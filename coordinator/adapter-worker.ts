// A worker thread of the adapter pool (adapter-pool.ts): it owns the adapters and optimisers of
// the pairs assigned to it (pair affinity), and runs their forward passes and updates on plain
// arrays, with its own kernel workspace. Requests come one at a time per pair from the pool.
import { parentPort } from 'node:worker_threads';
import { AdamW } from './adapter/adamw.js';
import { type AdapterConfig, parseAdapterConfig } from './adapter/config.js';
import { type Factors, LpkaAdapter } from './adapter/lpka.js';
import { deserializeAdapterState, serializeAdapterState } from './adapter/state.js';
import { adapterUpdateFactors } from './adapter/update.js';

export type PoolRequest =
  | { id: number; op: 'create'; pairId: string; config: AdapterConfig }
  | { id: number; op: 'forward'; pairId: string; target: Factors; source: Factors }
  | { id: number; op: 'update'; pairId: string; gA: Float32Array; gB: Float32Array }
  | { id: number; op: 'exportState'; pairId: string }
  | { id: number; op: 'restore'; pairId: string; bytes: Uint8Array }
  | { id: number; op: 'drop'; pairId: string };

/** `ms`: the request's compute time in the worker (the pool sums it: its busy time). */
export type PoolReply = { id: number; ok: true; result: unknown; ms: number } | { id: number; ok: false; error: string; ms: number };

interface Held {
  adapter: LpkaAdapter;
  opt: AdamW;
  /** the input of the last forward: the update's VJP is taken there */
  lastInput?: { target: Factors; source: Factors };
}

const pairs = new Map<string, Held>();

function held(pairId: string): Held {
  const h = pairs.get(pairId);
  if (!h) throw new Error(`adapter pool: no adapter for pair ${pairId} in this worker`);
  return h;
}

function handle(req: PoolRequest): { result: unknown; transfer: ArrayBuffer[] } {
  switch (req.op) {
    case 'create': {
      pairs.get(req.pairId)?.adapter.dispose();
      const cfg = parseAdapterConfig(req.config);
      const adapter = new LpkaAdapter(cfg);
      pairs.set(req.pairId, { adapter, opt: new AdamW(adapter.namedParams(), cfg) });
      return { result: adapter.numParams(), transfer: [] };
    }
    case 'forward': {
      const h = held(req.pairId);
      // The tape is kept for this pair's update (the VJP then skips its forward pass); it is dropped
      // by the next forward, and with the adapter on create, restore and drop.
      const out = h.adapter.forwardFactors(req.target, req.source, undefined, { keepTape: true });
      h.lastInput = { target: req.target, source: req.source };
      return { result: out, transfer: [out.A.buffer as ArrayBuffer, out.B.buffer as ArrayBuffer] };
    }
    case 'update': {
      const h = held(req.pairId);
      if (!h.lastInput) throw new Error(`adapter pool: pair ${req.pairId} has no forward to update from`);
      return { result: adapterUpdateFactors(h.adapter, h.opt, h.lastInput.target, h.lastInput.source, req.gA, req.gB), transfer: [] };
    }
    case 'exportState': {
      const h = held(req.pairId);
      const bytes = serializeAdapterState(h.adapter, h.opt);
      return { result: bytes, transfer: [] };
    }
    case 'restore': {
      const { adapter, opt } = deserializeAdapterState(req.bytes);
      pairs.get(req.pairId)?.adapter.dispose();
      pairs.set(req.pairId, { adapter, opt });
      return { result: opt.stepCount, transfer: [] };
    }
    case 'drop': {
      pairs.get(req.pairId)?.adapter.dispose();
      return { result: pairs.delete(req.pairId), transfer: [] };
    }
  }
}

parentPort?.on('message', (req: PoolRequest) => {
  let reply: PoolReply;
  let transfer: ArrayBuffer[] = [];
  const t0 = performance.now();
  try {
    const r = handle(req);
    reply = { id: req.id, ok: true, result: r.result, ms: performance.now() - t0 };
    transfer = r.transfer;
  } catch (err) {
    reply = { id: req.id, ok: false, error: (err as Error).message, ms: performance.now() - t0 };
  }
  parentPort!.postMessage(reply, transfer);
});
