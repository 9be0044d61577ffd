// The LPKA adapter in tfjs ops with autodiff, as it was first written. Two uses:
// - the reference that the Float32Array/wasm-SIMD kernels (lpka-kernels.ts, attention-simd.ts) are
//   tested against;
// - the engine LpkaAdapter picks for the largest token counts, where tfjs-wasm's XNNPACK products
//   catch up with the hand-written kernels (`lpkaEngineFor` in lpka.ts; README, Performance).
// Same math as lpka.ts: pre-LN, four cross-attentions per layer, GELU (tanh) FFN.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';
import type { AdapterConfig } from './config.js';
import type { TokenSet } from './lpka.js';

const SETS: readonly TokenSet[] = ['rows', 'cols'];
const LN_EPS = 1e-5;

/**
 * softmax(Q·Kᵀ)·V for one head. q: [m, dh] (already scaled by 1/√dh), kt: [dh, s], v: [s, dh].
 * Returns [m, dh]. Heads run one at a time as 2-D products because on wasm only an untransposed
 * 2-D matMul takes the fast (XNNPACK) path: a batched [h, m, dh]×[h, dh, s] product ran ~30× slower.
 * The gradient is hand-written so that every product is such an untransposed 2-D product with the
 * thin operand on the right: the right operand is repacked on every call, so a big right operand
 * (e.g. Qᵀ·dS) costs far more than transposing the big matrix and putting it on the left.
 */
const attentionCore = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [q, kt, v, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  const p = tf.softmax(tf.matMul(q, kt)) as tf.Tensor2D;
  save([q, kt, v, p]);
  return {
    value: tf.matMul(p, v),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sq, skt, sv, sp] = saved as tf.Tensor2D[];
      const dO = dy as tf.Tensor2D;
      const dP = tf.matMul(dO, tf.transpose(sv));
      const dV = tf.matMul(tf.transpose(sp), dO);
      // softmax backward: dS = P ⊙ (dP − Σ_j dP⊙P)
      const dS = tf.mul(sp, tf.sub(dP, tf.sum(tf.mul(dP, sp), -1, true)));
      const dQ = tf.matMul(dS, tf.transpose(skt));
      const dK = tf.matMul(tf.transpose(dS), sq);
      return [dQ, tf.transpose(dK), dV];
    },
  };
});

/**
 * x·w with a gradient made of untransposed products (dx = dy·wᵀ, dw = xᵀ·dy, transposes explicit):
 * tfjs's own matMul gradient uses the transpose flags, which miss the wasm fast path (3–20× slower).
 */
const linear = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [x, w, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  save([x, w]);
  return {
    value: tf.matMul(x, w),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sx, sw] = saved as tf.Tensor2D[];
      return [tf.matMul(dy as tf.Tensor2D, tf.transpose(sw)), tf.matMul(tf.transpose(sx), dy as tf.Tensor2D)];
    },
  };
}) as (x: tf.Tensor, w: tf.Tensor) => tf.Tensor2D;

/** GELU, tanh approximation (smooth, so the finite-difference check has no kinks to trip on). */
function gelu(x: tf.Tensor): tf.Tensor {
  const c = Math.sqrt(2 / Math.PI);
  const inner = tf.mul(c, tf.add(x, tf.mul(0.044715, tf.mul(x, tf.square(x)))));
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
}

export class TfjsReferenceLpka {
  readonly params = new Map<string, tf.Variable>();

  /** A tfjs adapter holding copies of `weights` (name → values, shapes from `shapes`). */
  constructor(
    readonly config: AdapterConfig,
    weights: Map<string, Float32Array>,
    shapes: (name: string) => number[],
  ) {
    for (const [name, values] of weights) {
      const t = tf.tensor(values, shapes(name), 'float32');
      this.params.set(name, tf.variable(t, true));
      t.dispose();
    }
  }

  private p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`LPKA: no parameter named ${name}`);
    return v;
  }

  private layerNorm(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    const mu = tf.mean(x, -1, true);
    const xc = tf.sub(x, mu);
    const variance = tf.mean(tf.square(xc), -1, true);
    const xn = tf.mul(xc, tf.rsqrt(tf.add(variance, LN_EPS)));
    return tf.add(tf.mul(xn, this.p(`${prefix}/gain`)), this.p(`${prefix}/bias`)) as tf.Tensor2D;
  }

  /** One attention module: queries xq [m, r] (normalised) against keys/values y [s, r] (normalised). */
  private attention(prefix: string, xq: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    const { heads, attnDim } = this.config;
    const dh = attnDim / heads;
    const q = tf.mul(tf.add(linear(xq, this.p(`${prefix}/Wq`)), this.p(`${prefix}/bq`)), 1 / Math.sqrt(dh));
    const k = tf.add(linear(y, this.p(`${prefix}/Wk`)), this.p(`${prefix}/bk`));
    const v = tf.add(linear(y, this.p(`${prefix}/Wv`)), this.p(`${prefix}/bv`));
    // Per-head operands are column blocks of q and v and row blocks of kᵀ (see attentionCore). One
    // split per operand rather than a slice per head: its gradient is a single concat.
    const qs = tf.split(q, heads, 1);
    const kts = tf.split(tf.transpose(k), heads, 0);
    const vs = tf.split(v, heads, 1);
    const outs = qs.map((qh, h) => attentionCore(qh, kts[h], vs[h]) as tf.Tensor2D);
    const o = heads === 1 ? outs[0] : tf.concat(outs, 1);
    return tf.add(linear(o, this.p(`${prefix}/Wo`)), this.p(`${prefix}/bo`)) as tf.Tensor2D;
  }

  private ffn(prefix: string, x: tf.Tensor2D): tf.Tensor2D {
    const h = gelu(tf.add(linear(x, this.p(`${prefix}/W1`)), this.p(`${prefix}/b1`)));
    return tf.add(linear(h, this.p(`${prefix}/W2`)), this.p(`${prefix}/b2`)) as tf.Tensor2D;
  }

  /**
   * A′, B′ = LPKA(target queries, source keys/values). Any token counts; both factor pairs must have
   * rank `config.rank`. The caller owns the returned tensors (and keeps ownership of the inputs).
   */
  forward(target: LowRank, source: LowRank): LowRank {
    return tf.tidy(() => {
      const x: Record<TokenSet, tf.Tensor2D> = { rows: target.A, cols: tf.transpose(target.B) };
      const src: Record<TokenSet, tf.Tensor2D> = { rows: source.A, cols: tf.transpose(source.B) };
      for (let l = 0; l < this.config.layers; l++) {
        const p = `layer${l}`;
        const ys: Record<TokenSet, tf.Tensor2D> = {
          rows: this.layerNorm(src.rows, `${p}/ln_source_rows`),
          cols: this.layerNorm(src.cols, `${p}/ln_source_cols`),
        };
        const next = {} as Record<TokenSet, tf.Tensor2D>;
        for (const qs of SETS) {
          const xq = this.layerNorm(x[qs], `${p}/ln_query_${qs}`);
          const sumAttn = tf.add(this.attention(`${p}/attn_${qs}_rows`, xq, ys.rows), this.attention(`${p}/attn_${qs}_cols`, xq, ys.cols));
          next[qs] = tf.add(x[qs], tf.mul(0.5, sumAttn));
        }
        for (const qs of SETS) {
          next[qs] = tf.add(next[qs], this.ffn(`${p}/ffn_${qs}`, this.layerNorm(next[qs], `${p}/ln_ffn_${qs}`)));
        }
        x.rows = next.rows;
        x.cols = next.cols;
      }
      return { A: x.rows, B: tf.transpose(x.cols) };
    });
  }

  /** Gradients of ⟨A′, gA⟩ + ⟨B′, gB⟩ with respect to every parameter, by tfjs autodiff. */
  vjp(target: LowRank, source: LowRank, gA: tf.Tensor2D, gB: tf.Tensor2D): Map<string, Float32Array> {
    const named = [...this.params];
    const byTfName = new Map(named.map(([name, v]) => [v.name, name]));
    const { value, grads } = tf.variableGrads(() => {
      const out = this.forward(target, source);
      return tf.add(tf.sum(tf.mul(out.A, gA)), tf.sum(tf.mul(out.B, gB))) as tf.Scalar;
    }, named.map(([, v]) => v));
    value.dispose();
    const out = new Map<string, Float32Array>();
    for (const [tfName, g] of Object.entries(grads)) {
      out.set(byTfName.get(tfName)!, Float32Array.from(g.dataSync() as Float32Array));
      g.dispose();
    }
    return out;
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
  }
}
