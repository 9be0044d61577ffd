// Waiting on a condition, never on a fixed time: poll `cond` until it holds, and fail with `what`
// if it does not within `timeoutMs` (a bound for a broken run, not a wait for a working one).
export function waitUntil(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - t0 > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}
