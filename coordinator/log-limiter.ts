// Per-key log budget. A misbehaving device can send thousands of bad messages a second; each gets
// its `reject` and is counted in the status, but logging each would flood the coordinator's log
// and cost more than the message itself. So at most `perWindow` log lines per key (device) per
// window; the rest are counted, and the next line logged for that key reports how many were
// suppressed.

export interface LogLimiterOptions {
  /** log lines allowed per key per window (default 20) */
  perWindow?: number;
  /** window length in ms (default 60 000: one minute) */
  windowMs?: number;
  /** clock (injected by tests) */
  now?: () => number;
}

interface Window {
  start: number;
  logged: number;
  suppressed: number;
}

export class LogLimiter {
  private readonly perWindow: number;
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly windows = new Map<string, Window>();
  /** lines suppressed since start, over every key */
  suppressedTotal = 0;

  constructor(opts: LogLimiterOptions = {}) {
    this.perWindow = opts.perWindow ?? 20;
    this.windowMs = opts.windowMs ?? 60_000;
    this.now = opts.now ?? Date.now;
  }

  /**
   * May a line for `key` be logged now? If yes, `suppressed` is how many lines of this key were
   * dropped since the last one logged (report it in that line); if no, the line is counted.
   */
  admit(key: string): { log: true; suppressed: number } | { log: false } {
    const now = this.now();
    let w = this.windows.get(key);
    if (!w || now - w.start >= this.windowMs) {
      const carried = w?.suppressed ?? 0;
      w = { start: now, logged: 0, suppressed: carried };
      this.windows.set(key, w);
    }
    if (w.logged >= this.perWindow) {
      w.suppressed++;
      this.suppressedTotal++;
      return { log: false };
    }
    w.logged++;
    const suppressed = w.suppressed;
    w.suppressed = 0;
    return { log: true, suppressed };
  }
}
