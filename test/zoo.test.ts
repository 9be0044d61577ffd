// The device zoo's models: built from (spec, data, seed) with the right shapes and stable layer
// names, identical for the same seed, and each text/tabular model TRAINS on the wasm backend to
// well above the majority-class rate of its test split.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import { batchIterator, evaluateAccuracy, type Split } from '../client/data/dataset.js';
import { loadDeviceData, type DatasetSpec } from '../client/data/registry.js';
import { buildModelFor, modelDatasetMismatch, type ModelSpec } from '../client/models/registry.js';
import { categoricalCrossEntropyOnProbs } from '../client/trainer.js';

beforeAll(async () => {
  await initBackend('wasm');
});

function majorityRate(s: Split): number {
  const c = new Array<number>(s.numClasses).fill(0);
  for (const v of s.y) c[v]++;
  return Math.max(...c) / s.n;
}

function weightsOf(m: tf.LayersModel): Float32Array[] {
  return m.getWeights().map((w) => w.dataSync() as Float32Array);
}

/** Adam on minibatch cross-entropy for `steps` steps; returns steps per second. */
function train(model: tf.LayersModel, train: Split, steps: number, lr: number, seed: number): number {
  const opt = tf.train.adam(lr);
  const batches = batchIterator(train, 32, seed, { epochs: Infinity, dropRemainder: true });
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    const { xs, ys } = batches.next().value!;
    const loss = opt.minimize(() => categoricalCrossEntropyOnProbs(model.apply(xs, { training: true }) as tf.Tensor, ys), true);
    loss!.dataSync(); // the step is done, not just queued
    tf.dispose([xs, ys, loss!]);
  }
  const perSec = steps / ((performance.now() - t0) / 1000);
  opt.dispose();
  return perSec;
}

describe('buildModelFor', () => {
  const cases: Array<[ModelSpec, DatasetSpec, string[]]> = [
    [{ kind: 'mlp', hidden: [16, 8] }, { name: 'penguins', trainSize: 50, valSize: 10, testSize: 20 }, ['dense_0', 'dense_1', 'out']],
    [{ kind: 'mlp' }, { name: 'mnist', trainSize: 50, valSize: 10, testSize: 20 }, ['dense_0', 'out']],
    [{ kind: 'cnn', filters: [4] }, { name: 'mnist', layout: 'image', task: 'parity', trainSize: 50, valSize: 10, testSize: 20 }, ['conv_0', 'dense_0', 'out']],
    [{ kind: 'embbag' }, { name: 'spam', trainSize: 200, valSize: 10, testSize: 20, vocabSize: 300, seqLen: 40 }, ['embed', 'pool', 'dense_0', 'out']],
    [{ kind: 'charcnn', hidden: 8 }, { name: 'names', trainSize: 50, valSize: 10, testSize: 20 }, ['embed', 'conv_0', 'pool', 'dense_0', 'out']],
    [{ kind: 'gru', units: 8 }, { name: 'names', trainSize: 50, valSize: 10, testSize: 20 }, ['embed', 'gru_0', 'out']],
  ];

  it.each(cases)('%o on %o: shapes from the data, stable names, same seed → same weights', (spec, ds, names) => {
    const data = loadDeviceData(ds, 1);
    const a = buildModelFor(spec, data, 7);
    const b = buildModelFor(spec, data, 7);
    const c = buildModelFor(spec, data, 8);
    expect(a.layers.map((l) => l.name).filter((n) => names.includes(n))).toEqual(names);
    expect(a.layers[a.layers.length - 1].name).toBe('out');
    expect(a.inputs[0].shape.slice(1)).toEqual(data.train.inputShape);
    expect(a.outputs[0].shape).toEqual([null, data.train.numClasses]);
    const [wa, wb, wc] = [a, b, c].map(weightsOf);
    expect(wa.length).toBeGreaterThan(0);
    wa.forEach((w, i) => expect(Buffer.from(w.buffer).equals(Buffer.from(wb[i].buffer))).toBe(true));
    // Every kernel / embedding table differs with another seed (biases start at zero in both).
    const random = wa.map((w, i) => [w, wc[i]] as const).filter(([w]) => w.some((v) => v !== 0));
    expect(random.length).toBeGreaterThan(0);
    for (const [w, v] of random) expect(Buffer.from(w.buffer).equals(Buffer.from(v.buffer))).toBe(false);
    const probs = tf.tidy(() => (a.predict(tf.tensor(data.test.x, [data.test.n, ...data.test.inputShape])) as tf.Tensor).sum(-1).dataSync());
    for (const p of probs) expect(p).toBeCloseTo(1, 4); // softmax output
    [a, b, c].forEach((m) => m.dispose());
  });

  it('refuses a model that cannot read the data, naming what would', () => {
    const spam = loadDeviceData({ name: 'spam', trainSize: 50, valSize: 10, testSize: 20 }, 1);
    expect(() => buildModelFor({ kind: 'mlp' }, spam, 0)).toThrow(/"mlp" cannot read text data .* use one of embbag, charcnn, gru/);
    const flat = loadDeviceData({ name: 'mnist', trainSize: 50, valSize: 10, testSize: 20 }, 1);
    expect(() => buildModelFor({ kind: 'cnn' }, flat, 0)).toThrow(/layout: image/);
    expect(() => buildModelFor({ kind: 'gru' }, loadDeviceData({ name: 'penguins' }, 1), 0)).toThrow(/cannot read tabular/);
    expect(modelDatasetMismatch({ kind: 'charcnn' }, { name: 'names' })).toBeUndefined();
    expect(modelDatasetMismatch({ kind: 'embbag' }, { name: 'mnist' })).toMatch(/cannot read image data/);
    expect(() => buildModelFor({ kind: 'gru', units: 0 } as ModelSpec, spam, 0)).toThrow(/model\.units/);
  });
});

describe('the zoo trains on wasm', () => {
  it('trains deterministically: same seeds → same trained weights (embedding gradients included)', () => {
    const data = loadDeviceData({ name: 'names', trainSize: 300, valSize: 10, testSize: 50 }, 2);
    const runOnce = () => {
      const m = buildModelFor({ kind: 'charcnn', filters: 16 }, data, 3);
      train(m, data.train, 20, 0.01, 4);
      const w = weightsOf(m);
      m.dispose();
      return w;
    };
    const [a, b] = [runOnce(), runOnce()];
    const init = buildModelFor({ kind: 'charcnn', filters: 16 }, data, 3);
    const w0 = weightsOf(init);
    init.dispose();
    a.forEach((w, i) => expect(Buffer.from(w.buffer).equals(Buffer.from(b[i].buffer))).toBe(true));
    expect(Buffer.from(a[0].buffer).equals(Buffer.from(w0[0].buffer))).toBe(false); // the embedding did train
  });


  // [model, dataset, steps, lr, required margin over the majority-class rate of the test split]
  const runs: Array<[ModelSpec, DatasetSpec, number, number, number]> = [
    [{ kind: 'embbag' }, { name: 'spam' }, 200, 0.01, 0.15],
    [{ kind: 'charcnn' }, { name: 'spam' }, 100, 0.01, 0.15],
    [{ kind: 'charcnn' }, { name: 'names' }, 250, 0.01, 0.12],
    [{ kind: 'gru' }, { name: 'names' }, 250, 0.01, 0.1],
    [{ kind: 'mlp' }, { name: 'penguins' }, 150, 0.01, 0.4],
    [{ kind: 'mlp' }, { name: 'penguins', task: 'island' }, 150, 0.01, 0.1],
  ];

  it.each(runs)('%o on %o (%i steps) beats the majority class', (spec, ds, steps, lr, margin) => {
    expect(tf.getBackend()).toBe('wasm');
    const data = loadDeviceData(ds, 0);
    const model = buildModelFor(spec, data, 0);
    const before = tf.memory().numTensors;
    const perSec = train(model, data.train, steps, lr, 0);
    expect(tf.memory().numTensors).toBe(before); // no tensor leaked by a step
    const acc = evaluateAccuracy(model, data.test);
    const majority = majorityRate(data.test);
    console.log(
      `[zoo] ${spec.kind} on ${data.task}: test acc ${(acc * 100).toFixed(1)} % vs majority ${(majority * 100).toFixed(1)} % ` +
        `after ${steps} steps (train ${data.train.n}, test ${data.test.n}); ${perSec.toFixed(0)} steps/s on wasm`,
    );
    expect(acc).toBeGreaterThan(majority + margin);
    model.dispose();
  });
});
