// Slice: the rank-r factors A (m×r), B (r×n) of a slot W ≈ A·B, from a truncated SVD
// W ≈ U S Vᵀ with A = U·√S and B = √S·Vᵀ and canonical signs (docs/DESIGN.md §2 "Slots and slices").
//
// Where the work happens, and why (a 784×64 slot at rank 8 must cost well under 1 ms on a device):
// - the products with W (the only O(m·n) work) run in the device's WebAssembly SIMD gemm on one
//   read-back of W (shared/math/device-gemm.ts; ~0.1 ms for a warm slice's two, at the core's
//   multiply-add rate), or, where no gemm is registered, on the tfjs backend, a few ops each
//   (wasm's matMul beats a JS loop by ~10× there, but each op's dispatch and read-back costs
//   ~50–100 µs, which made up half a warm slice);
// - everything of size (m or n)×l or smaller runs in float64 on plain arrays (shared/math/dense.ts):
//   the orthonormalisations only ever on the short side min(m, n), and the final SVD through the
//   l×l Gram matrix of the long side (Jacobi), so no m×l QR and no ml-matrix accessor loops;
// - ml-matrix's SVD remains for the exact path (tests, small slots).
import * as tf from '@tensorflow/tfjs';
import { Matrix, SingularValueDecomposition } from 'ml-matrix';
import seedrandom from 'seedrandom';
import { cholQFactor, matMul as denseMatMul, orthoQ, symmetricEigen } from './dense.js';
import { deviceArena, pad4, readFloat32Into, tensorFromArena, type GemmArena } from './device-gemm.js';
import type { LowRank } from './low-rank.js';

export interface LowRankSliceOptions {
  /** Extra sketch columns beyond the rank. Default 8. */
  oversample?: number;
  /**
   * Power iterations (each one multiplies by W·Wᵀ, or Wᵀ·W, and re-orthonormalises). Default 2:
   * with one, the reconstruction error is already within 1e-5 of the exact SVD's on a 0.8^i
   * spectrum, but the factors themselves move by ~1e-3 between sketch seeds; with two they agree
   * to ~2e-5, and the adapter consumes the factors, not just their product.
   */
  powerIters?: number;
  /** Seed of the Gaussian sketch: the same seed gives the same factors. Default 0. */
  seed?: number;
  /**
   * Warm start: a caller that slices the same slot again and again (a device, every cycle) passes
   * the same SliceHistory each time; see SliceHistory. Without it every slice is cold.
   */
  history?: SliceHistory;
}

/**
 * The warm start's jump guard: a warm slice is kept only when its top `rank` directions lie in the
 * subspace it started from up to 1 − ‖Q₀ᵀ·V_r‖²_F / r ≤ this (the mean sin² of their angles to it).
 * It is not a convergence test: on a nearly flat spectrum (a near-init MLP) one iteration still
 * moves them by ~3e-3 right after a cold start, and a cold restart would be less accurate than
 * carrying on. It catches W having jumped (an unrelated W moves them by ~0.5 or more).
 */
export const WARM_SUBSPACE_TOL = 0.05;
/**
 * Relative tolerance of the warm start's energy guard: a warm slice is kept only when the share of
 * ‖W‖²_F it captures, Σ s_j² / ‖W‖²_F, has not fallen by more than this (relative) below the
 * previous slice's. A new strong direction orthogonal to the previous subspace is invisible to a
 * power iteration started there; it shows as captured energy that ‖W‖_F grew without.
 */
export const WARM_ENERGY_TOL = 2e-3;
/** symmetricEigen's offTol for the slice's l×l Gram matrices (see randomizedSvd). */
const SLICE_EIGEN_TOL = 1e-12;
/** Default of SliceHistory.coldEvery: a cold check every 16th slice. */
export const DEFAULT_COLD_EVERY = 16;

/**
 * The state a warm-started slice keeps between calls, one per sliced slot (docs/DESIGN.md §2
 * "Slots and slices"): the previous slice's orthonormal short-side basis Q₀ (min(m,n)×l) and the
 * share of ‖W‖²_F it captured. With a history, a slice of the same shape and rank takes Q₀ as its
 * subspace instead of a Gaussian sketch: Y = W·Q₀ and M·Q₀ = Wᵀ·Y (W·Wᵀ·Q₀ wide) give the Ritz
 * pairs, and orth(M·Q₀·P) is the next slice's Q₀, so each slice costs 2 products with W (7 cold)
 * and still advances the power iteration by one (`warmIters` − 1 more before the Ritz step). The
 * weights move little between a device's cycles, so the iteration keeps converging across slices:
 * on the near-flat spectrum of a young MLP a warm slice ends far closer to the exact SVD than a cold
 * one (tests: test/slice-warm.test.ts).
 *
 * A slice is cold (the seeded Gaussian sketch, 2 iterations, exactly as without a history) when
 * there is no basis yet, the shape, rank or sketch width changed, and whenever a warm result fails
 * either guard (WARM_SUBSPACE_TOL, WARM_ENERGY_TOL): the same call then starts over cold. Every
 * `coldEvery`-th slice a cold sketch is taken besides the warm one (a check): the one capturing
 * more of ‖W‖²_F is returned and carried on, so a direction the iteration cannot see from Q₀ is
 * found within coldEvery slices, while a warm subspace more converged than a fresh sketch (a flat
 * spectrum) is not thrown away. reset() forgets the basis (e.g. when W was written outside
 * training).
 */
export class SliceHistory {
  readonly coldEvery: number;
  readonly warmIters: number;
  readonly subspaceTol: number;
  readonly energyTol: number;
  /**
   * Slices taken through this history, cold or warm (the one returned); `fallback`: warm attempts
   * that failed a guard (a cold slice followed), `checks`: scheduled cold checks.
   */
  readonly counts = { cold: 0, warm: 0, fallback: 0, checks: 0 };
  /** Whether the last call ran a cold sketch (first slice, check, fallback): it cost ~2× a warm one. */
  lastCold = false;
  /** @internal */ basis: Float64Array | undefined;
  /** @internal */ key = '';
  /** @internal */ sinceCold = 0;
  /** @internal */ energyShare = 0;

  /** @internal */ lastContainment = NaN;

  constructor(opts: { coldEvery?: number; warmIters?: number; subspaceTol?: number; energyTol?: number } = {}) {
    this.coldEvery = opts.coldEvery ?? DEFAULT_COLD_EVERY;
    this.warmIters = opts.warmIters ?? 1;
    this.subspaceTol = opts.subspaceTol ?? WARM_SUBSPACE_TOL;
    this.energyTol = opts.energyTol ?? WARM_ENERGY_TOL;
    if (!Number.isInteger(this.coldEvery) || this.coldEvery < 1) throw new Error(`SliceHistory: coldEvery must be an integer ≥ 1, got ${this.coldEvery}`);
    if (!Number.isInteger(this.warmIters) || this.warmIters < 1) throw new Error(`SliceHistory: warmIters must be an integer ≥ 1, got ${this.warmIters}`);
  }

  reset(): void {
    this.basis = undefined;
    this.key = '';
    this.sinceCold = 0;
    this.energyShare = 0;
  }
}

/** Floats in a rank-r slice of an m×n slot (what travels instead of m·n). */
export function sliceFloats(m: number, n: number, r: number): number {
  return r * (m + n);
}

/**
 * Randomized truncated SVD of W (Halko, Martinsson & Tropp 2011, Algorithm 4.4): Gaussian sketch,
 * power iterations with re-orthonormalisation, SVD of W restricted to the found subspace. Returns
 * A = U·√S (m×r) and B = √S·Vᵀ (r×n) with canonical signs (each column of U has its
 * largest-magnitude entry positive). When the sketch would span min(m,n) columns anyway, the
 * exact SVD is used instead. The caller owns the returned tensors.
 *
 * The subspace is kept on the short side k = min(m, n), where its QR is cheap. Wide W (m < n):
 * Q = orth((W·Wᵀ)^q·W·Ω) and W ≈ Q·(Wᵀ·Q)ᵀ, Halko's approximation exactly. Tall W (m ≥ n): the
 * mirror image on the row space, Z = orth((Wᵀ·W)^(q+1)·Ω) and W ≈ (W·Z)·Zᵀ; Halko's Q·Qᵀ·W has
 * that same row space, and W·Z·Zᵀ is the best approximation with it, so the error is never larger.
 * Either way the long-side factor Y (long×l) is split by the eigenvectors P of YᵀY: Y·P = U_Y·S,
 * and the short-side singular vectors are basis·P.
 */
export function lowRankSlice(W: tf.Tensor2D, rank: number, opts: LowRankSliceOptions = {}): LowRank {
  const [m, n] = checkArgs('lowRankSlice', W, rank);
  const oversample = opts.oversample ?? 8;
  const powerIters = opts.powerIters ?? 2;
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(oversample) || oversample < 0) {
    throw new Error(`lowRankSlice: oversample must be a non-negative integer, got ${oversample}`);
  }
  if (!Number.isInteger(powerIters) || powerIters < 0) {
    throw new Error(`lowRankSlice: powerIters must be a non-negative integer, got ${powerIters}`);
  }
  const k = Math.min(m, n);
  const l = Math.min(rank + oversample, k);
  // A sketch of min(m,n) columns spans W's whole range: nothing to gain over the exact SVD.
  if (l >= k) return exactSlice(W, rank);

  // Products with W·Wᵀ square W's scale, and float32 only holds that between ~1e-19 and ~1e19
  // for ‖W‖: a W whose largest entry lies outside [2^-40, 2^40] is sliced as 2^-e·W (exact in
  // float32) and its singular values scaled back, so it neither overflows nor sinks into denormals.
  // One read-back for both: max|W| and ‖W‖²_F (the warm start's energy guard).
  // On the device gemm, W is read back once into the arena and both come from there (float64 sum).
  const arena = deviceArena();
  const inArena = arena ? new ArenaProducts(arena, W, m, n, l, rank) : undefined;
  const [maxAbs, sumSq] = inArena ? inArena.maxAbsAndSumSquares() : maxAbsAndSumSquares(W);
  if (!Number.isFinite(maxAbs)) throw new Error('slice: W contains non-finite values (NaN or Infinity)');
  const e = maxAbs === 0 || (maxAbs <= 2 ** 40 && maxAbs >= 2 ** -40) ? 0 : Math.max(-126, Math.min(126, Math.round(Math.log2(maxAbs))));
  inArena?.scaleW(2 ** -e);
  const products: WProducts = inArena ?? new TfjsProducts(W, m, n, e);
  try {
    let svd: Svd;
    const h = opts.history;
    const key = `${m}x${n}:${rank}:${l}`;
    // ‖2^-e·W‖²_F: exact from the float64 sum; the tfjs path sums the scaled tensor again.
    const energy = h ? (inArena ? sumSq * 4 ** -e : e === 0 ? sumSq : (products as TfjsProducts).sumSquares()) : 0;
    let warm: Svd | undefined;
    let warmShare = 0;
    if (h !== undefined && h.basis !== undefined && h.key === key && maxAbs > 0) {
      warm = randomizedSvd(products, m, n, rank, l, h.warmIters - 1, seed, h.basis, true);
      warmShare = shareOf(warm, rank, energy);
      h.lastContainment = warm.containment!;
      const ok = warm.containment! >= 1 - h.subspaceTol && warmShare >= h.energyShare * (1 - h.energyTol);
      if (!ok) {
        h.counts.fallback += 1;
        warm = undefined;
      }
    }
    // Every coldEvery-th slice a cold sketch checks the warm one: it sees what a power iteration
    // from Q₀ cannot, and whichever captures more of ‖W‖²_F is the slice and the next start.
    const check = warm !== undefined && h!.sinceCold >= h!.coldEvery - 1;
    let share = warmShare;
    let isWarm = warm !== undefined;
    if (warm && !check) svd = warm;
    else {
      const cold = randomizedSvd(products, m, n, rank, l, powerIters, seed, undefined, h !== undefined);
      const coldShare = h ? shareOf(cold, rank, energy) : 0;
      if (warm && warmShare >= coldShare) svd = warm;
      else {
        svd = cold;
        share = coldShare;
        isWarm = false;
      }
    }
    if (h) {
      if (isWarm) h.counts.warm += 1;
      else h.counts.cold += 1;
      if (check) h.counts.checks += 1;
      h.lastCold = !(warm && !check);
      h.key = key;
      h.basis = svd.next;
      h.energyShare = share;
      h.sinceCold = isWarm && !check ? h.sinceCold + 1 : 0;
    }
    // Before the products let go of what they hold: the arena's Ritz vectors become A directly.
    return ritzFactors(m, n, rank, svd, 2 ** e, products);
  } finally {
    products.dispose();
  }
}

/**
 * The top `rank` singular triplets of W (m×n) by the sketch of lowRankSlice, float64, row-major:
 * singular values s; on the long side (U tall, V wide) the columns σ_j·u_j as W·v_j gives them,
 * normalised only when the factors are built (ritzFactors); on the short side unit columns.
 */
interface Svd {
  s: Float64Array;
  /** long×rank (row j at longOff + j·longLd, float32 as the products gave it), column j = σ_j times the singular vector */
  long: Float32Array;
  longOff: number;
  longLd: number;
  /** k×rank, unit columns */
  short: Float64Array;
  /** per column of `long`, the row of its first largest-magnitude entry (canonical signs, tall W) */
  longArgmax: Int32Array;
  /**
   * With `next`: orth(M·Q·P), one more power iteration of the final basis Q, in Ritz order (M =
   * Wᵀ·W tall, W·Wᵀ wide): the next warm start's Q₀, k×l with orthonormal columns.
   */
  next?: Float64Array;
  /** Warm start only: ‖Q₁ᵀ·V_r‖²_F / r for Q₁ = next, 1 when one more iteration leaves V_r in place. */
  containment?: number;
}

/**
 * The products with W (m×n, already scaled by 2^-e) a randomized SVD takes, on the short side
 * k = min(m, n) and the long side: toLong is W (tall) or Wᵀ (wide), toShort the other, and
 * M = toShort·toLong (Wᵀ·W tall, W·Wᵀ wide). Results come back as float64 for the plain-array
 * kernels of dense.ts; the products themselves are float32 either way.
 */
interface WProducts {
  /** toShort·x for a long×cols x: W·Ω, the cold sketch of a wide W. */
  short(x: Float32Array | Float64Array, cols: number): Float64Array;
  /** M·x for a k×cols x (x: the n×l Gaussian of a tall W's cold sketch): one power iteration. */
  gram(x: Float32Array | Float64Array, cols: number): Float64Array;
  /** Y = toLong·q (long×cols), kept for yTimes; returns toShort·Y = M·q. */
  project(q: Float64Array, cols: number): Float64Array;
  /**
   * Y·P and Q·P for the Y and Q of the last project, P row-major cols×rank: the long side's
   * σ-scaled and the short side's unit singular vectors, with the long side's column sums of
   * squares and each column's first largest-magnitude row (columnStats). Releases Y.
   */
  ritz(p: Float64Array, rank: number): Ritz;
  /** Qᵀ·M·Q = Qᵀ·z (cols×cols, float64) for the Q and z of the last project: YᵀY. */
  qtz(): Float64Array;
  /**
   * orth(M·Q·P) (k×cols, orthonormal columns, a new array) for the Q of the last project and P
   * (cols×cols): one more power iteration, the next warm start.
   */
  nextBasis(pFull: Float64Array): Float64Array;
  /** ‖Q₁ᵀ·S‖²_F for Q₁ the last nextBasis (k×cols) and S the last ritz's short side (k×rank). */
  containment(q1: Float64Array, short: Float64Array, rank: number): number;
  /**
   * The long side of a Ritz result of these products with column j scaled by coef[j], as a
   * long×rank tensor (A of a tall W), or undefined to have the caller build it.
   */
  longFactor?(svd: Svd, coef: Float64Array, rank: number): tf.Tensor2D | undefined;
  /** Free what the products hold (tensors); idempotent. */
  dispose(): void;
}

interface Ritz {
  /** the long side's rows at off + i·ld */
  long: Float32Array;
  off: number;
  ld: number;
  short: Float64Array;
  sumSq: Float64Array;
  argmax: Int32Array;
}

/**
 * Column sums of squares (float64) and, per column, the row of the first largest-magnitude entry,
 * of a rows×cols matrix at `off` with row length ld.
 */
function columnStats(x: Float32Array, off: number, ld: number, rows: number, cols: number): { sumSq: Float64Array; argmax: Int32Array } {
  const sumSq = new Float64Array(cols);
  const argmax = new Int32Array(cols);
  const best = new Float64Array(cols).fill(-1);
  for (let i = 0; i < rows; i++) {
    const o = off + i * ld;
    for (let j = 0; j < cols; j++) {
      const v = x[o + j];
      sumSq[j] += v * v;
      const a = Math.abs(v);
      if (a > best[j]) {
        best[j] = a;
        argmax[j] = i;
      }
    }
  }
  return { sumSq, argmax };
}

/** The products on the tfjs backend: a few ops each, one upload and one read-back per product. */
class TfjsProducts implements WProducts {
  private readonly Wx: tf.Tensor2D;
  private readonly Wt: tf.Tensor2D;
  private readonly toLong: tf.Tensor2D;
  private readonly toShort: tf.Tensor2D;
  private y: tf.Tensor2D | undefined;
  private cols = 0;
  private q: Float64Array | undefined;
  private z: Float64Array | undefined;

  constructor(private readonly W: tf.Tensor2D, m: number, n: number, e: number) {
    this.Wx = e === 0 ? W : (tf.tidy(() => tf.mul(W, tf.scalar(2 ** -e))) as tf.Tensor2D);
    // wasm's matMul with a transposed operand runs ~3× slower than on a transposed copy.
    this.Wt = tf.transpose(this.Wx) as tf.Tensor2D;
    const tall = m >= n;
    this.toLong = tall ? this.Wx : this.Wt;
    this.toShort = tall ? this.Wt : this.Wx;
  }

  /** ‖2^-e·W‖²_F in float32. */
  sumSquares(): number {
    return sumSquares(this.Wx);
  }

  short(x: Float32Array | Float64Array, cols: number): Float64Array {
    return mulW(this.toShort, undefined, x, x.length / cols, cols);
  }

  gram(x: Float32Array | Float64Array, cols: number): Float64Array {
    return mulW(this.toLong, this.toShort, x, x.length / cols, cols);
  }

  project(q: Float64Array, cols: number): Float64Array {
    this.y?.dispose();
    // Y stays on the backend: only the k×l M·Q comes back (for the Gram Qᵀ·M·Q), and after the
    // eigen step the long×rank Y·P. Yᵀ·Y directly (a transposed operand) costs ~3× more on wasm.
    this.y = tf.tidy(() => tf.matMul(this.toLong, tf.tensor2d(Float32Array.from(q), [q.length / cols, cols]))) as tf.Tensor2D;
    this.cols = cols;
    this.q = q;
    this.z = readBack(tf.matMul(this.toShort, this.y));
    return this.z;
  }

  ritz(p: Float64Array, rank: number): Ritz {
    const y = this.y!;
    this.y = undefined;
    try {
      const t = tf.tidy(() => tf.matMul(y, tf.tensor2d(Float32Array.from(p), [this.cols, rank])));
      const long = t.dataSync() as Float32Array;
      t.dispose();
      const { sumSq, argmax } = columnStats(long, 0, rank, long.length / rank, rank);
      return { long, off: 0, ld: rank, short: denseMatMul(this.q!, p, this.q!.length / this.cols, this.cols, rank), sumSq, argmax };
    } finally {
      y.dispose();
    }
  }

  qtz(): Float64Array {
    const k = this.q!.length / this.cols;
    return denseMatMul(transposeOf(this.q!, k, this.cols), this.z!, this.cols, k, this.cols);
  }

  nextBasis(pFull: Float64Array): Float64Array {
    const k = this.z!.length / this.cols;
    return orthoQ(denseMatMul(this.z!, pFull, k, this.cols, this.cols), k, this.cols);
  }

  containment(q1: Float64Array, short: Float64Array, rank: number): number {
    return sumSquaresOfXtY(q1, short, q1.length / this.cols, this.cols, rank);
  }

  dispose(): void {
    this.y?.dispose();
    this.y = undefined;
    this.Wt.dispose();
    if (this.Wx !== this.W) this.Wx.dispose();
  }
}

/**
 * The products on plain arrays in the device's gemm arena (device-gemm.ts): W is read back once
 * and copied in (scaled), and each product is a gemm on it, Wᵀ read in place. Sketch widths are
 * padded to a multiple of 4 with zero columns, which stay zero through every product.
 * Arena layout (floats): W m·n | X long·c4 | Y long·c4 | Z k·c4 | P c4·r4 | O two banks of long·r4
 * (the Ritz vectors of a warm and a cold run of one slice, both kept until the factors are built) |
 * S k·r4 | PF c4·c4 | ZP k·c4 | F long·r4 | DG r4·r4; then float64 (gemm64), rows padded to even
 * lengths l2, r2: Q k·l2 | z k·l2 | G l2·l2 | X k·l2 | T l2·l2 | Q₁ k·l2 | S k·r2 | C l2·r2.
 */
class ArenaProducts implements WProducts {
  private readonly tall: boolean;
  private readonly long: number;
  private readonly k: number;
  private readonly c4: number;
  private readonly oX: number;
  private readonly oY: number;
  private readonly oZ: number;
  private readonly oP: number;
  private readonly oO: number;
  private bank = 0;
  private readonly r4: number;
  private readonly oF: number;
  private readonly oDG: number;
  private readonly oS: number;
  private readonly oPF: number;
  private readonly oZP: number;
  private f32: Float32Array;
  private yCols = 0;
  private readonly l2: number;
  private readonly r2: number;
  private readonly dQ: number;
  private readonly dZ: number;
  private readonly dG: number;
  private readonly dX: number;
  private readonly dT: number;
  private readonly dQ1: number;
  private readonly dS: number;
  private readonly dC: number;
  /** whether Q₁ (dQ1) holds the last nextBasis */
  private q1Valid = false;

  constructor(private readonly arena: GemmArena, W: tf.Tensor2D, private readonly m: number, private readonly n: number, l: number, rank: number) {
    this.tall = m >= n;
    this.long = Math.max(m, n);
    this.k = Math.min(m, n);
    this.c4 = pad4(l);
    const r4 = pad4(rank);
    this.oX = m * n;
    this.oY = this.oX + this.long * this.c4;
    this.oZ = this.oY + this.long * this.c4;
    this.oP = this.oZ + this.k * this.c4;
    this.r4 = r4;
    this.oO = this.oP + this.c4 * r4;
    this.oS = this.oO + 2 * this.long * r4;
    this.oPF = this.oS + this.k * r4;
    this.oZP = this.oPF + this.c4 * this.c4;
    this.oF = this.oZP + this.k * this.c4;
    this.oDG = this.oF + this.long * r4;
    const k = this.k;
    const l2 = (this.l2 = l + (l & 1));
    const r2 = (this.r2 = rank + (rank & 1));
    this.dQ = (this.oDG + r4 * r4 + 1) >> 1;
    this.dZ = this.dQ + k * l2;
    this.dG = this.dZ + k * l2;
    this.dX = this.dG + l2 * l2;
    this.dT = this.dX + k * l2;
    this.dQ1 = this.dT + l2 * l2;
    this.dS = this.dQ1 + k * l2;
    this.dC = this.dS + k * r2;
    this.f32 = arena.reserve(2 * (this.dC + l2 * r2));
    readFloat32Into(W, this.f32, 0);
  }

  /** max |W| (NaN if W is not finite) and ‖W‖²_F in float64. */
  maxAbsAndSumSquares(): [number, number] {
    const [ss, mx] = this.arena.sumSqMaxAbs(0, this.m * this.n);
    // NaN and ±Infinity make the sum non-finite (finite float32 squares cannot overflow it).
    return Number.isFinite(ss) ? [mx, ss] : [NaN, ss];
  }

  /** W ← W·scale, a power of two: exact in float32. */
  scaleW(scale: number): void {
    if (scale !== 1) this.arena.scale(0, scale, 0, this.m * this.n);
  }

  /** x (rows×cols, row-major) into X with row length c4, zero-padded. */
  private putX(x: Float32Array | Float64Array, rows: number, cols: number): void {
    const f = this.f32;
    const c4 = this.c4;
    for (let i = 0; i < rows; i++) {
      const o = this.oX + i * c4;
      const xi = i * cols;
      for (let j = 0; j < cols; j++) f[o + j] = x[xi + j];
      for (let j = cols; j < c4; j++) f[o + j] = 0;
    }
  }

  /** rows×cols of the buffer at `off` (row length ld) as float64. */
  private get(off: number, rows: number, cols: number, ld: number): Float64Array {
    const f = this.f32;
    const out = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      const o = off + i * ld;
      const oi = i * cols;
      for (let j = 0; j < cols; j++) out[oi + j] = f[o + j];
    }
    return out;
  }

  /** C = W·B (B n×c4, C m×c4) */
  private w(b: number, c: number): void {
    this.arena.gemm(this.m, this.c4, this.n, 0, this.n, 1, b, this.c4, c, this.c4);
  }

  /** C = Wᵀ·B (B m×c4, C n×c4): W read transposed in place */
  private wt(b: number, c: number): void {
    this.arena.gemm(this.n, this.c4, this.m, 0, 1, this.n, b, this.c4, c, this.c4);
  }

  private toLong(b: number, c: number): void {
    if (this.tall) this.w(b, c);
    else this.wt(b, c);
  }

  private toShort(b: number, c: number): void {
    if (this.tall) this.wt(b, c);
    else this.w(b, c);
  }

  short(x: Float32Array | Float64Array, cols: number): Float64Array {
    this.putX(x, this.long, cols);
    this.toShort(this.oX, this.oZ);
    return this.get(this.oZ, this.k, cols, this.c4);
  }

  gram(x: Float32Array | Float64Array, cols: number): Float64Array {
    this.putX(x, this.k, cols);
    this.toLong(this.oX, this.oY);
    this.toShort(this.oY, this.oZ);
    return this.get(this.oZ, this.k, cols, this.c4);
  }

  project(q: Float64Array, cols: number): Float64Array {
    this.yCols = cols;
    this.putX(q, this.k, cols);
    this.toLong(this.oX, this.oY);
    this.toShort(this.oY, this.oZ);
    // q and z as float64 for qtz: z is exactly the float32 product, q the basis it multiplied
    const d = this.arena.f64;
    const f = this.f32;
    const l2 = this.l2;
    for (let i = 0; i < this.k; i++) {
      for (let j = 0; j < cols; j++) {
        d[this.dQ + i * l2 + j] = q[i * cols + j];
        d[this.dZ + i * l2 + j] = f[this.oZ + i * this.c4 + j];
      }
      for (let j = cols; j < l2; j++) {
        d[this.dQ + i * l2 + j] = 0;
        d[this.dZ + i * l2 + j] = 0;
      }
    }
    return d.subarray(this.dZ, this.dZ + this.k * l2);
  }

  qtz(): Float64Array {
    const [k, l2, c] = [this.k, this.l2, this.yCols];
    this.arena.gemm64(l2, l2, k, this.dQ, 1, l2, this.dZ, l2, this.dG, l2);
    return compact(this.arena.f64, this.dG, c, c, l2);
  }

  nextBasis(pFull: Float64Array): Float64Array {
    const [k, l2, c, c4] = [this.k, this.l2, this.yCols, this.c4];
    // M·Q·P = z·P in the float32 gemm, then float64 X (k×l2) for Cholesky QR in gemm64
    this.putP(pFull, c, c, this.oPF, c4);
    this.arena.gemm(k, c4, c4, this.oZ, c4, 1, this.oPF, c4, this.oZP, c4);
    const d = this.arena.f64;
    const f = this.f32;
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < c; j++) d[this.dX + i * l2 + j] = f[this.oZP + i * c4 + j];
      for (let j = c; j < l2; j++) d[this.dX + i * l2 + j] = 0;
    }
    this.arena.gemm64(l2, l2, k, this.dX, 1, l2, this.dX, l2, this.dG, l2);
    const T = cholQFactor(d.subarray(this.dG, this.dG + l2 * l2), c, l2);
    if (!T) {
      this.q1Valid = false;
      return orthoQ(compact(d, this.dX, k, c, l2), k, c);
    }
    for (let i = 0; i < l2; i++) for (let j = 0; j < l2; j++) d[this.dT + i * l2 + j] = i < c && j < c ? T[i * c + j] : 0;
    this.arena.gemm64(k, l2, l2, this.dX, l2, 1, this.dT, l2, this.dQ1, l2);
    this.q1Valid = true;
    return compact(d, this.dQ1, k, c, l2);
  }

  containment(q1: Float64Array, short: Float64Array, rank: number): number {
    const [k, l2, r2, c] = [this.k, this.l2, this.r2, this.yCols];
    if (!this.q1Valid) return sumSquaresOfXtY(q1, short, k, c, rank);
    this.arena.gemm64(l2, r2, k, this.dQ1, 1, l2, this.dS, r2, this.dC, r2);
    const d = this.arena.f64;
    let ss = 0;
    for (let i = 0; i < c; i++) for (let j = 0; j < rank; j++) ss += d[this.dC + i * r2 + j] ** 2;
    return ss;
  }

  /** P (rows×cols, row-major) into the buffer at off, c4×ld, zero-padded. */
  private putP(p: Float64Array, rows: number, cols: number, off: number, ld: number): void {
    const f = this.f32;
    for (let i = 0; i < this.c4; i++) {
      for (let j = 0; j < ld; j++) f[off + i * ld + j] = i < rows && j < cols ? p[i * cols + j] : 0;
    }
  }

  ritz(p: Float64Array, rank: number): Ritz {
    const r4 = this.r4;
    const oO = this.oO + this.bank * this.long * r4;
    this.bank ^= 1;
    // Padding rows of P meet Y's and Q's zero padding columns.
    this.putP(p, this.yCols, rank, this.oP, r4);
    this.arena.gemm(this.long, r4, this.c4, this.oY, this.c4, 1, this.oP, r4, oO, r4);
    this.arena.gemm(this.k, r4, this.c4, this.oX, this.c4, 1, this.oP, r4, this.oS, r4);
    const { sumSq, argmax } = columnStats(this.f32, oO, r4, this.long, rank);
    // the short side as float64, for the Svd and (row length r2) for containment's gemm64
    const short = new Float64Array(this.k * rank);
    const d = this.arena.f64;
    const r2 = this.r2;
    for (let i = 0; i < this.k; i++) {
      for (let j = 0; j < rank; j++) {
        const v = this.f32[this.oS + i * r4 + j];
        short[i * rank + j] = v;
        d[this.dS + i * r2 + j] = v;
      }
      for (let j = rank; j < r2; j++) d[this.dS + i * r2 + j] = 0;
    }
    return { long: this.f32, off: oO, ld: r4, short, sumSq, argmax };
  }

  /** O·diag(coef) in the gemm (the zero terms leave each product exact), handed to tfjs from the arena. */
  longFactor(svd: Svd, coef: Float64Array, rank: number): tf.Tensor2D | undefined {
    const r4 = this.r4;
    if (r4 !== rank || svd.long !== this.f32) return undefined;
    const f = this.f32;
    for (let i = 0; i < r4; i++) for (let j = 0; j < r4; j++) f[this.oDG + i * r4 + j] = i === j ? coef[i] : 0;
    this.arena.gemm(this.long, r4, r4, svd.longOff, r4, 1, this.oDG, r4, this.oF, r4);
    return tensorFromArena<tf.Rank.R2>(f.subarray(this.oF, this.oF + this.long * r4), [this.long, r4]);
  }

  dispose(): void {}
}

function randomizedSvd(
  W: WProducts, m: number, n: number, rank: number, l: number, powerIters: number, seed: number, start?: Float64Array, next = false,
): Svd {
  const k = Math.min(m, n);
  const tall = m >= n;
  let basis: Float64Array; // k×l, orthonormal columns on the short side
  if (start) basis = start;
  else {
    // Ω: an n×l seeded Gaussian.
    const omega = gaussian(n, l, seed);
    basis = orthonormalize(tall ? W.gram(omega, l) : W.short(omega, l), k, l);
  }
  for (let it = 0; it < powerIters; it++) basis = orthonormalize(W.gram(basis, l), k, l);
  // YᵀY = Qᵀ·(M·Q) for Y = (long side)·Q, through the short k×l product; Y itself stays with the
  // products until Y·P.
  const q = basis;
  const z = W.project(q, l); // M·basis, k×l
  const g = W.qtz(); // YᵀY = Qᵀ·z, l×l
  checkFinite(g);
  // All l eigenvectors of YᵀY, row-major l×l. Off-diagonals down to 1e-12 of ‖YᵀY‖: the vectors are
  // then exact for float32 factors, and a warm slice's near-diagonal Gram needs one sweep fewer.
  const { vectors: pFull } = symmetricEigen(g, l, { offTol: SLICE_EIGEN_TOL });
  const p = new Float64Array(l * rank);
  for (let i = 0; i < l; i++) for (let j = 0; j < rank; j++) p[i * rank + j] = pFull[i * l + j];
  // columns σ_j·u_j (long side), unit columns (short side)
  const { long: longVecs, off: longOff, ld: longLd, short: shortVecs, sumSq, argmax: longArgmax } = W.ritz(p, rank);
  // σ_j = ‖Y·p_j‖ rather than √λ_j: consistent with the vector it scales, even at rounding level.
  const s = sumSq.map(Math.sqrt);
  // M·Q came back for the Gram anyway: one more power iteration costs only M·Q·P and its QR.
  // Ordered by the Ritz values, so the next Gram is near diagonal and Jacobi needs few sweeps.
  let nextBasis: Float64Array | undefined;
  let containment: number | undefined;
  if (next) {
    checkFinite(z);
    nextBasis = W.nextBasis(pFull);
    // ‖Q₁ᵀ·V_r‖²_F / r: Q₁ and V_r have orthonormal columns, so this is 1 − mean sin² of the angles.
    if (start) containment = W.containment(nextBasis, shortVecs, rank) / rank;
  }
  return { s, long: longVecs, longOff, longLd, short: shortVecs, longArgmax, next: nextBasis, containment };
}

/**
 * The factors A = U·√S (m×r), B = √S·Vᵀ (r×n) of a randomized Svd of the scaled W, S = 2^e·s, with
 * canonicalFactorsOf's signs (each column of U has its largest-magnitude entry positive; the first
 * of equal ones). The long side is normalised here, in the same pass that writes its factor.
 */
function ritzFactors(m: number, n: number, r: number, svd: Svd, scale: number, products: WProducts): LowRank {
  const tall = m >= n;
  const { s, long: L, longOff: lo, longLd: ld, short: S } = svd;
  // U's column j is L's divided by σ_j (tall: the same largest entry) or S's (wide).
  const best = tall ? svd.longArgmax : argmaxAbsColumns(S, m, r);
  const fu = new Float64Array(r);
  const fv = new Float64Array(r);
  for (let j = 0; j < r; j++) {
    const u = tall ? L[lo + best[j] * ld + j] : S[best[j] * r + j];
    const f = (u < 0 ? -1 : 1) * Math.sqrt(Math.max(0, s[j] * scale));
    const fl = s[j] > 0 ? f / s[j] : f;
    fu[j] = tall ? fl : f;
    fv[j] = tall ? f : fl;
  }
  let A: tf.Tensor2D | undefined;
  const b = new Float32Array(r * n);
  if (tall) {
    A = products.longFactor?.(svd, fu, r);
    if (!A) {
      const a = new Float32Array(m * r);
      for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) a[i * r + j] = fu[j] * L[lo + i * ld + j];
      A = tf.tensor2d(a, [m, r]);
    }
    for (let c = 0; c < n; c++) for (let j = 0; j < r; j++) b[j * n + c] = fv[j] * S[c * r + j];
  } else {
    const a = new Float32Array(m * r);
    for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) a[i * r + j] = fu[j] * S[i * r + j];
    A = tf.tensor2d(a, [m, r]);
    for (let c = 0; c < n; c++) for (let j = 0; j < r; j++) b[j * n + c] = fv[j] * L[lo + c * ld + j];
  }
  return { A, B: tf.tensor2d(b, [r, n]) };
}

/** Per column of a row-major rows×cols matrix, the row of its first largest-magnitude entry. */
function argmaxAbsColumns(x: Float64Array, rows: number, cols: number): Int32Array {
  const best = new Int32Array(cols);
  const bestAbs = new Float64Array(cols).fill(-1);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const ax = Math.abs(x[i * cols + j]);
      if (ax > bestAbs[j]) {
        bestAbs[j] = ax;
        best[j] = i;
      }
    }
  }
  return best;
}

/** A tensor's values as float64; the tensor is disposed. */
function readBack(t: tf.Tensor): Float64Array {
  try {
    return Float64Array.from(t.dataSync() as Float32Array);
  } finally {
    t.dispose();
  }
}

/** rows×cols of x from `off` (row length ld), as a new compact array. */
function compact(x: Float64Array, off: number, rows: number, cols: number, ld: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = x[off + i * ld + j];
  return out;
}

/** ‖Xᵀ·Y‖²_F for row-major X (rows×cx) and Y (rows×cy), float64. */
function sumSquaresOfXtY(x: Float64Array, y: Float64Array, rows: number, cx: number, cy: number): number {
  const proj = denseMatMul(transposeOf(x, rows, cx), y, cx, rows, cy);
  let ss = 0;
  for (let i = 0; i < proj.length; i++) ss += proj[i] * proj[i];
  return ss;
}

function transposeOf(x: Float64Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j];
  return out;
}

/**
 * The share of ‖W‖²_F (`energy`) a slice captures. No closures on the hot path: tsx (keepNames)
 * wraps each one it creates in a defineProperty call.
 */
function shareOf(x: Svd, rank: number, energy: number): number {
  return energy > 0 ? capturedEnergy(x.s, rank) / energy : 0;
}

function capturedEnergy(s: Float64Array, rank: number): number {
  let e = 0;
  for (let j = 0; j < rank; j++) e += s[j] * s[j];
  return e;
}

/** ‖W‖²_F (W already scaled into float32's comfortable range). */
function sumSquares(W: tf.Tensor): number {
  const t = tf.tidy(() => tf.sum(tf.square(W)));
  const v = t.dataSync()[0];
  t.dispose();
  return v;
}

/** max |W| (NaN or Infinity passed through) and ‖W‖²_F in float32 (Infinity past ~1.8e38). */
function maxAbsAndSumSquares(W: tf.Tensor): [number, number] {
  const t = tf.tidy(() => tf.stack([tf.max(tf.abs(W)), tf.sum(tf.square(W))]));
  const v = t.dataSync();
  t.dispose();
  return [v[0], v[1]];
}

/**
 * Exact truncated SVD (ml-matrix, float64) with the same canonical signs as lowRankSlice.
 * O(m·n·min(m,n)): meant for tests, benchmarks and small slots. The caller owns the tensors.
 */
export function exactSlice(W: tf.Tensor2D, rank: number): LowRank {
  const [m, n] = checkArgs('exactSlice', W, rank);
  const data = W.dataSync();
  checkFinite(data);
  if (m >= n) {
    const svd = new SingularValueDecomposition(toMatrix(data, m, n));
    const U = svd.leftSingularVectors;
    const V = svd.rightSingularVectors;
    return canonicalFactors(m, n, rank, svd.diagonal, (i, j) => U.get(i, j), (c, j) => V.get(c, j));
  }
  // Wide: decompose Wᵀ = U' S V'ᵀ, so W = V' S U'ᵀ.
  const svd = new SingularValueDecomposition(toMatrix(data, m, n).transpose());
  const U = svd.rightSingularVectors;
  const V = svd.leftSingularVectors;
  return canonicalFactors(m, n, rank, svd.diagonal, (i, j) => U.get(i, j), (c, j) => V.get(c, j));
}

function checkArgs(fn: string, W: tf.Tensor, rank: number): [number, number] {
  if (W.rank !== 2) throw new Error(`${fn}: W must be a 2-D tensor, got shape [${W.shape.join(', ')}]`);
  if (W.dtype !== 'float32') throw new Error(`${fn}: W must be float32, got ${W.dtype}`);
  const [m, n] = W.shape as [number, number];
  const k = Math.min(m, n);
  if (!Number.isInteger(rank) || rank < 1 || rank > k) {
    throw new Error(
      `${fn}: rank must be an integer in [1, min(m, n)] = [1, ${k}] for W of shape [${m}, ${n}], got ${rank}`,
    );
  }
  return [m, n];
}

/**
 * second·(first·X) (or first·X without `second`) on the tfjs backend, X row-major rows×cols; the
 * float32 result comes back as float64 for the plain-array kernels. The middle product stays on
 * the backend: one upload, one read-back.
 */
function mulW(first: tf.Tensor2D, second: tf.Tensor2D | undefined, x: Float32Array | Float64Array, rows: number, cols: number): Float64Array {
  // The array is not returned through tf.tidy: tidy walks its result element by element.
  let out: Float64Array | undefined;
  tf.tidy(() => {
    const f32 = x instanceof Float32Array ? x : Float32Array.from(x);
    const once = tf.matMul(first, tf.tensor2d(f32, [rows, cols], 'float32'));
    out = Float64Array.from((second ? tf.matMul(second, once) : once).dataSync() as Float32Array);
  });
  return out!;
}

function gaussian(rows: number, cols: number, seed: number): Float32Array {
  const rng = seedrandom(`lowRankSlice:${seed}`);
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < out.length; i += 2) {
    // Box–Muller; 1 - rng() is in (0, 1], so the log is finite.
    const rad = Math.sqrt(-2 * Math.log(1 - rng()));
    const ang = 2 * Math.PI * rng();
    out[i] = rad * Math.cos(ang);
    if (i + 1 < out.length) out[i + 1] = rad * Math.sin(ang);
  }
  return out;
}

/** Orthonormal basis (row-major rows×cols, float64) of the columns of a finite rows×cols matrix. */
function orthonormalize(y: Float64Array, rows: number, cols: number): Float64Array {
  checkFinite(y);
  return orthoQ(y, rows, cols);
}

function toMatrix(data: ArrayLike<number>, rows: number, cols: number): Matrix {
  const mat = new Matrix(rows, cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) mat.set(i, j, data[i * cols + j]);
  }
  return mat;
}

function checkFinite(data: ArrayLike<number>): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw new Error('slice: W contains non-finite values (NaN or Infinity)');
  }
}

/** canonicalFactors for row-major U (m×r) and V (n×r) arrays, without an accessor per element. */
function canonicalFactorsOf(m: number, n: number, r: number, s: Float64Array, U: Float64Array, V: Float64Array): LowRank {
  const a = new Float32Array(m * r);
  const b = new Float32Array(r * n);
  for (let j = 0; j < r; j++) {
    let best = 0;
    let bestAbs = -1;
    for (let i = 0; i < m; i++) {
      const x = Math.abs(U[i * r + j]);
      if (x > bestAbs) {
        bestAbs = x;
        best = i;
      }
    }
    const f = (U[best * r + j] < 0 ? -1 : 1) * Math.sqrt(Math.max(0, s[j]));
    for (let i = 0; i < m; i++) a[i * r + j] = f * U[i * r + j];
    for (let c = 0; c < n; c++) b[j * n + c] = f * V[c * r + j];
  }
  return { A: tf.tensor2d(a, [m, r]), B: tf.tensor2d(b, [r, n]) };
}

/**
 * A = U·√S, B = √S·Vᵀ from the top r singular triplets, each column of U flipped so that its
 * largest-magnitude entry is positive (the matching row of B flips with it). SVD signs are
 * arbitrary and attention over the factors is not sign-invariant, so both ends of a transfer
 * must agree on them.
 */
function canonicalFactors(
  m: number,
  n: number,
  r: number,
  s: ArrayLike<number>,
  u: (i: number, j: number) => number,
  v: (c: number, j: number) => number,
): LowRank {
  const U = new Float64Array(m * r);
  const V = new Float64Array(n * r);
  for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) U[i * r + j] = u(i, j);
  for (let c = 0; c < n; c++) for (let j = 0; j < r; j++) V[c * r + j] = v(c, j);
  return canonicalFactorsOf(m, n, r, Float64Array.from({ length: r }, (_, j) => s[j]), U, V);
}

