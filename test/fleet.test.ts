// The fleet runner with the real coordinator and real device clients, all in this process, on tiny
// real-MNIST devices: an experiment gives every condition with sane curves; a fleet target with
// no pairs reproduces the local 'alone' curve exactly (what makes alone vs mergenet honest); and a
// pair with held-out feedback reaches the device through its plan and is honoured.
import { mkdtempSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import type { Experiment } from '../simulations/experiment/schema.js';
import { tinyExperiment, type TinyShape } from './helpers/experiments.js';
import { runBaseline } from '../simulations/baselines/index.js';
import { fleetConditionRun, runExperiment, runFleet, targetPairBytes } from '../simulations/experiment/run-experiment.js';
import { DeviceClient, type FeedbackEvent } from '../client/device.js';
import { loadDeviceData } from '../client/data/registry.js';
import { buildModelFor } from '../client/models/registry.js';
import { parseCoordinatorConfig, serve } from '../coordinator/index.js';
import { silentLogger } from '../shared/log.js';
import type { PlanMsg } from '../shared/protocol/messages.js';

const SHAPE: TinyShape = { name: 'tiny-fleet', steps: 45, targetEvalEvery: 10, sourceEvalEvery: 20, baselines: ['alone', 'mergenet', 'noise'], mode: 'inprocess' };
const tiny = (over: Record<string, unknown> = {}): Experiment => tinyExperiment(SHAPE, over);

const dirs: string[] = [];
beforeAll(async () => {
  await initBackend('wasm', () => {});
});
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('in-process fleet', () => {
  it('a fleet target with no pairs reproduces the local alone curve exactly', async () => {
    const e = tiny();
    for (const seed of [0, 3]) {
      const alone = await runBaseline('alone', e, seed);
      const fleet = await runFleet(e, seed, { mode: 'inprocess', pairMode: 'real', pairs: [], label: `no pairs seed ${seed}` });
      const t = fleet.devices.target;
      // steps 10, 20, 30, 40 (evalEvery) and 45 (the last step), with the same losses and accuracies
      expect(t.curve.map((p) => p.step)).toEqual([10, 20, 30, 40, 45]);
      expect(t.curve).toEqual(alone.curve);
      expect(t.finalAcc).toBe(alone.finalAcc);
      expect(t.transfersApplied).toBe(0);
      expect(fleet.coordinator.totals.cyclesStarted).toBe(0);
    }
  }, 30_000);

  it('runs a tiny experiment: every condition, sane curves, cycles and bytes counted', async () => {
    const out = mkdtempSync(join(tmpdir(), 'fleet-'));
    dirs.push(out);
    const e = tiny();
    const res = await runExperiment(e, { out });
    expect(res.failures).toEqual([]);
    expect(res.result.runs.map((r) => r.condition)).toEqual(['alone', 'mergenet', 'noise']);
    expect(res.result.mode).toBe('inprocess');
    for (const r of res.result.runs) {
      expect(r.device).toBe('target');
      expect(r.curve.map((p) => p.step)).toEqual([10, 20, 30, 40, 45]);
      for (const p of r.curve) {
        expect(p.acc).toBeGreaterThanOrEqual(0);
        expect(p.acc).toBeLessThanOrEqual(1);
        expect(Number.isFinite(p.loss)).toBe(true);
      }
      expect(r.finalAcc).toBe(r.curve.at(-1)!.acc);
      expect(r.finalAcc).toBeGreaterThan(0.38); // measured 0.415–0.44 after 45 steps on 100 digits (chance 0.1)
    }
    const alone = res.result.runs[0];
    expect(alone.bytesSent).toBe(0);
    for (const r of res.result.runs.slice(1)) {
      expect(r.extra!.cycles).toBeGreaterThanOrEqual(3);
      expect(r.extra!.updates).toBeGreaterThanOrEqual(2);
      expect(r.extra!.updates).toBeLessThanOrEqual(r.extra!.cycles);
      expect(r.bytesSent).toBeGreaterThan(0);
      // rank 4 of a 784×16 slot: 4·800 floats per message instead of 12 544
      expect(r.bytesSent / r.bytesFullWeights).toBeGreaterThan(0.2);
      expect(r.bytesSent / r.bytesFullWeights).toBeLessThan(0.3);
    }
    expect(existsSync(res.paths!.html)).toBe(true);
    expect(res.markdown).toContain('| mergenet');
  }, 40_000);

  it('a trust gate shut from the start (θ → −∞) leaves the target bit-identical to alone, through every cycle', async () => {
    const e = tiny({ pairs: [{ source: { device: 'source', slot: 'dense_0' }, target: { device: 'target', slot: 'dense_0' }, rank: 4, tCycle: 6, k: 3, gate: { init: -1e4, guard: 'none' } }] });
    const alone = await runBaseline('alone', e, 0);
    const fleet = await runFleet(e, 0, { mode: 'inprocess', pairMode: 'real', label: 'gate shut' });
    const t = fleet.devices.target;
    // Cycles ran (slices, transfers with g = 0, held-out feedback, gate steps)...
    expect(t.transfersApplied).toBeGreaterThanOrEqual(5);
    expect(t.feedbackSent).toBeGreaterThanOrEqual(5);
    const pair = fleet.coordinator.pairs[0];
    expect(pair.updates).toBeGreaterThanOrEqual(5);
    expect(pair.gate.value).toBe(0);
    // ...and changed nothing: every curve point and the final accuracy are alone's, bit for bit.
    expect(t.curve).toEqual(alone.curve);
    expect(t.finalAcc).toBe(alone.finalAcc);
  }, 30_000);

  it('starts the target only after the sources trained sourceWarmup steps', async () => {
    const e = tiny({ sourceWarmup: 25 });
    let sourceStep = 0;
    let sourceAtTargetStart: number | undefined;
    const fleet = await runFleet(e, 0, {
      mode: 'inprocess',
      pairMode: 'real',
      label: 'warmup',
      onProgress: (p) => {
        if (p.device === 'source') sourceStep = Math.max(sourceStep, p.step);
        else if (sourceAtTargetStart === undefined) sourceAtTargetStart = sourceStep;
      },
    });
    expect(sourceAtTargetStart).toBeGreaterThanOrEqual(25);
    expect(fleet.devices.target.steps).toBe(45);
    expect(fleet.devices.source.steps).toBe(45);
  }, 30_000);

  it('counts bytes from what the devices sent and received', async () => {
    const e = tiny();
    const fleet = await runFleet(e, 1, { mode: 'inprocess', pairMode: 'real', label: 'bytes' });
    const t = fleet.devices.target;
    const s = fleet.devices.source;
    const pairId = 'source.dense_0--target.dense_0';
    const transfers = t.wire[`transfer:${pairId}`];
    const feedback = t.wire[`feedback:${pairId}`];
    expect(transfers.messages).toBe(t.transfersReceived);
    expect(feedback.messages).toBe(t.feedbackSent);
    expect(t.wire['slice:dense_0'].messages).toBe(t.slicesSent);
    // each factor message carries 4·4·(784 + 16) bytes of floats plus a small header
    const floatBytes = 4 * 4 * (784 + 16);
    expect(transfers.bytes / transfers.messages).toBeGreaterThan(floatBytes);
    expect(transfers.bytes / transfers.messages).toBeLessThan(floatBytes + 400);
    const b = targetPairBytes(e, fleet);
    expect(b.sent).toBe(t.wire['slice:dense_0'].bytes + s.wire['slice:dense_0'].bytes + transfers.bytes + feedback.bytes);
    const run = fleetConditionRun(e, 'mergenet', 1, fleet);
    expect(run.bytesSent).toBe(b.sent);
    expect(run.extra!.cycles).toBe(fleet.coordinator.pairs[0].cyclesStarted);
  }, 30_000);
});

describe('held-out feedback', () => {
  it('reaches the target through its plan, and the device computes G on its val split', async () => {
    const config = parseCoordinatorConfig({
      devices: [
        { id: 'src', token: 'ts' },
        { id: 'tgt', token: 'tt' },
      ],
      pairs: [{ id: 'p', source: { device: 'src', slot: 'dense_0' }, target: { device: 'tgt', slot: 'dense_0' }, rank: 4, tCycle: 4, k: 2, feedback: 'heldout', gate: { guard: 'none' } }],
      statusEveryMs: 0,
    });
    expect(config.pairs[0].feedback).toBe('heldout');
    const coord = await serve(config, { logger: silentLogger() });
    try {
      const make = (id: string, token: string, offset: number, valSize: number, maxSteps: number | undefined, paceTimeoutMs?: number) => {
        const data = loadDeviceData({ name: 'mnist', trainSize: 100, valSize, testSize: 100, offset }, 0);
        return new DeviceClient({
          url: coord.url,
          deviceId: id,
          token,
          model: buildModelFor({ kind: 'mlp', hidden: [12] }, data, offset + 1),
          data,
          rank: 4,
          trainer: { optimizer: 'adam', lr: 1e-3, batchSize: 16 },
          seed: offset + 1,
          maxSteps,
          evalEvery: 0,
          slowdown: 2,
          paceTimeoutMs,
          description: { name: id, architecture: 'mlp', task: 'digit', modality: 'image' },
        });
      };
      // The source trains until the target is done (it must not finish before the target has
      // registered), and the target is paced, so its cycles happen however fast the machine is.
      const src = make('src', 'ts', 300, 0, undefined);
      const tgt = make('tgt', 'tt', 0, 64, 60, 10_000);
      const plans: PlanMsg[] = [];
      const feedbacks: FeedbackEvent[] = [];
      tgt.on('plan', (p) => plans.push(p));
      tgt.on('feedback', (f) => feedbacks.push(f));
      // The source registers first, so the target's very first plan already holds the pair (a
      // 60-step target can otherwise finish before a later plan reaches it).
      const registered = new Promise<void>((resolve) => src.once('plan', () => resolve()));
      const srcDone = src.start();
      await registered;
      await tgt.start();
      src.stop();
      await srcDone;
      expect(plans.at(-1)!.pairs).toEqual([expect.objectContaining({ pairId: 'p', role: 'target', feedback: 'heldout' })]);
      expect(feedbacks.length).toBeGreaterThanOrEqual(2);
      for (const f of feedbacks) {
        expect(f.feedback).toBe('heldout');
        expect(f.steps).toBe(2);
        expect(f.gANorm).toBeGreaterThan(0);
      }
      expect(coord.status().pairs[0].updates).toBeGreaterThanOrEqual(1);
    } finally {
      await coord.close();
    }
  }, 30_000);
});
