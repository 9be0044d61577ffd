// Bounded checkpointing: at most one write in flight. Requests that arrive while a write runs are
// merged into ONE next write, which captures the state when it starts (so it holds the latest
// state), and every merged request resolves with it. Under saturation this keeps one snapshot of
// the adapters in memory at a time, where starting a write per request queued a snapshot each.

export class CoalescingWriter<R> {
  private inFlight: Promise<R> | null = null;
  private next: Promise<R> | null = null;
  private writes = 0;

  /** `writeLatest` must capture the state synchronously when called, then write it. */
  constructor(private readonly writeLatest: () => Promise<R>) {}

  /** Resolves once a write that started at or after this call is durable (or rejects with its error). */
  request(): Promise<R> {
    if (this.next) return this.next;
    if (!this.inFlight) return this.start();
    const settled = this.inFlight.then(
      () => undefined,
      () => undefined,
    );
    this.next = settled.then(() => {
      this.next = null;
      return this.start();
    });
    return this.next;
  }

  /** Writes started so far (merged requests count once). */
  get writesStarted(): number {
    return this.writes;
  }

  /** Whether a write is running or waiting to run. */
  get busy(): boolean {
    return this.inFlight !== null || this.next !== null;
  }

  private start(): Promise<R> {
    this.writes++;
    let p: Promise<R>;
    try {
      p = this.writeLatest();
    } catch (err) {
      p = Promise.reject(err);
    }
    this.inFlight = p;
    const clear = (): void => {
      if (this.inFlight === p) this.inFlight = null;
    };
    p.then(clear, clear);
    return p;
  }
}
