// LPKA adapter: config validation, exact identity at init, structure (token counts, permutation
// symmetry), and a finite-difference check of the vector-Jacobian product for every parameter.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { beforeAll, describe, expect, it } from 'vitest';
import { adapterConfigSchema, defaultAdapterConfig, parseAdapterConfig } from '../coordinator/adapter/config.js';
import { LpkaAdapter, lpkaParamSpecs } from '../coordinator/adapter/lpka.js';
import { adapterVjp } from '../coordinator/adapter/update.js';
import type { LowRank } from '../shared/math/low-rank.js';
import { initBackend } from '../shared/tf/backend.js';
import { gaussian } from './helpers/random.js';
import { bitsOf, randn, randnFactors } from './helpers/tensors.js';

beforeAll(async () => {
  await initBackend();
});

function setParam(v: Float32Array, values: Float32Array): void {
  v.set(values);
}

describe('adapter config', () => {
  it('has the defaults of docs/DESIGN.md §3 and §5', () => {
    const c = defaultAdapterConfig(8);
    expect(c).toMatchObject({ rank: 8, layers: 2, heads: 4, attnDim: 32, ffnDim: 32, lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, clipNorm: 50 });
    expect(defaultAdapterConfig(5, { ffnDim: 7, seed: 3 })).toMatchObject({ rank: 5, ffnDim: 7, seed: 3 });
  });

  it('rejects bad values with readable messages', () => {
    expect(() => defaultAdapterConfig(0)).toThrow(/rank: rank must be at least 1/);
    expect(() => defaultAdapterConfig(8, { attnDim: 30 })).toThrow(/attnDim: attnDim must be divisible by heads/);
    expect(() => defaultAdapterConfig(8, { beta1: 1 })).toThrow(/beta1 must be in \[0, 1\)/);
    expect(() => defaultAdapterConfig(8, { lr: -1 })).toThrow(/lr must be ≥ 0/);
    expect(() => defaultAdapterConfig(8, { layers: 1.5 })).toThrow(/layers must be an integer/);
    expect(() => parseAdapterConfig({ ...defaultAdapterConfig(4), typo: 1 })).toThrow(/invalid adapter config/);
    expect(adapterConfigSchema.safeParse({ ...defaultAdapterConfig(4), clipNorm: Infinity }).success).toBe(false);
  });
});

describe('LPKA forward', () => {
  it('a fresh adapter is exactly the identity, for any token counts', () => {
    const rng = seedrandom('identity');
    const cases: [number, number, number, number, number][] = [
      // r, m_t, n_t, m_s, n_s
      [4, 7, 5, 3, 9],
      [4, 1, 1, 12, 2],
      [3, 20, 6, 1, 1],
      [8, 33, 17, 40, 11],
    ];
    for (const [r, mt, nt, ms, ns] of cases) {
      const adapter = new LpkaAdapter(defaultAdapterConfig(r, { seed: mt }));
      const target = randnFactors(rng, mt, r, nt);
      const source = randnFactors(rng, ms, r, ns);
      const before = tf.memory().numTensors;
      const out = adapter.forward(target, source);
      expect(tf.memory().numTensors).toBe(before + 2);
      expect(out.A.shape).toEqual([mt, r]);
      expect(out.B.shape).toEqual([r, nt]);
      expect(out.A).not.toBe(target.A);
      expect(bitsOf(out.A)).toEqual(bitsOf(target.A));
      expect(bitsOf(out.B)).toEqual(bitsOf(target.B));
      tf.dispose([out.A, out.B, target.A, target.B, source.A, source.B]);
      adapter.dispose();
    }
  });

  it('is deterministic in its seed and differs across seeds', () => {
    const cfg = defaultAdapterConfig(4, { seed: 11, initScale: 1 });
    const a = new LpkaAdapter(cfg);
    const b = new LpkaAdapter(cfg);
    const c = new LpkaAdapter({ ...cfg, seed: 12 });
    const wa = a.exportWeights();
    const wb = b.exportWeights();
    const wc = c.exportWeights();
    expect([...wa.keys()]).toEqual(lpkaParamSpecs(cfg).map((s) => s.name));
    for (const [name, v] of wa) expect(wb.get(name)).toEqual(v);
    expect(wc.get('layer0/attn_rows_rows/Wq')).not.toEqual(wa.get('layer0/attn_rows_rows/Wq'));
    // zero-initialised output projections unless initScale > 0
    const fresh = new LpkaAdapter(defaultAdapterConfig(4));
    expect([...fresh.exportWeights().get('layer1/attn_cols_rows/Wo')!].every((x) => x === 0)).toBe(true);
    expect([...fresh.exportWeights().get('layer1/ffn_cols/W2')!].every((x) => x === 0)).toBe(true);
    expect([...wa.get('layer1/ffn_cols/W2')!].some((x) => x !== 0)).toBe(true);
    // r=4, attnDim 32, ffnDim 16, 2 layers: (6 LN × 2r + 4 MHA × (3·r·d + 3·d + d·r + r) + 2 FFN × (r·f + f + f·r + r)) per layer
    const perLayer = 6 * 2 * 4 + 4 * (3 * 4 * 32 + 3 * 32 + 32 * 4 + 4) + 2 * (4 * 16 + 16 + 16 * 4 + 4);
    expect(a.numParams()).toBe(2 * perLayer);
    for (const x of [a, b, c, fresh]) x.dispose();
  });

  it('permutes with the target tokens, ignores the order of source tokens, and uses the source', () => {
    const rng = seedrandom('perm');
    const adapter = new LpkaAdapter(defaultAdapterConfig(4, { seed: 5, initScale: 1, attnDim: 8, heads: 2, ffnDim: 8 }));
    const target = randnFactors(rng, 6, 4, 5);
    const source = randnFactors(rng, 7, 4, 3);
    const out = adapter.forward(target, source);
    const permT = [5, 2, 0, 1, 4, 3];
    const permS = [3, 6, 0, 2, 1, 5, 4];
    const tP = { A: tf.gather(target.A, permT), B: target.B } as LowRank;
    const sP = { A: tf.gather(source.A, permS), B: tf.gather(source.B, [2, 0, 1], 1) } as LowRank;
    const out2 = adapter.forward(tP, sP);
    const expectedA = tf.gather(out.A, permT);
    expect(tf.max(tf.abs(tf.sub(out2.A, expectedA))).dataSync()[0]).toBeLessThan(1e-5);
    expect(tf.max(tf.abs(tf.sub(out2.B, out.B))).dataSync()[0]).toBeLessThan(1e-5);
    // the output really depends on the source, and on the target
    const other = randnFactors(rng, 7, 4, 3);
    const out3 = adapter.forward(target, other);
    expect(tf.max(tf.abs(tf.sub(out3.A, out.A))).dataSync()[0]).toBeGreaterThan(1e-3);
    expect(tf.max(tf.abs(tf.sub(out.A, target.A))).dataSync()[0]).toBeGreaterThan(1e-3);
    tf.dispose([out.A, out.B, out2.A, out2.B, out3.A, out3.B, tP.A, sP.A, sP.B, expectedA, target.A, target.B, source.A, source.B, other.A, other.B]);
    adapter.dispose();
  });

  it('rejects factors of the wrong rank with a readable error', () => {
    const adapter = new LpkaAdapter(defaultAdapterConfig(4));
    const t = { A: tf.zeros([5, 4]) as tf.Tensor2D, B: tf.zeros([3, 6]) as tf.Tensor2D };
    const s = { A: tf.zeros([5, 4]) as tf.Tensor2D, B: tf.zeros([4, 6]) as tf.Tensor2D };
    expect(() => adapter.forward(t, s)).toThrow(/target factors must have rank 4.*B \[3, 6\]/);
    expect(() => adapter.forward(s, t)).toThrow(/source factors must have rank 4/);
    adapter.dispose();
    expect(() => adapter.forward(s, s)).toThrow(/disposed/);
    tf.dispose([t.A, t.B, s.A, s.B]);
  });
});

describe('LPKA vector-Jacobian product', () => {
  it('matches central differences for every parameter', () => {
    const rng = seedrandom('fd');
    const cfg = defaultAdapterConfig(3, { heads: 2, attnDim: 4, ffnDim: 6, seed: 7, initScale: 1 });
    const adapter = new LpkaAdapter(cfg);
    // General position: move every parameter off its init (LN gains off 1, biases off 0).
    for (const [name, v] of adapter.params) {
      const scale = name.endsWith('/gain') || /\/b[a-z0-9]*$/.test(name) ? 0.3 : 0.1;
      for (let i = 0; i < v.length; i++) v[i] += scale * gaussian(rng);
    }
    const target = randnFactors(rng, 5, 3, 4);
    const source = randnFactors(rng, 6, 3, 2);
    const gA = randn(rng, [5, 3]);
    const gB = randn(rng, [3, 4]);
    const gAv = gA.dataSync();
    const gBv = gB.dataSync();
    // objective in float64 from the float32 outputs: ⟨A′, gA⟩ + ⟨B′, gB⟩
    const objective = (): number => {
      const out = adapter.forward(target, source);
      const a = out.A.dataSync();
      const b = out.B.dataSync();
      let s = 0;
      for (let i = 0; i < a.length; i++) s += a[i] * gAv[i];
      for (let i = 0; i < b.length; i++) s += b[i] * gBv[i];
      tf.dispose([out.A, out.B]);
      return s;
    };
    const grads = adapterVjp(adapter, { target, source }, { gA, gB });
    expect([...grads.keys()].sort()).toEqual([...adapter.params.keys()].sort());

    const kinds = new Set<string>();
    let worst = 0;
    for (const [name, v] of adapter.params) {
      const p0 = Float32Array.from(v);
      const g = Float64Array.from(grads.get(name)!.dataSync());
      const gNorm = Math.hypot(...g);
      const rand = Array.from(g, () => gaussian(rng));
      const rNorm = Math.hypot(...rand);
      kinds.add(name.split('/').slice(1).join('/').replace(/_(rows|cols)/g, ''));
      if (name.endsWith('/bk')) {
        // A key bias adds q·bk to every score of a query: softmax ignores it, so its gradient is 0,
        // and the finite difference must agree.
        expect(gNorm, `${name} should have no gradient`).toBeLessThan(1e-5);
        setParam(v, p0.map((x, i) => x + 0.1 * rand[i] / rNorm));
        const fPlus = objective();
        setParam(v, p0.map((x, i) => x - 0.1 * rand[i] / rNorm));
        const fMinus = objective();
        setParam(v, p0);
        expect(Math.abs(fPlus - fMinus), name).toBeLessThan(1e-5);
        continue;
      }
      expect(gNorm, `${name} gets no gradient`).toBeGreaterThan(1e-3);
      const directions = [
        rand.map((x) => x / rNorm),
        // a direction with a sizeable derivative, so the relative check is meaningful
        g.map((x, i) => x / gNorm + rand[i] / rNorm),
      ];
      for (const u of directions) {
        const h = 1e-2;
        const plus = p0.map((x, i) => x + h * u[i]);
        const minus = p0.map((x, i) => x - h * u[i]);
        setParam(v, plus);
        const fPlus = objective();
        setParam(v, minus);
        const fMinus = objective();
        // ⟨g, p₊ − p₋⟩ on the float32 points actually evaluated
        let analytic = 0;
        for (let i = 0; i < g.length; i++) analytic += g[i] * (plus[i] - minus[i]);
        const numeric = fPlus - fMinus;
        const err = Math.abs(numeric - analytic) / Math.max(Math.abs(analytic), 2e-2 * h * gNorm);
        worst = Math.max(worst, err);
        expect(err, `${name}: analytic ${analytic}, numeric ${numeric}`).toBeLessThan(1e-2);
      }
      setParam(v, p0);
    }
    // Every kind of parameter was covered.
    expect([...kinds].sort()).toEqual(
      ['attn/Wq', 'attn/Wk', 'attn/Wv', 'attn/Wo', 'attn/bq', 'attn/bk', 'attn/bv', 'attn/bo', 'ffn/W1', 'ffn/W2', 'ffn/b1', 'ffn/b2',
        'ln_ffn/bias', 'ln_ffn/gain', 'ln_query/bias', 'ln_query/gain', 'ln_source/bias', 'ln_source/gain'].sort(),
    );
    console.log(`VJP finite-difference check: ${adapter.params.size} parameters, worst relative error ${worst.toExponential(2)}`);
    for (const gr of grads.values()) gr.dispose();
    tf.dispose([target.A, target.B, source.A, source.B, gA, gB]);
    adapter.dispose();
  });
});
