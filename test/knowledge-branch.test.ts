import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../shared/tf/backend.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { DEFAULT_TAU, KnowledgeBranches } from '../client/knowledge-branch.js';
import { Trainer } from '../client/trainer.js';
import { projectFeedback } from '../client/target/feedback.js';
import { bitDiff, disposeBatch, kernelValues, randomBatch, seededMlp, weightsOf } from './helpers/tensors.js';

// ---- helpers ----

function factors(m: number, r: number, n: number, seed: number, std = 1): LowRank {
  return {
    A: tf.randomNormal([m, r], 0, std, 'float32', seed) as tf.Tensor2D,
    B: tf.randomNormal([r, n], 0, std, 'float32', seed + 1) as tf.Tensor2D,
  };
}

/** The kernel of a layer, as the model computes with it (W_eff), copied. */
function kernelOf(model: tf.LayersModel, layer: string): tf.Tensor {
  return model.getLayer(layer).getWeights()[0].clone();
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(tf.reshape(a, [-1]), tf.reshape(b, [-1])))).dataSync()[0]);
}

function fro(t: tf.Tensor): number {
  return tf.tidy(() => tf.norm(t).dataSync()[0]);
}

/** ‖a − b‖_F / ‖b‖_F */
function relFro(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.norm(tf.sub(a, b)).dataSync()[0] / tf.norm(b).dataSync()[0]);
}

function lowRankDiff(gen: LowRank, cur: LowRank): tf.Tensor2D {
  return tf.tidy(() => tf.sub(tf.matMul(gen.A, gen.B), tf.matMul(cur.A, cur.B))) as tf.Tensor2D;
}

// ---- tests ----

describe('KnowledgeBranches', () => {
  beforeAll(async () => {
    await initBackend('wasm', () => {});
  });

  afterAll(() => {
    tf.disposeVariables();
  });

  it('caps a huge difference at τ‖W‖ and leaves a tiny one unscaled', () => {
    const M = seededMlp(1, 12, 8, 3);
    const kb = new KnowledgeBranches(M);
    const W0 = kernelOf(M, 'h');
    const cur = factors(12, 3, 8, 10, 0.3);

    for (const tau of [0.5, 0.2]) {
      const huge = factors(12, 3, 8, 20, 30);
      const res = kb.set('big', 'h', huge, cur, tau);
      const K = kb.branch('big')!;
      expect(res.scale).toBeLessThan(1);
      expect(kb.scaleOf('big')).toBe(res.scale);
      expect(Math.abs(res.weightNorm - fro(W0)) / fro(W0)).toBeLessThan(1e-6);
      expect(Math.abs(fro(K) - tau * fro(W0)) / (tau * fro(W0))).toBeLessThan(1e-5);
      expect(Math.abs(res.branchNorm - fro(K)) / fro(K)).toBeLessThan(1e-5);
      // K is s·D: the direction of D is kept.
      const D = lowRankDiff(huge, cur);
      expect(relFro(K, tf.mul(D, res.scale))).toBeLessThan(1e-6);
      // The model computes with W_eff = W + K.
      expect(maxAbsDiff(kernelOf(M, 'h'), tf.add(W0, K))).toBeLessThan(1e-6);
      tf.dispose([K, D]);
      disposeLowRank(huge);
    }

    const tiny = { A: tf.add(cur.A, 1e-3) as tf.Tensor2D, B: cur.B.clone() };
    const res = kb.set('big', 'h', tiny, cur, DEFAULT_TAU, 1, { keepDelta: true });
    const D = lowRankDiff(tiny, cur);
    const K = kb.branch('big')!;
    expect(fro(D)).toBeGreaterThan(0);
    expect(res.scale).toBe(1);
    // Unscaled: K is the branch's own D bit for bit. That D equals tf.sub of two tf.matMul up to the
    // order of float32 summation (the device gemm's products sum in another order than tfjs').
    expect(maxAbsDiff(K, res.delta!)).toBe(0);
    expect(maxAbsDiff(res.delta!, D)).toBeLessThan(1e-6);
    expect(maxAbsDiff(kernelOf(M, 'h'), tf.add(W0, D))).toBeLessThan(1e-6);
    expect(maxAbsDiff(kb.weight('h'), W0)).toBeLessThan(1e-6);

    tf.dispose([W0, D, K, res.delta!]);
    disposeLowRank(tiny);
    disposeLowRank(cur);
    kb.dispose();
    M.dispose();
  });

  it('sums several pairs on one slot, replaces only the re-set pair, and never moves W', () => {
    const M = seededMlp(2, 12, 8, 3);
    const kb = new KnowledgeBranches(M);
    const W0 = kernelOf(M, 'h');
    const cur = factors(12, 2, 8, 30, 0.3);
    const g1 = factors(12, 2, 8, 40, 0.5);
    const g2 = factors(12, 2, 8, 50, 10); // capped
    const g1b = factors(12, 2, 8, 60, 0.4);

    const r1 = kb.set('p1', 'h', g1, cur);
    const r2 = kb.set('p2', 'h', g2, cur);
    expect(r2.scale).toBeLessThan(1);
    // The cap of p2 is relative to W alone, not to W + K1.
    expect(Math.abs(r2.weightNorm - r1.weightNorm) / r1.weightNorm).toBeLessThan(1e-6);
    expect(Math.abs(r2.branchNorm - 0.5 * fro(W0)) / (0.5 * fro(W0))).toBeLessThan(1e-5);
    const K1 = kb.branch('p1')!;
    const K2 = kb.branch('p2')!;
    expect(fro(K1)).toBeGreaterThan(0);
    expect(maxAbsDiff(kernelOf(M, 'h'), tf.add(tf.add(W0, K1), K2))).toBeLessThan(1e-6);
    expect(maxAbsDiff(kb.weight('h'), W0)).toBeLessThan(1e-6);
    expect(kb.layers()).toEqual(['h']);

    kb.set('p1', 'h', g1b, cur);
    const K1b = kb.branch('p1')!;
    const K2after = kb.branch('p2')!;
    expect(maxAbsDiff(K2after, K2)).toBe(0);
    expect(maxAbsDiff(K1b, K1)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(kernelOf(M, 'h'), tf.add(tf.add(W0, K1b), K2))).toBeLessThan(1e-6);
    expect(maxAbsDiff(kb.weight('h'), W0)).toBeLessThan(1e-6);

    expect(kb.remove('p1')).toBe(true);
    expect(kb.branch('p1')).toBeUndefined();
    expect(maxAbsDiff(kernelOf(M, 'h'), tf.add(W0, K2))).toBeLessThan(1e-6);
    expect(maxAbsDiff(kb.weight('h'), W0)).toBeLessThan(1e-6);
    expect(kb.remove('p2')).toBe(true);
    expect(kb.remove('p2')).toBe(false);
    expect(maxAbsDiff(kernelOf(M, 'h'), W0)).toBeLessThan(1e-6);
    expect(kb.layers()).toEqual([]);

    // The other layer was never touched.
    tf.dispose([W0, K1, K2, K1b, K2after]);
    [cur, g1, g2, g1b].forEach(disposeLowRank);
    kb.dispose();
    M.dispose();
  });

  it('an identity adapter (generated == current) gives K = 0 exactly and a bit-identical kernel', () => {
    const M = seededMlp(3, 12, 8, 3);
    const kb = new KnowledgeBranches(M);
    const before = kernelValues(M, 'h');
    const cur = factors(12, 3, 8, 70, 0.3);
    const same = { A: cur.A.clone(), B: cur.B.clone() };
    const res = kb.set('p', 'h', same, cur);
    expect(res.scale).toBe(1);
    expect(res.branchNorm).toBe(0);
    const K = kb.branch('p')!;
    expect(Array.from(K.dataSync()).every((v) => v === 0)).toBe(true);
    expect(bitDiff([kernelValues(M, 'h')], [before])).toBe(0);
    kb.set('p', 'h', cur, cur);
    expect(bitDiff([kernelValues(M, 'h')], [before])).toBe(0);
    kb.remove('p');
    expect(bitDiff([kernelValues(M, 'h')], [before])).toBe(0);

    // After a real branch, an identity transfer replaces it with 0 and so restores W.
    const W0 = kernelOf(M, 'h');
    const g = factors(12, 3, 8, 80, 0.5);
    kb.set('p', 'h', g, cur);
    expect(maxAbsDiff(kernelOf(M, 'h'), W0)).toBeGreaterThan(1e-3);
    kb.set('p', 'h', same, cur);
    expect(maxAbsDiff(kernelOf(M, 'h'), W0)).toBeLessThan(1e-6);
    tf.dispose([K, W0]);
    [cur, same, g].forEach(disposeLowRank);
    kb.dispose();
    M.dispose();
  });

  it('training with identity transfers and accumulation on is bit-identical to training alone', () => {
    const X = seededMlp(4, 20, 16, 5);
    const Y = seededMlp(4, 20, 16, 5);
    const Z = seededMlp(4, 20, 16, 5); // control: a real transfer must change the result
    expect(bitDiff(weightsOf(X), weightsOf(Y))).toBe(0);
    const tx = new Trainer(X, { optimizer: 'adam', lr: 0.01 });
    const ty = new Trainer(Y, { optimizer: 'adam', lr: 0.01 });
    const tz = new Trainer(Z, { optimizer: 'adam', lr: 0.01 });
    const ky = new KnowledgeBranches(Y);
    const kz = new KnowledgeBranches(Z);
    ty.startAccumulating('h');
    ty.startAccumulating('out');
    const r = 3;
    for (let i = 0; i < 40; i++) {
      if (i % 5 === 0) {
        // "current" is a rank-r view of W (its first r columns, placed by a selector); the
        // adapter returns it unchanged.
        const W = ky.weight('h');
        const cur: LowRank = {
          A: tf.slice(W, [0, 0], [20, r]),
          B: tf.slice(tf.eye(16), [0, 0], [r, 16]) as tf.Tensor2D,
        };
        const gen: LowRank = { A: cur.A.clone(), B: cur.B.clone() };
        ky.set('p', 'h', gen, cur);
        const { G } = ty.takeAccumulated('h');
        const fb = projectFeedback(G, gen, ky.scaleOf('p')!);
        tf.dispose([W, G, fb.gA, fb.gB]);
        if (i === 20) {
          const noise = factors(20, r, 16, 90, 0.2);
          kz.set('p', 'h', noise, cur);
          disposeLowRank(noise);
        }
        [cur, gen].forEach(disposeLowRank);
      }
      const b = randomBatch(800 + i, 8, 20, 5);
      tx.step(b.xs, b.ys);
      ty.step(b.xs, b.ys);
      tz.step(b.xs, b.ys);
      disposeBatch(b);
    }
    expect(bitDiff(weightsOf(X), weightsOf(Y))).toBe(0);
    expect(bitDiff(weightsOf(X), weightsOf(Z))).toBeGreaterThan(0);
    [tx, ty, tz].forEach((t) => t.dispose());
    ky.dispose();
    kz.dispose();
    [X, Y, Z].forEach((m) => m.dispose());
  });

  it('projectFeedback equals the autodiff gradient w.r.t. A′ and B′ (and a finite difference)', () => {
    const M = seededMlp(5, 10, 12, 4);
    const kb = new KnowledgeBranches(M);
    const t = new Trainer(M, { optimizer: 'sgd', lr: 0.1 });
    const cur = factors(10, 3, 12, 100, 0.4);
    const gen = factors(10, 3, 12, 110, 2);
    const { scale } = kb.set('p', 'h', gen, cur, 0.5);
    expect(scale).toBeLessThan(1); // a real cap factor, so s must appear in the result
    const batch = randomBatch(900, 24, 10, 4);

    // Everything the loss depends on, read before the step moves the weights.
    const W = kb.weight('h');
    const [, b1, W2, b2] = M.trainableWeights.map((w) => w.read().clone());
    const lossOf = (A: tf.Tensor2D, B: tf.Tensor2D): tf.Scalar => {
      const Weff = tf.add(W, tf.mul(tf.sub(tf.matMul(A, B), tf.matMul(cur.A, cur.B)), scale)) as tf.Tensor2D;
      const hid = tf.relu(tf.add(tf.matMul(batch.xs, Weff), b1));
      const p = tf.softmax(tf.add(tf.matMul(hid, W2 as tf.Tensor2D), b2));
      const ce = tf.neg(tf.sum(tf.mul(batch.ys, tf.log(tf.clipByValue(p, 1e-7, 1 - 1e-7))), -1));
      return tf.mean(ce) as tf.Scalar;
    };
    const [dA, dB] = tf.grads((A: tf.Tensor, B: tf.Tensor) => lossOf(A as tf.Tensor2D, B as tf.Tensor2D))([gen.A, gen.B]);

    t.startAccumulating('h');
    const stepLoss = t.step(batch.xs, batch.ys);
    const { G, steps } = t.takeAccumulated('h');
    expect(steps).toBe(1);
    expect(Math.abs(stepLoss - lossOf(gen.A, gen.B).dataSync()[0])).toBeLessThan(1e-5);
    const fb = projectFeedback(G, gen, scale);
    expect(fb.gA.shape).toEqual([10, 3]);
    expect(fb.gB.shape).toEqual([3, 12]);
    expect(fro(dA)).toBeGreaterThan(1e-4);
    expect(relFro(fb.gA, dA)).toBeLessThan(1e-4);
    expect(relFro(fb.gB, dB)).toBeLessThan(1e-4);

    // Directional central difference along a random direction, in float32.
    const uA = tf.randomNormal([10, 3], 0, 1, 'float32', 120) as tf.Tensor2D;
    const uB = tf.randomNormal([3, 12], 0, 1, 'float32', 121) as tf.Tensor2D;
    const eps = 1e-2;
    const at = (e: number): number =>
      tf.tidy(() => lossOf(tf.add(gen.A, tf.mul(uA, e)) as tf.Tensor2D, tf.add(gen.B, tf.mul(uB, e)) as tf.Tensor2D).dataSync()[0]);
    const fd = (at(eps) - at(-eps)) / (2 * eps);
    const analytic = tf.tidy(() => tf.add(tf.sum(tf.mul(fb.gA, uA)), tf.sum(tf.mul(fb.gB, uB))).dataSync()[0]);
    expect(Math.abs(analytic)).toBeGreaterThan(1e-3);
    expect(Math.abs(fd - analytic) / Math.abs(analytic)).toBeLessThan(1e-2);

    tf.dispose([W, b1, W2, b2, dA, dB, G, fb.gA, fb.gB, uA, uB]);
    [cur, gen].forEach(disposeLowRank);
    disposeBatch(batch);
    t.dispose();
    kb.dispose();
    M.dispose();
  });

  it('works on a conv kernel viewed as [kh·kw·cin, cout]', () => {
    const m = tf.sequential();
    m.add(tf.layers.conv2d({ name: 'c', inputShape: [6, 6, 2], filters: 4, kernelSize: 3, kernelInitializer: tf.initializers.glorotUniform({ seed: 9 }) }));
    const kb = new KnowledgeBranches(m);
    const W0 = kernelOf(m, 'c');
    expect(W0.shape).toEqual([3, 3, 2, 4]);
    const cur = factors(18, 2, 4, 130, 0.2);
    const gen = factors(18, 2, 4, 140, 0.3);
    kb.set('p', 'c', gen, cur);
    const K = kb.branch('p')!;
    expect(K.shape).toEqual([18, 4]);
    const W = kb.weight('c');
    expect(W.shape).toEqual([18, 4]);
    expect(maxAbsDiff(W, W0)).toBeLessThan(1e-6);
    // Row i of the slot is flat index i of (kh, kw, cin): the same layout as reshape.
    expect(maxAbsDiff(kernelOf(m, 'c'), tf.add(tf.reshape(W0, [18, 4]), K))).toBeLessThan(1e-6);
    tf.dispose([W0, K, W]);
    [cur, gen].forEach(disposeLowRank);
    kb.dispose();
    m.dispose();
  });

  it('rejects factors that do not fit the slot, with readable errors', () => {
    const M = seededMlp(6, 12, 8, 3);
    const kb = new KnowledgeBranches(M);
    const cur = factors(12, 3, 8, 150);
    const wrongM = factors(11, 3, 8, 160);
    const wrongN = factors(12, 3, 7, 170);
    const wrongR = { A: tf.zeros([12, 3]) as tf.Tensor2D, B: tf.zeros([2, 8]) as tf.Tensor2D };
    const nan = { A: tf.fill([12, 3], NaN) as tf.Tensor2D, B: cur.B.clone() };
    const before = kernelValues(M, 'h');
    expect(() => kb.set('p', 'h', wrongM, cur)).toThrow(/do not fit slot "h" of shape \[12, 8\]/);
    expect(() => kb.set('p', 'h', wrongN, cur)).toThrow(/generated/);
    expect(() => kb.set('p', 'h', cur, wrongR)).toThrow(/current slice/);
    expect(() => kb.set('p', 'nope', cur, cur)).toThrow(/no layer "nope"/);
    expect(() => kb.set('p', 'h', cur, cur, 0)).toThrow(/tau/);
    expect(() => kb.set('p', 'h', nan, cur)).toThrow(/not finite/);
    expect(bitDiff([kernelValues(M, 'h')], [before])).toBe(0);
    expect(kb.pairs()).toEqual([]);
    kb.set('p', 'h', cur, cur);
    expect(() => kb.set('p', 'out', factors(8, 3, 3, 1), factors(8, 3, 3, 2))).toThrow(/already has a branch on layer "h"/);
    expect(() => projectFeedback(tf.zeros([12, 8]) as tf.Tensor2D, wrongN, 1)).toThrow(/do not fit G/);
    [cur, wrongM, wrongN, wrongR, nan].forEach(disposeLowRank);
    kb.dispose();
    M.dispose();
  });
  it('counts writes of W itself (writeWeight, its undo, keeping a non-zero branch), not transfers', () => {
    const M = seededMlp(6, 12, 8, 5);
    const kb = new KnowledgeBranches(M);
    const cur = factors(12, 3, 8, 180);
    const gen = factors(12, 3, 8, 190);
    kb.set('p', 'h', gen, cur);
    kb.set('q', 'h', cur, cur); // zero branch
    kb.remove('q');
    expect(kb.weightWrites).toBe(0);
    const D = tf.zeros([12, 8]) as tf.Tensor2D;
    const w = kb.writeWeight('h', D);
    expect(kb.weightWrites).toBe(1);
    w.undo();
    expect(kb.weightWrites).toBe(2);
    kb.set('q', 'h', cur, cur);
    kb.keep('q'); // zero: W unchanged
    expect(kb.weightWrites).toBe(2);
    kb.keep('p');
    expect(kb.weightWrites).toBe(3);
    [cur, gen].forEach(disposeLowRank);
    D.dispose();
    kb.dispose();
    M.dispose();
  });
});
