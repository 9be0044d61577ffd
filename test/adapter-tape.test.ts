// Keeping the forward pass's tape for the update (forwardFactors keepTape): the VJP and the AdamW
// step that follow are bit-identical to recomputing the forward, and a tape is used only at the
// input and parameters it was made at, in the workspace it was made in.
import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import { AdamW } from '../coordinator/adapter/adamw.js';
import { defaultAdapterConfig, type AdapterConfig } from '../coordinator/adapter/config.js';
import { type Factors, LpkaAdapter, setLpkaEngine } from '../coordinator/adapter/lpka.js';
import { Workspace } from '../coordinator/adapter/workspace.js';
import { gaussian } from './helpers/random.js';

function factors(rng: () => number, m: number, r: number, n: number): Factors {
  return {
    A: Float32Array.from({ length: m * r }, () => gaussian(rng)),
    B: Float32Array.from({ length: r * n }, () => gaussian(rng)),
    m,
    n,
  };
}

/** The gradients of one VJP as one flat copy (the adapter reuses its gradient buffer). */
function flat(grads: Map<string, Float64Array>): Float64Array {
  const parts = [...grads.values()];
  const out = new Float64Array(parts.reduce((s, g) => s + g.length, 0));
  let o = 0;
  for (const g of parts) {
    out.set(g, o);
    o += g.length;
  }
  return out;
}

function setup(seed: string, cfg: AdapterConfig = defaultAdapterConfig(8, { seed: 3, initScale: 1 })) {
  const rng = seedrandom(seed);
  const r = cfg.rank;
  const target = factors(rng, 64, r, 10);
  const source = factors(rng, 128, r, 10);
  const gA = Float32Array.from({ length: 64 * r }, () => 1e-2 * gaussian(rng));
  const gB = Float32Array.from({ length: r * 10 }, () => 1e-2 * gaussian(rng));
  return { cfg, target, source, gA, gB };
}

describe('kept forward tape', () => {
  for (const simd of [true, false]) {
    it(`gives bit-identical outputs, gradients and steps over several cycles (${simd ? 'SIMD' : 'scalar'} workspace)`, () => {
      setLpkaEngine('kernels');
      try {
        const { cfg, target, source, gA, gB } = setup(`tape ${simd}`);
        const ws = new Workspace({ simd });
        const kept = new LpkaAdapter(cfg);
        const plain = new LpkaAdapter(cfg);
        const optK = new AdamW(kept.namedParams(), cfg);
        const optP = new AdamW(plain.namedParams(), cfg);
        // The first pass grows the workspace (a pass that spilled keeps no tape).
        plain.vjpFactors(target, source, gA, gB, ws);
        for (let cycle = 0; cycle < 3; cycle++) {
          const outK = kept.forwardFactors(target, source, ws, { keepTape: true });
          expect(kept.hasKeptTape).toBe(true);
          const outP = plain.forwardFactors(target, source, ws);
          expect(outK.A).toEqual(outP.A);
          expect(outK.B).toEqual(outP.B);
          // Another pass in the same workspace between the forward and the update, as when a
          // worker serves several pairs.
          plain.forwardFactors(source, target, ws);
          const gK = flat(kept.vjpFactors(target, source, gA, gB, ws));
          expect(kept.hasKeptTape).toBe(false);
          const gP = flat(plain.vjpFactors(target, source, gA, gB, ws));
          expect(gK).toEqual(gP);
          expect(gK.some((x) => x !== 0)).toBe(true);
          optK.step(kept.vjpFactors(target, source, gA, gB, ws));
          optP.step(plain.vjpFactors(target, source, gA, gB, ws));
          expect(kept.values).toEqual(plain.values);
        }
      } finally {
        setLpkaEngine('auto');
      }
    });
  }

  it('is not used at another input, after a parameter change, in another workspace or after a grown memory', () => {
    setLpkaEngine('kernels');
    try {
      const { cfg, target, source, gA, gB } = setup('tape misuse');
      const ws = new Workspace();
      const adapter = new LpkaAdapter(cfg);
      const reference = (t: Factors, s: Factors): Float64Array => {
        const fresh = new LpkaAdapter(cfg);
        fresh.values.set(adapter.values);
        return flat(fresh.vjpFactors(t, s, gA, gB, new Workspace()));
      };
      // another input with the same shapes
      adapter.forwardFactors(target, source, ws, { keepTape: true });
      const other = { ...target, A: target.A.map((x) => x + 0.5) };
      expect(flat(adapter.vjpFactors(other, source, gA, gB, ws))).toEqual(reference(other, source));
      // the parameters changed in between
      adapter.forwardFactors(target, source, ws, { keepTape: true });
      adapter.values[0] += 0.25;
      expect(flat(adapter.vjpFactors(target, source, gA, gB, ws))).toEqual(reference(target, source));
      // another workspace
      adapter.forwardFactors(target, source, ws, { keepTape: true });
      expect(flat(adapter.vjpFactors(target, source, gA, gB, new Workspace()))).toEqual(reference(target, source));
      // the memory grew (a larger pair ran in between): the tape's views are detached
      adapter.forwardFactors(target, source, ws, { keepTape: true });
      const big = setup('big');
      const large = { ...factors(seedrandom('large'), 700, cfg.rank, 300) };
      new LpkaAdapter(cfg).forwardFactors(large, big.source, ws);
      expect(flat(adapter.vjpFactors(target, source, gA, gB, ws))).toEqual(reference(target, source));
    } finally {
      setLpkaEngine('auto');
    }
  });

  it('is dropped by the next forward and by dispose, and not kept unless asked', () => {
    const { cfg, target, source } = setup('tape drop');
    const ws = new Workspace();
    const adapter = new LpkaAdapter(cfg);
    adapter.forwardFactors(target, source, ws);
    expect(adapter.hasKeptTape).toBe(false);
    adapter.forwardFactors(target, source, ws, { keepTape: true });
    expect(adapter.hasKeptTape).toBe(true);
    adapter.forwardFactors(target, source, ws);
    expect(adapter.hasKeptTape).toBe(false);
    adapter.forwardFactors(target, source, ws, { keepTape: true });
    adapter.dispose();
    expect(adapter.hasKeptTape).toBe(false);
  });

  it('gives the same bits when the tape keeps fewer attention probabilities than a fresh VJP', () => {
    setLpkaEngine('kernels');
    try {
      // 784×128 / 800×128: the fresh VJP keeps its 13.5M probabilities, the kept tape none
      const cfg = defaultAdapterConfig(8, { seed: 4, initScale: 1 });
      const rng = seedrandom('tape probs');
      const [target, source] = [factors(rng, 784, 8, 128), factors(rng, 800, 8, 128)];
      const gA = Float32Array.from({ length: 784 * 8 }, () => 1e-2 * gaussian(rng));
      const gB = Float32Array.from({ length: 8 * 128 }, () => 1e-2 * gaussian(rng));
      const ws = new Workspace();
      const adapter = new LpkaAdapter(cfg);
      const fresh = flat(adapter.vjpFactors(target, source, gA, gB, ws));
      adapter.forwardFactors(target, source, ws, { keepTape: true });
      expect(adapter.hasKeptTape).toBe(true);
      expect(flat(adapter.vjpFactors(target, source, gA, gB, ws))).toEqual(fresh);
    } finally {
      setLpkaEngine('auto');
    }
  });

  it('is kept for 784×128 / 800×128 slots (their probabilities are recomputed), not over the budget', () => {
    const cfg = defaultAdapterConfig(8, { seed: 3, initScale: 1 });
    const rng = seedrandom('tape budget');
    const adapter = new LpkaAdapter(cfg);
    const ws = new Workspace();
    adapter.forwardFactors(factors(rng, 784, 8, 128), factors(rng, 800, 8, 128), ws, { keepTape: true });
    expect(adapter.hasKeptTape).toBe(true);
    // 6000 query tokens' activations take more than 8 MB (the first pass grows the workspace)
    const [t, src] = [factors(rng, 5900, 8, 100), factors(rng, 90, 8, 10)];
    adapter.forwardFactors(t, src, ws);
    adapter.forwardFactors(t, src, ws, { keepTape: true });
    expect(adapter.hasKeptTape).toBe(false);
    // the same pass keeps its tape when the budget allows
    expect(ws.snapshot(1 << 30)).not.toBeNull();
  });
});
