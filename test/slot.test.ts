import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../shared/tf/backend.js';
import { listSlots, readSlot, slotInfo, slotShapeOf, slotVariable, writeSlot } from '../client/slot.js';

beforeAll(async () => {
  await initBackend();
});

const seeded = (seed: number) => tf.initializers.glorotUniform({ seed });

function convModel(): tf.LayersModel {
  return tf.sequential({
    layers: [
      tf.layers.conv2d({ name: 'conv_0', inputShape: [8, 8, 2], filters: 3, kernelSize: 3, kernelInitializer: seeded(1) }),
      tf.layers.maxPooling2d({ name: 'pool_0', poolSize: 2 }),
      tf.layers.flatten({ name: 'flatten' }),
      tf.layers.dense({ name: 'dense_0', units: 5, activation: 'relu', kernelInitializer: seeded(2) }),
      tf.layers.dense({ name: 'out', units: 4, kernelInitializer: seeded(3), biasInitializer: tf.initializers.constant({ value: 0.25 }) }),
    ],
  });
}

function equalExactly(a: tf.Tensor, b: tf.Tensor): boolean {
  if (a.shape.join() !== b.shape.join()) return false;
  const x = a.dataSync();
  const y = b.dataSync();
  return x.every((v, i) => v === y[i]);
}

describe('slots', () => {
  it('lists every kernel/embeddings weight with its kind and 2-D shape', () => {
    const model = convModel();
    expect(listSlots(model)).toEqual([
      { layer: 'conv_0', kind: 'conv2d', className: 'Conv2D', kernelShape: [3, 3, 2, 3], shape: [18, 3] },
      { layer: 'dense_0', kind: 'dense', className: 'Dense', kernelShape: [27, 5], shape: [27, 5] },
      { layer: 'out', kind: 'dense', className: 'Dense', kernelShape: [5, 4], shape: [5, 4] },
    ]);
    const seq = tf.sequential({
      layers: [
        tf.layers.embedding({ name: 'emb', inputDim: 30, outputDim: 6, inputLength: 7 }),
        tf.layers.conv1d({ name: 'c1', filters: 4, kernelSize: 3 }),
        tf.layers.lstm({ name: 'lstm', units: 5 }),
      ],
    });
    expect(listSlots(seq)).toEqual([
      { layer: 'emb', kind: 'embedding', className: 'Embedding', kernelShape: [30, 6], shape: [30, 6] },
      { layer: 'c1', kind: 'conv1d', className: 'Conv1D', kernelShape: [3, 6, 4], shape: [18, 4] },
      // The input kernel only, not the recurrent one.
      { layer: 'lstm', kind: 'other', className: 'LSTM', kernelShape: [4, 20], shape: [4, 20] },
    ]);
    expect(slotInfo(model, 'conv_0').shape).toEqual([18, 3]);
    expect(slotShapeOf([2, 3, 4, 5])).toEqual([24, 5]);
    expect(() => slotShapeOf([7])).toThrow(/rank 1/);
    model.dispose();
    seq.dispose();
  });

  it('round-trips a dense slot exactly', () => {
    const model = convModel();
    const x = tf.randomNormal([2, 8, 8, 2], 0, 1, 'float32', 7);
    const before = model.predict(x) as tf.Tensor;
    const w = readSlot(model, 'dense_0');
    expect(w.shape).toEqual([27, 5]);
    writeSlot(model, 'dense_0', w);
    const w2 = readSlot(model, 'dense_0');
    expect(equalExactly(w, w2)).toBe(true);
    const after = model.predict(x) as tf.Tensor;
    expect(equalExactly(before, after)).toBe(true);
    // Disposing what was read or written leaves the model intact.
    w.dispose();
    w2.dispose();
    const again = model.predict(x) as tf.Tensor;
    expect(equalExactly(before, again)).toBe(true);
    [x, before, after, again].forEach((t) => t.dispose());
    model.dispose();
  });

  it('views a conv kernel as kernel.reshape([kh·kw·cin, cout]) and writes it back in kernel shape', () => {
    const model = convModel();
    const kernel = model.getLayer('conv_0').getWeights()[0];
    expect(kernel.shape).toEqual([3, 3, 2, 3]);
    const w = readSlot(model, 'conv_0');
    const expected = kernel.reshape([18, 3]);
    expect(equalExactly(w, expected)).toBe(true);
    // Row i·(kw·cin) + j·cin + c of the view is kernel[i][j][c][:].
    const k4 = kernel.arraySync() as number[][][][];
    const w2 = w.arraySync();
    expect(w2[1 * 6 + 2 * 2 + 1]).toEqual(k4[1][2][1]);

    const fresh = tf.randomNormal([18, 3], 0, 1, 'float32', 3) as tf.Tensor2D;
    writeSlot(model, 'conv_0', fresh);
    const written = model.getLayer('conv_0').getWeights()[0];
    const freshAsKernel = fresh.reshape([3, 3, 2, 3]);
    expect(equalExactly(written, freshAsKernel)).toBe(true);
    const back = readSlot(model, 'conv_0');
    expect(equalExactly(back, fresh)).toBe(true);
    // getWeights() returns the layer's own variables: not ours to dispose.
    [w, expected, fresh, freshAsKernel, back].forEach((t) => t.dispose());
    model.dispose();
  });

  it('a write changes the prediction: a zero kernel leaves only the bias', () => {
    const model = convModel();
    const x = tf.randomNormal([3, 8, 8, 2], 0, 1, 'float32', 8);
    const before = model.predict(x) as tf.Tensor;
    expect(before.sub(0.25).abs().max().dataSync()[0]).toBeGreaterThan(1e-3);
    const zero = tf.zeros([5, 4]) as tf.Tensor2D;
    writeSlot(model, 'out', zero);
    zero.dispose();
    const after = model.predict(x) as tf.Tensor;
    expect(Array.from(after.dataSync())).toEqual(new Array(12).fill(0.25));
    [x, before, after].forEach((t) => t.dispose());
    model.dispose();
  });

  it('slotVariable is the variable the model trains', () => {
    const model = convModel();
    const v = slotVariable(model, 'dense_0');
    expect(v).toBeInstanceOf(tf.Variable);
    expect(v.shape).toEqual([27, 5]);
    expect(model.trainableWeights.some((w) => w.read() === v)).toBe(true);
    // An optimiser step on the model's weights moves this very variable.
    const x = tf.randomNormal([4, 8, 8, 2], 0, 1, 'float32', 9);
    const y = tf.oneHot(tf.tensor1d([0, 1, 2, 3], 'int32'), 4);
    const snapshot = v.clone();
    const opt = tf.train.sgd(0.5);
    const varList = model.trainableWeights.map((w) => w.read() as tf.Variable);
    opt.minimize(() => tf.losses.softmaxCrossEntropy(y, model.apply(x) as tf.Tensor) as tf.Scalar, false, varList);
    expect(slotVariable(model, 'dense_0')).toBe(v);
    expect(equalExactly(v, snapshot)).toBe(false);
    // And assigning it changes the model's output.
    const before = model.predict(x) as tf.Tensor;
    v.assign(tf.tidy(() => v.mul(2)));
    const after = model.predict(x) as tf.Tensor;
    expect(equalExactly(before, after)).toBe(false);
    const conv = slotVariable(model, 'conv_0');
    expect(conv.shape).toEqual([3, 3, 2, 3]);
    [x, y, snapshot, before, after].forEach((t) => t.dispose());
    opt.dispose();
    model.dispose();
  });

  it('errors name the problem', () => {
    const model = convModel();
    expect(() => slotInfo(model, 'nope')).toThrow(/no layer "nope"; available slots: conv_0 \[18×3\], dense_0 \[27×5\], out \[5×4\]/);
    expect(() => readSlot(model, 'flatten')).toThrow(/layer "flatten" \(Flatten\) has no kernel or embeddings weight; available slots: conv_0/);
    const wrong = tf.zeros([4, 5]) as tf.Tensor2D;
    expect(() => writeSlot(model, 'out', wrong)).toThrow(/writeSlot "out": expected shape \[5, 4\] \(kernel \[5, 4\]\), got \[4, 5\]/);
    const wrongConv = tf.zeros([3, 18]) as tf.Tensor2D;
    expect(() => writeSlot(model, 'conv_0', wrongConv)).toThrow(/expected shape \[18, 3\] \(kernel \[3, 3, 2, 3\]\), got \[3, 18\]/);
    const ints = tf.zeros([5, 4], 'int32') as tf.Tensor2D;
    expect(() => writeSlot(model, 'out', ints)).toThrow(/dtype float32, got int32/);
    [wrong, wrongConv, ints].forEach((t) => t.dispose());
    model.dispose();
  });

  it('does not leak tensors', () => {
    const model = convModel();
    const x = tf.randomNormal([1, 8, 8, 2]);
    const warm = readSlot(model, 'conv_0');
    writeSlot(model, 'conv_0', warm);
    warm.dispose();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 20; i++) {
      for (const s of listSlots(model)) {
        const w = readSlot(model, s.layer);
        const w2 = tf.tidy(() => w.mul(1.01)) as tf.Tensor2D;
        writeSlot(model, s.layer, w2);
        w.dispose();
        w2.dispose();
      }
      slotVariable(model, 'out');
    }
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
    model.dispose();
  });
});
