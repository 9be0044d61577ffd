// Held-out feedback (plan `feedback: heldout`): G is taken on the val split instead of the
// training batches, so the coordinator's adapter learns from examples the device never trains on.
// Before each step, the gradient of the loss on one val batch at the current weights (W_eff, with
// the branch in) is added to every open held-out window of that slot. No training step is taken
// on val data. Transport-free: the sums are handed to the feedback of the window they belong to.
import * as tf from '@tensorflow/tfjs';
import { batchIterator, splitTensors, type Batch, type Split } from '../data/dataset.js';
import type { Trainer } from '../trainer.js';

export interface HeldoutSum {
  layer: string;
  /** G summed over the val batches since the window opened; undefined before the first */
  G: tf.Tensor2D | undefined;
  steps: number;
}

export class HeldoutFeedback {
  /** pairId → its window's held-out sum */
  private readonly sums = new Map<string, HeldoutSum>();
  private batches: Iterator<Batch> | undefined;

  constructor(
    private readonly trainer: Trainer,
    private readonly val: Split,
    private readonly batchSize: number,
    private readonly seed: number,
  ) {}

  private whole: Batch | undefined;

  /** The loss on the whole held-out split at the current weights (inference mode, no step). */
  loss(): number {
    this.whole ??= splitTensors(this.val);
    return this.trainer.evaluate(this.whole.xs, this.whole.ys).loss;
  }

  /** Without val examples there is nothing to take G on. */
  get available(): boolean {
    return this.val.n > 0;
  }

  /** Start (or restart) the sum of a pair's window on `layer`. */
  open(pairId: string, layer: string): void {
    this.drop(pairId);
    this.sums.set(pairId, { layer, G: undefined, steps: 0 });
  }

  /** The pair's sum, now owned by the caller (dispose its G), or undefined if it has none. */
  take(pairId: string): HeldoutSum | undefined {
    const h = this.sums.get(pairId);
    this.sums.delete(pairId);
    return h;
  }

  drop(pairId: string): void {
    this.sums.get(pairId)?.G?.dispose();
    this.sums.delete(pairId);
  }

  dropAll(): void {
    for (const id of [...this.sums.keys()]) this.drop(id);
    if (this.whole) tf.dispose([this.whole.xs, this.whole.ys]);
    this.whole = undefined;
  }

  /** One val batch's gradient into every open sum; sums of windows no longer open go first. */
  accumulate(windows: { has(pairId: string): boolean }): void {
    if (this.sums.size === 0) return;
    for (const id of [...this.sums.keys()]) if (!windows.has(id)) this.drop(id);
    const layers = new Set([...this.sums.values()].map((h) => h.layer));
    if (layers.size === 0) return;
    this.batches ??= batchIterator(this.val, this.batchSize, (this.seed + 7919) >>> 0, { epochs: Infinity });
    const next = this.batches.next();
    if (next.done) throw new Error('the held-out batch stream ended');
    const { xs, ys } = next.value;
    try {
      for (const layer of layers) {
        const g = this.trainer.gradientOn(xs, ys, layer);
        try {
          for (const h of this.sums.values()) {
            if (h.layer !== layer) continue;
            const prev = h.G;
            h.G = (prev ? tf.add(prev, g) : tf.clone(g)) as tf.Tensor2D;
            prev?.dispose();
            h.steps += 1;
          }
        } finally {
          g.dispose();
        }
      }
    } finally {
      xs.dispose();
      ys.dispose();
    }
  }
}
