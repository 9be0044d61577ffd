// Baseline 'copy': the copy oracle. The source device trains alone for its own steps; then the
// target's slot is initialised from the source's trained slot and the target trains alone for its
// steps. Where the two slots share an axis with the same meaning (the same input pixels, the same
// labels), this shows how much knowledge there is to take; MergeNet's share is measured against
// it (docs/DESIGN.md §7 "What the measurements say").
//
// With a rank r, only the rank-r part of the source's slot is copied: A·B of its slice
// (lowRankSlice), i.e. what one MergeNet slice carries.
import * as tf from '@tensorflow/tfjs';
import { buildModelFor } from '../../client/models/registry.js';
import { readSlot, slotInfo, writeSlot, type SlotInfo } from '../../client/slot.js';
import { lowRankSlice, sliceFloats } from '../../shared/math/slice.js';
import { disposeLowRank } from '../../shared/math/low-rank.js';
import type { DeviceSpec, Experiment } from '../experiment/schema.js';
import type { ZooDeviceData } from '../../client/data/registry.js';
import type { ConditionRun } from '../report/types.js';
import { deviceById, loadDataFor, trainLocally, type LocalProgress } from './local-training.js';
import { inferAlignment, passThroughStart, type Alignment } from '../../coordinator/adapter/pass-through.js';

/** 'copy' for the copy section's own setting, 'copy:rank<r>' for each extra rank of copy.ranks. */
export function copyConditionName(rank: number | undefined, e: Experiment): string {
  return rank === undefined || rank === e.copy?.rank ? 'copy' : `copy:rank${rank}`;
}

/**
 * Throws a readable error unless a source slot can initialise the target slot (at this rank).
 * Slots of different shapes that share one axis (equal rows or columns) can, at a rank: the
 * target's own rank-r slice is then swapped for the source's, mapped onto the target's shape as
 * the pair's pass-through start maps it (coordinator/adapter/pass-through.ts). Returns the
 * alignment used.
 */
export function checkCopyShapes(source: { device: string; slot: SlotInfo }, target: { device: string; slot: SlotInfo }, rank?: number): Alignment {
  const [m, n] = target.slot.shape;
  const [ms, ns] = source.slot.shape;
  const align = inferAlignment([m, n], [ms, ns]);
  if ((align === 'rows' || align === 'cols') && rank !== undefined) {
    if (!Number.isInteger(rank) || rank < 1 || rank > Math.min(m, n, ms, ns)) {
      throw new Error(`copy: rank ${rank} is out of range for a [${m}×${n}] slot and a [${ms}×${ns}] source slot`);
    }
    return align;
  }
  if (m !== ms || n !== ns) {
    throw new Error(
      `copy: source slot "${source.slot.layer}" of "${source.device}" is [${ms}×${ns}] but target slot "${target.slot.layer}" of ` +
        `"${target.device}" is [${m}×${n}]; the copy oracle needs two slots of the same shape whose axes mean the same ` +
        '(the same input pixels, or the same labels)',
    );
  }
  if (rank !== undefined && (!Number.isInteger(rank) || rank < 1 || rank > Math.min(m, n))) {
    throw new Error(`copy: rank ${rank} is out of range for a [${m}×${n}] slot (1..${Math.min(m, n)})`);
  }
  return 'both';
}

/**
 * The cross-shape copy: W_t − A_tB_t + A′B′, where (A′, B′) is the source's rank-r slice mapped onto
 * the target's shape along the shared axis. The caller owns the result.
 */
export function swappedSlot(targetW: tf.Tensor2D, sourceW: tf.Tensor2D, rank: number, align: Alignment): tf.Tensor2D {
  const t = lowRankSlice(targetW, rank);
  const src = lowRankSlice(sourceW, rank);
  const start = passThroughStart(align, t, src);
  try {
    return tf.tidy(() => tf.add(tf.sub(targetW, tf.matMul(t.A, t.B)), tf.matMul(start.A, start.B)) as tf.Tensor2D);
  } finally {
    disposeLowRank(t);
    disposeLowRank(src);
    disposeLowRank(start);
  }
}

/** What the target's slot starts from: W itself, or A·B of its rank-r slice. The caller owns it. */
export function copiedSlot(W: tf.Tensor2D, rank?: number): tf.Tensor2D {
  if (rank === undefined) return W.clone();
  const f = lowRankSlice(W, rank);
  try {
    return tf.matMul(f.A, f.B);
  } finally {
    disposeLowRank(f);
  }
}

export interface CopyInspect {
  /** The source's trained slot and the target's slot right after the copy, before step 1. */
  onCopy?: (sourceSlot: Float32Array, targetSlotAtStart: Float32Array) => void;
}

interface TrainedSource {
  values: Float32Array;
  shape: [number, number];
  finalAcc: number;
  wallMs: number;
}

/**
 * The source's trained slot per (experiment, seed, source, slot). Training is deterministic, so
 * the whole copy and its rank-r variants share one source run instead of repeating it; a few
 * entries suffice, since an experiment runs a seed's conditions together.
 */
const trainedSources = new Map<string, TrainedSource>();
const TRAINED_SOURCES_KEPT = 4;

async function trainedSourceSlot(
  e: Experiment,
  seed: number,
  device: DeviceSpec,
  data: ZooDeviceData,
  slot: string,
  onProgress?: (p: LocalProgress) => void,
): Promise<TrainedSource & { reused: boolean }> {
  const key = JSON.stringify([e.name, seed, device, slot]);
  const hit = trainedSources.get(key);
  if (hit) return { ...hit, reused: true };
  const run = await trainLocally({ device, data, seed, keepModel: true, onProgress: onProgress && ((p) => onProgress({ ...p, phase: 'source' })) });
  const W = readSlot(run.model!, slot);
  run.model!.dispose();
  const entry: TrainedSource = { values: W.dataSync().slice() as Float32Array, shape: W.shape as [number, number], finalAcc: run.finalAcc, wallMs: run.wallMs };
  W.dispose();
  trainedSources.set(key, entry);
  if (trainedSources.size > TRAINED_SOURCES_KEPT) trainedSources.delete(trainedSources.keys().next().value!);
  return { ...entry, reused: false };
}

export async function runCopy(
  e: Experiment,
  seed: number,
  onProgress?: (p: LocalProgress) => void,
  /** Default: copy.rank (undefined: the whole slot). */
  rank: number | undefined = e.copy?.rank,
  inspect?: CopyInspect,
): Promise<ConditionRun> {
  if (!e.copy) throw new Error(`experiment "${e.name}": the copy baseline needs a \`copy\` section (sourceDevice, sourceSlot, targetSlot)`);
  const t0 = performance.now();
  const { sourceDevice: sourceId, sourceSlot, targetSlot } = e.copy;
  const targetDevice = deviceById(e, e.target);
  const sourceDevice = deviceById(e, sourceId);
  const targetData = loadDataFor(targetDevice, seed);
  const sourceData = loadDataFor(sourceDevice, seed);

  // Check names and shapes on untrained builds, before any training time is spent.
  const sProbe = buildModelFor(sourceDevice.model, sourceData, seed);
  const tProbe = buildModelFor(targetDevice.model, targetData, seed);
  let targetShape: [number, number];
  let align: Alignment;
  try {
    const sInfo = slotInfo(sProbe, sourceSlot);
    const tInfo = slotInfo(tProbe, targetSlot);
    align = checkCopyShapes({ device: sourceId, slot: sInfo }, { device: e.target, slot: tInfo }, rank);
    targetShape = tInfo.shape;
  } finally {
    sProbe.dispose();
    tProbe.dispose();
  }

  const source = await trainedSourceSlot(e, seed, sourceDevice, sourceData, sourceSlot, onProgress);
  const sourceValues = source.values;
  let init: tf.Tensor2D | undefined;
  if (align === 'both') {
    const W = tf.tensor2d(source.values, source.shape);
    init = copiedSlot(W, rank);
    W.dispose();
  }
  try {
    const r = await trainLocally({
      device: targetDevice,
      data: targetData,
      seed,
      init: (model) => {
        if (!init) {
          // Different shapes: swap the target's own top slice for the mapped source slice.
          const own = readSlot(model, targetSlot);
          const src = tf.tensor2d(source.values, source.shape);
          init = swappedSlot(own, src, rank!, align);
          tf.dispose([own, src]);
        }
        writeSlot(model, targetSlot, init);
        if (inspect?.onCopy) {
          const now = readSlot(model, targetSlot);
          inspect.onCopy(sourceValues, now.dataSync().slice() as Float32Array);
          now.dispose();
        }
      },
      onProgress: onProgress && ((p) => onProgress({ ...p, phase: 'target' })),
    });
    const [m, n] = targetShape;
    return {
      condition: copyConditionName(rank, e),
      seed,
      device: e.target,
      curve: r.curve,
      finalAcc: r.finalAcc,
      bestAcc: r.bestAcc,
      // one transfer of the slot (or of its slice), once
      bytesSent: 4 * (rank === undefined ? m * n : sliceFloats(source.shape[0], source.shape[1], rank)),
      bytesFullWeights: 4 * m * n,
      // the condition's cost: the source's training counts even when its slot was reused
      wallMs: Math.round(performance.now() - t0 + (source.reused ? source.wallMs : 0)),
      extra: { ...(rank !== undefined ? { rank } : {}), sourceAcc: source.finalAcc, sourceMs: source.wallMs, targetMs: r.wallMs },
    };
  } finally {
    init?.dispose();
  }
}
