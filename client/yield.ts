// Timing helpers that work in Node and in a browser alike (the device core imports no Node
// built-in: test/browser-core.test.ts). `performance` is a global in both.

/** Resolve after `ms` milliseconds (node:timers/promises' setTimeout, without the import). */
export function sleep(ms: number): Promise<void> {
  return new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

type Immediate = (fn: () => void) => unknown;
const setImmediateFn = (globalThis as { setImmediate?: Immediate }).setImmediate;
let channel: { port1: { onmessage: unknown }; port2: { postMessage(v: unknown): void } } | undefined;
const pending: (() => void)[] = [];

/**
 * Let pending I/O callbacks run, then continue: setImmediate in Node; in a browser a
 * MessageChannel message (setTimeout(0) is clamped to ≥ 4 ms once nested, which would cap a
 * training loop that yields every step at 250 steps/s).
 */
export function yieldToEventLoop(): Promise<void> {
  if (setImmediateFn) return new Promise<void>((r) => setImmediateFn(r));
  const MC = (globalThis as unknown as { MessageChannel?: new () => NonNullable<typeof channel> }).MessageChannel;
  if (!MC) return sleep(0);
  if (!channel) {
    channel = new MC();
    channel.port1.onmessage = () => pending.shift()?.();
  }
  return new Promise<void>((r) => {
    pending.push(r);
    channel!.port2.postMessage(0);
  });
}
