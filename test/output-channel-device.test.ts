// The output channel on the device, without a network: the probe split's hash check, the
// distillation term (λ = 0 changes nothing, bit for bit), the readout trial deciding about a
// trained and an untrained source on a small deterministic problem, and the probe split's place
// in the simulations' data (never inside a device's train, held-out or test window).
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadProbeExamples } from '../client/data/probe-data.js';
import { loadDeviceData } from '../client/data/registry.js';
import { batchIterator, splitTensors } from '../client/data/dataset.js';
import { KnowledgeBranches } from '../client/knowledge-branch.js';
import { buildModelFor } from '../client/models/registry.js';
import { probeHash } from '../client/probe/probe-hash.js';
import { OutputChannel } from '../client/target/output-channel.js';
import { ProbeDistiller } from '../client/target/probe-distiller.js';
import { ReadoutFitter } from '../client/target/readout-trial.js';
import { Trainer, PROB_EPSILON } from '../client/trainer.js';
import { TrustGate } from '../coordinator/gate/trust-gate.js';
import { ridgeFit } from '../shared/math/ridge.js';
import { initBackend } from '../shared/tf/backend.js';
import { checkProbe } from '../simulations/experiment/run-experiment.js';
import { loadExperiment } from '../simulations/experiment/schema.js';

beforeAll(async () => {
  await initBackend('cpu', () => {});
});

const PROBE = { dataset: 'mnist', seed: 0, offset: 6000 };

function trainSteps(trainer: Trainer, data: ReturnType<typeof loadDeviceData>['train'], steps: number, seed: number): void {
  const it = batchIterator(data, 32, seed, { epochs: Infinity });
  for (let i = 0; i < steps; i++) {
    const b = it.next().value!;
    trainer.step(b.xs, b.ys);
    tf.dispose([b.xs, b.ys]);
  }
}

describe('ridge fit', () => {
  it('recovers an exact linear map with its intercept', () => {
    const n = 50;
    const d = 3;
    const c = 2;
    const X = Float64Array.from({ length: n * d }, (_, i) => Math.sin(i * i * 0.37 + 1) + (i % d));
    const W = [1, -2, 0.5, 3, -1, 0.25];
    const b = [0.3, -0.7];
    const Y = new Float64Array(n * c);
    for (let i = 0; i < n; i++) for (let k = 0; k < c; k++) {
      let s = b[k];
      for (let j = 0; j < d; j++) s += X[i * d + j] * W[j * c + k];
      Y[i * c + k] = s;
    }
    const fit = ridgeFit(X, Y, n, d, c, 1e-10);
    fit.W.forEach((v, i) => expect(v).toBeCloseTo(W[i], 5));
    fit.b.forEach((v, i) => expect(v).toBeCloseTo(b[i], 5));
  });
});

describe('the probe split', () => {
  it('is refused when the examples a device holds do not hash to the plan\'s, and used when they do', async () => {
    const data = loadDeviceData({ name: 'mnist', labels: 50, testSize: 500 }, 0);
    const model = buildModelFor({ kind: 'mlp', hidden: [16] }, data, 1);
    const trainer = new Trainer(model, { optimizer: 'adam', lr: 1e-3 });
    const ex = loadProbeExamples(PROBE, 40);
    const desc = { id: 'p40', inputSpace: 'mnist', source: PROBE, count: 40, exampleShape: [784], sha256: await probeHash(ex.x) };
    const ignored: string[] = [];
    const make = (tamper: boolean) =>
      new OutputChannel({
        model, trainer, branches: new KnowledgeBranches(model), heldout: data.val, train: data.train, seed: 1,
        loadProbe: () => {
          const x = Float32Array.from(ex.x);
          if (tamper) x[123] += 1e-3;
          return { x, exampleShape: [784] };
        },
        events: { ignore: (reason) => ignored.push(reason), log: () => undefined },
      });
    const bad = make(true);
    bad.setProbe(desc);
    await expect.poll(() => bad.probeProblem, { timeout: 5000 }).toMatch(/hash to .* the coordinator's to/);
    expect(bad.ready).toBe(false);
    expect(ignored).toEqual(['probe_hash_mismatch']);
    const good = make(false);
    good.setProbe(desc);
    await expect.poll(() => good.ready, { timeout: 5000 }).toBe(true);
    expect(good.probeId).toBe('p40');
    good.dispose();
    bad.dispose();
    trainer.dispose();
    model.dispose();
  });

  it('never overlaps a device\'s train, held-out or test examples in the shipped scenario, and an overlapping one is refused', () => {
    const e = loadExperiment('simulations/scenarios/cross-architecture.yaml');
    expect(() => checkProbe(e, 0)).not.toThrow();
    // Examples, not only positions: no probe image is in any device's splits.
    const probe = loadProbeExamples({ dataset: 'mnist', seed: 0, offset: e.probe!.offset }, e.probe!.count);
    const key = (x: Float32Array, i: number) => x.subarray(i * 784, (i + 1) * 784).join(',');
    const probeKeys = new Set(Array.from({ length: probe.count }, (_, i) => key(probe.x, i)));
    for (const d of e.devices) {
      const data = loadDeviceData(d.dataset, 0);
      for (const split of [data.train, data.val, data.test]) {
        for (let i = 0; i < split.n; i++) expect(probeKeys.has(key(split.x, i))).toBe(false);
      }
    }
    expect(() => checkProbe({ ...e, probe: { offset: 1000, count: 500 } }, 0)).toThrow(/device "cnn" trains or holds out examples \[800, 4800\)/);
    expect(() => checkProbe({ ...e, probe: { offset: 7800, count: 500 } }, 0)).toThrow(/reaches device "cnn"'s test split/);
  });
});

describe('distillation on the probe split', () => {
  it('λ = 0 trains bit-identically to no distillation at all', () => {
    const data = loadDeviceData({ name: 'mnist', labels: 60, testSize: 500 }, 2);
    const probe = loadProbeExamples(PROBE, 64);
    const run = (withDistiller: boolean) => {
      const model = buildModelFor({ kind: 'mlp', hidden: [16] }, data, 7);
      const trainer = new Trainer(model, { optimizer: 'adam', lr: 1e-3 });
      const px = tf.tensor2d(probe.x, [64, 784]);
      const d = new ProbeDistiller(model, px, { lambda: 0, temperature: 2, batchSize: 16 }, 5);
      if (withDistiller) {
        d.setTeacher(Float32Array.from({ length: 640 }, (_, i) => -((i * 7) % 10)), 64, 10);
        trainer.extraLosses.set('p', () => d.loss());
      }
      trainSteps(trainer, data.train, 20, 3);
      const w = model.getWeights().map((t) => Array.from(t.dataSync()));
      d.dispose();
      px.dispose();
      trainer.dispose();
      model.dispose();
      return w;
    };
    expect(run(true)).toEqual(run(false));
  });

  it('λ > 0 moves the target toward the teacher on the probe split', () => {
    const data = loadDeviceData({ name: 'mnist', labels: 60, testSize: 500 }, 2);
    const probe = loadProbeExamples(PROBE, 64);
    const model = buildModelFor({ kind: 'mlp', hidden: [16] }, data, 7);
    const trainer = new Trainer(model, { optimizer: 'adam', lr: 1e-2 });
    const px = tf.tensor2d(probe.x, [64, 784]);
    // A teacher that says "class 3" for every probe image.
    const teacher = Float32Array.from({ length: 640 }, (_, i) => (i % 10 === 3 ? 0 : -8));
    const d = new ProbeDistiller(model, px, { lambda: 1, temperature: 1, batchSize: 32 }, 5);
    d.setTeacher(teacher, 64, 10);
    trainer.extraLosses.set('p', () => d.loss());
    const share3 = () => tf.tidy(() => tf.mean(tf.cast(tf.equal(tf.argMax(model.predict(px) as tf.Tensor, -1), 3), 'float32')).dataSync()[0]);
    const before = share3();
    trainSteps(trainer, data.train, 30, 3);
    expect(before).toBeLessThan(0.5);
    expect(share3()).toBeGreaterThan(0.9);
    expect(d.steps).toBe(30);
    d.dispose();
    px.dispose();
    trainer.dispose();
    model.dispose();
  });
});

describe('the readout trial', () => {
  it('keeps a trained source and refuses an untrained one, by the early decision on held-out feedback', () => {
    const probe = loadProbeExamples(PROBE, 300);
    const px = tf.tensor2d(probe.x, [300, 784]);
    // The source: an MLP trained on 2000 examples; the useless source: the same, untrained.
    const srcData = loadDeviceData({ name: 'mnist', trainSize: 2000, valSize: 0, testSize: 500, offset: 1000 }, 0);
    const logitsOf = (train: boolean) => {
      const m = buildModelFor({ kind: 'mlp', hidden: [32] }, srcData, 11);
      const t = new Trainer(m, { optimizer: 'adam', lr: 3e-3 });
      if (train) trainSteps(t, srcData.train, 300, 4);
      const z = tf.tidy(() => tf.log(tf.clipByValue(m.predict(px) as tf.Tensor, PROB_EPSILON, 1)));
      const v = Float32Array.from(z.dataSync());
      z.dispose();
      t.dispose();
      m.dispose();
      return v;
    };
    const decide = (teacher: Float32Array) => {
      const data = loadDeviceData({ name: 'mnist', labels: 100, testSize: 500 }, 0);
      const model = buildModelFor({ kind: 'mlp', hidden: [32] }, data, 3);
      const trainer = new Trainer(model, { optimizer: 'adam', lr: 1e-3 });
      const branches = new KnowledgeBranches(model);
      const fitter = new ReadoutFitter(model, 'out', px);
      const gate = new TrustGate({ guard: 'readout', decideAfter: 10 });
      const held = splitTensors(data.val);
      const batches = batchIterator(data.train, 32, 1, { epochs: Infinity });
      for (let u = 0; u < 10 && gate.decision === 'pending'; u++) {
        const W = branches.weight('out');
        const { D, readout } = fitter.fit(teacher, 10, W);
        W.dispose();
        const g = gate.value;
        const upd = branches.setDelta('p', 'out', D, 1, g, { keepDelta: true });
        for (let s = 0; s < 5; s++) {
          const b = batches.next().value!;
          trainer.step(b.xs, b.ys);
          tf.dispose([b.xs, b.ys]);
        }
        const G = trainer.gradientOn(held.xs, held.ys, 'out');
        const gateGrad = upd.scale * tf.tidy(() => tf.sum(tf.mul(G, upd.delta!)).dataSync()[0]);
        tf.dispose([G, upd.delta!]);
        gate.step(gateGrad, g, { readout: { ...fitter.readoutHits(readout, held.xs, held.ys), classes: 10 } });
      }
      branches.remove('p');
      tf.dispose([held.xs, held.ys]);
      trainer.dispose();
      model.dispose();
      reasons.push(gate.reason ?? '');
      return gate.decision;
    };
    const reasons: string[] = [];
    const before = tf.memory().numTensors;
    expect(decide(logitsOf(true))).toBe('accepted');
    expect(decide(logitsOf(false))).toBe('refused');
    expect(reasons[0]).toMatch(/the readout labelled [5-9]\d % of 20 held-out examples right/);
    expect(tf.memory().numTensors).toBe(before);
    px.dispose();
  }, 120_000);
});
