// The output channel of a device (docs/DESIGN.md §10, docs/PROTOCOL.md §4.10–4.13): pairs of models
// that share an input space but no slot axis exchange the source's logits on a public probe split
// P instead of weight slices. Transport-free; the device calls it between steps.
// - As a source: every tCycle steps, its log-probabilities on P (`logits`).
// - As a target: every tCycle steps a `teacher_request`; a `teacher` in phase 'trial' becomes the
//   readout swap of the classifier slot under the pair's trust gate (readout-trial.ts), and k steps
//   later the held-out gradient along it goes back as `teacher_feedback`; once the gate accepted
//   the source, 'distill' teachers feed the distillation term (probe-distiller.ts) and the tried
//   readout is kept in the weight.
import * as tf from '@tensorflow/tfjs';
import { tensorToWire } from '../../shared/codec/tensor-codec.js';
import type { LogitsMsg, Metrics, PlanMsg, PlanPair, ProbeDesc, TeacherFeedbackMsg, TeacherRequestMsg } from '../../shared/protocol/messages.js';
import { teacherFeedbackSchema } from '../../shared/protocol/messages.js';
import { featureSize, splitTensors, type Batch, type Split } from '../data/dataset.js';
import type { KnowledgeBranches } from '../knowledge-branch.js';
import type { Trainer } from '../trainer.js';
import { probeHash } from '../probe/probe-hash.js';
import { PROB_EPSILON } from '../trainer.js';
import { ProbeDistiller } from './probe-distiller.js';
import { ReadoutFitter } from './readout-trial.js';
import type { RidgeFit } from '../../shared/math/ridge.js';

/** How a device gets a probe split's examples: it already has them (a shipped corpus). */
export type ProbeLoader = (desc: ProbeDesc) => { x: Float32Array; exampleShape: number[] } | Promise<{ x: Float32Array; exampleShape: number[] }>;

export interface QueuedTeacher {
  session: string;
  pairId: string;
  cycleId: number;
  phase: 'trial' | 'distill';
  gate: number;
  sourceStep: number;
  values: Float32Array;
  classes: number;
}

interface TrialWindow {
  pairId: string;
  cycleId: number;
  session: string;
  layer: string;
  openedAt: number;
  k: number;
  scale: number;
  delta: tf.Tensor2D;
  branchRatio?: number;
  /** the ridge fit behind the swap: its accuracy on the held-out split goes with the feedback */
  readout: RidgeFit;
}

/** The output channel's part of the device status. */
export interface OutputChannelStatus {
  probe?: string;
  probeProblem?: string;
  logitsSent: number;
  requestsSent: number;
  trialsApplied: number;
  /** pairs whose distillation term is on */
  distilling: string[];
  /** pairs whose tried readout was kept in the weight */
  kept: string[];
}

export interface OutputChannelEvents {
  ignore(reason: string, detail: string, pairId?: string): void;
  log(level: 'info' | 'warn', obj: object, msg: string): void;
}

export interface OutputChannelOptions {
  model: tf.LayersModel;
  trainer: Trainer;
  branches: KnowledgeBranches;
  /** the held-out split the trial's gradient is taken on (the training split when it is empty) */
  heldout: Split;
  train: Split;
  seed: number;
  loadProbe?: ProbeLoader;
  events: OutputChannelEvents;
}

function outputPairs(plan: PlanMsg | undefined, role: 'source' | 'target'): PlanPair[] {
  return (plan?.pairs ?? []).filter((p) => p.channel === 'output' && p.role === role);
}

export class OutputChannel {
  /** the probe split checked against the plan's hash, in the model's example shape */
  private probe?: { desc: ProbeDesc; x: tf.Tensor };
  private probeLoading?: string;
  /** why the probe is unusable (hash mismatch, no loader), once known */
  probeProblem?: string;
  private fitter?: ReadoutFitter;
  private readonly queue: QueuedTeacher[] = [];
  private readonly windows = new Map<string, TrialWindow>();
  private readonly distillers = new Map<string, ProbeDistiller>();
  private heldoutBatch?: Batch;
  private nextRequestId = 0;
  /** counters for status */
  logitsSent = 0;
  requestsSent = 0;
  trialsApplied = 0;
  distillTeachers = 0;
  /** pairs whose tried readout was kept when distillation took over */
  readonly kept = new Set<string>();

  constructor(private readonly o: OutputChannelOptions) {}

  get ready(): boolean {
    return this.probe !== undefined;
  }

  get probeId(): string | undefined {
    return this.probe?.desc.id;
  }

  get probeCount(): number {
    return this.probe?.desc.count ?? 0;
  }

  /** The model's number of classes (the width of its logits). */
  get classes(): number {
    const s = this.o.model.outputs[0].shape;
    return s[s.length - 1] as number;
  }

  /**
   * The plan named a probe split: load and check it once (asynchronously: the hash is WebCrypto).
   * Until it is checked, this device neither sends logits nor asks for a teacher.
   */
  setProbe(desc: ProbeDesc | undefined): void {
    if (!desc) return;
    const key = `${desc.id}:${desc.sha256}`;
    if ((this.probe && `${this.probe.desc.id}:${this.probe.desc.sha256}` === key) || this.probeLoading === key) return;
    if (!this.o.loadProbe) {
      this.probeProblem = `the plan names probe split "${desc.id}", but this device has no way to load it`;
      this.o.events.log('warn', { probe: desc.id }, this.probeProblem);
      return;
    }
    this.probeLoading = key;
    void (async () => {
      try {
        const got = await this.o.loadProbe!(desc);
        const hash = await probeHash(got.x);
        if (hash !== desc.sha256) {
          this.probeProblem = `probe split "${desc.id}": the examples this device loaded hash to ${hash.slice(0, 12)}…, the coordinator's to ${desc.sha256.slice(0, 12)}…; the output channel stays off`;
          this.o.events.ignore('probe_hash_mismatch', this.probeProblem);
          return;
        }
        const want = this.o.model.inputs[0].shape.slice(1) as number[];
        if (featureSize(want) !== featureSize(got.exampleShape)) {
          this.probeProblem = `probe split "${desc.id}": examples of shape [${got.exampleShape}] do not fit the model's input [${want}]`;
          this.o.events.ignore('probe_shape', this.probeProblem);
          return;
        }
        this.dropProbe();
        this.probe = { desc, x: tf.tensor(got.x, [desc.count, ...want], 'float32') };
        this.probeProblem = undefined;
        this.o.events.log('info', { probe: desc.id, count: desc.count }, 'probe split loaded and its hash checked');
      } catch (err) {
        this.probeProblem = `probe split "${desc.id}" could not be loaded: ${(err as Error).message}`;
        this.o.events.ignore('probe_unavailable', this.probeProblem);
      } finally {
        if (this.probeLoading === key) this.probeLoading = undefined;
      }
    })();
  }

  private dropProbe(): void {
    this.probe?.x.dispose();
    this.probe = undefined;
    this.fitter = undefined;
    for (const d of this.distillers.values()) d.dispose();
    this.distillers.clear();
    this.o.trainer.extraLosses.clear();
  }

  /** The source's log-probabilities on P, if a source pair of this device is due at `step`. */
  logitsDue(plan: PlanMsg | undefined, step: number): LogitsMsg | undefined {
    if (!this.probe) return undefined;
    const due = outputPairs(plan, 'source').some((p) => step % p.tCycle === 0);
    if (!due) return undefined;
    const values = tf.tidy(() => {
      const probs = this.o.model.predict(this.probe!.x, { batchSize: 256 }) as tf.Tensor;
      return tf.log(tf.clipByValue(probs, PROB_EPSILON, 1));
    });
    try {
      // dataSync returns a fresh copy: the tensor can go once it is taken.
      const data = values.dataSync() as Float32Array;
      this.logitsSent += 1;
      return { probeId: this.probe.desc.id, step, values: tensorToWire(data, values.shape) };
    } finally {
      values.dispose();
    }
  }

  /** The target pairs that ask for a teacher at `step`. */
  requestsDue(plan: PlanMsg | undefined, step: number): TeacherRequestMsg[] {
    if (!this.probe) return [];
    const out: TeacherRequestMsg[] = [];
    for (const p of outputPairs(plan, 'target')) {
      // One cycle at a time: no request while the pair's trial window is still open.
      if (step % p.tCycle !== 0 || this.windows.has(p.pairId)) continue;
      out.push({ pairId: p.pairId, requestId: this.nextRequestId++, step });
      this.requestsSent += 1;
    }
    return out;
  }

  push(t: QueuedTeacher): void {
    this.queue.push(t);
  }

  /**
   * Between steps: forget pairs that left the plan (their branch is taken out by the transfer
   * applier, which owns branch removal), then apply the queued teachers.
   */
  beforeStep(plan: PlanMsg | undefined, step: number): void {
    const targets = new Map(outputPairs(plan, 'target').map((p) => [p.pairId, p]));
    for (const id of [...this.distillers.keys()]) {
      if (!targets.has(id)) {
        this.distillers.get(id)!.dispose();
        this.distillers.delete(id);
        this.o.trainer.extraLosses.delete(id);
      }
    }
    for (const id of [...this.windows.keys()]) if (!targets.has(id) || plan?.session !== this.windows.get(id)!.session) this.closeWindow(id);
    const queued = this.queue.splice(0);
    for (const t of queued) {
      const pair = targets.get(t.pairId);
      if (!plan || t.session !== plan.session || !pair) {
        this.o.events.ignore('session_ended', `teacher for ${t.pairId} cycle ${t.cycleId}`, t.pairId);
        continue;
      }
      if (!this.probe) continue;
      try {
        if (t.phase === 'trial') this.applyTrial(pair, t, step);
        else this.applyDistill(pair, t);
      } catch (err) {
        this.o.events.ignore('teacher_failed', (err as Error).message, t.pairId);
      }
    }
  }

  private applyTrial(pair: PlanPair, t: QueuedTeacher, step: number): void {
    this.fitter ??= new ReadoutFitter(this.o.model, pair.slot, this.probe!.x);
    this.closeWindow(t.pairId);
    const W = this.o.branches.weight(pair.slot);
    let fit: { D: tf.Tensor2D; readout: RidgeFit };
    try {
      fit = this.fitter.fit(t.values, t.classes, W);
    } finally {
      W.dispose();
    }
    const D = fit.D;
    const upd = this.o.branches.setDelta(t.pairId, pair.slot, D, pair.tau, t.gate, { keepDelta: true });
    this.windows.set(t.pairId, {
      pairId: t.pairId,
      cycleId: t.cycleId,
      session: t.session,
      layer: pair.slot,
      openedAt: step,
      k: pair.k,
      scale: upd.scale,
      delta: upd.delta!,
      branchRatio: upd.weightNorm > 0 ? upd.branchNorm / upd.weightNorm : undefined,
      readout: fit.readout,
    });
    this.trialsApplied += 1;
  }

  private applyDistill(pair: PlanPair, t: QueuedTeacher): void {
    // The trial passed: its readout becomes part of the weight, and distillation takes over.
    if (this.o.branches.layerOf(t.pairId) !== undefined && this.o.branches.keep(t.pairId)) {
      this.kept.add(t.pairId);
      this.o.events.log('info', { pairId: t.pairId }, 'trust gate accepted the source: the tried readout is kept, distillation on the probe split starts');
    }
    const settings = pair.distill ?? { lambda: 1, temperature: 2, batchSize: 32 };
    let d = this.distillers.get(t.pairId);
    if (!d) {
      d = new ProbeDistiller(this.o.model, this.probe!.x, settings, (this.o.seed * 7919 + this.distillers.size) >>> 0);
      this.distillers.set(t.pairId, d);
      const dist = d;
      this.o.trainer.extraLosses.set(t.pairId, () => dist.loss());
    }
    d.setTeacher(t.values, this.probe!.desc.count, t.classes);
    this.distillTeachers += 1;
  }

  /** After a step: the trial windows that reached k steps, as teacher_feedback. */
  takeReadyFeedback(step: number, metrics: Metrics): TeacherFeedbackMsg[] {
    const out: TeacherFeedbackMsg[] = [];
    for (const w of [...this.windows.values()]) {
      if (step - w.openedAt < w.k) continue;
      const split = this.o.heldout.n > 0 ? this.o.heldout : this.o.train;
      this.heldoutBatch ??= splitTensors(split);
      const G = this.o.trainer.gradientOn(this.heldoutBatch.xs, this.heldoutBatch.ys, w.layer);
      let gateGrad: number;
      try {
        gateGrad = w.scale * tf.tidy(() => tf.sum(tf.mul(G, w.delta)).dataSync()[0]);
      } finally {
        G.dispose();
      }
      const msg: TeacherFeedbackMsg = { pairId: w.pairId, cycleId: w.cycleId, steps: Math.max(1, step - w.openedAt), gateGrad, metrics };
      if (this.fitter) {
        const r = this.fitter.readoutHits(w.readout, this.heldoutBatch.xs, this.heldoutBatch.ys);
        if (r.n > 0) msg.readout = r;
      }
      if (w.branchRatio !== undefined && Number.isFinite(w.branchRatio)) msg.branchRatio = w.branchRatio;
      this.closeWindow(w.pairId);
      if (!Number.isFinite(gateGrad) || !teacherFeedbackSchema.safeParse(msg).success) {
        this.o.events.ignore('teacher_feedback_invalid', `gateGrad ${gateGrad}`, w.pairId);
        continue;
      }
      out.push(msg);
    }
    return out;
  }

  private closeWindow(pairId: string): void {
    const w = this.windows.get(pairId);
    if (!w) return;
    w.delta.dispose();
    this.windows.delete(pairId);
  }

  /** Windows and queued teachers of a session that ended can never be answered. */
  endSession(): number {
    const n = this.windows.size;
    for (const id of [...this.windows.keys()]) this.closeWindow(id);
    this.queue.length = 0;
    return n;
  }

  status(): OutputChannelStatus {
    return {
      probe: this.probe?.desc.id,
      probeProblem: this.probeProblem,
      logitsSent: this.logitsSent,
      requestsSent: this.requestsSent,
      trialsApplied: this.trialsApplied,
      distilling: [...this.distillers.keys()],
      kept: [...this.kept],
    };
  }

  dispose(): void {
    this.endSession();
    this.dropProbe();
    if (this.heldoutBatch) tf.dispose([this.heldoutBatch.xs, this.heldoutBatch.ys]);
    this.heldoutBatch = undefined;
  }
}
