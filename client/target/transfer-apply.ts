// The two ends of a target pair's cycle on the device (docs/DESIGN.md §4 and §5), free of any transport:
// - applying a transfer between steps: find the slice it was computed from, set the pair's
//   knowledge branch, open its k-step feedback window (and its held-out sum);
// - closing that window into the feedback message: G (training or held-out) projected onto the
//   generated factors, checked finite before it may leave.
import * as tf from '@tensorflow/tfjs';
import type { Logger } from '../../shared/log.js';
import { disposeLowRank, truncateLowRank, type LowRank } from '../../shared/math/low-rank.js';
import { tensorToWire } from '../../shared/codec/tensor-codec.js';
import { feedbackSchema, type FeedbackMsg, type Metrics, type PlanMsg, type PlanPair } from '../../shared/protocol/messages.js';
import type { ClosedWindow, FeedbackWindows } from './feedback-windows.js';
import type { SliceMemory } from './slice-memory.js';
import type { QueuedTransfer } from './transfer-queue.js';
import type { IgnoredEvent, TransferEvent } from '../device-events.js';
import { projectFeedback } from './feedback.js';
import type { HeldoutFeedback, HeldoutSum } from './heldout-feedback.js';
import { tryJoin } from './join-transfer.js';
import type { KnowledgeBranches } from '../knowledge-branch.js';

function norm(values: Float32Array): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i] * values[i];
  return Math.sqrt(s);
}

export interface TransferApplierDeps {
  branches: KnowledgeBranches;
  slices: SliceMemory;
  windows: FeedbackWindows;
  heldout: HeldoutFeedback;
  log: Logger;
  ignore(e: IgnoredEvent): void;
  applied(e: TransferEvent): void;
}

export class TransferApplier {
  /** transfers applied, all sessions */
  count = 0;
  /** pairId → the sliceId its latest applied transfer referred to (this session) */
  private readonly lastTransferSlice = new Map<string, number>();
  /** pairs that have had their join-time try (once per device lifetime) */
  private readonly joinTried = new Set<string>();
  /** join-time transfers kept, by pair */
  readonly joined = new Set<string>();

  constructor(private readonly d: TransferApplierDeps) {}

  /** The session ended: its slices are freed, so no transfer of it can refer to them. */
  forgetSession(): void {
    this.lastTransferSlice.clear();
  }

  /**
   * Between steps: drop the branches of pairs that are no longer this device's target pairs, then
   * apply `queued` (oldest first) at local step `step`.
   */
  apply(queued: QueuedTransfer[], plan: PlanMsg | undefined, step: number): void {
    const { branches, slices, windows, heldout } = this.d;
    const targets = new Map((plan?.pairs ?? []).filter((p) => p.role === 'target').map((p) => [p.pairId, p]));
    if (plan) {
      for (const id of branches.pairs()) {
        const p = targets.get(id);
        if (!p || p.slot !== branches.layerOf(id)) branches.remove(id);
      }
    }
    for (const t of queued) {
      if (!plan || t.session !== plan.session) {
        this.d.ignore({ reason: 'session_ended', pairId: t.pairId, cycleId: t.cycleId });
        continue;
      }
      const pair = targets.get(t.pairId);
      if (!pair || pair.slot !== t.slot) {
        this.d.ignore({ reason: 'not_a_target_pair', pairId: t.pairId, cycleId: t.cycleId });
        continue;
      }
      const slice = slices.get(t.sliceId);
      if (!slice || slice.slot !== t.slot) {
        this.d.ignore({ reason: 'slice_gone', pairId: t.pairId, cycleId: t.cycleId, detail: `slice ${t.sliceId}` });
        continue;
      }
      if (slice.rank < pair.rank) {
        this.d.ignore({ reason: 'slice_rank', pairId: t.pairId, cycleId: t.cycleId, detail: `slice ${t.sliceId} has rank ${slice.rank} < ${pair.rank}` });
        continue;
      }
      const generated: LowRank = {
        A: tf.tensor2d(t.A.values, t.A.shape as [number, number]),
        B: tf.tensor2d(t.B.values, t.B.shape as [number, number]),
      };
      // The coordinator used the first r columns of A and rows of B (a rank-r slice of the same W,
      // since the factors are ordered by singular value); so must the branch.
      const current = slice.rank === pair.rank ? slice.factors : truncateLowRank(slice.factors, pair.rank);
      // Join-time transfer: once, at the pair's first transfer to a device that has barely started.
      let gate = t.gate;
      let joinedNow = false;
      if (pair.join && !this.joinTried.has(t.pairId) && step <= 2 * pair.tCycle) {
        this.joinTried.add(t.pairId);
        try {
          const j = tryJoin(branches, heldout, t.pairId, t.slot, generated, current, pair.join === 'always');
          if (j) {
            this.d.log.info({ pairId: t.pairId, step, ...j }, j.joined ? 'join-time transfer kept' : 'join-time transfer refused by the held-out loss');
            if (j.joined) {
              this.joined.add(t.pairId);
              joinedNow = true;
              // The swap is in W now and the slice AB is stale: no live branch from this transfer.
              gate = 0;
            }
          }
        } catch (err) {
          this.d.log.warn({ pairId: t.pairId, err: (err as Error).message }, 'join-time transfer failed; the live gate goes on');
        }
      }
      let upd;
      try {
        upd = branches.set(t.pairId, t.slot, generated, current, pair.tau, gate, { keepDelta: !joinedNow });
      } catch (err) {
        disposeLowRank(generated);
        if (current !== slice.factors) disposeLowRank(current);
        this.d.ignore({ reason: 'branch_failed', pairId: t.pairId, cycleId: t.cycleId, detail: (err as Error).message });
        continue;
      }
      if (current !== slice.factors) disposeLowRank(current);
      heldout.drop(t.pairId);
      const useHeldout = pair.feedback === 'heldout' && heldout.available;
      if (pair.feedback === 'heldout' && !useHeldout) {
        this.d.log.warn({ pairId: t.pairId }, 'the plan asks for held-out feedback but the val split is empty: G comes from the training batches');
      }
      windows.openWindow({
        pairId: t.pairId,
        cycleId: t.cycleId,
        session: t.session,
        layer: t.slot,
        generated,
        scale: upd.scale,
        gate: upd.gate,
        delta: upd.delta,
        branchRatio: upd.weightNorm > 0 ? upd.branchNorm / upd.weightNorm : undefined,
        k: pair.k,
        openedAt: step,
        accumulate: !useHeldout,
      });
      if (useHeldout) heldout.open(t.pairId, t.slot);
      this.count += 1;
      this.releaseSlices(pair.slot, t.pairId, t.sliceId, targets);
      const { delta: _d, ...figures } = upd;
      this.d.log.debug({ pairId: t.pairId, cycleId: t.cycleId, step, ...figures }, 'transfer applied');
      this.d.applied({
        pairId: t.pairId,
        cycleId: t.cycleId,
        sliceId: t.sliceId,
        slot: t.slot,
        step,
        adapterStep: t.adapterStep,
        ...figures,
      });
    }
  }

  /**
   * The coordinator starts each cycle of a pair on a newer target slice than the last, so once
   * every target pair of a slot has had a transfer, slices older than the oldest of those are
   * never needed again.
   */
  private releaseSlices(slot: string, pairId: string, sliceId: number, targets: Map<string, PlanPair>): void {
    this.lastTransferSlice.set(pairId, sliceId);
    let floor = Infinity;
    for (const p of targets.values()) {
      if (p.slot !== slot) continue;
      const used = this.lastTransferSlice.get(p.pairId);
      if (used === undefined) return;
      floor = Math.min(floor, used);
    }
    if (floor !== Infinity) this.d.slices.release(slot, floor);
  }
}

export interface WindowFeedback {
  msg: FeedbackMsg;
  /** false when G is not finite or the message is not valid: it must not be sent */
  valid: boolean;
  gANorm: number;
  gBNorm: number;
  gateGrad: number;
}

/**
 * The feedback of a closed window. With a held-out sum (owned by this call from now on) its G
 * replaces the window's training G. `w.G` is replaced but not disposed at the end: the caller
 * still owns the window.
 */
export function windowFeedback(w: ClosedWindow, held: HeldoutSum | undefined, metrics: Metrics): WindowFeedback {
  let steps = w.steps;
  if (held) {
    const shape = w.G.shape;
    w.G.dispose();
    w.G = held.G ?? (tf.zeros(shape) as tf.Tensor2D);
    steps = held.steps;
  }
  // K = s·g·(A′B′ − AB): the adapter's output enters scaled by s·g, the gate through s·D.
  const fb = projectFeedback(w.G, w.generated, w.scale * w.gate);
  const gateGrad = w.delta ? w.scale * tf.tidy(() => tf.sum(tf.mul(w.G, w.delta!)).dataSync()[0]) : 0;
  // s·⟨G, A′B′⟩: the source's part alone (without the −AB the swap also takes out), which the
  // gate's guard tests: ⟨G, A′B′⟩ = Σ (G·B′ᵀ) ⊙ A′, with an explicit transpose (fast on wasm).
  const sourceGrad = w.scale * tf.tidy(() => tf.sum(tf.mul(tf.matMul(w.G, tf.transpose(w.generated.B)), w.generated.A)).dataSync()[0]);
  const gA = fb.gA.dataSync() as Float32Array;
  const gB = fb.gB.dataSync() as Float32Array;
  const gAShape = fb.gA.shape;
  const gBShape = fb.gB.shape;
  fb.gA.dispose();
  fb.gB.dispose();
  const msg: FeedbackMsg = {
    pairId: w.pairId,
    cycleId: w.cycleId,
    steps: Math.max(1, steps),
    scale: w.scale,
    gA: tensorToWire(gA, gAShape),
    gB: tensorToWire(gB, gBShape),
    gateGrad,
    metrics,
  };
  if (w.branchRatio !== undefined && Number.isFinite(w.branchRatio)) msg.branchRatio = w.branchRatio;
  if (Number.isFinite(sourceGrad)) msg.sourceGrad = sourceGrad;
  // A NaN in G would be refused; better not to send it and say why at the sender.
  const valid = feedbackSchema.safeParse(msg).success && gA.every(Number.isFinite) && gB.every(Number.isFinite) && Number.isFinite(gateGrad);
  return { msg, valid, gANorm: norm(gA), gBNorm: norm(gB), gateGrad };
}
