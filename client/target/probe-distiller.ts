// Distillation on the probe split P (docs/DESIGN.md §10): once an output pair's trust gate accepted
// its source, the target's training loss gains λ·T²·KL(p_source,T ‖ p_target,T) on a minibatch of
// P at every step. P is public and unlabelled, so no data of either device is shared, and the
// target learns the source's function on inputs it has never had labels for. Transport-free.
import * as tf from '@tensorflow/tfjs';
import { PROB_EPSILON } from '../trainer.js';
import { mulberry32 } from '../../shared/math/prng.js';

export interface DistillSettings {
  lambda: number;
  temperature: number;
  batchSize: number;
}

export class ProbeDistiller {
  /** softmax(teacher / T) [count, classes] */
  private teacher?: tf.Tensor2D;
  private readonly rand: () => number;
  /** steps that added the distillation term */
  steps = 0;

  constructor(
    private readonly model: tf.LayersModel,
    private readonly probeX: tf.Tensor,
    readonly settings: DistillSettings,
    seed: number,
  ) {
    this.rand = mulberry32(seed);
  }

  get hasTeacher(): boolean {
    return this.teacher !== undefined;
  }

  /** Replace the teacher by the source's latest log-probabilities [count, classes]. */
  setTeacher(logProbs: Float32Array, count: number, classes: number): void {
    const T = this.settings.temperature;
    const next = tf.tidy(() => tf.softmax(tf.div(tf.tensor2d(logProbs, [count, classes]), T))) as tf.Tensor2D;
    this.teacher?.dispose();
    this.teacher = next;
  }

  /**
   * The distillation term for one step, λ·T²·mean KL on a fresh minibatch of P; call inside the
   * trainer's gradient function. Undefined when there is nothing to add (no teacher, or λ = 0).
   */
  loss(): tf.Scalar | undefined {
    const { lambda, temperature: T, batchSize } = this.settings;
    if (!this.teacher || lambda === 0) return undefined;
    const n = this.teacher.shape[0];
    const m = Math.min(batchSize, n);
    const idx = new Int32Array(m);
    for (let i = 0; i < m; i++) idx[i] = Math.floor(this.rand() * n);
    this.steps += 1;
    const teacher = this.teacher;
    return tf.tidy(() => {
      const ix = tf.tensor1d(idx, 'int32');
      const xs = tf.gather(this.probeX, ix);
      const p = tf.gather(teacher, ix);
      // The models end in a softmax; log(p) is their logit up to a per-row constant.
      const probs = this.model.apply(xs, { training: true }) as tf.Tensor;
      const logQ = tf.logSoftmax(tf.div(tf.log(tf.clipByValue(probs, PROB_EPSILON, 1)), T));
      const logP = tf.log(tf.clipByValue(p, 1e-12, 1));
      const kl = tf.mean(tf.sum(tf.mul(p, tf.sub(logP, logQ)), -1));
      return tf.mul(kl, lambda * T * T) as tf.Scalar;
    });
  }

  dispose(): void {
    this.teacher?.dispose();
    this.teacher = undefined;
  }
}
