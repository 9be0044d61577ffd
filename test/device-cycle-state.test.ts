import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { FeedbackWindows, SliceMemory, TransferQueue, type GradientAccumulator } from '../client/target/index.js';
import { SliceSchedule } from '../client/slice-schedule.js';
import type { PlanPair } from '../shared/protocol/messages.js';
import { initBackend } from '../shared/tf/backend.js';

beforeAll(async () => {
  await initBackend();
});

/** An accumulator whose step t (1-based) has the gradient t·ones(m, n), mirroring Trainer's contract. */
class FakeAccumulator implements GradientAccumulator {
  private sums = new Map<string, { sum: number; steps: number }>();
  t = 0;
  constructor(private readonly shape: [number, number]) {}
  startAccumulating(layer: string): void {
    this.sums.set(layer, { sum: 0, steps: 0 });
  }
  takeAccumulated(layer: string): { G: tf.Tensor2D; steps: number } {
    const a = this.sums.get(layer);
    if (!a) throw new Error(`not accumulating ${layer}`);
    const out = { G: tf.fill(this.shape, a.sum) as tf.Tensor2D, steps: a.steps };
    a.sum = 0;
    a.steps = 0;
    return out;
  }
  stopAccumulating(layer: string): void {
    this.sums.delete(layer);
  }
  accumulating(): string[] {
    return [...this.sums.keys()];
  }
  step(): void {
    this.t += 1;
    for (const a of this.sums.values()) {
      a.sum += this.t;
      a.steps += 1;
    }
  }
}

function factors(m: number, n: number, r: number) {
  return { A: tf.ones([m, r]) as tf.Tensor2D, B: tf.ones([r, n]) as tf.Tensor2D };
}

describe('FeedbackWindows', () => {
  it('gives overlapping windows on one layer exactly the steps each spanned', () => {
    const acc = new FakeAccumulator([2, 3]);
    const w = new FeedbackWindows(acc);
    const before = tf.memory().numTensors;
    const step = (n: number) => {
      for (let i = 0; i < n; i++) {
        acc.step();
        w.afterStep(acc.t);
      }
    };
    w.openWindow({ pairId: 'p1', cycleId: 1, session: 's', layer: 'L', generated: factors(2, 3, 1), scale: 1, gate: 1, k: 3, openedAt: 0 });
    step(1); // t=1
    w.openWindow({ pairId: 'p2', cycleId: 7, session: 's', layer: 'L', generated: factors(2, 3, 1), scale: 0.5, gate: 1, k: 4, openedAt: 1 });
    w.openWindow({ pairId: 'p3', cycleId: 9, session: 's', layer: 'M', generated: factors(2, 3, 1), scale: 1, gate: 1, k: 1, openedAt: 1 });
    step(1); // t=2
    const r3 = w.takeReady();
    expect(r3.map((x) => x.pairId)).toEqual(['p3']);
    expect(r3[0].steps).toBe(1);
    expect(r3[0].G.dataSync()[0]).toBe(2); // only t=2 after opening at t=1
    expect(acc.accumulating()).toEqual(['L']); // M released
    step(1); // t=3
    const r1 = w.takeReady();
    expect(r1.map((x) => x.pairId)).toEqual(['p1']);
    expect(r1[0].steps).toBe(3);
    expect(Array.from(r1[0].G.dataSync())).toEqual(new Array(6).fill(1 + 2 + 3));
    expect(r1[0].meanLoss).toBeCloseTo(2);
    step(2); // t=4,5
    const r2 = w.takeReady();
    expect(r2.map((x) => x.pairId)).toEqual(['p2']);
    expect(r2[0].steps).toBe(4);
    expect(r2[0].G.dataSync()[5]).toBe(2 + 3 + 4 + 5);
    expect(r2[0].cycleId).toBe(7);
    expect(r2[0].scale).toBe(0.5);
    expect(acc.accumulating()).toEqual([]);
    for (const r of [...r1, ...r2, ...r3]) {
      r.G.dispose();
      r.generated.A.dispose();
      r.generated.B.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('abandoning one window keeps the others exact and frees its tensors', () => {
    const acc = new FakeAccumulator([1, 1]);
    const w = new FeedbackWindows(acc);
    const before = tf.memory().numTensors;
    w.openWindow({ pairId: 'a', cycleId: 1, session: 's', layer: 'L', generated: factors(1, 1, 1), scale: 1, gate: 1, k: 4, openedAt: 0 });
    acc.step();
    w.afterStep(0);
    w.openWindow({ pairId: 'b', cycleId: 2, session: 's', layer: 'L', generated: factors(1, 1, 1), scale: 1, gate: 1, k: 4, openedAt: 1 });
    acc.step();
    w.afterStep(0);
    expect(w.abandon('b')).toBe(true);
    acc.step();
    acc.step();
    w.afterStep(0);
    w.afterStep(0);
    const [a] = w.takeReady();
    expect(a.G.dataSync()[0]).toBe(1 + 2 + 3 + 4);
    a.G.dispose();
    a.generated.A.dispose();
    a.generated.B.dispose();
    // A new window for the same pair replaces the old one.
    w.openWindow({ pairId: 'a', cycleId: 3, session: 's', layer: 'L', generated: factors(1, 1, 1), scale: 1, gate: 1, k: 4, openedAt: 4 });
    w.openWindow({ pairId: 'a', cycleId: 4, session: 's', layer: 'L', generated: factors(1, 1, 1), scale: 1, gate: 1, k: 4, openedAt: 4 });
    expect(w.size).toBe(1);
    expect(w.get('a')!.cycleId).toBe(4);
    expect(w.abandonAll()).toBe(1);
    expect(acc.accumulating()).toEqual([]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('FeedbackWindows without training accumulation (held-out feedback)', () => {
  it('keeps no training sum for such a window, and leaves the others on the layer exact', () => {
    const acc = new FakeAccumulator([1, 1]);
    const w = new FeedbackWindows(acc);
    const before = tf.memory().numTensors;
    w.openWindow({ pairId: 'h', cycleId: 1, session: 's', layer: 'L', generated: factors(1, 1, 1), scale: 1, gate: 1, k: 2, openedAt: 0, accumulate: false });
    expect(acc.accumulating()).toEqual([]);
    acc.step();
    w.afterStep(0);
    w.openWindow({ pairId: 't', cycleId: 2, session: 's', layer: 'L', generated: factors(1, 1, 1), scale: 1, gate: 1, k: 2, openedAt: 1 });
    expect(acc.accumulating()).toEqual(['L']);
    acc.step();
    w.afterStep(0);
    const [h] = w.takeReady();
    expect(h.pairId).toBe('h');
    expect(h.steps).toBe(0); // G is supplied by the held-out sum instead
    expect(h.G.dataSync()[0]).toBe(0);
    acc.step();
    w.afterStep(0);
    const [t] = w.takeReady();
    expect(t.G.dataSync()[0]).toBe(2 + 3);
    expect(acc.accumulating()).toEqual([]);
    for (const c of [h, t]) tf.dispose([c.G, c.generated.A, c.generated.B]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('SliceMemory', () => {
  it('evicts the oldest slices beyond its per-slot limit and frees them', () => {
    const before = tf.memory().numTensors;
    const mem = new SliceMemory({ maxPerSlot: 2 });
    for (let id = 0; id < 5; id++) mem.remember({ sliceId: id, slot: id % 2 ? 'odd' : 'even', rank: 1, step: id, factors: factors(2, 2, 1) });
    // even: 0, 2, 4 → keeps 2, 4; odd: 1, 3 → keeps both
    expect(mem.get(0)).toBeUndefined();
    expect(mem.get(2)?.slot).toBe('even');
    expect(mem.get(4)?.step).toBe(4);
    expect(mem.get(1)?.slot).toBe('odd');
    expect(mem.size).toBe(4);
    expect(mem.evicted).toBe(1);
    expect(mem.byteSize).toBe(4 * 4 * 4);
    expect(tf.memory().numTensors).toBe(before + 8);
    mem.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('releases a slot\'s slices older than a transfer\'s, and respects a byte budget', () => {
    const before = tf.memory().numTensors;
    const mem = new SliceMemory({ maxBytes: 5 * 16 });
    for (let id = 0; id < 4; id++) mem.remember({ sliceId: id, slot: 'L', rank: 1, step: id, factors: factors(2, 2, 1) });
    mem.remember({ sliceId: 4, slot: 'M', rank: 1, step: 4, factors: factors(2, 2, 1) });
    expect(mem.release('L', 2)).toBe(2);
    expect([0, 1, 2, 3, 4].map((id) => mem.get(id) !== undefined)).toEqual([false, false, true, true, true]);
    expect(mem.evicted).toBe(0);
    // 16 bytes each, budget 80: adding 3 more evicts the 1 oldest (2).
    for (let id = 5; id < 8; id++) mem.remember({ sliceId: id, slot: 'L', rank: 1, step: id, factors: factors(2, 2, 1) });
    expect(mem.get(2)).toBeUndefined();
    expect(mem.get(3)).toBeDefined();
    expect(mem.size).toBe(5);
    expect(mem.evicted).toBe(1);
    mem.clear();
    expect(mem.size).toBe(0);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('SliceSchedule', () => {
  const pair = (pairId: string, slot: string, tCycle: number, rank = 4, role: 'source' | 'target' = 'target'): PlanPair => ({
    pairId, role, slot, peerDevice: 'x', peerSlot: 'y', rank, tCycle, k: 2, tau: 0.5,
  });

  it('is due every tCycle steps per pair, one slice per slot at the largest rank of its pairs', () => {
    const s = new SliceSchedule();
    s.setPlan([pair('p1', 'L', 3), pair('p2', 'L', 2), pair('p3', 'M', 5, 4, 'source'), pair('p4', 'L', 3, 6)], 10, false);
    const at10 = s.due(10);
    expect(at10.map((d) => [d.slot, d.rank, d.pairIds])).toEqual([
      ['L', 6, ['p1', 'p2', 'p4']],
      ['M', 4, ['p3']],
    ]);
    expect(s.rankOf('L')).toBe(6);
    expect(s.due(11)).toEqual([]);
    expect(s.due(12).map((d) => [d.rank, d.pairIds])).toEqual([[6, ['p2']]]);
    expect(s.due(13).map((d) => d.pairIds)).toEqual([['p1', 'p4']]);
    // A plan update in the same session keeps the phase of unchanged pairs; new ones are due at once.
    s.setPlan([pair('p1', 'L', 3), pair('p5', 'M', 4)], 14, true);
    expect(s.due(14).map((d) => d.pairIds)).toEqual([['p5']]);
    expect(s.due(16).map((d) => d.pairIds)).toEqual([['p1']]);
    s.clear();
    expect(s.due(100)).toEqual([]);
  });
});

describe('TransferQueue', () => {
  it('keeps only the newest unapplied transfer of a pair', () => {
    const q = new TransferQueue();
    const t = (pairId: string, cycleId: number) => ({
      session: 's', pairId, cycleId, sliceId: 0, slot: 'L', adapterStep: 0, gate: 1,
      A: { values: new Float32Array(1), shape: [1, 1] }, B: { values: new Float32Array(1), shape: [1, 1] },
    });
    q.push(t('a', 1));
    q.push(t('b', 2));
    q.push(t('a', 3));
    expect(q.drain().map((x) => [x.pairId, x.cycleId])).toEqual([['b', 2], ['a', 3]]);
    expect(q.size).toBe(0);
  });
});
