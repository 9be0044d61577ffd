// The coordinator configuration of a fleet run, built from the experiment's pairs. 'noise' is the
// same pairs with sourceMode 'noise' (the coordinator replaces each source slice by noise of equal
// shape and norm), so mergenet and its control differ in nothing else.
import { randomBytes } from 'node:crypto';
import { ConfigError, defaultPairId, parseCoordinatorConfig, type CoordinatorConfig } from '../../coordinator/index.js';
import type { DeviceSpec, PairSpec } from '../experiment/schema.js';
import type { FleetPairMode } from './types.js';

/** Timing for simulations: generous, since devices share two cores with the coordinator. */
export const FLEET_TIMING = {
  cycleTimeoutMs: 120_000,
  // A source that finished its steps before the target keeps serving its last (fully trained)
  // slice; a deployment would rather bound this, a simulation compares conditions at equal steps.
  sourceMaxAgeMs: 3_600_000,
};

export function randomToken(): string {
  return randomBytes(18).toString('base64url');
}

/**
 * The coordinator's config for these devices and pairs. Throws an Error naming the experiment's
 * field (`pairs[i]…`) if the coordinator refuses a pair (e.g. an unknown adapter option).
 */
export function fleetCoordinatorConfig(
  devices: readonly DeviceSpec[],
  pairs: readonly PairSpec[],
  mode: FleetPairMode,
  tokens: ReadonlyMap<string, string>,
  run: { seed: number; probe?: { offset: number; count: number } } = { seed: 0 },
): CoordinatorConfig {
  const maxRank = Math.max(64, ...pairs.map((p) => p.rank), ...devices.map((d) => d.rank));
  const obj = {
    host: '127.0.0.1',
    port: 0,
    devices: devices.map((d) => ({ id: d.id, token: tokens.get(d.id) ?? randomToken() })),
    pairs: pairs.map((p) => ({
      id: defaultPairId(p.source, p.target),
      source: p.source,
      target: p.target,
      rank: p.rank,
      tCycle: p.tCycle,
      k: p.k,
      tau: p.tau,
      adapter: p.adapter,
      sourceMode: mode,
      feedback: p.feedback,
      align: p.align,
      refineLr: p.refineLr,
      gate: p.gate,
      join: p.join,
      channel: p.channel,
      distill: p.distill,
    })),
    // The probe split lies in this run's seeded order, like every device's own splits.
    probes: run.probe ? [{ dataset: 'mnist', seed: run.seed, offset: run.probe.offset, count: run.probe.count }] : [],
    limits: { maxRank },
    timing: FLEET_TIMING,
    statusEveryMs: 0,
  };
  try {
    return parseCoordinatorConfig(obj, { source: '(built from the experiment)' });
  } catch (err) {
    if (err instanceof ConfigError) {
      throw new Error(`the coordinator refuses the experiment's pairs:\n  ${err.issues.join('\n  ')}`);
    }
    throw err;
  }
}
