// The relevance trial of the 'relevance' guard (docs/DESIGN.md §6): is the source's factor more
// aligned with the target's held-out gradient than random factors whose directions have the same
// norms?
//
// Why this question: the noise control replaces the source's slice by Gaussian factors of its
// shape and norm. A Gaussian direction points anywhere whatever its length, so against shadows
// with uniformly random directions of the same lengths a noise factor is, by construction, one
// draw among K + 1 exchangeable ones: it beats all K shadows with chance 1/(K + 1), whatever the
// target's state. A trained source's factor lies where the data is (its columns are features of
// the inputs both devices read), so it beats them most of the time. The trial says nothing about
// whether the source helps: that is the gate's job, trained on the same held-out feedback.
//
// What is compared is read off the feedback the device already sends. On the rows' side,
// gA = c·G·B′ᵀ (m×r, c = s·g > 0), and the statistic is ‖A′ᵀ·gA‖_F, the r×r overlap of the
// source's input-side directions with the gradient's: a norm, not the trace ⟨A′, gA⟩, because the
// trace sums r² terms whose signs depend on how the two models happen to order their hidden units,
// and cancels (measured: the trace let the real source beat 9 shadows too rarely to be accepted).
// On the columns' side the same with B′ and gB = c·A′ᵀ·G (r×n). c cancels. Pure: no tensors, no I/O.
import { mulberry32 } from '../../shared/math/prng.js';

export interface RelevanceTrial {
  /** whether the source's factor beat every shadow */
  beatAll: boolean;
  /** how many shadows it was compared with (the chance of beating all of them is 1/(shadows + 1)) */
  shadows: number;
}

/**
 * A factor and the projected gradient along the same axis, as the wire carries them (row-major):
 * 'columns': [p, r] (A′ and gA: the r directions are columns); 'rows': [r, p] (B′ and gB).
 */
export interface FactorPair {
  factor: Float32Array | Float64Array;
  grad: Float32Array;
  /** the number of directions (the slice's rank) */
  r: number;
  layout: 'columns' | 'rows';
}

/** ‖Fᵀ·P‖_F² over the p axis, F and P laid out as `layout` says. */
function overlap(F: Float32Array | Float64Array, P: Float32Array, r: number, layout: 'columns' | 'rows'): number {
  const p = F.length / r;
  let total = 0;
  for (let k = 0; k < r; k++) {
    for (let l = 0; l < r; l++) {
      let s = 0;
      if (layout === 'columns') for (let i = 0; i < p; i++) s += F[i * r + k]! * P[i * r + l]!;
      else for (let i = 0; i < p; i++) s += F[k * p + i]! * P[l * p + i]!;
      total += s * s;
    }
  }
  return total;
}

/**
 * Compare ‖Fᵀ·P‖ for the source's factor F with the same for `shadows` Gaussian factors whose
 * directions have the norms of F's, drawn from `seed` (reproducible per pair and cycle).
 */
export function relevanceTrial(x: FactorPair, shadows: number, seed: number): RelevanceTrial {
  const { factor, grad, r, layout } = x;
  if (factor.length !== grad.length) throw new Error(`relevance trial: the factor has ${factor.length} values, the gradient ${grad.length}`);
  if (!Number.isInteger(r) || r < 1 || factor.length % r !== 0) throw new Error(`relevance trial: ${factor.length} values are not ${r} directions`);
  if (!Number.isInteger(shadows) || shadows < 1) throw new Error(`relevance trial: shadows must be a positive integer, got ${shadows}`);
  const p = factor.length / r;
  // Element i of direction k, in either layout.
  const at = layout === 'columns' ? (i: number, k: number) => i * r + k : (i: number, k: number) => k * p + i;
  const norms = new Float64Array(r);
  for (let k = 0; k < r; k++) {
    let ss = 0;
    for (let i = 0; i < p; i++) ss += factor[at(i, k)]! ** 2;
    norms[k] = Math.sqrt(ss);
  }
  const real = overlap(factor, grad, r, layout);
  const rand = mulberry32(seed);
  const z = new Float64Array(factor.length);
  let beatAll = real > 0;
  for (let s = 0; s < shadows && beatAll; s++) {
    // Each shadow direction: Gaussian (Box–Muller; 1 − u keeps log() away from 0), scaled to the
    // norm of the factor's direction it stands in for. A slice's directions have very unequal
    // norms (√S), and the overlap's spread depends on that, not only on the total norm.
    for (let k = 0; k < r; k++) {
      let zz = 0;
      for (let i = 0; i < p; i += 2) {
        const rad = Math.sqrt(-2 * Math.log(1 - rand()));
        const t = 2 * Math.PI * rand();
        const a = rad * Math.cos(t);
        z[at(i, k)] = a;
        zz += a * a;
        if (i + 1 < p) {
          const b = rad * Math.sin(t);
          z[at(i + 1, k)] = b;
          zz += b * b;
        }
      }
      const scale = zz > 0 ? norms[k]! / Math.sqrt(zz) : 0;
      for (let i = 0; i < p; i++) z[at(i, k)]! *= scale;
    }
    if (overlap(z, grad, r, layout) >= real) beatAll = false;
  }
  return { beatAll, shadows };
}
