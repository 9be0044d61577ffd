// Small image classifiers for the MNIST devices, with stable layer names (the slots are named by
// them) and seeded initialisers (the same seed gives the same weights, on any backend: tfjs draws
// seeded initial values in JS).
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';

export type ModelSpec =
  | { kind: 'mlp'; inputShape: number[]; hidden: number[]; classes: number }
  | {
      kind: 'cnn';
      inputShape: [number, number, number];
      filters: number[];
      kernelSize: number;
      dense: number[];
      classes: number;
    };

function positiveInts(what: string, xs: readonly number[]): void {
  for (const x of xs) {
    if (!Number.isInteger(x) || x < 1) throw new Error(`buildModel: ${what} must be positive integers, got [${xs.join(', ')}]`);
  }
}

/**
 * An uncompiled softmax classifier.
 * mlp: [flatten if the input is not 1-D], dense_0 … dense_{k-1} (relu), out (softmax).
 * cnn: conv_i (relu, 'same' padding) each followed by pool_i (2×2 max pool), flatten,
 *      dense_0 … (relu), out (softmax).
 * Kernels are Glorot-uniform with a per-layer seed derived from `seed`; biases start at zero.
 */
export function buildModel(spec: ModelSpec, seed: number): tf.LayersModel {
  if (!Number.isFinite(seed)) throw new Error(`buildModel: seed must be a number, got ${seed}`);
  positiveInts('inputShape', spec.inputShape);
  if (!Number.isInteger(spec.classes) || spec.classes < 2) throw new Error(`buildModel: classes must be an integer ≥ 2, got ${spec.classes}`);
  // One independent seed per kernel, drawn in layer order.
  const rng = seedrandom(`buildModel:${seed}`);
  const kernelInit = () => tf.initializers.glorotUniform({ seed: rng.int32() >>> 0 });
  const layers: tf.layers.Layer[] = [];
  const inputShape = [...spec.inputShape];
  let hidden: number[];

  if (spec.kind === 'mlp') {
    positiveInts('hidden sizes', spec.hidden);
    if (inputShape.length > 1) layers.push(tf.layers.flatten({ name: 'flatten', inputShape }));
    hidden = spec.hidden;
  } else if (spec.kind === 'cnn') {
    if (inputShape.length !== 3) throw new Error(`buildModel: cnn inputShape must be [height, width, channels], got [${inputShape.join(', ')}]`);
    positiveInts('filters', spec.filters);
    positiveInts('kernelSize', [spec.kernelSize]);
    positiveInts('dense sizes', spec.dense);
    let [h, w] = inputShape;
    spec.filters.forEach((filters, i) => {
      if (h < 2 || w < 2) {
        throw new Error(`buildModel: input [${inputShape.join(', ')}] is too small for ${spec.filters.length} conv+pool blocks`);
      }
      layers.push(
        tf.layers.conv2d({
          name: `conv_${i}`,
          ...(i === 0 ? { inputShape } : {}),
          filters,
          kernelSize: spec.kernelSize,
          padding: 'same',
          activation: 'relu',
          kernelInitializer: kernelInit(),
          biasInitializer: 'zeros',
        }),
      );
      layers.push(tf.layers.maxPooling2d({ name: `pool_${i}`, poolSize: 2, strides: 2 }));
      h = Math.floor(h / 2);
      w = Math.floor(w / 2);
    });
    layers.push(tf.layers.flatten({ name: 'flatten', ...(spec.filters.length === 0 ? { inputShape } : {}) }));
    hidden = spec.dense;
  } else {
    throw new Error(`buildModel: unknown model kind "${(spec as { kind: string }).kind}"`);
  }

  hidden.forEach((units, i) => {
    layers.push(
      tf.layers.dense({
        name: `dense_${i}`,
        ...(layers.length === 0 ? { inputShape } : {}),
        units,
        activation: 'relu',
        kernelInitializer: kernelInit(),
        biasInitializer: 'zeros',
      }),
    );
  });
  layers.push(
    tf.layers.dense({
      name: 'out',
      ...(layers.length === 0 ? { inputShape } : {}),
      units: spec.classes,
      activation: 'softmax',
      kernelInitializer: kernelInit(),
      biasInitializer: 'zeros',
    }),
  );
  return tf.sequential({ name: `${spec.kind}`, layers });
}
