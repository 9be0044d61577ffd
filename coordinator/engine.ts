// The coordinator without its transport: devices and their registrations, pairs and their plans,
// the cycle of docs/DESIGN.md §9 (target slice + latest source slice → adapter → transfer → feedback →
// update), drops, metrics and checkpoints. It takes messages already decoded and schema-checked,
// checks their semantics (a refusal is a thrown ProtocolError, before any state changes), and
// sends through an injected Outbox, so it never touches a socket: server.ts is the socket edge.
import { performance } from 'node:perf_hooks';
import * as tf from '@tensorflow/tfjs';
import { CodecError, tensorToWire, wireToFloat32 } from '../shared/codec/tensor-codec.js';
import type { Logger } from '../shared/log.js';
import { disposeLowRank, truncateLowRank } from '../shared/math/low-rank.js';
import { ERROR_CODES, ProtocolError, type ErrorCode } from '../shared/protocol/errors.js';
import { EVENTS, type CoordinatorEvent, type CoordinatorMessage } from '../shared/protocol/events.js';
import type { FeedbackAckMsg, FeedbackMsg, LogitsMsg, Metrics, PlanMsg, RegisterMsg, SkipMsg, SkipReason, SliceMsg, TeacherFeedbackMsg, TeacherRequestMsg, TransferMsg } from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import type { StepResult } from './adapter/adamw.js';
import { factorShapes, factorsOf, type AdapterHost } from './adapter-host.js';
import { AdapterPool } from './adapter-pool.js';
import { Backpressure } from './backpressure.js';
import { Checkpointer, CheckpointError, type CheckpointPair } from './checkpoint.js';
import { CoalescingWriter } from './checkpoint-coalescer.js';
import type { CoordinatorConfig } from './config.js';
import type { Notify } from './events.js';
import { Pair, type CycleDropReason, type InFlightCycle } from './pair.js';
import type { TargetReport } from './gate/trust-gate.js';
import { autoPairConfigs, autoPairRank, planFor, planNotes } from './plan.js';
import { OutputChannelRouter } from './output-channel.js';
import { ProbeSplits } from './probe-splits.js';
import { Registry, type StoredSlice } from './registry.js';
import { SlicePacing, type PaceTick } from './slice-pacing.js';
import { buildStatus, type StatusSnapshot } from './status.js';

/** How the engine reaches devices. Connection ids are opaque to it (socket ids in server.ts). */
export interface Outbox {
  /** Send an encoded message on one connection; false if that connection is gone. */
  /**
   * Send a typed message on one connection; false if that connection is gone. Encoding happens at
   * the edge (server.ts), which throws if the message is larger than `maxBytes`.
   */
  send<E extends Exclude<CoordinatorEvent, 'reject'>>(connectionId: string, event: E, msg: CoordinatorMessage<E>, opts?: { maxBytes?: number }): boolean;
  /** Close a connection (one replaced by a newer connection of the same device). */
  disconnect(connectionId: string): void;
}

/** Who sent the message being processed, on which connection and session, and when it arrived. */
export interface Sender {
  deviceId: string;
  session: string;
  connectionId: string;
  now: number;
}

/** What restore() found: nothing (no checkpoint.dir, or an empty one), or the checkpoint it resumed. */
export interface RestoreSummary {
  resumed: boolean;
  dir?: string;
  generation?: number;
  savedAt?: string;
  /** adapter updates the checkpoint had counted, over all pairs */
  updates?: number;
  /** pairs in the checkpoint */
  pairs?: number;
}

/** What tests and benchmarks may inject. */
export interface EngineOptions {
  /** where adapters run instead of a worker pool of throughput.adapterWorkers threads */
  adapterHost?: AdapterHost;
}

function fail(code: ErrorCode, reason: string): never {
  throw new ProtocolError(code, reason);
}

function minDim(shape: [number, number] | undefined): number {
  return shape ? Math.min(shape[0], shape[1]) : Infinity;
}

export class CoordinatorEngine {
  readonly registry: Registry;
  private readonly pairs = new Map<string, Pair>();
  /** The pairs naming each device (as source or target): messages look up theirs, not all pairs. */
  private readonly pairsByDevice = new Map<string, Pair[]>();
  /** checkpointed pairs not (yet) recreated in this run: auto pairs wait for their devices */
  private readonly pendingRestore = new Map<string, CheckpointPair>();
  private readonly drops: Record<string, number> = {};
  private readonly deviceRejects = new Map<string, Record<string, number>>();
  private readonly checkpointer?: Checkpointer;
  private totalUpdates = 0;
  /** When the last periodic checkpoint started (performance.now()), and the one waiting, if any. */
  private lastPeriodicCheckpointAt = -Infinity;
  private checkpointTimer?: NodeJS.Timeout;
  private readonly startedAt: number;
  /** Set once restore() succeeded: only then may checkpoint() write (never over one it failed to read). */
  private restored = false;
  /** The public probe splits and the output channel's routing (docs/DESIGN.md §10). */
  readonly probes: ProbeSplits;
  private readonly output: OutputChannelRouter;
  /** Adapters off the event loop (created when first needed), and the backpressure of their cycles. */
  private host?: AdapterHost;
  private readonly work = new Backpressure();
  /** The slice pace asked of the devices when cycles are shed (pacer.ts); absent when turned off. */
  private readonly pacing?: SlicePacing;
  /** Set by drain(): no new cycle starts. */
  private closing = false;

  constructor(
    private readonly config: CoordinatorConfig,
    private readonly log: Logger,
    private readonly outbox: Outbox,
    private readonly notify: Notify,
    /** the clock of sweep() and status (injected by tests; messages carry their own `now`) */
    private readonly now: () => number = Date.now,
    opts: EngineOptions = {},
  ) {
    this.startedAt = now();
    this.host = opts.adapterHost;
    if (config.throughput.pace.enabled) {
      // A source's slice must still be young enough when its pair's target slice comes.
      this.pacing = new SlicePacing(now(), { maxIntervalMs: Math.max(1000, Math.min(60_000, config.timing.sourceMaxAgeMs / 2)) });
    }
    this.registry = new Registry(config.devices);
    for (const pc of config.pairs) this.addPair(new Pair(pc, () => this.adapterHost()));
    if (config.checkpoint.dir) this.checkpointer = new Checkpointer(config.checkpoint.dir);
    this.probes = new ProbeSplits(config.probes);
    this.output = new OutputChannelRouter(config, this.registry, this.probes, outbox, log, {
      gateDecided: (pair) => this.gateDecided(pair),
      updated: () => this.countUpdate(),
      setMetrics: (id, m, now) => this.registry.setMetrics(id, m, now),
    });
  }

  // ---------------------------------------------------------------- checkpoints, status, disposal

  /** Restore adapters and counters from checkpoint.dir, if it holds a checkpoint; says what it did. */
  async restore(): Promise<RestoreSummary> {
    if (!this.checkpointer) {
      this.restored = true;
      return { resumed: false };
    }
    const dir = this.checkpointer.dir;
    const loaded = await this.checkpointer.load();
    if (!loaded) {
      this.log.info({ dir }, 'no checkpoint to restore; starting fresh');
      this.restored = true;
      return { resumed: false, dir };
    }
    for (const saved of loaded.pairs) {
      const pair = this.pairs.get(saved.id);
      if (!pair) {
        if (saved.auto) {
          const autoRank = autoPairRank(this.config);
          if (saved.state && saved.rank > autoRank) {
            throw new CheckpointError(`checkpoint auto pair ${saved.id} has an adapter of rank ${saved.rank}, above defaults.rank ${autoRank}`);
          }
          this.pendingRestore.set(saved.id, saved);
        }
        else this.log.warn({ pairId: saved.id }, 'checkpointed pair is no longer in the config; its state is not carried forward');
        continue;
      }
      this.restorePair(pair, saved);
    }
    this.totalUpdates = loaded.totals.updates;
    this.restored = true;
    this.log.info(
      { dir: this.checkpointer.dir, generation: loaded.generation, savedAt: loaded.savedAt, pairs: loaded.pairs.map((p) => ({ id: p.id, step: p.adapterStep })) },
      'restored checkpoint',
    );
    return { resumed: true, dir, generation: loaded.generation, savedAt: loaded.savedAt, updates: loaded.totals.updates, pairs: loaded.pairs.length };
  }

  private restorePair(pair: Pair, saved: CheckpointPair): void {
    const same = (a: { device: string; slot: string }, b: { device: string; slot: string }) => a.device === b.device && a.slot === b.slot;
    if (!same(pair.source, saved.source) || !same(pair.target, saved.target)) {
      throw new CheckpointError(
        `checkpoint pair ${saved.id} links ${saved.source.device}.${saved.source.slot} → ${saved.target.device}.${saved.target.slot}, ` +
          `but the config links ${pair.source.device}.${pair.source.slot} → ${pair.target.device}.${pair.target.slot}: ` +
          'give the pair another id, or use another checkpoint.dir',
      );
    }
    if (saved.state && saved.rank > pair.config.rank) {
      throw new CheckpointError(`checkpoint pair ${saved.id} has an adapter of rank ${saved.rank}, above the configured rank ${pair.config.rank}`);
    }
    try {
      pair.restore(saved);
    } catch (err) {
      // A state file that matches its manifest yet does not decode (written by another build, or
      // edited): say which pair and why, and start nothing.
      if (err instanceof CodecError) throw new CheckpointError(`checkpoint pair ${saved.id}: its state file is invalid: ${err.message}`);
      throw err;
    }
    if (pair.adapterStep !== saved.adapterStep) {
      throw new CheckpointError(`checkpoint pair ${saved.id}: the manifest says adapter step ${saved.adapterStep}, its state file ${pair.adapterStep}`);
    }
  }

  /** One checkpoint write in flight; requests during it merge into one next write (checkpoint-coalescer.ts). */
  private readonly checkpointWrites = new CoalescingWriter(() => this.writeCheckpoint());

  /**
   * Write a checkpoint (a no-op without checkpoint.dir, or before restore() succeeded). Resolves once
   * a checkpoint holding the state of this call's instant, or a later one, is durable.
   */
  async checkpoint(): Promise<void> {
    if (!this.checkpointer || !this.restored) return;
    await this.checkpointWrites.request();
  }

  private async writeCheckpoint(): Promise<void> {
    const checkpointer = this.checkpointer!;
    const startedAt = performance.now();
    // Serialize every adapter that took a step since the last checkpoint (the others' files are
    // reused: with many pairs, most are unchanged between two checkpoints).
    const entry = (p: Pair) => (p.hasAdapter && checkpointer.hasState(p.id, p.adapterStep) ? p.snapshotUnchanged() : undefined);
    const pairs = [...this.pairs.values()];
    const restoring = [...this.pendingRestore.values()];
    const cyclesStarted = () => pairs.reduce((a, p) => a + p.counters.cyclesStarted, 0);
    let updates = this.totalUpdates;
    let generation: number;
    if (this.host) {
      generation = await checkpointer.saveStreaming(async (put) => {
        // From workers, each pair's state comes with its own counters (Pair.snapshotAsync):
        // consistent per pair, while the other pairs keep cycling meanwhile. Each state goes to
        // its file as it arrives, so memory holds the states in flight, not every adapter's.
        await inWindows(pairs, 2 * this.host!.size, async (p, i) => put(i, entry(p) ?? (await p.snapshotAsync())));
        for (const [j, saved] of restoring.entries()) await put(pairs.length + j, saved);
        updates = this.totalUpdates;
        return { updates, cyclesStarted: cyclesStarted() };
      });
    } else {
      // On the event loop, every pair is serialized now, at one instant (CoalescingWriter's contract).
      const snaps = [...pairs.map((p) => entry(p) ?? p.snapshot()), ...restoring];
      generation = await checkpointer.save({ totals: { updates, cyclesStarted: cyclesStarted() }, pairs: snaps });
    }
    this.log.info({ dir: checkpointer.dir, generation, updates }, 'checkpoint written');
    this.notify('checkpoint', { generation, updates, startedAt });
  }

  status(url: string, opts: { gateTraces?: boolean } = {}): StatusSnapshot {
    return buildStatus({
      ...opts,
      url,
      startedAt: this.startedAt,
      now: this.now(),
      devices: this.registry.all(),
      deviceRejects: this.deviceRejects,
      pairs: [...this.pairs.values()],
      drops: this.drops,
      adapterHost: this.host ? { workers: this.host.size, queued: this.work.queued, pending: this.work.pending, paceIntervalMs: this.pacing?.intervalMs } : undefined,
    });
  }

  pairIds(): string[] {
    return [...this.pairs.keys()];
  }

  exportAdapterState(pairId: string): Uint8Array | undefined {
    return this.pairs.get(pairId)?.exportState();
  }

  /** The same, wherever the adapter lives (from its worker, in order after its pending requests). */
  adapterState(pairId: string): Promise<Uint8Array | undefined> {
    return this.pairs.get(pairId)?.exportStateAsync() ?? Promise.resolve(undefined);
  }

  /**
   * Stop starting cycles and wait for the adapter work in the workers: every update whose feedback
   * was accepted lands in the adapters (so a checkpoint after this holds it). Held slices are let go.
   */
  async drain(): Promise<void> {
    this.closing = true;
    // the checkpoint that follows a drain holds everything a waiting periodic one would
    this.stopCheckpointTimer();
    this.work.clearHeld();
    await this.work.drain();
  }

  /** Dispose every adapter, remembered cycle input and stored slice. */
  dispose(): void {
    this.stopCheckpointTimer();
    for (const p of this.pairs.values()) p.dispose();
    this.registry.dispose();
  }

  /** Stop the adapter workers (after dispose(); their state is gone). */
  async closeAdapterHost(): Promise<void> {
    const host = this.host;
    this.host = undefined;
    await host?.close();
  }

  /** The adapter host, creating the worker pool the config asks for on first use. */
  private adapterHost(): AdapterHost | undefined {
    if (!this.host && this.config.throughput.adapterWorkers > 0) {
      this.host = new AdapterPool(this.config.throughput.adapterWorkers);
      this.log.info({ workers: this.host.size }, 'adapter worker pool started');
    }
    return this.host;
  }

  // ---------------------------------------------------------------- connections and drops

  private addPair(pair: Pair): void {
    this.pairs.set(pair.id, pair);
    for (const device of new Set([pair.source.device, pair.target.device])) {
      const list = this.pairsByDevice.get(device);
      if (list) list.push(pair);
      else this.pairsByDevice.set(device, [pair]);
    }
  }

  private pairsOf(deviceId: string): readonly Pair[] {
    return this.pairsByDevice.get(deviceId) ?? [];
  }

  /**
   * A new, authenticated connection: a fresh session. An older connection of the same device is
   * closed, and its in-flight cycles (as a target) are dropped as session_replaced.
   */
  connect(deviceId: string, connectionId: string, now: number): string {
    const { session, previousSocketId } = this.registry.connect(deviceId, connectionId, now);
    if (previousSocketId) {
      this.log.info({ deviceId, previousSocketId }, 'device reconnected; disconnecting its previous connection');
      this.outbox.disconnect(previousSocketId);
    }
    for (const pair of this.pairsOf(deviceId)) {
      if (pair.target.device !== deviceId) continue;
      // every cycle in flight belongs to an earlier session: this one was just created (an update
      // already running in a worker completes; its feedback was accepted)
      if (pair.inFlight && !pair.inFlight.applying) this.dropCycle(pair, 'session_replaced');
      // a slice held for the pair came on the old connection
      this.work.take(pair.id);
    }
    return session;
  }

  /**
   * A connection closed. The device is marked disconnected (if this was its current connection;
   * then true); its in-flight cycles stay until their deadline or until it reconnects.
   */
  disconnect(deviceId: string, connectionId: string, now: number): boolean {
    return this.registry.disconnect(deviceId, connectionId, now);
  }

  /** Every inbound message first: the device was seen, and its sender's session must be current. */
  admit(from: Sender): void {
    this.registry.touch(from.deviceId, from.now);
    if (this.registry.get(from.deviceId)?.session !== from.session) {
      fail('session_replaced', 'this connection was replaced by a newer one of the same device');
    }
  }

  countDrop(code: string): void {
    this.drops[code] = (this.drops[code] ?? 0) + 1;
  }

  /** Count a refused message: globally, per device, and for its pair if the sender is the target. */
  countReject(deviceId: string, code: ErrorCode, pairId: string | undefined): void {
    this.countDrop(code);
    const perDevice = this.deviceRejects.get(deviceId) ?? {};
    perDevice[code] = (perDevice[code] ?? 0) + 1;
    this.deviceRejects.set(deviceId, perDevice);
    const pair = pairId !== undefined ? this.pairs.get(pairId) : undefined;
    if (pair && pair.target.device === deviceId) pair.countDrop(code);
  }

  /**
   * The device's registration, which must come from this session: a reconnecting device registers
   * again (and so learns its new session's plan) before anything else. Earlier registrations are
   * kept only so that its peers' plans and ranks stay known while it is away.
   */
  private registrationOf(from: Sender) {
    const reg = this.registry.get(from.deviceId)?.registration;
    if (!reg || reg.session !== from.session) fail('not_registered', 'send register (on this connection) and wait for plan first');
    return reg;
  }

  // ---------------------------------------------------------------- register and plans

  /**
   * `register` {deviceId, model, slots, rank, step}. The deviceId must be the authenticated one
   * (else spoofed_device); slot names unique; rank ≤ limits.maxRank. Records the device, creates
   * auto pairs, fixes pair ranks and adapters where both slots are now known, and answers `plan`
   * (and sends updated plans to other connected devices whose plan changed).
   */
  register(from: Sender, msg: RegisterMsg): void {
    if (msg.deviceId !== from.deviceId) {
      fail('spoofed_device', `register names device "${msg.deviceId}" but this connection authenticated as "${from.deviceId}"`);
    }
    const names = new Set<string>();
    msg.slots.forEach((s, i) => {
      if (names.has(s.name)) fail('invalid_message', `register: slots[${i}].name: duplicate slot "${s.name}"`);
      names.add(s.name);
    });
    if (msg.rank > this.config.limits.maxRank) {
      fail('rank_out_of_bounds', `register: rank ${msg.rank} is above the coordinator limit ${this.config.limits.maxRank}`);
    }
    this.registry.register(from.deviceId, msg, from.session, from.now);
    if (this.config.autoPair.enabled) this.createAutoPairs();
    for (const pair of this.pairsOf(from.deviceId)) this.refreshPair(pair);
    this.log.info(
      { deviceId: from.deviceId, model: msg.model, slots: msg.slots, rank: msg.rank, step: msg.step },
      'device registered',
    );
    for (const pair of this.pairsOf(from.deviceId)) {
      for (const end of [pair.source, pair.target]) {
        if (end.device === from.deviceId && !names.has(end.slot)) {
          this.log.warn({ pairId: pair.id, deviceId: from.deviceId, slot: end.slot, registered: [...names] }, 'a pair names a slot this device did not register; the pair waits');
        }
      }
    }
    this.sendPlan(from.deviceId, true);
    // Only the plans of devices sharing a pair with this one can change (with autoPair, any
    // device's): asking every device made each registration O(devices × pairs).
    const peers = new Set<string>();
    for (const pair of this.pairsOf(from.deviceId)) {
      if (pair.source.device === from.deviceId) peers.add(pair.target.device);
      if (pair.target.device === from.deviceId) peers.add(pair.source.device);
    }
    const others = this.config.autoPair.enabled ? this.registry.registered().map((d) => d.id) : peers;
    for (const id of others) if (id !== from.deviceId) this.sendPlan(id, false);
    this.notify('register', { deviceId: from.deviceId, session: from.session });
  }

  /** Create the auto pairs newly possible, restoring any this run's checkpoint holds. */
  private createAutoPairs(): void {
    for (const pc of autoPairConfigs(this.config, this.registry.registered(), this.pairs.values())) {
      const id = pc.id;
      let pair = new Pair(pc, () => this.adapterHost());
      const saved = this.pendingRestore.get(id);
      if (saved) {
        try {
          this.restorePair(pair, saved);
        } catch (err) {
          // Checked at start-up; should this still fail, the pair starts fresh rather than
          // blocking every registration.
          this.log.error({ err, pairId: id }, 'could not restore an auto pair; it starts fresh');
          pair.dispose();
          pair = new Pair(pc, () => this.adapterHost());
        }
        this.pendingRestore.delete(id);
      }
      this.addPair(pair);
      this.log.info({ pairId: id, restored: saved !== undefined }, 'auto pair created');
    }
  }

  /**
   * Recompute a pair's effective rank and whether it can run. Before the adapter exists the rank is
   * the configured one capped by maxRank and both slots' min(m, n); once both slot shapes are known
   * the adapter is created, which fixes the rank.
   */
  private refreshPair(pair: Pair): void {
    const sShape = this.registry.slotShape(pair.source.device, pair.source.slot);
    const tShape = this.registry.slotShape(pair.target.device, pair.target.slot);
    const cap = Math.min(minDim(sShape), minDim(tShape));
    if (pair.refused) {
      // The gate's guard refused this source for good: it never comes back on its own.
      pair.active = false;
      pair.inactiveReason = `refused by its trust gate: ${pair.gate.reason ?? 'refused'}`;
      return;
    }
    if (pair.joinDone) {
      pair.active = false;
      pair.inactiveReason = `join only (join: once): the source's slice went into the target's weight at its first transfer; no live channel follows`;
      return;
    }
    if (sShape && tShape && pair.channel === undefined) {
      const why = this.resolveChannel(pair, tShape, sShape);
      if (why) {
        pair.active = false;
        pair.inactiveReason = why;
        this.log.warn({ pairId: pair.id, reason: why }, 'pair inactive');
        return;
      }
    }
    if (pair.channel === 'output') {
      // No adapter and no slices: the source's logits on the probe split are the transfer.
      pair.rank = Math.min(pair.config.rank, this.config.limits.maxRank, cap);
      pair.active = true;
      pair.inactiveReason = undefined;
      return;
    }
    if (sShape && tShape && pair.alignment === undefined) {
      const why = pair.resolveAlignment(tShape, sShape);
      if (why) {
        pair.active = false;
        pair.inactiveReason = why;
        this.log.warn({ pairId: pair.id, reason: why }, 'pair inactive');
        return;
      }
      if (pair.refused) {
        pair.active = false;
        pair.inactiveReason = `refused by its trust gate: ${pair.gate.reason ?? 'refused'}`;
        this.log.info({ pairId: pair.id, reason: pair.gate.reason }, 'trust gate refused the source');
        this.notify('gate', { pairId: pair.id, decision: 'refused', reason: pair.gate.reason ?? 'refused', gate: 0, updates: 0 });
        return;
      }
    }
    if (pair.hasAdapter) {
      if (cap < pair.rank) {
        pair.active = false;
        pair.inactiveReason = `a slot is now smaller (min dimension ${cap}) than the adapter's rank ${pair.rank}`;
        this.log.warn({ pairId: pair.id, reason: pair.inactiveReason }, 'pair inactive');
        return;
      }
    } else {
      pair.rank = Math.min(pair.config.rank, this.config.limits.maxRank, cap);
      if (sShape && tShape) pair.ensureAdapter();
    }
    pair.active = true;
    pair.inactiveReason = undefined;
  }

  /**
   * Fix what a pair exchanges (docs/DESIGN.md §10): 'parameter' where the config says so, or, under
   * 'auto', where the slots share both axes (or the config set an explicit align); 'output' where
   * the config says so, or, under 'auto', where the slots share no axis and the devices share an
   * input space, a probe split and a task. A reason is returned when the pair cannot run at all.
   */
  private resolveChannel(pair: Pair, tShape: [number, number], sShape: [number, number]): string | undefined {
    const want = pair.config.channel;
    if (want === 'parameter') {
      pair.channel = 'parameter';
      pair.channelReason = 'as configured';
      return undefined;
    }
    const whyNotOutput = this.output.whyNot(pair);
    const space = this.registry.get(pair.target.device)?.registration?.inputSpace;
    const outputWhy = `both devices read "${space}" and share probe split "${this.probes.forSpace(space)?.id}"; the source's logits on it are tried as a readout of this classifier, then distilled if the gate keeps the source`;
    if (want === 'output') {
      if (whyNotOutput) return `output channel: ${whyNotOutput}`;
      pair.useOutputChannel();
      pair.channelReason = `as configured; ${outputWhy}`;
      return undefined;
    }
    const shared = tShape[0] === sShape[0] && tShape[1] === sShape[1];
    if (shared || pair.config.align !== 'auto' || whyNotOutput) {
      pair.channel = 'parameter';
      pair.channelReason = shared
        ? `the slots have one shape [${tShape.join(', ')}]: the source's slice is swapped in under the trust gate`
        : pair.config.align !== 'auto'
          ? `align '${pair.config.align}' is configured`
          : `the slots share no shape, and no output channel: ${whyNotOutput}`;
      if (!shared && pair.config.align === 'auto' && whyNotOutput) pair.outputRefusal = whyNotOutput;
      return undefined;
    }
    pair.useOutputChannel();
    pair.channelReason = `the slots share no axis ([${sShape.join(', ')}] → [${tShape.join(', ')}]); ${outputWhy}`;
    return undefined;
  }

  /** Send a device its plan if it is connected and registered, and the plan changed (or `force`). */
  private sendPlan(deviceId: string, force: boolean): void {
    const d = this.registry.get(deviceId);
    if (!d || !d.connected || !d.registration || !d.session || !d.socketId) return;
    const pairs = planFor(deviceId, this.pairsOf(deviceId), this.registry);
    const notes = planNotes(deviceId, this.pairsOf(deviceId), this.registry, this.config.autoPair);
    const probe = this.probes.forSpace(d.registration.inputSpace);
    const key = JSON.stringify([pairs, notes, probe?.id]);
    if (!force && key === d.lastPlanKey) return;
    const plan: PlanMsg = { deviceId, session: d.session, protocolVersion: PROTOCOL_VERSION, maxMessageBytes: this.config.limits.maxMessageBytes, pairs };
    if (notes.length) plan.notes = notes;
    if (probe) plan.probe = probe;
    if (!this.outbox.send(d.socketId, EVENTS.plan, plan)) return;
    d.lastPlanKey = key;
    // A new session starts without a pace: tell it the one in force.
    if (force && this.pacing?.intervalMs) this.outbox.send(d.socketId, EVENTS.pace, { sliceIntervalMs: this.pacing.intervalMs });
    this.log.info({ deviceId, pairs: pairs.map((p) => `${p.pairId}:${p.role}:r${p.rank}`), notes }, 'plan sent');
  }

  // ---------------------------------------------------------------- slices and cycles

  /**
   * `slice` {slot, sliceId, step, rank, A [m, rank], B [rank, n]}. Checks: registered, slot known,
   * 1 ≤ rank ≤ min(m, n) and ≤ limits.maxRank, and rank ≥ the rank of every active pair of this slot
   * (a larger rank is truncated to each pair's rank; a smaller one cannot serve and is refused with
   * rank_out_of_bounds), tensor shapes, finite values. Then stores it as the slot's latest slice and
   * tries to start a cycle of every pair whose target is this slot.
   */
  slice(from: Sender, msg: SliceMsg): void {
    const reg = this.registrationOf(from);
    const shape = reg.slots.get(msg.slot);
    if (!shape) fail('unknown_slot', `slot "${msg.slot}" was not registered by device "${from.deviceId}"`);
    const [m, n] = shape;
    const maxR = Math.min(m, n, this.config.limits.maxRank);
    if (msg.rank < 1 || msg.rank > maxR) {
      fail('rank_out_of_bounds', `rank ${msg.rank} is outside [1, ${maxR}] (slot [${m}, ${n}], limit ${this.config.limits.maxRank})`);
    }
    let needed = 0;
    for (const p of this.pairsOf(from.deviceId)) {
      if (!p.active) continue;
      const uses = (p.source.device === from.deviceId && p.source.slot === msg.slot) || (p.target.device === from.deviceId && p.target.slot === msg.slot);
      if (uses) needed = Math.max(needed, p.rank);
    }
    if (msg.rank < needed) fail('rank_out_of_bounds', `rank ${msg.rank} is below ${needed}, the rank the plan gives this slot`);
    const A = wireToFloat32(msg.A, { name: 'slice.A', shape: [m, msg.rank] });
    const B = wireToFloat32(msg.B, { name: 'slice.B', shape: [msg.rank, n] });

    // Valid: from here on, state changes.
    const stored: StoredSlice = {
      slot: msg.slot,
      sliceId: msg.sliceId,
      step: msg.step,
      rank: msg.rank,
      A: tf.tensor2d(A.values, [m, msg.rank], 'float32'),
      B: tf.tensor2d(B.values, [msg.rank, n], 'float32'),
      at: from.now,
      session: from.session,
    };
    this.registry.storeSlice(from.deviceId, stored);
    for (const pair of this.pairsOf(from.deviceId)) {
      if (!pair.active || pair.target.device !== from.deviceId || pair.target.slot !== msg.slot) continue;
      if (this.host && pair.usesAdapter) this.pacing?.countSlice();
      this.tryStartCycle(pair, stored, from);
    }
  }

  /**
   * Start a cycle of `pair` on a fresh target slice, if: no cycle is in flight (an expired one is
   * dropped as cycle_timeout first), the source slot has a slice younger than sourceMaxAgeMs and of
   * at least the pair's rank, and T_cycle target steps have passed since the pair's last cycle.
   * Otherwise the pair waits (counted in its `skips`). A failure here drops only this pair's cycle.
   */
  private tryStartCycle(pair: Pair, slice: StoredSlice, from: Sender): void {
    const now = from.now;
    // Every target slice is answered, by a transfer or by a skip, so a device can pace itself.
    const skip = (reason: SkipReason) => {
      pair.countSkip(reason);
      const msg: SkipMsg = { pairId: pair.id, sliceId: slice.sliceId, reason };
      this.outbox.send(from.connectionId, EVENTS.skip, msg);
    };
    // Where the adapter runs in a worker, a busy pair holds the slice instead (backpressure.ts).
    const host = pair.usesAdapter ? this.adapterHost() : undefined;
    if (host && (pair.inFlight || this.work.isForwarding(pair.id)) && !pair.inFlightExpired(now)) return this.holdSlice(pair, slice, from);
    if (pair.inFlight) {
      if (pair.inFlightExpired(now)) this.dropCycle(pair, 'cycle_timeout');
      else return skip('in_flight');
    }
    const src = this.registry.latestSlice(pair.source.device, pair.source.slot);
    if (!src) return skip('no_source');
    if (now - src.at > this.config.timing.sourceMaxAgeMs) return skip('source_too_old');
    if (src.rank < pair.rank) return skip('source_rank_too_low');
    const last = pair.counters.lastCycleStep;
    // A step count that went backwards means the device restarted its training: count afresh.
    if (last !== undefined && slice.step >= last && slice.step - last < pair.config.tCycle) return skip('too_soon');
    if (host) {
      if (this.closing) return;
      // Saturated: shed this cycle rather than queue it behind the others.
      if (this.work.queued >= this.config.throughput.maxQueuedPerWorker * host.size) {
        this.pacing?.countShed();
        return skip('overloaded');
      }
      return this.startCycleInWorker(pair, slice, src, from, skip);
    }

    let cycleId: number | undefined;
    try {
      pair.ensureAdapter();
      const r = pair.rank;
      const t0 = performance.now();
      const started = pair.startCycle(truncateLowRank(slice, r), truncateLowRank(src, r), {
        session: from.session,
        sliceId: slice.sliceId,
        step: slice.step,
        now,
        timeoutMs: this.config.timing.cycleTimeoutMs,
        sourceStep: src.step,
      });
      cycleId = started.cycleId;
      const adapterMs = performance.now() - t0;
      let msg: TransferMsg;
      try {
        msg = {
          pairId: pair.id,
          cycleId,
          sliceId: slice.sliceId,
          slot: pair.target.slot,
          A: tensorToWire(started.out.A.dataSync() as Float32Array, started.out.A.shape),
          B: tensorToWire(started.out.B.dataSync() as Float32Array, started.out.B.shape),
          adapterStep: pair.adapterStep,
          gate: started.gate,
        };
      } finally {
        disposeLowRank(started.out);
      }
      // The transfer answers the slice, on the connection it came from (an oversize one throws
      // here and drops the cycle).
      this.outbox.send(from.connectionId, EVENTS.transfer, msg, { maxBytes: this.config.limits.maxMessageBytes });
      this.notify('cycle', { pairId: pair.id, cycleId, sliceId: slice.sliceId, targetDevice: pair.target.device, sourceMode: pair.config.sourceMode, adapterStep: pair.adapterStep, gate: started.gate, adapterMs });
    } catch (err) {
      this.log.error({ err, pairId: pair.id, cycleId }, 'could not start a cycle');
      if (pair.inFlight && pair.inFlight.cycleId === cycleId) this.dropCycle(pair, 'internal');
      else skip('internal');
    }
  }

  /**
   * Hold a target slice for a busy pair (its one pending slice). The slice it supersedes is
   * answered with a skip and counted as a `superseded` drop.
   */
  private holdSlice(pair: Pair, slice: StoredSlice, from: Sender): void {
    const old = this.work.hold(pair.id, { sliceId: slice.sliceId, from });
    if (!old) return;
    this.pacing?.countShed();
    this.countDrop('superseded');
    pair.countDrop('superseded');
    const msg: SkipMsg = { pairId: pair.id, sliceId: old.sliceId, reason: 'superseded' };
    this.outbox.send(old.from.connectionId, EVENTS.skip, msg);
  }

  /** The pair is free again: start its held slice, if that is still the target's latest. */
  private resume(pair: Pair): void {
    if (this.closing || pair.inFlight || this.work.isForwarding(pair.id)) return;
    const held = this.work.take(pair.id);
    if (!held || !pair.active) return;
    const slice = this.registry.latestSlice(pair.target.device, pair.target.slot);
    if (!slice || slice.sliceId !== held.sliceId || slice.session !== held.from.session) return;
    if (this.registry.get(pair.target.device)?.session !== held.from.session) return;
    this.tryStartCycle(pair, slice, { ...held.from, now: this.now() });
  }

  /**
   * tryStartCycle where the adapter lives in a worker: the input is made here, the forward runs
   * there, and the transfer leaves when it returns. The cycle's deadline counts from then.
   */
  private startCycleInWorker(pair: Pair, slice: StoredSlice, src: StoredSlice, from: Sender, skip: (reason: SkipReason) => void): void {
    let input;
    try {
      pair.ensureAdapter();
      const r = pair.rank;
      input = pair.prepareCycle(truncateLowRank(slice, r), truncateLowRank(src, r));
    } catch (err) {
      this.log.error({ err, pairId: pair.id }, 'could not start a cycle');
      return skip('internal');
    }
    const host = pair.remoteHost!;
    this.pacing?.countStarted();
    const sliceId = slice.sliceId;
    const step = slice.step;
    const sourceStep = src.step;
    const t0 = performance.now();
    this.work
      .forward(pair.id, host.forward(pair.id, factorsOf(input.target), factorsOf(input.source)))
      .then(
        (out) => {
          const adapterMs = performance.now() - t0;
          // The world may have moved on while the worker ran.
          if (this.closing || !pair.active) {
            disposeLowRank(input.target);
            disposeLowRank(input.source);
            return;
          }
          if (this.registry.get(pair.target.device)?.session !== from.session) {
            disposeLowRank(input.target);
            disposeLowRank(input.source);
            this.countDrop('session_replaced');
            pair.countDrop('session_replaced');
            return;
          }
          const shapes = factorShapes(out);
          const { cycleId, gate } = pair.commitCycle(input, shapes, true, {
            session: from.session,
            sliceId,
            step,
            now: this.now(),
            timeoutMs: this.config.timing.cycleTimeoutMs,
            sourceStep,
          });
          const msg: TransferMsg = {
            pairId: pair.id,
            cycleId,
            sliceId,
            slot: pair.target.slot,
            A: tensorToWire(out.A, shapes.A),
            B: tensorToWire(out.B, shapes.B),
            adapterStep: pair.adapterStep,
            gate,
          };
          try {
            this.outbox.send(from.connectionId, EVENTS.transfer, msg, { maxBytes: this.config.limits.maxMessageBytes });
          } catch (err) {
            this.log.error({ err, pairId: pair.id, cycleId }, 'could not send a transfer');
            this.dropCycle(pair, 'internal');
            return;
          }
          this.notify('cycle', { pairId: pair.id, cycleId, sliceId, targetDevice: pair.target.device, sourceMode: pair.config.sourceMode, adapterStep: pair.adapterStep, gate, adapterMs });
        },
        (err) => {
          disposeLowRank(input.target);
          disposeLowRank(input.source);
          this.log.error({ err, pairId: pair.id }, 'could not start a cycle');
          skip('internal');
        },
      )
      .catch((err: unknown) => this.log.error({ err, pairId: pair.id }, 'cycle bookkeeping failed'))
      .finally(() => this.resume(pair));
  }

  /** Abandon a pair's in-flight cycle (its input is disposed) and count it. */
  private dropCycle(pair: Pair, reason: CycleDropReason): void {
    const c = pair.dropInFlight(reason);
    if (!c) return;
    this.countDrop(reason);
    this.log.info({ pairId: pair.id, cycleId: c.cycleId, reason }, 'cycle dropped');
    this.notify('drop', { code: reason, reason: ERROR_CODES[reason], event: 'cycle', deviceId: pair.target.device, pairId: pair.id, cycleId: c.cycleId });
  }

  /** Drop expired cycles, so a dead target's remembered input is freed and counted promptly. */
  sweep(): void {
    try {
      const now = this.now();
      for (const pair of this.pairs.values()) {
        if (!pair.inFlightExpired(now)) continue;
        this.dropCycle(pair, 'cycle_timeout');
        this.resume(pair);
      }
    } catch (err) {
      this.log.error({ err }, 'sweep failed');
    }
  }

  /**
   * Close the slice pace's window (every throughput.pace.windowMs): where cycles were shed, every
   * connected device is asked to send its slices further apart; where none were for a while, closer.
   * `loop`: the event loop's utilization over the window (0..1), measured by the caller.
   */
  paceTick(loop?: number): PaceTick | undefined {
    if (!this.pacing || !this.host) return undefined;
    let active = 0;
    for (const p of this.pairs.values()) if (p.active && p.usesAdapter) active++;
    const t = this.pacing.tick(this.now(), active, this.host.busyMs, this.host.size, loop);
    if (t.announce === undefined) return t;
    this.log.info({ sliceIntervalMs: t.announce, shedFraction: +t.shedFraction.toFixed(3), capacity: t.capacity, why: t.why, busy: t.busy, loop: t.loop }, 'slice pace changed');
    for (const d of this.registry.registered()) {
      if (d.connected && d.socketId) this.outbox.send(d.socketId, EVENTS.pace, { sliceIntervalMs: t.announce });
    }
    this.notify('pace', { sliceIntervalMs: t.announce, shedFraction: t.shedFraction, capacity: t.capacity, why: t.why, busy: t.busy, loop: t.loop });
    return t;
  }

  // ---------------------------------------------------------------- feedback and metrics

  /**
   * `feedback` {pairId, cycleId, steps, scale, gA [m, r], gB [r, n], metrics}. Checks, in this
   * order (docs/PROTOCOL.md §4.5), the first failure decides the code:
   * 1. registered on this session (not_registered);
   * 2. the pair exists and this device is its target (unknown_pair);
   * 3. the cycle is the one in flight; if not, how it ended: dropped at a reconnect
   *    (session_replaced), dropped at its deadline (cycle_timeout, remembered for every timed-out
   *    cycle), anything else — replayed, already applied, never started — stale_cycle;
   * 4. the cycle was sent on this session (session_replaced);
   * 5. its deadline has not passed (cycle_timeout; the cycle is dropped here);
   * 6. gA and gB are tensors shaped as A′ and B′ with finite values (bad_tensor, shape_mismatch,
   *    non_finite).
   * So late feedback gets cycle_timeout whether or not the sweep or a new slice ended the cycle
   * first, and never stale_cycle. Then the adapter takes one vector-Jacobian AdamW step at the
   * remembered input, the device gets `feedback_ack` with the new adapter step, its metrics are
   * recorded, and a checkpoint is written every checkpoint.everyUpdates updates.
   */
  feedback(from: Sender, msg: FeedbackMsg): void {
    this.registrationOf(from);
    const pair = this.pairs.get(msg.pairId);
    if (!pair || pair.target.device !== from.deviceId) {
      fail('unknown_pair', `no pair "${msg.pairId}" has device "${from.deviceId}" as its target`);
    }
    const c = pair.inFlight;
    if (!c || c.cycleId !== msg.cycleId) {
      const ended = pair.endedAs(msg.cycleId);
      if (ended === 'session_replaced' || ended === 'cycle_timeout') fail(ended, `cycle ${msg.cycleId} of pair ${pair.id} was dropped: ${ERROR_CODES[ended]}`);
      const now = c ? `cycle ${c.cycleId} is in flight` : 'no cycle is in flight';
      const what = ended === 'completed' ? 'was already applied' : msg.cycleId >= pair.nextCycleId ? 'was never started' : 'is not in flight';
      fail('stale_cycle', `cycle ${msg.cycleId} of pair ${pair.id} ${what} (${now})`);
    }
    if (c.applying) fail('stale_cycle', `cycle ${msg.cycleId} of pair ${pair.id} is being applied`);
    if (c.session !== from.session) fail('session_replaced', `cycle ${c.cycleId} was sent to an earlier connection of this device`);
    if (from.now > c.deadline) {
      this.dropCycle(pair, 'cycle_timeout');
      fail('cycle_timeout', `cycle ${c.cycleId} of pair ${pair.id} expired ${from.now - c.deadline} ms ago (timeout ${this.config.timing.cycleTimeoutMs} ms)`);
    }
    const gA = wireToFloat32(msg.gA, { name: 'feedback.gA', shape: c.outShapes.A });
    const gB = wireToFloat32(msg.gB, { name: 'feedback.gB', shape: c.outShapes.B });
    const report: TargetReport = { trainAcc: msg.metrics.trainAcc, sourceGrad: msg.sourceGrad, relevance: pair.relevanceOf(gA.values, gB.values) };

    // Valid: apply.
    if (c.adapterRan && pair.remoteHost) return this.feedbackInWorker(pair, c, gA.values, gB.values, from, msg, report);
    const tA = tf.tensor2d(gA.values, c.outShapes.A, 'float32');
    const tB = tf.tensor2d(gB.values, c.outShapes.B, 'float32');
    let res;
    const t0 = performance.now();
    try {
      // If the update throws, the cycle ends and the edge answers `internal` (counted once there).
      res = pair.applyFeedback(tA, tB, msg.gateGrad, from.now, report);
    } finally {
      tA.dispose();
      tB.dispose();
    }
    this.feedbackApplied(pair, c.cycleId, res, from, msg, performance.now() - t0);
  }

  /**
   * feedback() where the adapter lives in a worker: its update runs there, and the cycle counts as
   * in flight (and cannot time out or be replaced) until it is back; then the same bookkeeping.
   */
  private feedbackInWorker(pair: Pair, c: InFlightCycle, gA: Float32Array, gB: Float32Array, from: Sender, msg: FeedbackMsg, report: TargetReport): void {
    c.applying = true;
    const host = pair.remoteHost!;
    const t0 = performance.now();
    // Exact copies: a view may share a larger buffer, which postMessage would copy whole.
    this.work
      .track(host.update(pair.id, gA.slice(), gB.slice()))
      .then(
        (step: StepResult) => {
          const res = pair.completeFeedback(step, msg.gateGrad, from.now, report);
          this.feedbackApplied(pair, c.cycleId, res, from, msg, performance.now() - t0);
        },
        (err: unknown) => {
          pair.failFeedback();
          throw err;
        },
      )
      .catch((err: unknown) => {
        // What the edge does for a synchronous failure: counted once, as internal.
        this.log.error({ err, pairId: pair.id, cycleId: c.cycleId }, 'adapter update failed');
        this.countReject(from.deviceId, 'internal', pair.id);
        this.notify('drop', { code: 'internal', reason: ERROR_CODES.internal, event: 'feedback', deviceId: from.deviceId, pairId: pair.id, cycleId: c.cycleId });
      })
      .finally(() => this.resume(pair));
  }

  /** After an update (or the gate's step alone): metrics, ack, events, the periodic checkpoint. */
  private feedbackApplied(pair: Pair, cycleId: number, res: { adapter?: StepResult; gate: ReturnType<Pair['completeFeedback']>['gate'] }, from: Sender, msg: FeedbackMsg, adapterMs: number): void {
    if (msg.branchRatio !== undefined) pair.lastBranchRatio = msg.branchRatio;
    this.registry.setMetrics(from.deviceId, msg.metrics, from.now);
    this.totalUpdates++;
    const step = res.adapter?.step ?? pair.adapterStep;
    const gradNorm = res.adapter?.gradNorm ?? 0;
    const clipped = res.adapter?.clipped ?? false;
    // The cycle is complete: tell the target (its feedback counted, and the step it produced).
    const ack: FeedbackAckMsg = { pairId: pair.id, cycleId, adapterStep: step, updates: pair.counters.updates };
    this.outbox.send(from.connectionId, EVENTS.feedbackAck, ack);
    this.log.debug({ pairId: pair.id, cycleId, step, gradNorm, clipped, gate: res.gate.after, dTheta: res.gate.dTheta, steps: msg.steps, scale: msg.scale }, 'pair updated');
    this.notify('update', { pairId: pair.id, cycleId, step, gradNorm, clipped, gate: res.gate.after, gateGrad: res.gate.dTheta, adapterMs });
    if (res.gate.decided) this.gateDecided(pair);
    if (pair.joinDone && pair.active) {
      this.refreshPair(pair);
      this.log.info({ pairId: pair.id }, 'join-only pair done');
      this.sendPlan(pair.target.device, false);
      this.sendPlan(pair.source.device, false);
    }
    this.periodicCheckpoint();
  }

  /**
   * A checkpoint every checkpoint.everyUpdates updates, of either channel, but at most one per
   * checkpoint.minIntervalMs: one due sooner waits for the interval's end (and then takes the state
   * of that moment). At hundreds of updates per second, writing every 50 updates kept a write
   * always running, and exporting every adapter that stepped cost a quarter of the CPU per update.
   */
  private periodicCheckpoint(): void {
    const { everyUpdates, minIntervalMs } = this.config.checkpoint;
    if (!this.checkpointer || this.totalUpdates % everyUpdates !== 0 || this.checkpointTimer || this.closing) return;
    const wait = this.lastPeriodicCheckpointAt + minIntervalMs - performance.now();
    if (wait <= 0) return this.startPeriodicCheckpoint();
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = undefined;
      if (!this.closing) this.startPeriodicCheckpoint();
    }, wait);
    this.checkpointTimer.unref();
  }

  private startPeriodicCheckpoint(): void {
    this.lastPeriodicCheckpointAt = performance.now();
    this.checkpoint().catch((err) => this.log.error({ err }, 'periodic checkpoint failed'));
  }

  private stopCheckpointTimer(): void {
    if (this.checkpointTimer) clearTimeout(this.checkpointTimer);
    this.checkpointTimer = undefined;
  }

  /** An output pair's gate took a step: counted as an update like an adapter's. */
  private countUpdate(): void {
    this.totalUpdates++;
    this.periodicCheckpoint();
  }

  // ---------------------------------------------------------------- the output channel

  /** `logits` {probeId, step, values}: a source's log-probabilities on its probe split (output-channel.ts). */
  logits(from: Sender, msg: LogitsMsg): void {
    this.registrationOf(from);
    this.output.logits(from, msg);
  }

  /** `teacher_request` {pairId, requestId, step}: an output pair's target starts a cycle. */
  teacherRequest(from: Sender, msg: TeacherRequestMsg): void {
    this.registrationOf(from);
    this.output.teacherRequest(from, this.pairs.get(msg.pairId), msg, (p) => this.dropCycle(p, 'cycle_timeout'));
  }

  /** `teacher_feedback` {pairId, cycleId, steps, gateGrad, metrics}: a step of an output pair's gate. */
  teacherFeedback(from: Sender, msg: TeacherFeedbackMsg): void {
    this.registrationOf(from);
    this.output.teacherFeedback(from, this.pairs.get(msg.pairId), msg, (p) => this.dropCycle(p, 'cycle_timeout'));
  }

  /**
   * The gate's guard decided. A refused pair leaves both devices' plans (so the target drops its
   * branch and the source stops sending slices for it) and stays out for good, checkpoints included.
   */
  private gateDecided(pair: Pair): void {
    const decision = pair.gate.decision as 'accepted' | 'refused';
    const reason = pair.gate.reason ?? decision;
    this.log.info({ pairId: pair.id, decision, reason, gate: pair.gate.value, updates: pair.gate.updates }, `trust gate ${decision} the source`);
    this.notify('gate', { pairId: pair.id, decision, reason, gate: pair.gate.value, updates: pair.gate.updates });
    if (decision !== 'refused') return;
    this.refreshPair(pair);
    this.sendPlan(pair.target.device, false);
    this.sendPlan(pair.source.device, false);
  }

  /** `metrics` {step, loss, valAcc?, stepsPerSec?}: kept as the device's latest metrics for status. */
  metrics(from: Sender, msg: Metrics): void {
    this.registrationOf(from);
    this.registry.setMetrics(from.deviceId, msg, from.now);
  }
}

/**
 * fn over items with at most `window` calls pending at once. A checkpoint asks the workers for a
 * few adapter states at a time: asking for all at once queued hundreds of exports ahead of the
 * cycles' forwards and updates.
 */
async function inWindows<T>(items: readonly T[], window: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(window, items.length)) }, lane));
}
