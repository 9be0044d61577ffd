// The project's one training loop (client/training-loop.ts): its hooks run in a fixed order, the
// curve recorder keeps one point per step, and the three ways to train a device alone (the
// baselines' LocalRun, the fleet's device with no pairs, the reference loop's 'alone') are the
// same run, bit for bit, on the same seed.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import { CurveRecorder } from '../client/curve-recorder.js';
import { TrainingLoop } from '../client/training-loop.js';
import { buildModelFor } from '../client/models/registry.js';
import type { Split } from '../client/data/dataset.js';
import { loadDataFor, trainLocally } from '../simulations/baselines/local-training.js';
import { deviceSeed } from '../simulations/experiment/seeds.js';
import { runFleet } from '../simulations/experiment/run-experiment.js';
import { runTarget, type LoopConfig } from '../simulations/reference/paper-loop.js';
import { tinyExperiment } from './helpers/experiments.js';

beforeAll(async () => {
  await initBackend('wasm', () => {});
});

const FEATURES = 4;
function split(n: number): Split {
  const x = new Float32Array(n * FEATURES).map((_, i) => ((i * 7) % 11) / 11);
  const y = new Int32Array(n).map((_, i) => i % 2);
  return { x, y, n, inputShape: [FEATURES], numClasses: 2 };
}
function model(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.dense({ inputShape: [FEATURES], units: 2, activation: 'softmax', name: 'out', kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
  return m;
}

describe('CurveRecorder', () => {
  it('gives each point the mean loss since the previous one, and replaces a second point at the same step', () => {
    const c = new CurveRecorder();
    c.addLoss(1);
    c.addLoss(3);
    c.point(2, 0.5);
    c.addLoss(5);
    c.addLoss(3);
    c.point(4, 0.25);
    c.point(4, 0.75); // measured again at the same step: the accuracy is replaced, the loss kept
    expect(c.summary()).toEqual({
      curve: [
        { step: 2, acc: 0.5, loss: 2 },
        { step: 4, acc: 0.75, loss: 4 },
      ],
      finalAcc: 0.75,
      bestAcc: 0.75,
    });
    expect(new CurveRecorder().summary().finalAcc).toBeNaN();
  });
});

describe('TrainingLoop', () => {
  it('runs round begin, step begin, step end, evaluation and round end in that order, evaluating every evalEvery and at the end', () => {
    const m = model();
    const events: string[] = [];
    const before = tf.memory().numTensors;
    const loop = new TrainingLoop({
      model: m, train: split(24), test: split(8), optimizer: 'sgd', lr: 0.1, batchSize: 8, seed: 0,
      steps: 5, evalEvery: 2, evalAtEnd: true, roundSteps: 3,
      hooks: {
        onRoundBegin: (r, s) => events.push(`round ${r} begins at ${s}`),
        onStepBegin: (s) => events.push(`step ${s + 1}`),
        onStepEnd: (s) => events.push(`end ${s}`),
        onEvaluation: (ev) => events.push(`eval ${ev.step}`),
        onRoundEnd: (r, s) => events.push(`round ${r} ends at ${s}`),
      },
    });
    while (!loop.finished) loop.trainStep();
    expect(events).toEqual([
      'round 0 begins at 0', 'step 1', 'end 1', 'step 2', 'end 2', 'eval 2', 'step 3', 'end 3', 'round 0 ends at 3',
      'round 1 begins at 3', 'step 4', 'end 4', 'eval 4', 'step 5', 'end 5', 'eval 5', 'round 1 ends at 5',
    ]);
    const s = loop.summary();
    expect(s.curve.map((p) => p.step)).toEqual([2, 4, 5]);
    expect(s.curve.every((p) => Number.isFinite(p.loss))).toBe(true);
    expect(() => loop.trainStep()).toThrow(/all 5 steps are done/);
    loop.close();
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });

  it('with manual evaluation, steps never evaluate; evaluateIfDue does, once per step', () => {
    const m = model();
    let evals = 0;
    const loop = new TrainingLoop({
      model: m, train: split(16), test: split(8), optimizer: 'sgd', lr: 0.1, batchSize: 8, seed: 0,
      steps: 4, evalEvery: 2, evaluation: 'manual', hooks: { onEvaluation: () => evals++ },
    });
    loop.trainStep();
    loop.trainStep();
    expect(evals).toBe(0);
    expect(loop.evaluateIfDue()?.step).toBe(2);
    expect(loop.evaluateIfDue()).toBeUndefined();
    expect(evals).toBe(1);
    loop.close();
    m.dispose();
  });

  it('a non-finite loss stops the loop when asked to', () => {
    const m = model();
    const loop = new TrainingLoop({
      model: m, train: split(8), optimizer: 'sgd', lr: 0.1, batchSize: 8, seed: 0, evalEvery: 0, requireFiniteLoss: true,
      targets: (_xs, ys) => tf.fill(ys.shape, NaN),
    });
    expect(() => loop.trainStep()).toThrow(/training loss is NaN at step 1/);
    loop.close();
    m.dispose();
  });
});

describe('alone is one run, whoever drives it', () => {
  it('LocalRun, the fleet with no pairs and the reference loop give the identical curve (and LocalRun and the reference the identical weights)', async () => {
    const e = tinyExperiment({ name: 'one-loop', steps: 25, targetEvalEvery: 10, sourceEvalEvery: 25, baselines: ['alone'], mode: 'inprocess' });
    const spec = e.devices.find((d) => d.id === 'target')!;
    const seed = 2;
    const data = loadDataFor(spec, seed);

    const local = await trainLocally({ device: spec, data, seed, keepModel: true });
    const localWeights = local.model!.getWeights().map((w) => w.dataSync().slice());
    local.model!.dispose();

    const fleet = await runFleet(e, seed, { mode: 'inprocess', pairMode: 'real', pairs: [], label: 'one loop' });

    let refWeights: Float32Array[] = [];
    const cfg: LoopConfig = {
      steps: spec.steps, rank: 2, tCycle: 5, k: 2, tau: 0.5, sourceSlot: 'dense_0', targetSlot: 'dense_0',
      adapter: {}, evalEvery: spec.evalEvery, feedback: 'train', sourceWarmup: 0,
    };
    const ref = runTarget(
      'alone',
      { build: (s) => buildModelFor(spec.model, data, s), data, optimizer: spec.optimizer, lr: spec.lr, batchSize: spec.batchSize },
      { slices: new Map(), finalAcc: NaN, wallMs: 0 },
      cfg,
      deviceSeed(seed, spec.id),
      undefined,
      (m) => (refWeights = m.getWeights().map((w) => w.dataSync().slice() as Float32Array)),
    );

    expect(local.curve.map((p) => p.step)).toEqual([10, 20, 25]);
    // toStrictEqual on numbers is Object.is: every accuracy and every loss bit for bit
    expect(fleet.devices.target.curve).toStrictEqual(local.curve);
    expect(ref.curve).toStrictEqual(local.curve);
    expect(ref.finalAcc).toBe(local.finalAcc);
    expect(fleet.devices.target.finalAcc).toBe(local.finalAcc);
    expect(refWeights.length).toBe(localWeights.length);
    refWeights.forEach((w, i) => expect(Buffer.from(w.buffer).equals(Buffer.from(localWeights[i].buffer))).toBe(true));
  }, 60_000);
});
