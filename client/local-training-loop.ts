// The device's own training (docs/DESIGN.md §1): one step after another on its own data, never
// waiting on the network. The loop itself is client/training-loop.ts:TrainingLoop, the one every
// trainer in the project uses; this adapts it to the device: the device's hooks around each step,
// evaluation on the val split (and the test split when asked), a finite loss required.
import type * as tf from '@tensorflow/tfjs';
import type { DeviceData, Split } from './data/dataset.js';
import type { EvalEvent } from './device-events.js';
import type { OptimizerName, Trainer } from './trainer.js';
import { TrainingLoop } from './training-loop.js';

export { TRAIN_ACC_WINDOW } from './training-loop.js';

export interface DeviceTrainingOptions {
  optimizer: OptimizerName;
  lr: number;
  batchSize: number;
  seed: number;
  /** Evaluate on the val split every this many steps (0 = never). */
  evalEvery: number;
  /** Also evaluate the test split at each evaluation. */
  evalTest: boolean;
}

/** The device's work around each step; all of it runs inside the loop, between steps. */
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
  private readonly core: TrainingLoop;

  constructor(model: tf.LayersModel, data: DeviceData, opts: DeviceTrainingOptions) {
    this.core = new TrainingLoop({
      model,
      train: data.train,
      val: data.val,
      test: opts.evalTest ? data.test : undefined,
      optimizer: opts.optimizer,
      lr: opts.lr,
      batchSize: opts.batchSize,
      seed: opts.seed,
      evalEvery: opts.evalEvery,
      requireFiniteLoss: true,
    });
  }

  /** Owned by the loop: the only thing that changes the model's weights by training. */
  get trainer(): Trainer {
    return this.core.trainer;
  }
  get train(): Split {
    return this.core.train;
  }
  /** The val split, viewed with the model's example shape. */
  get val(): Split {
    return this.core.val!;
  }
  /** local steps taken */
  get step(): number {
    return this.core.step;
  }
  get lastLoss(): number | undefined {
    return this.core.lastLoss;
  }
  get lastValAcc(): number | undefined {
    return this.core.lastValAcc;
  }
  get lastTestAcc(): number | undefined {
    return this.core.lastTestAcc;
  }
  get stepsPerSec(): number | undefined {
    return this.core.stepsPerSec;
  }
  /** Mean accuracy over the last TRAIN_ACC_WINDOW training minibatches (undefined before the first). */
  get trainAcc(): number | undefined {
    return this.core.trainAcc;
  }

  /** Train until `maxSteps` or until hooks.proceed() says no. Throws what a step throws. */
  run(hooks: StepHooks, maxSteps = Infinity, slowdown = 1): Promise<void> {
    return this.core.run(
      {
        proceed: () => hooks.proceed(),
        pace: hooks.pace && (() => hooks.pace!()),
        onStepBegin: () => hooks.beforeStep(),
        onStepEnd: (_step, loss) => hooks.afterStep(loss),
        onEvaluation: (ev) => hooks.evaluated(ev),
      },
      { steps: maxSteps, slowdown },
    );
  }

  /** Accuracy on the val split now (undefined when it is empty); remembered for the status. */
  valAccuracy(): number | undefined {
    return this.core.valAccuracy();
  }

  /** Free the trainer and end the training batch stream. */
  close(): void {
    this.core.close();
  }
}
