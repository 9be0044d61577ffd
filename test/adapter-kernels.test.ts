// The Float32Array LPKA kernels against the tfjs implementation they replaced
// (coordinator/adapter/lpka-tfjs.ts): forward outputs and every parameter gradient agree
// within 1e-5 relative, over several shapes, head counts and token counts; and the backward pass
// gives the same gradients whether it kept the attention probabilities or recomputed them.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { beforeAll, describe, expect, it } from 'vitest';
import { defaultAdapterConfig, type AdapterConfig } from '../coordinator/adapter/config.js';
import { LpkaAdapter, lpkaEngineFor, setLpkaEngine } from '../coordinator/adapter/lpka.js';
import { backwardPass, forwardPass, layerViews } from '../coordinator/adapter/lpka-pass.js';
import { tanhApprox } from '../coordinator/adapter/lpka-kernels.js';
import { TfjsReferenceLpka } from '../coordinator/adapter/lpka-tfjs.js';
import { Workspace } from '../coordinator/adapter/workspace.js';
import { adapterVjp } from '../coordinator/adapter/update.js';
import { initBackend } from '../shared/tf/backend.js';
import { gaussian } from './helpers/random.js';
import { randn, randnFactors } from './helpers/tensors.js';

beforeAll(async () => {
  await initBackend();
});

/** max |a − b| / max |b|: the error relative to the reference's scale. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

/** An adapter moved off its init, so that every parameter matters. */
function perturbedAdapter(cfg: AdapterConfig, rng: () => number): LpkaAdapter {
  const adapter = new LpkaAdapter(cfg);
  for (const [name, v] of adapter.params) {
    const scale = name.endsWith('/gain') || /\/b[a-z0-9]*$/.test(name) ? 0.3 : 0.1;
    for (let i = 0; i < v.length; i++) v[i] += scale * gaussian(rng);
  }
  return adapter;
}

describe('LPKA kernels match the tfjs reference', () => {
  const cases: { name: string; cfg: AdapterConfig; dims: [number, number, number, number] }[] = [
    { name: 'defaults r 8, small slots', cfg: defaultAdapterConfig(8, { seed: 1, initScale: 1 }), dims: [64, 10, 128, 10] },
    { name: 'r 4, 2 heads, odd token counts', cfg: defaultAdapterConfig(4, { seed: 2, initScale: 1, heads: 2, attnDim: 8, ffnDim: 12 }), dims: [7, 5, 3, 9] },
    { name: 'r 16, 2 heads, 3 layers, single tokens', cfg: defaultAdapterConfig(16, { seed: 3, initScale: 1, heads: 2, attnDim: 16, layers: 3 }), dims: [1, 16, 40, 1] },
    { name: 'r 8, 8 heads, wide FFN', cfg: defaultAdapterConfig(8, { seed: 4, initScale: 0.5, heads: 8, attnDim: 64, ffnDim: 48 }), dims: [200, 24, 150, 30] },
  ];
  for (const { name, cfg, dims } of cases) {
    it(`forward and every gradient within 1e-5 relative: ${name}`, () => {
      const rng = seedrandom(name);
      const [mt, nt, ms, ns] = dims;
      const r = cfg.rank;
      const adapter = perturbedAdapter(cfg, rng);
      const ref = new TfjsReferenceLpka(adapter.config, adapter.exportWeights(), (n) => adapter.paramShape(n)!);
      const target = randnFactors(rng, mt, r, nt);
      const source = randnFactors(rng, ms, r, ns);
      const gA = randn(rng, [mt, r]);
      const gB = randn(rng, [r, nt]);

      const out = adapter.forward(target, source);
      const want = ref.forward(target, source);
      expect(relErr(out.A.dataSync(), want.A.dataSync())).toBeLessThan(1e-5);
      expect(relErr(out.B.dataSync(), want.B.dataSync())).toBeLessThan(1e-5);

      const grads = adapterVjp(adapter, { target, source }, { gA, gB });
      const wantGrads = ref.vjp(target, source, gA, gB);
      expect([...grads.keys()]).toEqual([...adapter.params.keys()]);
      let worst = 0;
      for (const [pname, g] of grads) {
        const w = wantGrads.get(pname)!;
        if (pname.endsWith('/bk')) {
          // softmax ignores a key bias: both gradients are ~0 and their ratio is noise
          expect(Math.max(...g.dataSync().map(Math.abs))).toBeLessThan(1e-4);
          continue;
        }
        const e = relErr(g.dataSync(), w);
        worst = Math.max(worst, e);
        expect(e, pname).toBeLessThan(1e-5);
      }
      console.log(`kernels vs tfjs (${name}): worst gradient relative error ${worst.toExponential(2)}`);
      for (const g of grads.values()) g.dispose();
      tf.dispose([out.A, out.B, want.A, want.B, target.A, target.B, source.A, source.B, gA, gB]);
      ref.dispose();
      adapter.dispose();
    });
  }

  it('runs either engine through the same API, with the same results', () => {
    const rng = seedrandom('engines');
    const cfg = defaultAdapterConfig(8, { seed: 6, initScale: 1 });
    const adapter = perturbedAdapter(cfg, rng);
    const target = randnFactors(rng, 40, 8, 12);
    const source = randnFactors(rng, 30, 8, 20);
    const gA = randn(rng, [40, 8]);
    const gB = randn(rng, [8, 12]);
    const run = (engine: 'kernels' | 'tfjs') => {
      setLpkaEngine(engine);
      expect(lpkaEngineFor(52, 50)).toBe(engine);
      const out = adapter.forward(target, source);
      const vjp = adapterVjp(adapter, { target, source }, { gA, gB });
      const res = { A: out.A.dataSync().slice(), grads: new Map([...vjp].map(([n, g]) => [n, g.dataSync().slice()])) };
      tf.dispose([out.A, out.B, ...vjp.values()]);
      return res;
    };
    try {
      const k = run('kernels');
      const t = run('tfjs');
      expect(relErr(k.A, t.A)).toBeLessThan(1e-5);
      for (const [name, g] of k.grads) if (!name.endsWith('/bk')) expect(relErr(g, t.grads.get(name)!), name).toBeLessThan(1e-5);
    } finally {
      setLpkaEngine('auto');
    }
    expect(lpkaEngineFor(74, 138)).toBe('kernels'); // small slots
    expect(lpkaEngineFor(912, 928)).toBe('kernels'); // 784×128 / 800×128
    expect(lpkaEngineFor(1120, 2148)).toBe('kernels'); // 960×160 / 2048×100
    expect(lpkaEngineFor(4000, 4000)).toBe('tfjs'); // beyond the measured shapes
    tf.dispose([target.A, target.B, source.A, source.B, gA, gB]);
    adapter.dispose();
  });

  it('gives the same gradients whether the backward pass keeps or recomputes the probabilities', () => {
    const rng = seedrandom('keep');
    const cfg = defaultAdapterConfig(8, { seed: 5, initScale: 1 });
    const adapter = perturbedAdapter(cfg, rng);
    const r = cfg.rank;
    const fac = (m: number, n: number) => ({
      A: Float32Array.from({ length: m * r }, () => gaussian(rng)),
      B: Float32Array.from({ length: r * n }, () => gaussian(rng)),
      m,
      n,
    });
    const target = fac(30, 9);
    const source = fac(25, 11);
    const dRows = Float64Array.from({ length: 30 * r }, () => gaussian(rng));
    const dCols = Float64Array.from({ length: 9 * r }, () => gaussian(rng));
    const views = layerViews(cfg.layers, (n) => adapter.params.get(n)!);
    const run = (keep: boolean): Float64Array => {
      const total = new Float64Array(adapter.numParams());
      let offset = 0;
      const byName = new Map<string, Float64Array>();
      for (const [n, v] of adapter.params) {
        byName.set(n, total.subarray(offset, offset + v.length));
        offset += v.length;
      }
      const ws = new Workspace();
      const fw = forwardPass(cfg, views, target, source, ws, keep);
      backwardPass(cfg, views, layerViews(cfg.layers, (n) => byName.get(n)!), fw, dRows, dCols, ws);
      return total;
    };
    const kept = run(true);
    const recomputed = run(false);
    expect(relErr(recomputed, kept)).toBeLessThan(1e-6);
    expect(kept.some((x) => x !== 0)).toBe(true);
    adapter.dispose();
  });
});

describe('tanhApprox (the GELU kernels)', () => {
  it('is within 3e-7 of Math.tanh, odd, and saturates', () => {
    let worst = 0;
    for (let x = -12; x <= 12; x += 1e-3) {
      worst = Math.max(worst, Math.abs(tanhApprox(x) - Math.tanh(x)));
      expect(tanhApprox(-x)).toBe(-tanhApprox(x));
    }
    expect(worst).toBeLessThan(3e-7);
    expect(Math.abs(tanhApprox(1e6) - 1)).toBeLessThan(3e-7);
    expect(tanhApprox(0)).toBe(0);
  });
});
