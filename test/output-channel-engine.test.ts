// The output channel on the coordinator, through the engine's seam (no sockets, a test clock):
// which pairs the plan gives it and which it refuses with a reason, the probe split announced by
// hash, logits checked at the boundary (shape, finite, size, probe id), and a trial's cycle from
// teacher_request to teacher_feedback, with the gate's early decision.
import { beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { CoordinatorEngine, type Outbox, type Sender } from '../coordinator/engine.js';
import { silentLogger } from '../shared/log.js';
import { ProtocolError } from '../shared/protocol/errors.js';
import { CodecError } from '../shared/codec/tensor-codec.js';
import { teacherFeedbackSchema, type PlanMsg, type RegisterMsg, type TeacherMsg } from '../shared/protocol/messages.js';
import { loadProbeExamples } from '../client/data/probe-data.js';
import { initBackend } from '../shared/tf/backend.js';
import { wire } from './helpers/fake-device.js';

const COUNT = 20;
const CLASSES = 10;

interface Sent {
  connectionId: string;
  event: string;
  msg: Record<string, unknown>;
}

function setup(pairExtra: Record<string, unknown> = {}, probes = [{ dataset: 'mnist', seed: 3, offset: 7000, count: COUNT }]) {
  const clock = { now: 10_000 };
  const sent: Sent[] = [];
  const outbox: Outbox = {
    send: (connectionId, event, msg) => {
      sent.push({ connectionId, event, msg: msg as unknown as Record<string, unknown> });
      return true;
    },
    disconnect: () => undefined,
  };
  const engine = new CoordinatorEngine(
    parseCoordinatorConfig({
      devices: [
        { id: 'src', token: 's' },
        { id: 'tgt', token: 't' },
      ],
      defaults: { tCycle: 1, k: 1, gate: { decideAfter: 3 } },
      pairs: [{ id: 'p', source: { device: 'src', slot: 'out' }, target: { device: 'tgt', slot: 'out' }, ...pairExtra }],
      probes,
      timing: { cycleTimeoutMs: 1000 },
      statusEveryMs: 0,
    }),
    silentLogger(),
    outbox,
    () => undefined,
    () => clock.now,
  );
  let conn = 0;
  const join = (deviceId: string, reg: Partial<RegisterMsg> & { shape: [number, number] }) => {
    const connectionId = `c${++conn}`;
    const session = engine.connect(deviceId, connectionId, clock.now);
    const from = (): Sender => ({ deviceId, session, connectionId, now: clock.now });
    const { shape, ...rest } = reg;
    engine.register(from(), {
      deviceId,
      model: { name: 'm', architecture: 'a', task: 'mnist-digit', modality: 'image' },
      slots: [{ name: 'out', shape }],
      rank: 8,
      step: 0,
      inputSpace: 'mnist',
      outputs: CLASSES,
      ...rest,
    });
    return from;
  };
  const plans = (deviceId: string) => sent.filter((s) => s.event === 'plan' && (s.msg as unknown as PlanMsg).deviceId === deviceId).map((s) => s.msg as unknown as PlanMsg);
  const lastPlan = (deviceId: string) => plans(deviceId).at(-1)!;
  return { engine, clock, sent, join, lastPlan };
}

function codeOf(fn: () => void): string | undefined {
  try {
    fn();
  } catch (err) {
    // The socket edge answers both kinds with their code (server.ts).
    if (err instanceof ProtocolError || err instanceof CodecError) return err.code;
    throw err;
  }
  return undefined;
}

const logitsOf = (fill: (i: number) => number, rows = COUNT, cols = CLASSES) =>
  wire(Float32Array.from({ length: rows * cols }, (_, i) => fill(i)), [rows, cols]);

beforeAll(async () => {
  await initBackend('cpu', () => {});
});

describe('output channel: the plan', () => {
  it('gives classifier slots that share no axis the output channel, and announces the probe split by its hash', () => {
    const { join, lastPlan } = setup();
    join('src', { shape: [64, CLASSES] });
    join('tgt', { shape: [128, CLASSES] });
    const plan = lastPlan('tgt');
    expect(plan.pairs).toHaveLength(1);
    expect(plan.pairs[0]).toMatchObject({ pairId: 'p', role: 'target', channel: 'output', distill: { lambda: 1, temperature: 2, batchSize: 32 } });
    const ex = loadProbeExamples({ dataset: 'mnist', seed: 3, offset: 7000 }, COUNT);
    const hash = createHash('sha256').update(new Uint8Array(ex.x.buffer)).digest('hex');
    expect(plan.probe).toMatchObject({ inputSpace: 'mnist', count: COUNT, source: { dataset: 'mnist', seed: 3, offset: 7000 }, sha256: hash });
    expect(lastPlan('src').pairs[0]).toMatchObject({ role: 'source', channel: 'output' });
    expect(plan.notes).toContain('pair p: output channel: the slots share no axis ([64, 10] → [128, 10]); both devices read "mnist" and share probe split "mnist-s3-o7000-n20"; the source\'s logits on it are tried as a readout of this classifier, then distilled if the gate keeps the source');
  });

  it('keeps slots of one shape on the parameter channel', () => {
    const { join, lastPlan } = setup();
    join('src', { shape: [128, CLASSES] });
    join('tgt', { shape: [128, CLASSES] });
    expect(lastPlan('tgt').pairs[0].channel).toBeUndefined();
    expect(lastPlan('tgt').notes?.join('\n')).toMatch(/pair p: parameter channel: the slots have one shape \[128, 10\]/);
  });

  it('refuses a cross-task pair (digit → parity) with the reason, in the plan notes', () => {
    const { join, lastPlan } = setup();
    join('src', { shape: [64, CLASSES] });
    join('tgt', { shape: [128, 2], outputs: 2, model: { name: 'm', architecture: 'a', task: 'mnist-parity', modality: 'image' } });
    const plan = lastPlan('tgt');
    expect(plan.pairs).toHaveLength(0);
    expect(plan.notes?.join('\n')).toMatch(/label spaces differ \(mnist-digit, 10 classes vs mnist-parity, 2 classes\)/);
  });

  it('refuses a cross-modality pair: no probe split both devices can run on', () => {
    const { join, lastPlan } = setup({ channel: 'output' });
    join('src', { shape: [64, CLASSES], inputSpace: 'spam' });
    join('tgt', { shape: [128, CLASSES] });
    expect(lastPlan('tgt').pairs).toHaveLength(0);
    expect(lastPlan('tgt').notes?.join('\n')).toMatch(/output channel: the devices read different inputs \(spam vs mnist\)/);
  });

  it('refuses the output channel without a probe split for the input space', () => {
    const { join, lastPlan } = setup({ channel: 'output' }, []);
    join('src', { shape: [64, CLASSES] });
    join('tgt', { shape: [128, CLASSES] });
    expect(lastPlan('tgt').notes?.join('\n')).toMatch(/no probe split for input space "mnist"/);
    expect(lastPlan('tgt').probe).toBeUndefined();
  });
});

describe('output channel: logits at the boundary', () => {
  it('refuses logits of the wrong shape, non-finite values, a bad tensor and another probe, each with its code', () => {
    const { engine, join, lastPlan } = setup();
    const src = join('src', { shape: [64, CLASSES] });
    join('tgt', { shape: [128, CLASSES] });
    const probeId = lastPlan('src').probe!.id;
    expect(codeOf(() => engine.logits(src(), { probeId, step: 1, values: logitsOf(() => 0, COUNT, CLASSES - 1) }))).toBe('shape_mismatch');
    expect(codeOf(() => engine.logits(src(), { probeId, step: 1, values: logitsOf((i) => (i === 7 ? NaN : 0)) }))).toBe('non_finite');
    expect(codeOf(() => engine.logits(src(), { probeId, step: 1, values: { dtype: 'float32', shape: [COUNT, CLASSES], data: new Uint8Array(3) } as never }))).toBe('bad_tensor');
    expect(codeOf(() => engine.logits(src(), { probeId: 'other', step: 1, values: logitsOf(() => 0) }))).toBe('unknown_probe');
    expect(codeOf(() => engine.logits(src(), { probeId, step: 1, values: logitsOf(() => -1) }))).toBeUndefined();
  });
});

describe('output channel: a trial cycle', () => {
  /** Three trial cycles whose feedback says the gate should rise, with this readout on 20 held-out examples. */
  function trialWithReadout(hits: number) {
    const env = setup();
    const { engine, join, sent } = env;
    const src = join('src', { shape: [64, CLASSES] });
    const tgt = join('tgt', { shape: [128, CLASSES] });
    engine.logits(src(), { probeId: engine.probes.all()[0].id, step: 5, values: logitsOf(() => -2) });
    for (let i = 0; i < 3; i++) {
      engine.teacherRequest(tgt(), { pairId: 'p', requestId: i, step: i });
      const msg = sent.at(-1)!.msg as unknown as TeacherMsg;
      engine.teacherFeedback(tgt(), { pairId: 'p', cycleId: msg.cycleId, steps: 1, gateGrad: -1, readout: { hits, n: 20 }, metrics: { step: i, loss: 1 } });
    }
    return { ...env, src, tgt };
  }

  it('refuses a source whose gate rose but whose readout labels the held-out examples no better than chance', () => {
    // The held-out loss likes the swap (it shrinks an over-confident classifier), but the readout
    // is at chance: 3 of 20 with 10 classes.
    const { engine } = trialWithReadout(3);
    const gate = engine.status('http://x').pairs[0].gate;
    expect(gate.decision).toBe('refused');
    expect(gate.reason).toMatch(/gate rose to .*, but the readout labelled 15 % of 20 held-out examples right .*no better than chance/);
  });

  it('refuses a readout that claims more hits than examples', () => {
    const { engine, join, sent } = setup();
    const src = join('src', { shape: [64, CLASSES] });
    const tgt = join('tgt', { shape: [128, CLASSES] });
    engine.logits(src(), { probeId: engine.probes.all()[0].id, step: 5, values: logitsOf(() => -2) });
    engine.teacherRequest(tgt(), { pairId: 'p', requestId: 0, step: 0 });
    const msg = sent.at(-1)!.msg as unknown as TeacherMsg;
    const parsed = teacherFeedbackSchema.safeParse({ pairId: 'p', cycleId: msg.cycleId, steps: 1, gateGrad: 0, readout: { hits: 21, n: 20 }, metrics: { step: 0, loss: 1 } });
    expect(parsed.success).toBe(false);
  });

  it('answers a request with the latest logits, takes one gate step per trial feedback, and refuses a source whose gate fell', () => {
    const { engine, join, sent, clock } = setup();
    const src = join('src', { shape: [64, CLASSES] });
    const tgt = join('tgt', { shape: [128, CLASSES] });
    // No logits yet: a skip, with the reason.
    engine.teacherRequest(tgt(), { pairId: 'p', requestId: 0, step: 1 });
    expect(sent.at(-1)).toMatchObject({ event: 'skip', msg: { pairId: 'p', sliceId: 0, reason: 'no_logits' } });
    const probeId = engine.probes.all()[0].id;
    engine.logits(src(), { probeId, step: 5, values: logitsOf((i) => -(i % CLASSES)) });
    for (let i = 1; i <= 3; i++) {
      engine.teacherRequest(tgt(), { pairId: 'p', requestId: i, step: i });
      const t = sent.at(-1)!;
      expect(t.event).toBe('teacher');
      const msg = t.msg as unknown as TeacherMsg;
      expect(msg).toMatchObject({ pairId: 'p', requestId: i, phase: 'trial', sourceStep: 5 });
      // A second request while the trial is in flight is skipped.
      engine.teacherRequest(tgt(), { pairId: 'p', requestId: 100 + i, step: i });
      expect(sent.at(-1)).toMatchObject({ event: 'skip', msg: { reason: 'in_flight' } });
      clock.now += 10;
      // The held-out loss rises along the swap: the gate goes down.
      engine.teacherFeedback(tgt(), { pairId: 'p', cycleId: msg.cycleId, steps: 1, gateGrad: 1, metrics: { step: i, loss: 1 } });
      expect(sent.filter((x) => x.event === 'feedback_ack').at(-1)).toMatchObject({ msg: { pairId: 'p', updates: i } });
    }
    // decideAfter 3 with the early guard: refused, and the pair left both plans.
    const status = engine.status('http://x').pairs.find((p) => p.id === 'p')!;
    expect(status.gate).toMatchObject({ decision: 'refused' });
    const lastTgtPlan = sent.filter((s) => s.event === 'plan' && s.msg.deviceId === 'tgt').at(-1)!.msg as unknown as PlanMsg;
    expect(lastTgtPlan.pairs).toHaveLength(0);
    expect(codeOf(() => engine.teacherRequest(tgt(), { pairId: 'p', requestId: 9, step: 9 }))).toBe('unknown_pair');
  });

  it('after the gate accepted, teachers are for distillation and need no feedback', () => {
    const { engine, sent, tgt } = trialWithReadout(15);
    expect(engine.status('http://x').pairs[0].gate).toMatchObject({ decision: 'accepted' });
    expect(engine.status('http://x').pairs[0].gate.reason).toMatch(/the readout labelled 75 % of 20 held-out examples right \(chance 10 %/);
    engine.teacherRequest(tgt(), { pairId: 'p', requestId: 10, step: 10 });
    const d = sent.at(-1)!.msg as unknown as TeacherMsg;
    expect(d.phase).toBe('distill');
    // No cycle waits for feedback: the next request is answered at once.
    engine.teacherRequest(tgt(), { pairId: 'p', requestId: 11, step: 11 });
    expect(sent.at(-1)).toMatchObject({ event: 'teacher', msg: { phase: 'distill', requestId: 11 } });
    expect(codeOf(() => engine.teacherFeedback(tgt(), { pairId: 'p', cycleId: d.cycleId, steps: 1, gateGrad: 0, metrics: { step: 10, loss: 1 } }))).toBe('stale_cycle');
  });
});
