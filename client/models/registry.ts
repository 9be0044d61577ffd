// Every model of the device zoo from one spec. A spec names the architecture and its widths; the
// input shape, the number of classes and the vocabulary come from the device's data, so one spec
// fits any dataset of a matching modality. All models are seeded (same seed → same weights) and
// end in a softmax layer named `out`; layer names are stable (dense_i, conv_i, embed, gru_0).
import type * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { DeviceData } from '../data/dataset.js';
import { describeDataset, type DatasetSpec, type DatasetDescription } from '../data/registry.js';
import { buildModel } from './mnist-models.js';
import { buildTextModel } from './text-models.js';

const width = z.number().int().min(1).max(4096);

const mlpSpec = z.strictObject({
  kind: z.literal('mlp'),
  /** Widths of dense_0 … (ReLU). Default [64]. */
  hidden: z.array(width).optional(),
});
const cnnSpec = z.strictObject({
  kind: z.literal('cnn'),
  /** Filters of conv_0 … (each followed by a 2×2 max pool). Default [8, 16]. */
  filters: z.array(width).min(1).optional(),
  kernelSize: z.number().int().min(1).max(11).optional(),
  /** Widths of dense_0 … after the flatten. Default [64]. */
  dense: z.array(width).optional(),
});
const embbagSpec = z.strictObject({
  kind: z.literal('embbag'),
  embedDim: width.optional(),
  hidden: width.optional(),
});
const charcnnSpec = z.strictObject({
  kind: z.literal('charcnn'),
  embedDim: width.optional(),
  filters: width.optional(),
  kernelSize: z.number().int().min(1).max(11).optional(),
  hidden: z.number().int().min(0).max(4096).optional(),
});
const gruSpec = z.strictObject({
  kind: z.literal('gru'),
  embedDim: width.optional(),
  units: width.optional(),
});

export const MODEL_KINDS = ['mlp', 'cnn', 'embbag', 'charcnn', 'gru'] as const;
export type ModelKind = (typeof MODEL_KINDS)[number];

/** A device's model, without the sizes that come from its data. Unknown keys are errors. */
export const modelSpecSchema = z.discriminatedUnion('kind', [mlpSpec, cnnSpec, embbagSpec, charcnnSpec, gruSpec], {
  error: (iss) => (iss.code === 'invalid_union' ? `unknown model kind: expected one of ${MODEL_KINDS.join(', ')}` : undefined),
});

export type ModelSpec = z.infer<typeof modelSpecSchema>;

/** Which modalities each kind accepts. */
export const MODEL_MODALITIES: Record<ModelKind, ReadonlyArray<DatasetDescription['modality']>> = {
  mlp: ['image', 'tabular'],
  cnn: ['image'],
  embbag: ['text'],
  charcnn: ['text'],
  gru: ['text'],
};

export const MLP_DEFAULT_HIDDEN = [64];
export const CNN_DEFAULTS = { filters: [8, 16], kernelSize: 3, dense: [64] };

/** Validate `input` as a ModelSpec; throws an Error whose message names each bad field. */
export function parseModelSpec(input: unknown, where = 'model'): ModelSpec {
  const r = modelSpecSchema.safeParse(input);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => `  ${[where, ...i.path.map(String)].join('.')}: ${i.message}`);
  throw new Error(`invalid model spec:\n${lines.join('\n')}`);
}

function mismatch(kind: ModelKind, modality: DatasetDescription['modality'], inputShape: readonly number[], task: string): string | undefined {
  if (!MODEL_MODALITIES[kind].includes(modality)) {
    const fits = MODEL_KINDS.filter((k) => MODEL_MODALITIES[k].includes(modality));
    return `model "${kind}" cannot read ${modality} data (${task}); use one of ${fits.join(', ')}`;
  }
  if (kind === 'cnn' && inputShape.length !== 3) {
    return `model "cnn" needs image-shaped examples [height, width, channels], ${task} has [${inputShape.join(', ')}]; set the dataset's layout: image`;
  }
  return undefined;
}

/**
 * Why `model` cannot be trained on `dataset`, or undefined if it can. Needs no data, so experiment
 * files can be checked before anything loads.
 */
export function modelDatasetMismatch(model: ModelSpec, dataset: DatasetSpec): string | undefined {
  const d = describeDataset(dataset);
  return mismatch(model.kind, d.modality, d.inputShape, d.task);
}

/** The zoo's extras on DeviceData: text sets say how many token ids there are. */
type DataWithVocab = DeviceData & { vocabSize?: number };

function modalityOf(data: DataWithVocab): DatasetDescription['modality'] {
  if (data.vocabSize !== undefined) return 'text';
  return data.train.inputShape.length === 3 || data.task.startsWith('mnist') ? 'image' : 'tabular';
}

/**
 * The model `spec` sized for `data`: input shape and classes from data.train, the Embedding rows
 * from data.vocabSize (text sets). Uncompiled; the caller owns it (dispose() when done).
 */
export function buildModelFor(spec: ModelSpec, data: DeviceData, seed: number): tf.LayersModel {
  const s = parseModelSpec(spec);
  const d = data as DataWithVocab;
  const inputShape = [...d.train.inputShape];
  const classes = d.train.numClasses;
  const why = mismatch(s.kind, modalityOf(d), inputShape, d.task);
  if (why) throw new Error(why);
  switch (s.kind) {
    case 'mlp':
      return buildModel({ kind: 'mlp', inputShape, hidden: s.hidden ?? MLP_DEFAULT_HIDDEN, classes }, seed);
    case 'cnn':
      return buildModel(
        {
          kind: 'cnn',
          inputShape: inputShape as [number, number, number],
          filters: s.filters ?? CNN_DEFAULTS.filters,
          kernelSize: s.kernelSize ?? CNN_DEFAULTS.kernelSize,
          dense: s.dense ?? CNN_DEFAULTS.dense,
          classes,
        },
        seed,
      );
    case 'embbag':
    case 'charcnn':
    case 'gru': {
      if (inputShape.length !== 1) throw new Error(`model "${s.kind}" needs token sequences of shape [seqLen], got [${inputShape.join(', ')}]`);
      return buildTextModel(s, { vocabSize: d.vocabSize!, seqLen: inputShape[0], numClasses: classes }, seed);
    }
  }
}
