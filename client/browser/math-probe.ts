// The device math of one cycle for a given weight, as a pure function of a seed: the slice the
// device sends (shared/math/slice.ts), the knowledge branch a transfer builds (client/knowledge-branch.ts)
// and the feedback it sends back (the trainer's gradient at W_eff, projected by
// client/target/feedback.ts). The same module runs in Node and in the browser bundle; the browser
// test (test/device-browser.test.ts) runs both on the same backend and compares them.
//
// Isomorphic: it imports nothing from Node (and nothing of the DOM).
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import type { LowRank } from '../../shared/math/low-rank.js';
import { disposeLowRank } from '../../shared/math/low-rank.js';
import { lowRankSlice } from '../../shared/math/slice.js';
import { KnowledgeBranches } from '../knowledge-branch.js';
import { buildModel } from '../models/mnist-models.js';
import { projectFeedback } from '../target/feedback.js';
import { Trainer } from '../trainer.js';

export interface MathProbeInput {
  /** dense_0 is inputs × hidden: the slot the probe works on */
  inputs: number;
  hidden: number;
  classes: number;
  rank: number;
  seed: number;
  tau: number;
  gate: number;
  /** examples in the seeded batch the gradient G is taken on */
  batch: number;
}

export const DEFAULT_MATH_PROBE: MathProbeInput = { inputs: 784, hidden: 64, classes: 10, rank: 8, seed: 7, tau: 0.5, gate: 0.8, batch: 32 };

/** Float32 values as plain numbers (exact: every float32 is a double), so JSON carries them bit for bit. */
export interface MathProbeOutput {
  backend: string;
  /** the slice of W (what `slice` carries) */
  A: number[];
  B: number[];
  /** the branch K = s·g·(A′B′ − AB) and its figures */
  K: number[];
  scale: number;
  deltaNorm: number;
  weightNorm: number;
  /** G = ∂loss/∂W_eff on the seeded batch, and the feedback gA = s·g·G·B′ᵀ, gB = s·g·A′ᵀ·G */
  G: number[];
  gA: number[];
  gB: number[];
  gateGrad: number;
}

function seededArray(n: number, rng: () => number, amp: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rng() - 0.5) * 2 * amp;
  return out;
}

const values = (t: tf.Tensor): number[] => Array.from(t.dataSync());

/** One cycle's device math on the current tfjs backend; frees every tensor it makes. */
export function mathProbe(input: MathProbeInput = DEFAULT_MATH_PROBE): MathProbeOutput {
  const { inputs, hidden, classes, rank, seed, tau, gate, batch } = input;
  const model = buildModel({ kind: 'mlp', inputShape: [inputs], hidden: [hidden], classes }, seed);
  const branches = new KnowledgeBranches(model);
  const trainer = new Trainer(model, { optimizer: 'sgd', lr: 0.01 });
  let slice: LowRank | undefined;
  let generated: LowRank | undefined;
  try {
    const W = branches.weight('dense_0');
    try {
      slice = lowRankSlice(W, rank, { seed });
    } finally {
      W.dispose();
    }
    // What an adapter would send back: the slice moved by seeded noise of a tenth of its scale.
    const rng = seedrandom(`mathProbe:${seed}`);
    const sA = slice.A;
    const sB = slice.B;
    const ampA = tf.tidy(() => tf.max(tf.abs(sA)).dataSync()[0]) * 0.1;
    const ampB = tf.tidy(() => tf.max(tf.abs(sB)).dataSync()[0]) * 0.1;
    generated = tf.tidy(() => ({
      A: tf.add(sA, tf.tensor2d(seededArray(sA.size, rng, ampA), sA.shape as [number, number])) as tf.Tensor2D,
      B: tf.add(sB, tf.tensor2d(seededArray(sB.size, rng, ampB), sB.shape as [number, number])) as tf.Tensor2D,
    }));
    const upd = branches.set('probe', 'dense_0', generated, slice, tau, gate, { keepDelta: true });
    const delta = upd.delta!;
    const K = branches.branch('probe')!;
    // G on a seeded batch at W_eff = W + K, as a target's feedback window sums it.
    const xs = tf.tensor2d(seededArray(batch * inputs, rng, 0.5).map((v) => v + 0.5), [batch, inputs]);
    const labels = Array.from({ length: batch }, () => Math.floor(rng() * classes));
    const ys = tf.tidy(() => tf.oneHot(tf.tensor1d(labels, 'int32'), classes).toFloat());
    const G = trainer.gradientOn(xs, ys, 'dense_0');
    const fb = projectFeedback(G, generated, upd.scale * gate);
    const gateGrad = upd.scale * tf.tidy(() => tf.sum(tf.mul(G, delta)).dataSync()[0]);
    const out: MathProbeOutput = {
      backend: tf.getBackend(),
      A: values(slice.A),
      B: values(slice.B),
      K: values(K),
      scale: upd.scale,
      deltaNorm: upd.deltaNorm,
      weightNorm: upd.weightNorm,
      G: values(G),
      gA: values(fb.gA),
      gB: values(fb.gB),
      gateGrad,
    };
    tf.dispose([delta, K, xs, ys, G, fb.gA, fb.gB]);
    return out;
  } finally {
    if (slice) disposeLowRank(slice);
    if (generated) disposeLowRank(generated);
    branches.dispose();
    trainer.dispose();
    model.dispose();
  }
}
