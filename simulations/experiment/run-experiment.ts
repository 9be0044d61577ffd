// Run an experiment: every seed × every condition, then one ExperimentResult about the target and
// its report. 'mergenet' and 'noise' run through the fleet (the real coordinator and devices; as
// child processes or in this process) with the experiment's pairs, 'noise' with the same pairs in
// the coordinator's noise-source mode. The network-free baselines (alone, fedavg, distill, copy)
// run through runBaseline here. Every condition of a seed uses the same data, model init and batch
// order for the target (deviceSeed), so the per-seed differences are paired.
//
// Bytes on the wire (mergenet, noise): the payloads the devices themselves counted (the MessagePack
// buffers of every slice of a slot in one of the target's pairs, every transfer to the target and
// every feedback from it; socket.io and WebSocket framing, a few dozen bytes per message, are not
// counted). bytesFullWeights: the same messages if each carried its full m×n slot matrix instead of
// the rank-r factors (r·(m+n) floats).
import { pct, seconds } from '../report/format.js';
import { describeDataset } from '../../client/data/registry.js';
import { initBackend } from '../../shared/tf/backend.js';
import { experimentConditions, isLocalCondition, preflight, runBaseline } from '../baselines/index.js';
import { defaultPairId } from '../../coordinator/index.js';
import { fleetCoordinatorConfig } from '../fleet/coordinator-config.js';
import { loadDeviceData } from '../../client/data/registry.js';
import { loadMnistAll } from '../../client/data/mnist.js';
import { runFleetInProcess } from '../fleet/inprocess.js';
import { runFleetInProcesses } from '../fleet/processes.js';
import { describeModelSpec } from '../fleet/run-device.js';
import { type DeviceProgress, type FleetPairMode, type FleetRunOptions, type FleetRunResult } from '../fleet/types.js';
import { writeReport } from '../report/write-report.js';
import type { ConditionRun, ExperimentResult } from '../report/types.js';
import { FLEET_BASELINES, isFleetCondition, type Experiment, type PairSpec } from './schema.js';
import { silentProgress, type ProgressReporter } from './progress.js';

export type FleetMode = 'process' | 'inprocess';
export const FLEET_CONDITIONS = FLEET_BASELINES;

export interface RunExperimentOptions {
  /** default: the experiment's `mode` */
  mode?: FleetMode;
  /** default: the experiment's seeds */
  seeds?: number[];
  /** default: experimentConditions(e) */
  conditions?: string[];
  /** report folder; default: the experiment's `output` */
  out?: string;
  /** tfjs backend of this process (coordinator, local baselines, in-process devices); default auto */
  backend?: string;
  progress?: ProgressReporter;
  /** fleet watchdogs (see FleetRunOptions) */
  stallTimeoutMs?: number;
  timeoutMs?: number;
  onSpawn?: FleetRunOptions['onSpawn'];
  /** Do not write the report (tests). Default false. */
  noReport?: boolean;
}

export interface FailedRun {
  condition: string;
  seed: number;
  error: string;
}

export interface ExperimentOutput {
  result: ExperimentResult;
  failures: FailedRun[];
  markdown?: string;
  paths?: { md: string; html: string; json: string; csv: string };
  wallMs: number;
}

/** The conditions to run, checked: known names only, and mergenet/noise only with a pair into the target. */
export function resolveConditions(e: Experiment, requested?: string[]): string[] {
  const all = experimentConditions(e);
  if (!requested) return all;
  const out: string[] = [];
  for (const c of requested) {
    const known = isLocalCondition(c) || isFleetCondition(c);
    if (!known) throw new Error(`unknown condition "${c}": expected one of ${[...new Set([...all, 'alone', ...FLEET_BASELINES])].join(', ')}`);
    if (isFleetCondition(c) && !e.pairs.some((p) => p.target.device === e.target)) {
      throw new Error(`condition "${c}" needs a pair whose target is "${e.target}"`);
    }
    if (c !== 'alone' && isLocalCondition(c) && !all.includes(c)) {
      throw new Error(`condition "${c}" is not configured by this experiment (it runs: ${all.join(', ')})`);
    }
    if (!out.includes(c)) out.push(c);
  }
  return out;
}

/** The devices of a fleet run: the target and every device of a pair. */
export function fleetDevices(e: Experiment): Experiment['devices'] {
  const ids = new Set<string>([e.target]);
  for (const p of e.pairs) ids.add(p.source.device).add(p.target.device);
  return e.devices.filter((d) => ids.has(d.id));
}

interface ByteCount {
  sent: number;
  full: number;
}

/** Bytes of the target's pairs in one fleet run (see the header). */
export function targetPairBytes(e: Experiment, run: FleetRunResult): ByteCount {
  const pairs = e.pairs.filter((p) => p.target.device === e.target);
  const effRank = new Map(run.coordinator.pairs.map((p) => [p.id, p.rank]));
  const rankOf = (p: PairSpec) => effRank.get(defaultPairId(p.source, p.target)) ?? p.rank;
  const shapeOf = (device: string, slot: string): [number, number] => {
    const s = run.devices[device]?.slots.find((x) => x.name === slot);
    if (!s) throw new Error(`device "${device}" has no slot "${slot}" in its report`);
    return s.shape;
  };
  let sent = 0;
  let full = 0;
  const add = (device: string, key: string, shape: [number, number], rank: number) => {
    const w = run.devices[device]?.wire[key];
    if (!w) return;
    const [m, n] = shape;
    sent += w.bytes;
    full += w.bytes + w.messages * 4 * (m * n - rank * (m + n));
  };
  // Slices: one per slot and cycle, shared by every pair on that slot, at the largest rank among them.
  const slots = new Map<string, { device: string; slot: string; rank: number }>();
  for (const p of pairs) {
    for (const end of [p.source, p.target]) {
      const key = `${end.device}/${end.slot}`;
      const prev = slots.get(key);
      // the slot's slice rank is the largest rank of ANY pair on it (also pairs not into the target)
      const r = Math.max(
        prev?.rank ?? 0,
        ...e.pairs.filter((q) => (q.source.device === end.device && q.source.slot === end.slot) || (q.target.device === end.device && q.target.slot === end.slot)).map(rankOf),
      );
      slots.set(key, { device: end.device, slot: end.slot, rank: r });
    }
  }
  for (const s of slots.values()) add(s.device, `slice:${s.slot}`, shapeOf(s.device, s.slot), s.rank);
  // The output channel: the source's logits (once per source, whatever its pairs), the target's
  // requests, teachers and trial feedback. They carry no slot matrix: 'full' counts them as sent.
  const plain = (device: string, key: string) => {
    const w = run.devices[device]?.wire[key];
    if (!w) return;
    sent += w.bytes;
    full += w.bytes;
  };
  const outputSources = new Set<string>();
  for (const p of pairs) {
    const id = defaultPairId(p.source, p.target);
    if (!run.devices[e.target]?.wire[`teacher:${id}`] && !run.devices[e.target]?.wire[`teacher_request:${id}`]) continue;
    if (!outputSources.has(p.source.device)) plain(p.source.device, 'logits');
    outputSources.add(p.source.device);
    for (const k of ['teacher', 'teacher_request', 'teacher_feedback']) plain(e.target, `${k}:${id}`);
  }
  for (const p of pairs) {
    const shape = shapeOf(p.target.device, p.target.slot);
    add(e.target, `transfer:${defaultPairId(p.source, p.target)}`, shape, rankOf(p));
    add(e.target, `feedback:${defaultPairId(p.source, p.target)}`, shape, rankOf(p));
  }
  return { sent, full };
}

/** A fleet run's outcome as the report's ConditionRun for the target. */
export function fleetConditionRun(e: Experiment, condition: string, seed: number, run: FleetRunResult): ConditionRun {
  const t = run.devices[e.target];
  if (!t) throw new Error(`the fleet run has no report of the target "${e.target}"`);
  const targetPairIds = new Set(e.pairs.filter((p) => p.target.device === e.target).map((p) => defaultPairId(p.source, p.target)));
  const pairs = run.coordinator.pairs.filter((p) => targetPairIds.has(p.id));
  const sum = (f: (p: (typeof pairs)[number]) => number) => pairs.reduce((a, p) => a + f(p), 0);
  const bytes = targetPairBytes(e, run);
  // Cycles the pairs could have had: one per T_cycle target steps. The devices never wait for the
  // coordinator, so a busy coordinator or a slow source means fewer.
  const possible = e.pairs.filter((p) => p.target.device === e.target).reduce((a, p) => a + Math.floor(t.steps / p.tCycle), 0);
  const extra: Record<string, number> = {
    cycles: sum((p) => p.cyclesStarted),
    cycleCoverage: possible > 0 ? sum((p) => p.cyclesStarted) / possible : 0,
    skippedInFlight: sum((p) => p.skips.in_flight ?? 0),
    updates: sum((p) => p.updates),
    drops: sum((p) => Object.values(p.drops).reduce((a, b) => a + b, 0)),
    transfersApplied: t.transfersApplied,
    feedbackSent: t.feedbackSent,
    fleetWallS: run.wallMs / 1000,
  };
  if (t.branchRatio !== undefined) extra.branchRatio = t.branchRatio;
  if (pairs.some((p) => p.gate !== undefined) && t.joined !== undefined) extra.joined = t.joined.length;
  if (t.capBound !== undefined) extra.capBound = t.capBound;
  // The trust gate at the end of the run (mean over the target's pairs), and how many of them its
  // guard refused.
  // How far the sources had trained when they first transferred (min over the target's pairs).
  const firstSteps = pairs.map((p) => p.sourceStepFirst).filter((v): v is number => v !== undefined);
  if (firstSteps.length) extra.sourceStepFirst = Math.min(...firstSteps);
  if (pairs.length) {
    extra.gate = sum((p) => p.gate.value) / pairs.length;
    extra.refused = pairs.filter((p) => p.gate.decision === 'refused').length;
  }
  return {
    condition,
    seed,
    device: e.target,
    curve: t.curve,
    finalAcc: t.finalAcc,
    bestAcc: t.bestAcc,
    bytesSent: bytes.sent,
    bytesFullWeights: bytes.full,
    wallMs: t.wallMs,
    extra,
    // A join-only pair ends after its one transfer without a guard's decision: say so, not 'pending'.
    gates: pairs.map((p) => ({ pairId: p.id, decision: p.joinDone ? 'join only' : p.gate.decision, reason: p.joinDone ? p.inactiveReason : p.gate.reason, channel: p.channel, trace: p.gateTrace ?? [] })),
    sources: Object.fromEntries(Object.entries(run.devices).filter(([id]) => id !== e.target).map(([id, d]) => [id, d.curve])),
  };
}

/** One fleet run of the experiment: all its pairs ('real' or 'noise'), or none (every device alone). */
export async function runFleet(
  e: Experiment,
  seed: number,
  o: { mode: FleetMode; pairMode: FleetPairMode; pairs?: PairSpec[]; label: string; backend?: string; onProgress?: (p: DeviceProgress) => void } & Pick<
    RunExperimentOptions,
    'stallTimeoutMs' | 'timeoutMs' | 'onSpawn'
  >,
): Promise<FleetRunResult> {
  const opts: FleetRunOptions = {
    label: o.label,
    seed,
    devices: fleetDevices(e),
    target: e.target,
    pairs: o.pairs ?? e.pairs,
    pairMode: o.pairMode,
    probe: e.probe,
    sourceWarmup: e.sourceWarmup,
    paceTimeoutMs: e.paceTimeoutMs,
    backend: o.backend,
    stallTimeoutMs: o.stallTimeoutMs,
    timeoutMs: o.timeoutMs,
    onProgress: o.onProgress,
    onSpawn: o.onSpawn,
  };
  return o.mode === 'process' ? runFleetInProcesses(opts) : runFleetInProcess(opts);
}

/**
 * The experiment for a fleet condition: 'useless' freezes every source of a pair into the target
 * (it keeps its initial weights), 'wrong' shifts every label of those sources by one class; the
 * others run the experiment as it is.
 */
export function withSourceControl(e: Experiment, condition: string): Experiment {
  if (condition !== 'useless' && condition !== 'wrong') return e;
  const sources = new Set(e.pairs.filter((p) => p.target.device === e.target).map((p) => p.source.device));
  return {
    ...e,
    devices: e.devices.map((d) => {
      if (!sources.has(d.id)) return d;
      if (condition === 'useless') return { ...d, frozen: true };
      if (d.dataset.name !== 'mnist') throw new Error(`condition "wrong" shifts labels of MNIST sources only; "${d.id}" uses ${d.dataset.name}`);
      return { ...d, dataset: { ...d.dataset, labelShift: 1 } };
    }),
  };
}

/**
 * The probe split must be public: no device's train, held-out or test example may be in it. Every
 * MNIST device takes its windows from the same seeded order, so checking positions suffices.
 */
export function checkProbe(e: Experiment, seed: number): void {
  if (!e.probe) return;
  const { offset, count } = e.probe;
  const end = offset + count;
  const problems: string[] = [];
  for (const d of fleetDevices(e)) {
    if (d.dataset.name !== 'mnist') continue;
    const data = loadDeviceData(d.dataset, seed);
    const start = d.dataset.offset ?? 0;
    const stop = start + data.train.n + data.val.n;
    if (start < end && offset < stop) problems.push(`device "${d.id}" trains or holds out examples [${start}, ${stop}) of the order, which overlaps the probe split [${offset}, ${end})`);
    const testStart = loadMnistAll().n - data.test.n;
    if (end > testStart) problems.push(`the probe split [${offset}, ${end}) reaches device "${d.id}"'s test split (from ${testStart})`);
  }
  if (problems.length) throw new Error(`experiment "${e.name}": the probe split is not public:\n  ${problems.join('\n  ')}`);
}

/** Held-out feedback needs a validation split on the pair's target. */
function checkHeldout(e: Experiment): void {
  const problems: string[] = [];
  e.pairs.forEach((p, i) => {
    if (p.feedback !== 'heldout') return;
    const d = e.devices.find((x) => x.id === p.target.device)!;
    const ds = d.dataset as { valSize?: number; labels?: number; heldout?: number };
    const noVal = ds.labels !== undefined ? ds.heldout === 0 : ds.valSize === 0;
    if (noVal) problems.push(`pairs[${i}].feedback: "heldout" needs a held-out split on "${d.id}", but its dataset has none (valSize 0 or heldout 0)`);
  });
  if (problems.length) throw new Error(`experiment "${e.name}" cannot run:\n  ${problems.join('\n  ')}`);
}

/** The pair options the report's pair table does not show, as notes. */
function pairNotes(e: Experiment): string[] {
  return e.pairs.map((p, i) => {
    const adapter = Object.entries(p.adapter).map(([k, v]) => `${k} ${v}`).join(', ');
    const gate = Object.entries(p.gate).map(([k, v]) => `${k} ${v}`).join(', ');
    return `pairs[${i}] ${p.source.device}.${p.source.slot} → ${p.target.device}.${p.target.slot}: τ ${p.tau}, feedback ${p.feedback}, align ${p.align}, refineLr ${p.refineLr}${gate ? `, gate ${gate}` : ''}${adapter ? `, adapter ${adapter}` : ''}.`;
  });
}


export async function runExperiment(e: Experiment, opts: RunExperimentOptions = {}): Promise<ExperimentOutput> {
  const t0 = performance.now();
  const mode = opts.mode ?? e.mode;
  const seeds = opts.seeds ?? e.seeds;
  if (seeds.length === 0) throw new Error('no seeds to run');
  const conditions = resolveConditions(e, opts.conditions);
  const progress = opts.progress ?? silentProgress();
  const target = e.devices.find((d) => d.id === e.target)!;
  // This process runs the local baselines and the coordinator; the target's own backend choice
  // (if any) wins so that 'alone' here and the fleet's target compute alike.
  const backendWanted = opts.backend ?? (target.backend !== 'auto' ? target.backend : undefined);
  const backend = (await initBackend(backendWanted, () => {})).backend;

  // Fail before anything trains: models fit their data, pairs' slots and ranks exist, baselines apply,
  // and the coordinator accepts the pairs.
  preflight(e, seeds[0]);
  checkHeldout(e);
  if (conditions.some(isFleetCondition)) fleetCoordinatorConfig(fleetDevices(e), e.pairs, 'real', new Map(), { seed: seeds[0], probe: e.probe });
  checkProbe(e, seeds[0]);

  const startedAt = new Date().toISOString();
  const runs: ConditionRun[] = [];
  const failures: FailedRun[] = [];
  const total = seeds.length * conditions.length;
  let n = 0;
  for (const seed of seeds) {
    for (const condition of conditions) {
      n += 1;
      const label = `[${n}/${total}] ${condition} seed ${seed}`;
      progress.beginRun(label);
      const r0 = performance.now();
      try {
        let run: ConditionRun;
        if (isFleetCondition(condition)) {
          const fleet = await runFleet(withSourceControl(e, condition), seed, {
            mode,
            pairMode: condition === 'noise' ? 'noise' : 'real',
            label: `${condition} seed ${seed}`,
            backend: opts.backend,
            onProgress: (p) => progress.update(p),
            stallTimeoutMs: opts.stallTimeoutMs,
            timeoutMs: opts.timeoutMs,
            onSpawn: opts.onSpawn,
          });
          run = fleetConditionRun(e, condition, seed, fleet);
        } else {
          run = await runBaseline(condition, e, seed, (p) => progress.update(p));
        }
        runs.push(run);
        const extra = run.extra?.cycles !== undefined ? `, ${run.extra.cycles} cycles, ${run.extra.updates} updates` : '';
        progress.endRun(
          `✓ ${condition} seed ${seed}: final ${pct(run.finalAcc)} % (best ${pct(run.bestAcc)} %)${extra}, ${seconds(performance.now() - r0)}`,
        );
      } catch (err) {
        const message = (err as Error).message;
        failures.push({ condition, seed, error: message });
        progress.endRun(`✗ ${condition} seed ${seed} FAILED after ${seconds(performance.now() - r0)}: ${message}`);
      }
    }
  }
  progress.stop();

  const notes: string[] = [];
  if (conditions.some(isFleetCondition)) {
    notes.push(
      `${conditions.filter(isFleetCondition).join(', ')} ran with the real coordinator and ${fleetDevices(e).length} device clients (${mode === 'process' ? 'each device a child process' : 'all in one process'}) on loopback` +
        (e.paceTimeoutMs > 0 ? `, the devices paced to the coordinator (after a target slice, the target waits up to ${e.paceTimeoutMs} ms for its answer); ` : ', the devices never waiting for the coordinator; ') +
        'noise is the same pairs with the coordinator replacing each source slice by noise of equal shape and norm (and, on the output channel, each source\'s logits by Gaussian logits of their mean and spread); ' +
        'useless is the same pairs with sources that never train (learning rate 0, their initial weights); wrong is the same pairs with sources that learn every label shifted by one class.',
      'Bytes sent: MessagePack payloads counted by the devices (slices of the paired slots, transfers to the target, feedback from it), without socket.io/WebSocket framing. ' +
        'Full weights: the same messages carrying the full m×n slot matrix instead of rank-r factors.',
      'Wall time per run: the target\'s own training time (first step to last evaluation); fleetWallS is the whole fleet run including process start-up. ' +
        'Local baselines (alone, copy, …) train the target alone in this process; in fleet runs it shares the two cores with the other devices and the coordinator, and a paced target also waits for the coordinator\'s answers: compare wall times within a kind of run, not across.',
    );
  }
  if (conditions.some(isFleetCondition)) {
    notes.push(
      'The fleet conditions depend on timing (when each transfer reaches the target, relative to its steps), so they are not bit-for-bit reproducible; ' +
        'alone and the other local baselines are. A fleet target with no pairs reproduces alone exactly (test/fleet.test.ts).',
    );
    for (const c of FLEET_CONDITIONS) {
      // A pair refused by its gate stops cycling on purpose: only runs where none was refused say
      // anything about whether the coordinator kept up.
      const cov = runs.filter((r) => r.condition === c && r.extra?.cycleCoverage !== undefined && !r.extra.refused).map((r) => r.extra!.cycleCoverage);
      const mean = cov.reduce((a, b) => a + b, 0) / (cov.length || 1);
      if (cov.length && mean < 0.8) {
        notes.push(
          `${c}: the pairs completed ${(100 * mean).toFixed(0)} % of the cycles T_cycle allows (cycleCoverage): devices never wait for the coordinator, ` +
            'and it could not keep up. The in-process mode (--mode inprocess) shares one thread, so the coordinator paces the devices there.',
        );
      }
    }
    notes.push(...pairNotes(e));
  }
  if (e.sourceWarmup > 0) notes.push(`Sources trained ${e.sourceWarmup} steps before the target started (sourceWarmup).`);
  {
    // Flag runs whose sources were still early when they first transferred.
    const sourceSteps = Math.min(...e.pairs.filter((p) => p.target.device === e.target).map((p) => e.devices.find((d) => d.id === p.source.device)?.steps ?? Infinity));
    const early = runs.filter((r) => r.extra?.sourceStepFirst !== undefined && r.extra.sourceStepFirst < sourceSteps / 2);
    if (early.length && Number.isFinite(sourceSteps)) {
      notes.push(
        `EARLY SOURCE: in ${early.length} run(s) a source had trained fewer than half of its ${sourceSteps} steps when it first transferred (sourceStepFirst: ${early.map((r) => `${r.condition} s${r.seed} ${r.extra!.sourceStepFirst}`).join(', ')}); its first slices carried little.`,
      );
    }
  }
  for (const f of failures) notes.push(`FAILED: ${f.condition}, seed ${f.seed}: ${f.error.split('\n')[0]}`);
  const mixed = e.devices.filter((d) => d.backend !== 'auto' && d.backend !== backend);
  if (mixed.length) notes.push(`Devices with another backend than this process (${backend}): ${mixed.map((d) => `${d.id} (${d.backend})`).join(', ')}${mode === 'inprocess' ? ' — ignored in in-process mode' : ''}.`);

  const result: ExperimentResult = {
    name: e.name,
    description: e.description,
    scenario: e.scenario,
    startedAt,
    finishedAt: new Date().toISOString(),
    backend,
    mode,
    target: e.target,
    devices: e.devices.map((d) => {
      const ds = describeDataset(d.dataset);
      return { id: d.id, model: describeModelSpec(d.model), dataset: d.dataset.name, task: ds.task, modality: ds.modality };
    }),
    pairs: e.pairs.map((p) => ({ source: p.source.device, sourceSlot: p.source.slot, target: p.target.device, targetSlot: p.target.slot, rank: p.rank, tCycle: p.tCycle, k: p.k })),
    seeds,
    runs,
    notes,
  };
  const out: ExperimentOutput = { result, failures, wallMs: Math.round(performance.now() - t0) };
  if (!opts.noReport) {
    const { markdown, paths } = writeReport(result, opts.out ?? e.output);
    out.markdown = markdown;
    out.paths = paths;
  }
  return out;
}
