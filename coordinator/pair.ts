// One pair (source device/slot → target device/slot): its adapter and optimiser, its counters,
// and the cycle in flight. A pair has at most one cycle in flight; it owns that cycle's remembered
// input (the adapter's update needs the exact input that produced the transfer).
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../shared/math/low-rank.js';
import { disposeLowRank } from '../shared/math/low-rank.js';
import type { ErrorCode } from '../shared/protocol/errors.js';
import { deserializeAdapterState, serializeAdapterState } from './adapter/state.js';
import { AdapterWithOptimizer } from './adapter/update.js';
import type { AdapterHost } from './adapter-host.js';
import type { StepResult } from './adapter/adamw.js';
import type { CheckpointPair, PairCountersSnapshot } from './checkpoint.js';
import { hash32, pairAdapterConfig, type Endpoint, type PairConfig } from './config.js';
import { alignmentFits, inferAlignment, passThroughStart, type Alignment } from './adapter/pass-through.js';
import { GateTrace } from './gate/gate-trace.js';
import { TrustGate, type GateState, type GateStep, type GateTracePoint, type TargetReport } from './gate/trust-gate.js';
import { noiseLikeLowRank, noiseSeed } from './noise.js';
import { relevanceTrial, type RelevanceTrial } from './gate/relevance.js';

/** Why a cycle ended without an update. */
export type CycleDropReason = Extract<ErrorCode, 'cycle_timeout' | 'session_replaced' | 'internal'>;

/** Why a target slice did not start a cycle (not errors: the pair waits). */
export type { SkipReason } from '../shared/protocol/messages.js';
import type { SkipReason } from '../shared/protocol/messages.js';

export interface InFlightCycle {
  cycleId: number;
  /** the target's session that received the transfer */
  session: string;
  sliceId: number;
  startedAt: number;
  deadline: number;
  /**
   * the exact adapter input (owned by the pair until the cycle ends): the start factors as queries;
   * none for an output-channel cycle (its teacher is the source's logits, kept by the router)
   */
  input?: { target: LowRank; source: LowRank };
  /** the gate value the transfer carried (the device applied it; the gate's chain rule needs it) */
  gate: number;
  /** whether the adapter ran (and so takes a step from this cycle's feedback) */
  adapterRan: boolean;
  /** shapes of A′ and B′: the feedback's gA and gB must have these */
  outShapes: { A: [number, number]; B: [number, number] };
  /** accepted feedback whose update is running in a worker: the cycle can no longer time out or be replaced */
  applying?: boolean;
}

export interface PairCounters {
  cyclesStarted: number;
  /** feedback applied (each one a gate step, and an adapter step where the adapter runs) */
  updates: number;
  /** cycles abandoned and feedback refused, by reason */
  drops: Record<string, number>;
  /** target slices that did not start a cycle, by reason */
  skips: Record<string, number>;
  lastGradNorm?: number;
  lastClipped?: boolean;
  lastTransferAt?: number;
  lastUpdateAt?: number;
  /** the target's step at the last cycle start (T_cycle is counted from here) */
  lastCycleStep?: number;
  /** the source's training step behind the slice of the first and of the latest cycle */
  sourceStepFirst?: number;
  sourceStepLast?: number;
}

/** What happened to a recent cycle, so late or repeated feedback gets the precise reason. */
type Ended = 'completed' | CycleDropReason;
const ENDED_MEMORY = 32;

export class Pair {
  readonly id: string;
  readonly source: Endpoint;
  readonly target: Endpoint;
  /** Effective rank: fixed once the adapter exists. */
  rank: number;
  /** False when the pair cannot run (a slot is missing or too small for its adapter); see `inactiveReason`. */
  active = true;
  inactiveReason?: string;
  nextCycleId = 0;
  inFlight?: InFlightCycle;
  readonly counters: PairCounters = { cyclesStarted: 0, updates: 0, drops: {}, skips: {} };
  /** The pair's trust gate (docs/DESIGN.md §6). */
  gate: TrustGate;
  /**
   * What the pair exchanges, fixed once both devices registered: slices ('parameter') or the
   * source's logits on the probe split ('output', docs/DESIGN.md §10).
   */
  channel?: 'parameter' | 'output';
  /** why the pair got its channel, for the plan's notes */
  channelReason?: string;
  /** why 'auto' could not take the output channel for a pair whose slots share no axis */
  outputRefusal?: string;
  /** Where the adapter's output starts; fixed once both slot shapes are known. */
  alignment?: Alignment;
  /** ‖K‖/‖W‖ the target reported for its latest branch (from feedback), for status. */
  lastBranchRatio?: number;
  /** g after each update (at most 512 points: every other one is dropped when full), for reports */
  readonly gateTrace = new GateTrace();
  private model?: AdapterWithOptimizer;
  /** The optimiser step of an adapter that lives in an AdapterHost (undefined: none there). */
  private remoteStep?: number;
  private readonly ended = new Map<number, Ended>();
  /**
   * Every cycle that ended by its deadline, kept for the coordinator's lifetime (not only the last
   * ENDED_MEMORY), so that late feedback gets cycle_timeout however late it comes, never
   * stale_cycle. One number per timed-out cycle.
   */
  private readonly timedOut = new Set<number>();
  private readonly seed: number;

  constructor(
    readonly config: PairConfig,
    /** where the adapter lives if not on this thread (the engine's worker pool); asked when first needed */
    private readonly hostOf?: () => AdapterHost | undefined,
  ) {
    this.id = config.id;
    this.source = config.source;
    this.target = config.target;
    this.rank = config.rank;
    this.seed = hash32(config.id);
    this.gate = new TrustGate(config.gate);
  }

  get hasAdapter(): boolean {
    return this.model !== undefined || this.remoteStep !== undefined;
  }

  /** Optimiser steps taken (0 before the adapter exists). */
  get adapterStep(): number {
    return this.model?.step ?? this.remoteStep ?? 0;
  }

  /** The host holding this pair's adapter, if it lives off the event loop. */
  get remoteHost(): AdapterHost | undefined {
    return this.remoteStep !== undefined ? this.hostOf?.() : undefined;
  }

  /**
   * Does this pair run the LPKA? Not when its output starts as a pass-through of the source and
   * refinement is off: the start is then the transfer, and the adapter would be the identity.
   */
  get usesAdapter(): boolean {
    return this.alignment === 'none' || this.config.refineLr > 0;
  }

  /**
   * Fix the alignment from the slot shapes (config 'auto' → what they share). Returns a reason if
   * the configured alignment does not fit the shapes (the pair cannot run), else undefined.
   */
  resolveAlignment(target: [number, number], source: [number, number]): string | undefined {
    const want = this.config.align;
    // 'auto' takes a pass-through only where both shapes agree. A one-axis pass-through (equal rows
    // or equal columns) is opt-in: measured, on classifier slots sharing only the classes it cost
    // the target a point, and across first-layer widths the live swap took nothing (README).
    const align = want === 'auto' ? (inferAlignment(target, source) === 'both' ? 'both' : 'none') : want;
    if (want === 'auto' && align === 'none') {
      // With no shared axis the LPKA, trained on the held-out gradient, learns to perturb the
      // target's own slice whatever the source is: measured, a noise source then cost the target
      // up to 7 points, and no guard told it from a real one. Such a pair does not run unless the
      // config asks for it (align: none); unaligned models need the output channel instead.
      this.gate.refuse(
        'no shared axis between the slots: the parameter channel cannot tell this source from noise (set align: none to run the adapter anyway)' +
          (this.outputRefusal ? `; and no output channel: ${this.outputRefusal}` : ''),
      );
    }
    if (!alignmentFits(align, target, source)) {
      return `align '${align}' needs a shared axis, but the target slot is [${target.join(', ')}] and the source slot [${source.join(', ')}]`;
    }
    this.alignment = align;
    return undefined;
  }

  /** Create the adapter at the current effective rank, unless it exists or is not used. */
  ensureAdapter(): void {
    if (this.hasAdapter || this.alignment === undefined || !this.usesAdapter) return;
    const cfg = pairAdapterConfig(this.config, this.rank);
    // A pass-through start learns refinements at its own (small) rate.
    if (this.alignment !== 'none') cfg.lr = this.config.refineLr;
    const host = this.hostOf?.();
    if (host) {
      // Requests of a pair reach its worker in order, so nothing waits for this; should it fail,
      // the pair's next forward fails (no adapter there) and that cycle is dropped as internal.
      host.create(this.id, cfg).catch(() => undefined);
      this.remoteStep = 0;
    } else this.model = AdapterWithOptimizer.create(cfg);
  }

  /** The join-time transfer the target is asked for (pass-through starts only), if any. */
  get joinMode(): 'check' | 'always' | undefined {
    const j = this.config.join;
    if (j === 'off' || this.alignment === undefined || this.alignment === 'none') return undefined;
    // 'once' is 'always' for the device; the coordinator ends the pair after that transfer.
    return j === 'once' ? 'always' : j;
  }

  /**
   * A join-only pair (`join: once`) that has made its one transfer: it leaves the plans, with no
   * live channel after it (measured across widths, the live gate after a join cost what the join
   * had gained). Derived from the counters, so a restored checkpoint keeps it.
   */
  get joinDone(): boolean {
    return this.config.join === 'once' && this.channel !== 'output' && this.counters.updates > 0;
  }

  /** Refused by the gate's guard: the pair stops for good (it leaves the plans). */
  get refused(): boolean {
    return this.gate.decision === 'refused';
  }

  /**
   * Restore adapter, optimiser and counters from a checkpoint entry. The restored adapter fixes
   * the pair's rank.
   */
  restore(saved: CheckpointPair): void {
    if (saved.state) {
      const { adapter, opt } = deserializeAdapterState(saved.state);
      this.model?.dispose();
      this.model = undefined;
      const host = this.hostOf?.();
      if (host) {
        // Read here for the rank and step; the state itself moves to the pair's worker (in order,
        // ahead of any forward; a failure there fails the next forward, as in ensureAdapter).
        this.remoteStep = opt.stepCount;
        adapter.dispose();
        opt.dispose();
        host.restore(this.id, saved.state).catch(() => undefined);
      } else this.model = new AdapterWithOptimizer(adapter, opt);
      this.rank = adapter.config.rank;
    }
    this.nextCycleId = saved.nextCycleId;
    this.counters.cyclesStarted = saved.counters.cyclesStarted;
    this.counters.updates = saved.counters.updates;
    this.counters.drops = { ...saved.counters.drops };
    this.counters.lastGradNorm = saved.counters.lastGradNorm;
    this.counters.lastCycleStep = saved.counters.lastCycleStep;
    if (saved.gate) this.gate = new TrustGate(this.config.gate, saved.gate);
    if (saved.alignment) this.alignment = saved.alignment;
  }

  /** Bytes of the adapter and optimiser state (undefined before the adapter exists). */
  exportState(): Uint8Array | undefined {
    if (this.remoteStep !== undefined) throw new Error(`pair ${this.id}: the adapter lives in a worker; use exportStateAsync()`);
    return this.model ? serializeAdapterState(this.model.adapter, this.model.opt) : undefined;
  }

  /** The same bytes, wherever the adapter lives. */
  async exportStateAsync(): Promise<Uint8Array | undefined> {
    const host = this.remoteHost;
    return host ? host.exportState(this.id) : this.exportState();
  }

  /**
   * This pair as a checkpoint entry, wherever the adapter lives. From a worker, the counters are
   * read when its state arrives: the worker answers a pair's requests in order, so every update
   * in that state has had its reply (and its bookkeeping) on this thread by then.
   */
  async snapshotAsync(): Promise<CheckpointPair> {
    if (!this.remoteHost) return this.snapshot();
    const state = await this.exportStateAsync();
    return this.entry(state);
  }

  /** This pair as a checkpoint entry whose adapter state is the previous checkpoint's (same step). */
  snapshotUnchanged(): CheckpointPair {
    return { ...this.entry(undefined), stateUnchanged: true };
  }

  /** This pair as a checkpoint entry; the adapter is serialized now, synchronously. */
  snapshot(): CheckpointPair {
    return this.entry(this.exportState());
  }

  private entry(state: Uint8Array | undefined): CheckpointPair {
    const c = this.counters;
    const counters: PairCountersSnapshot = { cyclesStarted: c.cyclesStarted, updates: c.updates, drops: { ...c.drops } };
    if (c.lastGradNorm !== undefined) counters.lastGradNorm = c.lastGradNorm;
    if (c.lastCycleStep !== undefined) counters.lastCycleStep = c.lastCycleStep;
    return {
      id: this.id,
      source: this.source,
      target: this.target,
      rank: this.rank,
      auto: this.config.auto,
      sourceMode: this.config.sourceMode,
      nextCycleId: this.nextCycleId,
      adapterStep: this.adapterStep,
      counters,
      gate: this.gate.state(),
      alignment: this.alignment,
      state,
    };
  }

  countDrop(reason: string): void {
    this.counters.drops[reason] = (this.counters.drops[reason] ?? 0) + 1;
  }

  countSkip(reason: SkipReason): void {
    this.counters.skips[reason] = (this.counters.skips[reason] ?? 0) + 1;
  }

  /** True if a cycle is in flight and its deadline has passed. */
  inFlightExpired(now: number): boolean {
    return this.inFlight !== undefined && !this.inFlight.applying && now > this.inFlight.deadline;
  }

  /**
   * Start a cycle: the start factors (a pass-through of the source on the axes the slots share, or
   * the target's own slice), run through the adapter where it is used, and remember the input.
   * Takes ownership of `target` and `source`. In sourceMode 'noise' the source is replaced by
   * norm-matched noise before anything sees it (and the noise is what is remembered). Returns the
   * cycle id, A′, B′ (the caller owns them) and the gate value the transfer must carry.
   */
  startCycle(
    target: LowRank,
    source: LowRank,
    opts: { session: string; sliceId: number; step: number; now: number; timeoutMs: number; sourceStep?: number },
  ): { cycleId: number; out: LowRank; gate: number } {
    const input = this.prepareCycle(target, source);
    let out: LowRank;
    try {
      out = this.model ? this.model.forward(input.target, input.source) : { A: tf.clone(input.target.A), B: tf.clone(input.target.B) };
    } catch (err) {
      disposeLowRank(input.target);
      disposeLowRank(input.source);
      throw err;
    }
    const outShapes = { A: [out.A.shape[0], out.A.shape[1]] as [number, number], B: [out.B.shape[0], out.B.shape[1]] as [number, number] };
    const { cycleId, gate } = this.commitCycle(input, outShapes, this.model !== undefined, opts);
    return { cycleId, out, gate };
  }

  /**
   * The first half of startCycle: the adapter's input (noise in place of the source in sourceMode
   * 'noise', the pass-through start), for the cycle numbered nextCycleId. Takes ownership of
   * `target` and `source`; the caller owns the result until it passes it to commitCycle.
   */
  prepareCycle(target: LowRank, source: LowRank): { target: LowRank; source: LowRank } {
    if (this.inFlight) {
      disposeLowRank(target);
      disposeLowRank(source);
      throw new Error(`pair ${this.id}: a cycle is already in flight`);
    }
    if (this.alignment === undefined) {
      disposeLowRank(target);
      disposeLowRank(source);
      throw new Error(`pair ${this.id}: the slot shapes are not known yet`);
    }
    this.ensureAdapter();
    let src = source;
    if (this.config.sourceMode === 'noise') {
      src = noiseLikeLowRank(source, noiseSeed(this.seed, this.nextCycleId));
      disposeLowRank(source);
    }
    try {
      const start = this.alignment === 'none' ? target : passThroughStart(this.alignment, target, src);
      if (start !== target) disposeLowRank(target);
      return { target: start, source: src };
    } catch (err) {
      disposeLowRank(target);
      disposeLowRank(src);
      throw err;
    }
  }

  /**
   * The second half: the transfer made from `input` is about to be sent, so the cycle is in
   * flight from `opts.now` (its deadline counts from there) and owns `input`.
   */
  commitCycle(
    input: { target: LowRank; source: LowRank },
    outShapes: { A: [number, number]; B: [number, number] },
    adapterRan: boolean,
    opts: { session: string; sliceId: number; step: number; now: number; timeoutMs: number; sourceStep?: number },
  ): { cycleId: number; gate: number } {
    const cycleId = this.nextCycleId;
    const gate = this.gate.value;
    this.nextCycleId++;
    this.inFlight = {
      cycleId,
      session: opts.session,
      sliceId: opts.sliceId,
      startedAt: opts.now,
      deadline: opts.now + opts.timeoutMs,
      input,
      gate,
      adapterRan,
      outShapes,
    };
    this.counters.cyclesStarted++;
    this.counters.lastTransferAt = opts.now;
    this.counters.lastCycleStep = opts.step;
    if (opts.sourceStep !== undefined) {
      this.counters.sourceStepFirst ??= opts.sourceStep;
      this.counters.sourceStepLast = opts.sourceStep;
    }
    return { cycleId, gate };
  }

  /**
   * Run the output channel. Its trial has no source-only gradient for the 'source' guard to test,
   * so that guard becomes 'readout': after decideAfter trial updates, keep the source if its gate
   * rose and its readout labels the target's held-out examples better than chance. The gate's
   * state (a restored one too) carries over.
   */
  useOutputChannel(): void {
    this.channel = 'output';
    this.alignment = undefined;
    if (this.gate.config.guard === 'relevance' || this.gate.config.guard === 'source' || this.gate.config.guard === 'signtest') {
      this.gate = new TrustGate({ ...this.gate.config, guard: 'readout' }, this.gate.state());
    }
  }

  /**
   * Start a cycle of the output channel on the target's request. A trial (the gate still
   * pending) waits for its feedback, with a deadline; a distillation teacher needs none.
   */
  startOutputCycle(opts: { session: string; requestId: number; step: number; now: number; timeoutMs: number; sourceStep: number; awaitFeedback: boolean }): number {
    if (this.inFlight) throw new Error(`pair ${this.id}: a cycle is already in flight`);
    const cycleId = this.nextCycleId++;
    if (opts.awaitFeedback) {
      this.inFlight = {
        cycleId,
        session: opts.session,
        sliceId: opts.requestId,
        startedAt: opts.now,
        deadline: opts.now + opts.timeoutMs,
        gate: this.gate.value,
        adapterRan: false,
        outShapes: { A: [0, 0], B: [0, 0] },
      };
    } else {
      this.ended.set(cycleId, 'completed');
      if (this.ended.size > ENDED_MEMORY) this.ended.delete(this.ended.keys().next().value!);
    }
    this.counters.cyclesStarted++;
    this.counters.lastTransferAt = opts.now;
    this.counters.lastCycleStep = opts.step;
    this.counters.sourceStepFirst ??= opts.sourceStep;
    this.counters.sourceStepLast = opts.sourceStep;
    return cycleId;
  }

  /**
   * The 'relevance' guard's trial for the cycle in flight (coordinator/gate/relevance.ts): the
   * factor of the start that carries the source (A′ where the rows are aligned, B′ where only the
   * columns are) against random factors, along the feedback's gA or gB. Undefined where there is
   * nothing to test: another guard, a decided gate, or a start that is the target's own slice.
   */
  relevanceOf(gA: Float32Array, gB: Float32Array): RelevanceTrial | undefined {
    const c = this.inFlight;
    if (!c?.input || this.gate.config.guard !== 'relevance' || this.gate.decision !== 'pending') return undefined;
    const side = this.alignment === 'both' || this.alignment === 'rows' ? 'A' : this.alignment === 'cols' ? 'B' : undefined;
    if (!side) return undefined;
    const factor = c.input.target[side].dataSync() as Float32Array;
    const x = side === 'A' ? { factor, grad: gA, r: c.outShapes.A[1], layout: 'columns' as const } : { factor, grad: gB, r: c.outShapes.B[0], layout: 'rows' as const };
    return relevanceTrial(x, this.gate.config.shadows, noiseSeed(this.seed ^ 0x2545f491, c.cycleId));
  }

  /** The trial feedback of the output cycle in flight: one step of the trust gate. */
  applyOutputFeedback(gateGrad: number, now: number, target: TargetReport = {}): GateStep {
    const c = this.inFlight;
    if (!c) throw new Error(`pair ${this.id}: no cycle in flight`);
    let gate: GateStep;
    try {
      gate = this.gate.step(gateGrad, c.gate, target);
    } catch (err) {
      this.endCycle(c, 'internal');
      throw err;
    }
    this.endCycle(c, 'completed');
    this.counters.updates++;
    this.counters.lastUpdateAt = now;
    this.traceGate(gate.after, gateGrad, target);
    return gate;
  }

  /** Record g after an update. */
  private traceGate(g: number, gateGrad: number, target: TargetReport): void {
    const point: GateTracePoint = { update: this.counters.updates, gate: g, gateGrad };
    if (target.sourceGrad !== undefined) point.sourceGrad = target.sourceGrad;
    if (target.trainAcc !== undefined) point.trainAcc = target.trainAcc;
    if (target.relevance) point.beatShadows = target.relevance.beatAll;
    this.gateTrace.push(point);
  }

  /** How a cycle that is not in flight ended, if it ended recently. */
  endedAs(cycleId: number): Ended | undefined {
    return this.timedOut.has(cycleId) ? 'cycle_timeout' : this.ended.get(cycleId);
  }

  /** Abandon the cycle in flight (disposing its input) and count the drop. */
  dropInFlight(reason: CycleDropReason): InFlightCycle | undefined {
    const c = this.inFlight;
    if (!c) return undefined;
    this.endCycle(c, reason);
    this.countDrop(reason);
    return c;
  }

  /**
   * Apply validated feedback of the cycle in flight: a step of the trust gate from gateGrad, and,
   * where the adapter ran, a vector-Jacobian step through it at the remembered input. The cycle
   * ends whether or not the update succeeds (an update that throws, e.g. on a non-finite gradient
   * norm, leaves the adapter unchanged). gA and gB stay owned by the caller.
   */
  applyFeedback(gA: tf.Tensor2D, gB: tf.Tensor2D, gateGrad: number, now: number, target: TargetReport = {}): { adapter?: StepResult; gate: GateStep } {
    const c = this.inFlight;
    if (!c) throw new Error(`pair ${this.id}: no cycle in flight`);
    let res: StepResult | undefined;
    try {
      if (c.adapterRan && this.model && c.input) res = this.model.update(c.input, { gA, gB });
    } catch (err) {
      // The caller reports and counts the failure; the cycle cannot be retried.
      this.endCycle(c, 'internal');
      throw err;
    }
    return this.completeFeedback(res, gateGrad, now, target);
  }

  /**
   * The rest of applyFeedback, once the adapter's step (`res`, where it ran; from a worker, or
   * above) is taken: the gate's step, the cycle's end, the counters.
   */
  completeFeedback(res: StepResult | undefined, gateGrad: number, now: number, target: TargetReport = {}): { adapter?: StepResult; gate: GateStep } {
    const c = this.inFlight;
    if (!c) throw new Error(`pair ${this.id}: no cycle in flight`);
    let gate: GateStep;
    try {
      // With no shared axis the start is the target's own slice, so "the source's part" of the
      // gradient would be the target's own top slice: the guard tests the whole ⟨G, A′B′ − AB⟩
      // instead. (Measured, even that lets a learning adapter through; hence such pairs run only
      // when the config asks for align: none; docs/DESIGN.md §6.)
      const report = this.alignment === 'none' ? { ...target, sourceGrad: gateGrad } : target;
      gate = this.gate.step(gateGrad, c.gate, report);
    } catch (err) {
      this.endCycle(c, 'internal');
      throw err;
    }
    if (res && this.remoteStep !== undefined) this.remoteStep = res.step;
    this.endCycle(c, 'completed');
    this.counters.updates++;
    if (res) {
      this.counters.lastGradNorm = res.gradNorm;
      this.counters.lastClipped = res.clipped;
    }
    this.counters.lastUpdateAt = now;
    this.traceGate(gate.after, gateGrad, target);
    return { adapter: res, gate };
  }

  /** The worker's update of the cycle in flight failed: the cycle ends as internal (counted by the caller). */
  failFeedback(): void {
    if (this.inFlight) this.endCycle(this.inFlight, 'internal');
  }

  dispose(): void {
    if (this.inFlight) this.endCycle(this.inFlight, 'internal');
    this.model?.dispose();
    this.model = undefined;
  }

  private endCycle(c: InFlightCycle, how: Ended): void {
    if (c.input) {
      disposeLowRank(c.input.target);
      disposeLowRank(c.input.source);
    }
    if (this.inFlight === c) this.inFlight = undefined;
    this.ended.set(c.cycleId, how);
    if (how === 'cycle_timeout') this.timedOut.add(c.cycleId);
    if (this.ended.size > ENDED_MEMORY) this.ended.delete(this.ended.keys().next().value!);
  }
}
