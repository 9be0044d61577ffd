// The local training that every network-free baseline shares (alone, fedavg, distill, copy).
// It is the device's own loop (client/training-loop.ts) with nothing attached: the model from buildModelFor(spec, data,
// deviceSeed(seed, id)), the device's optimiser and learning rate, and batches from
// batchIterator(data.train, batchSize, deviceSeed(seed, id), { epochs: Infinity }). The device
// client reproduces this order, so 'alone' here is comparable with 'mergenet' there.
//
// Test accuracy is measured every `evalEvery` steps and after the last step (never at step 0);
// each curve point's loss is the mean training loss since the previous point.
import * as tf from '@tensorflow/tfjs';
import type { DeviceData } from '../../client/data/dataset.js';
import { loadDeviceData, type ZooDeviceData } from '../../client/data/registry.js';
import { buildModelFor } from '../../client/models/registry.js';
import { deviceSeed } from '../experiment/seeds.js';
import { TrainingLoop } from '../../client/training-loop.js';
import type { DeviceSpec, Experiment } from '../experiment/schema.js';
import type { CurvePoint } from '../report/types.js';

export interface LocalProgress {
  device: string;
  /** Steps done so far. */
  step: number;
  steps: number;
  /** Training loss of the latest step. */
  loss: number;
  /** Latest test accuracy, once one has been measured. */
  acc?: number;
  /** What this training is within a baseline: 'target', 'teacher', 'source', 'peer'. */
  phase?: string;
}

export interface LocalRunOptions {
  device: DeviceSpec;
  data: DeviceData;
  /** The experiment seed; model init and batch order use deviceSeed(seed, device.id). */
  seed: number;
  /** Override of the model-init seed (FedAvg starts every participant from one global init). */
  modelSeed?: number;
  /** Default: device.steps. */
  steps?: number;
  /** Called once on the freshly built model, before the first step (e.g. to initialise a slot). */
  init?: (model: tf.LayersModel) => void;
  /**
   * Soft targets for one batch, [b, classes], in place of the one-hot `ys`. The loop owns and
   * disposes the returned tensor (returning `ys` itself is allowed). `step` counts from 0.
   */
  targets?: (xs: tf.Tensor, ys: tf.Tensor2D, step: number) => tf.Tensor;
  /** Called after every step with the number of steps done, before that step's evaluation. */
  sync?: (step: number, model: tf.LayersModel) => void;
  onProgress?: (p: LocalProgress) => void;
  /** Return the trained model (the caller then owns it) instead of disposing it. */
  keepModel?: boolean;
  /**
   * Sleep (slowdown − 1)× each step's own time, as the device client does for weak hardware, so
   * that wall times compare with the fleet's. Default true.
   */
  honourSlowdown?: boolean;
  /**
   * LocalRun only: trainStep does not evaluate; the driver calls evaluateIfDue() when it is ready
   * (FedAvg evaluates after the average is in). Default false.
   */
  deferEvaluation?: boolean;
}

export interface LocalTrainingResult {
  curve: CurvePoint[];
  finalAcc: number;
  bestAcc: number;
  wallMs: number;
  steps: number;
  /** Only with keepModel; the caller owns it. */
  model?: tf.LayersModel;
}

/**
 * One device's training, a step at a time, on the project's one loop (client/training-loop.ts).
 * trainLocally drives one of these; FedAvg drives several in lockstep and averages their weights
 * between steps.
 */
export class LocalRun {
  readonly device: DeviceSpec;
  readonly data: DeviceData;
  readonly model: tf.LayersModel;
  readonly steps: number;
  private readonly loop: TrainingLoop;
  private readonly opts: LocalRunOptions;
  private readonly t0 = performance.now();
  private disposed = false;

  constructor(opts: LocalRunOptions) {
    const steps = opts.steps ?? opts.device.steps;
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`device "${opts.device.id}": steps must be a positive integer, got ${steps}`);
    this.opts = opts;
    this.device = opts.device;
    this.data = opts.data;
    this.steps = steps;
    const own = deviceSeed(opts.seed, opts.device.id);
    this.model = buildModelFor(opts.device.model, opts.data, opts.modelSeed ?? own);
    try {
      opts.init?.(this.model);
      this.loop = new TrainingLoop({
        model: this.model,
        train: opts.data.train,
        test: opts.data.test,
        optimizer: opts.device.optimizer,
        lr: opts.device.lr,
        batchSize: opts.device.batchSize,
        seed: own,
        steps,
        evalEvery: opts.device.evalEvery,
        evalAtEnd: true,
        evaluation: opts.deferEvaluation ? 'manual' : 'auto',
        slowdown: opts.honourSlowdown === false ? 1 : opts.device.slowdown,
        targets: opts.targets,
        hooks: { onStepEnd: opts.sync && ((step) => opts.sync!(step, this.model)) },
      });
    } catch (err) {
      this.model.dispose();
      throw err;
    }
  }

  /** Steps done so far. */
  get step(): number {
    return this.loop.step;
  }

  get finished(): boolean {
    return this.loop.finished;
  }

  /**
   * One optimiser step (then sync, then an evaluation if one is due), then the loop's pause: the
   * straggler's sleep or a yield to the event loop. Resolves with the step's loss.
   */
  async trainStep(): Promise<number> {
    if (this.disposed) throw new Error(`device "${this.device.id}": the run has been disposed`);
    let loss: number;
    try {
      loss = this.loop.trainStep();
    } catch (err) {
      throw new Error(`device "${this.device.id}": ${(err as Error).message}`, { cause: err });
    }
    this.opts.onProgress?.({ device: this.device.id, step: this.loop.step, steps: this.steps, loss, acc: this.loop.curve.last?.acc });
    await this.loop.pause();
    return loss;
  }

  /** Evaluate if this step is a multiple of evalEvery or the last one (and not evaluated yet). */
  evaluateIfDue(): void {
    this.loop.evaluateIfDue();
  }

  /** The result; disposes the trainer, and the model unless keepModel. */
  finish(keepModel = false): LocalTrainingResult {
    const { curve, finalAcc, bestAcc } = this.loop.summary();
    const result: LocalTrainingResult = { curve, finalAcc, bestAcc, wallMs: Math.round(performance.now() - this.t0), steps: this.loop.step };
    if (keepModel) result.model = this.model;
    this.dispose(keepModel);
    return result;
  }

  dispose(keepModel = false): void {
    if (this.disposed) return;
    this.disposed = true;
    this.loop.close();
    if (!keepModel) this.model.dispose();
  }
}

/**
 * Train one device on its own data for `steps` (default device.steps). Deterministic: the same
 * seed gives the same curve on the same backend.
 */
export async function trainLocally(opts: LocalRunOptions): Promise<LocalTrainingResult> {
  const run = new LocalRun(opts);
  try {
    while (!run.finished) await run.trainStep();
  } catch (err) {
    run.dispose();
    throw err;
  }
  return run.finish(opts.keepModel ?? false);
}

// ---- helpers the baselines share ----

/** The device `id` of the experiment, or a readable error naming the devices there are. */
export function deviceById(e: Experiment, id: string): DeviceSpec {
  const d = e.devices.find((x) => x.id === id);
  if (!d) throw new Error(`experiment "${e.name}": no device "${id}" (devices: ${e.devices.map((x) => x.id).join(', ')})`);
  return d;
}

/** The device's splits for the experiment seed (every device uses the experiment seed). */
export function loadDataFor(device: DeviceSpec, seed: number): ZooDeviceData {
  return loadDeviceData(device.dataset, seed);
}

/** Floats in all of a model's weights (what sending the full model costs, ×4 bytes). */
export function modelFloats(model: tf.LayersModel): number {
  return model.weights.reduce((acc, w) => acc + w.shape.reduce((a: number, b) => a * (b ?? 1), 1), 0);
}
