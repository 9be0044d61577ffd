// The coordinator's status snapshot: devices, pairs, cycles, updates, drops by reason and each
// device's latest metrics. Plain JSON (times as ISO strings), so it can be logged, served or
// compared in tests as it is.
import type { Metrics, SlotDesc } from '../shared/protocol/messages.js';
import type { Endpoint, SourceMode } from './config.js';
import type { Pair, PairCounters } from './pair.js';
import type { Alignment } from './adapter/pass-through.js';
import type { GateDecision, GateTracePoint } from './gate/trust-gate.js';
import type { DeviceRecord } from './registry.js';

export interface DeviceStatus {
  id: string;
  connected: boolean;
  session?: string;
  connections: number;
  lastSeen?: string;
  registered: boolean;
  model?: { name: string; architecture: string; task: string; modality: string };
  slots: SlotDesc[];
  /** the rank the device declared at registration */
  rank?: number;
  metrics?: Metrics & { at: string };
  /** messages of this device that were refused, by code */
  rejects: Record<string, number>;
}

/** The pair's counters as they are, plus its configuration and state (times as ISO strings). */
export interface PairStatus
  extends Pick<PairCounters, 'cyclesStarted' | 'updates' | 'drops' | 'skips' | 'lastGradNorm' | 'lastClipped' | 'sourceStepFirst' | 'sourceStepLast'> {
  id: string;
  source: Endpoint;
  target: Endpoint;
  rank: number;
  active: boolean;
  inactiveReason?: string;
  /** a join-only pair (join: once) that has made its one transfer and ended */
  joinDone: boolean;
  auto: boolean;
  sourceMode: SourceMode;
  tCycle: number;
  k: number;
  adapterStep: number;
  hasAdapter: boolean;
  nextCycleId: number;
  lastTransferAt?: string;
  lastUpdateAt?: string;
  inFlight?: { cycleId: number; ageMs: number; msToDeadline: number };
  /** where the adapter's output starts (undefined until both slot shapes are known) */
  alignment?: Alignment;
  /** what the pair exchanges, once decided: slices ('parameter') or logits on the probe split ('output') */
  channel?: 'parameter' | 'output';
  /** the trust gate: g, θ, the guard's decision and the updates it has had */
  gate: { value: number; theta: number; decision: GateDecision; updates: number; reason?: string; decidedAt?: number };
  /** g after each update (thinned to at most 512 points); absent where a snapshot leaves traces out (the dashboard's feed, `/status?gateTraces=0`) */
  gateTrace?: GateTracePoint[];
  /** ‖K‖/‖W‖ the target reported for its latest branch */
  branchRatio?: number;
}

/** Payload bytes through the socket edge, by event, since the coordinator started. */
export interface WireTotals {
  in: Record<string, { messages: number; bytes: number }>;
  out: Record<string, { messages: number; bytes: number }>;
}

export interface StatusSnapshot {
  at: string;
  url: string;
  uptimeMs: number;
  devices: DeviceStatus[];
  pairs: PairStatus[];
  totals: {
    devices: number;
    connected: number;
    registered: number;
    pairs: number;
    cyclesStarted: number;
    updates: number;
    inFlight: number;
    /** every drop: refused messages (including refused handshakes) and abandoned cycles */
    drops: number;
    /** work waiting in the coordinator's queue, where it has one (absent: none): adapter requests handed to workers */
    queueDepth?: number;
    /** adapter worker threads (absent: adapters run on the event loop) */
    adapterWorkers?: number;
    /** pairs holding a pending target slice until their cycle in flight ends */
    pendingSlices?: number;
    /** the slice pace the devices were asked for, ms (0: none); absent where pacing is off */
    sliceIntervalMs?: number;
  };
  /** the same drops, by reason (an error code of shared/protocol/errors.ts) */
  drops: Record<string, number>;
  /** bytes in and out by event (filled by the socket edge, server.ts) */
  wire?: WireTotals;
}

function iso(ms: number | undefined): string | undefined {
  return ms === undefined ? undefined : new Date(ms).toISOString();
}

function sum(r: Record<string, number>): number {
  let s = 0;
  for (const v of Object.values(r)) s += v;
  return s;
}

export interface StatusInput {
  url: string;
  startedAt: number;
  now: number;
  devices: DeviceRecord[];
  /** rejects per device id, by code */
  deviceRejects: Map<string, Record<string, number>>;
  pairs: Pair[];
  drops: Record<string, number>;
  /** the worker pool, where adapters run in one */
  adapterHost?: { workers: number; queued: number; pending: number; paceIntervalMs?: number };
  // (totals carried over from a restored checkpoint are already in the pairs' counters)
  /** false: leave the pairs' gate traces out (the dashboard's feed, which builds a snapshot every second and draws none) */
  gateTraces?: boolean;
}

export function buildStatus(s: StatusInput): StatusSnapshot {
  const devices: DeviceStatus[] = s.devices.map((d) => {
    const reg = d.registration;
    return {
      id: d.id,
      connected: d.connected,
      session: d.session,
      connections: d.connections,
      lastSeen: iso(d.lastSeen),
      registered: reg !== undefined,
      model: reg?.model,
      slots: reg ? [...reg.slots].map(([name, shape]) => ({ name, shape: [shape[0], shape[1]] as [number, number] })) : [],
      rank: reg?.rank,
      metrics: d.metrics ? { ...d.metrics, at: iso(d.metrics.at)! } : undefined,
      rejects: { ...(s.deviceRejects.get(d.id) ?? {}) },
    };
  });
  const pairs: PairStatus[] = s.pairs.map((p) => {
    const c = p.counters;
    return {
      id: p.id,
      source: { ...p.source },
      target: { ...p.target },
      rank: p.rank,
      active: p.active,
      inactiveReason: p.inactiveReason,
      joinDone: p.joinDone,
      auto: p.config.auto,
      sourceMode: p.config.sourceMode,
      tCycle: p.config.tCycle,
      k: p.config.k,
      cyclesStarted: c.cyclesStarted,
      updates: c.updates,
      drops: { ...c.drops },
      skips: { ...c.skips },
      lastGradNorm: c.lastGradNorm,
      lastClipped: c.lastClipped,
      sourceStepFirst: c.sourceStepFirst,
      sourceStepLast: c.sourceStepLast,
      adapterStep: p.adapterStep,
      hasAdapter: p.hasAdapter,
      nextCycleId: p.nextCycleId,
      lastTransferAt: iso(c.lastTransferAt),
      lastUpdateAt: iso(c.lastUpdateAt),
      inFlight: p.inFlight
        ? { cycleId: p.inFlight.cycleId, ageMs: s.now - p.inFlight.startedAt, msToDeadline: p.inFlight.deadline - s.now }
        : undefined,
      alignment: p.alignment,
      channel: p.channel,
      gate: { value: p.gate.value, theta: p.gate.theta, decision: p.gate.decision, updates: p.gate.updates, reason: p.gate.reason, decidedAt: p.gate.state().decidedAt },
      ...(s.gateTraces === false ? {} : { gateTrace: p.gateTrace.points() }),
      branchRatio: p.lastBranchRatio,
    };
  });
  return {
    at: new Date(s.now).toISOString(),
    url: s.url,
    uptimeMs: s.now - s.startedAt,
    devices,
    pairs,
    totals: {
      devices: devices.length,
      connected: devices.filter((d) => d.connected).length,
      registered: devices.filter((d) => d.registered).length,
      pairs: pairs.length,
      cyclesStarted: pairs.reduce((a, p) => a + p.cyclesStarted, 0),
      updates: pairs.reduce((a, p) => a + p.updates, 0),
      inFlight: pairs.filter((p) => p.inFlight).length,
      drops: sum(s.drops),
      ...(s.adapterHost ? { queueDepth: s.adapterHost.queued, adapterWorkers: s.adapterHost.workers, pendingSlices: s.adapterHost.pending, ...(s.adapterHost.paceIntervalMs !== undefined ? { sliceIntervalMs: s.adapterHost.paceIntervalMs } : {}) } : {}),
    },
    drops: { ...s.drops },
  };
}

/** A compact form for the periodic log line: one entry per pair and device, no slot lists. */
export function statusLogFields(st: StatusSnapshot): Record<string, unknown> {
  return {
    totals: st.totals,
    drops: st.drops,
    pairs: st.pairs.map((p) => ({
      id: p.id,
      rank: p.rank,
      cycles: p.cyclesStarted,
      updates: p.updates,
      step: p.adapterStep,
      drops: p.drops,
      gradNorm: p.lastGradNorm,
      gate: Number(p.gate.value.toFixed(4)),
      decision: p.gate.decision,
      active: p.active,
    })),
    devices: st.devices.map((d) => ({
      id: d.id,
      connected: d.connected,
      step: d.metrics?.step,
      loss: d.metrics?.loss,
      valAcc: d.metrics?.valAcc,
    })),
  };
}
