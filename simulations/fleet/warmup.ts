// Source warm-up: the target starts once every other device has trained `warmup` steps (or all of
// its own, if it has fewer). Shared by both fleet modes; polls the step counters they keep.
export function waitForWarmup(
  others: readonly { id: string; steps: number }[],
  warmup: number,
  lastStep: ReadonlyMap<string, number>,
  stopped: () => boolean,
): Promise<void> {
  return new Promise<void>((resolve) => {
    const tick = () => {
      if (stopped() || others.every((d) => (lastStep.get(d.id) ?? 0) >= Math.min(warmup, d.steps))) return resolve();
      setTimeout(tick, 20);
    };
    tick();
  });
}
