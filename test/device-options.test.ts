// DeviceClient's scalar options are checked with zod before anything connects.
import { describe, expect, it } from 'vitest';
import { checkDeviceOptions } from '../client/device-options.js';

const ok = { rank: 8, evalEvery: 100, seed: 0, trainer: { optimizer: 'adam', lr: 0.001, batchSize: 32 } };

describe('DeviceClient options', () => {
  it('accepts a valid set and names the field of a bad one', () => {
    expect(() => checkDeviceOptions(ok)).not.toThrow();
    expect(() => checkDeviceOptions({ ...ok, rank: 0 })).toThrow(/device options: rank: /);
    expect(() => checkDeviceOptions({ ...ok, slowdown: 0.5 })).toThrow(/device options: slowdown: /);
    expect(() => checkDeviceOptions({ ...ok, paceTimeoutMs: -1 })).toThrow(/device options: paceTimeoutMs: /);
    expect(() => checkDeviceOptions({ ...ok, maxSteps: 2.5 })).toThrow(/device options: maxSteps: /);
    expect(() => checkDeviceOptions({ ...ok, trainer: { ...ok.trainer, batchSize: 0 } })).toThrow(/device options: trainer\.batchSize: /);
    expect(() => checkDeviceOptions({ ...ok, trainer: { ...ok.trainer, optimizer: 'lbfgs' } })).toThrow(/trainer\.optimizer/);
  });
});
