// Where the adapter's output starts (docs/DESIGN.md §6 "Source-aligned start"). The LPKA is exactly
// the identity on its query factors when fresh, so what it is given as queries is what it outputs
// before it has learned anything. Giving it the target's own slice (the original design) makes the
// transfer carry no source knowledge at all until the adapter has learned a map, which the weak
// feedback signal never teaches it. Where the two slots index the same things on an axis, the map
// on that axis is known, and the adapter starts from the source's factors instead:
//
// - 'both' (same shape, e.g. two first layers over the same 784 pixels): the source's slice as is.
// - 'rows' (same m, e.g. first layers of different widths): the source's row factor A_s, each
//   column sign-aligned to the target's, with the target's own column factor rescaled to the
//   source's singular values: A′ = A_s·D, B′ = diag(√σ_s/√σ_t)·B_t (D = ±1 per component).
//   Then A′B′ = Σ_i ±σ_s,i · u_s,i · v_t,iᵀ: the source's input-side directions and strengths,
//   read out through the target's own output-side directions.
// - 'cols' (same n, e.g. two classifiers over the same classes): the mirror image.
// - 'none': the target's own slice (identity start; the adapter must learn the map).
//
// Factors are A = U√S, B = √S·Vᵀ, so √σ_i = ‖A[:, i]‖ = ‖B[i, :]‖.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';

export const ALIGNMENTS = ['both', 'rows', 'cols', 'none'] as const;
export type Alignment = (typeof ALIGNMENTS)[number];

/** What the slot shapes alone say is shared: equal m → rows, equal n → cols. */
export function inferAlignment(target: readonly [number, number], source: readonly [number, number]): Alignment {
  const rows = target[0] === source[0];
  const cols = target[1] === source[1];
  if (rows && cols) return 'both';
  if (rows) return 'rows';
  if (cols) return 'cols';
  return 'none';
}

/** Can `align` be used for these shapes (the shared axes really have equal sizes)? */
export function alignmentFits(align: Alignment, target: readonly [number, number], source: readonly [number, number]): boolean {
  switch (align) {
    case 'both':
      return target[0] === source[0] && target[1] === source[1];
    case 'rows':
      return target[0] === source[0];
    case 'cols':
      return target[1] === source[1];
    case 'none':
      return true;
  }
}

/**
 * The start factors for `align` (target-shaped: A′ m_t×r, B′ r×n_t). Both inputs must have the same
 * rank. The caller owns the result; the inputs stay the caller's.
 */
export function passThroughStart(align: Alignment, target: LowRank, source: LowRank): LowRank {
  const r = target.A.shape[1];
  if (source.A.shape[1] !== r || target.B.shape[0] !== r || source.B.shape[0] !== r) {
    throw new Error(`pass-through: target and source slices must have the same rank (got ${target.A.shape[1]} and ${source.A.shape[1]})`);
  }
  if (!alignmentFits(align, [target.A.shape[0], target.B.shape[1]], [source.A.shape[0], source.B.shape[1]])) {
    throw new Error(
      `pass-through '${align}' needs a shared axis: target [${target.A.shape[0]}, ${target.B.shape[1]}], source [${source.A.shape[0]}, ${source.B.shape[1]}]`,
    );
  }
  return tf.tidy(() => {
    switch (align) {
      case 'both':
        return { A: tf.clone(source.A), B: tf.clone(source.B) };
      case 'none':
        return { A: tf.clone(target.A), B: tf.clone(target.B) };
      case 'rows': {
        // Per component: sign of ⟨A_s[:, i], A_t[:, i]⟩, and √σ_s,i / √σ_t,i from column norms.
        const sign = signsOf(tf.sum(tf.mul(source.A, target.A), 0));
        const ratio = safeRatio(tf.norm(source.A, 'euclidean', 0), tf.norm(target.A, 'euclidean', 0));
        const A = tf.mul(source.A, tf.reshape(sign, [1, r])) as tf.Tensor2D;
        const B = tf.mul(target.B, tf.reshape(ratio, [r, 1])) as tf.Tensor2D;
        return { A, B };
      }
      case 'cols': {
        const sign = signsOf(tf.sum(tf.mul(source.B, target.B), 1));
        const ratio = safeRatio(tf.norm(source.B, 'euclidean', 1), tf.norm(target.B, 'euclidean', 1));
        const B = tf.mul(source.B, tf.reshape(sign, [r, 1])) as tf.Tensor2D;
        const A = tf.mul(target.A, tf.reshape(ratio, [1, r])) as tf.Tensor2D;
        return { A, B };
      }
    }
  });
}

/** ±1 per entry (+1 where the dot product is 0, so a component is never zeroed). */
function signsOf(dots: tf.Tensor): tf.Tensor {
  return tf.where(tf.less(dots, 0), tf.fill(dots.shape, -1), tf.fill(dots.shape, 1));
}

/** num/den, 0 where den is 0 (a target component with no energy gets none of the source's). */
function safeRatio(num: tf.Tensor, den: tf.Tensor): tf.Tensor {
  const ok = tf.greater(den, 0);
  return tf.where(ok, tf.div(num, tf.where(ok, den, tf.onesLike(den))), tf.zerosLike(den));
}
