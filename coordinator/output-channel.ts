// The coordinator's side of the output channel (docs/DESIGN.md §10, docs/PROTOCOL.md §4.10–4.13):
// which pairs can use it, the sources' latest logits on the probe split, and the cycles of output
// pairs. A cycle starts when the target asks (teacher_request) and ends with its teacher_feedback,
// one step of the pair's trust gate. While the gate is pending each teacher is a readout trial;
// once it accepted the source, teachers are for distillation and need no feedback. The gate itself
// and the decision's consequences (a refused pair leaves the plans) stay with the engine.
import { wireToFloat32, tensorToWire } from '../shared/codec/tensor-codec.js';
import type { Logger } from '../shared/log.js';
import { EVENTS } from '../shared/protocol/events.js';
import { ProtocolError, type ErrorCode } from '../shared/protocol/errors.js';
import type { FeedbackAckMsg, LogitsMsg, SkipMsg, SkipReason, TeacherFeedbackMsg, TeacherMsg, TeacherRequestMsg } from '../shared/protocol/messages.js';
import { hash32, type CoordinatorConfig } from './config.js';
import type { Outbox, Sender } from './engine.js';
import { noiseSeed } from './noise.js';
import { mulberry32 } from '../shared/math/prng.js';
import type { Pair } from './pair.js';
import type { ProbeSplits } from './probe-splits.js';
import type { Registry } from './registry.js';

function fail(code: ErrorCode, reason: string): never {
  throw new ProtocolError(code, reason);
}

interface SourceLogits {
  values: Float32Array;
  shape: [number, number];
  step: number;
  at: number;
}

/** Gaussian logits with the spread of `like`: the noise-source control of the output channel. */
function noiseLogits(like: Float32Array, seed: number): Float32Array {
  let mean = 0;
  for (const v of like) mean += v;
  mean /= like.length;
  let sq = 0;
  for (const v of like) sq += (v - mean) * (v - mean);
  const std = Math.sqrt(sq / like.length) || 1;
  const rand = mulberry32(seed);
  const out = new Float32Array(like.length);
  for (let i = 0; i < out.length; i += 2) {
    const u = Math.max(rand(), 1e-12);
    const r = Math.sqrt(-2 * Math.log(u));
    const th = 2 * Math.PI * rand();
    out[i] = mean + std * r * Math.cos(th);
    if (i + 1 < out.length) out[i + 1] = mean + std * r * Math.sin(th);
  }
  return out;
}

export interface OutputChannelHooks {
  /** the gate decided at this update (the engine refreshes plans) */
  gateDecided(pair: Pair): void;
  /** an update was applied (the engine counts it and may checkpoint) */
  updated(pair: Pair): void;
  setMetrics(deviceId: string, msg: TeacherFeedbackMsg['metrics'], now: number): void;
}

export class OutputChannelRouter {
  private readonly latest = new Map<string, SourceLogits>();

  constructor(
    private readonly config: CoordinatorConfig,
    private readonly registry: Registry,
    private readonly probes: ProbeSplits,
    private readonly outbox: Outbox,
    private readonly log: Logger,
    private readonly hooks: OutputChannelHooks,
  ) {}

  /**
   * Why `pair` cannot use the output channel, or undefined if it can: both devices registered the
   * same input space, the coordinator has a probe split for it, and both models output the same
   * classes of the same task (no label map is built: digit → parity is refused with that reason).
   */
  whyNot(pair: Pair): string | undefined {
    const s = this.registry.get(pair.source.device)?.registration;
    const t = this.registry.get(pair.target.device)?.registration;
    if (!s || !t) return 'waiting for both devices to register';
    if (!s.inputSpace || !t.inputSpace) return `the output channel needs both devices to register their input space (${pair.source.device}: ${s.inputSpace ?? 'none'}, ${pair.target.device}: ${t.inputSpace ?? 'none'})`;
    if (s.inputSpace !== t.inputSpace) return `the devices read different inputs (${s.inputSpace} vs ${t.inputSpace}): there is no probe split both can run their models on`;
    if (!this.probes.forSpace(t.inputSpace)) return `the coordinator has no probe split for input space "${t.inputSpace}" (configure probes:)`;
    if (s.model.task !== t.model.task || s.outputs !== t.outputs) {
      return `the label spaces differ (${s.model.task}, ${s.outputs ?? '?'} classes vs ${t.model.task}, ${t.outputs ?? '?'} classes): the source's logits would need a map onto the target's labels, which this coordinator does not build`;
    }
    const shape = this.registry.slotShape(pair.target.device, pair.target.slot);
    if (shape && shape[1] !== t.outputs) return `the target slot "${pair.target.slot}" [${shape.join(', ')}] is not the classifier (its columns are not the ${t.outputs} classes)`;
    return undefined;
  }

  /** Forget a device's logits (it re-registered with another model, or left for good). */
  forget(deviceId: string): void {
    this.latest.delete(deviceId);
  }

  /**
   * `logits` {probeId, step, values [count, outputs]}: checked against the probe split of the
   * device's plan and its registered outputs, then kept as its latest (the previous is dropped).
   */
  logits(from: Sender, msg: LogitsMsg): void {
    const reg = this.registry.get(from.deviceId)?.registration;
    if (!reg) fail('not_registered', 'send `register` first and wait for `plan`');
    const probe = this.probes.forSpace(reg.inputSpace);
    if (!probe || probe.id !== msg.probeId) fail('unknown_probe', `logits on probe "${msg.probeId}", but this device's probe split is ${probe ? `"${probe.id}"` : 'none'}`);
    if (!reg.outputs) fail('invalid_message', 'logits: the device did not register its number of outputs');
    const shape: [number, number] = [probe.count, reg.outputs];
    const v = wireToFloat32(msg.values, { name: 'logits.values', shape });
    this.latest.set(from.deviceId, { values: v.values, shape, step: msg.step, at: from.now });
  }

  /** `teacher_request` {pairId, requestId, step}: start a cycle of an output pair, or say why not. */
  teacherRequest(from: Sender, pair: Pair | undefined, msg: TeacherRequestMsg, dropExpired: (pair: Pair) => void): void {
    const now = from.now;
    if (!pair || pair.target.device !== from.deviceId || pair.channel !== 'output' || !pair.active) {
      fail('unknown_pair', `no active output pair "${msg.pairId}" has device "${from.deviceId}" as its target`);
    }
    const skip = (reason: SkipReason) => {
      pair.countSkip(reason);
      const s: SkipMsg = { pairId: pair.id, sliceId: msg.requestId, reason };
      this.outbox.send(from.connectionId, EVENTS.skip, s);
    };
    if (pair.inFlight) {
      if (pair.inFlightExpired(now)) dropExpired(pair);
      else return skip('in_flight');
    }
    const src = this.latest.get(pair.source.device);
    if (!src) return skip('no_logits');
    if (now - src.at > this.config.timing.sourceMaxAgeMs) return skip('source_too_old');
    const trial = pair.gate.decision !== 'accepted';
    const cycleId = pair.startOutputCycle({ session: from.session, requestId: msg.requestId, step: msg.step, now, timeoutMs: this.config.timing.cycleTimeoutMs, sourceStep: src.step, awaitFeedback: trial });
    const values = pair.config.sourceMode === 'noise' ? noiseLogits(src.values, noiseSeed(hash32(pair.id), cycleId)) : src.values;
    const out: TeacherMsg = {
      pairId: pair.id,
      cycleId,
      requestId: msg.requestId,
      phase: trial ? 'trial' : 'distill',
      gate: pair.gate.value,
      sourceStep: src.step,
      values: tensorToWire(values, src.shape),
    };
    this.outbox.send(from.connectionId, EVENTS.teacher, out, { maxBytes: this.config.limits.maxMessageBytes });
  }

  /** `teacher_feedback` {pairId, cycleId, steps, gateGrad, metrics}: one step of the pair's gate. */
  teacherFeedback(from: Sender, pair: Pair | undefined, msg: TeacherFeedbackMsg, dropExpired: (pair: Pair) => void): void {
    if (!pair || pair.target.device !== from.deviceId || pair.channel !== 'output') {
      fail('unknown_pair', `no output pair "${msg.pairId}" has device "${from.deviceId}" as its target`);
    }
    const c = pair.inFlight;
    if (!c || c.cycleId !== msg.cycleId) {
      const ended = pair.endedAs(msg.cycleId);
      if (ended === 'session_replaced' || ended === 'cycle_timeout') fail(ended, `cycle ${msg.cycleId} of pair ${pair.id} was dropped`);
      fail('stale_cycle', `cycle ${msg.cycleId} of pair ${pair.id} is not the trial in flight`);
    }
    if (c.session !== from.session) fail('session_replaced', `cycle ${c.cycleId} was sent to an earlier connection of this device`);
    if (from.now > c.deadline) {
      dropExpired(pair);
      fail('cycle_timeout', `cycle ${c.cycleId} of pair ${pair.id} expired ${from.now - c.deadline} ms ago`);
    }
    const classes = this.registry.get(pair.target.device)?.registration?.outputs;
    const readout = msg.readout && classes ? { ...msg.readout, classes } : undefined;
    const step = pair.applyOutputFeedback(msg.gateGrad, from.now, { trainAcc: msg.metrics.trainAcc, readout });
    if (msg.branchRatio !== undefined) pair.lastBranchRatio = msg.branchRatio;
    this.hooks.setMetrics(from.deviceId, msg.metrics, from.now);
    const ack: FeedbackAckMsg = { pairId: pair.id, cycleId: c.cycleId, adapterStep: 0, updates: pair.counters.updates };
    this.outbox.send(from.connectionId, EVENTS.feedbackAck, ack);
    this.log.debug({ pairId: pair.id, cycleId: c.cycleId, gate: step.after, dTheta: step.dTheta }, 'output pair: gate updated');
    this.hooks.updated(pair);
    if (step.decided) this.hooks.gateDecided(pair);
  }
}
