// The source-aligned adapter start (coordinator/adapter/pass-through.ts).
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { alignmentFits, inferAlignment, passThroughStart } from '../coordinator/adapter/pass-through.js';
import { lowRankSlice } from '../shared/math/slice.js';
import { initBackend } from '../shared/tf/backend.js';

beforeAll(async () => {
  await initBackend('cpu', () => {});
});

const rnd = (shape: [number, number], seed: number) => tf.randomNormal(shape, 0, 1, 'float32', seed) as tf.Tensor2D;

function close(a: tf.Tensor, b: tf.Tensor, tol = 1e-4): void {
  const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
  expect(d).toBeLessThan(tol);
}

describe('inferAlignment', () => {
  it('reads the shared axes off the slot shapes', () => {
    expect(inferAlignment([784, 128], [784, 128])).toBe('both');
    expect(inferAlignment([784, 128], [784, 64])).toBe('rows');
    expect(inferAlignment([128, 10], [64, 10])).toBe('cols');
    expect(inferAlignment([128, 10], [64, 2])).toBe('none');
    expect(alignmentFits('rows', [784, 128], [800, 128])).toBe(false);
    expect(alignmentFits('none', [1, 2], [3, 4])).toBe(true);
  });
});

describe('passThroughStart', () => {
  it("'both' is the source's slice, 'none' the target's own", () => {
    const t = { A: rnd([6, 2], 1), B: rnd([2, 5], 2) };
    const s = { A: rnd([6, 2], 3), B: rnd([2, 5], 4) };
    const both = passThroughStart('both', t, s);
    expect(Array.from(both.A.dataSync())).toEqual(Array.from(s.A.dataSync()));
    expect(Array.from(both.B.dataSync())).toEqual(Array.from(s.B.dataSync()));
    const none = passThroughStart('none', t, s);
    expect(Array.from(none.A.dataSync())).toEqual(Array.from(t.A.dataSync()));
    tf.dispose([t.A, t.B, s.A, s.B, both.A, both.B, none.A, none.B]);
  });

  it("'rows': the source's input-side directions and strengths through the target's output side", () => {
    const before = tf.memory().numTensors;
    // Real slices (A = U√S, B = √S·Vᵀ) of a 40×12 target and a 40×7 source.
    const Wt = rnd([40, 12], 5);
    const Ws = rnd([40, 7], 6);
    const r = 3;
    const t = lowRankSlice(Wt, r, { seed: 1 });
    const s = lowRankSlice(Ws, r, { seed: 2 });
    const out = passThroughStart('rows', t, s);
    expect(out.A.shape).toEqual([40, r]);
    expect(out.B.shape).toEqual([r, 12]);
    // Component i: ±σ_s,i · u_s,i · v_t,iᵀ, with the sign that aligns u_s,i to u_t,i.
    const expected = tf.tidy(() => {
      let sum = tf.zeros([40, 12]);
      for (let i = 0; i < r; i++) {
        const as = tf.slice(s.A, [0, i], [40, 1]);
        const at = tf.slice(t.A, [0, i], [40, 1]);
        const bt = tf.slice(t.B, [i, 0], [1, 12]);
        const sigmaS = tf.square(tf.norm(as)); // ‖A_s[:, i]‖² = σ_s,i
        const sqrtSigmaT = tf.norm(at);
        const u = tf.div(as, tf.sqrt(sigmaS)); // u_s,i
        const v = tf.div(bt, sqrtSigmaT); // v_t,iᵀ
        const sign = tf.sign(tf.sum(tf.mul(as, at)));
        sum = tf.add(sum, tf.mul(tf.mul(sign, sigmaS), tf.matMul(u, v)));
      }
      return sum;
    });
    const got = tf.matMul(out.A, out.B);
    close(got, expected);
    // Signs are aligned: every column of A′ points the same way as the target's.
    const dots = tf.tidy(() => tf.sum(tf.mul(out.A, t.A), 0).dataSync());
    for (const d of dots) expect(d).toBeGreaterThanOrEqual(0);
    tf.dispose([Wt, Ws, t.A, t.B, s.A, s.B, out.A, out.B, expected, got]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it("'cols' is the mirror image of 'rows'", () => {
    const t = { A: rnd([9, 2], 7), B: rnd([2, 4], 8) };
    const s = { A: rnd([5, 2], 9), B: rnd([2, 4], 10) };
    const cols = passThroughStart('cols', t, s);
    const tT = { A: tf.transpose(t.B) as tf.Tensor2D, B: tf.transpose(t.A) as tf.Tensor2D };
    const sT = { A: tf.transpose(s.B) as tf.Tensor2D, B: tf.transpose(s.A) as tf.Tensor2D };
    const rows = passThroughStart('rows', tT, sT);
    close(tf.transpose(tf.matMul(cols.A, cols.B)), tf.matMul(rows.A, rows.B), 1e-5);
    expect(() => passThroughStart('cols', t, { A: rnd([5, 2], 1), B: rnd([2, 3], 2) })).toThrow(/shared axis/);
  });
});
