// A device's local data: flat typed arrays (cheap to slice and to keep off the tfjs heap), turned
// into tensors one batch at a time.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';

export interface Split {
  /** n × prod(inputShape) features, row-major. */
  x: Float32Array;
  /** n class indices in [0, numClasses). */
  y: Int32Array;
  n: number;
  /** Shape of one example, e.g. [784] or [28, 28, 1]. */
  inputShape: number[];
  numClasses: number;
}

export interface DeviceData {
  train: Split;
  val: Split;
  test: Split;
  task: string;
  classNames?: string[];
}

export interface Batch {
  /** [b, ...inputShape] float32. */
  xs: tf.Tensor;
  /** [b, numClasses] one-hot float32. */
  ys: tf.Tensor2D;
}

export interface BatchIteratorOptions {
  /** Passes over the split, each in a fresh seeded order. Default 1; Infinity for an endless stream. */
  epochs?: number;
  /** Skip the last, smaller batch of each epoch. Default false. */
  dropRemainder?: boolean;
}

export function featureSize(inputShape: readonly number[]): number {
  return inputShape.reduce((a, b) => a * b, 1);
}

/** A uniformly random permutation of 0..n-1, the same for the same seed and key. */
export function seededPermutation(n: number, seed: number | string, key = 'perm'): Int32Array {
  const rng = seedrandom(`${key}:${seed}`);
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

// ---- The split rule of every corpus of the zoo (names, spam, penguins), the same as mnistSplits' ----

export interface SplitSizes {
  trainSize: number;
  valSize: number;
  testSize: number;
  /**
   * Start of this device's train/val window in the seeded order. Devices that share a seed and
   * use non-overlapping windows get disjoint training data and the same test split. Default 0.
   */
  offset?: number;
}

export interface SplitIndices {
  train: number[];
  val: number[];
  test: number[];
}

/**
 * Disjoint train/val/test indices into a corpus of n examples. As in mnistSplits, the corpus is
 * permuted with seededPermutation(n, seed, corpus); test is the last testSize of that order, train
 * then val are taken from `offset` on. So the test split depends only on (seed, testSize), never on
 * trainSize or offset. trainSize is capped at what is left (n − testSize − offset − valSize);
 * test and val are never capped: asking for more than the corpus has is an error rather than a
 * silent change of the evaluation set.
 */
export function carveSplits(corpus: string, n: number, sizes: SplitSizes, seed: number): SplitIndices {
  const { trainSize, valSize, testSize } = sizes;
  const offset = sizes.offset ?? 0;
  for (const [k, v, min] of [['trainSize', trainSize, 1], ['valSize', valSize, 0], ['testSize', testSize, 1], ['offset', offset, 0]] as const) {
    if (!Number.isInteger(v) || v < min) throw new Error(`${corpus}: ${k} must be an integer ≥ ${min}, got ${v}`);
  }
  const room = n - testSize - offset - valSize;
  if (room < 1) {
    throw new Error(
      `${corpus}: testSize ${testSize} + offset ${offset} + valSize ${valSize} leaves no training data (the corpus has ${n} examples)`,
    );
  }
  const order = Array.from(seededPermutation(n, seed, corpus));
  const train = Math.min(trainSize, room);
  return {
    test: order.slice(n - testSize),
    train: order.slice(offset, offset + train),
    val: order.slice(offset + train, offset + train + valSize),
  };
}

/** The split sizes asked for in `opts`, each one not given taken from `defaults`. */
export function sizesWithDefaults(
  opts: Partial<SplitSizes>,
  defaults: { trainSize: number; valSize: number; testSize: number },
): SplitSizes {
  return {
    trainSize: opts.trainSize ?? defaults.trainSize,
    valSize: opts.valSize ?? defaults.valSize,
    testSize: opts.testSize ?? defaults.testSize,
    offset: opts.offset,
  };
}

/** `split` applied to the train, val and test indices (in that order). */
export function mapSplits<T>(idx: SplitIndices, split: (ix: number[]) => T): { train: T; val: T; test: T } {
  return { train: split(idx.train), val: split(idx.val), test: split(idx.test) };
}

/** The examples at `indices` (copied) as a Split. */
export function takeExamples(
  x: Float32Array,
  y: Int32Array,
  indices: ArrayLike<number>,
  inputShape: number[],
  numClasses: number,
): Split {
  const d = featureSize(inputShape);
  const n = indices.length;
  const outX = new Float32Array(n * d);
  const outY = new Int32Array(n);
  for (let k = 0; k < n; k++) {
    const i = indices[k];
    outX.set(x.subarray(i * d, (i + 1) * d), k * d);
    outY[k] = y[i];
  }
  return { x: outX, y: outY, n, inputShape: [...inputShape], numClasses };
}

/** The same examples seen with another example shape of the same size (e.g. [784] ↔ [28, 28, 1]). */
export function withInputShape(split: Split, inputShape: number[]): Split {
  if (featureSize(inputShape) !== featureSize(split.inputShape)) {
    throw new Error(`cannot view examples of shape [${split.inputShape.join(', ')}] as [${inputShape.join(', ')}]: sizes differ`);
  }
  return { ...split, inputShape: [...inputShape] };
}

function batchTensors(split: Split, idx: ArrayLike<number>): Batch {
  const d = featureSize(split.inputShape);
  const b = idx.length;
  const xs = new Float32Array(b * d);
  const ys = new Float32Array(b * split.numClasses);
  for (let k = 0; k < b; k++) {
    const i = idx[k];
    xs.set(split.x.subarray(i * d, (i + 1) * d), k * d);
    ys[k * split.numClasses + split.y[i]] = 1;
  }
  return { xs: tf.tensor(xs, [b, ...split.inputShape], 'float32'), ys: tf.tensor2d(ys, [b, split.numClasses]) };
}

/**
 * Minibatches in a seeded shuffled order, reshuffled every epoch. Tensors are created lazily,
 * one batch per step; the caller disposes each batch's xs and ys.
 */
export function* batchIterator(
  split: Split,
  batchSize: number,
  seed: number,
  opts: BatchIteratorOptions = {},
): Generator<Batch> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchIterator: batchSize must be a positive integer, got ${batchSize}`);
  if (split.n < 1) throw new Error('batchIterator: the split is empty');
  const epochs = opts.epochs ?? 1;
  const dropRemainder = opts.dropRemainder ?? false;
  if (dropRemainder && split.n < batchSize) {
    throw new Error(`batchIterator: dropRemainder with batchSize ${batchSize} > ${split.n} examples yields nothing`);
  }
  for (let epoch = 0; epoch < epochs; epoch++) {
    const order = seededPermutation(split.n, seed, `batches:${epoch}`);
    for (let start = 0; start < split.n; start += batchSize) {
      const end = Math.min(start + batchSize, split.n);
      if (dropRemainder && end - start < batchSize) break;
      yield batchTensors(split, order.subarray(start, end));
    }
  }
}

/** All of a split as tensors {xs, ys}. The caller disposes them. */
export function splitTensors(split: Split): Batch {
  const idx = new Int32Array(split.n);
  for (let i = 0; i < split.n; i++) idx[i] = i;
  return batchTensors(split, idx);
}

/** The example shape the model expects, if the split's examples can be viewed that way. */
function modelInputShape(model: tf.LayersModel, split: Split): number[] {
  const shape = model.inputs[0]?.shape.slice(1);
  if (shape && shape.every((d) => typeof d === 'number' && d > 0)) {
    const s = shape as number[];
    if (featureSize(s) !== featureSize(split.inputShape)) {
      throw new Error(`model expects examples of shape [${s.join(', ')}], the split has [${split.inputShape.join(', ')}]`);
    }
    return s;
  }
  return split.inputShape;
}

/** Top-1 accuracy of the model on the split, batch by batch, no tensors left behind. */
export function evaluateAccuracy(model: tf.LayersModel, split: Split, batchSize = 512): number {
  if (split.n < 1) throw new Error('evaluateAccuracy: the split is empty');
  const shape = modelInputShape(model, split);
  const d = featureSize(shape);
  let correct = 0;
  for (let start = 0; start < split.n; start += batchSize) {
    const end = Math.min(start + batchSize, split.n);
    correct += tf.tidy(() => {
      const xs = tf.tensor(split.x.subarray(start * d, end * d), [end - start, ...shape], 'float32');
      const probs = model.predict(xs) as tf.Tensor;
      const labels = tf.tensor1d(split.y.subarray(start, end), 'int32');
      return tf.sum(tf.cast(tf.equal(tf.argMax(probs, -1), labels), 'int32')).dataSync()[0];
    });
  }
  return correct / split.n;
}
