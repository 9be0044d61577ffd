// Checkpoints: written atomically every N updates and on close; a restarted coordinator resumes
// every adapter bit for bit at the same step, and never reuses a cycle id.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpointer, CheckpointError, MANIFEST_NAME } from '../coordinator/checkpoint.js';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { installSignalHandlers, serve, type RunningCoordinator } from '../coordinator/server.js';
import { silentLogger } from '../shared/log.js';
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { serializeAdapterState } from '../coordinator/adapter/state.js';
import { AdapterWithOptimizer } from '../coordinator/adapter/update.js';
import { decodeMessage, encodeMessage } from '../shared/codec/tensor-codec.js';
import { initBackend } from '../shared/tf/backend.js';
import { completeCycle, FakeDevice, waitForEvent, type DecodedTransfer } from './helpers/fake-device.js';

const R = 4;
const T = { slot: 'dense', m: 20, n: 6 };
const S = { slot: 'conv', m: 27, n: 8 };

function config(dir: string, pairs?: unknown, minIntervalMs = 0) {
  return parseCoordinatorConfig({
    devices: [
      { id: 'src', token: 'src-secret' },
      { id: 'tgt', token: 'tgt-secret' },
    ],
    defaults: { rank: R, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' } },
    pairs: pairs ?? [
      { id: 'p', source: { device: 'src', slot: 'conv' }, target: { device: 'tgt', slot: 'dense' } },
      { id: 'back', source: { device: 'tgt', slot: 'dense' }, target: { device: 'src', slot: 'conv' }, rank: 3 },
    ],
    checkpoint: { dir, everyUpdates: 5, minIntervalMs },
    statusEveryMs: 0,
  });
}

async function connectPair(coord: RunningCoordinator): Promise<{ src: FakeDevice; tgt: FakeDevice }> {
  const src = await FakeDevice.connect({ url: coord.url, deviceId: 'src', token: 'src-secret' });
  const tgt = await FakeDevice.connect({ url: coord.url, deviceId: 'tgt', token: 'tgt-secret' });
  await src.register([{ name: 'conv', shape: [S.m, S.n] }]);
  await tgt.register([{ name: 'dense', shape: [T.m, T.n] }]);
  return { src, tgt };
}

describe('coordinator checkpoints', () => {
  let dir: string;
  let savedBytes: { p: Uint8Array; back: Uint8Array };
  let lastTransfer: DecodedTransfer;
  let savedGate: { theta: number; value: number; updates: number };

  beforeAll(async () => {
    await initBackend();
    dir = await mkdtemp(join(tmpdir(), 'mergenet-ckpt-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('checkpoints every N updates and on close', async () => {
    // a temp file that a crashed coordinator (another pid) left behind: a checkpoint removes it
    await writeFile(join(dir, '.tmp-999999-1700000000000-pair-p.g1.bin'), 'torn');
    const coord = await serve(config(dir), { logger: silentLogger() });
    const { src, tgt } = await connectPair(coord);
    src.sendSlice({ ...S, rank: R, sliceId: 0, step: 0 });
    const checkpoints: number[] = [];
    coord.on('checkpoint', (c) => checkpoints.push(c.updates));
    for (let i = 1; i <= 12; i++) ({ transfer: lastTransfer } = await completeCycle(coord, tgt, { ...T, rank: R, sliceId: i, step: i }));
    // The reverse pair ("back": tgt → src) makes 2 updates too, so both adapters carry state.
    for (let i = 1; i <= 2; i++) await completeCycle(coord, src, { ...S, rank: R, sliceId: 100 + i, step: 100 + i });
    if (!checkpoints.some((u) => u >= 10)) await waitForEvent(coord, 'checkpoint', (c) => c.updates >= 10);
    // The request at update 10 is merged into a later write if the first is still running then.
    expect(checkpoints[0]).toBe(5);
    expect(checkpoints[1]).toBeGreaterThanOrEqual(10);
    const st = coord.status();
    expect(st.pairs.find((p) => p.id === 'p')!.adapterStep).toBe(12);
    expect(st.pairs.find((p) => p.id === 'back')!.adapterStep).toBe(2);
    savedBytes = { p: coord.exportAdapterState('p')!, back: coord.exportAdapterState('back')! };
    const gate = st.pairs.find((p) => p.id === 'p')!.gate;
    savedGate = { theta: gate.theta, value: gate.value, updates: gate.updates };
    // 12 gate steps moved θ away from its start.
    expect(savedGate.updates).toBe(12);
    expect(savedGate.theta).not.toBe(-3);
    src.close();
    tgt.close();
    await coord.close();

    const manifest = JSON.parse(await readFile(join(dir, MANIFEST_NAME), 'utf8'));
    expect(manifest.totals.updates).toBe(14);
    const p = manifest.pairs.find((x: { id: string }) => x.id === 'p');
    expect(p).toMatchObject({ adapterStep: 12, nextCycleId: 12, rank: R, counters: { updates: 12, cyclesStarted: 12 } });
    expect(p.gate).toMatchObject({ theta: savedGate.theta, t: 12, decision: 'pending' });
    // Only the files of the last generation remain, and no temp files.
    const files = (await readdir(dir)).sort();
    expect(files).toEqual([MANIFEST_NAME, ...manifest.pairs.map((x: { state: { file: string } }) => x.state.file)].sort());
    expect(Buffer.from(await readFile(join(dir, p.state.file))).equals(Buffer.from(savedBytes.p))).toBe(true);
  });

  it('holds periodic checkpoints to one per minIntervalMs, and a held one takes the latest state', async () => {
    const own = await mkdtemp(join(tmpdir(), 'mergenet-ckpt-interval-'));
    const coord = await serve(config(own, undefined, 500), { logger: silentLogger() });
    try {
      const { src, tgt } = await connectPair(coord);
      src.sendSlice({ ...S, rank: R, sliceId: 0, step: 0 });
      const seen: { updates: number; at: number }[] = [];
      coord.on('checkpoint', (c) => seen.push({ updates: c.updates, at: c.startedAt }));
      // 15 updates: due at 5, 10 and 15 (everyUpdates 5)
      for (let i = 1; i <= 15; i++) await completeCycle(coord, tgt, { ...T, rank: R, sliceId: i, step: i });
      if (!seen.some((c) => c.updates === 15)) await waitForEvent(coord, 'checkpoint', (c) => c.updates === 15);
      expect(seen[0].updates).toBe(5);
      // nothing due was lost: the last write holds every update, with none arriving after it
      expect(seen[seen.length - 1].updates).toBe(15);
      // and the writes started at least the interval apart (by their start: the events come when a
      // write is durable, and writes take unequal times, so the events' own gaps may be shorter)
      for (let i = 1; i < seen.length; i++) expect(seen[i].at - seen[i - 1].at).toBeGreaterThanOrEqual(495);
      src.close();
      tgt.close();
    } finally {
      await coord.close();
      await rm(own, { recursive: true, force: true });
    }
  });

  it('a restarted coordinator resumes bit-identical adapters at the same step and cycle id', async () => {
    const coord = await serve(config(dir), { logger: silentLogger() });
    try {
      const st = coord.status();
      expect(st.pairs.find((p) => p.id === 'p')).toMatchObject({ adapterStep: 12, updates: 12, nextCycleId: 12, cyclesStarted: 12 });
      expect(st.pairs.find((p) => p.id === 'back')).toMatchObject({ adapterStep: 2, rank: 3 });
      expect(Buffer.from(coord.exportAdapterState('p')!).equals(Buffer.from(savedBytes.p))).toBe(true);
      expect(Buffer.from(coord.exportAdapterState('back')!).equals(Buffer.from(savedBytes.back))).toBe(true);
      // The trust gate resumes exactly where it was.
      expect(st.pairs.find((p) => p.id === 'p')!.gate).toMatchObject(savedGate);

      const { src, tgt } = await connectPair(coord);
      // Feedback of a cycle from before the restart is stale, never applied.
      const rej = tgt.next('reject');
      tgt.sendFeedback(lastTransfer);
      expect((await rej).code).toBe('stale_cycle');

      src.sendSlice({ ...S, rank: R, sliceId: 0, step: 0 });
      const { transfer, update } = await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 1, step: 1000 });
      expect(transfer.cycleId).toBe(12);
      expect(transfer.adapterStep).toBe(12);
      expect(update.step).toBe(13);
      expect(transfer.gate).toBe(savedGate.value);
      expect(coord.status().pairs.find((p) => p.id === 'p')!.gate.updates).toBe(13);
      src.close();
      tgt.close();
    } finally {
      await coord.close();
    }
    const again = await new Checkpointer(dir).load();
    expect(again!.pairs.find((p) => p.id === 'p')!.adapterStep).toBe(13);
  });

  it('refuses a checkpoint whose pair no longer matches the config, and leaves it untouched', async () => {
    const before = await readFile(join(dir, MANIFEST_NAME), 'utf8');
    const swapped = [{ id: 'p', source: { device: 'tgt', slot: 'dense' }, target: { device: 'src', slot: 'conv' } }];
    await expect(serve(config(dir, swapped), { logger: silentLogger() })).rejects.toThrow(/checkpoint pair p links/);
    expect(await readFile(join(dir, MANIFEST_NAME), 'utf8')).toBe(before);
  });

  it('detects a corrupted pair file', async () => {
    const copy = await mkdtemp(join(tmpdir(), 'mergenet-ckpt-bad-'));
    try {
      const manifest = JSON.parse(await readFile(join(dir, MANIFEST_NAME), 'utf8'));
      await writeFile(join(copy, MANIFEST_NAME), JSON.stringify(manifest));
      for (const p of manifest.pairs) {
        const bytes = await readFile(join(dir, p.state.file));
        if (p.id === 'p') bytes[bytes.length - 1] ^= 1;
        await writeFile(join(copy, p.state.file), bytes);
      }
      await expect(new Checkpointer(copy).load()).rejects.toThrow(CheckpointError);
      await expect(serve(config(copy), { logger: silentLogger() })).rejects.toThrow(/does not match its manifest/);
    } finally {
      await rm(copy, { recursive: true, force: true });
    }
  });

  it('refuses a state file that matches its manifest but does not decode, naming the pair and the reason', async () => {
    const own = await mkdtemp(join(tmpdir(), 'mergenet-ckpt-state-'));
    try {
      const aw = AdapterWithOptimizer.create(defaultAdapterConfig(R));
      const state = decodeMessage(serializeAdapterState(aw.adapter, aw.opt)) as Record<string, any>;
      aw.dispose();
      state.optimizer.step = -2;
      const counters = { cyclesStarted: 0, updates: 0, drops: {} };
      await new Checkpointer(own).save({
        totals: { updates: 0, cyclesStarted: 0 },
        pairs: [{
          id: 'p', source: { device: 'src', slot: 'conv' }, target: { device: 'tgt', slot: 'dense' }, rank: R, auto: false,
          sourceMode: 'real', nextCycleId: 0, adapterStep: 0, counters, state: encodeMessage(state),
        }],
      });
      await expect(serve(config(own), { logger: silentLogger() })).rejects.toThrow(
        'checkpoint pair p: its state file is invalid: adapter state: optimizer.step must be a non-negative integer, got -2',
      );
    } finally {
      await rm(own, { recursive: true, force: true });
    }
  });

  it('a streaming save writes each state file as its pair arrives and the manifest last; a failed one leaves the previous checkpoint whole', async () => {
    const own = await mkdtemp(join(tmpdir(), 'mergenet-ckpt-stream-'));
    try {
      const counters = { cyclesStarted: 0, updates: 0, drops: {} };
      const pair = (id: string, adapterStep: number, fill: number) => ({
        id, source: { device: 'src', slot: 'conv' }, target: { device: 'tgt', slot: 'dense' }, rank: R, auto: false,
        sourceMode: 'real' as const, nextCycleId: 0, adapterStep, counters, state: new Uint8Array(64).fill(fill),
      });
      const cp = new Checkpointer(own);
      const pairFiles = async () => (await readdir(own)).filter((f) => f.startsWith('pair-')).sort();
      const manifest = async () => JSON.parse(await readFile(join(own, MANIFEST_NAME), 'utf8'));

      const g1 = await cp.save({ totals: { updates: 1, cyclesStarted: 1 }, pairs: [pair('a', 1, 1), pair('b', 1, 2)] });
      expect((await manifest()).generation).toBe(g1);

      // Pairs put out of order: each file is on disk once its put resolves, while the manifest
      // still names the previous generation; the new manifest lists the pairs in index order.
      const seen: string[][] = [];
      const g2 = await cp.saveStreaming(async (put) => {
        await put(1, pair('b', 2, 4));
        seen.push(await pairFiles());
        expect((await manifest()).generation).toBe(g1);
        await put(0, pair('a', 2, 3));
        seen.push(await pairFiles());
        return { updates: 2, cyclesStarted: 2 };
      });
      expect(seen[0]).toContain(`pair-1-b.g${g2}.bin`);
      expect(seen[0]).not.toContain(`pair-0-a.g${g2}.bin`);
      expect(seen[1]).toContain(`pair-0-a.g${g2}.bin`);
      const m2 = await manifest();
      expect(m2.generation).toBe(g2);
      expect(m2.pairs.map((p: { id: string }) => p.id)).toEqual(['a', 'b']);
      expect(await pairFiles()).toEqual([`pair-0-a.g${g2}.bin`, `pair-1-b.g${g2}.bin`]);

      // A fill that fails after one put: the save rejects and the manifest of g2 still loads.
      await expect(cp.saveStreaming(async (put) => {
        await put(0, pair('a', 3, 5));
        throw new Error('worker lost');
      })).rejects.toThrow('worker lost');
      const loaded = (await new Checkpointer(own).load())!;
      expect(loaded.generation).toBe(g2);
      expect([...loaded.pairs.find((p) => p.id === 'a')!.state!]).toEqual(new Array(64).fill(3));

      // The next save succeeds and removes the failed save's orphaned file.
      const g4 = await cp.save({ totals: { updates: 3, cyclesStarted: 3 }, pairs: [pair('a', 3, 6)] });
      expect(await pairFiles()).toEqual([`pair-0-a.g${g4}.bin`]);
    } finally {
      await rm(own, { recursive: true, force: true });
    }
  });

  it('SIGTERM: checkpoints, closes and exits 0', async () => {
    const coord = await serve(config(dir), { logger: silentLogger() });
    const { src, tgt } = await connectPair(coord);
    src.sendSlice({ ...S, rank: R, sliceId: 0, step: 0 });
    await completeCycle(coord, tgt, { ...T, rank: R, sliceId: 1, step: 5000 });
    const bytes = coord.exportAdapterState('p')!;
    const exited = new Promise<number>((resolve) => {
      const uninstall = installSignalHandlers(coord, silentLogger(), (code) => {
        uninstall();
        resolve(code);
      });
    });
    process.emit('SIGTERM', 'SIGTERM');
    expect(await exited).toBe(0);
    await tgt.disconnected();
    expect(tgt.connected).toBe(false);
    src.close();
    tgt.close();
    const loaded = await new Checkpointer(dir).load();
    const p = loaded!.pairs.find((x) => x.id === 'p')!;
    expect(p.adapterStep).toBe(14);
    expect(Buffer.from(p.state!).equals(Buffer.from(bytes))).toBe(true);
  });
});
