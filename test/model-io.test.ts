import * as tf from '@tensorflow/tfjs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModelFromDisk, saveModelToDisk } from '../client/model-io.js';
import { listSlots } from '../client/slot.js';
import { Trainer } from '../client/trainer.js';
import { initBackend } from '../shared/tf/backend.js';

let dir: string;

beforeAll(async () => {
  await initBackend();
  dir = await mkdtemp(join(tmpdir(), 'mergenet-model-io-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function mlp(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.dense({ inputShape: [10], units: 7, activation: 'relu', name: 'dense_0', kernelInitializer: tf.initializers.glorotNormal({ seed: 1 }) }));
  m.add(tf.layers.dense({ units: 4, activation: 'softmax', name: 'out', kernelInitializer: tf.initializers.glorotNormal({ seed: 2 }) }));
  return m;
}

function cnn(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.conv2d({ inputShape: [6, 6, 1], filters: 3, kernelSize: 3, activation: 'relu', name: 'conv_0', kernelInitializer: tf.initializers.glorotNormal({ seed: 3 }) }));
  m.add(tf.layers.flatten());
  m.add(tf.layers.dense({ units: 2, activation: 'softmax', name: 'out', kernelInitializer: tf.initializers.glorotNormal({ seed: 4 }) }));
  return m;
}

function predict(m: tf.LayersModel, x: tf.Tensor): Float32Array {
  return tf.tidy(() => (m.predict(x) as tf.Tensor).dataSync() as Float32Array);
}

describe('model-io', () => {
  it('save → load round trip gives bit-identical predictions (MLP and CNN)', async () => {
    for (const [name, make, shape] of [['mlp', mlp, [5, 10]], ['cnn', cnn, [5, 6, 6, 1]]] as const) {
      const model = make();
      const x = tf.randomNormal([...shape], 0, 1, 'float32', 11);
      const files = await saveModelToDisk(model, join(dir, name));
      expect(files.weightBytes).toBe(model.countParams() * 4);
      const loaded = await loadModelFromDisk(files.modelJson);
      expect(loaded.layers.map((l) => l.name)).toEqual(model.layers.map((l) => l.name));
      expect(Array.from(predict(loaded, x))).toEqual(Array.from(predict(model, x)));
      expect(listSlots(loaded).map((s) => [s.layer, s.shape])).toEqual(listSlots(model).map((s) => [s.layer, s.shape]));
      // The loaded model trains (its kernels are trainable variables).
      const t = new Trainer(loaded, { optimizer: 'sgd', lr: 0.1 });
      const ys = tf.oneHot(tf.tensor1d([0, 1, 0, 1, 1], 'int32'), loaded.outputs[0].shape[1] as number);
      const l0 = t.step(x, ys);
      let l = l0;
      for (let i = 0; i < 20; i++) l = t.step(x, ys);
      expect(l).toBeLessThan(l0);
      t.dispose();
      tf.dispose([x, ys]);
      model.dispose();
      loaded.dispose();
    }
  });

  it('loads weights split over several shards, as the tfjs converter writes them', async () => {
    const model = mlp();
    const files = await saveModelToDisk(model, join(dir, 'sharded'));
    const bin = await readFile(files.weights);
    const json = JSON.parse(await readFile(files.modelJson, 'utf8'));
    const cut = 100; // not on a weight boundary: shards are just concatenated
    await writeFile(join(dir, 'sharded', 'group1-shard1of2.bin'), bin.subarray(0, cut));
    await writeFile(join(dir, 'sharded', 'group1-shard2of2.bin'), bin.subarray(cut));
    json.weightsManifest[0].paths = ['group1-shard1of2.bin', 'group1-shard2of2.bin'];
    await writeFile(files.modelJson, JSON.stringify(json));
    const loaded = await loadModelFromDisk(files.modelJson);
    const x = tf.randomNormal([3, 10], 0, 1, 'float32', 5);
    expect(Array.from(predict(loaded, x))).toEqual(Array.from(predict(model, x)));
    tf.dispose(x);
    model.dispose();
    loaded.dispose();
  });

  it('refuses missing or truncated shards, paths outside the model directory, and non-models, with readable errors', async () => {
    const model = mlp();
    const files = await saveModelToDisk(model, join(dir, 'bad'));
    model.dispose();
    const json = JSON.parse(await readFile(files.modelJson, 'utf8'));
    const write = (j: unknown) => writeFile(files.modelJson, JSON.stringify(j));

    await write({ ...json, weightsManifest: [{ ...json.weightsManifest[0], paths: ['missing.bin'] }] });
    await expect(loadModelFromDisk(files.modelJson)).rejects.toThrow(/cannot read weight shard "missing.bin" \(ENOENT\)/);

    await write({ ...json, weightsManifest: [{ ...json.weightsManifest[0], paths: ['../../etc/passwd'] }] });
    await expect(loadModelFromDisk(files.modelJson)).rejects.toThrow(/outside the model directory/);

    await writeFile(join(dir, 'bad', 'short.bin'), (await readFile(files.weights)).subarray(0, 40));
    await write({ ...json, weightsManifest: [{ ...json.weightsManifest[0], paths: ['short.bin'] }] });
    await expect(loadModelFromDisk(files.modelJson)).rejects.toThrow(/describes \d+ bytes of weights but its shards \(short.bin\) hold 40 bytes/);

    await writeFile(files.modelJson, '{"not": "a model"}');
    await expect(loadModelFromDisk(files.modelJson)).rejects.toThrow(/modelTopology/);
    await writeFile(files.modelJson, '{oops');
    await expect(loadModelFromDisk(files.modelJson)).rejects.toThrow(/not valid JSON/);
    await expect(loadModelFromDisk(join(dir, 'nope', 'model.json'))).rejects.toThrow(/cannot read model file .*ENOENT/);
  });
});
