// The device's plain-array paths (shared/math/device-gemm.ts: products in the WebAssembly SIMD gemm
// instead of tfjs ops) against the tfjs paths they stand in for, which stay the fallback (browser,
// MERGENET_DEVICE_GEMM=0): the same quantities within float32 rounding, the same decisions, and
// no tensor left behind.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../shared/tf/backend.js';
import { deviceArena, readFloat32Into, setDeviceGemm, type GemmModule } from '../shared/math/device-gemm.js';
import { lowRankSlice, SliceHistory } from '../shared/math/slice.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { KnowledgeBranches, type BranchUpdate } from '../client/knowledge-branch.js';
import { projectFeedback } from '../client/target/feedback.js';
import { kernelValues, randnFactors, seededMlp } from './helpers/tensors.js';
import { mulberry32 } from './helpers/random.js';

let gemmFactory: (() => GemmModule | null) | null = null;

beforeAll(async () => {
  await initBackend('wasm', () => {});
  // shared/tf/backend.ts registers the gemm on import.
  gemmFactory = setDeviceGemm(null);
  setDeviceGemm(gemmFactory);
});

afterEach(() => {
  setDeviceGemm(gemmFactory);
});

/** fn on the tfjs path (no gemm), then the arena path. */
function bothPaths<T>(fn: () => T): { tfjs: T; arena: T } {
  setDeviceGemm(null);
  const tfjs = fn();
  setDeviceGemm(gemmFactory);
  expect(deviceArena()).not.toBeNull();
  const arena = fn();
  return { tfjs, arena };
}

/** max |x − y| / max |y| */
function relDiff(x: tf.Tensor, y: tf.Tensor): number {
  expect(x.shape).toEqual(y.shape);
  const a = x.dataSync();
  const b = y.dataSync();
  let d = 0;
  let big = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    big = Math.max(big, Math.abs(b[i]));
  }
  return big === 0 ? d : d / big;
}

/** W = Σ_i decay^i u_i v_iᵀ, random orthonormal u, v (QR on the backend), times `scale`. */
function decaying(m: number, n: number, seed: number, decay = 0.8, scale = 1): tf.Tensor2D {
  return tf.tidy(() => {
    const k = Math.min(m, n);
    const [U] = tf.linalg.qr(tf.randomNormal([m, k], 0, 1, 'float32', seed));
    const [V] = tf.linalg.qr(tf.randomNormal([n, k], 0, 1, 'float32', seed + 1));
    const s = tf.tensor1d(Array.from({ length: k }, (_, i) => scale * decay ** i));
    return tf.matMul(tf.mul(U, s), V, false, true) as tf.Tensor2D;
  });
}

function expectClose(a: LowRank, b: LowRank, tol: number, what: string): void {
  expect(relDiff(a.A, b.A), `${what}: A`).toBeLessThan(tol);
  expect(relDiff(a.B, b.B), `${what}: B`).toBeLessThan(tol);
}

describe('the arena\'s elementwise kernels (simd-vec.ts)', () => {
  it('equal the float32 operations bit for bit, and the float64 sum of squares, at every length and offset', () => {
    const arena = deviceArena()!;
    const rng = mulberry32(5);
    for (const n of [0, 1, 3, 4, 5, 7, 8, 9, 13, 16, 64, 1001]) {
      for (const off of [0, 1, 6]) {
        const [a, b, y, c] = [off, off + 2000, off + 4000, off + 6000];
        const f = arena.reserve(8000 + off);
        for (let i = 0; i < n; i++) {
          f[a + i] = (rng() - 0.5) * 8;
          f[b + i] = (rng() - 0.5) * 1e-3;
          f[y + i] = rng() - 0.5;
        }
        const x = f.slice(a, a + n);
        const z = f.slice(b, b + n);
        const w = f.slice(y, y + n);
        let ss = 0;
        let mx = 0;
        for (let i = 0; i < n; i++) {
          ss += x[i] * x[i];
          mx = Math.max(mx, Math.abs(x[i]));
        }
        // exact squares, summed in float64 in another order: within n·ε of each other
        expect(Math.abs(arena.sumSq(a, n) - ss)).toBeLessThanOrEqual(n * 2.3e-16 * ss);
        let dd = 0;
        for (let i = 0; i < n; i++) dd += Math.fround(x[i] - z[i]) ** 2;
        expect(Math.abs(arena.diffSumSq(a, b, n) - dd)).toBeLessThanOrEqual(n * 2.3e-16 * dd);
        const [s2, mx2] = arena.sumSqMaxAbs(a, n);
        expect(Math.abs(s2 - ss)).toBeLessThanOrEqual(n * 2.3e-16 * ss);
        expect(mx2).toBe(mx);
        const check = (fn: (i: number) => number) => {
          for (let i = 0; i < n; i++) expect(f[c + i]).toBe(Math.fround(fn(i)));
        };
        arena.sub(a, b, c, n);
        check((i) => x[i] - z[i]);
        arena.add(a, b, c, n);
        check((i) => x[i] + z[i]);
        arena.scale(a, 0.3, c, n);
        check((i) => x[i] * Math.fround(0.3));
        arena.addSub(a, b, y, c, n);
        check((i) => x[i] + Math.fround(z[i] - w[i]));
        // x as rows of 3, 4 and 7 into rows 2 longer
        for (const cols of [3, 4, 7]) {
          const rows = Math.floor(n / cols);
          f.fill(-1, c, c + rows * (cols + 2));
          arena.copyRows(a, cols, c, cols + 2, rows, cols);
          for (let i = 0; i < rows; i++) {
            for (let j = 0; j < cols; j++) expect(f[c + i * (cols + 2) + j]).toBe(x[i * cols + j]);
            expect(f[c + i * (cols + 2) + cols]).toBe(-1);
          }
        }
        if (n > 0) {
          // the last element is in the kernel's blocks or in the tail, depending on n
          f[a + n - 1] = NaN;
          expect(arena.sumSq(a, n)).toBeNaN();
          expect(arena.sumSqMaxAbs(a, n).every(Number.isNaN)).toBe(true);
          f[a + n - 1] = -Infinity;
          expect(arena.sumSqMaxAbs(a, n)).toEqual([Infinity, Infinity]);
          expect(arena.sumSq(a, n)).toBe(Infinity);
        }
      }
    }
  });
});

describe('the arena\'s float64 gemm (simd-vec gemm64)', () => {
  it('equals the float64 product summed in order, A read as stored or transposed, odd k and m', () => {
    const arena = deviceArena()!;
    arena.reserve(20000);
    const d = arena.f64;
    const rng = mulberry32(64);
    for (const [m, n, k] of [[1, 2, 1], [3, 4, 5], [16, 16, 64], [7, 10, 33]]) {
      const a = Float64Array.from({ length: m * k }, () => rng() - 0.5);
      const b = Float64Array.from({ length: k * n }, () => rng() - 0.5);
      const ref = new Float64Array(m * n);
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) for (let p = 0; p < k; p++) ref[i * n + j] += a[i * k + p] * b[p * n + j];
      d.set(a, 0);
      d.set(b, 3000);
      d.fill(7, 6000, 6000 + m * n);
      arena.gemm64(m, n, k, 0, k, 1, 3000, n, 6000, n);
      expect(Array.from(d.subarray(6000, 6000 + m * n))).toEqual(Array.from(ref));
      // the same A stored transposed (k×m), read with lda 1, aStep m
      for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) d[p * m + i] = a[i * k + p];
      arena.gemm64(m, n, k, 0, 1, m, 3000, n, 6000, n);
      expect(Array.from(d.subarray(6000, 6000 + m * n))).toEqual(Array.from(ref));
    }
  });
});

describe('lowRankSlice on the device gemm', () => {
  it('gives the tfjs path\'s factors, tall and wide, sketch widths and ranks not multiples of 4, far from unit scale', () => {
    for (const [m, n] of [[784, 64], [64, 784], [300, 90], [129, 37]] as [number, number][]) {
      const W1 = decaying(m, n, m + n);
      for (const scale of [1, 1e-25, 1e25]) {
        const W = tf.tidy(() => tf.mul(W1, scale)) as tf.Tensor2D;
        for (const rank of [1, 3, 5, 8]) {
          const { tfjs, arena } = bothPaths(() => lowRankSlice(W, rank, { seed: 7 }));
          // A 0.8^i spectrum separates the singular values by 20 %: the two orders of float32
          // summation move the factors by ≤ 3e-7 of their largest entry (as measured).
          expectClose(arena, tfjs, 2e-6, `[${m}, ${n}] r ${rank} × ${scale}`);
          [tfjs, arena].forEach(disposeLowRank);
        }
        W.dispose();
      }
      W1.dispose();
    }
  });

  it('takes the same warm, cold, check and fallback decisions along a trajectory, with the same factors', () => {
    const run = () => {
      const h = new SliceHistory({ coldEvery: 5 });
      let W = decaying(784, 64, 3);
      const out: LowRank[] = [];
      for (let t = 0; t < 24; t++) {
        // a slowly moving W, and at t = 12 a jump the guard must catch
        const next = tf.tidy(() =>
          t === 12 ? decaying(784, 64, 99) : tf.add(W, tf.randomNormal(W.shape, 0, 3e-5, 'float32', 200 + t)),
        ) as tf.Tensor2D;
        W.dispose();
        W = next;
        out.push(lowRankSlice(W, 8, { seed: t, history: h }));
      }
      W.dispose();
      return { out, counts: { ...h.counts } };
    };
    const { tfjs, arena } = bothPaths(run);
    expect(arena.counts).toEqual(tfjs.counts);
    expect(arena.counts.fallback).toBe(1);
    expect(arena.counts.checks).toBeGreaterThanOrEqual(3);
    for (let t = 0; t < tfjs.out.length; t++) expectClose(arena.out[t], tfjs.out[t], 2e-6, `slice ${t}`);
    [...tfjs.out, ...arena.out].forEach(disposeLowRank);
  });

  it('rejects non-finite weights, slices zero weights to zero, and leaves no tensor behind', () => {
    const bad = tf.tidy(() => tf.randomNormal([40, 30]).add(tf.oneHot([3], 30).mul(Infinity).reshape([1, 30]))) as tf.Tensor2D;
    const nan = tf.tidy(() => tf.randomNormal([40, 30]).add(tf.oneHot([5], 30).mul(NaN).reshape([1, 30]))) as tf.Tensor2D;
    expect(() => lowRankSlice(bad, 2)).toThrow(/non-finite/);
    expect(() => lowRankSlice(nan, 2, { history: new SliceHistory() })).toThrow(/non-finite/);
    const zero = tf.zeros([50, 40]) as tf.Tensor2D;
    const z = lowRankSlice(zero, 3);
    expect(Array.from(z.A.dataSync()).every((v) => v === 0)).toBe(true);
    disposeLowRank(z);
    const W = decaying(256, 64, 4);
    const h = new SliceHistory({ coldEvery: 4 });
    disposeLowRank(lowRankSlice(W, 4, { history: h }));
    const before = tf.memory().numTensors;
    for (let i = 0; i < 30; i++) {
      disposeLowRank(lowRankSlice(W, 4, { seed: i, history: h }));
      disposeLowRank(lowRankSlice(W, 1 + (i % 8), { seed: i }));
    }
    expect(h.counts.warm).toBeGreaterThan(0);
    expect(h.counts.checks).toBeGreaterThan(0);
    expect(tf.memory().numTensors).toBe(before);
    [bad, nan, zero, W].forEach((t) => t.dispose());
  });
});

/** A model with a dense slot 'h' [20, 16], an output slot 'out' [16, 3] and a conv slot 'c' [3·3·2, 6]. */
function threeSlotModel(seed: number): tf.LayersModel {
  const input = tf.input({ shape: [6, 6, 2] });
  const c = tf.layers.conv2d({ name: 'c', filters: 6, kernelSize: 3, kernelInitializer: tf.initializers.glorotUniform({ seed }) }).apply(input) as tf.SymbolicTensor;
  const flat = tf.layers.flatten().apply(c) as tf.SymbolicTensor;
  const d0 = tf.layers.dense({ name: 'd0', units: 20, kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }).apply(flat) as tf.SymbolicTensor;
  const h = tf.layers.dense({ name: 'h', units: 16, kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 2 }) }).apply(d0) as tf.SymbolicTensor;
  const out = tf.layers.dense({ name: 'out', units: 3, kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 3 }) }).apply(h) as tf.SymbolicTensor;
  return tf.model({ inputs: input, outputs: out });
}

const SHAPES: Record<string, [number, number]> = { h: [20, 16], out: [16, 3], c: [18, 6] };

describe('KnowledgeBranches.set and projectFeedback on the device gemm', () => {
  it('compute what the tfjs path computes: kernels, norms, caps, several pairs per slot, odd widths, identity transfers bit-exact', () => {
    const run = () => {
      const model = threeSlotModel(5);
      const kb = new KnowledgeBranches(model);
      const rng = mulberry32(17);
      const ups: BranchUpdate[] = [];
      const kernels: Float32Array[] = [];
      const deltas: Float32Array[] = [];
      const productScales: number[] = [];
      // pairs: two on 'h' (one capped by τ), one on 'out' (rank 2, width 3), one on the conv slot (width 6); gates below 1
      const plan: [string, string, number, number, number, number][] = [
        ['p', 'h', 3, 0.3, 0.5, 1], ['q', 'h', 5, 30, 0.2, 0.7], ['o', 'out', 2, 0.5, 0.5, 1], ['c', 'c', 4, 1, 0.5, 0.4],
        ['p', 'h', 3, 0.2, 0.5, 0.9], ['q', 'h', 5, 0.01, 0.5, 1], ['c', 'c', 4, 3, 0.1, 1],
      ];
      for (const [pair, layer, r, std, tau, gate] of plan) {
        const [m, n] = SHAPES[layer];
        const cur = randnFactors(rng, m, r, n);
        const gen = { A: tf.tidy(() => tf.add(cur.A, tf.mul(randnFactors(rng, m, r, n).A, std))) as tf.Tensor2D, B: cur.B.clone() };
        const u = kb.set(pair, layer, gen, cur, tau, gate, { keepDelta: true });
        deltas.push(Float32Array.from(u.delta!.dataSync() as Float32Array));
        productScales.push(tf.tidy(() => tf.max(tf.abs(tf.matMul(gen.A, gen.B))).dataSync()[0]));
        u.delta!.dispose();
        delete u.delta;
        ups.push(u);
        kernels.push(kernelValues(model, layer));
        [cur, gen].forEach(disposeLowRank);
      }
      // An identity transfer replaces q's branch by 0; then one on a pair without a branch leaves the kernel bit-identical.
      const cur = randnFactors(rng, 20, 3, 16);
      const same = { A: cur.A.clone(), B: cur.B.clone() };
      ups.push(kb.set('q', 'h', same, cur));
      kernels.push(kernelValues(model, 'h'));
      ups.push(kb.set('z', 'h', same, cur));
      const after = kernelValues(model, 'h');
      expect(after).toEqual(kernels[kernels.length - 1]);
      expect(kb.branch('z')!.dataSync().every((v: number) => v === 0)).toBe(true);
      [cur, same].forEach(disposeLowRank);
      const W = kb.weight('h');
      const weight = Float32Array.from(W.dataSync() as Float32Array);
      const K = kb.branch('p')!;
      const branchP = Float32Array.from(K.dataSync() as Float32Array);
      tf.dispose([W, K, kb.branch('z')!]);
      expect(kb.remove('p')).toBe(true);
      const removed = kernelValues(model, 'h');
      kb.dispose();
      model.dispose();
      return { ups, kernels, deltas, productScales, weight, branchP, removed };
    };
    const { tfjs, arena } = bothPaths(run);
    // D's products sum in another order than tfjs': float32 rounding of their terms (up to 30× the
    // slot's scale here, before the cap) reaches the kernels as ~1e-6 of their largest entry.
    const close = (a: Float32Array, b: Float32Array, what: string, scale?: number) => {
      let d = 0;
      let big = 0;
      for (let i = 0; i < a.length; i++) {
        d = Math.max(d, Math.abs(a[i] - b[i]));
        big = Math.max(big, Math.abs(b[i]));
      }
      expect(d, what).toBeLessThanOrEqual(5e-6 * (scale ?? big));
    };
    expect(arena.ups.length).toBe(tfjs.ups.length);
    for (let i = 0; i < tfjs.ups.length; i++) {
      const [a, t] = [arena.ups[i], tfjs.ups[i]];
      expect(a.gate).toBe(t.gate);
      // ‖D‖ inherits D's cancellation (see below); ‖W‖ does not.
      for (const k of ['scale', 'deltaNorm', 'branchNorm', 'weightNorm'] as const) {
        expect(Math.abs(a[k] - t[k]), `update ${i} ${k}`).toBeLessThanOrEqual((k === 'weightNorm' ? 1e-6 : 1e-5) * Math.abs(t[k]));
      }
    }
    expect(tfjs.ups.filter((u) => u.scale < 1).length).toBeGreaterThan(0);
    for (let i = 0; i < tfjs.kernels.length; i++) close(arena.kernels[i], tfjs.kernels[i], `kernel after set ${i}`);
    // D = A′B′ − AB cancels: its rounding is relative to the products', not to D's own entries.
    for (let i = 0; i < tfjs.deltas.length; i++) close(arena.deltas[i], tfjs.deltas[i], `delta ${i}`, tfjs.productScales[i]);
    close(arena.weight, tfjs.weight, 'weight()');
    close(arena.branchP, tfjs.branchP, 'branch()');
    close(arena.removed, tfjs.removed, 'kernel after remove()');
  });

  it('reads branches the other path made, and leaves no tensor behind', () => {
    const model = seededMlp(9, 20, 16, 3);
    const kb = new KnowledgeBranches(model);
    const rng = mulberry32(3);
    const before0 = kernelValues(model, 'h');
    const cur = randnFactors(rng, 20, 4, 16);
    const gen = randnFactors(rng, 20, 4, 16);
    // made on the tfjs path (a tensor), replaced on the arena path (which reads it), and back
    setDeviceGemm(null);
    kb.set('p', 'h', gen, cur, 0.5, 0.5);
    setDeviceGemm(gemmFactory);
    // W + K − K: back to W up to float32 rounding, either way round
    const back = () => {
      const k = kernelValues(model, 'h');
      let d = 0;
      for (let i = 0; i < k.length; i++) d = Math.max(d, Math.abs(k[i] - before0[i]));
      return d;
    };
    kb.set('p', 'h', cur, cur);
    expect(back()).toBeLessThan(1e-6);
    kb.set('p', 'h', gen, cur, 0.5, 0.5);
    expect(back()).toBeGreaterThan(1e-3);
    setDeviceGemm(null);
    kb.set('p', 'h', cur, cur);
    expect(back()).toBeLessThan(1e-6);
    setDeviceGemm(gemmFactory);
    const G = tf.randomNormal([20, 16], 0, 1e-2, 'float32', 8) as tf.Tensor2D;
    kb.set('p', 'h', gen, cur, 0.5, 1, { keepDelta: true }).delta!.dispose();
    const n0 = tf.memory().numTensors;
    for (let i = 0; i < 20; i++) {
      const u = kb.set(i % 2 ? 'p' : 'q', 'h', gen, cur, 0.5, i % 3 === 0 ? 1 : 0.5, { keepDelta: i % 2 === 0 });
      u.delta?.dispose();
      kb.weight('h').dispose();
      const fb = projectFeedback(G, gen, 0.7);
      tf.dispose([fb.gA, fb.gB]);
    }
    kb.remove('q');
    kb.set('q', 'h', gen, cur);
    expect(tf.memory().numTensors).toBe(n0);
    [cur, gen].forEach(disposeLowRank);
    G.dispose();
    kb.dispose();
    model.dispose();
  });

  it('on a backend that keeps a tensor\'s array (cpu), results stay apart from the arena and from branch() copies', async () => {
    const run = () => {
      const model = seededMlp(21, 20, 16, 3);
      const kb = new KnowledgeBranches(model);
      const rng = mulberry32(21);
      const cur = randnFactors(rng, 20, 4, 16);
      const gen = randnFactors(rng, 20, 4, 16);
      const G = tf.randomNormal([20, 16], 0, 1e-2, 'float32', 2) as tf.Tensor2D;
      const u1 = kb.set('p', 'h', gen, cur, 0.5, 0.5, { keepDelta: true });
      const K1 = kb.branch('p')!;
      const k1 = Float32Array.from(K1.dataSync() as Float32Array);
      const d1 = Float32Array.from(u1.delta!.dataSync() as Float32Array);
      const fb = projectFeedback(G, gen, 0.3);
      const gA = Float32Array.from(fb.gA.dataSync() as Float32Array);
      // the pair's next set() and another projection reuse the arena and the branch's array
      kb.set('p', 'h', cur, gen, 0.5, 1, { keepDelta: true }).delta!.dispose();
      projectFeedback(G, cur, 0.9).gA.dispose();
      expect(Float32Array.from(K1.dataSync() as Float32Array)).toEqual(k1);
      expect(Float32Array.from(u1.delta!.dataSync() as Float32Array)).toEqual(d1);
      expect(Float32Array.from(fb.gA.dataSync() as Float32Array)).toEqual(gA);
      const kernel = kernelValues(model, 'h');
      tf.dispose([K1, u1.delta!, fb.gA, fb.gB, G]);
      [cur, gen].forEach(disposeLowRank);
      kb.dispose();
      model.dispose();
      return { k1, d1, gA, kernel };
    };
    const wasm = run();
    await initBackend('cpu', () => {});
    try {
      expect(tf.getBackend()).toBe('cpu');
      const cpu = run();
      for (const k of ['k1', 'd1', 'gA', 'kernel'] as const) {
        for (let i = 0; i < wasm[k].length; i++) expect(Math.abs(cpu[k][i] - wasm[k][i]), k).toBeLessThan(1e-6);
      }
    } finally {
      await initBackend('wasm', () => {});
    }
  });

  it('projectFeedback gives the tfjs path\'s gA and gB, ranks and widths not multiples of 4', () => {
    for (const [m, n, r] of [[784, 64, 8], [18, 6, 4], [16, 3, 2], [30, 17, 5]] as [number, number, number][]) {
      const rng = mulberry32(m + n + r);
      const gen = randnFactors(rng, m, r, n);
      const G = tf.randomNormal([m, n], 0, 1e-3, 'float32', m) as tf.Tensor2D;
      const { tfjs, arena } = bothPaths(() => projectFeedback(G, gen, 0.37));
      expect(arena.gA.shape).toEqual([m, r]);
      expect(arena.gB.shape).toEqual([r, n]);
      expect(relDiff(arena.gA, tfjs.gA)).toBeLessThan(1e-6);
      expect(relDiff(arena.gB, tfjs.gB)).toBeLessThan(1e-6);
      tf.dispose([tfjs.gA, tfjs.gB, arena.gA, arena.gB, G]);
      disposeLowRank(gen);
    }
  });
});

describe('readFloat32Into', () => {
  it('copies a tensor\'s values into an array at an offset: variables, reshaped views, and on the cpu backend', async () => {
    const check = () => {
      const v = tf.variable(tf.randomNormal([12, 5], 0, 1, 'float32', 9));
      const view = tf.reshape(v, [5, 12]);
      const t = tf.tidy(() => tf.add(view, 1));
      for (const x of [v, view, t]) {
        const dst = new Float32Array(70).fill(-7);
        readFloat32Into(x, dst, 3);
        expect(Array.from(dst.subarray(3, 63))).toEqual(Array.from(x.dataSync()));
        expect(dst[2]).toBe(-7);
        expect(dst[63]).toBe(-7);
      }
      // after an assign the variable reads its new values
      v.assign(tf.zerosLike(v));
      const dst = new Float32Array(60).fill(1);
      readFloat32Into(v, dst, 0);
      expect(dst.every((x) => x === 0)).toBe(true);
      tf.dispose([v, view, t]);
    };
    expect(tf.getBackend()).toBe('wasm');
    check();
    await initBackend('cpu', () => {});
    try {
      check();
    } finally {
      await initBackend('wasm', () => {});
    }
    const disposed = tf.ones([3]);
    disposed.dispose();
    expect(() => readFloat32Into(disposed, new Float32Array(3), 0)).toThrow(/disposed/);
  });
});
