// Baseline 'fedavg': federated averaging (McMahan et al. 2017), where it is possible at all: the
// participating devices share one architecture. They train in lockstep, one step each per round,
// and every `every` rounds all their weights are replaced by the mean weighted by training-set
// size. Each device keeps its own optimiser state (Adam moments are local, as in FedAvg with
// local adaptive optimisers); only the weights are averaged. All devices start from one global
// model: the target's own initial weights (a modelSeed override of each device's seed).
//
// A device that has done all its steps drops out of later averages; the run ends with the target.
import { deviceSeed } from '../experiment/seeds.js';
import * as tf from '@tensorflow/tfjs';
import type { DeviceSpec, Experiment } from '../experiment/schema.js';
import type { ConditionRun } from '../report/types.js';
import { deviceById, loadDataFor, LocalRun, modelFloats, type LocalProgress } from './local-training.js';

export const FEDAVG_DEFAULT_EVERY = 10;

export interface FedAvgInspect {
  /** After every device's step of round `step`, before the average. */
  beforeSync?: (step: number, models: tf.LayersModel[], devices: DeviceSpec[]) => void;
  /** Right after the average was written into every participant. */
  afterSync?: (step: number, models: tf.LayersModel[], devices: DeviceSpec[]) => void;
}

/** The devices that take part: fedavg.devices, else every device of the experiment. */
export function fedavgDevices(e: Experiment): DeviceSpec[] {
  const ids = e.fedavg?.devices ?? e.devices.map((d) => d.id);
  if (!ids.includes(e.target)) throw new Error(`fedavg: the devices (${ids.join(', ')}) must include the target "${e.target}"`);
  if (ids.length < 2) throw new Error(`fedavg needs at least two devices, got ${ids.length}`);
  return ids.map((id) => deviceById(e, id));
}

function shapesOf(model: tf.LayersModel): string[] {
  return model.weights.map((w) => `${w.originalName.split('/').slice(-2).join('/')} [${w.shape.join('×')}]`);
}

/**
 * Throws a readable error unless every model has the same weights, in the same order, with the
 * same shapes, and the same model kind: averaging anything else is meaningless.
 */
export function checkSameArchitecture(devices: DeviceSpec[], models: tf.LayersModel[]): void {
  const ref = shapesOf(models[0]);
  for (let i = 1; i < models.length; i++) {
    const here = shapesOf(models[i]);
    const same = devices[i].model.kind === devices[0].model.kind && here.length === ref.length && here.every((s, j) => s === ref[j]);
    if (!same) {
      const j = here.findIndex((s, k) => s !== ref[k]);
      const where = devices[i].model.kind !== devices[0].model.kind
        ? `model kinds differ (${devices[0].model.kind} vs ${devices[i].model.kind})`
        : j >= 0 ? `weight ${j}: ${ref[j] ?? '(none)'} vs ${here[j]}` : `${ref.length} vs ${here.length} weights`;
      throw new Error(
        `fedavg needs devices that share one architecture, but "${devices[0].id}" (${JSON.stringify(devices[0].model)}) and ` +
          `"${devices[i].id}" (${JSON.stringify(devices[i].model)}) differ: ${where}. ` +
          'Use FedAvg only in a scenario whose participating devices have identical model specs and label sets (fedavg.devices selects them).',
      );
    }
  }
}

/**
 * Replace every weight of every model by Σ_i (n_i / Σn)·W_i, the same tensor for all, so that the
 * models hold bit-identical weights afterwards.
 */
export function averageWeightsInto(models: tf.LayersModel[], sizes: number[]): void {
  if (models.length !== sizes.length || models.length === 0) throw new Error('averageWeightsInto: one size per model needed');
  const total = sizes.reduce((a, b) => a + b, 0);
  if (!(total > 0)) throw new Error('averageWeightsInto: the sizes must sum to a positive number');
  const count = models[0].weights.length;
  for (let j = 0; j < count; j++) {
    const mean = tf.tidy(() => {
      let acc: tf.Tensor | undefined;
      models.forEach((m, i) => {
        const term = tf.mul(m.weights[j].read(), sizes[i] / total);
        acc = acc ? tf.add(acc, term) : term;
      });
      return acc!;
    });
    for (const m of models) m.weights[j].write(mean);
    mean.dispose();
  }
}

export async function runFedAvg(
  e: Experiment,
  seed: number,
  onProgress?: (p: LocalProgress) => void,
  inspect?: FedAvgInspect,
): Promise<ConditionRun> {
  const t0 = performance.now();
  const devices = fedavgDevices(e);
  const every = e.fedavg?.every ?? FEDAVG_DEFAULT_EVERY;
  const runs: LocalRun[] = [];
  try {
    for (const device of devices) {
      const phase = device.id === e.target ? 'target' : 'peer';
      runs.push(
        new LocalRun({
          device,
          data: loadDataFor(device, seed),
          seed,
          // FedAvg starts every participant from one global model: the target's own init
          modelSeed: deviceSeed(seed, e.target),
          deferEvaluation: true,
          onProgress: onProgress && ((p) => onProgress({ ...p, phase })),
        }),
      );
    }
    checkSameArchitecture(devices, runs.map((r) => r.model));
  } catch (err) {
    for (const r of runs) r.dispose();
    throw err;
  }
  const target = runs[devices.findIndex((d) => d.id === e.target)];
  const floats = modelFloats(target.model);
  let syncs = 0;
  try {
    for (let round = 1; !target.finished; round++) {
      const active = runs.filter((r) => !r.finished);
      for (const r of active) await r.trainStep();
      if (round % every === 0 && active.length > 1) {
        const models = active.map((r) => r.model);
        const specs = active.map((r) => r.device);
        inspect?.beforeSync?.(round, models, specs);
        averageWeightsInto(models, active.map((r) => r.data.train.n));
        if (active.includes(target)) syncs++;
        inspect?.afterSync?.(round, models, specs);
      }
      target.evaluateIfDue();
    }
  } catch (err) {
    for (const r of runs) r.dispose();
    throw err;
  }
  const res = target.finish();
  for (const r of runs) if (r !== target) r.dispose();
  return {
    condition: 'fedavg',
    seed,
    device: e.target,
    curve: res.curve,
    finalAcc: res.finalAcc,
    bestAcc: res.bestAcc,
    // each sync: the target uploads its whole model and downloads the average
    bytesSent: syncs * 2 * floats * 4,
    bytesFullWeights: syncs * 2 * floats * 4,
    wallMs: Math.round(performance.now() - t0),
    extra: { syncs, participants: devices.length, every },
  };
}
