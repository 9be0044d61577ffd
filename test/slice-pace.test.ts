// The slice pace (coordinator/pacer.ts, slice-pacing.ts; client/slice-schedule.ts): a coordinator
// that sheds cycles asks its devices to send slices further apart — from the capacity it measured,
// never below what it saw started, lengthening gently while the backlog drains, shortening towards
// the workers' capacity once nothing is shed, and off again below its floor. Announcements only
// on a change worth a fleet's traffic. The device side holds due slices back by the pace, with
// each slot's first paced slice drawn within one interval.
import { describe, expect, it } from 'vitest';
import { SliceSchedule } from '../client/slice-schedule.js';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { Pacer } from '../coordinator/pacer.js';
import { SlicePacing } from '../coordinator/slice-pacing.js';
import type { PlanPair } from '../shared/protocol/messages.js';

const W = 2000;
/** A pacer whose first step is not limited (firstStep has its own test). */
const pacer = (opts: ConstructorParameters<typeof Pacer>[0] = {}) => new Pacer({ firstStep: 100, ...opts });

describe('Pacer', () => {
  it('asks for nothing while nothing is shed', () => {
    const p = pacer();
    for (let i = 0; i < 5; i++) expect(p.observe({ ms: W, slices: 100, shed: 0, started: 100, activePairs: 50, busy: 0.5 }).intervalMs).toBe(0);
  });

  it('saturated: the interval at which the active pairs offer `headroom` of what started', () => {
    const p = pacer({ headroom: 0.8 });
    // 500 pairs; 1000 target slices in 2 s, 40 started (20/s), the rest shed
    const d = p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500 });
    expect(d.why).toBe('saturated');
    expect(d.capacity).toBe(20);
    // 500 pairs × 1 slice per interval = 0.8 × 20 cycles/s → 31.25 s
    expect(d.intervalMs).toBe(31_250);
  });

  it('once pacing, a saturated window lengthens the interval by ×1.25 to ×1.5, not by what a backlog suggests', () => {
    const p = pacer({ headroom: 0.8, maxIntervalMs: 1e9 });
    p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500 }); // 31 250
    // the backlog of unpaced slices: almost nothing starts
    expect(p.observe({ ms: W, slices: 1000, shed: 999, started: 1, activePairs: 500 }).intervalMs).toBe(Math.round(31_250 * 1.5));
    // shedding at about the right interval: ×1.25 at least
    const q = pacer({ headroom: 0.8 });
    q.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500 });
    expect(q.observe({ ms: W, slices: 40, shed: 8, started: 32, activePairs: 500 }).intervalMs).toBe(Math.round(31_250 * 1.25));
  });

  it('shedding beside an event loop with time to spare holds the pace (it costs little); beside a busy one it lengthens it', () => {
    const p = pacer({ headroom: 0.8, loopHigh: 0.8 });
    expect(p.observe({ ms: W, slices: 1000, shed: 400, started: 600, activePairs: 500, busy: 0.9, loop: 0.5 })).toMatchObject({ intervalMs: 0, why: 'hold' });
    expect(p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500, loop: 0.97 })).toMatchObject({ intervalMs: 31_250, why: 'saturated' });
    expect(p.observe({ ms: W, slices: 40, shed: 8, started: 32, activePairs: 500, busy: 1, loop: 0.3 })).toMatchObject({ intervalMs: 31_250, why: 'hold' });
  });

  it('the first pace is at most firstStep times the interval the pairs offered at (a first window may be a start-up transient)', () => {
    const p = new Pacer({ headroom: 0.8, firstStep: 8 });
    // 500 pairs offered 1000 slices in 2 s: every 1 s each; the fit (31.25 s) is cut to 8 s
    expect(p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500, loop: 1 }).intervalMs).toBe(8000);
    // still saturated: ×1.5 per window from there
    expect(p.observe({ ms: W, slices: 250, shed: 200, started: 50, activePairs: 500, loop: 1 }).intervalMs).toBe(12_000);
  });

  it('never asks for more than maxIntervalMs, nor less than minIntervalMs', () => {
    const p = pacer({ maxIntervalMs: 10_000, minIntervalMs: 500 });
    expect(p.observe({ ms: W, slices: 1000, shed: 999, started: 1, activePairs: 500 }).intervalMs).toBe(10_000);
    const q = pacer({ minIntervalMs: 500 });
    // 2 pairs, 100 started/s: the fit is 2/(0.85·100) s = 24 ms, below the floor
    expect(q.observe({ ms: W, slices: 400, shed: 200, started: 200, activePairs: 2 }).intervalMs).toBe(500);
  });

  it('quiet: shortens towards the capacity the busiest part shows (workers or event loop), by at most ÷4 per window, and turns off below the floor', () => {
    const p = pacer({ headroom: 0.8, minIntervalMs: 1000 });
    p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500 }); // 20/s: 31 250 ms
    // paced: 32 slices, all started (16/s), workers 25 % busy, loop 10 %: 64/s when always busy,
    // smoothed with the saturated 20/s: 42
    const d = p.observe({ ms: W, slices: 32, shed: 0, started: 32, activePairs: 500, busy: 0.25, loop: 0.1 });
    expect(d).toMatchObject({ why: 'probe', capacity: 42, intervalMs: 14_881 });
    // the event loop is the busier part now (60 %): 32/s / 0.6 = 53.3, smoothed 47.7
    expect(p.observe({ ms: W, slices: 64, shed: 0, started: 64, activePairs: 500, busy: 0.5, loop: 0.6 }).intervalMs).toBe(13_112);
    // a capacity that says longer (20/s at 95 %): quiet, so it holds
    expect(p.observe({ ms: W, slices: 80, shed: 0, started: 80, activePairs: 500, busy: 0.3, loop: 0.95 }).why).toBe('hold');
    expect(p.intervalMs).toBe(13_112);
    // with 5 pairs the fit is far below the floor: ÷4 per window, then off
    const seen: number[] = [];
    for (let i = 0; i < 2; i++) seen.push(p.observe({ ms: W, slices: 100, shed: 0, started: 100, activePairs: 5, busy: 0.8 }).intervalMs);
    expect(seen).toEqual([3278, 0]);
  });

  it('without a busy time, quiet windows probe blindly (×probeFactor after quietWindows)', () => {
    const p = pacer({ headroom: 0.8, quietWindows: 2, probeFactor: 0.5 });
    p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500 }); // 31 250
    expect(p.observe({ ms: W, slices: 32, shed: 0, started: 32, activePairs: 500 }).intervalMs).toBe(31_250);
    expect(p.observe({ ms: W, slices: 32, shed: 0, started: 32, activePairs: 500 }).intervalMs).toBe(15_625);
  });

  it('a window with too few slices decides nothing; long silence lifts the pace', () => {
    const p = pacer({ headroom: 0.8, minSlices: 8, quietWindows: 1 });
    p.observe({ ms: W, slices: 1000, shed: 960, started: 40, activePairs: 500 });
    expect(p.observe({ ms: W, slices: 5, shed: 5, started: 0, activePairs: 500 }).why).toBe('idle');
    expect(p.intervalMs).toBe(31_250);
    for (let i = 0; i < 3; i++) expect(p.observe({ ms: W, slices: 0, shed: 0, started: 0, activePairs: 500 }).intervalMs).toBe(31_250);
    expect(p.observe({ ms: W, slices: 0, shed: 0, started: 0, activePairs: 500 }).intervalMs).toBe(0);
  });

  it('refuses a floor above its ceiling', () => {
    expect(() => new Pacer({ minIntervalMs: 2000, maxIntervalMs: 1000 })).toThrow(/maxIntervalMs/);
  });
});

describe('SlicePacing', () => {
  it('announces only a change worth it, and measures busy time per window and worker', () => {
    const sp = new SlicePacing(0, { firstStep: 100, headroom: 0.8, announceChange: 0.15, minIntervalMs: 1000 });
    const window = (slices: number, shed: number, started: number) => {
      for (let i = 0; i < slices; i++) sp.countSlice();
      for (let i = 0; i < shed; i++) sp.countShed();
      for (let i = 0; i < started; i++) sp.countStarted();
    };
    window(1000, 960, 40);
    const first = sp.tick(2000, 500, 0, 2);
    expect(first.announce).toBe(31_250);
    expect(sp.intervalMs).toBe(31_250);
    // quiet, workers 25 % busy (2 workers × 2 s × 0.25 = 1000 ms): 64/s, smoothed 42: announced
    window(32, 0, 32);
    const t = sp.tick(4000, 500, 1000, 2);
    expect(t).toMatchObject({ capacity: 42, announce: 14_881 });
    // a change under 15 % (25/s at 50 % busy → 50/s, smoothed 46: 13 587 ms) is kept to itself
    window(50, 0, 50);
    const small = sp.tick(6000, 500, 1000 + 2 * 2000 * 0.5, 2);
    expect(small.intervalMs).toBe(13_587);
    expect(small.announce).toBeUndefined();
    expect(sp.intervalMs).toBe(14_881);
    // the event loop's utilization counts where it is the busier part (100 %: 30/s, smoothed 38)
    window(60, 0, 60);
    expect(sp.tick(8000, 500, 3000 + 2 * 2000 * 0.1, 2, 1)).toMatchObject({ why: 'hold', capacity: 38 });
  });
});

describe('SliceSchedule with a pace', () => {
  const plan = (pairId: string, slot: string, tCycle: number): PlanPair => ({ pairId, role: 'target', slot, peerDevice: 'x', peerSlot: 'y', rank: 2, tCycle, k: 1, tau: 0.5 });

  it('holds due slices back until the pace allows, keeping their pairs due, then spaces them by the interval', () => {
    const s = new SliceSchedule();
    s.setPlan([plan('p1', 'a', 1), plan('p2', 'b', 1)], 0, false);
    expect(s.due(1, 0).map((d) => d.slot)).toEqual(['a', 'b']);
    // each slot's next slice drawn within one interval: a at 0.25·1000, b at 0.75·1000
    const draws = [0.25, 0.75];
    s.setPace(1000, 100, () => draws.shift()!);
    expect(s.pace).toBe(1000);
    expect(s.due(2, 200)).toEqual([]);
    expect(s.deferred).toBe(2);
    // a's step comes at 400, after its time (350)
    expect(s.due(3, 400).map((d) => d.slot)).toEqual(['a']);
    expect(s.due(4, 900).map((d) => d.slot)).toEqual(['b']);
    // a again one interval after its scheduled time (350), not after its step (400)
    expect(s.due(5, 1340)).toEqual([]);
    expect(s.due(6, 1360).map((d) => d.slot)).toEqual(['a']);
    // slots that fell more than an interval behind restart their schedule at the present: one
    // more slice at once at most, then one interval apart again
    expect(s.due(7, 5000).map((d) => d.slot)).toEqual(['a', 'b']);
    expect(s.due(8, 5100).map((d) => d.slot)).toEqual(['a', 'b']);
    expect(s.due(9, 5200)).toEqual([]);
    expect(s.due(10, 5990)).toEqual([]);
    expect(s.due(11, 6000).map((d) => d.slot)).toEqual(['a', 'b']);
    // pace 0: every step's due slices again
    s.setPace(0, 7000, () => 0.5);
    expect(s.due(12, 7000).map((d) => d.slot)).toEqual(['a', 'b']);
    expect(s.due(13, 7001).map((d) => d.slot)).toEqual(['a', 'b']);
  });

  it('a pair held back by the pace goes at the first step after; tCycle still counts from there', () => {
    const s = new SliceSchedule();
    s.setPlan([plan('p1', 'a', 3)], 0, false);
    expect(s.due(0, 0).length).toBe(1); // next due at step 3
    s.setPace(1000, 0, () => 1);
    expect(s.due(3, 500)).toEqual([]);
    expect(s.due(4, 999)).toEqual([]);
    expect(s.due(5, 1000).map((d) => d.pairIds)).toEqual([['p1']]);
    // next due at step 8 by tCycle, and not before 2000 ms by the pace
    expect(s.due(8, 1500)).toEqual([]);
    expect(s.due(9, 2000).length).toBe(1);
    // steps slower than the pace: the pace does not hold anything back
    expect(s.due(12, 4500).length).toBe(1);
    expect(s.due(15, 7000).length).toBe(1);
  });

  it('a new session (clear) forgets the pace', () => {
    const s = new SliceSchedule();
    s.setPlan([plan('p1', 'a', 1)], 0, false);
    s.setPace(1000, 0, () => 1);
    s.clear();
    expect(s.pace).toBe(0);
    s.setPlan([plan('p1', 'a', 1)], 0, false);
    expect(s.due(1, 1).length).toBe(1);
  });
});

describe('throughput.pace config', () => {
  it('defaults to on, every 2 s, and checks its fields', () => {
    const base = { devices: [{ id: 'a', token: 'x' }] };
    expect(parseCoordinatorConfig(base).throughput.pace).toEqual({ enabled: true, windowMs: 2000 });
    expect(parseCoordinatorConfig({ ...base, throughput: { pace: { enabled: false } } }).throughput.pace.enabled).toBe(false);
    expect(() => parseCoordinatorConfig({ ...base, throughput: { pace: { windowMs: 10 } } })).toThrow(/throughput\.pace\.windowMs/);
    expect(() => parseCoordinatorConfig({ ...base, throughput: { pace: { every: 1 } } })).toThrow(/throughput\.pace/);
  });
});
