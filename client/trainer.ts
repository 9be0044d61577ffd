// A device's local training step. It is written by hand (gradients, then the optimiser) rather
// than with model.fit because the device must observe the per-step gradient of its slot kernels:
// the MergeNet feedback G = Σ ∂loss/∂W_eff over the steps since a transfer (docs/DESIGN.md §5).
import * as tf from '@tensorflow/tfjs';
import { slotShapeOf, slotVariable } from './slot.js';

export type OptimizerName = 'sgd' | 'adam' | 'momentum';

export interface TrainerOptions {
  optimizer: OptimizerName;
  lr: number;
  /**
   * The model is expected to output softmax probabilities (its last layer has a softmax
   * activation). 'softmaxCrossEntropy' is the categorical cross-entropy of those probabilities
   * against one-hot labels, with the probabilities clipped to [ε, 1−ε] as Keras does; logits are
   * not rebuilt. Regularisation losses of the model's layers are added, as model.fit would.
   */
  loss?: 'softmaxCrossEntropy';
  /** Momentum coefficient for optimizer 'momentum' (default 0.9). */
  momentum?: number;
}

/** Keras' epsilon for clipping probabilities inside the cross-entropy. */
export const PROB_EPSILON = 1e-7;

/**
 * Minibatch-mean categorical cross-entropy of predicted probabilities `probs` [batch, classes]
 * against one-hot `labels`. Returns a scalar; the caller owns it (call inside a tidy or a
 * gradient function).
 */
export function categoricalCrossEntropyOnProbs(probs: tf.Tensor, labels: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const p = tf.clipByValue(probs, PROB_EPSILON, 1 - PROB_EPSILON);
    const perExample = tf.neg(tf.sum(tf.mul(labels, tf.log(p)), -1));
    return tf.mean(perExample) as tf.Scalar;
  });
}

function makeOptimizer(opts: TrainerOptions): tf.Optimizer {
  if (!(Number.isFinite(opts.lr) && opts.lr >= 0)) throw new Error(`learning rate must be a finite number ≥ 0, got ${opts.lr}`);
  switch (opts.optimizer) {
    case 'sgd':
      return tf.train.sgd(opts.lr);
    case 'adam':
      return tf.train.adam(opts.lr);
    case 'momentum':
      return tf.train.momentum(opts.lr, opts.momentum ?? 0.9);
    default:
      throw new Error(`unknown optimizer "${String(opts.optimizer)}": expected sgd, adam or momentum`);
  }
}

interface Accumulator {
  variable: tf.Variable;
  slotShape: [number, number];
  /** Σ of per-step gradients since start or the last take; undefined before the first step. */
  sum: tf.Tensor2D | undefined;
  steps: number;
}

export interface Evaluation {
  loss: number;
  accuracy: number;
}

export class Trainer {
  readonly model: tf.LayersModel;
  private readonly optimizer: tf.Optimizer;
  private readonly accumulators = new Map<string, Accumulator>();
  private disposed = false;
  /** accuracy on the minibatch of the latest step (before it), in [0, 1] */
  lastBatchAcc: number | undefined;
  /**
   * Terms added to every training step's loss (distillation on the probe split); each is called
   * inside the gradient function and may return undefined (nothing to add). None: plain training.
   */
  readonly extraLosses = new Map<string, () => tf.Scalar | undefined>();

  constructor(model: tf.LayersModel, opts: TrainerOptions) {
    if (opts.loss !== undefined && opts.loss !== 'softmaxCrossEntropy') {
      throw new Error(`unknown loss "${String(opts.loss)}": expected softmaxCrossEntropy`);
    }
    this.model = model;
    this.optimizer = makeOptimizer(opts);
  }

  /** The training loss on one batch: cross-entropy plus the layers' regularisation losses. */
  private lossOf(xs: tf.Tensor, ys: tf.Tensor, keepAcc?: (acc: tf.Scalar) => void): tf.Scalar {
    const probs = this.model.apply(xs, { training: true }) as tf.Tensor;
    // Batch accuracy rides along (no gradient flows through it): the trust gate's guard asks
    // whether the target has memorised its data.
    keepAcc?.(tf.keep(tf.mean(tf.cast(tf.equal(tf.argMax(probs, -1), tf.argMax(ys, -1)), 'float32')) as tf.Scalar));
    let loss = categoricalCrossEntropyOnProbs(probs, ys);
    for (const reg of this.model.calculateLosses()) loss = tf.add(loss, reg);
    for (const extra of this.extraLosses.values()) {
      const term = extra();
      if (term) loss = tf.add(loss, term);
    }
    return loss;
  }

  /**
   * One optimiser step on a minibatch (xs, one-hot ys). Gradients of the minibatch-mean loss are
   * taken w.r.t. every trainable variable at the current weights, added to the accumulators of
   * the layers being watched, and then applied. Returns the loss before the step.
   */
  step(xs: tf.Tensor, ys: tf.Tensor): number {
    this.assertAlive();
    const vars = this.model.trainableWeights.map((w) => w.read() as tf.Variable);
    let acc: tf.Scalar | undefined;
    const { value, grads } = tf.variableGrads(() => this.lossOf(xs, ys, (a) => (acc = a)), vars);
    try {
      if (acc) this.lastBatchAcc = acc.dataSync()[0];
      for (const [layer, acc] of this.accumulators) {
        const g = grads[acc.variable.name];
        if (!g) throw new Error(`no gradient reached the kernel of layer "${layer}"`);
        const prev = acc.sum;
        acc.sum = tf.tidy(() => {
          const g2 = tf.reshape(g, acc.slotShape) as tf.Tensor2D;
          return (prev ? tf.add(prev, g2) : tf.clone(g2)) as tf.Tensor2D;
        });
        prev?.dispose();
        acc.steps += 1;
      }
      this.optimizer.applyGradients(grads);
      return value.dataSync()[0];
    } finally {
      value.dispose();
      acc?.dispose();
      tf.dispose(Object.values(grads));
    }
  }

  /**
   * ∂loss/∂kernel of `layer` on one batch, as a 2-D slot matrix, WITHOUT a training step: the
   * gradient a held-out split gives (the "held-out feedback" option). Training mode is off, so
   * dropout does not perturb it. The caller owns the result.
   */
  gradientOn(xs: tf.Tensor, ys: tf.Tensor, layer: string): tf.Tensor2D {
    this.assertAlive();
    const variable = slotVariable(this.model, layer);
    const shape = slotShapeOf(variable.shape);
    return tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => {
        const probs = this.model.apply(xs, { training: false }) as tf.Tensor;
        return categoricalCrossEntropyOnProbs(probs, ys);
      }, [variable]);
      value.dispose();
      return tf.reshape(grads[variable.name], shape) as tf.Tensor2D;
    });
  }

  /**
   * Loss and accuracy on a labelled set, in inference mode, in batches of `batchSize`
   * (the mean over examples, not over batches).
   */
  evaluate(xs: tf.Tensor, ys: tf.Tensor, batchSize = 256): Evaluation {
    this.assertAlive();
    const n = xs.shape[0];
    if (n === 0) return { loss: NaN, accuracy: NaN };
    let lossSum = 0;
    let correct = 0;
    for (let start = 0; start < n; start += batchSize) {
      const size = Math.min(batchSize, n - start);
      const [l, c] = tf.tidy(() => {
        const x = tf.slice(xs, start, size);
        const y = tf.slice(ys, start, size);
        const probs = this.model.apply(x, { training: false }) as tf.Tensor;
        const loss = tf.mul(categoricalCrossEntropyOnProbs(probs, y), size);
        const hits = tf.sum(tf.cast(tf.equal(tf.argMax(probs, -1), tf.argMax(y, -1)), 'float32'));
        return [loss, hits];
      });
      lossSum += l.dataSync()[0];
      correct += c.dataSync()[0];
      l.dispose();
      c.dispose();
    }
    return { loss: lossSum / n, accuracy: correct / n };
  }

  /** Begin summing the per-step gradient of `layer`'s kernel. Restarting resets the sum. */
  startAccumulating(layer: string): void {
    this.assertAlive();
    const variable = slotVariable(this.model, layer);
    if (!variable.trainable) throw new Error(`layer "${layer}": kernel is not trainable`);
    this.accumulators.get(layer)?.sum?.dispose();
    this.accumulators.set(layer, { variable, slotShape: slotShapeOf(variable.shape), sum: undefined, steps: 0 });
  }

  isAccumulating(layer: string): boolean {
    return this.accumulators.has(layer);
  }

  /**
   * G = Σ of the per-step minibatch-mean gradients ∂loss/∂kernel (kernel = W_eff) of `layer` over
   * the steps since startAccumulating or the previous take, as a 2-D slot matrix with no
   * learning-rate or momentum scaling; `steps` is how many steps it sums. The sum then restarts
   * from zero and accumulation continues. The caller owns G (all zeros if steps = 0).
   */
  takeAccumulated(layer: string): { G: tf.Tensor2D; steps: number } {
    this.assertAlive();
    const acc = this.accumulators.get(layer);
    if (!acc) throw new Error(`layer "${layer}" is not accumulating gradients (call startAccumulating first)`);
    const G = acc.sum ?? tf.zeros(acc.slotShape);
    const steps = acc.steps;
    acc.sum = undefined;
    acc.steps = 0;
    return { G: G as tf.Tensor2D, steps };
  }

  /** Stop watching `layer` and drop its partial sum. No-op if it was not accumulating. */
  stopAccumulating(layer: string): void {
    const acc = this.accumulators.get(layer);
    if (!acc) return;
    acc.sum?.dispose();
    this.accumulators.delete(layer);
  }

  /** Frees the accumulators and the optimiser state; the model itself stays with its owner. */
  dispose(): void {
    if (this.disposed) return;
    for (const layer of [...this.accumulators.keys()]) this.stopAccumulating(layer);
    this.optimizer.dispose();
    this.disposed = true;
  }

  private assertAlive(): void {
    if (this.disposed) throw new Error('Trainer has been disposed');
  }
}
