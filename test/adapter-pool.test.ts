// The adapter pool: worker threads with pair affinity give bit-identical results to the same
// adapters on the main thread (forward outputs, update results, serialized state), and state moves
// in and out of a worker exactly.
import seedrandom from 'seedrandom';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdamW } from '../coordinator/adapter/adamw.js';
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { type Factors, LpkaAdapter } from '../coordinator/adapter/lpka.js';
import { serializeAdapterState } from '../coordinator/adapter/state.js';
import { adapterUpdateFactors } from '../coordinator/adapter/update.js';
import { AdapterPool } from '../coordinator/adapter-pool.js';
import { gaussian } from './helpers/random.js';

function factors(rng: () => number, m: number, r: number, n: number): Factors {
  return { A: Float32Array.from({ length: m * r }, () => gaussian(rng)), B: Float32Array.from({ length: r * n }, () => gaussian(rng)), m, n };
}

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe('AdapterPool', () => {
  let pool: AdapterPool;
  beforeAll(() => {
    pool = new AdapterPool(2);
  });
  afterAll(async () => {
    await pool.close();
  });

  it('matches the main thread bit for bit, with each pair pinned to one worker', async () => {
    const rng = seedrandom('pool');
    const pairs = [
      { id: 'a', cfg: defaultAdapterConfig(8, { seed: 1 }), dims: [64, 10, 128, 10] },
      { id: 'b', cfg: defaultAdapterConfig(4, { seed: 2, heads: 2, attnDim: 8, ffnDim: 12, lr: 1e-2 }), dims: [9, 5, 7, 6] },
      { id: 'c', cfg: defaultAdapterConfig(8, { seed: 3, lr: 1e-2 }), dims: [30, 12, 20, 16] },
    ];
    const local = new Map(pairs.map((p) => {
      const adapter = new LpkaAdapter(p.cfg);
      return [p.id, { adapter, opt: new AdamW(adapter.namedParams(), p.cfg) }];
    }));
    await Promise.all(pairs.map((p) => pool.create(p.id, p.cfg)));
    const homes = pairs.map((p) => pool.workerOf(p.id));
    expect(new Set(homes).size).toBe(2); // spread over both workers
    for (let cycle = 0; cycle < 3; cycle++) {
      // every pair's cycle at once: they run in parallel across workers
      const inputs = pairs.map((p) => {
        const [mt, nt, ms, ns] = p.dims;
        const r = p.cfg.rank;
        return { target: factors(rng, mt, r, nt), source: factors(rng, ms, r, ns), gA: factors(rng, mt, r, 1).A, gB: factors(rng, 1, r, nt).B };
      });
      const outs = await Promise.all(pairs.map((p, i) => pool.forward(p.id, inputs[i].target, inputs[i].source)));
      const steps = await Promise.all(pairs.map((p, i) => pool.update(p.id, inputs[i].gA, inputs[i].gB)));
      pairs.forEach((p, i) => {
        const { adapter, opt } = local.get(p.id)!;
        const want = adapter.forwardFactors(inputs[i].target, inputs[i].source);
        expect(bits(outs[i].A)).toEqual(bits(want.A));
        expect(bits(outs[i].B)).toEqual(bits(want.B));
        const res = adapterUpdateFactors(adapter, opt, inputs[i].target, inputs[i].source, inputs[i].gA, inputs[i].gB);
        expect(steps[i]).toEqual(res);
      });
    }
    for (const p of pairs) {
      const { adapter, opt } = local.get(p.id)!;
      expect(Buffer.from(await pool.exportState(p.id)).equals(Buffer.from(serializeAdapterState(adapter, opt)))).toBe(true);
      expect(pool.workerOf(p.id)).toBe(homes[pairs.indexOf(p)]);
    }
  });

  it('restores state into a worker exactly, and refuses unknown pairs', async () => {
    const rng = seedrandom('restore');
    const cfg = defaultAdapterConfig(4, { seed: 9, lr: 1e-2 });
    const adapter = new LpkaAdapter(cfg);
    const opt = new AdamW(adapter.namedParams(), cfg);
    const t = factors(rng, 6, 4, 5);
    const s = factors(rng, 7, 4, 3);
    adapter.forwardFactors(t, s);
    adapterUpdateFactors(adapter, opt, t, s, factors(rng, 6, 4, 1).A, factors(rng, 1, 4, 5).B);
    const bytes = serializeAdapterState(adapter, opt);
    expect(await pool.restore('r', bytes)).toBe(1);
    expect(Buffer.from(await pool.exportState('r')).equals(Buffer.from(bytes))).toBe(true);
    const out = await pool.forward('r', t, s);
    expect(bits(out.A)).toEqual(bits(adapter.forwardFactors(t, s).A));
    await pool.drop('r');
    expect(pool.workerOf('r')).toBeUndefined();
    await expect(pool.forward('r', t, s)).rejects.toThrow(/unknown pair r/);
    await pool.create('fresh', cfg);
    await expect(pool.update('fresh', new Float32Array(24), new Float32Array(20))).rejects.toThrow(/no forward to update from/);
  });
});
