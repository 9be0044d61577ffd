import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../shared/tf/backend.js';
import { Trainer, type OptimizerName } from '../client/trainer.js';
import { KnowledgeBranches } from '../client/knowledge-branch.js';
import { projectFeedback } from '../client/target/feedback.js';
import { bitDiff, disposeBatch, randomBatch, seededMlp, weightsOf, type Batch } from './helpers/tensors.js';

// ---- helpers (deterministic data and models) ----

/** max|a − b| / max|b|. */
function relErr(a: tf.Tensor, b: tf.Tensor): number {
  const d = a.dataSync();
  const e = b.dataSync();
  expect(d.length).toBe(e.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < d.length; i++) {
    num = Math.max(num, Math.abs(d[i] - e[i]));
    den = Math.max(den, Math.abs(e[i]));
  }
  return num / den;
}

/**
 * An independent rendering of the MLP's loss as a function of the kernel of one layer, written
 * with plain ops (not the layers API nor the trainer's loss), for checking the trainer's G.
 */
function manualLoss(model: tf.LayersModel, xs: tf.Tensor2D, ys: tf.Tensor2D, which: 'h' | 'out', kernel: tf.Tensor2D): tf.Scalar {
  const [W1, b1, W2, b2] = model.trainableWeights.map((w) => w.read());
  const k1 = which === 'h' ? kernel : (W1 as tf.Tensor2D);
  const k2 = which === 'out' ? kernel : (W2 as tf.Tensor2D);
  const hid = tf.relu(tf.add(tf.matMul(xs, k1), b1));
  const p = tf.softmax(tf.add(tf.matMul(hid, k2), b2));
  const ce = tf.neg(tf.sum(tf.mul(ys, tf.log(tf.clipByValue(p, 1e-7, 1 - 1e-7))), -1));
  return tf.mean(ce) as tf.Scalar;
}

function manualGrad(model: tf.LayersModel, batch: Batch, which: 'h' | 'out'): tf.Tensor2D {
  const layerKernel = model.getLayer(which).getWeights()[0] as tf.Tensor2D;
  return tf.tidy(() => tf.grad((k: tf.Tensor) => manualLoss(model, batch.xs, batch.ys, which, k as tf.Tensor2D))(layerKernel)) as tf.Tensor2D;
}

// ---- tests ----

describe('Trainer', () => {
  beforeAll(async () => {
    await initBackend('wasm', () => {});
  });

  afterAll(() => {
    tf.disposeVariables();
  });

  it.each<OptimizerName>(['sgd', 'adam', 'momentum'])(
    'is deterministic: identical models and batches give bit-identical weights (%s)',
    (opt) => {
      const X = seededMlp(11, 20, 16, 5);
      const Y = seededMlp(11, 20, 16, 5);
      expect(bitDiff(weightsOf(X), weightsOf(Y))).toBe(0);
      const tx = new Trainer(X, { optimizer: opt, lr: 0.05 });
      const ty = new Trainer(Y, { optimizer: opt, lr: 0.05 });
      const losses: number[] = [];
      for (let i = 0; i < 30; i++) {
        const b = randomBatch(100 + i, 8, 20, 5);
        const lx = tx.step(b.xs, b.ys);
        const ly = ty.step(b.xs, b.ys);
        expect(ly).toBe(lx);
        losses.push(lx);
        disposeBatch(b);
      }
      // Training actually moved the weights (the comparison is not vacuous).
      const fresh = seededMlp(11, 20, 16, 5);
      expect(bitDiff(weightsOf(X), weightsOf(fresh))).toBeGreaterThan(0);
      expect(bitDiff(weightsOf(X), weightsOf(Y))).toBe(0);
      expect(losses.every(Number.isFinite)).toBe(true);
      tx.dispose();
      ty.dispose();
      for (const m of [X, Y, fresh]) m.dispose();
    },
  );

  it('learns a fixed batch (loss falls)', () => {
    const M = seededMlp(5, 20, 32, 5);
    const t = new Trainer(M, { optimizer: 'adam', lr: 0.01 });
    const b = randomBatch(7, 32, 20, 5);
    const first = t.step(b.xs, b.ys);
    let last = first;
    for (let i = 0; i < 100; i++) last = t.step(b.xs, b.ys);
    expect(last).toBeLessThan(first * 0.5);
    const ev = t.evaluate(b.xs, b.ys, 10);
    expect(ev.accuracy).toBeGreaterThan(0.8);
    expect(Math.abs(ev.loss - last)).toBeLessThan(0.1);
    disposeBatch(b);
    t.dispose();
    M.dispose();
  });

  it('accumulates G = Σ per-step gradients for several layers, counts steps, resets on take', () => {
    const M = seededMlp(21, 12, 10, 4);
    const t = new Trainer(M, { optimizer: 'momentum', lr: 0.1 });
    t.startAccumulating('h');
    t.startAccumulating('out');
    let sumH = tf.zeros([12, 10]) as tf.Tensor2D;
    let sumOut = tf.zeros([10, 4]) as tf.Tensor2D;
    for (let i = 0; i < 6; i++) {
      const b = randomBatch(300 + i, 16, 12, 4);
      const gh = manualGrad(M, b, 'h');
      const go = manualGrad(M, b, 'out');
      const nh = tf.add(sumH, gh) as tf.Tensor2D;
      const no = tf.add(sumOut, go) as tf.Tensor2D;
      tf.dispose([sumH, sumOut, gh, go]);
      sumH = nh;
      sumOut = no;
      t.step(b.xs, b.ys);
      disposeBatch(b);
    }
    const h = t.takeAccumulated('h');
    const o = t.takeAccumulated('out');
    expect(h.steps).toBe(6);
    expect(o.steps).toBe(6);
    expect(h.G.shape).toEqual([12, 10]);
    expect(o.G.shape).toEqual([10, 4]);
    expect(relErr(h.G, sumH)).toBeLessThan(1e-5);
    expect(relErr(o.G, sumOut)).toBeLessThan(1e-5);
    expect(tf.norm(sumH).dataSync()[0]).toBeGreaterThan(1e-3);

    // After a take, the sum restarts at zero.
    const b = randomBatch(400, 16, 12, 4);
    const g1 = manualGrad(M, b, 'out');
    t.step(b.xs, b.ys);
    const o2 = t.takeAccumulated('out');
    expect(o2.steps).toBe(1);
    expect(relErr(o2.G, g1)).toBeLessThan(1e-6);
    const empty = t.takeAccumulated('out');
    expect(empty.steps).toBe(0);
    expect(tf.max(tf.abs(empty.G)).dataSync()[0]).toBe(0);

    t.stopAccumulating('h');
    expect(t.isAccumulating('h')).toBe(false);
    expect(() => t.takeAccumulated('h')).toThrow(/not accumulating/);
    expect(() => t.startAccumulating('nope')).toThrow(/no layer "nope"/);

    tf.dispose([sumH, sumOut, h.G, o.G, o2.G, g1, empty.G]);
    disposeBatch(b);
    t.dispose();
    M.dispose();
  });

  it('G carries no learning-rate or optimiser scaling', () => {
    const b = randomBatch(500, 16, 12, 4);
    const Gs: tf.Tensor2D[] = [];
    for (const [opt, lr] of [
      ['sgd', 0.1],
      ['sgd', 0.01],
      ['adam', 0.001],
      ['momentum', 0.5],
    ] as const) {
      const M = seededMlp(31, 12, 10, 4);
      const t = new Trainer(M, { optimizer: opt, lr });
      t.startAccumulating('h');
      t.step(b.xs, b.ys);
      Gs.push(t.takeAccumulated('h').G);
      t.dispose();
      M.dispose();
    }
    const ref = Gs[0].dataSync();
    expect(tf.norm(Gs[0]).dataSync()[0]).toBeGreaterThan(1e-3);
    for (const G of Gs.slice(1)) {
      const d = G.dataSync();
      expect(bitDiff([Float32Array.from(d as Float32Array)], [Float32Array.from(ref as Float32Array)])).toBe(0);
    }
    tf.dispose(Gs);
    disposeBatch(b);
  });

  it('leaks no tensors over 200 steps with accumulation, branches set every 10 steps and feedback', () => {
    const M = seededMlp(41, 20, 16, 5);
    const t = new Trainer(M, { optimizer: 'adam', lr: 0.01 });
    const kb = new KnowledgeBranches(M);
    const r = 3;
    const gen = { A: tf.randomNormal([20, r], 0, 1, 'float32', 1) as tf.Tensor2D, B: tf.randomNormal([r, 16], 0, 1, 'float32', 2) as tf.Tensor2D };
    const cur = { A: tf.randomNormal([20, r], 0, 0.1, 'float32', 3) as tf.Tensor2D, B: tf.randomNormal([r, 16], 0, 0.1, 'float32', 4) as tf.Tensor2D };
    const batches = Array.from({ length: 10 }, (_, i) => randomBatch(600 + i, 8, 20, 5));
    t.startAccumulating('h');
    t.startAccumulating('out');
    const cycle = (i: number): void => {
      const b = batches[i % batches.length];
      t.step(b.xs, b.ys);
      if (i % 10 === 9) {
        const { G } = t.takeAccumulated('h');
        const s = kb.scaleOf('p1') ?? 1;
        const fb = projectFeedback(G, gen, s);
        tf.dispose([G, fb.gA, fb.gB]);
        tf.dispose(t.takeAccumulated('out').G);
        kb.set('p1', 'h', gen, cur, 0.3);
        kb.set('p2', 'h', cur, gen, 0.3);
        kb.weight('h').dispose();
        kb.branch('p1')?.dispose();
      }
    };
    // Warm-up: the optimiser creates its state and the first branches appear.
    for (let i = 0; i < 10; i++) cycle(i);
    const before = tf.memory().numTensors;
    for (let i = 10; i < 210; i++) cycle(i);
    expect(tf.memory().numTensors).toBe(before);
    kb.remove('p1');
    kb.remove('p2');
    kb.dispose();
    t.dispose();
    batches.forEach(disposeBatch);
    tf.dispose([gen.A, gen.B, cur.A, cur.B]);
    M.dispose();
  });

  it('rejects bad options', () => {
    const M = seededMlp(1, 4, 3, 2);
    expect(() => new Trainer(M, { optimizer: 'rmsprop' as OptimizerName, lr: 0.1 })).toThrow(/unknown optimizer/);
    expect(() => new Trainer(M, { optimizer: 'sgd', lr: NaN })).toThrow(/learning rate/);
    const t = new Trainer(M, { optimizer: 'sgd', lr: 0.1 });
    t.dispose();
    const b = randomBatch(1, 2, 4, 2);
    expect(() => t.step(b.xs, b.ys)).toThrow(/disposed/);
    disposeBatch(b);
    M.dispose();
  });

  // Speed is measured by `npm run bench`, not asserted here: a rate threshold fails on a loaded
  // machine and passes on a broken one.
  it('trains a full-size MLP 784-256-10 (batch 32) with accumulation: loss falls, G sums every step, no tensor leaks', () => {
    const M = seededMlp(51, 784, 256, 10);
    const t = new Trainer(M, { optimizer: 'adam', lr: 0.001 });
    const batches = Array.from({ length: 4 }, (_, i) => randomBatch(700 + i, 32, 784, 10));
    t.step(batches[0].xs, batches[0].ys); // optimiser slots are created on the first step
    const before = tf.memory().numTensors;
    t.startAccumulating('h');
    const losses: number[] = [];
    const n = 40;
    for (let i = 0; i < n; i++) losses.push(t.step(batches[i % 4].xs, batches[i % 4].ys));
    expect(losses.every(Number.isFinite)).toBe(true);
    // four fixed batches, memorised: the loss must fall well below its start
    expect(losses.at(-1)!).toBeLessThan(0.5 * losses[0]);
    const acc = t.takeAccumulated('h');
    expect(acc.steps).toBe(n);
    expect(acc.G.shape).toEqual([784, 256]);
    acc.G.dispose();
    expect(tf.memory().numTensors).toBe(before);
    batches.forEach(disposeBatch);
    t.dispose();
    M.dispose();
  });
});
