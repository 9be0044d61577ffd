// The Low-rank Parametric Knowledge Adapter (LPKA) of docs/DESIGN.md §3.
//
// Tokens are width-r vectors: the rows of a factor A (m×r) and the columns of a factor B (r×n,
// taken as the rows of Bᵀ). The target's two token sets are the queries; the source's two token sets
// are the keys and values. Each layer, for each query set X (target rows, target columns):
//
//   X ← X + ½ Σ_{Y ∈ {source rows, source cols}} MHA_XY(LN_X(X), LN_Y(Y))
//   X ← X + FFN_X(LN'_X(X))          FFN = Linear(r→ffnDim) · GELU (tanh form) · Linear(ffnDim→r)
//
// Four attention modules per layer (rows×rows, rows×cols, cols×rows, cols×cols). The source sets are
// never updated, so only the queries evolve. The output projection of every residual branch (each
// MHA's Wo/bo and each FFN's second layer) starts at zero, so a fresh adapter is exactly the identity.
//
// Speed: the big tensors are the score matrices [m_t, m_s], one per head. On wasm only an
// untransposed 2-D matMul takes the fast XNNPACK path (batched or transposed-flag products are
// 10–30× slower), so attention runs head by head with a custom gradient built from such products.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import type { LowRank } from '../../shared/math/low-rank.js';
import { type AdapterConfig, parseAdapterConfig } from './config.js';

export type TokenSet = 'rows' | 'cols';
const SETS: readonly TokenSet[] = ['rows', 'cols'];

/** LayerNorm epsilon inside the adapter (not configurable: it is part of the function). */
const LN_EPS = 1e-5;

export interface NamedParam {
  name: string;
  variable: tf.Variable;
}

interface ParamSpec {
  name: string;
  shape: number[];
  init: 'glorot' | 'zeros' | 'ones' | 'output';
  fanIn?: number;
  fanOut?: number;
}

/** Parameter names and shapes, in the stable order used for init, gradients and checkpoints. */
export function lpkaParamSpecs(cfg: AdapterConfig): ParamSpec[] {
  const r = cfg.rank;
  const d = cfg.attnDim;
  const f = cfg.ffnDim;
  const specs: ParamSpec[] = [];
  for (let l = 0; l < cfg.layers; l++) {
    const p = `layer${l}`;
    for (const s of SETS) {
      specs.push({ name: `${p}/ln_query_${s}/gain`, shape: [r], init: 'ones' });
      specs.push({ name: `${p}/ln_query_${s}/bias`, shape: [r], init: 'zeros' });
    }
    for (const s of SETS) {
      specs.push({ name: `${p}/ln_source_${s}/gain`, shape: [r], init: 'ones' });
      specs.push({ name: `${p}/ln_source_${s}/bias`, shape: [r], init: 'zeros' });
    }
    for (const q of SETS) {
      for (const k of SETS) {
        const a = `${p}/attn_${q}_${k}`;
        for (const w of ['Wq', 'Wk', 'Wv']) {
          specs.push({ name: `${a}/${w}`, shape: [r, d], init: 'glorot', fanIn: r, fanOut: d });
        }
        for (const b of ['bq', 'bk', 'bv']) specs.push({ name: `${a}/${b}`, shape: [d], init: 'zeros' });
        specs.push({ name: `${a}/Wo`, shape: [d, r], init: 'output', fanIn: d, fanOut: r });
        specs.push({ name: `${a}/bo`, shape: [r], init: 'zeros' });
      }
    }
    for (const s of SETS) {
      specs.push({ name: `${p}/ln_ffn_${s}/gain`, shape: [r], init: 'ones' });
      specs.push({ name: `${p}/ln_ffn_${s}/bias`, shape: [r], init: 'zeros' });
      specs.push({ name: `${p}/ffn_${s}/W1`, shape: [r, f], init: 'glorot', fanIn: r, fanOut: f });
      specs.push({ name: `${p}/ffn_${s}/b1`, shape: [f], init: 'zeros' });
      specs.push({ name: `${p}/ffn_${s}/W2`, shape: [f, r], init: 'output', fanIn: f, fanOut: r });
      specs.push({ name: `${p}/ffn_${s}/b2`, shape: [r], init: 'zeros' });
    }
  }
  return specs;
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

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

function checkFactors(what: string, f: LowRank, r: number): { m: number; n: number } {
  if (!f || !f.A || !f.B) throw new Error(`LPKA: ${what} must have factors A and B`);
  const a = f.A.shape;
  const b = f.B.shape;
  if (a.length !== 2 || b.length !== 2) {
    throw new Error(`LPKA: ${what} factors must be 2-D, got A [${a.join(', ')}] and B [${b.join(', ')}]`);
  }
  if (a[1] !== r || b[0] !== r) {
    throw new Error(`LPKA: ${what} factors must have rank ${r} (A m×${r}, B ${r}×n), got A [${a.join(', ')}] and B [${b.join(', ')}]`);
  }
  if (f.A.dtype !== 'float32' || f.B.dtype !== 'float32') throw new Error(`LPKA: ${what} factors must be float32`);
  return { m: a[0], n: b[1] };
}

export class LpkaAdapter {
  readonly config: AdapterConfig;
  /** Every trainable parameter, by name, in a stable order (see lpkaParamSpecs). */
  readonly params: Map<string, tf.Variable>;
  private readonly shapes = new Map<string, number[]>();
  private disposed = false;

  constructor(config: AdapterConfig) {
    this.config = parseAdapterConfig(config);
    const cfg = this.config;
    const rng = seedrandom(`lpka:${cfg.seed}`);
    const outScale = cfg.initScale ?? 0;
    this.params = new Map();
    for (const spec of lpkaParamSpecs(cfg)) {
      const n = numelOf(spec.shape);
      const values = new Float32Array(n);
      if (spec.init === 'ones') values.fill(1);
      else if (spec.init === 'glorot' || (spec.init === 'output' && outScale > 0)) {
        const scale = spec.init === 'output' ? outScale : 1;
        const limit = scale * Math.sqrt(6 / (spec.fanIn! + spec.fanOut!));
        for (let i = 0; i < n; i++) values[i] = (2 * rng() - 1) * limit;
      }
      // tfjs variable names are global to the engine; let it pick unique ones so that many adapters
      // (one per pair) can live in one process. Our names live in the map.
      const initial = tf.tensor(values, spec.shape, 'float32');
      this.params.set(spec.name, tf.variable(initial, true));
      initial.dispose(); // the variable holds its own reference to the data
      this.shapes.set(spec.name, spec.shape);
    }
  }

  /** Parameters as an ordered list of {name, variable}. */
  namedParams(): NamedParam[] {
    return [...this.params].map(([name, variable]) => ({ name, variable }));
  }

  paramShape(name: string): number[] | undefined {
    const s = this.shapes.get(name);
    return s ? [...s] : undefined;
  }

  numParams(): number {
    let n = 0;
    for (const v of this.params.values()) n += v.size;
    return n;
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
    if (this.disposed) throw new Error('LPKA: adapter has been disposed');
    const r = this.config.rank;
    checkFactors('target', target, r);
    checkFactors('source', source, r);
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

  /** Copy every weight (name → values); a snapshot, e.g. for tests and checkpoints. Copies, because
   * the cpu backend's dataSync returns its internal array. */
  exportWeights(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const [name, v] of this.params) out.set(name, Float32Array.from(v.dataSync() as Float32Array));
    return out;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const v of this.params.values()) v.dispose();
  }
}
