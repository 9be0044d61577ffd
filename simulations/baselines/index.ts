// The baselines that need no network, by name: 'alone', 'fedavg', 'distill', 'copy' (and its rank
// variants 'copy:rank<r>'). 'mergenet' and 'noise' need the coordinator and run in the fleet.
import type * as tf from '@tensorflow/tfjs';
import { modelDatasetMismatch, buildModelFor } from '../../client/models/registry.js';
import { slotInfo } from '../../client/slot.js';
import { isFleetCondition, type Experiment } from '../experiment/schema.js';
import type { ConditionRun } from '../report/types.js';
import { runAlone } from './alone.js';
import { checkCopyShapes, copyConditionName, runCopy } from './copy.js';
import { checkTeacherFits, runDistill } from './distill.js';
import { checkSameArchitecture, fedavgDevices, runFedAvg } from './fedavg.js';
import { deviceById, loadDataFor, type LocalProgress } from './local-training.js';

export type { LocalProgress } from './local-training.js';
export { trainLocally } from './local-training.js';

export const LOCAL_BASELINES = ['alone', 'fedavg', 'distill', 'copy'] as const;
export type LocalBaseline = (typeof LOCAL_BASELINES)[number];

const COPY_RANK = /^copy:rank([1-9][0-9]*)$/;

/** True for conditions that runBaseline runs (no coordinator needed). */
export function isLocalCondition(name: string): boolean {
  return (LOCAL_BASELINES as readonly string[]).includes(name) || COPY_RANK.test(name);
}

/**
 * Every condition an experiment asks for, in the order of its `baselines`, with 'copy' expanded
 * into 'copy' plus one 'copy:rank<r>' per copy.ranks entry.
 */
export function experimentConditions(e: Experiment): string[] {
  const out: string[] = [];
  for (const b of e.baselines) {
    if (b === 'copy' && e.copy) {
      out.push('copy');
      for (const r of e.copy.ranks) out.push(copyConditionName(r, e));
    } else out.push(b);
  }
  return [...new Set(out)];
}

/** Run one network-free condition of the experiment for one seed. */
export async function runBaseline(
  name: string,
  e: Experiment,
  seed: number,
  onProgress?: (p: LocalProgress) => void,
): Promise<ConditionRun> {
  switch (name) {
    case 'alone':
      return runAlone(e, seed, onProgress);
    case 'fedavg':
      return runFedAvg(e, seed, onProgress);
    case 'distill':
      return runDistill(e, seed, onProgress);
    case 'copy':
      return runCopy(e, seed, onProgress);
  }
  const m = COPY_RANK.exec(name);
  if (m) return runCopy(e, seed, onProgress, Number(m[1]));
  if (isFleetCondition(name)) {
    throw new Error(`baseline "${name}" needs the coordinator and devices: run it with the fleet runner, not runBaseline`);
  }
  throw new Error(`unknown baseline "${name}": expected one of ${LOCAL_BASELINES.join(', ')} or copy:rank<r>`);
}

/**
 * Check, before anything trains, that the experiment's devices and conditions can run: every
 * model reads its dataset, every pair's slots exist and take its rank, and the fedavg, distill and
 * copy requirements hold. Builds untrained models only. Throws one Error listing every problem.
 */
export function preflight(e: Experiment, seed = e.seeds[0]): void {
  const problems: string[] = [];
  for (const [i, d] of e.devices.entries()) {
    const why = modelDatasetMismatch(d.model, d.dataset);
    if (why) problems.push(`devices[${i}] ("${d.id}"): ${why}`);
  }
  if (problems.length) throw new Error(`experiment "${e.name}" cannot run:\n  ${problems.join('\n  ')}`);

  const data = new Map(e.devices.map((d) => [d.id, loadDataFor(d, seed)]));
  const models = new Map<string, tf.LayersModel>();
  const model = (id: string) => {
    let m = models.get(id);
    if (!m) {
      m = buildModelFor(deviceById(e, id).model, data.get(id)!, seed);
      models.set(id, m);
    }
    return m;
  };
  const attempt = (what: string, fn: () => void) => {
    try {
      fn();
    } catch (err) {
      problems.push(`${what}: ${(err as Error).message}`);
    }
  };
  try {
    e.pairs.forEach((p, i) => {
      attempt(`pairs[${i}]`, () => {
        for (const end of ['source', 'target'] as const) {
          const info = slotInfo(model(p[end].device), p[end].slot);
          const k = Math.min(...info.shape);
          if (p.rank > k) {
            throw new Error(`rank ${p.rank} exceeds min(m, n) = ${k} of ${end} slot "${p[end].slot}" [${info.shape.join('×')}] on "${p[end].device}"`);
          }
        }
      });
    });
    const conditions = experimentConditions(e);
    if (conditions.includes('fedavg')) {
      attempt('fedavg', () => {
        const devs = fedavgDevices(e);
        checkSameArchitecture(devs, devs.map((d) => model(d.id)));
      });
    }
    if (conditions.includes('distill') && e.distill) {
      const { teacher } = e.distill;
      attempt('distill', () => checkTeacherFits(deviceById(e, teacher), model(teacher), data.get(teacher)!, deviceById(e, e.target), data.get(e.target)!));
    }
    if (e.copy) {
      const c = e.copy;
      for (const cond of conditions.filter((x) => x === 'copy' || COPY_RANK.test(x))) {
        const rank = cond === 'copy' ? c.rank : Number(COPY_RANK.exec(cond)![1]);
        attempt(cond, () =>
          checkCopyShapes(
            { device: c.sourceDevice, slot: slotInfo(model(c.sourceDevice), c.sourceSlot) },
            { device: e.target, slot: slotInfo(model(e.target), c.targetSlot) },
            rank,
          ),
        );
      }
    }
  } finally {
    for (const m of models.values()) m.dispose();
  }
  if (problems.length) throw new Error(`experiment "${e.name}" cannot run:\n  ${problems.join('\n  ')}`);
}
