// Per-device seeds. Each device of an experiment gets its own model init and batch order from the
// experiment seed and its id, so two devices with the same model spec do NOT start from the same
// weights (that would hand the aligned scenario a shared basis for free). The fleet, the device
// processes and every baseline derive seeds here, so 'alone' and 'mergenet' see the same target.
export function deviceSeed(experimentSeed: number, deviceId: string): number {
  // FNV-1a over "seed:id", folded to 31 bits (tfjs initialisers want a non-negative int).
  let h = 0x811c9dc5;
  for (const ch of `${experimentSeed}:${deviceId}`) {
    h ^= ch.codePointAt(0)!;
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) & 0x7fffffff;
}
