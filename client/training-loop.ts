// The one local training loop (docs/DESIGN.md §1, §9). The device (client/local-training-loop.ts),
// the network-free baselines (simulations/baselines/local-training.ts:LocalRun), the fleet's
// device runner (through the device) and the reference loop (simulations/reference/paper-loop.ts)
// all train with it, so on the same seed they take the same batches in the same order and measure
// the same curve: "alone" in one is "alone" in the others, bit for bit.
//
// Each step: round begin (every roundSteps steps), step begin, one Trainer.step on the next batch,
// step end, an evaluation when due, round end. The callers' work lives in the hooks, as in discojs'
// Trainer. No Node built-ins here (globalThis.performance, client/yield.ts), so it runs in a browser.
import type * as tf from '@tensorflow/tfjs';
import { batchIterator, evaluateAccuracy, featureSize, withInputShape, type Batch, type Split } from './data/dataset.js';
import { CurveRecorder, type CurveSummary } from './curve-recorder.js';
import { sleep, yieldToEventLoop } from './yield.js';
import { Trainer, type OptimizerName } from './trainer.js';

/** Minibatches the training accuracy is averaged over (the guard's "memorised" test). */
export const TRAIN_ACC_WINDOW = 10;

/** What one evaluation measured. */
export interface Evaluation {
  /** steps done */
  step: number;
  /** mean training loss since the previous evaluation (the last step's loss if none since) */
  loss: number;
  /** undefined when no val split is evaluated or it is empty */
  valAcc: number | undefined;
  testAcc?: number;
  /** steps per second since the previous evaluation, evaluation time excluded */
  stepsPerSec: number;
}

/** The caller's work around the steps; every hook runs inside the loop, between steps. */
export interface TrainingHooks {
  /** whether to take another step (run() only) */
  proceed?(): boolean;
  /** a wait before the step (a paced device waiting for the coordinator's answer), if any (run() only) */
  pace?(): Promise<void> | undefined;
  /** before the first step of round `round` (steps done = round × roundSteps) */
  onRoundBegin?(round: number, step: number): void;
  /** before a step; `step` = steps done so far */
  onStepBegin?(step: number): void;
  /** after a step; `step` counts it */
  onStepEnd?(step: number, loss: number): void;
  /** an evaluation was made (after onStepEnd) */
  onEvaluation?(ev: Evaluation): void;
  /** after the last step of a round (and its evaluation) */
  onRoundEnd?(round: number, step: number): void;
}

export interface TrainingLoopOptions {
  model: tf.LayersModel;
  train: Split;
  optimizer: OptimizerName;
  lr: number;
  batchSize: number;
  /** the batch order's seed */
  seed: number;
  /** steps to take (default: until run()'s proceed says no) */
  steps?: number;
  /** evaluate every this many steps (0 = never) */
  evalEvery: number;
  /** also evaluate after the last step (needs a finite `steps`) */
  evalAtEnd?: boolean;
  /** accuracy reported as valAcc at each evaluation (nothing when absent or empty) */
  val?: Split;
  /** accuracy recorded as a curve point at each evaluation (nothing when absent or empty) */
  test?: Split;
  /** 'manual': steps never evaluate; the driver calls evaluateIfDue (FedAvg, after its average). */
  evaluation?: 'auto' | 'manual';
  /** after each step, sleep (slowdown − 1)× the step's own time (weak hardware); run() only */
  slowdown?: number;
  /** rounds for onRoundBegin/onRoundEnd (default: no rounds) */
  roundSteps?: number;
  /**
   * Soft targets for one batch, [b, classes], in place of the one-hot `ys`; `step` counts from 0.
   * The loop disposes the returned tensor (returning `ys` itself is allowed).
   */
  targets?: (xs: tf.Tensor, ys: tf.Tensor2D, step: number) => tf.Tensor;
  /** throw when a step's loss is not finite (a device must not keep training on NaN) */
  requireFiniteLoss?: boolean;
  hooks?: TrainingHooks;
}

/** The model's per-example input shape, when fully known. */
function modelInputShape(model: tf.LayersModel): number[] | undefined {
  const s = model.inputs[0]?.shape.slice(1);
  return s && s.every((d) => typeof d === 'number' && d > 0) ? (s as number[]) : undefined;
}

/** View a split with the model's example shape (e.g. MNIST [784] for a CNN taking [28, 28, 1]). */
export function fitSplit(model: tf.LayersModel, split: Split): Split {
  const want = modelInputShape(model);
  if (!want || want.join(',') === split.inputShape.join(',')) return split;
  if (featureSize(want) !== featureSize(split.inputShape)) {
    throw new Error(`model expects examples of shape [${want.join(', ')}], the data has [${split.inputShape.join(', ')}]`);
  }
  return withInputShape(split, want);
}

const now = (): number => globalThis.performance.now();

export class TrainingLoop {
  /** Owned by the loop: the only thing that changes the model's weights by training. */
  readonly trainer: Trainer;
  readonly model: tf.LayersModel;
  readonly train: Split;
  readonly val: Split | undefined;
  readonly test: Split | undefined;
  /** test accuracy at each evaluation, with the mean loss since the previous point */
  readonly curve = new CurveRecorder();
  hooks: TrainingHooks;
  /** steps to take; run() may change it */
  steps: number;
  slowdown: number;
  /** steps done */
  step = 0;
  lastLoss: number | undefined;
  lastValAcc: number | undefined;
  lastTestAcc: number | undefined;
  stepsPerSec: number | undefined;
  /** the latest step's own time in ms (hooks and batch included, evaluation excluded) */
  lastStepMs = 0;
  private readonly opts: TrainingLoopOptions;
  private readonly batches: Generator<Batch>;
  private readonly batchAccs: number[] = [];
  /** losses since the previous evaluation (the curve's window closes only at test points) */
  private lossSinceEval = 0;
  private stepsSinceEval = 0;
  private evalClock: number | undefined;
  private lastEvalStep: number | undefined;
  private closed = false;

  /** Builds the Trainer; throws (owning nothing) if the options are wrong. */
  constructor(opts: TrainingLoopOptions) {
    const steps = opts.steps ?? Infinity;
    if (!(steps === Infinity || (Number.isInteger(steps) && steps >= 1))) throw new Error(`steps must be a positive integer, got ${steps}`);
    if (!(Number.isInteger(opts.evalEvery) && opts.evalEvery >= 0)) throw new Error(`evalEvery must be an integer ≥ 0, got ${opts.evalEvery}`);
    this.opts = opts;
    this.model = opts.model;
    this.steps = steps;
    this.slowdown = opts.slowdown ?? 1;
    this.hooks = opts.hooks ?? {};
    this.train = fitSplit(opts.model, opts.train);
    this.val = opts.val && fitSplit(opts.model, opts.val);
    this.test = opts.test && fitSplit(opts.model, opts.test);
    this.trainer = new Trainer(opts.model, { optimizer: opts.optimizer, lr: opts.lr });
    // Lazy: no tensor exists until the first step.
    this.batches = batchIterator(this.train, opts.batchSize, opts.seed, { epochs: Infinity });
  }

  get finished(): boolean {
    return this.step >= this.steps;
  }

  /** Mean accuracy over the last TRAIN_ACC_WINDOW training minibatches (undefined before the first). */
  get trainAcc(): number | undefined {
    if (this.batchAccs.length === 0) return undefined;
    return this.batchAccs.reduce((a, b) => a + b, 0) / this.batchAccs.length;
  }

  /**
   * Train until `steps` or until hooks.proceed() says no, yielding to the event loop after every
   * step (socket events are handled between steps), or sleeping when slowed down. Throws what a
   * step throws.
   */
  async run(hooks?: TrainingHooks, over: { steps?: number; slowdown?: number } = {}): Promise<void> {
    if (hooks) this.hooks = hooks;
    if (over.steps !== undefined) this.steps = over.steps;
    if (over.slowdown !== undefined) this.slowdown = over.slowdown;
    this.evalClock ??= now();
    const proceed = () => this.hooks.proceed?.() ?? true;
    while (!this.finished && proceed()) {
      const wait = this.hooks.pace?.();
      if (wait) {
        await wait;
        if (!proceed()) break;
      }
      this.trainStep();
      await this.pause();
    }
  }

  /** What run() does after a step: the straggler's sleep, or a plain yield. */
  pause(): Promise<void> {
    return this.slowdown > 1 ? sleep((this.slowdown - 1) * this.lastStepMs) : yieldToEventLoop();
  }

  /** One step with its hooks and, unless evaluation is manual, the evaluation if one is due. */
  trainStep(): number {
    if (this.closed) throw new Error('the training loop has been closed');
    if (this.finished) throw new Error(`all ${this.steps} steps are done`);
    this.evalClock ??= now();
    const h = this.hooks;
    const t0 = now();
    const rs = this.opts.roundSteps;
    if (rs && this.step % rs === 0) h.onRoundBegin?.(this.step / rs, this.step);
    h.onStepBegin?.(this.step);
    const loss = this.optimiserStep();
    this.step += 1;
    if (this.trainer.lastBatchAcc !== undefined) {
      this.batchAccs.push(this.trainer.lastBatchAcc);
      if (this.batchAccs.length > TRAIN_ACC_WINDOW) this.batchAccs.shift();
    }
    this.lastLoss = loss;
    this.lossSinceEval += loss;
    this.stepsSinceEval += 1;
    this.curve.addLoss(loss);
    h.onStepEnd?.(this.step, loss);
    this.lastStepMs = now() - t0;
    if (this.opts.evaluation !== 'manual') this.evaluateIfDue();
    if (rs && (this.step % rs === 0 || this.finished)) h.onRoundEnd?.(Math.ceil(this.step / rs) - 1, this.step);
    return loss;
  }

  /** Evaluate if this step is on the schedule (every evalEvery, or the last with evalAtEnd) and not evaluated yet. */
  evaluateIfDue(): Evaluation | undefined {
    const e = this.opts.evalEvery;
    const due = this.step > 0 && ((e > 0 && this.step % e === 0) || (this.opts.evalAtEnd === true && this.step === this.steps));
    if (!due || this.lastEvalStep === this.step) return undefined;
    return this.evaluate();
  }

  /** Measure now: val accuracy, test accuracy (a curve point), loss and speed since the previous evaluation. */
  evaluate(): Evaluation {
    const t = now();
    const elapsed = this.evalClock === undefined ? 0 : (t - this.evalClock) / 1000;
    this.stepsPerSec = elapsed > 0 ? this.stepsSinceEval / elapsed : undefined;
    const loss = this.stepsSinceEval > 0 ? this.lossSinceEval / this.stepsSinceEval : (this.lastLoss ?? NaN);
    const ev: Evaluation = { step: this.step, loss, valAcc: this.valAccuracy(), stepsPerSec: this.stepsPerSec ?? 0 };
    if (this.test && this.test.n > 0) {
      ev.testAcc = evaluateAccuracy(this.model, this.test);
      this.lastTestAcc = ev.testAcc;
      this.curve.point(this.step, ev.testAcc);
    }
    this.lossSinceEval = 0;
    this.stepsSinceEval = 0;
    this.lastEvalStep = this.step;
    this.hooks.onEvaluation?.(ev);
    // Evaluation time is not training time: restart the clock after it.
    this.evalClock = now();
    return ev;
  }

  /** Accuracy on the val split now (undefined when there is none); remembered as lastValAcc. */
  valAccuracy(): number | undefined {
    const acc = this.val && this.val.n > 0 ? evaluateAccuracy(this.model, this.val) : undefined;
    if (acc !== undefined) this.lastValAcc = acc;
    return acc;
  }

  /** The curve, with a test point at the current step if it has none (the weights as they end). */
  summary(): CurveSummary {
    if (this.test && this.test.n > 0 && this.curve.last?.step !== this.step) this.evaluate();
    return this.curve.summary();
  }

  /** Free the trainer and end the batch stream; the model stays with its owner. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.trainer.dispose();
    this.batches.return(undefined);
  }

  private optimiserStep(): number {
    const next = this.batches.next();
    if (next.done) throw new Error('the training batch stream ended');
    const { xs, ys } = next.value;
    try {
      let loss: number;
      if (this.opts.targets) {
        const soft = this.opts.targets(xs, ys as tf.Tensor2D, this.step);
        try {
          if (soft.shape.length !== 2 || soft.shape[0] !== ys.shape[0] || soft.shape[1] !== ys.shape[1]) {
            throw new Error(`soft targets must have shape [${ys.shape.join(', ')}], got [${soft.shape.join(', ')}]`);
          }
          loss = this.trainer.step(xs, soft);
        } finally {
          if (soft !== ys && soft !== xs) soft.dispose();
        }
      } else {
        loss = this.trainer.step(xs, ys);
      }
      if (this.opts.requireFiniteLoss && !Number.isFinite(loss)) throw new Error(`training loss is ${loss} at step ${this.step + 1}`);
      return loss;
    } finally {
      xs.dispose();
      ys.dispose();
    }
  }
}
