// The local training loop that every network-free baseline shares (alone, fedavg, distill, copy).
// It is the device's own loop with nothing attached: the model from buildModelFor(spec, data,
// deviceSeed(seed, id)), the device's optimiser and learning rate, and batches from
// batchIterator(data.train, batchSize, deviceSeed(seed, id), { epochs: Infinity }). The device
// client reproduces this order, so 'alone' here is comparable with 'mergenet' there.
//
// Test accuracy is measured every `evalEvery` steps and after the last step (never at step 0);
// each curve point's loss is the mean training loss since the previous point.
import * as tf from '@tensorflow/tfjs';
import { batchIterator, evaluateAccuracy, type Batch, type DeviceData } from '../../client/data/dataset.js';
import { loadDeviceData, type ZooDeviceData } from '../../client/data/registry.js';
import { buildModelFor } from '../../client/models/registry.js';
import { deviceSeed } from '../experiment/seeds.js';
import { Trainer } from '../../client/trainer.js';
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

/** Block the thread for `ms` milliseconds (a synchronous sleep: the loop is synchronous per step). */
function sleepSync(ms: number): void {
  if (ms <= 0) return;
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * One device's training, a step at a time. trainLocally drives one of these; FedAvg drives
 * several in lockstep and averages their weights between steps.
 */
export class LocalRun {
  readonly device: DeviceSpec;
  readonly data: DeviceData;
  readonly model: tf.LayersModel;
  readonly steps: number;
  readonly curve: CurvePoint[] = [];
  private readonly trainer: Trainer;
  private readonly batches: Generator<Batch>;
  private readonly opts: LocalRunOptions;
  private readonly slowdown: number;
  private done = 0;
  private lossSum = 0;
  private lossN = 0;
  private busyMs = 0;
  private disposed = false;

  constructor(opts: LocalRunOptions) {
    const steps = opts.steps ?? opts.device.steps;
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`device "${opts.device.id}": steps must be a positive integer, got ${steps}`);
    this.opts = opts;
    this.device = opts.device;
    this.data = opts.data;
    this.steps = steps;
    this.slowdown = opts.honourSlowdown === false ? 1 : opts.device.slowdown;
    const own = deviceSeed(opts.seed, opts.device.id);
    this.model = buildModelFor(opts.device.model, opts.data, opts.modelSeed ?? own);
    try {
      opts.init?.(this.model);
      this.trainer = new Trainer(this.model, { optimizer: opts.device.optimizer, lr: opts.device.lr });
    } catch (err) {
      this.model.dispose();
      throw err;
    }
    this.batches = batchIterator(opts.data.train, opts.device.batchSize, own, { epochs: Infinity });
  }

  /** Steps done so far. */
  get step(): number {
    return this.done;
  }

  get finished(): boolean {
    return this.done >= this.steps;
  }

  /** Milliseconds spent in steps and evaluations (including any slowdown sleep). */
  get elapsedMs(): number {
    return this.busyMs;
  }

  /** One optimiser step (then sync, then an evaluation if one is due). Returns the step's loss. */
  trainStep(): number {
    if (this.disposed) throw new Error(`device "${this.device.id}": the run has been disposed`);
    if (this.finished) throw new Error(`device "${this.device.id}": all ${this.steps} steps are done`);
    const t0 = performance.now();
    const b = this.batches.next().value as Batch;
    let loss: number;
    try {
      if (this.opts.targets) {
        const soft = this.opts.targets(b.xs, b.ys, this.done);
        try {
          if (soft.shape.length !== 2 || soft.shape[0] !== b.ys.shape[0] || soft.shape[1] !== b.ys.shape[1]) {
            throw new Error(`device "${this.device.id}": soft targets must have shape [${b.ys.shape.join(', ')}], got [${soft.shape.join(', ')}]`);
          }
          loss = this.trainer.step(b.xs, soft);
        } finally {
          if (soft !== b.ys && soft !== b.xs) soft.dispose();
        }
      } else {
        loss = this.trainer.step(b.xs, b.ys);
      }
    } finally {
      tf.dispose([b.xs, b.ys]);
    }
    this.done += 1;
    this.lossSum += loss;
    this.lossN += 1;
    const stepMs = performance.now() - t0;
    sleepSync((this.slowdown - 1) * stepMs);
    this.busyMs += performance.now() - t0;
    this.opts.sync?.(this.done, this.model);
    if (!this.opts.deferEvaluation) this.evaluateIfDue();
    this.opts.onProgress?.({ device: this.device.id, step: this.done, steps: this.steps, loss, acc: this.curve.at(-1)?.acc });
    return loss;
  }

  /** Evaluate if this step is a multiple of evalEvery or the last one (and not evaluated yet). */
  evaluateIfDue(): void {
    const due = this.done > 0 && (this.done % this.device.evalEvery === 0 || this.done === this.steps);
    if (due && this.curve.at(-1)?.step !== this.done) this.evaluate();
  }

  /** Measure test accuracy now and add a curve point (replacing one already at this step). */
  evaluate(): number {
    const t0 = performance.now();
    const acc = evaluateAccuracy(this.model, this.data.test);
    const last = this.curve.at(-1);
    if (last && last.step === this.done) last.acc = acc;
    else {
      this.curve.push({ step: this.done, acc, loss: this.lossN ? this.lossSum / this.lossN : undefined });
      this.lossSum = 0;
      this.lossN = 0;
    }
    this.busyMs += performance.now() - t0;
    return acc;
  }

  /** The result; disposes the trainer, and the model unless keepModel. */
  finish(keepModel = false): LocalTrainingResult {
    if (this.curve.length === 0 || this.curve.at(-1)!.step !== this.done) this.evaluate();
    const result: LocalTrainingResult = {
      curve: this.curve.map((p) => ({ ...p })),
      finalAcc: this.curve.at(-1)!.acc,
      bestAcc: Math.max(...this.curve.map((p) => p.acc)),
      wallMs: Math.round(this.busyMs),
      steps: this.done,
    };
    if (keepModel) result.model = this.model;
    this.dispose(keepModel);
    return result;
  }

  dispose(keepModel = false): void {
    if (this.disposed) return;
    this.disposed = true;
    this.trainer.dispose();
    if (!keepModel) this.model.dispose();
  }
}

/** Yield to the event loop now and then, so progress bars redraw and signals are handled. */
export const YIELD_EVERY = 10;
export const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Train one device on its own data for `steps` (default device.steps). Deterministic: the same
 * seed gives the same curve on the same backend.
 */
export async function trainLocally(opts: LocalRunOptions): Promise<LocalTrainingResult> {
  const t0 = performance.now();
  const run = new LocalRun(opts);
  try {
    while (!run.finished) {
      run.trainStep();
      if (run.step % YIELD_EVERY === 0) await yieldToEventLoop();
    }
  } catch (err) {
    run.dispose();
    throw err;
  }
  const result = run.finish(opts.keepModel ?? false);
  result.wallMs = Math.round(performance.now() - t0);
  return result;
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
