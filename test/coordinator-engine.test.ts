// The coordinator's engine through its seam, without sockets: messages go in as calls, what it
// sends is recorded by an Outbox, and time is a number the test moves. Deadlines, the sweep, stale
// cycles, replaced sessions and the feedback ack, each deterministic and each in its own engine.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { CoordinatorEngine, type Outbox, type Sender } from '../coordinator/engine.js';
import type { CoordinatorEvents } from '../coordinator/events.js';
import { silentLogger } from '../shared/log.js';
import { ProtocolError } from '../shared/protocol/errors.js';
import type { FeedbackMsg, SliceMsg, TransferMsg } from '../shared/protocol/messages.js';
import { initBackend } from '../shared/tf/backend.js';
import { pseudoRandom, wire } from './helpers/fake-device.js';

const R = 2;
const SHAPE: [number, number] = [6, 4];
const TIMEOUT_MS = 1000;

interface Sent {
  connectionId: string;
  event: string;
  msg: Record<string, unknown>;
}

function setup() {
  const clock = { now: 10_000 };
  const sent: Sent[] = [];
  const events: { event: keyof CoordinatorEvents; payload: unknown }[] = [];
  const outbox: Outbox = {
    send: (connectionId, event, msg) => {
      // Typed messages, not bytes: encoding happens only at the socket edge.
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
      // An LPKA pair without a guard: this suite is about the engine's cycle, not the gate.
      defaults: { rank: R, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' } },
      pairs: [{ id: 'p', source: { device: 'src', slot: 'w' }, target: { device: 'tgt', slot: 'w' } }],
      timing: { cycleTimeoutMs: TIMEOUT_MS },
      statusEveryMs: 0,
    }),
    silentLogger(),
    outbox,
    (event, ...args) => events.push({ event, payload: args[0] }),
    () => clock.now,
  );

  let conn = 0;
  /** Connect and register a device: its Sender for later messages (time taken when used). */
  const join = (deviceId: string) => {
    const connectionId = `c${++conn}`;
    const session = engine.connect(deviceId, connectionId, clock.now);
    const from = (): Sender => ({ deviceId, session, connectionId, now: clock.now });
    engine.register(from(), {
      deviceId,
      model: { name: 'm', architecture: 'a', task: 't', modality: 'x' },
      slots: [{ name: 'w', shape: SHAPE }],
      rank: R,
      step: 0,
    });
    return from;
  };
  let sliceId = 0;
  const slice = (from: () => Sender, step: number): void => {
    const id = sliceId++;
    const msg: SliceMsg = {
      slot: 'w', sliceId: id, step, rank: R,
      A: wire(pseudoRandom(SHAPE[0] * R, id + 1), [SHAPE[0], R]),
      B: wire(pseudoRandom(R * SHAPE[1], id + 2), [R, SHAPE[1]]),
    };
    engine.slice(from(), msg);
  };
  const transfers = () => sent.filter((s) => s.event === 'transfer').map((s) => s.msg as unknown as TransferMsg);
  const feedback = (t: TransferMsg): FeedbackMsg => ({
    pairId: t.pairId, cycleId: t.cycleId, steps: 1, scale: 1, gateGrad: 0.01,
    gA: wire(pseudoRandom(SHAPE[0] * R, 7, 0.01), [SHAPE[0], R]),
    gB: wire(pseudoRandom(R * SHAPE[1], 8, 0.01), [R, SHAPE[1]]),
    metrics: { step: 1, loss: 1 },
  });
  /** The code a call is refused with (undefined if accepted). */
  const refusal = (fn: () => void): string | undefined => {
    try {
      fn();
      return undefined;
    } catch (err) {
      if (err instanceof ProtocolError) return err.code;
      throw err;
    }
  };
  const src = join('src');
  const tgt = join('tgt');
  slice(src, 0);
  return { engine, clock, sent, events, join, slice, transfers, feedback, refusal, src, tgt };
}

describe('CoordinatorEngine through its seam', () => {
  beforeAll(async () => {
    await initBackend();
  });

  it('a target slice starts a cycle; accepted feedback updates the adapter and is acked on the same connection', () => {
    const e = setup();
    e.slice(e.tgt, 1);
    const [t] = e.transfers();
    expect(t).toMatchObject({ pairId: 'p', cycleId: 0, adapterStep: 0 });
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback(t)))).toBeUndefined();
    const ack = e.sent.find((s) => s.event === 'feedback_ack')!;
    expect(ack).toEqual({ connectionId: e.tgt().connectionId, event: 'feedback_ack', msg: { pairId: 'p', cycleId: 0, adapterStep: 1, updates: 1 } });
    e.engine.dispose();
  });

  it('sweep() drops a cycle exactly when its deadline has passed on the injected clock', () => {
    const e = setup();
    e.slice(e.tgt, 1);
    const drops = () => e.events.filter((x) => x.event === 'drop');
    e.clock.now += TIMEOUT_MS; // at the deadline: not yet expired
    e.engine.sweep();
    expect(drops()).toEqual([]);
    e.clock.now += 1;
    e.engine.sweep();
    expect(drops().map((d) => d.payload)).toMatchObject([{ code: 'cycle_timeout', event: 'cycle', pairId: 'p', cycleId: 0 }]);
    expect(e.engine.status('').pairs[0].inFlight).toBeUndefined();
    e.engine.dispose();
  });

  it('late feedback is cycle_timeout whichever way the cycle ended; a replay or an unknown cycle is stale_cycle', () => {
    const e = setup();
    e.slice(e.tgt, 1);
    const [late] = e.transfers();
    e.clock.now += TIMEOUT_MS + 1;
    // still in flight: the deadline check refuses it
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback(late)))).toBe('cycle_timeout');
    // ended by the sweep
    e.slice(e.tgt, 2);
    const second = e.transfers()[1];
    e.clock.now += TIMEOUT_MS + 1;
    e.engine.sweep();
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback(second)))).toBe('cycle_timeout');
    // an applied cycle, replayed; a cycle never started
    e.slice(e.tgt, 3);
    const third = e.transfers()[2];
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback(third)))).toBeUndefined();
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback(third)))).toBe('stale_cycle');
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback({ ...third, cycleId: 99 })))).toBe('stale_cycle');
    // and the first late one is still cycle_timeout after all of that
    expect(e.refusal(() => e.engine.feedback(e.tgt(), e.feedback(late)))).toBe('cycle_timeout');
    e.engine.dispose();
  });

  it('a reconnect drops the in-flight cycle as session_replaced; the old session can no longer act', () => {
    const e = setup();
    e.slice(e.tgt, 1);
    const [t] = e.transfers();
    const oldTgt = e.tgt;
    const newTgt = e.join('tgt');
    expect(e.events.filter((x) => x.event === 'drop').map((d) => d.payload)).toMatchObject([{ code: 'session_replaced', cycleId: 0 }]);
    expect(e.refusal(() => e.engine.admit(oldTgt()))).toBe('session_replaced');
    expect(e.refusal(() => e.engine.feedback(newTgt(), e.feedback(t)))).toBe('session_replaced');
    expect(e.engine.status('').pairs[0].adapterStep).toBe(0);
    e.engine.dispose();
  });

  it('disposes every tensor it held', () => {
    const before = tf.memory().numTensors;
    const e = setup();
    e.slice(e.tgt, 1);
    e.engine.feedback(e.tgt(), e.feedback(e.transfers()[0]));
    e.slice(e.tgt, 2);
    e.engine.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
