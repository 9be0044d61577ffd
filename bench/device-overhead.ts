// The device's own cost of taking part in MergeNet, per cycle of one target pair: take a slice of
// the slot, apply a transfer as a knowledge branch, project the accumulated gradient into feedback,
// as a share of the local training those T_cycle steps cost. Measured on the zoo's MNIST MLP and CNN
// with their default sizes, on the slot dense_0 (the largest of both), from random batches.
// A device warm-starts each slice of a slot from its previous one (SliceHistory), so the slice is
// timed as the device pays it: along a training trajectory, one slice after every T_cycle real
// steps, cold restarts and guard fallbacks included. Repeated slices of one W would flatter it.
import * as tf from '@tensorflow/tfjs';
import { projectFeedback } from '../client/target/feedback.js';
import { KnowledgeBranches } from '../client/knowledge-branch.js';
import { buildModel, type ModelSpec } from '../client/models/mnist-models.js';
import { CNN_DEFAULTS, MLP_DEFAULT_HIDDEN } from '../client/models/registry.js';
import { readSlot } from '../client/slot.js';
import { Trainer } from '../client/trainer.js';
import { lowRankSlice, SliceHistory } from '../shared/math/slice.js';
import { disposeLowRank } from '../shared/math/low-rank.js';

export interface OverheadOptions {
  tCycle: number;
  rank: number;
  batchSize: number;
  warmup: number;
  repeats: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Warm-up runs of every timed piece, at least: a device repeats each of them every cycle for as long
 * as it runs, so its steady, JIT-compiled cost is what counts. With 2 warm-ups the first model
 * measured also paid V8's compilation of the slice's plain-array kernels (2–4× the steady time;
 * on a loaded machine the optimising compiler may need a few dozen calls).
 */
const MIN_WARMUP = 50;

/** Median ms of fn over `repeats` runs after `warmup` (≥ MIN_WARMUP); interleaving is the caller's business. */
function timeMs(fn: () => void, warmup: number, repeats: number): number {
  for (let i = 0; i < Math.max(warmup, MIN_WARMUP); i++) fn();
  const ts: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return +median(ts).toFixed(3);
}

/**
 * Slices along a training trajectory, as a device takes them: T_cycle real steps, then one slice
 * through the slot's SliceHistory; MIN_WARMUP cycles untimed, then ≥ 4·coldEvery timed. Each timed
 * slice is classed by whether it ran a cold sketch (a scheduled check, warm + cold, or a guard
 * fallback) or not; the
 * amortised figure weights the median of each class by its count, robust to a stray GC pause.
 */
function sliceTrajectory(model: tf.LayersModel, trainer: Trainer, xs: tf.Tensor, ys: tf.Tensor, layer: string, o: OverheadOptions) {
  const history = new SliceHistory();
  const warm: number[] = [];
  const cold: number[] = [];
  const timed = Math.max(o.repeats, 4 * history.coldEvery);
  const warmup = Math.max(o.warmup, MIN_WARMUP);
  for (let c = 0; c < warmup + timed; c++) {
    for (let s = 0; s < o.tCycle; s++) trainer.step(xs, ys);
    const t0 = performance.now();
    const w = readSlot(model, layer);
    const f = lowRankSlice(w, o.rank, { seed: c, history });
    f.B.dataSync();
    w.dispose();
    disposeLowRank(f);
    const dt = performance.now() - t0;
    if (c >= warmup) (history.lastCold ? cold : warm).push(dt);
  }
  const warmMs = warm.length ? median(warm) : NaN;
  const coldMs = cold.length ? median(cold) : NaN;
  const amortizedMs = ((warm.length ? warm.length * warmMs : 0) + (cold.length ? cold.length * coldMs : 0)) / timed;
  return { warmMs: +warmMs.toFixed(3), coldMs: +coldMs.toFixed(3), amortizedMs: +amortizedMs.toFixed(3), counts: { ...history.counts } };
}

function measureModel(name: string, spec: ModelSpec, o: OverheadOptions) {
  const layer = 'dense_0';
  const model = buildModel(spec, 1);
  const trainer = new Trainer(model, { optimizer: 'adam', lr: 1e-3 });
  const inputSize = spec.inputShape.reduce((a, b) => a * b, 1);
  const xs = tf.randomUniform([o.batchSize, ...spec.inputShape], 0, 1, 'float32', 1);
  const ys = tf.oneHot(tf.randomUniform([o.batchSize], 0, spec.classes, 'int32', 2) as tf.Tensor1D, spec.classes);
  const stepMs = timeMs(() => void trainer.step(xs, ys), o.warmup, o.repeats);

  const branches = new KnowledgeBranches(model);
  const W = readSlot(model, layer);
  const [m, n] = W.shape;
  const current = lowRankSlice(W, o.rank);
  // Cold: every slice from a fresh Gaussian sketch (what a slice without history costs).
  const sliceColdMs = timeMs(() => {
    const w = readSlot(model, layer);
    const f = lowRankSlice(w, o.rank);
    f.B.dataSync();
    w.dispose();
    disposeLowRank(f);
  }, o.warmup, o.repeats);
  const traj = sliceTrajectory(model, trainer, xs, ys, layer, o);
  const sliceMs = traj.amortizedMs;
  // A transfer: the adapter's output, here the slice slightly moved.
  const generated = tf.tidy(() => ({ A: tf.add(current.A, tf.randomNormal(current.A.shape, 0, 1e-2, 'float32', 3)) as tf.Tensor2D, B: tf.clone(current.B) }));
  // wasm, cpu and tensorflow run every op when it is called; a backend that defers work (webgl)
  // needs a read-back to finish the update. Reading the slot back unconditionally, as this did,
  // measured the read: on wasm even a 1×1 slice of the kernel reads all of it into a fresh 200 KB
  // array, 0.5 ms on the 1 Dec EPYC VM against ~0.1 ms for set() itself, which a device never does.
  const eager = ['wasm', 'cpu', 'tensorflow'].includes(tf.getBackend());
  const applyMs = timeMs(() => {
    branches.set('p', layer, generated, current, 0.5);
    if (!eager) {
      const w = readSlot(model, layer);
      w.dataSync();
      w.dispose();
    }
  }, o.warmup, o.repeats);
  const G = tf.randomNormal([m, n], 0, 1e-3, 'float32', 4) as tf.Tensor2D;
  const feedbackMs = timeMs(() => {
    const fb = projectFeedback(G, generated, 0.9);
    fb.gB.dataSync();
    fb.gA.dispose();
    fb.gB.dispose();
  }, o.warmup, o.repeats);
  const perCycleMs = sliceMs + applyMs + feedbackMs;
  const trainingMs = o.tCycle * stepMs;
  tf.dispose([xs, ys, W, G, generated.A, generated.B]);
  disposeLowRank(current);
  trainer.dispose?.();
  model.dispose();
  return {
    model: name, slot: layer, slotShape: [m, n], inputSize, rank: o.rank, batchSize: o.batchSize, tCycle: o.tCycle,
    stepMs, sliceMs, sliceColdMs, sliceWarmMs: traj.warmMs, sliceRestartMs: traj.coldMs, sliceCounts: traj.counts, applyMs, feedbackMs, perCycleMs: +perCycleMs.toFixed(3),
    shareOfTraining: +(perCycleMs / trainingMs).toFixed(3),
  };
}

/** Device overhead at T_cycle = o.tCycle for the zoo's MNIST MLP and CNN (default sizes). */
export function measureDeviceOverhead(o: OverheadOptions) {
  return [
    measureModel('mlp', { kind: 'mlp', inputShape: [784], hidden: MLP_DEFAULT_HIDDEN, classes: 10 }, o),
    measureModel('cnn', { kind: 'cnn', inputShape: [28, 28, 1], ...CNN_DEFAULTS, classes: 10 }, o),
  ];
}
