// Baseline 'alone': the target device trains on its own data with no pairs. Every other condition
// is measured against it, with the same init, batches and steps (local-training.ts).
import type { Experiment } from '../experiment/schema.js';
import type { ConditionRun } from '../report/types.js';
import { deviceById, loadDataFor, trainLocally, type LocalProgress } from './local-training.js';

export async function runAlone(e: Experiment, seed: number, onProgress?: (p: LocalProgress) => void): Promise<ConditionRun> {
  const device = deviceById(e, e.target);
  const data = loadDataFor(device, seed);
  const r = await trainLocally({ device, data, seed, onProgress: onProgress && ((p) => onProgress({ ...p, phase: 'target' })) });
  return {
    condition: 'alone',
    seed,
    device: device.id,
    curve: r.curve,
    finalAcc: r.finalAcc,
    bestAcc: r.bestAcc,
    bytesSent: 0,
    bytesFullWeights: 0,
    wallMs: r.wallMs,
  };
}
