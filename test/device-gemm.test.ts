// The device's plain-array paths (shared/math/device-gemm.ts: products in the WebAssembly SIMD gemm
// instead of tfjs ops) against the tfjs paths they stand in for, which stay the fallback (browser,
// MERGENET_DEVICE_GEMM=0): the same quantities within float32 rounding, the same decisions, and
// no tensor left behind.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../shared/tf/backend.js';
import { deviceArena, setDeviceGemm, type GemmModule } from '../shared/math/device-gemm.js';
import { lowRankSlice, SliceHistory } from '../shared/math/slice.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';

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
