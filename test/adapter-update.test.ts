// AdamW and the adapter update: a hand-computed step, clipping, lr 0, descent on a synthetic
// objective, input validation, and tensor hygiene over 100 cycles.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdamW, type AdamWConfig } from '../coordinator/adapter/adamw.js';
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { LpkaAdapter } from '../coordinator/adapter/lpka.js';
import { AdapterWithOptimizer, adapterUpdate } from '../coordinator/adapter/update.js';
import { initBackend } from '../shared/tf/backend.js';
import { bitsOfMap, randn, randnFactors } from './helpers/tensors.js';

beforeAll(async () => {
  await initBackend();
});

const ADAM: AdamWConfig = { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, clipNorm: 50 };

describe('AdamW', () => {
  it('matches a hand-computed step on a scalar', () => {
    const p = tf.variable(tf.tensor1d([1]));
    const opt = new AdamW([{ name: 'p', variable: p }], ADAM);
    const g1 = tf.tensor1d([0.5]);
    const r1 = opt.step(new Map([['p', g1]]));
    // m = 0.1·0.5 = 0.05, v = 0.001·0.25 = 0.00025, m̂ = 0.5, √v̂ = 0.5
    // p = 1·(1 − 0.1·0.01) − 0.1·0.5/(0.5 + 1e-8) = 0.999 − 0.1 = 0.899
    expect(r1).toEqual({ gradNorm: 0.5, clipped: false, step: 1 });
    expect(p.dataSync()[0]).toBeCloseTo(0.899, 6);
    // second step with g = −0.2, in float64:
    const g2 = tf.tensor1d([-0.2]);
    opt.step(new Map([['p', g2]]));
    const m = 0.9 * 0.05 + 0.1 * -0.2;
    const v = 0.999 * 0.00025 + 0.001 * 0.04;
    const mHat = m / (1 - 0.9 ** 2);
    const vHat = v / (1 - 0.999 ** 2);
    const expected = 0.899 * (1 - 0.001) - 0.1 * mHat / (Math.sqrt(vHat) + 1e-8);
    expect(p.dataSync()[0]).toBeCloseTo(expected, 6);
    const st = opt.exportState();
    expect(st.step).toBe(2);
    expect(st.m.get('p')![0]).toBeCloseTo(m, 7);
    expect(st.v.get('p')![0]).toBeCloseTo(v, 9);
    tf.dispose([p, g1, g2]);
    opt.dispose();
  });

  it('clips the global gradient norm to clipNorm', () => {
    const a = tf.variable(tf.tensor1d([0.3, -0.2]));
    const b = tf.variable(tf.tensor2d([[1, 2, 3]]));
    const params = [{ name: 'a', variable: a }, { name: 'b', variable: b }];
    const ga = tf.tensor1d([3, 0]);
    const gb = tf.tensor2d([[0, 4, 12]]); // global norm √(9 + 16 + 144) = 13
    const clipped = new AdamW(params, { ...ADAM, clipNorm: 2 });
    const res = clipped.step(new Map<string, tf.Tensor>([['a', ga], ['b', gb]]));
    expect(res.clipped).toBe(true);
    expect(res.gradNorm).toBeCloseTo(13, 5);
    // after one step m = (1 − β1)·g_used, so the gradient actually used is m / 0.1
    const st = clipped.exportState();
    const used = [...st.m.get('a')!, ...st.m.get('b')!].map((x) => x / 0.1);
    expect(Math.hypot(...used)).toBeCloseTo(2, 5);
    expect(used[0] / used[4]).toBeCloseTo(3 / 12, 5); // direction preserved
    clipped.dispose();

    const free = new AdamW(params, { ...ADAM, clipNorm: 50 });
    const res2 = free.step(new Map<string, tf.Tensor>([['a', ga], ['b', gb]]));
    expect(res2.clipped).toBe(false);
    const used2 = [...free.exportState().m.get('b')!].map((x) => x / 0.1);
    expect(used2[2]).toBeCloseTo(12, 4);
    free.dispose();
    tf.dispose([a, b, ga, gb]);
  });

  it('refuses bad gradients without touching its state', () => {
    const p = tf.variable(tf.tensor1d([1, 2]));
    const opt = new AdamW([{ name: 'p', variable: p }], ADAM);
    const bad = tf.tensor1d([1, NaN]);
    expect(() => opt.step(new Map([['p', bad]]))).toThrow(/gradient norm is NaN/);
    const wrong = tf.tensor1d([1, 2, 3]);
    expect(() => opt.step(new Map([['p', wrong]]))).toThrow(/gradient for p has shape \[3\], the parameter has \[2\]/);
    expect(() => opt.step(new Map([['q', wrong]]))).toThrow(/unknown parameter q/);
    expect(opt.stepCount).toBe(0);
    expect([...p.dataSync()]).toEqual([1, 2]);
    expect([...opt.exportState().m.get('p')!]).toEqual([0, 0]);
    expect(() => new AdamW([{ name: 'p', variable: p }], { ...ADAM, beta2: 1 })).toThrow(/beta2 must be in \[0, 1\)/);
    tf.dispose([p, bad, wrong]);
    opt.dispose();
  });
});

describe('adapter update', () => {
  it('with lr 0 leaves every parameter bit-identical (but still counts the step)', () => {
    const rng = seedrandom('lr0');
    const cfg = defaultAdapterConfig(4, { lr: 0, initScale: 1, seed: 3 });
    const aw = AdapterWithOptimizer.create(cfg);
    const input = { target: randnFactors(rng, 9, 4, 6), source: randnFactors(rng, 11, 4, 5) };
    const up = { gA: randn(rng, [9, 4]), gB: randn(rng, [4, 6]) };
    const before = bitsOfMap(aw.adapter.exportWeights());
    const res = aw.update(input, up);
    expect(res.step).toBe(1);
    expect(res.gradNorm).toBeGreaterThan(0);
    expect(bitsOfMap(aw.adapter.exportWeights())).toEqual(before);
    // the moments did move: the step really ran
    expect([...aw.opt.exportState().m.get('layer0/attn_rows_rows/Wq')!].some((x) => x !== 0)).toBe(true);
    tf.dispose([input.target.A, input.target.B, input.source.A, input.source.B, up.gA, up.gB]);
    aw.dispose();
  });

  it('lowers a synthetic objective ½‖A′−A*‖² + ½‖B′−B*‖²', () => {
    const rng = seedrandom('descent');
    const r = 4;
    const aw = AdapterWithOptimizer.create(defaultAdapterConfig(r, { lr: 1e-3, seed: 1 }));
    const target = randnFactors(rng, 12, r, 7);
    const source = randnFactors(rng, 10, r, 9);
    const goal = randnFactors(rng, 12, r, 7);
    const lossAndGrad = (): { loss: number; gA: tf.Tensor2D; gB: tf.Tensor2D } => {
      const out = aw.forward(target, source);
      const gA = tf.sub(out.A, goal.A) as tf.Tensor2D;
      const gB = tf.sub(out.B, goal.B) as tf.Tensor2D;
      const loss = tf.tidy(() => tf.add(tf.sum(tf.square(gA)), tf.sum(tf.square(gB))).mul(0.5).dataSync()[0]);
      tf.dispose([out.A, out.B]);
      return { loss, gA, gB };
    };
    const losses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const { loss, gA, gB } = lossAndGrad();
      losses.push(loss);
      aw.update({ target, source }, { gA, gB });
      tf.dispose([gA, gB]);
    }
    const last = lossAndGrad();
    losses.push(last.loss);
    tf.dispose([last.gA, last.gB]);
    for (let i = 1; i < losses.length; i++) expect(losses[i], `step ${i}: ${losses.join(', ')}`).toBeLessThan(losses[i - 1]);
    tf.dispose([target.A, target.B, source.A, source.B, goal.A, goal.B]);
    aw.dispose();
  });

  it('rejects upstream gradients whose shape does not match A′/B′', () => {
    const rng = seedrandom('shapes');
    const aw = AdapterWithOptimizer.create(defaultAdapterConfig(3));
    const input = { target: randnFactors(rng, 5, 3, 4), source: randnFactors(rng, 6, 3, 2) };
    const gA = randn(rng, [5, 3]);
    const gB = randn(rng, [3, 4]);
    const badA = randn(rng, [3, 5]);
    const badB = randn(rng, [3, 2]);
    const n0 = tf.memory().numTensors;
    expect(() => aw.update(input, { gA: badA, gB })).toThrow(/gA has shape \[3, 5\], but A′ has shape \[5, 3\]/);
    expect(() => aw.update(input, { gA, gB: badB })).toThrow(/gB has shape \[3, 2\], but B′ has shape \[3, 4\]/);
    expect(tf.memory().numTensors).toBe(n0);
    expect(aw.step).toBe(0);
    tf.dispose([input.target.A, input.target.B, input.source.A, input.source.B, gA, gB, badA, badB]);
    aw.dispose();
  });

  it('leaks no tensor over 100 cycles of forward + update', () => {
    const rng = seedrandom('leak');
    const cfg = defaultAdapterConfig(4, { heads: 2, attnDim: 8, seed: 9 });
    const input = { target: randnFactors(rng, 10, 4, 6), source: randnFactors(rng, 8, 4, 7) };
    const up = { gA: randn(rng, [10, 4]), gB: randn(rng, [4, 6]) };
    const baseline = tf.memory().numTensors;
    const adapter = new LpkaAdapter(cfg);
    const opt = new AdamW(adapter.namedParams(), cfg);
    // one warm-up cycle, then measure: the count must not move over 100 cycles
    const warm = adapter.forward(input.target, input.source);
    tf.dispose([warm.A, warm.B]);
    adapterUpdate(adapter, opt, input, up);
    const start = tf.memory();
    for (let i = 0; i < 100; i++) {
      const out = adapter.forward(input.target, input.source);
      tf.dispose([out.A, out.B]);
      adapterUpdate(adapter, opt, input, up);
    }
    const end = tf.memory();
    expect(end.numTensors).toBe(start.numTensors);
    expect(end.numBytes).toBe(start.numBytes);
    expect(opt.stepCount).toBe(101);
    opt.dispose();
    adapter.dispose();
    expect(tf.memory().numTensors).toBe(baseline);
    tf.dispose([input.target.A, input.target.B, input.source.A, input.source.B, up.gA, up.gB]);
  });
});
