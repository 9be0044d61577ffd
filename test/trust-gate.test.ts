// The trust gate (coordinator/gate/trust-gate.ts): its Adam step, its guards, its state, and the
// gradient the device sends for it (checked against finite differences of a real model's loss).
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { binomialUpperTail, sigmoid, TrustGate } from '../coordinator/gate/trust-gate.js';
import { relevanceTrial } from '../coordinator/gate/relevance.js';
import { mulberry32 } from '../shared/math/prng.js';
import { KnowledgeBranches } from '../client/knowledge-branch.js';
import { windowFeedback, type ClosedWindow } from '../client/target/index.js';
import { slotVariable } from '../client/slot.js';
import { initBackend } from '../shared/tf/backend.js';

beforeAll(async () => {
  await initBackend('cpu', () => {});
});

describe('TrustGate', () => {
  it('starts at sigmoid(init) and reaches exactly 0 far below', () => {
    expect(new TrustGate().value).toBeCloseTo(sigmoid(-3), 12);
    expect(new TrustGate({ init: -1e4 }).value).toBe(0);
    expect(new TrustGate({ init: 1e4 }).value).toBe(1);
    expect(new TrustGate({ enabled: false }).value).toBe(1);
  });

  it('takes Adam steps on θ with the chain rule through the applied g', () => {
    const gate = new TrustGate({ lr: 0.1, guard: 'none' });
    const g0 = gate.value;
    // A negative gradient wrt g (taking more of the source lowers the loss) must raise θ by ≈ lr
    // on the first Adam step (bias-corrected m/√v = sign).
    const r = gate.step(-2, g0);
    expect(r.dTheta).toBeCloseTo(g0 * (1 - g0) * -2, 12);
    expect(gate.theta).toBeCloseTo(-3 + 0.1, 6); // lr 0.1 here
    expect(r.after).toBeGreaterThan(r.before);
    gate.step(+2, gate.value);
    expect(gate.updates).toBe(2);
  });

  it('early guard: refuses a gate that has not risen after decideAfter updates, for good', () => {
    const gate = new TrustGate({ guard: 'early', decideAfter: 5 });
    for (let i = 0; i < 4; i++) expect(gate.step(+1, gate.value).decided).toBeUndefined();
    expect(gate.step(+1, gate.value).decided).toBe('refused');
    expect(gate.decision).toBe('refused');
    expect(gate.value).toBe(0);
    expect(gate.reason).toMatch(/not above its start/);
    // Nothing moves it any more.
    const r = gate.step(-100, 0.5);
    expect(r.dTheta).toBe(0);
    expect(gate.value).toBe(0);
  });

  it('early guard: accepts a gate that rose, and keeps training it', () => {
    const gate = new TrustGate({ guard: 'early', decideAfter: 5 });
    let decided;
    for (let i = 0; i < 5; i++) decided = gate.step(-1, gate.value).decided ?? decided;
    expect(decided).toBe('accepted');
    const before = gate.value;
    gate.step(-1, gate.value);
    expect(gate.value).toBeGreaterThan(before);
  });

  it('sign test: refuses consistent down-pushes before decideAfter, accepts a mixed record', () => {
    const down = new TrustGate({ guard: 'signtest', decideAfter: 25 });
    let at = 0;
    for (let i = 1; i <= 25 && down.decision === 'pending'; i++) {
      down.step(+1, down.value);
      at = i;
    }
    // 5 of 5 down: p = 1/32 < 0.05.
    expect(down.decision).toBe('refused');
    expect(at).toBe(5);
    // A down-push first, then mostly up: never significant, and above its start at the end.
    const mixed = new TrustGate({ guard: 'signtest', decideAfter: 10 });
    for (let i = 0; i < 10; i++) mixed.step(i === 0 || i === 5 ? +1 : -1, mixed.value);
    expect(mixed.decision).toBe('accepted');
    expect(mixed.reason).toMatch(/10 updates: the gate rose/);
  });

  it('sign test: the window closes when the target has memorised its data', () => {
    const up = new TrustGate({ guard: 'signtest', decideAfter: 25 });
    for (let i = 0; i < 3; i++) up.step(-1, up.value, { trainAcc: 0.5 });
    expect(up.decision).toBe('pending');
    up.step(-1, up.value, { trainAcc: 0.97 });
    expect(up.decision).toBe('accepted');
    expect(up.reason).toMatch(/memorised its data at update 4/);
    // A gate that went down then up, but is still below its start at memorisation, is refused.
    const low = new TrustGate({ guard: 'signtest', decideAfter: 25 });
    for (const g of [+1, +1, +1, +1, -1, -1]) low.step(g, low.value, { trainAcc: 0.9 });
    low.step(-1, low.value, { trainAcc: 1 });
    expect(low.decision).toBe('refused');
    expect(low.value).toBe(0);
  });

  it('relevance guard (the default): accepts a factor that keeps beating its shadows, refuses one that does not', () => {
    const win = { beatAll: true, shadows: 9 };
    const miss = { beatAll: false, shadows: 9 };
    const real = new TrustGate();
    expect(real.config.guard).toBe('relevance');
    real.step(+1, real.value, { relevance: win });
    real.step(+1, real.value, { relevance: win });
    expect(real.decision).toBe('pending');
    // 3 of 3 at chance 1/10: p = 0.001 < 0.01, whatever the gate's own gradient said.
    expect(real.step(+1, real.value, { relevance: win }).decided).toBe('accepted');
    expect(real.reason).toMatch(/beat all 9 random factors with its directions' norms in 3 of 3/);
    // Seven misses in a row: significantly below one half (p = 1/128 < 0.01).
    const noise = new TrustGate();
    for (let i = 0; i < 6; i++) noise.step(-1, noise.value, { relevance: miss });
    expect(noise.decision).toBe('pending');
    expect(noise.step(-1, noise.value, { relevance: miss }).decided).toBe('refused');
    expect(noise.reason).toMatch(/no more aligned with the data than noise/);
    expect(noise.value).toBe(0);
    // A mixed record runs into decideAfter.
    const mixed = new TrustGate({ decideAfter: 6 });
    for (let i = 0; i < 6; i++) mixed.step(0, mixed.value, { relevance: i % 2 ? win : miss });
    expect(mixed.decision).toBe('refused');
    expect(mixed.reason).toMatch(/in 6 updates: no significant evidence/);
    // Without relevance reports (a start that is the target's own slice) it tests as 'source' does.
    const own = new TrustGate();
    for (let i = 0; i < 7; i++) own.step(-1, own.value, { sourceGrad: -1 });
    expect(own.decision).toBe('accepted');
    expect(own.reason).toMatch(/7 of 7 held-out gradients favoured the source's slice/);
  });

  it('relevance trial: a random factor wins with chance 1/(shadows + 1); an aligned one always', () => {
    const p = 40;
    const r = 3;
    const rng = mulberry32(9);
    const gauss = () => Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
    const grad = Float32Array.from({ length: p * r }, gauss);
    for (const layout of ['columns', 'rows'] as const) {
      let wins = 0;
      const trials = 2000;
      for (let t = 0; t < trials; t++) {
        const factor = Float32Array.from({ length: p * r }, gauss);
        if (relevanceTrial({ factor, grad, r, layout }, 9, t).beatAll) wins++;
      }
      // Binomial(2000, 0.1): sd 13.4; ±4 sd.
      expect(Math.abs(wins - 200)).toBeLessThan(54);
    }
    // A factor along the gradient's directions, in another order and with other signs (as two
    // models order their hidden units), still wins every time: the overlap's norm sees through it.
    const aligned = new Float32Array(p * r);
    for (let i = 0; i < p; i++) for (let k = 0; k < r; k++) aligned[i * r + k] = (k % 2 ? -1 : 1) * grad[i * r + ((k + 1) % r)]! + 0.3 * Math.sin(i + k);
    for (let t = 0; t < 50; t++) expect(relevanceTrial({ factor: aligned, grad, r, layout: 'columns' }, 9, t).beatAll).toBe(true);
    // Reproducible, and a bad call says why.
    const x = { factor: grad, grad: aligned, r, layout: 'columns' as const };
    expect(relevanceTrial(x, 5, 1)).toEqual(relevanceTrial(x, 5, 1));
    expect(() => relevanceTrial({ ...x, grad: grad.subarray(1) }, 9, 0)).toThrow(/120 values, the gradient 119/);
    expect(() => relevanceTrial({ ...x, r: 7 }, 9, 0)).toThrow(/not 7 directions/);
    expect(relevanceTrial({ ...x, factor: new Float32Array(p * r) }, 9, 0).beatAll).toBe(false);
  });

  it('binomial tail is exact on small n', () => {
    expect(binomialUpperTail(5, 5)).toBeCloseTo(1 / 32, 12);
    expect(binomialUpperTail(0, 5)).toBe(1);
    expect(binomialUpperTail(3, 4)).toBeCloseTo(5 / 16, 12);
  });

  it('round-trips its state (as the checkpoint stores it) exactly', () => {
    const a = new TrustGate({ decideAfter: 3 });
    for (const g of [-0.3, 0.2, -0.7, -0.1]) a.step(g, a.value, { relevance: { beatAll: g < 0, shadows: 9 } });
    expect(a.state()).toMatchObject({ relevanceWins: 2, relevanceN: 3, shadows: 9, decision: 'refused' });
    const json = JSON.parse(JSON.stringify(a.state()));
    const b = new TrustGate({ decideAfter: 3 }, json);
    expect(b.state()).toEqual(a.state());
    expect(b.value).toBe(a.value);
    a.step(0.4, a.value);
    b.step(0.4, b.value);
    expect(b.theta).toBe(a.theta);
  });
});

describe('the gate gradient the device sends', () => {
  it('matches finite differences of the model loss in θ (K = s·g·D, s held)', () => {
    const before = tf.memory().numTensors;
    const model = tf.sequential({ layers: [tf.layers.dense({ units: 3, inputShape: [6], useBias: true, kernelInitializer: tf.initializers.randomNormal({ seed: 3 }) })] });
    const layer = model.layers[0].name;
    const xs = tf.randomNormal([8, 6], 0, 1, 'float32', 11);
    const ys = tf.tidy(() => tf.oneHot(tf.tensor1d([0, 1, 2, 0, 1, 2, 1, 0], 'int32'), 3).toFloat());
    const loss = () => tf.tidy(() => tf.losses.softmaxCrossEntropy(ys, model.predict(xs) as tf.Tensor).dataSync()[0]);
    const rnd = (shape: [number, number], seed: number) => tf.randomNormal(shape, 0, 0.5, 'float32', seed) as tf.Tensor2D;
    const generated = { A: rnd([6, 2], 1), B: rnd([2, 3], 2) };
    const current = { A: rnd([6, 2], 4), B: rnd([2, 3], 5) };
    const branches = new KnowledgeBranches(model);
    // tau large: the cap does not bind, s = 1
    const lossAt = (theta: number) => {
      branches.set('p', layer, generated, current, 100, sigmoid(theta));
      return loss();
    };
    const theta = -0.4;
    const g = sigmoid(theta);
    const upd = branches.set('p', layer, generated, current, 100, g, { keepDelta: true });
    expect(upd.scale).toBe(1);
    const kernel = slotVariable(model, layer);
    const G = tf.tidy(() => {
      const f = () => tf.losses.softmaxCrossEntropy(ys, model.predict(xs) as tf.Tensor) as tf.Scalar;
      const { grads } = tf.variableGrads(f, [kernel]);
      return grads[kernel.name] as tf.Tensor2D;
    });
    const w: ClosedWindow = {
      pairId: 'p', cycleId: 0, session: 's', layer, generated: { A: generated.A.clone(), B: generated.B.clone() },
      scale: upd.scale, gate: g, delta: upd.delta, k: 1, openedAt: 0, G, steps: 1, meanLoss: 0,
    };
    const fb = windowFeedback(w, undefined, { step: 1, loss: 0 });
    const analytic = g * (1 - g) * fb.gateGrad;
    const h = 1e-2;
    const numeric = (lossAt(theta + h) - lossAt(theta - h)) / (2 * h);
    expect(Math.abs(analytic - numeric)).toBeLessThan(2e-3 * Math.max(1, Math.abs(numeric)));
    expect(Math.abs(analytic)).toBeGreaterThan(1e-4);
    w.G.dispose();
    w.delta?.dispose();
    tf.dispose([w.generated.A, w.generated.B, generated.A, generated.B, current.A, current.B, xs, ys]);
    branches.remove('p');
    branches.dispose();
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a gate of 0 leaves the kernel bit-identical', () => {
    const model = tf.sequential({ layers: [tf.layers.dense({ units: 4, inputShape: [5] })] });
    const layer = model.layers[0].name;
    const kernel = slotVariable(model, layer);
    const before = Float32Array.from(kernel.dataSync() as Float32Array);
    const branches = new KnowledgeBranches(model);
    const f = { A: tf.randomNormal([5, 2]) as tf.Tensor2D, B: tf.randomNormal([2, 4]) as tf.Tensor2D };
    const c = { A: tf.randomNormal([5, 2]) as tf.Tensor2D, B: tf.randomNormal([2, 4]) as tf.Tensor2D };
    const upd = branches.set('p', layer, f, c, 0.5, 0);
    expect(upd.branchNorm).toBe(0);
    expect(upd.deltaNorm).toBeGreaterThan(0);
    expect(Array.from(kernel.dataSync() as Float32Array)).toEqual(Array.from(before));
    tf.dispose([f.A, f.B, c.A, c.B]);
    branches.dispose();
    model.dispose();
  });
});

describe('the join-time transfer', () => {
  it('keeps the swap in W when the held-out loss falls, and undoes it bit for bit when it does not', async () => {
    const { tryJoin } = await import('../client/target/join-transfer.js');
    const { HeldoutFeedback } = await import('../client/target/heldout-feedback.js');
    const { Trainer } = await import('../client/trainer.js');
    const before = tf.memory().numTensors;
    // A linear softmax model on 2 classes whose held-out data is separated along x0.
    const model = tf.sequential({ layers: [tf.layers.dense({ units: 2, inputShape: [3], useBias: false, activation: 'softmax', kernelInitializer: 'zeros' })] });
    const layer = model.layers[0].name;
    const trainer = new Trainer(model, { optimizer: 'sgd', lr: 0.1 });
    const x = new Float32Array([1, 0, 0, -1, 0, 0, 2, 0, 0, -2, 0, 0]);
    const y = new Int32Array([0, 1, 0, 1]);
    const val = { x, y, n: 4, inputShape: [3], numClasses: 2 };
    const heldout = new HeldoutFeedback(trainer, val, 4, 1);
    const branches = new KnowledgeBranches(model);
    const kernel = slotVariable(model, layer);
    const zero = { A: tf.zeros([3, 1]) as tf.Tensor2D, B: tf.zeros([1, 2]) as tf.Tensor2D };
    // A slice that separates the classes along x0: class 0 for x0 > 0.
    const good = { A: tf.tensor2d([[1], [0], [0]]), B: tf.tensor2d([[1, -1]]) };
    const bad = { A: tf.tensor2d([[1], [0], [0]]), B: tf.tensor2d([[-1, 1]]) };
    const r1 = tryJoin(branches, heldout, 'p', layer, bad, zero)!;
    expect(r1.joined).toBe(false);
    expect(r1.after).toBeGreaterThan(r1.before);
    expect(Array.from(kernel.dataSync())).toEqual([0, 0, 0, 0, 0, 0]);
    const r2 = tryJoin(branches, heldout, 'p', layer, good, zero)!;
    expect(r2.joined).toBe(true);
    expect(r2.after).toBeLessThan(r2.before);
    expect(Array.from(kernel.dataSync())).toEqual([1, -1, 0, 0, 0, 0]);
    // W itself moved (no branch holds it).
    const W = branches.weight(layer);
    expect(Array.from(W.dataSync())).toEqual([1, -1, 0, 0, 0, 0]);
    W.dispose();
    tf.dispose([zero.A, zero.B, good.A, good.B, bad.A, bad.B]);
    heldout.dropAll();
    branches.dispose();
    trainer.dispose();
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('the join-time transfer, always', () => {
  it('keeps the swap whatever the held-out loss says', async () => {
    const { tryJoin } = await import('../client/target/join-transfer.js');
    const { HeldoutFeedback } = await import('../client/target/heldout-feedback.js');
    const { Trainer } = await import('../client/trainer.js');
    const model = tf.sequential({ layers: [tf.layers.dense({ units: 2, inputShape: [3], useBias: false, activation: 'softmax', kernelInitializer: 'zeros' })] });
    const layer = model.layers[0].name;
    const trainer = new Trainer(model, { optimizer: 'sgd', lr: 0.1 });
    const val = { x: new Float32Array([1, 0, 0, -1, 0, 0]), y: new Int32Array([0, 1]), n: 2, inputShape: [3], numClasses: 2 };
    const heldout = new HeldoutFeedback(trainer, val, 2, 1);
    const branches = new KnowledgeBranches(model);
    const zero = { A: tf.zeros([3, 1]) as tf.Tensor2D, B: tf.zeros([1, 2]) as tf.Tensor2D };
    const bad = { A: tf.tensor2d([[1], [0], [0]]), B: tf.tensor2d([[-1, 1]]) };
    const r = tryJoin(branches, heldout, 'p', layer, bad, zero, true)!;
    expect(r.after).toBeGreaterThan(r.before);
    expect(r.joined).toBe(true);
    expect(Array.from(slotVariable(model, layer).dataSync())).toEqual([-1, 1, 0, 0, 0, 0]);
    tf.dispose([zero.A, zero.B, bad.A, bad.B]);
    heldout.dropAll();
    branches.dispose();
    trainer.dispose();
    model.dispose();
  });
});
