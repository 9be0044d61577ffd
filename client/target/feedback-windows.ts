// The k-step windows that follow each applied transfer (docs/DESIGN.md §5). G must be the sum of
// the per-step gradients over exactly that pair's window, and two pairs on one target slot can
// have overlapping windows. The Trainer keeps one running sum per layer; it is flushed into every
// open window of the layer whenever a window of that layer opens or closes, so each window gets
// exactly the steps it spanned, at a cost proportional to window events, not to steps.
import * as tf from '@tensorflow/tfjs';
import { disposeLowRank, type LowRank } from '../../shared/math/low-rank.js';

export interface GradientAccumulator {
  startAccumulating(layer: string): void;
  takeAccumulated(layer: string): { G: tf.Tensor2D; steps: number };
  stopAccumulating(layer: string): void;
}

export interface WindowSpec {
  pairId: string;
  cycleId: number;
  /** the plan session the transfer arrived in; feedback is only ever sent in that session */
  session: string;
  layer: string;
  /** A′ (m×r), B′ (r×n): owned by the window from now on */
  generated: LowRank;
  /** the cap factor s applied to this pair's branch */
  scale: number;
  /** the trust gate g the branch was built with (K = s·g·D) */
  gate: number;
  /** D = A′B′ − AB of the branch, owned by the window: the gate's gradient is s·⟨G, D⟩ */
  delta?: tf.Tensor2D;
  /** ‖K‖/‖W‖ of the branch, reported with the feedback */
  branchRatio?: number;
  /** steps to train before the feedback is due */
  k: number;
  /** local step at which the window opened */
  openedAt: number;
  /**
   * Sum the training gradient for this window (default true). False when G comes from elsewhere
   * (held-out feedback), so no training-batch sum is kept only to be thrown away.
   */
  accumulate?: boolean;
}

interface OpenWindow extends WindowSpec {
  sum: tf.Tensor2D | undefined;
  /** steps flushed into `sum` */
  flushed: number;
  /** steps trained since the window opened (flushed or not yet) */
  trained: number;
  lossSum: number;
}

export interface ClosedWindow extends WindowSpec {
  /** Σ per-step ∂loss/∂W_eff over the window; the caller owns it (and `generated`, `delta`) */
  G: tf.Tensor2D;
  /** steps G sums over */
  steps: number;
  /** mean training loss over the window's steps */
  meanLoss: number;
}

export class FeedbackWindows {
  private readonly open = new Map<string, OpenWindow>();

  constructor(private readonly acc: GradientAccumulator) {}

  /** Pairs with an open window. */
  pairIds(): string[] {
    return [...this.open.keys()];
  }

  get size(): number {
    return this.open.size;
  }

  has(pairId: string): boolean {
    return this.open.has(pairId);
  }

  get(pairId: string): Readonly<WindowSpec> | undefined {
    return this.open.get(pairId);
  }

  /** The open windows on a layer that take the training gradient. */
  private windowsOn(layer: string): OpenWindow[] {
    return [...this.open.values()].filter((w) => w.layer === layer && w.accumulate !== false);
  }

  /** Move the layer's running sum into every open window on it. */
  private flush(layer: string): void {
    const ws = this.windowsOn(layer);
    if (ws.length === 0) return;
    const { G, steps } = this.acc.takeAccumulated(layer);
    try {
      if (steps === 0) return;
      for (const w of ws) {
        const prev = w.sum;
        w.sum = tf.tidy(() => (prev ? tf.add(prev, G) : tf.clone(G)) as tf.Tensor2D);
        prev?.dispose();
        w.flushed += steps;
      }
    } finally {
      G.dispose();
    }
  }

  /**
   * Open a window for a pair after its transfer was applied. A pair has at most one window: an
   * older one of the same pair is abandoned (its cycle is over on the coordinator's side).
   */
  openWindow(spec: WindowSpec): void {
    if (!(Number.isInteger(spec.k) && spec.k >= 1)) throw new Error(`window k must be an integer ≥ 1, got ${spec.k}`);
    this.abandon(spec.pairId);
    if (spec.accumulate !== false) {
      if (this.windowsOn(spec.layer).length > 0) this.flush(spec.layer);
      else this.acc.startAccumulating(spec.layer);
    }
    this.open.set(spec.pairId, { ...spec, sum: undefined, flushed: 0, trained: 0, lossSum: 0 });
  }

  /** Record that one training step was taken (after Trainer.step) with loss `loss`. */
  afterStep(loss: number): void {
    for (const w of this.open.values()) {
      w.trained += 1;
      w.lossSum += loss;
    }
  }

  /** Close and return every window that has trained its k steps. The caller owns G and generated. */
  takeReady(): ClosedWindow[] {
    const ready = [...this.open.values()].filter((w) => w.trained >= w.k);
    return ready.map((w) => this.close(w.pairId)!);
  }

  /** Close a window now, whatever its step count (e.g. at shutdown). The caller owns G and generated. */
  close(pairId: string): ClosedWindow | undefined {
    const w = this.open.get(pairId);
    if (!w) return undefined;
    this.flush(w.layer);
    this.open.delete(pairId);
    this.releaseLayer(w.layer);
    const { sum, flushed, trained, lossSum, ...spec } = w;
    void trained;
    const G = sum ?? (tf.zeros([spec.generated.A.shape[0], spec.generated.B.shape[1]]) as tf.Tensor2D);
    return { ...spec, G, steps: flushed, meanLoss: w.trained > 0 ? lossSum / w.trained : NaN };
  }

  /** Drop a pair's window without feedback (its session ended, or its pair left the plan). */
  abandon(pairId: string): boolean {
    const w = this.open.get(pairId);
    if (!w) return false;
    // Flush first so the other windows on this layer keep their share of the running sum.
    this.flush(w.layer);
    this.open.delete(pairId);
    this.releaseLayer(w.layer);
    w.sum?.dispose();
    w.delta?.dispose();
    disposeLowRank(w.generated);
    return true;
  }

  /** Abandon every window (a disconnect, a new session, shutdown). Returns how many there were. */
  abandonAll(): number {
    const ids = [...this.open.keys()];
    for (const id of ids) this.abandon(id);
    return ids.length;
  }

  private releaseLayer(layer: string): void {
    if (this.windowsOn(layer).length === 0) this.acc.stopAccumulating(layer);
  }
}
