import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../shared/tf/backend.js';
import { loadMnistAll, mnistSplits, MNIST_PIXELS } from '../client/data/mnist.js';
import { batchIterator, evaluateAccuracy, splitTensors, withInputShape, type Split } from '../client/data/dataset.js';
import { buildModel, type ModelSpec } from '../client/models/mnist-models.js';
import { listSlots } from '../client/slot.js';

beforeAll(async () => {
  await initBackend();
});

/** Example fingerprints (the dataset has no duplicate images, so an image identifies its example). */
function keys(split: Split): Set<string> {
  const d = split.x.length / split.n;
  const out = new Set<string>();
  for (let i = 0; i < split.n; i++) out.add(Array.from(split.x.subarray(i * d, i * d + d)).join(','));
  return out;
}

function overlap(a: Set<string>, b: Set<string>): number {
  let k = 0;
  for (const x of a) if (b.has(x)) k++;
  return k;
}

describe('mnist data', () => {
  it('loads all 10,000 real digits with pixels in [0, 1] and labels 0..9', () => {
    const all = loadMnistAll();
    expect(all.n).toBe(10000);
    expect(all.x.length).toBe(10000 * MNIST_PIXELS);
    expect(loadMnistAll()).toBe(all); // cached
    let min = Infinity;
    let max = -Infinity;
    for (const v of all.x) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    expect(min).toBe(0);
    expect(max).toBe(1);
    const counts = new Array(10).fill(0);
    for (const c of all.y) counts[c]++;
    expect(counts.every((c) => c > 800 && c < 1200)).toBe(true);
    expect(counts.reduce((a, b) => a + b)).toBe(10000);
  });

  it('splits are sized, disjoint, and deterministic per seed', () => {
    const opts = { seed: 1, trainSize: 300, valSize: 100, testSize: 500, task: 'digit' as const };
    const a = mnistSplits(opts);
    expect([a.train.n, a.val.n, a.test.n]).toEqual([300, 100, 500]);
    expect(a.train.x.length).toBe(300 * 784);
    expect(a.train.inputShape).toEqual([784]);
    expect(a.train.numClasses).toBe(10);
    expect(a.task).toBe('mnist-digit');
    expect(a.classNames).toHaveLength(10);
    const [tr, va, te] = [keys(a.train), keys(a.val), keys(a.test)];
    expect(tr.size + va.size + te.size).toBe(900);
    expect(overlap(tr, va) + overlap(tr, te) + overlap(va, te)).toBe(0);
    for (const s of [a.train, a.val, a.test]) {
      expect(s.y.every((c) => c >= 0 && c <= 9)).toBe(true);
      expect(s.x.every((v) => v >= 0 && v <= 1)).toBe(true);
    }
    // Shuffled: every digit shows up in a 300-sample train split.
    expect(new Set(a.train.y).size).toBe(10);

    const again = mnistSplits(opts);
    expect(again.train.x).toEqual(a.train.x);
    expect(again.train.y).toEqual(a.train.y);
    expect(again.test.y).toEqual(a.test.y);

    const other = mnistSplits({ ...opts, seed: 2 });
    expect(overlap(keys(other.train), tr)).toBeLessThan(100); // ≈ 300·300/10000 ≈ 9 expected

    // Another device with the same seed and a later window: disjoint training data, same test split.
    const dev2 = mnistSplits({ ...opts, offset: 400 });
    expect(overlap(keys(dev2.train), tr)).toBe(0);
    expect(overlap(keys(dev2.train), va)).toBe(0);
    expect(overlap(keys(dev2.train), te)).toBe(0);
    expect(dev2.test.x).toEqual(a.test.x);
  });

  it('parity labels and image layout', () => {
    const digit = mnistSplits({ seed: 3, trainSize: 200, valSize: 50, testSize: 50, task: 'digit' });
    const parity = mnistSplits({ seed: 3, trainSize: 200, valSize: 50, testSize: 50, task: 'parity', layout: 'image' });
    expect(parity.train.numClasses).toBe(2);
    expect(parity.classNames).toEqual(['even', 'odd']);
    expect(parity.task).toBe('mnist-parity');
    expect(parity.train.inputShape).toEqual([28, 28, 1]);
    expect(parity.train.x).toEqual(digit.train.x);
    expect(Array.from(parity.train.y)).toEqual(Array.from(digit.train.y).map((d) => d % 2));
    expect(new Set(parity.train.y)).toEqual(new Set([0, 1]));
  });

  it('rejects impossible splits with readable errors', () => {
    expect(() => mnistSplits({ seed: 0, trainSize: 9000, valSize: 500, testSize: 1000, task: 'digit' })).toThrow(
      /offset 0 \+ train 9000 \+ val 500 exceeds the 9000 examples left after a test split of 1000/,
    );
    expect(() => mnistSplits({ seed: 0, trainSize: -1, valSize: 0, testSize: 10, task: 'digit' })).toThrow(/trainSize/);
    expect(() => mnistSplits({ seed: 0, trainSize: 1, valSize: 0, testSize: 10, task: 'nope' as 'digit' })).toThrow(/unknown task "nope"/);
  });

  it('batchIterator: one-hot, covers an epoch, deterministic per seed, no leaks', () => {
    const { train } = mnistSplits({ seed: 4, trainSize: 70, valSize: 0, testSize: 10, task: 'parity' });
    const before = tf.memory().numTensors;
    const seen: number[][] = [];
    let total = 0;
    const sizes: number[] = [];
    for (const { xs, ys } of batchIterator(train, 32, 7)) {
      expect(xs.shape.slice(1)).toEqual([784]);
      expect(ys.shape[1]).toBe(2);
      tf.tidy(() => {
        expect(ys.sum(-1).dataSync().every((v) => v === 1)).toBe(true);
        total += ys.sum(0).dataSync()[1]; // number of odd digits
        seen.push(Array.from(xs.sum(-1).dataSync()));
      });
      sizes.push(xs.shape[0]);
      xs.dispose();
      ys.dispose();
    }
    expect(sizes).toEqual([32, 32, 6]);
    expect(total).toBe(train.y.reduce((a, b) => a + b, 0));
    const again: number[][] = [];
    for (const { xs, ys } of batchIterator(train, 32, 7)) {
      tf.tidy(() => void again.push(Array.from(xs.sum(-1).dataSync())));
      xs.dispose();
      ys.dispose();
    }
    expect(again).toEqual(seen);
    const other = batchIterator(train, 32, 8).next().value!;
    tf.tidy(() => {
      expect(Array.from(other.xs.sum(-1).dataSync())).not.toEqual(seen[0]);
    });
    other.xs.dispose();
    other.ys.dispose();
    // Several epochs, reshuffled, remainder dropped.
    let count = 0;
    for (const { xs, ys } of batchIterator(train, 32, 7, { epochs: 3, dropRemainder: true })) {
      expect(xs.shape[0]).toBe(32);
      count++;
      xs.dispose();
      ys.dispose();
    }
    expect(count).toBe(6);
    expect(tf.memory().numTensors).toBe(before);
    const img = batchIterator(withInputShape(train, [28, 28, 1]), 5, 0).next().value!;
    expect(img.xs.shape).toEqual([5, 28, 28, 1]);
    img.xs.dispose();
    img.ys.dispose();
    expect(() => withInputShape(train, [27, 28, 1])).toThrow(/sizes differ/);
  });
});

describe('mnist models', () => {
  const mlp: ModelSpec = { kind: 'mlp', inputShape: [784], hidden: [64], classes: 10 };
  const cnn: ModelSpec = { kind: 'cnn', inputShape: [28, 28, 1], filters: [4, 8], kernelSize: 3, dense: [32], classes: 10 };

  it('has stable layer names and softmax outputs', () => {
    const m = buildModel({ kind: 'mlp', inputShape: [784], hidden: [32, 16], classes: 2 }, 0);
    expect(m.layers.map((l) => l.name)).toEqual(['dense_0', 'dense_1', 'out']);
    const c = buildModel(cnn, 0);
    expect(c.layers.map((l) => l.name)).toEqual(['conv_0', 'pool_0', 'conv_1', 'pool_1', 'flatten', 'dense_0', 'out']);
    expect(listSlots(c).map((s) => [s.layer, s.shape])).toEqual([
      ['conv_0', [9, 4]],
      ['conv_1', [36, 8]],
      ['dense_0', [7 * 7 * 8, 32]],
      ['out', [32, 10]],
    ]);
    const img = buildModel({ kind: 'mlp', inputShape: [28, 28, 1], hidden: [8], classes: 10 }, 0);
    expect(img.layers.map((l) => l.name)).toEqual(['flatten', 'dense_0', 'out']);
    const x = tf.randomUniform([3, 28, 28, 1], 0, 1, 'float32', 1);
    for (const [model, input] of [[c, x], [img, x], [m, x.reshape([3, 784])]] as const) {
      const p = model.predict(input) as tf.Tensor;
      const sums = p.sum(-1).dataSync();
      expect(Array.from(sums).every((s) => Math.abs(s - 1) < 1e-5)).toBe(true);
      expect(p.min().dataSync()[0]).toBeGreaterThan(0);
      p.dispose();
    }
    [m, c, img].forEach((model) => model.dispose());
    x.dispose();
    expect(() => buildModel({ ...cnn, filters: [4, 4, 4, 4, 4, 4] }, 0)).toThrow(/too small/);
    expect(() => buildModel({ ...mlp, hidden: [0] }, 0)).toThrow(/hidden sizes must be positive integers/);
    expect(() => buildModel({ ...mlp, classes: 1 }, 0)).toThrow(/classes/);
  });

  it('the same seed gives identical weights, another seed different ones', () => {
    for (const spec of [mlp, cnn]) {
      const a = buildModel(spec, 42);
      const b = buildModel(spec, 42);
      const c = buildModel(spec, 43);
      const wa = a.getWeights();
      const wb = b.getWeights();
      const wc = c.getWeights();
      expect(wa.length).toBe(wb.length);
      wa.forEach((w, i) => expect(Array.from(wb[i].dataSync())).toEqual(Array.from(w.dataSync())));
      // Kernels differ between seeds, and between the layers of one model.
      expect(Array.from(wc[0].dataSync())).not.toEqual(Array.from(wa[0].dataSync()));
      const kernels = listSlots(a).map((s) => a.getLayer(s.layer).getWeights()[0].dataSync().slice(0, 4).join());
      expect(new Set(kernels).size).toBe(kernels.length);
      [a, b, c].forEach((m) => m.dispose());
    }
  });

  it('an MLP 784-64-10 learns MNIST: > 70% test accuracy after 200 steps', () => {
    const data = mnistSplits({ seed: 5, trainSize: 3000, valSize: 200, testSize: 1000, task: 'digit' });
    const model = buildModel(mlp, 5);
    const before = evaluateAccuracy(model, data.test);
    const opt = tf.train.adam(1e-3);
    const vars = model.trainableWeights.map((w) => w.read() as tf.Variable);
    const tensorsBefore = tf.memory().numTensors;
    let steps = 0;
    const t0 = performance.now();
    for (const { xs, ys } of batchIterator(data.train, 32, 5, { epochs: Infinity })) {
      opt.minimize(() => tf.losses.softmaxCrossEntropy(ys, tf.log(tf.add(model.apply(xs) as tf.Tensor, 1e-7))) as tf.Scalar, false, vars);
      xs.dispose();
      ys.dispose();
      if (++steps === 200) break;
    }
    const secs = (performance.now() - t0) / 1000;
    const acc = evaluateAccuracy(model, data.test);
    const valAcc = evaluateAccuracy(model, data.val, 64);
    // Adam's slots are created on the first step: count them out.
    const adamSlots = 2 * vars.length + 2;
    expect(tf.memory().numTensors).toBeLessThanOrEqual(tensorsBefore + adamSlots);
    const afterEval = tf.memory().numTensors;
    evaluateAccuracy(model, data.test, 100);
    expect(tf.memory().numTensors).toBe(afterEval);
    console.log(`[mnist.test] MLP 784-64-10: ${before.toFixed(3)} → ${acc.toFixed(3)} test, ${valAcc.toFixed(3)} val, 200 steps in ${secs.toFixed(2)} s (${tf.getBackend()})`);
    expect(before).toBeLessThan(0.3);
    expect(acc).toBeGreaterThan(0.7);
    expect(valAcc).toBeGreaterThan(0.7);
    const { xs, ys } = splitTensors(data.val);
    expect(xs.shape).toEqual([200, 784]);
    expect(ys.shape).toEqual([200, 10]);
    [xs, ys].forEach((t) => t.dispose());
    opt.dispose();
    model.dispose();
  });
});

describe('cnn training on the cpu backend', () => {
  afterAll(async () => {
    await initBackend();
  });

  it('a small CNN lowers its loss on image-layout MNIST', async () => {
    // wasm lacks Conv2DBackpropFilter until shared/tf/wasm-kernels.ts registers it.
    await initBackend('cpu');
    const data = mnistSplits({ seed: 6, trainSize: 512, valSize: 0, testSize: 256, task: 'parity', layout: 'image' });
    const model = buildModel({ kind: 'cnn', inputShape: [28, 28, 1], filters: [4], kernelSize: 3, dense: [16], classes: 2 }, 6);
    const before = evaluateAccuracy(model, data.test);
    const opt = tf.train.adam(3e-3);
    const vars = model.trainableWeights.map((w) => w.read() as tf.Variable);
    let steps = 0;
    for (const { xs, ys } of batchIterator(data.train, 32, 6, { epochs: Infinity })) {
      opt.minimize(() => tf.losses.softmaxCrossEntropy(ys, tf.log(tf.add(model.apply(xs) as tf.Tensor, 1e-7))) as tf.Scalar, false, vars);
      xs.dispose();
      ys.dispose();
      if (++steps === 40) break;
    }
    const after = evaluateAccuracy(model, data.test);
    console.log(`[mnist.test] CNN parity on cpu: ${before.toFixed(3)} → ${after.toFixed(3)} after 40 steps`);
    expect(after).toBeGreaterThan(0.7);
    expect(after).toBeGreaterThan(before);
    opt.dispose();
    model.dispose();
  });
});
