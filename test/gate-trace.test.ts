// The trust gate's trace: fixed columns per pair, thinned by halving when full, and left out of the
// dashboard feed's once-a-second snapshots (it draws none) while /status keeps it.
import { describe, expect, it } from 'vitest';
import { GateTrace } from '../coordinator/gate/gate-trace.js';
import type { GateTracePoint } from '../coordinator/gate/trust-gate.js';

describe('GateTrace', () => {
  it('returns the points as pushed, leaving absent values out', () => {
    const t = new GateTrace(8);
    const pts: GateTracePoint[] = [
      { update: 1, gate: 0.5, gateGrad: -0.25 },
      { update: 2, gate: 0.625, gateGrad: 0.1, sourceGrad: 0.3, trainAcc: 0.75, beatShadows: true },
      { update: 3, gate: 0.6, beatShadows: false },
    ];
    for (const p of pts) t.push(p);
    expect(t.length).toBe(3);
    expect(t.points()).toEqual(pts);
    // fresh objects: a caller that edits them does not edit the trace
    t.points()[0].gate = 9;
    expect(t.points()[0].gate).toBe(0.5);
  });

  it('keeps every other point when full, so a long run keeps its start and its whole shape', () => {
    const t = new GateTrace(512);
    for (let u = 0; u <= 512; u++) t.push({ update: u, gate: u / 1000, gateGrad: u % 3 === 0 ? undefined : -u });
    // 512 points full, then the 513th: the even-indexed 256 stay, then it is added
    const pts = t.points();
    expect(pts).toHaveLength(257);
    expect(pts.map((p) => p.update)).toEqual(Array.from({ length: 257 }, (_, i) => 2 * i));
    expect(pts[3]).toEqual({ update: 6, gate: 0.006 });
    expect(pts[4]).toEqual({ update: 8, gate: 0.008, gateGrad: -8 });
    for (let u = 513; u < 5000; u++) t.push({ update: u, gate: 0.5 });
    expect(t.length).toBeLessThanOrEqual(512);
    expect(t.points()[0].update).toBe(0);
    expect(t.points().at(-1)!.update).toBe(4999);
  });

  it('refuses a capacity it cannot halve', () => {
    expect(() => new GateTrace(1)).toThrow('capacity must be an integer ≥ 2');
  });
});
