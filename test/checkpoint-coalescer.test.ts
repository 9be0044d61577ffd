// Bounded checkpoints: one write in flight; requests made during it merge into one next write that
// takes the latest state. Writes are held open by hand (deferred promises), never by sleeping.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Checkpointer } from '../coordinator/checkpoint.js';
import { CoalescingWriter } from '../coordinator/checkpoint-coalescer.js';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { CoordinatorEngine } from '../coordinator/engine.js';
import { silentLogger } from '../shared/log.js';

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Let every queued microtask and promise callback run. */
const settle = () => new Promise<void>((r) => setImmediate(r));

describe('CoalescingWriter', () => {
  it('merges requests made during a write into one next write that captures the latest state', async () => {
    let state = 0;
    const captured: number[] = [];
    const gates: Deferred<void>[] = [];
    const writer = new CoalescingWriter(async () => {
      captured.push(state); // captured synchronously when the write starts
      const gate = deferred<void>();
      gates.push(gate);
      await gate.promise;
      return captured.length;
    });

    state = 1;
    const first = writer.request();
    expect(captured).toEqual([1]);
    state = 2;
    const second = writer.request();
    state = 3;
    const third = writer.request();
    const fourth = writer.request();
    expect(second).toBe(third);
    expect(third).toBe(fourth);
    await settle();
    expect(writer.writesStarted).toBe(1); // nothing new starts while a write is in flight

    state = 4;
    gates[0].resolve();
    expect(await first).toBe(1);
    await settle();
    expect(writer.writesStarted).toBe(2);
    expect(captured).toEqual([1, 4]); // the merged write took the state when it started
    state = 5;
    const fifth = writer.request(); // during the second write: a third one, later
    gates[1].resolve();
    expect(await second).toBe(2);
    await settle();
    expect(captured).toEqual([1, 4, 5]);
    gates[2].resolve();
    expect(await fifth).toBe(3);
    expect(writer.busy).toBe(false);
    expect(writer.writesStarted).toBe(3);
  });

  it('a failed write rejects its requests and does not wedge the next one', async () => {
    const gates: Deferred<string>[] = [];
    const writer = new CoalescingWriter(() => {
      const g = deferred<string>();
      gates.push(g);
      return g.promise;
    });
    const a = writer.request();
    const b = writer.request();
    gates[0].reject(new Error('disk full'));
    await expect(a).rejects.toThrow('disk full');
    await settle();
    gates[1].resolve('ok');
    await expect(b).resolves.toBe('ok');
    expect(writer.writesStarted).toBe(2);
  });

  it('a write that throws synchronously rejects, and the writer stays usable', async () => {
    let fail = true;
    const writer = new CoalescingWriter(async () => {
      if (fail) throw new Error('capture failed');
      return 1;
    });
    await expect(writer.request()).rejects.toThrow('capture failed');
    fail = false;
    await expect(writer.request()).resolves.toBe(1);
  });
});

describe('coordinator checkpoints under load', () => {
  let dir: string | undefined;
  afterEach(async () => {
    vi.restoreAllMocks();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a checkpoint requested during a write is merged into the next write', async () => {
    dir = await mkdtemp(join(tmpdir(), 'mergenet-coalesce-'));
    const config = parseCoordinatorConfig({
      devices: [{ id: 'a', token: 'a-secret' }, { id: 'b', token: 'b-secret' }],
      pairs: [{ id: 'p', source: { device: 'a', slot: 's' }, target: { device: 'b', slot: 't' } }],
      checkpoint: { dir, everyUpdates: 1 },
      statusEveryMs: 0,
    });
    const written: number[] = [];
    const gates: Deferred<void>[] = [];
    const realSave = Checkpointer.prototype.save;
    // A slow disk: every save waits for its gate before it writes.
    vi.spyOn(Checkpointer.prototype, 'save').mockImplementation(async function (this: Checkpointer, data) {
      const gate = deferred<void>();
      gates.push(gate);
      await gate.promise;
      const generation = await realSave.call(this, data);
      written.push(generation);
      return generation;
    });
    const events: number[] = [];
    const engine = new CoordinatorEngine(config, silentLogger(), { send: () => true, disconnect: () => {} }, ((event: string, payload: { generation: number }) => {
      if (event === 'checkpoint') events.push(payload.generation);
    }) as never);
    await engine.restore();
    const first = engine.checkpoint();
    const merged = [engine.checkpoint(), engine.checkpoint(), engine.checkpoint()];
    await settle();
    expect(gates).toHaveLength(1);
    gates[0].resolve();
    await first;
    await settle();
    expect(gates).toHaveLength(2); // the three requests made during the first write: one write
    gates[1].resolve();
    await Promise.all(merged);
    expect(written).toEqual([1, 2]);
    expect(events).toEqual([1, 2]);
    engine.dispose();
  });
});
