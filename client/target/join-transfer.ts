// The join-time transfer (docs/DESIGN.md §6): where the live gated swap is weak (slots that share
// one axis only), a target that has barely started takes the source's mapped slice once, into its
// trained weight itself, W ← W − AB + A′B′, and keeps it only if its held-out loss says it helps.
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
): JoinResult | undefined {
  if (!heldout.available || branches.pairs().includes(pairId)) return undefined;
  const before = heldout.loss();
  const D = tf.tidy(() => tf.sub(tf.matMul(generated.A, generated.B), tf.matMul(current.A, current.B)) as tf.Tensor2D);
  let write;
  try {
    write = branches.writeWeight(layer, D);
  } finally {
    D.dispose();
  }
  const after = heldout.loss();
  const joined = Number.isFinite(after) && after < before;
  if (joined) write.keep();
  else write.undo();
  return { joined, before, after };
}
