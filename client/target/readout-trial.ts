// The readout trial of an output pair (docs/DESIGN.md §10): the target ridge-fits a map from its
// own features on the probe split P (the input of its classifier slot) to the source's logits on
// P. That map is the source's classifier carried into the target's feature space; D = W_r − W is
// the swap of the target's classifier toward it, applied as a gated, capped knowledge branch. The
// held-out gradient along D tells the coordinator's trust gate whether the source knows anything
// the target does not. Transport-free.
import * as tf from '@tensorflow/tfjs';
import { ridgeFit, type RidgeFit } from '../../shared/math/ridge.js';
import { slotShapeOf, slotVariable } from '../slot.js';

/** Each row minus its mean: a per-example constant in log-probabilities means nothing to softmax. */
export function centreRows(values: Float32Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(values.length);
  for (let i = 0; i < rows; i++) {
    let m = 0;
    for (let k = 0; k < cols; k++) m += values[i * cols + k];
    m /= cols;
    for (let k = 0; k < cols; k++) out[i * cols + k] = values[i * cols + k] - m;
  }
  return out;
}

export class ReadoutFitter {
  private features?: tf.LayersModel;

  constructor(
    private readonly model: tf.LayersModel,
    /** the classifier slot: a dense layer whose kernel is [features, classes] */
    private readonly layer: string,
    /** P, in the model's own example shape */
    private readonly probeX: tf.Tensor,
    private readonly relAlpha = 1e-2,
  ) {}

  /** The target's features on P: the input of the classifier layer, inference mode. [count, d] */
  featuresOnProbe(): { values: Float32Array; n: number; d: number } {
    return this.featuresOf(this.probeX);
  }

  /** The target's features (the input of the classifier layer, inference mode) of examples `x`. */
  featuresOf(x: tf.Tensor): { values: Float32Array; n: number; d: number } {
    this.features ??= tf.model({ inputs: this.model.inputs, outputs: this.model.getLayer(this.layer).input as tf.SymbolicTensor });
    const f = tf.tidy(() => this.features!.predict(x, { batchSize: 256 }) as tf.Tensor);
    try {
      if (f.rank !== 2) throw new Error(`readout: the input of layer "${this.layer}" has rank ${f.rank}, not a feature vector`);
      return { values: f.dataSync() as Float32Array, n: f.shape[0], d: f.shape[1]! };
    } finally {
      f.dispose();
    }
  }

  /**
   * D = W_r − W for the teacher's logits `teacher` [count, classes] (row-major), with W the
   * trained weight of the classifier slot (without any branch). The caller owns D.
   */
  fit(teacher: Float32Array, classes: number, W: tf.Tensor2D): { D: tf.Tensor2D; readout: RidgeFit } {
    const variable = slotVariable(this.model, this.layer);
    const [d, c] = slotShapeOf(variable.shape);
    if (c !== classes) throw new Error(`readout: the source has ${classes} classes, the classifier slot "${this.layer}" ${c}`);
    const f = this.featuresOnProbe();
    if (f.d !== d) throw new Error(`readout: ${f.d} features reach layer "${this.layer}", its kernel has ${d} rows`);
    if (teacher.length !== f.n * c) throw new Error(`readout: ${teacher.length} logits for ${f.n} probe examples × ${c} classes`);
    const fit = ridgeFit(f.values, centreRows(teacher, f.n, c), f.n, d, c, this.relAlpha);
    const D = tf.tidy(() => tf.sub(tf.tensor2d(Float32Array.from(fit.W), [d, c]), W)) as tf.Tensor2D;
    return { D, readout: fit };
  }

  /**
   * How many of the labelled examples (x, one-hot y) the readout W_r (with its intercept) labels
   * right from the target's own features: does the source know the target's task at all?
   */
  readoutHits(readout: RidgeFit, x: tf.Tensor, y: tf.Tensor): { hits: number; n: number } {
    const f = this.featuresOf(x);
    const labels = tf.tidy(() => tf.argMax(y, -1).dataSync() as Int32Array);
    const { W, b, d, c } = readout;
    let hits = 0;
    for (let i = 0; i < f.n; i++) {
      let best = -Infinity;
      let arg = 0;
      for (let k = 0; k < c; k++) {
        let z = b[k];
        for (let j = 0; j < d; j++) z += f.values[i * d + j] * W[j * c + k];
        if (z > best) {
          best = z;
          arg = k;
        }
      }
      if (arg === labels[i]) hits += 1;
    }
    return { hits, n: f.n };
  }
}
