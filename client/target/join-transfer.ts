// The join-time transfer (docs/DESIGN.md §6): where the live gated swap is weak (slots that share
// one axis only), a target that has barely started takes the source's mapped slice once, into its
// trained weight itself, W ← W − AB + A′B′: always, or ('check') only if its held-out loss falls
// there and then. Measured: at a fresh target's first transfer the check refuses nearly every
// swap, since a readout not yet trained on the new features makes any change look worse.
// It then trains, and takes live transfers under its trust gate, as usual.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';
import type { KnowledgeBranches } from '../knowledge-branch.js';
import type { HeldoutFeedback } from './heldout-feedback.js';

export interface JoinResult {
  joined: boolean;
  /** held-out loss before and with the swap */
  before: number;
  after: number;
}

/**
 * Try the swap on `layer` for pair `pairId`. Only a pair with no branch in the model can join (the
 * kernel is then W plus other pairs' branches, and the swap is exact on W). Returns undefined when
 * the join cannot be tried (a branch is in place, or no held-out split).
 */
export function tryJoin(
  branches: KnowledgeBranches,
  heldout: HeldoutFeedback,
  pairId: string,
  layer: string,
  generated: LowRank,
  current: LowRank,
  /** keep the swap whatever the held-out loss says (the loss is still measured and reported) */
  always = false,
): JoinResult | undefined {
  if (branches.pairs().includes(pairId)) return undefined;
  if (!heldout.available && !always) return undefined;
  const before = heldout.available ? heldout.loss() : NaN;
  const D = tf.tidy(() => tf.sub(tf.matMul(generated.A, generated.B), tf.matMul(current.A, current.B)) as tf.Tensor2D);
  let write;
  try {
    write = branches.writeWeight(layer, D);
  } finally {
    D.dispose();
  }
  const after = heldout.available ? heldout.loss() : NaN;
  const joined = always || (Number.isFinite(after) && after < before);
  if (joined) write.keep();
  else write.undo();
  return { joined, before, after };
}
