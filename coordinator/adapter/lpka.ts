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
// Speed: the math runs in hand-written Float32Array kernels (lpka-kernels.ts, composed in
// lpka-pass.ts), not tfjs ops: at these sizes tfjs spent most of a cycle dispatching ~500 small ops.
// The parameters live in one flat Float32Array; `params` gives a view per name. The tfjs version
// this replaced is kept in reference/lpka-tfjs.ts, and the tests check the kernels against it.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import type { LowRank } from '../../shared/math/low-rank.js';
import { type AdapterConfig, parseAdapterConfig } from './config.js';
import { backwardPass, type Factors, forwardPass, type ForwardResult, type LayerViews, layerViews, SETS, type TokenSet } from './lpka-pass.js';
import { TfjsReferenceLpka } from './lpka-tfjs.js';
import { sharedWorkspace, type Workspace, type WorkspaceSnapshot } from './workspace.js';

/**
 * Most bytes a kept tape may hold per adapter (forwardFactors keepTape): its workspace blocks plus
 * copies of the parameters and inputs. At r 8 the tape of 64×10 / 128×10 slots takes 0.9 MB and
 * that of 784×128 / 800×128 5.4 MB, measured (without its attention probabilities, which the
 * backward then recomputes); larger pairs recompute the forward in the VJP instead. A worker holds one tape per
 * pair between a transfer and its update.
 */
export const KEEP_TAPE_BYTES = 8 << 20;

/** A forward pass kept for the next VJP: its workspace blocks, the tape, and what it was run on. */
interface KeptTape {
  ws: Workspace;
  snap: WorkspaceSnapshot;
  W: LayerViews<Float32Array>[];
  fw: ForwardResult;
  /** copies of the parameters and inputs, so a VJP uses the tape only at the same point */
  values: Float32Array;
  inputs: Float32Array[];
}

/** Bitwise equality (so −0/NaN cannot make a changed input look unchanged or vice versa). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Int32Array(a.buffer, a.byteOffset, a.length);
  const y = new Int32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

export type { Factors, TokenSet };

/** One parameter: its name, shape and values (a view into the adapter's flat buffer). */
export interface NamedParam {
  name: string;
  shape: number[];
  values: Float32Array;
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

function checkArrays(what: string, f: Factors, r: number): void {
  if (!f || !(f.A instanceof Float32Array) || !(f.B instanceof Float32Array)) throw new Error(`LPKA: ${what} must have Float32Array factors A and B`);
  if (!(Number.isInteger(f.m) && f.m >= 1 && Number.isInteger(f.n) && f.n >= 1)) throw new Error(`LPKA: ${what} must have token counts m, n ≥ 1`);
  if (f.A.length !== f.m * r || f.B.length !== r * f.n) {
    throw new Error(`LPKA: ${what} factors must have rank ${r} (A ${f.m}×${r}, B ${r}×${f.n}), got ${f.A.length} and ${f.B.length} values`);
  }
}

/**
 * Which implementation runs a forward or VJP: the Float32Array/wasm-SIMD kernels, or tfjs ops
 * (lpka-tfjs.ts). 'auto' (the default; env MERGENET_ADAPTER_ENGINE overrides) takes the kernels
 * unless (query tokens)·(source tokens) exceeds TFJS_ABOVE. Measured at r 8, forward+update, both
 * engines interleaved in one process (`npm run bench`, tfjs on its wasm backend): the kernels take
 * 0.6× the tfjs time at 960×160 / 2048×100 (1120·2148 = 2.4M: 201 vs 331 ms) and 0.7–0.8× at
 * 1920×320 / 4096×200 (9.6M). The gap narrows with size, so above the largest measured product
 * 'auto' goes back to tfjs. Both compute the same function (tested within 1e-5).
 */
export type LpkaEngine = 'auto' | 'kernels' | 'tfjs';
const TFJS_ABOVE = 10_000_000;
let engineSetting: LpkaEngine = parseEngine(process.env.MERGENET_ADAPTER_ENGINE);

function parseEngine(v: string | undefined): LpkaEngine {
  if (v === undefined || v === '') return 'auto';
  if (v === 'auto' || v === 'kernels' || v === 'tfjs') return v;
  throw new Error(`MERGENET_ADAPTER_ENGINE must be auto, kernels or tfjs, got ${JSON.stringify(v)}`);
}

/** Set the engine for every adapter of this thread (tests and benchmarks). */
export function setLpkaEngine(engine: LpkaEngine): void {
  engineSetting = parseEngine(engine);
}

/** The engine a call with these token counts runs on. */
export function lpkaEngineFor(queryTokens: number, sourceTokens: number): 'kernels' | 'tfjs' {
  if (engineSetting !== 'auto') return engineSetting;
  return queryTokens * sourceTokens > TFJS_ABOVE ? 'tfjs' : 'kernels';
}

/** Float32 copy of a tensor's values (dataSync may return the backend's own array). */
function valuesOf(t: tf.Tensor): Float32Array {
  return Float32Array.from(t.dataSync() as Float32Array);
}

export class LpkaAdapter {
  readonly config: AdapterConfig;
  /** Every parameter, in lpkaParamSpecs order, in one buffer (what checkpoints and workers move). */
  readonly values: Float32Array;
  /** Every trainable parameter by name, in a stable order: views into `values` (writes change the adapter). */
  readonly params: Map<string, Float32Array>;
  private readonly shapes = new Map<string, number[]>();
  private readonly grads: Float64Array;
  private readonly gradByName: Map<string, Float64Array>;
  private readonly views: LayerViews<Float32Array>[];
  private readonly gradViews: LayerViews<Float64Array>[];
  /** name → [offset, length] in `values` */
  private readonly offsets = new Map<string, [number, number]>();
  private disposed = false;
  /** viewsFor's last views and the block they were made on (reused while the block is the same) */
  private cachedViews: { at: Float32Array; views: LayerViews<Float32Array>[] } | null = null;
  private kept: KeptTape | null = null;

  constructor(config: AdapterConfig) {
    this.config = parseAdapterConfig(config);
    const cfg = this.config;
    const rng = seedrandom(`lpka:${cfg.seed}`);
    const outScale = cfg.initScale ?? 0;
    const specs = lpkaParamSpecs(cfg);
    const total = specs.reduce((s, p) => s + numelOf(p.shape), 0);
    this.values = new Float32Array(total);
    this.grads = new Float64Array(total);
    this.params = new Map();
    this.gradByName = new Map();
    let offset = 0;
    for (const spec of specs) {
      const n = numelOf(spec.shape);
      const values = this.values.subarray(offset, offset + n);
      // The same draws, in the same order, as the tfjs version: seeds keep their meaning.
      if (spec.init === 'ones') values.fill(1);
      else if (spec.init === 'glorot' || (spec.init === 'output' && outScale > 0)) {
        const scale = spec.init === 'output' ? outScale : 1;
        const limit = scale * Math.sqrt(6 / (spec.fanIn! + spec.fanOut!));
        for (let i = 0; i < n; i++) values[i] = (2 * rng() - 1) * limit;
      }
      this.params.set(spec.name, values);
      this.gradByName.set(spec.name, this.grads.subarray(offset, offset + n));
      this.shapes.set(spec.name, spec.shape);
      this.offsets.set(spec.name, [offset, n]);
      offset += n;
    }
    this.views = layerViews(cfg.layers, (name) => this.params.get(name)!);
    this.gradViews = layerViews(cfg.layers, (name) => this.gradByName.get(name)!);
  }

  /**
   * Parameter views for one pass in `ws`: with the SIMD gemm, a copy of the parameters in its memory
   * (so the linear layers run on it; ~10⁴–10⁵ floats, negligible next to the pass), else the
   * parameters themselves.
   */
  private viewsFor(ws: Workspace): LayerViews<Float32Array>[] {
    if (ws.simd === null) return this.views;
    const copy = ws.f32(this.values.length);
    copy.set(this.values);
    // The copy is the pass's first block, so it lands at the same offset every pass: building the
    // views (≈150 string-keyed lookups) once per memory is enough.
    const c = this.cachedViews;
    if (c !== null && c.at.buffer === copy.buffer && c.at.byteOffset === copy.byteOffset && c.at.length === copy.length) return c.views;
    const views = layerViews(this.config.layers, (name) => {
      const [o, n] = this.offsets.get(name)!;
      return copy.subarray(o, o + n);
    });
    this.cachedViews = { at: copy, views };
    return views;
  }

  /** Parameters as an ordered list of {name, shape, values}. */
  namedParams(): NamedParam[] {
    return [...this.params].map(([name, values]) => ({ name, shape: [...this.shapes.get(name)!], values }));
  }

  paramShape(name: string): number[] | undefined {
    const s = this.shapes.get(name);
    return s ? [...s] : undefined;
  }

  numParams(): number {
    return this.values.length;
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error('LPKA: adapter has been disposed');
  }

  /**
   * A′, B′ = LPKA(target queries, source keys/values). Any token counts; both factor pairs must have
   * rank `config.rank`. The caller owns the returned tensors (and keeps ownership of the inputs).
   * `keepTape` as in forwardFactors.
   */
  forward(target: LowRank, source: LowRank, opts: { keepTape?: boolean } = {}): LowRank {
    this.checkAlive();
    this.kept = null;
    const r = this.config.rank;
    const t = checkFactors('target', target, r);
    const s = checkFactors('source', source, r);
    if (lpkaEngineFor(t.m + t.n, s.m + s.n) === 'tfjs') {
      const tfjs = this.tfjsEngine();
      try {
        return tfjs.forward(target, source);
      } finally {
        tfjs.dispose();
      }
    }
    const out = this.forwardFactors(
      { A: valuesOf(target.A), B: valuesOf(target.B), m: t.m, n: t.n },
      { A: valuesOf(source.A), B: valuesOf(source.B), m: s.m, n: s.n },
      sharedWorkspace,
      opts,
    );
    return { A: tf.tensor2d(out.A, [t.m, r], 'float32'), B: tf.tensor2d(out.B, [r, t.n], 'float32') };
  }

  /**
   * forward on plain arrays; the result is freshly allocated and owned by the caller. With
   * `keepTape`, the pass's workspace blocks are copied out (up to KEEP_TAPE_BYTES) so that the next
   * vjpFactors at the same input and parameters runs only the backward pass; any forward drops the
   * tape kept before.
   */
  forwardFactors(target: Factors, source: Factors, ws: Workspace = sharedWorkspace, opts: { keepTape?: boolean } = {}): Factors {
    this.checkAlive();
    this.kept = null;
    const r = this.config.rank;
    checkArrays('target', target, r);
    checkArrays('source', source, r);
    if (lpkaEngineFor(target.m + target.n, source.m + source.n) === 'tfjs') {
      const out = this.forward(
        { A: tf.tensor2d(target.A, [target.m, r]), B: tf.tensor2d(target.B, [r, target.n]) },
        { A: tf.tensor2d(source.A, [source.m, r]), B: tf.tensor2d(source.B, [r, source.n]) },
      );
      const res = { A: valuesOf(out.A), B: valuesOf(out.B), m: target.m, n: target.n };
      tf.dispose([out.A, out.B]);
      return res;
    }
    const keep = opts.keepTape === true;
    return ws.run(() => {
      const W = this.viewsFor(ws);
      // A kept tape keeps fewer probabilities than the VJP's own forward (to fit the budget); the
      // backward recomputes the others bit-identically.
      const fw = forwardPass(this.config, W, target, source, ws, keep ? 'tape' : false);
      if (keep) this.keepTape(ws, W, fw, target, source);
      const A = Float32Array.from(fw.rows);
      const B = new Float32Array(r * target.n);
      // B′ = (final column tokens)ᵀ
      for (let j = 0; j < target.n; j++) for (let k = 0; k < r; k++) B[k * target.n + j] = fw.cols[j * r + k];
      return { A, B, m: target.m, n: target.n };
    });
  }

  /**
   * Gradients of ⟨A′, gA⟩ + ⟨B′, gB⟩ with respect to every parameter (gA [m, r], gB [r, n] row-major),
   * by name. The arrays are views into a buffer of this adapter, valid until its next VJP.
   */
  vjpFactors(target: Factors, source: Factors, gA: Float32Array, gB: Float32Array, ws: Workspace = sharedWorkspace): Map<string, Float64Array> {
    this.checkAlive();
    const r = this.config.rank;
    checkArrays('target', target, r);
    checkArrays('source', source, r);
    if (gA.length !== target.m * r || gB.length !== r * target.n) throw new Error('LPKA: upstream gradients do not match the target factors');
    if (lpkaEngineFor(target.m + target.n, source.m + source.n) === 'tfjs') {
      const tfjs = this.tfjsEngine();
      const ins = [
        tf.tensor2d(target.A, [target.m, r]), tf.tensor2d(target.B, [r, target.n]),
        tf.tensor2d(source.A, [source.m, r]), tf.tensor2d(source.B, [r, source.n]),
        tf.tensor2d(gA, [target.m, r]), tf.tensor2d(gB, [r, target.n]),
      ] as tf.Tensor2D[];
      try {
        const grads = tfjs.vjp({ A: ins[0], B: ins[1] }, { A: ins[2], B: ins[3] }, ins[4], ins[5]);
        for (const [name, g] of grads) this.gradByName.get(name)!.set(g);
      } finally {
        tf.dispose(ins);
        tfjs.dispose();
      }
      return this.gradByName;
    }
    const kept = this.kept;
    this.kept = null;
    ws.run(() => {
      let W: LayerViews<Float32Array>[];
      let fw: ForwardResult;
      if (kept !== null && this.tapeFits(kept, ws, target, source) && ws.restore(kept.snap)) {
        W = kept.W;
        fw = kept.fw;
      } else {
        W = this.viewsFor(ws);
        fw = forwardPass(this.config, W, target, source, ws, true);
      }
      const dRows = ws.f64(target.m * r);
      for (let i = 0; i < dRows.length; i++) dRows[i] = gA[i];
      const dCols = ws.f64(target.n * r);
      for (let j = 0; j < target.n; j++) for (let k = 0; k < r; k++) dCols[j * r + k] = gB[k * target.n + j];
      this.grads.fill(0);
      backwardPass(this.config, W, this.gradViews, fw, dRows, dCols, ws);
    });
    return this.gradByName;
  }

  private keepTape(ws: Workspace, W: LayerViews<Float32Array>[], fw: ForwardResult, target: Factors, source: Factors): void {
    const inputs = [target.A, target.B, source.A, source.B];
    const extra = 4 * (this.values.length + inputs.reduce((s, a) => s + a.length, 0));
    const snap = ws.snapshot(KEEP_TAPE_BYTES - extra);
    if (snap === null) return;
    this.kept = { ws, snap, W, fw, values: Float32Array.from(this.values), inputs: inputs.map((a) => Float32Array.from(a)) };
  }

  /** Whether a kept tape is the forward of this call: same workspace, parameters and inputs. */
  private tapeFits(kept: KeptTape, ws: Workspace, target: Factors, source: Factors): boolean {
    if (kept.ws !== ws || !sameBits(kept.values, this.values)) return false;
    const inputs = [target.A, target.B, source.A, source.B];
    return kept.fw.counts.query.rows === target.m && kept.fw.counts.query.cols === target.n &&
      kept.fw.counts.source.rows === source.m && kept.fw.counts.source.cols === source.n &&
      inputs.every((a, i) => sameBits(kept.inputs[i], a));
  }

  /** Whether a tape is kept for the next VJP (tests and diagnostics). */
  get hasKeptTape(): boolean {
    return this.kept !== null;
  }

  /** A tfjs copy of the current weights, for one call; the caller disposes it. */
  private tfjsEngine(): TfjsReferenceLpka {
    return new TfjsReferenceLpka(this.config, this.params, (name) => this.shapes.get(name)!);
  }

  /** Copy every weight (name → values); a snapshot, e.g. for tests and checkpoints. */
  exportWeights(): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    for (const [name, v] of this.params) out.set(name, Float32Array.from(v));
    return out;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Marks the adapter unusable (it holds no tfjs tensors; kept so owners dispose uniformly). */
  dispose(): void {
    this.disposed = true;
    this.kept = null;
  }
}
