// Tensor fixtures for tests: seeded batches, factors and models, and bit-level comparisons.
// Every function that returns tensors leaves them to the caller to dispose.
import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import type { LowRank } from '../../shared/math/low-rank.js';
import { gaussian, mulberry32, uniformFrom } from './random.js';

export interface Batch {
  xs: tf.Tensor2D;
  ys: tf.Tensor2D;
}

/** `batch` inputs uniform in [−1, 1) and random one-hot labels, from mulberry32(seed). */
export function randomBatch(seed: number, batch: number, inDim: number, classes: number): Batch {
  const rnd = mulberry32(seed);
  const x = uniformFrom(rnd, batch * inDim);
  const y = new Float32Array(batch * classes);
  for (let b = 0; b < batch; b++) y[b * classes + Math.floor(rnd() * classes)] = 1;
  return { xs: tf.tensor2d(x, [batch, inDim]), ys: tf.tensor2d(y, [batch, classes]) };
}

export function disposeBatch(b: Batch): void {
  b.xs.dispose();
  b.ys.dispose();
}

/** MLP in → hidden (relu, "h") → classes (softmax, "out"), seeded initialisers. */
export function seededMlp(seed: number, inDim: number, hidden: number, classes: number): tf.Sequential {
  const m = tf.sequential();
  m.add(
    tf.layers.dense({
      name: 'h',
      inputShape: [inDim],
      units: hidden,
      activation: 'relu',
      kernelInitializer: tf.initializers.glorotUniform({ seed }),
      biasInitializer: tf.initializers.randomNormal({ seed: seed + 1, stddev: 0.1 }),
    }),
  );
  m.add(
    tf.layers.dense({
      name: 'out',
      units: classes,
      activation: 'softmax',
      kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 2 }),
      biasInitializer: tf.initializers.randomNormal({ seed: seed + 3, stddev: 0.1 }),
    }),
  );
  return m;
}

/** A [rows, cols] matrix of standard normal draws from rng. */
export function randn(rng: () => number, shape: [number, number]): tf.Tensor2D {
  const v = new Float32Array(shape[0] * shape[1]);
  for (let i = 0; i < v.length; i++) v[i] = gaussian(rng);
  return tf.tensor2d(v, shape);
}

/** Factors A: [m, r], B: [r, n] of standard normal draws from rng (A first). */
export function randnFactors(rng: () => number, m: number, r: number, n: number): LowRank {
  return { A: randn(rng, [m, r]), B: randn(rng, [r, n]) };
}

/** Copies of the model's trainable weights, in order. */
export function weightsOf(model: tf.LayersModel): Float32Array[] {
  return model.trainableWeights.map((w) => Float32Array.from(w.read().dataSync() as Float32Array));
}

/** A copy of the values of layer `layer`'s kernel. */
export function kernelValues(model: tf.LayersModel, layer: string): Float32Array {
  return Float32Array.from(model.getLayer(layer).getWeights()[0].dataSync() as Float32Array);
}

/** The bit patterns of float32 values (copied, so later writes to the source do not show). */
export function bitsOf(values: Float32Array | tf.Tensor): Uint32Array {
  const f = values instanceof Float32Array ? values : (values.dataSync() as Float32Array);
  return new Uint32Array(Float32Array.from(f).buffer);
}

export function bitsOfMap(m: Map<string, Float32Array>): Map<string, Uint32Array> {
  return new Map([...m].map(([k, v]) => [k, bitsOf(v)]));
}

/** Count of float32 entries whose bit patterns differ (the arrays must match in number and length). */
export function bitDiff(a: Float32Array[], b: Float32Array[]): number {
  let diff = 0;
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) {
    expect(a[i].length).toBe(b[i].length);
    const ua = new Uint32Array(a[i].buffer, a[i].byteOffset, a[i].length);
    const ub = new Uint32Array(b[i].buffer, b[i].byteOffset, b[i].length);
    for (let j = 0; j < ua.length; j++) if (ua[j] !== ub[j]) diff++;
  }
  return diff;
}
