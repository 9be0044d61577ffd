// The knowledge branch of docs/DESIGN.md §4. A transfer never writes the device's trained weight W:
// each pair owns a branch K_p = s·(A′B′ − AB), recomputed (not accumulated) at every transfer and
// capped at τ‖W‖_F, and the slot computes with W_eff = W + Σ_p K_p. The model's kernel variable
// is kept equal to W_eff, so training and inference need no change; W is kernel − Σ_p K_p.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../shared/math/low-rank.js';
import { deviceArena, pad4, readFloat32Into, tensorFromArena, type GemmArena } from '../shared/math/device-gemm.js';
import { slotShapeOf, slotVariable } from './slot.js';

export const DEFAULT_TAU = 0.5;

export interface BranchUpdate {
  /** s = min(1, τ‖W‖_F/‖g·D‖_F), 1 when g·D = 0. */
  scale: number;
  /** the trust gate g the branch was built with */
  gate: number;
  /** ‖D‖_F = ‖A′B′ − AB‖_F, before gate and cap */
  deltaNorm: number;
  /** ‖K‖_F of the new branch. */
  branchNorm: number;
  /** ‖W‖_F of the trained weight (kernel without any branch). */
  weightNorm: number;
}

/**
 * A pair's branch. K is held as a tensor (the tfjs path), as a plain array (the device-gemm path),
 * or both once its values were read (kData). Neither changes once made. A branch held as an array
 * gets a temporary tensor where an op needs one (kTensor), so tensor counts do not depend on which
 * path made it.
 */
interface Branch {
  layer: string;
  K: tf.Tensor2D | undefined;
  data: Float32Array | undefined;
  /** `data` was made here and never handed out: the next set() of the pair may write over it. */
  ownData: boolean;
  scale: number;
  /** K is exactly zero: nothing to add or subtract, which keeps identity transfers bit-exact. */
  zero: boolean;
}

/**
 * ‖t‖_F, NaN if any entry is NaN or ±Inf. Read back once and summed in float64 on the plain
 * array: float32 squares cannot overflow there, and the 5-op tfjs version (scale by max|t|, then
 * tf.norm) cost ~1.4 ms per slot on wasm, most of applying a transfer.
 */
function frobenius(t: tf.Tensor): number {
  const data = t.dataSync() as Float32Array;
  // Four partial sums: one accumulator would wait on each add's latency.
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const len = data.length;
  let i = 0;
  for (; i + 3 < len; i += 4) {
    s0 += data[i] * data[i];
    s1 += data[i + 1] * data[i + 1];
    s2 += data[i + 2] * data[i + 2];
    s3 += data[i + 3] * data[i + 3];
  }
  for (; i < len; i++) s0 += data[i] * data[i];
  const ss = s0 + s1 + (s2 + s3);
  return Number.isFinite(ss) ? Math.sqrt(ss) : NaN;
}

function kTensor(b: Branch, m: number, n: number): tf.Tensor2D {
  return b.K ?? tf.tensor2d(b.data!, [m, n]);
}

/** K's values; not to be written (on the cpu backend dataSync hands out the backend's own array). */
function kData(b: Branch): Float32Array {
  return (b.data ??= b.K!.dataSync() as Float32Array);
}

/** Whether f[a…a+len) and f[b…b+len) hold equal values (−0 = +0; NaN equals nothing). */
function sameValues(f: Float32Array, a: number, b: number, len: number): boolean {
  for (let i = 0; i < len; i++) if (f[a + i] !== f[b + i]) return false;
  return true;
}

/**
 * D = A′B′ − AB (m×n, row-major) in the device's arena, as one gemm [A′ A]·[B′; −B]: each entry is
 * one float32 sum over the r + r₀ terms (the tfjs path rounds A′B′ and AB apart, then subtracts:
 * the two differ by float32 rounding). Equal factors give exactly 0, as the tfjs path's do, without
 * a product: an identity transfer must leave the kernel bit-identical. Returns D's float offset and
 * the first free one after it. Layout (floats): A′ m·r | A m·r₀ | B′ r·n | B r₀·n |
 * [A′ A] m·(r + r₀) | [B′; −B] (r + r₀)·n4 | D m·n4.
 */
function lowRankDifference(arena: GemmArena, generated: LowRank, current: LowRank, m: number, n: number, extra: number): { oD: number; free: number } {
  const r = generated.A.shape[1];
  const rc = current.A.shape[1];
  const kk = r + rc;
  const n4 = pad4(n);
  const oA2 = m * r;
  const oB1 = oA2 + m * rc;
  const oB2 = oB1 + r * n;
  const oX = oB2 + rc * n;
  const oY = oX + m * kk;
  const oD = oY + kk * n4;
  const free = oD + m * n4;
  const f = arena.reserve(free + extra);
  readFloat32Into(generated.A, f, 0);
  readFloat32Into(current.A, f, oA2);
  readFloat32Into(generated.B, f, oB1);
  readFloat32Into(current.B, f, oB2);
  if (r === rc && sameValues(f, 0, oA2, m * r) && sameValues(f, oB1, oB2, r * n)) {
    f.fill(0, oD, oD + m * n);
    return { oD, free };
  }
  // [A′ A] and [B′; −B] (rows padded to n4 with zeros), by the vector copy
  arena.copyRows(0, r, oX, kk, m, r);
  arena.copyRows(oA2, rc, oX + r, kk, m, rc);
  arena.copyRows(oB1, n, oY, n4, kk, n); // B′ and B are adjacent: r + r₀ rows
  arena.scale(oY + r * n4, -1, oY + r * n4, rc * n4);
  if (n4 !== n) for (let p = 0; p < kk; p++) f.fill(0, oY + p * n4 + n, oY + (p + 1) * n4);
  arena.gemm(m, n4, kk, oX, kk, 1, oY, n4, oD, n4);
  // to row length n (rows move down, never over one not yet moved)
  if (n4 !== n) for (let i = 1; i < m; i++) f.copyWithin(oD + i * n, oD + i * n4, oD + i * n4 + n);
  return { oD, free };
}

function describe(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function checkFactors(what: string, f: LowRank, m: number, n: number, layer: string): void {
  const { A, B } = f;
  if (!A || !B) throw new Error(`${what}: expected factors { A, B }`);
  if (A.rank !== 2 || B.rank !== 2) {
    throw new Error(`${what}: A and B must be 2-D, got A ${describe(A.shape)} and B ${describe(B.shape)}`);
  }
  const [am, ar] = A.shape;
  const [br, bn] = B.shape;
  if (am !== m || bn !== n || ar !== br) {
    throw new Error(
      `${what}: factors A ${describe(A.shape)} · B ${describe(B.shape)} do not fit slot "${layer}" ` +
        `of shape [${m}, ${n}] (need A [${m}, r] and B [r, ${n}])`,
    );
  }
}

export class KnowledgeBranches {
  private readonly model: tf.LayersModel;
  private readonly branches = new Map<string, Branch>();
  private writes = 0;

  constructor(model: tf.LayersModel) {
    this.model = model;
  }

  /**
   * Apply pair `pairId`'s transfer to `layer`: D = A′B′ − AB (generated minus the slice of W that
   * was sent), gated by the pair's trust gate g and capped, s = min(1, τ‖W‖_F/‖g·D‖_F),
   * K_new = s·g·D replaces this pair's previous branch (kernel += K_new − K_old). Other pairs'
   * branches are untouched. The factors stay the caller's. With `keepDelta`, D itself is returned
   * too (the caller owns it: the gate's gradient needs ⟨G, D⟩). A pair is bound to one layer;
   * remove it before using the id on another layer. g = 0 leaves the kernel bit-identical.
   */
  set(
    pairId: string,
    layer: string,
    generated: LowRank,
    current: LowRank,
    tau = DEFAULT_TAU,
    gate = 1,
    opts: { keepDelta?: boolean } = {},
  ): BranchUpdate & { delta?: tf.Tensor2D } {
    // tau, gate and the pair's layer are checked by setDelta, before anything changes.
    const variable = slotVariable(this.model, layer);
    const [m, n] = slotShapeOf(variable.shape);
    checkFactors(`pair "${pairId}" generated (A′, B′)`, generated, m, n, layer);
    checkFactors(`pair "${pairId}" current slice (A, B)`, current, m, n, layer);

    const arena = deviceArena();
    if (arena) return this.setInArena(arena, variable, pairId, layer, m, n, generated, current, tau, gate, opts);
    const D = tf.tidy(() =>
      tf.sub(tf.matMul(generated.A, generated.B), tf.matMul(current.A, current.B)),
    ) as tf.Tensor2D;
    return this.setDelta(pairId, layer, D, tau, gate, opts);
  }

  /**
   * As set(), for a swap D (a 2-D slot matrix, owned by this call from now on) that is not a
   * difference of low-rank slices: the readout trial of an output pair (W_r − W).
   */
  setDelta(
    pairId: string,
    layer: string,
    D: tf.Tensor2D,
    tau = DEFAULT_TAU,
    gate = 1,
    opts: { keepDelta?: boolean } = {},
  ): BranchUpdate & { delta?: tf.Tensor2D } {
    let old: Branch | undefined;
    try {
      old = this.checkSet(pairId, layer, tau, gate);
    } catch (err) {
      D.dispose();
      throw err;
    }
    const variable = slotVariable(this.model, layer);
    const [m, n] = slotShapeOf(variable.shape);
    if (D.shape[0] !== m || D.shape[1] !== n) {
      D.dispose();
      throw new Error(`pair "${pairId}": the swap [${D.shape.join(', ')}] does not fit slot "${layer}" [${m}, ${n}]`);
    }
    const W = this.weight(layer);
    let dNorm: number;
    let wNorm: number;
    try {
      dNorm = frobenius(D);
      wNorm = frobenius(W);
    } finally {
      W.dispose();
    }
    if (!Number.isFinite(dNorm)) {
      D.dispose();
      throw new Error(`pair "${pairId}": A′B′ − AB is not finite (NaN or Inf in the factors)`);
    }
    const gated = gate * dNorm;
    const scale = gated === 0 ? 1 : Math.min(1, (tau * wNorm) / gated);
    const factor = scale * gate;
    let K: tf.Tensor2D;
    if (factor === 0) K = tf.zerosLike(D);
    else if (factor === 1) K = tf.clone(D);
    else K = tf.tidy(() => tf.mul(D, tf.scalar(factor))) as tf.Tensor2D;
    let delta: tf.Tensor2D | undefined;
    if (opts.keepDelta) delta = D;
    else D.dispose();
    // ‖s·g·D‖_F = s·g·‖D‖_F up to float32 rounding of K (~1e-7 relative): no second read-back of
    // the slot. Only a factor small enough to flush K to zero in float32 is measured on K itself.
    const branchNorm = factor === 0 ? 0 : factor === 1 ? dNorm : factor < 1e-30 ? frobenius(K) : factor * dNorm;
    const zero = branchNorm === 0;

    // kernel += K_new − K_old, skipped when both are exactly zero so an identity transfer leaves
    // the kernel bit-identical (x + 0 would turn −0 into +0).
    if (!(zero && (!old || old.zero))) {
      tf.tidy(() => {
        const delta = old && !old.zero ? tf.sub(K, kTensor(old, m, n)) : K;
        variable.assign(tf.add(variable, tf.reshape(delta, variable.shape)));
      });
    }
    old?.K?.dispose();
    this.branches.set(pairId, { layer, K, data: undefined, ownData: false, scale, zero });
    return { scale, gate, deltaNorm: dNorm, branchNorm, weightNorm: wNorm, delta };
  }

  /** tau and gate in range, and the pair not bound to another layer; returns its branch, if any. */
  private checkSet(pairId: string, layer: string, tau: number, gate: number): Branch | undefined {
    if (!(Number.isFinite(tau) && tau > 0)) throw new Error(`tau must be a finite number > 0, got ${tau}`);
    if (!(gate >= 0 && gate <= 1)) throw new Error(`gate must be in [0, 1], got ${gate}`);
    const old = this.branches.get(pairId);
    if (old && old.layer !== layer) {
      throw new Error(`pair "${pairId}" already has a branch on layer "${old.layer}", not "${layer}"; remove it first`);
    }
    return old;
  }

  /**
   * set() in the device's arena (device-gemm.ts): the tfjs path's float32 operations in the same
   * order (D = A′B′ − AB, W = kernel − Σ_p K_p, K = fround(s·g)·D, kernel + (K_new − K_old)), so
   * the same D gives the kernel the same bits; ‖·‖_F summed in float64, as frobenius() does. One
   * read-back of the kernel and one upload, where the tfjs path takes ~12 ops and two read-backs.
   * Layout after D (floats, L = m·n each): kernel | each branch K of the layer | W | K_new | next.
   */
  private setInArena(
    arena: GemmArena, variable: tf.Variable, pairId: string, layer: string, m: number, n: number, generated: LowRank,
    current: LowRank, tau: number, gate: number, opts: { keepDelta?: boolean },
  ): BranchUpdate & { delta?: tf.Tensor2D } {
    const old = this.checkSet(pairId, layer, tau, gate);
    const L = m * n;
    const layerBranches: Branch[] = [];
    for (const b of this.branches.values()) if (b.layer === layer && !b.zero) layerBranches.push(b);
    const { oD, free } = lowRankDifference(arena, generated, current, m, n, (4 + layerBranches.length) * L);
    const dd = arena.sumSq(oD, L);
    if (!Number.isFinite(dd)) throw new Error(`pair "${pairId}": A′B′ − AB is not finite (NaN or Inf in the factors)`);
    const dNorm = Math.sqrt(dd);
    const f = arena.reserve(free + (4 + layerBranches.length) * L);
    const oKernel = free;
    readFloat32Into(variable, f, oKernel);
    // W = kernel − Σ_p K_p, subtracted in the order weight() does.
    let oOld = -1;
    let o = oKernel + L;
    for (const b of layerBranches) {
      f.set(kData(b), o);
      if (b === old) oOld = o;
      o += L;
    }
    const oW = o;
    let ww: number;
    if (layerBranches.length === 0) ww = arena.sumSq(oKernel, L);
    else if (layerBranches.length === 1) ww = arena.diffSumSq(oKernel, oKernel + L, L);
    else {
      arena.sub(oKernel, oKernel + L, oW, L);
      for (let i = 1; i < layerBranches.length - 1; i++) arena.sub(oW, oKernel + (i + 1) * L, oW, L);
      ww = arena.diffSumSq(oW, oKernel + layerBranches.length * L, L);
    }
    const wNorm = Number.isFinite(ww) ? Math.sqrt(ww) : NaN;
    const gated = gate * dNorm;
    const scale = gated === 0 ? 1 : Math.min(1, (tau * wNorm) / gated);
    const factor = scale * gate;
    const oK = oW + L;
    if (factor === 0) f.fill(0, oK, oK + L);
    else if (factor === 1) f.copyWithin(oK, oD, oD + L);
    else arena.scale(oD, factor, oK, L); // × factor rounded to float32, as tf.mul(D, tf.scalar(factor))
    const branchNorm = factor === 0 ? 0 : factor === 1 ? dNorm : factor < 1e-30 ? Math.sqrt(arena.sumSq(oK, L)) : factor * dNorm;
    const zero = branchNorm === 0;
    // As setDelta: kernel += K_new − K_old, skipped when both are exactly zero.
    if (!(zero && (!old || old.zero))) {
      const oNext = oK + L;
      if (oOld >= 0) arena.addSub(oKernel, oK, oOld, oNext, L);
      else arena.add(oKernel, oK, oNext, L);
      const t = tensorFromArena(f.subarray(oNext, oNext + L), variable.shape);
      variable.assign(t);
      t.dispose();
    }
    const delta = opts.keepDelta ? tensorFromArena<tf.Rank.R2>(f.subarray(oD, oD + L), [m, n]) : undefined;
    // K's values: into the pair's previous array when it is ours alone (no allocation), else a new one.
    const data = old?.ownData ? old.data! : new Float32Array(L);
    data.set(f.subarray(oK, oK + L));
    old?.K?.dispose();
    this.branches.set(pairId, { layer, K: undefined, data, ownData: true, scale, zero });
    return { scale, gate, deltaNorm: dNorm, branchNorm, weightNorm: wNorm, delta };
  }

  /**
   * Add `delta` (a 2-D slot matrix) to the trained weight W of `layer` itself: the one place a
   * transfer may write W, the join-time transfer (docs/DESIGN.md §6). Returns `undo`, which puts the
   * kernel back bit for bit, and `keep`, which frees the saved copy; call exactly one of them.
   */
  writeWeight(layer: string, delta: tf.Tensor2D): { undo(): void; keep(): void } {
    const variable = slotVariable(this.model, layer);
    const [m, n] = slotShapeOf(variable.shape);
    if (delta.shape[0] !== m || delta.shape[1] !== n) throw new Error(`writeWeight: delta [${delta.shape}] does not fit slot "${layer}" [${m}, ${n}]`);
    const saved = tf.clone(variable);
    this.writes += 1;
    tf.tidy(() => {
      variable.assign(tf.add(variable, tf.reshape(delta, variable.shape)));
    });
    return {
      undo: () => {
        this.writes += 1;
        variable.assign(saved);
        saved.dispose();
      },
      keep: () => saved.dispose(),
    };
  }

  /**
   * Make pair `pairId`'s branch part of the trained weight: the kernel keeps it and W now includes
   * it (an output pair whose trial passed keeps the readout it tried). Returns false if none.
   */
  keep(pairId: string): boolean {
    const b = this.branches.get(pairId);
    if (!b) return false;
    if (!b.zero) this.writes += 1;
    b.K?.dispose();
    this.branches.delete(pairId);
    return true;
  }

  /**
   * How many times W itself was written other than by training (writeWeight, its undo, keep): a
   * warm-started slice history of the slot must start cold after such a jump.
   */
  get weightWrites(): number {
    return this.writes;
  }

  /** Take pair `pairId`'s branch out of its kernel. Returns false if the pair had none. */
  remove(pairId: string): boolean {
    const b = this.branches.get(pairId);
    if (!b) return false;
    if (!b.zero) {
      const variable = slotVariable(this.model, b.layer);
      tf.tidy(() => {
        variable.assign(tf.sub(variable, tf.reshape(kTensor(b, ...slotShapeOf(variable.shape)), variable.shape)));
      });
    }
    b.K?.dispose();
    this.branches.delete(pairId);
    return true;
  }

  /** The trained weight W = kernel − Σ_p K_p of `layer` as a 2-D slot matrix. Caller owns it. */
  weight(layer: string): tf.Tensor2D {
    const variable = slotVariable(this.model, layer);
    const shape = slotShapeOf(variable.shape);
    return tf.tidy(() => {
      let W = tf.reshape(variable, shape) as tf.Tensor2D;
      for (const b of this.branches.values()) {
        if (b.layer === layer && !b.zero) W = tf.sub(W, kTensor(b, ...shape));
      }
      return tf.clone(W);
    });
  }

  /** A copy of pair `pairId`'s branch K (2-D), or undefined. Caller owns it. */
  branch(pairId: string): tf.Tensor2D | undefined {
    const b = this.branches.get(pairId);
    if (!b) return undefined;
    if (b.K) return tf.clone(b.K) as tf.Tensor2D;
    const [m, n] = slotShapeOf(slotVariable(this.model, b.layer).shape);
    // a copy: the cpu backend would keep the array itself, which the pair's next set() reuses
    return tf.tensor2d(b.data!.slice(), [m, n]);
  }

  /** The cap factor s of pair `pairId`'s current branch, or undefined. */
  scaleOf(pairId: string): number | undefined {
    return this.branches.get(pairId)?.scale;
  }

  /** The layer pair `pairId`'s branch sits on, or undefined. */
  layerOf(pairId: string): string | undefined {
    return this.branches.get(pairId)?.layer;
  }

  /** Pairs that currently hold a branch. */
  pairs(): string[] {
    return [...this.branches.keys()];
  }

  /** Layers that carry at least one branch. */
  layers(): string[] {
    return [...new Set([...this.branches.values()].map((b) => b.layer))];
  }

  /**
   * Free the branch tensors. The kernels keep W_eff (call remove() first to restore W); this
   * object must not be used afterwards.
   */
  dispose(): void {
    for (const b of this.branches.values()) b.K?.dispose();
    this.branches.clear();
  }
}
