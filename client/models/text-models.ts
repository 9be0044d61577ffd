// Text classifiers over token-id sequences (float ids in [0, vocabSize), 0 = pad). Seeded and
// deterministic: every initializer gets its own seed derived from the model seed, so the same
// seed gives bit-identical weights. Layer names are stable, since slots and pairs name layers:
//   embbag:  embed → pool (global average) → dense_0 → out
//   charcnn: embed → conv_0 (Conv1D) → pool (global max) → [dense_0] → out
//   gru:     embed → gru_0 → out
// Every model ends in a softmax dense layer named `out`.
import * as tf from '@tensorflow/tfjs';

export interface TextInputShape {
  vocabSize: number;
  seqLen: number;
  numClasses: number;
}

export interface EmbBagSpec {
  kind: 'embbag';
  /** Embedding width. Default 32. */
  embedDim?: number;
  /** Width of dense_0 (ReLU). Default 32. */
  hidden?: number;
}

export interface CharCnnSpec {
  kind: 'charcnn';
  /** Embedding width. Default 16. */
  embedDim?: number;
  /** Conv1D filters. Default 64. */
  filters?: number;
  /** Conv1D window. Default 3. */
  kernelSize?: number;
  /** Width of an optional dense_0 (ReLU) before `out`; 0 (default) for none. */
  hidden?: number;
}

export interface GruSpec {
  kind: 'gru';
  /** Embedding width. Default 16. */
  embedDim?: number;
  /** GRU units. Default 32. */
  units?: number;
}

export type TextModelSpec = EmbBagSpec | CharCnnSpec | GruSpec;

/** A seed per initializer, distinct across layers and roles, fixed by (model seed, slot). */
function initSeed(seed: number, slot: number): number {
  return (Math.imul(seed | 0, 0x9e3779b1) ^ (slot * 0x85ebca6b)) >>> 0;
}

/** Glorot-uniform with the seed of (model seed, slot). */
function glorot(seed: number, slot: number) {
  return tf.initializers.glorotUniform({ seed: initSeed(seed, slot) });
}

function embedding(shape: TextInputShape, embedDim: number, seed: number): tf.layers.Layer {
  return tf.layers.embedding({
    name: 'embed',
    inputDim: shape.vocabSize,
    outputDim: embedDim,
    inputLength: shape.seqLen,
    inputShape: [shape.seqLen],
    embeddingsInitializer: tf.initializers.randomUniform({ minval: -0.05, maxval: 0.05, seed: initSeed(seed, 1) }),
  });
}

function dense(name: string, units: number, activation: 'relu' | 'softmax', seed: number, slot: number): tf.layers.Layer {
  return tf.layers.dense({
    name,
    units,
    activation,
    kernelInitializer: glorot(seed, slot),
    biasInitializer: 'zeros',
  });
}

function checkShape(shape: TextInputShape): void {
  for (const k of ['vocabSize', 'seqLen', 'numClasses'] as const) {
    if (!Number.isInteger(shape[k]) || shape[k] < 1) throw new Error(`text model: ${k} must be a positive integer, got ${shape[k]}`);
  }
  if (shape.numClasses < 2) throw new Error(`text model: numClasses must be ≥ 2, got ${shape.numClasses}`);
}

function positive(name: string, v: number | undefined, dflt: number, allowZero = false): number {
  const x = v ?? dflt;
  if (!Number.isInteger(x) || x < (allowZero ? 0 : 1)) throw new Error(`text model: ${name} must be an integer ≥ ${allowZero ? 0 : 1}, got ${x}`);
  return x;
}

/** Embedding bag: the mean of the token embeddings (pads included), a ReLU layer, softmax. */
export function buildEmbBag(spec: EmbBagSpec, shape: TextInputShape, seed: number): tf.Sequential {
  checkShape(shape);
  const m = tf.sequential({ name: 'embbag' });
  m.add(embedding(shape, positive('embedDim', spec.embedDim, 32), seed));
  m.add(tf.layers.globalAveragePooling1d({ name: 'pool' }));
  m.add(dense('dense_0', positive('hidden', spec.hidden, 32), 'relu', seed, 2));
  m.add(dense('out', shape.numClasses, 'softmax', seed, 3));
  return m;
}

/** Char-CNN: a 1-D convolution over the embedded sequence, max over positions, softmax. */
export function buildCharCnn(spec: CharCnnSpec, shape: TextInputShape, seed: number): tf.Sequential {
  checkShape(shape);
  const m = tf.sequential({ name: 'charcnn' });
  m.add(embedding(shape, positive('embedDim', spec.embedDim, 16), seed));
  m.add(
    tf.layers.conv1d({
      name: 'conv_0',
      filters: positive('filters', spec.filters, 64),
      kernelSize: positive('kernelSize', spec.kernelSize, 3),
      padding: 'same',
      activation: 'relu',
      kernelInitializer: glorot(seed, 2),
      biasInitializer: 'zeros',
    }),
  );
  m.add(tf.layers.globalMaxPooling1d({ name: 'pool' }));
  const hidden = positive('hidden', spec.hidden, 0, true);
  if (hidden > 0) m.add(dense('dense_0', hidden, 'relu', seed, 3));
  m.add(dense('out', shape.numClasses, 'softmax', seed, 4));
  return m;
}

/** A single GRU layer over the embedded sequence; its last state feeds the softmax. */
export function buildGru(spec: GruSpec, shape: TextInputShape, seed: number): tf.Sequential {
  checkShape(shape);
  const m = tf.sequential({ name: 'gru' });
  m.add(embedding(shape, positive('embedDim', spec.embedDim, 16), seed));
  m.add(
    tf.layers.gru({
      name: 'gru_0',
      units: positive('units', spec.units, 32),
      kernelInitializer: glorot(seed, 2),
      // Glorot rather than orthogonal: tfjs' orthogonal initializer logs a slowness warning on
      // every matrix above 2000 elements (32 units already give 32×96).
      recurrentInitializer: glorot(seed, 3),
      biasInitializer: 'zeros',
    }),
  );
  m.add(dense('out', shape.numClasses, 'softmax', seed, 4));
  return m;
}

/** Build the text model `spec` for inputs of `shape`. */
export function buildTextModel(spec: TextModelSpec, shape: TextInputShape, seed: number): tf.Sequential {
  switch (spec.kind) {
    case 'embbag':
      return buildEmbBag(spec, shape, seed);
    case 'charcnn':
      return buildCharCnn(spec, shape, seed);
    case 'gru':
      return buildGru(spec, shape, seed);
  }
}
