// AdamW (Loshchilov & Hutter) with bias correction, decoupled weight decay and global-norm
// gradient clipping, in the PyTorch formulation:
//
//   g ← g · min(1, clipNorm / ‖g‖₂)            (norm over every parameter together)
//   m ← β1·m + (1−β1)·g        v ← β2·v + (1−β2)·g²        t ← t + 1
//   p ← p·(1 − lr·wd) − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
//
// Written here rather than taken from tf.train.adam because the adapter needs decoupled weight
// decay and moments that can be checkpointed and restored bit for bit.
//
// The step runs in plain JS over Float32Arrays (moments live in JS): the adapter has ~100 small
// parameters, and ~10 backend ops per parameter cost far more in dispatch than the arithmetic.
// Parameters are either plain arrays updated in place (the adapter's) or tfjs variables.
import * as tf from '@tensorflow/tfjs';

export interface AdamWConfig {
  /** Learning rate. */
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** Global gradient-norm clip. */
  clipNorm: number;
}

export interface NamedVariable {
  name: string;
  variable: tf.Variable;
}

/** A parameter held as a plain array, updated in place. */
export interface NamedArray {
  name: string;
  shape: number[];
  values: Float32Array;
}

/** A gradient: a tensor, or a plain array of the parameter's size. */
export type GradValues = tf.Tensor | Float32Array | Float64Array;

export interface StepResult {
  /** Global L2 norm of the gradients before clipping. */
  gradNorm: number;
  /** True when the gradients were scaled down to clipNorm. */
  clipped: boolean;
  /** Step count after this step (1 after the first step). */
  step: number;
}

/** Optimiser state: step count and first/second moments, by parameter name. */
export interface AdamWState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

interface Slot {
  name: string;
  shape: number[];
  size: number;
  values?: Float32Array;
  variable?: tf.Variable;
  m: Float32Array;
  v: Float32Array;
}

function checkConfig(c: AdamWConfig): AdamWConfig {
  const bad = (what: string) => {
    throw new Error(`AdamW: ${what}`);
  };
  if (!(Number.isFinite(c.lr) && c.lr >= 0)) bad(`lr must be a finite number ≥ 0, got ${c.lr}`);
  if (!(c.beta1 >= 0 && c.beta1 < 1)) bad(`beta1 must be in [0, 1), got ${c.beta1}`);
  if (!(c.beta2 >= 0 && c.beta2 < 1)) bad(`beta2 must be in [0, 1), got ${c.beta2}`);
  if (!(Number.isFinite(c.eps) && c.eps > 0)) bad(`eps must be > 0, got ${c.eps}`);
  if (!(Number.isFinite(c.weightDecay) && c.weightDecay >= 0)) bad(`weightDecay must be ≥ 0, got ${c.weightDecay}`);
  if (!(c.clipNorm > 0)) bad(`clipNorm must be > 0, got ${c.clipNorm}`);
  return { lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: c.weightDecay, clipNorm: c.clipNorm };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

// The adapter's gradients are Float64Arrays: these copies of the loops see one array type per
// argument, so V8 need not handle several element kinds in them (the general loop, which also
// takes Float32Array and tensor gradients, made a step ~15 % slower). Same arithmetic, same order:
// bit-identical results.
function sumSquares64(g: Float64Array, sum: number): number {
  for (let i = 0; i < g.length; i++) sum += g[i] * g[i];
  return sum;
}

function sumSquares(g: Float32Array | Float64Array, sum: number): number {
  for (let i = 0; i < g.length; i++) sum += g[i] * g[i];
  return sum;
}

function adamwUpdate64(
  p: Float32Array, m: Float32Array, v: Float32Array, g: Float64Array,
  scale: number, beta1: number, beta2: number, sqrtBc2: number, eps: number, decay: number, stepSize: number,
): void {
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * scale;
    m[i] = beta1 * m[i] + (1 - beta1) * gi;
    v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
    const denom = Math.sqrt(v[i]) / sqrtBc2 + eps;
    p[i] = p[i] * decay - (m[i] / denom) * stepSize;
  }
}

export class AdamW {
  readonly config: AdamWConfig;
  private readonly slots: Slot[] = [];
  private readonly byName = new Map<string, Slot>();
  private t = 0;
  private disposed = false;

  /** `params` in a stable order; names must be unique. The optimiser does not own the variables. */
  constructor(params: readonly (NamedVariable | NamedArray)[], config: AdamWConfig) {
    this.config = checkConfig(config);
    for (const p of params) {
      const { name } = p;
      if (this.byName.has(name)) throw new Error(`AdamW: duplicate parameter name ${name}`);
      let slot: Slot;
      if ('variable' in p) {
        if (p.variable.dtype !== 'float32') throw new Error(`AdamW: parameter ${name} must be float32`);
        const size = p.variable.size;
        slot = { name, shape: p.variable.shape, size, variable: p.variable, m: new Float32Array(size), v: new Float32Array(size) };
      } else {
        if (!(p.values instanceof Float32Array)) throw new Error(`AdamW: parameter ${name} must be float32`);
        const size = p.values.length;
        slot = { name, shape: [...p.shape], size, values: p.values, m: new Float32Array(size), v: new Float32Array(size) };
      }
      this.slots.push(slot);
      this.byName.set(name, slot);
    }
  }

  get stepCount(): number {
    return this.t;
  }

  get paramNames(): string[] {
    return this.slots.map((s) => s.name);
  }

  /**
   * One AdamW step. `grads` maps parameter names to gradients (not consumed: the caller still owns
   * and disposes them). A parameter absent from `grads` counts as having a zero gradient. A
   * non-finite gradient norm throws before any state changes.
   */
  step(grads: Map<string, GradValues>): StepResult {
    if (this.disposed) throw new Error('AdamW: optimiser has been disposed');
    for (const [name, g] of grads) {
      const slot = this.byName.get(name);
      if (!slot) throw new Error(`AdamW: gradient for unknown parameter ${name}`);
      if (g instanceof tf.Tensor) {
        if (!sameShape(g.shape, slot.shape)) {
          throw new Error(`AdamW: gradient for ${name} has shape [${g.shape.join(', ')}], the parameter has [${slot.shape.join(', ')}]`);
        }
      } else if (g.length !== slot.size) {
        throw new Error(`AdamW: gradient for ${name} has ${g.length} values, the parameter has ${slot.size}`);
      }
    }
    const gradValues = this.slots.map((s) => {
      const g = grads.get(s.name);
      return g instanceof tf.Tensor ? (g.dataSync() as Float32Array) : g;
    });
    // Total sum of squares in float64.
    let sumSq = 0;
    for (const g of gradValues) if (g) sumSq = g instanceof Float64Array ? sumSquares64(g, sumSq) : sumSquares(g, sumSq);
    const gradNorm = Math.sqrt(sumSq);
    if (!Number.isFinite(gradNorm)) {
      throw new Error(`AdamW: gradient norm is ${gradNorm}; step refused, parameters and moments unchanged`);
    }
    const { lr, beta1, beta2, eps, weightDecay, clipNorm } = this.config;
    const clipped = gradNorm > clipNorm;
    const scale = clipped ? clipNorm / gradNorm : 1;
    this.t += 1;
    const stepSize = lr / (1 - Math.pow(beta1, this.t));
    const sqrtBc2 = Math.sqrt(1 - Math.pow(beta2, this.t));
    const decay = 1 - lr * weightDecay;
    this.slots.forEach((slot, k) => {
      const g = gradValues[k];
      const { m, v } = slot;
      // Plain-array parameters are updated in place; variables through a copy and an assign.
      const p = slot.values ?? Float32Array.from(slot.variable!.dataSync() as Float32Array);
      if (g instanceof Float64Array) adamwUpdate64(p, m, v, g, scale, beta1, beta2, sqrtBc2, eps, decay, stepSize);
      else {
        for (let i = 0; i < p.length; i++) {
          const gi = g ? g[i] * scale : 0;
          m[i] = beta1 * m[i] + (1 - beta1) * gi;
          v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
          const denom = Math.sqrt(v[i]) / sqrtBc2 + eps;
          p[i] = p[i] * decay - (m[i] / denom) * stepSize;
        }
      }
      if (slot.variable) {
        const next = tf.tensor(p, slot.shape, 'float32');
        slot.variable.assign(next);
        next.dispose();
      }
    });
    return { gradNorm, clipped, step: this.t };
  }

  /** Copy of the state (moments by name, in parameter order). */
  exportState(): AdamWState {
    const m = new Map<string, Float32Array>();
    const v = new Map<string, Float32Array>();
    for (const s of this.slots) {
      m.set(s.name, Float32Array.from(s.m));
      v.set(s.name, Float32Array.from(s.v));
    }
    return { step: this.t, m, v };
  }

  /** Replace the state; every parameter must be present with the right number of values. */
  importState(state: AdamWState): void {
    if (this.disposed) throw new Error('AdamW: optimiser has been disposed');
    if (!Number.isSafeInteger(state.step) || state.step < 0) {
      throw new Error(`AdamW: step must be a non-negative integer, got ${state.step}`);
    }
    for (const which of ['m', 'v'] as const) {
      const map = state[which];
      for (const name of map.keys()) {
        if (!this.byName.has(name)) throw new Error(`AdamW: state.${which} has unknown parameter ${name}`);
      }
      for (const s of this.slots) {
        const values = map.get(s.name);
        if (!values) throw new Error(`AdamW: state.${which} lacks parameter ${s.name}`);
        if (values.length !== s.size) {
          throw new Error(`AdamW: state.${which}[${s.name}] has ${values.length} values, the parameter has ${s.size}`);
        }
      }
    }
    for (const s of this.slots) {
      // Copies: the caller keeps its arrays.
      s.m = Float32Array.from(state.m.get(s.name)!);
      s.v = Float32Array.from(state.v.get(s.name)!);
    }
    this.t = state.step;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
  }
}
