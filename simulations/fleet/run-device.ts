// One device of a fleet run: the experiment's device spec → its data, its model and a real
// DeviceClient, and, once it has trained all its steps, a DeviceReport. The in-process fleet and
// the device child process both use this, so a device is the same thing in both modes.
//
// The device trains with the project's one loop (client/training-loop.ts), so the target's curve
// matches trainLocally (simulations/baselines/local-training.ts) point for point: the same data
// (loadDeviceData(spec, seed)), the same model init and batch order (deviceSeed(seed, id)), test accuracy after step s when s % evalEvery === 0 (the device's own
// 'eval' events) and after the last step (measured here, after start() resolved: the model then
// holds exactly the weights of the last step), and each point's loss the mean training loss of
// the steps since the previous point.
import * as tf from '@tensorflow/tfjs';
import { evaluateAccuracy } from '../../client/data/dataset.js';
import { describeDataset, loadDeviceData } from '../../client/data/registry.js';
import { CurveRecorder } from '../../client/curve-recorder.js';
import { DeviceClient } from '../../client/device.js';
import { inputSpaceOf, loadShippedProbe } from '../../client/data/probe-data.js';
import { buildModelFor, type ModelSpec } from '../../client/models/registry.js';
import { silentLogger, type Logger } from '../../shared/log.js';
import { deviceSeed } from '../experiment/seeds.js';
import type { DeviceJob, DeviceProgress, DeviceReport } from './types.js';

/** A short human description of a zoo model spec, e.g. "mlp [128]" or "cnn conv [8,16] k3, dense [64]". */
export function describeModelSpec(spec: ModelSpec): string {
  switch (spec.kind) {
    case 'mlp':
      return `mlp [${(spec.hidden ?? [64]).join(',')}]`;
    case 'cnn':
      return `cnn conv [${(spec.filters ?? [8, 16]).join(',')}] k${spec.kernelSize ?? 3}, dense [${(spec.dense ?? [64]).join(',')}]`;
    default: {
      const { kind, ...rest } = spec as Record<string, unknown> & { kind: string };
      const parts = Object.entries(rest).map(([k, v]) => `${k} ${String(v)}`);
      return parts.length ? `${kind} (${parts.join(', ')})` : kind;
    }
  }
}

export interface PreparedDevice {
  readonly id: string;
  readonly steps: number;
  /** Train all steps; resolves with the report (the model is disposed afterwards). */
  run(): Promise<DeviceReport>;
  /** Ask the device to stop after its current step (run() then resolves or rejects). */
  stop(): void;
  /** Free the model if run() was never called. */
  dispose(): void;
}

export interface PrepareOptions {
  logger?: Logger;
  onProgress?: (p: DeviceProgress) => void;
  /** minimum ms between two progress callbacks (evaluations and the last step always report) */
  progressEveryMs?: number;
}

/**
 * Load the device's data, build its model and its DeviceClient (nothing connects yet). The tfjs
 * backend must already be initialised.
 */
export function prepareDevice(job: DeviceJob, opts: PrepareOptions = {}): PreparedDevice {
  const spec = job.device;
  const own = deviceSeed(job.seed, spec.id);
  const data = loadDeviceData(spec.dataset, job.seed);
  const described = describeDataset(spec.dataset);
  const model = buildModelFor(spec.model, data, own);
  let client: DeviceClient;
  try {
    client = new DeviceClient({
      url: job.url,
      deviceId: spec.id,
      token: job.token,
      model,
      data,
      rank: spec.rank,
      // A frozen device (the untrained-source control) never changes its weights.
      trainer: { optimizer: spec.optimizer, lr: spec.frozen ? 0 : spec.lr, batchSize: spec.batchSize },
      seed: own,
      maxSteps: spec.steps,
      evalEvery: spec.evalEvery,
      evalTest: job.evalTest,
      slowdown: spec.slowdown,
      logger: opts.logger ?? silentLogger(),
      description: { name: spec.id, architecture: describeModelSpec(spec.model), task: described.task, modality: described.modality },
      // Loopback: reconnect quickly should the connection drop.
      reconnect: { delayMs: 100, maxDelayMs: 2000 },
      paceTimeoutMs: job.paceTimeoutMs,
      inputSpace: inputSpaceOf(spec.dataset.name),
      loadProbe: loadShippedProbe,
    });
  } catch (err) {
    model.dispose();
    throw err;
  }

  // The device trains with the project's one loop; its 'step' and 'eval' events feed the one
  // curve recorder, so the curve is built exactly as LocalRun builds alone's.
  const curve = new CurveRecorder();
  let lastLoss = NaN;
  let lastAcc: number | undefined;
  let transfers = 0;
  let ratioSum = 0;
  let capBound = 0;
  let lastReport = 0;
  const every = opts.progressEveryMs ?? 100;
  const report = (step: number, force: boolean) => {
    if (!opts.onProgress) return;
    const now = performance.now();
    if (!force && now - lastReport < every) return;
    lastReport = now;
    opts.onProgress({ device: spec.id, step, steps: spec.steps, loss: lastLoss, acc: lastAcc, transfers });
  };
  const addPoint = (step: number, acc: number) => {
    curve.point(step, acc);
    lastAcc = acc;
  };

  client.on('step', ({ step, loss }) => {
    curve.addLoss(loss);
    lastLoss = loss;
    report(step, step === spec.steps);
  });
  client.on('eval', (ev) => {
    if (ev.testAcc !== undefined) addPoint(ev.step, ev.testAcc);
    else if (ev.valAcc !== undefined) lastAcc = ev.valAcc;
    report(ev.step, true);
  });
  client.on('transfer', (t) => {
    transfers += 1;
    ratioSum += t.weightNorm > 0 ? t.branchNorm / t.weightNorm : 0;
    if (t.scale < 1) capBound += 1;
  });

  let disposed = false;
  const dispose = () => {
    if (disposed) return;
    disposed = true;
    model.dispose();
  };

  return {
    id: spec.id,
    steps: spec.steps,
    stop: () => client.stop(),
    dispose,
    async run(): Promise<DeviceReport> {
      const t0 = performance.now();
      try {
        await client.start();
        const st = client.status();
        if (st.step !== spec.steps) throw new Error(`device "${spec.id}" stopped after ${st.step} of ${spec.steps} steps`);
        if (job.evalTest && curve.last?.step !== st.step) addPoint(st.step, evaluateAccuracy(model, data.test));
        if (job.evalTest && curve.length === 0) throw new Error(`device "${spec.id}" has an empty test split`);
        const wallMs = Math.round(performance.now() - t0);
        report(st.step, true);
        const { curve: points, finalAcc, bestAcc } = curve.summary();
        return {
          device: spec.id,
          steps: st.step,
          curve: points,
          finalAcc,
          bestAcc,
          wallMs,
          backend: tf.getBackend(),
          slicesSent: st.slicesSent,
          transfersReceived: st.transfersReceived,
          transfersApplied: st.transfersApplied,
          joined: st.joined,
          feedbackSent: st.feedbackSent,
          windowsAbandoned: st.windowsAbandoned,
          connections: st.connections,
          rejects: st.rejects,
          ignored: st.ignored,
          branchRatio: transfers > 0 ? ratioSum / transfers : undefined,
          capBound: transfers > 0 ? capBound / transfers : undefined,
          wire: st.wire,
          slots: client.slots(),
        };
      } finally {
        dispose();
      }
    },
  };
}

/** The device's payload byte counters (status().wire), when the client keeps them. */
