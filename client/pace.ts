// How the training loop lets the rest of the process run between steps. No Node built-ins, so the
// client core runs in a browser too; tests replace this module to record the sleeps.

/** Resolve after `ms` milliseconds (a straggler's slowdown sleep). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/**
 * Resolve once pending I/O callbacks have run. setImmediate where the runtime has it: setTimeout(0)
 * is clamped to ≥ 1 ms in Node, which would cost a fast device a large share of its step time.
 */
export function yieldToEventLoop(): Promise<void> {
  const immediate = (globalThis as { setImmediate?: (cb: () => void) => unknown }).setImmediate;
  return new Promise((resolve) => (immediate ? immediate(resolve) : setTimeout(resolve, 0)));
}
