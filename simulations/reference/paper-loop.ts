// The paper's loop in one process, with no network: a source and a target train step by step and,
// every T_cycle steps, the adapter transfers into the target through its knowledge branch
// (docs/DESIGN.md §1 and §9). It runs the same math modules the coordinator and the device run, and
// the project's one training loop (client/training-loop.ts; a round is one cycle), so it proves the
// math before any socket is involved, and its 'alone' is the baselines' and the fleet's 'alone'.
//
// The transfer is one-way, so the source's trajectory does not depend on the condition: it is
// trained once per seed and its slices at every cycle are replayed into each condition. That
// halves the run time without changing what any condition sees.
import * as tf from '@tensorflow/tfjs';
import { AdapterWithOptimizer } from '../../coordinator/adapter/update.js';
import { defaultAdapterConfig, type AdapterConfig } from '../../coordinator/adapter/config.js';
import { noiseLikeLowRank, noiseSeed } from '../../coordinator/noise.js';
import { batchIterator, type DeviceData, type Batch } from '../../client/data/dataset.js';
import type { CurvePoint } from '../../client/curve-recorder.js';
import { projectFeedback } from '../../client/target/feedback.js';
import { KnowledgeBranches } from '../../client/knowledge-branch.js';
import { readSlot, slotInfo } from '../../client/slot.js';
import type { OptimizerName } from '../../client/trainer.js';
import { TrainingLoop, type TrainingHooks } from '../../client/training-loop.js';
import { lowRankSlice } from '../../shared/math/slice.js';
import { disposeLowRank, type LowRank } from '../../shared/math/low-rank.js';

export type ReferenceCondition = 'alone' | 'mergenet' | 'noise';

export interface DeviceRecipe {
  build: (seed: number) => tf.LayersModel;
  data: DeviceData;
  optimizer: OptimizerName;
  lr: number;
  batchSize: number;
}

export interface LoopConfig {
  steps: number;
  rank: number;
  tCycle: number;
  k: number;
  tau: number;
  sourceSlot: string;
  targetSlot: string;
  adapter: Partial<Omit<AdapterConfig, 'rank'>>;
  evalEvery: number;
  /** 'train': G from the target's training batches; 'heldout' (docs/DESIGN.md §5): from its val split. */
  feedback: 'train' | 'heldout';
  /** source steps taken before the target starts (a source trained for a while first). */
  sourceWarmup: number;
}

export type { CurvePoint };

export interface ConditionOutcome {
  condition: ReferenceCondition;
  curve: CurvePoint[];
  finalAcc: number;
  bestAcc: number;
  cycles: number;
  /** mean ‖K‖/‖W‖ over transfers, and how often the cap bound */
  meanBranchRatio: number;
  capBoundFraction: number;
  wallMs: number;
}

export interface SourceTrace {
  /** source slice at each cycle step of the target, keyed by target step */
  slices: Map<number, LowRank>;
  finalAcc: number;
  wallMs: number;
}

function* endless(split: DeviceData['train'], batchSize: number, seed: number): Generator<Batch> {
  yield* batchIterator(split, batchSize, seed, { epochs: Infinity });
}

/** The project's one training loop on a recipe: its batches, its trainer, test points every evalEvery and at the end. */
function loopFor(recipe: DeviceRecipe, model: tf.LayersModel, seed: number, steps: number, evalEvery: number, hooks: TrainingHooks, roundSteps?: number): TrainingLoop {
  return new TrainingLoop({
    model,
    train: recipe.data.train,
    test: recipe.data.test,
    optimizer: recipe.optimizer,
    lr: recipe.lr,
    batchSize: recipe.batchSize,
    seed,
    steps,
    evalEvery,
    evalAtEnd: true,
    roundSteps,
    hooks,
  });
}

/** Train the source and keep its slice at every cycle step of the target's clock. */
export function traceSource(recipe: DeviceRecipe, cfg: LoopConfig, seed: number, onStep?: () => void): SourceTrace {
  const t0 = Date.now();
  const model = recipe.build(seed);
  const slices = new Map<number, LowRank>();
  try {
    slotInfo(model, cfg.sourceSlot); // fails early with the list of slots if the name is wrong
    const loop = loopFor(recipe, model, seed, cfg.sourceWarmup + cfg.steps, 0, {
      onStepBegin: (s) => {
        const targetStep = s - cfg.sourceWarmup;
        if (targetStep > 0 && targetStep % cfg.tCycle === 0) {
          const W = readSlot(model, cfg.sourceSlot);
          slices.set(targetStep, lowRankSlice(W, cfg.rank, { seed: targetStep }));
          W.dispose();
        }
      },
      onStepEnd: () => onStep?.(),
    });
    try {
      while (!loop.finished) loop.trainStep();
      return { slices, finalAcc: loop.summary().finalAcc, wallMs: Date.now() - t0 };
    } finally {
      loop.close();
    }
  } finally {
    model.dispose();
  }
}

export function disposeTrace(trace: SourceTrace): void {
  for (const s of trace.slices.values()) disposeLowRank(s);
  trace.slices.clear();
}

/** Train the target under one condition. Same init, same batches and same steps in every condition. */
export function runTarget(
  condition: ReferenceCondition,
  recipe: DeviceRecipe,
  trace: SourceTrace,
  cfg: LoopConfig,
  seed: number,
  onStep?: () => void,
  /** called with the trained target model just before it is disposed (tests compare weights) */
  onFinish?: (model: tf.LayersModel) => void,
): ConditionOutcome {
  if (cfg.k > cfg.tCycle) throw new Error(`k (${cfg.k}) must not exceed T_cycle (${cfg.tCycle})`);
  const t0 = Date.now();
  const model = recipe.build(seed);
  slotInfo(model, cfg.targetSlot);
  const branches = new KnowledgeBranches(model);
  const adapter = condition === 'alone' ? undefined : AdapterWithOptimizer.create(defaultAdapterConfig(cfg.rank, { seed, ...cfg.adapter }));
  const heldout = cfg.feedback === 'heldout' ? endless(recipe.data.val, recipe.batchSize, seed + 7919) : undefined;

  interface Window { input: { target: LowRank; source: LowRank }; generated: LowRank; scale: number; endStep: number; G?: tf.Tensor2D }
  let win: Window | undefined;
  let cycles = 0;
  let ratioSum = 0;
  let capBound = 0;

  const closeWindow = (w: Window, G: tf.Tensor2D) => {
    const { gA, gB } = projectFeedback(G, w.generated, w.scale);
    adapter!.update(w.input, { gA, gB });
    tf.dispose([gA, gB, G]);
    disposeLowRank(w.input.target);
    disposeLowRank(w.input.source);
    disposeLowRank(w.generated);
  };

  // A round is one cycle: the transfer at its start, feedback k steps later.
  const loop: TrainingLoop = loopFor(recipe, model, seed, cfg.steps, cfg.evalEvery, {
    onRoundBegin: (_round, step) => {
      const src = adapter && step > 0 ? trace.slices.get(step) : undefined;
      if (!adapter || !src) return;
      const W = branches.weight(cfg.targetSlot);
      const target = lowRankSlice(W, cfg.rank, { seed: step });
      W.dispose();
      const source: LowRank =
        condition === 'noise' ? noiseLikeLowRank(src, noiseSeed(seed, step)) : { A: src.A.clone(), B: src.B.clone() };
      const generated = adapter.forward(target, source);
      const r = branches.set('pair', cfg.targetSlot, generated, target, cfg.tau);
      ratioSum += r.weightNorm > 0 ? r.branchNorm / r.weightNorm : 0;
      if (r.scale < 1) capBound++;
      cycles++;
      win = { input: { target, source }, generated, scale: r.scale, endStep: step + cfg.k };
      if (!heldout) loop.trainer.startAccumulating(cfg.targetSlot);
    },
    onStepBegin: () => {
      if (!win || !heldout) return;
      // held-out feedback: the gradient of the loss on val data at the weights being trained
      const hb = heldout.next().value as Batch;
      const g = loop.trainer.gradientOn(hb.xs, hb.ys, cfg.targetSlot);
      const prev = win.G;
      win.G = prev ? (tf.add(prev, g) as tf.Tensor2D) : g;
      if (prev) { prev.dispose(); g.dispose(); }
      tf.dispose([hb.xs, hb.ys]);
    },
    onStepEnd: (step) => {
      if (win && step === win.endStep) {
        let G: tf.Tensor2D;
        if (heldout) G = win.G!;
        else {
          G = loop.trainer.takeAccumulated(cfg.targetSlot).G;
          loop.trainer.stopAccumulating(cfg.targetSlot);
        }
        closeWindow(win, G);
        win = undefined;
      }
      onStep?.();
    },
  }, cfg.tCycle);

  while (!loop.finished) loop.trainStep();
  if (win) {
    // the run ended inside a window: its feedback is simply not sent
    win.G?.dispose();
    disposeLowRank(win.input.target);
    disposeLowRank(win.input.source);
    disposeLowRank(win.generated);
    if (!heldout) loop.trainer.stopAccumulating(cfg.targetSlot);
  }
  const { curve, finalAcc, bestAcc } = loop.summary();
  onFinish?.(model);
  branches.dispose();
  loop.close();
  adapter?.dispose();
  model.dispose();
  return {
    condition,
    curve,
    finalAcc,
    bestAcc,
    cycles,
    meanBranchRatio: cycles ? ratioSum / cycles : 0,
    capBoundFraction: cycles ? capBound / cycles : 0,
    wallMs: Date.now() - t0,
  };
}
