// The guard on a tiny deterministic problem: the real device parts (knowledge branch, trainer,
// held-out gradient, slices) and the real TrustGate, in one loop without a network. A source
// trained on plenty of the same task must be taken; a noise source of the same norm refused.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { beforeAll, describe, expect, it } from 'vitest';
import { KnowledgeBranches } from '../client/knowledge-branch.js';
import { slotVariable } from '../client/slot.js';
import { Trainer } from '../client/trainer.js';
import { TrustGate, type GateGuard } from '../coordinator/gate/trust-gate.js';
import { noiseLikeLowRank } from '../coordinator/noise.js';
import { relevanceTrial } from '../coordinator/gate/relevance.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { lowRankSlice } from '../shared/math/slice.js';
import { initBackend } from '../shared/tf/backend.js';

const D = 40;
const C = 10;
const R = 2;

beforeAll(async () => {
  await initBackend('cpu', () => {});
});

/** n examples of C Gaussian clusters in D dimensions (the same means for every call). */
function clusters(n: number, seed: number): { xs: tf.Tensor2D; ys: tf.Tensor2D } {
  const means = seedrandom('means');
  const mu = Array.from({ length: C }, () => Array.from({ length: D }, () => (means() * 2 - 1) * 0.6));
  const rng = seedrandom(`data:${seed}`);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  const x = new Float32Array(n * D);
  const y: number[] = [];
  for (let i = 0; i < n; i++) {
    const c = i % C;
    y.push(c);
    for (let j = 0; j < D; j++) x[i * D + j] = mu[c][j] + gauss();
  }
  return { xs: tf.tensor2d(x, [n, D]), ys: tf.tidy(() => tf.oneHot(tf.tensor1d(y, 'int32'), C).toFloat() as tf.Tensor2D) };
}

/** A softmax classifier: its kernel [D, C] is the slot, its columns the classes both models share. */
function model(seed: number): tf.Sequential {
  return tf.sequential({
    layers: [tf.layers.dense({ units: C, inputShape: [D], activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed }) })],
  });
}

/** The first layer's trained weight of a model that saw plenty of data: the source's knowledge. */
function trainedSourceSlice(): LowRank {
  const m = model(100);
  const t = new Trainer(m, { optimizer: 'adam', lr: 0.01 });
  const { xs, ys } = clusters(800, 1);
  for (let s = 0; s < 200; s++) {
    const i = (s * 32) % 800;
    const bx = xs.slice([i, 0], [32, D]);
    const by = ys.slice([i, 0], [32, C]);
    t.step(bx, by);
    tf.dispose([bx, by]);
  }
  const W = tf.tidy(() => tf.reshape(slotVariable(m, m.layers[0].name), [D, C]) as tf.Tensor2D);
  const slice = lowRankSlice(W, R, { seed: 5 });
  tf.dispose([W, xs, ys]);
  t.dispose();
  m.dispose();
  return slice;
}

/**
 * The gated cycle loop until the guard decides; returns the decision and the gate's value.
 * `source` is a fixed slice, or one per cycle (the coordinator's noise control draws fresh noise
 * at every cycle).
 */
function runGate(sourceAt: LowRank | ((cycle: number) => LowRank), guard: GateGuard): { decision: string; value: number; updates: number } {
  const m = model(7);
  const layer = m.layers[0].name;
  const trainer = new Trainer(m, { optimizer: 'adam', lr: 0.01 });
  const branches = new KnowledgeBranches(m);
  const gate = new TrustGate({ decideAfter: 25, guard });
  const train = clusters(20, 2); // a target with few labels memorises them quickly
  const held = clusters(20, 3);
  const k = 2;
  try {
    for (let cycle = 0; cycle < 60 && gate.decision === 'pending'; cycle++) {
      const source = typeof sourceAt === 'function' ? sourceAt(cycle) : sourceAt;
      const W = branches.weight(layer);
      const own = lowRankSlice(W, R, { seed: cycle });
      W.dispose();
      const g = gate.value;
      const upd = branches.set('p', layer, source, own, 1, g, { keepDelta: true });
      disposeLowRank(own);
      let G: tf.Tensor2D | undefined;
      for (let s = 0; s < k; s++) {
        const grad = trainer.gradientOn(held.xs, held.ys, layer);
        const next = G ? tf.add(G, grad) : grad.clone();
        G?.dispose();
        grad.dispose();
        G = next as tf.Tensor2D;
        trainer.step(train.xs, train.ys);
      }
      const gateGrad = upd.scale * tf.tidy(() => tf.sum(tf.mul(G!, upd.delta!)).dataSync()[0]);
      const sourceGrad = upd.scale * tf.tidy(() => tf.sum(tf.mul(G!, tf.matMul(source.A, source.B))).dataSync()[0]);
      // What the coordinator reads off the feedback's gA = c·G·B′ᵀ (c > 0 cancels).
      const gA = tf.tidy(() => tf.matMul(G!, source.B, false, true).dataSync() as Float32Array);
      const relevance = relevanceTrial({ factor: source.A.dataSync() as Float32Array, grad: gA, r: R, layout: 'columns' }, gate.config.shadows, 77 + cycle);
      tf.dispose([G!, upd.delta!]);
      if (source !== sourceAt) disposeLowRank(source);
      gate.step(gateGrad, g, { trainAcc: trainer.lastBatchAcc, sourceGrad, relevance });
      if (process.env.GATE_DEBUG) console.log(cycle, g.toFixed(4), gateGrad.toFixed(4));
    }
    return { decision: gate.decision, value: gate.value, updates: gate.updates };
  } finally {
    tf.dispose([train.xs, train.ys, held.xs, held.ys]);
    branches.dispose();
    trainer.dispose();
    m.dispose();
  }
}

describe('the trust gate guard on a tiny problem', () => {
  // The coordinator's noise control draws fresh noise at every cycle; 'signtest' (an older option)
  // refuses one fixed noise slice but not that, so it is held to the fixed slice only.
  it.each([
    ['relevance', 'fresh'],
    ['source', 'fresh'],
    ['signtest', 'fixed'],
  ] as const)('%s guard: takes a trained source and refuses a noise source of the same norm (%s noise)', (guard, noise) => {
    const before = tf.memory().numTensors;
    const real = trainedSourceSlice();
    const fixed = noiseLikeLowRank(real, 1234);
    const taken = runGate(real, guard);
    const refused = runGate(noise === 'fixed' ? fixed : (cycle) => noiseLikeLowRank(real, 1234 + cycle), guard);
    disposeLowRank(real);
    disposeLowRank(fixed);
    expect(taken.decision).toBe('accepted');
    expect(taken.value).toBeGreaterThan(new TrustGate().value);
    expect(refused.decision).toBe('refused');
    expect(refused.value).toBe(0);
    expect(refused.updates).toBeLessThanOrEqual(25);
    expect(tf.memory().numTensors).toBe(before);
  });
});
