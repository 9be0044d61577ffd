// The output channel end to end, over real sockets: a coordinator with a probe split, a trained
// MLP source and an MLP target of another width. The target checks the probe's hash, tries the
// source's logits as a readout under the trust gate, the gate keeps the source, distillation
// takes over, and nothing leaks: the target's tensors stay flat once the run is over.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inputSpaceOf, loadShippedProbe } from '../client/data/probe-data.js';
import { loadDeviceData } from '../client/data/registry.js';
import { DeviceClient } from '../client/device.js';
import { buildModelFor } from '../client/models/registry.js';
import { Trainer } from '../client/trainer.js';
import { batchIterator } from '../client/data/dataset.js';
import { parseCoordinatorConfig, serve, type RunningCoordinator } from '../coordinator/index.js';
import { silentLogger } from '../shared/log.js';

let coord: RunningCoordinator;

beforeAll(async () => {
  coord = await serve(
    parseCoordinatorConfig({
      host: '127.0.0.1',
      port: 0,
      devices: [
        { id: 'src', token: 'source-token' },
        { id: 'tgt', token: 'target-token' },
      ],
      pairs: [{ id: 'p', source: { device: 'src', slot: 'out' }, target: { device: 'tgt', slot: 'out' }, tCycle: 4, k: 2, channel: 'output', gate: { decideAfter: 6 } }],
      probes: [{ dataset: 'mnist', seed: 0, offset: 6000, count: 200 }],
      statusEveryMs: 0,
    }),
    { logger: silentLogger(), backend: 'cpu' },
  );
});

afterAll(async () => {
  await coord?.close();
});

describe('output channel over sockets', () => {
  it('trial, early decision, then distillation; the target is told why at each step', async () => {
    const srcData = loadDeviceData({ name: 'mnist', trainSize: 1500, valSize: 0, testSize: 300, offset: 1000 }, 0);
    const srcModel = buildModelFor({ kind: 'mlp', hidden: [32] }, srcData, 1);
    // Pre-train the source, so that it knows something the target does not.
    const pre = new Trainer(srcModel, { optimizer: 'adam', lr: 3e-3 });
    const batches = batchIterator(srcData.train, 32, 2, { epochs: Infinity });
    for (let i = 0; i < 200; i++) {
      const b = batches.next().value!;
      pre.step(b.xs, b.ys);
      tf.dispose([b.xs, b.ys]);
    }
    pre.dispose();
    const tgtData = loadDeviceData({ name: 'mnist', labels: 100, testSize: 300 }, 0);
    const tgtModel = buildModelFor({ kind: 'mlp', hidden: [48] }, tgtData, 3);
    const common = { rank: 8, seed: 1, evalEvery: 0, logger: silentLogger(), inputSpace: inputSpaceOf('mnist'), loadProbe: loadShippedProbe, paceTimeoutMs: 10_000, lingerMs: 0 };
    const src = new DeviceClient({
      ...common, url: coord.url, deviceId: 'src', token: 'source-token', model: srcModel, data: srcData,
      trainer: { optimizer: 'adam', lr: 1e-3, batchSize: 32 }, maxSteps: 60,
      description: { name: 'src', architecture: 'mlp', task: 'mnist-digit', modality: 'image' },
    });
    const tgt = new DeviceClient({
      ...common, url: coord.url, deviceId: 'tgt', token: 'target-token', model: tgtModel, data: tgtData,
      trainer: { optimizer: 'adam', lr: 1e-3, batchSize: 32 }, maxSteps: 60,
      description: { name: 'tgt', architecture: 'mlp', task: 'mnist-digit', modality: 'image' },
    });
    const plans: string[] = [];
    const mid: { probe?: string; distilling?: string[] } = {};
    tgt.on('step', ({ step }) => {
      if (step === 55) Object.assign(mid, tgt.status().output);
    });
    tgt.on('plan', (p) => plans.push(p.pairs.map((x) => `${x.pairId}:${x.channel}`).join(',')));
    const srcRun = src.start();
    // The source trains first and has sent its logits before the target asks.
    await expect.poll(() => src.status().output.logitsSent, { timeout: 20_000 }).toBeGreaterThan(0);
    await srcRun;
    const before = tf.memory().numTensors;
    await tgt.start();
    const st = tgt.status();
    expect(plans.at(-1)).toBe('p:output');
    expect(mid.probe).toBe('mnist-s0-o6000-n200');
    expect(mid.distilling).toEqual(['p']);
    expect(st.output.trialsApplied).toBeGreaterThanOrEqual(6);
    expect(st.feedbackAcked).toBeGreaterThanOrEqual(6);
    const pair = coord.status().pairs.find((p) => p.id === 'p')!;
    expect(pair.channel).toBe('output');
    expect(pair.gate.decision).toBe('accepted');
    expect(st.output.kept).toEqual(['p']);
    expect(st.output.distilling).toEqual([]); // stopped: its distiller is released
    expect(st.rejects).toEqual({});
    expect(st.wire['teacher:p'].messages).toBeGreaterThan(6);
    expect(st.ignored).toEqual({});
    // Nothing the channel made outlives the run (the model itself stays with its owner).
    expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
    srcModel.dispose();
    tgtModel.dispose();
  }, 120_000);
});
