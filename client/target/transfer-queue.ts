// Transfers received, waiting for the next gap between steps: socket callbacks only queue, the
// training loop applies (nothing touches the model from a socket callback).

export interface QueuedTransfer {
  session: string;
  pairId: string;
  cycleId: number;
  sliceId: number;
  slot: string;
  adapterStep: number;
  /** the pair's trust gate for this transfer */
  gate: number;
  A: { values: Float32Array; shape: number[] };
  B: { values: Float32Array; shape: number[] };
}

export class TransferQueue {
  private items: QueuedTransfer[] = [];

  push(t: QueuedTransfer): void {
    // A newer transfer of the same pair supersedes one that was not applied yet.
    this.items = this.items.filter((x) => x.pairId !== t.pairId);
    this.items.push(t);
  }

  /** Everything queued, oldest first; the queue is emptied. */
  drain(): QueuedTransfer[] {
    const out = this.items;
    this.items = [];
    return out;
  }

  clear(): number {
    const n = this.items.length;
    this.items = [];
    return n;
  }

  get size(): number {
    return this.items.length;
  }
}
