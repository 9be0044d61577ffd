// A tiny two-device MNIST experiment (MLP source → MLP target, first layers paired) for the
// runner's tests: small enough to finish in seconds, real enough to exercise every path.
import { parseExperiment, type Experiment } from '../../simulations/experiment/schema.js';

export const tinyMnist = (trainSize: number, offset: number, valSize = 0) => ({ name: 'mnist', trainSize, valSize, testSize: 200, offset });

export interface TinyShape {
  name: string;
  steps: number;
  targetEvalEvery: number;
  sourceEvalEvery: number;
  baselines: string[];
  mode: 'process' | 'inprocess';
}

export function tinyExperimentObject(shape: TinyShape, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: shape.name,
    seeds: [0],
    target: 'target',
    devices: [
      { id: 'target', model: { kind: 'mlp', hidden: [16] }, dataset: tinyMnist(100, 0, 100), steps: shape.steps, batchSize: 16, evalEvery: shape.targetEvalEvery },
      { id: 'source', model: { kind: 'mlp', hidden: [16] }, dataset: tinyMnist(300, 200), steps: shape.steps, batchSize: 16, evalEvery: shape.sourceEvalEvery },
    ],
    pairs: [{ source: { device: 'source', slot: 'dense_0' }, target: { device: 'target', slot: 'dense_0' }, rank: 4, tCycle: 6, k: 3 }],
    baselines: shape.baselines,
    mode: shape.mode,
    ...over,
  };
}

export function tinyExperiment(shape: TinyShape, over: Record<string, unknown> = {}): Experiment {
  return parseExperiment(tinyExperimentObject(shape, over));
}
