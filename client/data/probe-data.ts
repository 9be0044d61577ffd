// The examples of a public probe split (docs/DESIGN.md §10), read from the shipped corpora: the
// coordinator reads them to fingerprint the split it announces, a Node device to check and use it.
// A probe window is taken from the same seeded order as the devices' own splits (mnistSplits), so
// a simulation can place it where no device's train, held-out or test window reaches.
import { seededPermutation } from './dataset.js';
import { loadMnistAll, MNIST_PIXELS } from './mnist.js';

export interface ProbeSource {
  dataset: string;
  seed: number;
  offset: number;
}

export interface ProbeExamples {
  /** count × featureSize(exampleShape), row-major */
  x: Float32Array;
  count: number;
  exampleShape: number[];
}

/** The corpora a probe split can be drawn from, and the input space each one is. */
export const PROBE_DATASETS: Record<string, { inputSpace: string }> = { mnist: { inputSpace: 'mnist' } };

/** Examples [offset, offset + count) of the corpus in the order seeded by `seed`; no labels. */
export function loadProbeExamples(source: ProbeSource, count: number): ProbeExamples {
  if (source.dataset !== 'mnist') throw new Error(`probe split: unknown dataset "${source.dataset}" (known: ${Object.keys(PROBE_DATASETS).join(', ')})`);
  const all = loadMnistAll();
  if (source.offset + count > all.n) throw new Error(`probe split: offset ${source.offset} + count ${count} exceeds the ${all.n} examples of mnist`);
  const order = seededPermutation(all.n, source.seed, 'mnist');
  const x = new Float32Array(count * MNIST_PIXELS);
  for (let i = 0; i < count; i++) {
    const row = order[source.offset + i];
    x.set(all.x.subarray(row * MNIST_PIXELS, (row + 1) * MNIST_PIXELS), i * MNIST_PIXELS);
  }
  return { x, count, exampleShape: [MNIST_PIXELS] };
}

/**
 * The input space a dataset's examples live in: devices of one space can run their models on the
 * same probe split (MNIST's flat and image layouts are one space: the same pixels).
 */
export function inputSpaceOf(datasetName: string): string {
  return PROBE_DATASETS[datasetName]?.inputSpace ?? datasetName;
}

/** A Node device's probe loader: the named examples of a corpus that ships with it. */
export function loadShippedProbe(desc: { source: ProbeSource; count: number }): ProbeExamples {
  return loadProbeExamples(desc.source, desc.count);
}
