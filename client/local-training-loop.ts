// The device's own training (docs/DESIGN.md §1): one step after another on its own data, never waiting
// on the network. Each iteration runs the caller's work around one step, then yields to the event
// loop (or sleeps, when a slowdown stands in for weak hardware) so socket events are handled
// between steps. It also keeps the loss, accuracy and speed figures and runs the evaluations.
import type * as tf from '@tensorflow/tfjs';
import { batchIterator, evaluateAccuracy, featureSize, withInputShape, type Batch, type DeviceData, type Split } from './data/dataset.js';
import type { EvalEvent } from './device-events.js';
import { Trainer, type OptimizerName } from './trainer.js';
import { sleep, yieldToEventLoop } from './yield.js';

/** The model's per-example input shape, when fully known. */
function modelInputShape(model: tf.LayersModel): number[] | undefined {
  const s = model.inputs[0]?.shape.slice(1);
  return s && s.every((d) => typeof d === 'number' && d > 0) ? (s as number[]) : undefined;
}

/** View a split with the model's example shape (e.g. MNIST [784] for a CNN taking [28, 28, 1]). */
function fitSplit(model: tf.LayersModel, split: Split): Split {
  const want = modelInputShape(model);
  if (!want || want.join(',') === split.inputShape.join(',')) return split;
  if (featureSize(want) !== featureSize(split.inputShape)) {
    throw new Error(`model expects examples of shape [${want.join(', ')}], the data has [${split.inputShape.join(', ')}]`);
  }
  return withInputShape(split, want);
}

/** Minibatches the training accuracy is averaged over (the guard's "memorised" test). */
export const TRAIN_ACC_WINDOW = 10;

export interface LocalTrainingOptions {
  optimizer: OptimizerName;
  lr: number;
  batchSize: number;
  seed: number;
  /** Evaluate on the val split every this many steps (0 = never). */
  evalEvery: number;
  /** Also evaluate the test split at each evaluation. */
  evalTest: boolean;
}

/** The caller's work around each step; all of it runs inside the loop, between steps. */
export interface StepHooks {
  /** whether to take another step */
  proceed(): boolean;
  /** a wait before the step (a paced device waiting for the coordinator's answer), if any */
  pace?(): Promise<void> | undefined;
  beforeStep(): void;
  afterStep(loss: number): void;
  /** an evaluation was made (after afterStep, every evalEvery steps) */
  evaluated(ev: EvalEvent): void;
}

export class LocalTrainingLoop {
  /** local steps taken */
  step = 0;
  lastLoss: number | undefined;
  lastValAcc: number | undefined;
  lastTestAcc: number | undefined;
  stepsPerSec: number | undefined;
  /** accuracies of the last TRAIN_ACC_WINDOW training minibatches */
  private readonly batchAccs: number[] = [];
  readonly train: Split;
  readonly val: Split;
  readonly test: Split;
  private batches: Iterator<Batch> | undefined;
  private lossSinceEval = 0;
  private stepsSinceEval = 0;
  private evalClock = 0;

  /** Owned by the loop: the only thing that changes the model's weights by training. */
  readonly trainer: Trainer;

  constructor(
    private readonly model: tf.LayersModel,
    data: DeviceData,
    private readonly opts: LocalTrainingOptions,
  ) {
    this.train = fitSplit(model, data.train);
    this.val = fitSplit(model, data.val);
    this.test = fitSplit(model, data.test);
    this.trainer = new Trainer(model, { optimizer: opts.optimizer, lr: opts.lr });
  }

  /** Train until `maxSteps` or until hooks.proceed() says no. Throws what a step throws. */
  async run(hooks: StepHooks, maxSteps = Infinity, slowdown = 1): Promise<void> {
    this.batches = batchIterator(this.train, this.opts.batchSize, this.opts.seed, { epochs: Infinity });
    this.evalClock = performance.now();
    while (hooks.proceed() && this.step < maxSteps) {
      const wait = hooks.pace?.();
      if (wait) {
        await wait;
        if (!hooks.proceed()) break;
      }
      const t0 = performance.now();
      hooks.beforeStep();
      const loss = this.trainOneStep();
      this.step += 1;
      if (this.trainer.lastBatchAcc !== undefined) {
        this.batchAccs.push(this.trainer.lastBatchAcc);
        if (this.batchAccs.length > TRAIN_ACC_WINDOW) this.batchAccs.shift();
      }
      this.lastLoss = loss;
      this.lossSinceEval += loss;
      this.stepsSinceEval += 1;
      hooks.afterStep(loss);
      if (this.opts.evalEvery > 0 && this.step % this.opts.evalEvery === 0) this.evaluate(hooks);
      const spent = performance.now() - t0;
      // Yield every step: socket events (transfers, plans) are handled between steps.
      if (slowdown > 1) await sleep((slowdown - 1) * spent);
      else await yieldToEventLoop();
    }
  }

  /** Mean accuracy over the last TRAIN_ACC_WINDOW training minibatches (undefined before the first). */
  get trainAcc(): number | undefined {
    if (this.batchAccs.length === 0) return undefined;
    return this.batchAccs.reduce((a, b) => a + b, 0) / this.batchAccs.length;
  }

  /** Accuracy on the val split now (undefined when it is empty); remembered for the status. */
  valAccuracy(): number | undefined {
    const valAcc = this.val.n > 0 ? evaluateAccuracy(this.model, this.val) : undefined;
    if (valAcc !== undefined) this.lastValAcc = valAcc;
    return valAcc;
  }

  /** Free the trainer and end the training batch stream. */
  close(): void {
    this.trainer.dispose();
    this.batches?.return?.(undefined);
  }

  private trainOneStep(): number {
    const next = this.batches!.next();
    if (next.done) throw new Error('the training batch stream ended');
    const { xs, ys } = next.value;
    try {
      const loss = this.trainer.step(xs, ys);
      if (!Number.isFinite(loss)) throw new Error(`training loss is ${loss} at step ${this.step + 1}`);
      return loss;
    } finally {
      xs.dispose();
      ys.dispose();
    }
  }

  private evaluate(hooks: StepHooks): void {
    const now = performance.now();
    const elapsed = (now - this.evalClock) / 1000;
    this.stepsPerSec = elapsed > 0 ? this.stepsSinceEval / elapsed : undefined;
    const loss = this.stepsSinceEval > 0 ? this.lossSinceEval / this.stepsSinceEval : (this.lastLoss ?? NaN);
    const valAcc = this.valAccuracy();
    const ev: EvalEvent = { step: this.step, loss, valAcc, stepsPerSec: this.stepsPerSec ?? 0 };
    if (this.opts.evalTest && this.test.n > 0) {
      ev.testAcc = evaluateAccuracy(this.model, this.test);
      this.lastTestAcc = ev.testAcc;
    }
    this.lossSinceEval = 0;
    this.stepsSinceEval = 0;
    hooks.evaluated(ev);
    // Evaluation time is not training time: restart the clock after it.
    this.evalClock = performance.now();
  }
}
