// Per-device seeds. Each device of an experiment gets its own model init and batch order from the
// experiment seed and its id, so two devices with the same model spec do NOT start from the same
// weights (that would hand the aligned scenario a shared basis for free). The fleet, the device
// processes and every baseline derive seeds here, so 'alone' and 'mergenet' see the same target.
import { hash32 } from '../../coordinator/config.js';

export function deviceSeed(experimentSeed: number, deviceId: string): number {
  // folded to 31 bits: tfjs initialisers want a non-negative int
  return hash32(`${experimentSeed}:${deviceId}`) & 0x7fffffff;
}
