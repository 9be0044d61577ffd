// The coordinator's Prometheus metrics (GET /metrics), through prom-client. Each running
// coordinator owns its own Registry: tests and simulations start many servers in one process, and
// the global default registry would mix them (and refuse a metric registered twice).
//
// Counts are read from the status snapshot at scrape time rather than counted twice: the engine's
// counters are the truth, and only increase while the process lives, so they are valid Prometheus
// counters (a restored checkpoint starts them at its saved values). What the snapshot does not
// hold — adapter latencies, event-loop lag — is observed here as it happens.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { StatusSnapshot } from './status.js';

/** Seconds; adapter passes take milliseconds (small slots, native) to seconds (large slots, cpu). */
const ADAPTER_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class CoordinatorMetrics {
  readonly registry = new Registry();
  private readonly loop: IntervalHistogram;
  /** every metric set from the snapshot: reset before each scrape, so vanished labels vanish */
  private readonly fromSnapshot: (Gauge | Counter)[] = [];

  private readonly devicesConfigured = this.gauge('mergenet_devices_configured', 'devices listed in the config');
  private readonly devicesConnected = this.gauge('mergenet_devices_connected', 'devices with a live connection');
  private readonly devicesRegistered = this.gauge('mergenet_devices_registered', 'devices that registered their slots (in any session)');
  private readonly pairs = this.gauge('mergenet_pairs', 'pairs known to the coordinator, by state', ['state']);
  private readonly cyclesStarted = this.counter('mergenet_cycles_started_total', 'cycles started (a transfer was sent)');
  private readonly cyclesCompleted = this.counter('mergenet_cycles_completed_total', 'cycles completed by accepted feedback');
  private readonly cyclesSkipped = this.counter('mergenet_cycles_skipped_total', 'target slices that did not start a cycle, by reason', ['reason']);
  private readonly cyclesInFlight = this.gauge('mergenet_cycles_in_flight', 'cycles waiting for their feedback');
  private readonly updates = this.counter('mergenet_adapter_updates_total', 'adapter optimiser steps taken');
  private readonly drops = this.counter('mergenet_drops_total', 'refused messages and abandoned cycles, by reason (an error code)', ['reason']);
  private readonly rejects = this.counter('mergenet_rejects_total', 'messages of connected devices refused with a reject, by code', ['code']);
  private readonly queueDepth = this.gauge('mergenet_queue_depth', 'work waiting: outbound = messages in the sockets\' write buffers; adapter = the coordinator\'s work queue, where it has one', ['queue']);
  private readonly sliceInterval = this.gauge('mergenet_slice_pace_interval_seconds', 'how far apart the devices were asked to send slices (0: no pace), where adapters run in workers');
  private readonly bytesIn = this.counter('mergenet_bytes_received_total', 'payload bytes received from devices, by event', ['event']);
  private readonly bytesOut = this.counter('mergenet_bytes_sent_total', 'payload bytes sent to devices, by event', ['event']);
  private readonly loopLag = this.gauge('mergenet_event_loop_lag_seconds', 'event-loop delay since the previous scrape (perf_hooks), by statistic', ['stat']);
  private readonly uptime = this.gauge('mergenet_uptime_seconds', 'seconds since the coordinator started');
  private readonly adapterSeconds = new Histogram({
    name: 'mergenet_adapter_seconds',
    help: 'wall time of the adapter: forward = the pass that makes a transfer, update = the feedback step',
    labelNames: ['op'],
    buckets: ADAPTER_BUCKETS,
    registers: [this.registry],
  });
  // per pair
  private readonly pairActive = this.gauge('mergenet_pair_active', '1 if the pair can run, 0 if not', ['pair']);
  private readonly pairCycles = this.counter('mergenet_pair_cycles_started_total', 'cycles started, per pair', ['pair']);
  private readonly pairUpdates = this.counter('mergenet_pair_updates_total', 'adapter updates, per pair', ['pair']);
  private readonly pairDrops = this.counter('mergenet_pair_drops_total', 'dropped cycles and refused feedback, per pair and reason', ['pair', 'reason']);
  private readonly pairGate = this.gauge('mergenet_pair_gate_value', 'the trust gate\'s current value (pairs with a gate only)', ['pair']);
  private readonly pairGateTheta = this.gauge('mergenet_pair_gate_theta', 'the trust gate\'s threshold (pairs with a gate only)', ['pair']);
  private readonly pairGateDecision = this.gauge('mergenet_pair_gate_decision', '1 for the gate\'s current decision (pending, accepted or refused)', ['pair', 'decision']);
  private readonly pairBranchRatio = this.gauge('mergenet_pair_branch_ratio', '‖K‖/‖W‖ of the pair\'s knowledge branch, as the target last reported it', ['pair']);
  // per device
  private readonly deviceConnected = this.gauge('mergenet_device_connected', '1 if the device is connected', ['device']);
  private readonly deviceStep = this.gauge('mergenet_device_step', 'the device\'s local step, as last reported', ['device']);
  private readonly deviceLoss = this.gauge('mergenet_device_loss', 'training loss the device last reported (nats)', ['device']);
  private readonly deviceValAcc = this.gauge('mergenet_device_val_accuracy', 'held-out (validation) accuracy the device last reported, 0..1', ['device']);
  private readonly deviceSpeed = this.gauge('mergenet_device_steps_per_second', 'local training speed the device last reported', ['device']);

  constructor() {
    // Resolution 10 ms is perf_hooks' default and enough to see a blocked loop.
    this.loop = monitorEventLoopDelay({ resolution: 10 });
    this.loop.enable();
  }

  /** One adapter pass, as the engine timed it. */
  observeAdapter(op: 'forward' | 'update', ms: number): void {
    this.adapterSeconds.observe({ op }, ms / 1000);
  }

  /** The exposition text, from this snapshot (plus `outboundQueue` messages waiting to leave). */
  async render(st: StatusSnapshot, outboundQueue: number): Promise<string> {
    this.refresh(st, outboundQueue);
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  close(): void {
    this.loop.disable();
  }

  private refresh(st: StatusSnapshot, outboundQueue: number): void {
    for (const m of this.fromSnapshot) m.reset();
    const t = st.totals;
    this.devicesConfigured.set(t.devices);
    this.devicesConnected.set(t.connected);
    this.devicesRegistered.set(t.registered);
    const active = st.pairs.filter((p) => p.active).length;
    this.pairs.set({ state: 'active' }, active);
    this.pairs.set({ state: 'inactive' }, st.pairs.length - active);
    this.cyclesStarted.inc(t.cyclesStarted);
    this.cyclesCompleted.inc(st.pairs.reduce((a, p) => a + p.updates, 0));
    this.cyclesInFlight.set(t.inFlight);
    this.updates.inc(t.updates);
    for (const [reason, n] of Object.entries(st.drops)) this.drops.inc({ reason }, n);
    const skips: Record<string, number> = {};
    for (const p of st.pairs) for (const [reason, n] of Object.entries(p.skips)) skips[reason] = (skips[reason] ?? 0) + n;
    for (const [reason, n] of Object.entries(skips)) this.cyclesSkipped.inc({ reason }, n);
    const rejects: Record<string, number> = {};
    for (const d of st.devices) for (const [code, n] of Object.entries(d.rejects)) rejects[code] = (rejects[code] ?? 0) + n;
    for (const [code, n] of Object.entries(rejects)) this.rejects.inc({ code }, n);
    this.queueDepth.set({ queue: 'outbound' }, outboundQueue);
    if (t.queueDepth !== undefined) this.queueDepth.set({ queue: 'adapter' }, t.queueDepth);
    if (t.sliceIntervalMs !== undefined) this.sliceInterval.set(t.sliceIntervalMs / 1000);
    for (const [event, c] of Object.entries(st.wire?.in ?? {})) this.bytesIn.inc({ event }, c.bytes);
    for (const [event, c] of Object.entries(st.wire?.out ?? {})) this.bytesOut.inc({ event }, c.bytes);
    this.uptime.set(st.uptimeMs / 1000);

    // Event-loop delay since the previous scrape (nanoseconds in perf_hooks); none sampled yet: 0.
    const ns = (v: number) => (Number.isFinite(v) ? v / 1e9 : 0);
    this.loopLag.set({ stat: 'mean' }, ns(this.loop.mean));
    this.loopLag.set({ stat: 'p50' }, ns(this.loop.percentile(50)));
    this.loopLag.set({ stat: 'p99' }, ns(this.loop.percentile(99)));
    this.loopLag.set({ stat: 'max' }, ns(this.loop.max));
    this.loop.reset();

    for (const p of st.pairs) {
      const pair = p.id;
      this.pairActive.set({ pair }, p.active ? 1 : 0);
      this.pairCycles.inc({ pair }, p.cyclesStarted);
      this.pairUpdates.inc({ pair }, p.updates);
      for (const [reason, n] of Object.entries(p.drops)) this.pairDrops.inc({ pair, reason }, n);
      // The gate and the branch ratio exist only where the coordinator fills them in.
      if (p.gate) {
        this.pairGate.set({ pair }, p.gate.value);
        this.pairGateTheta.set({ pair }, p.gate.theta);
        for (const decision of ['pending', 'accepted', 'refused'] as const) {
          this.pairGateDecision.set({ pair, decision }, p.gate.decision === decision ? 1 : 0);
        }
      }
      if (p.branchRatio !== undefined) this.pairBranchRatio.set({ pair }, p.branchRatio);
    }
    for (const d of st.devices) {
      const device = d.id;
      this.deviceConnected.set({ device }, d.connected ? 1 : 0);
      const m = d.metrics;
      if (!m) continue;
      this.deviceStep.set({ device }, m.step);
      this.deviceLoss.set({ device }, m.loss);
      if (m.valAcc !== undefined) this.deviceValAcc.set({ device }, m.valAcc);
      if (m.stepsPerSec !== undefined) this.deviceSpeed.set({ device }, m.stepsPerSec);
    }
  }

  private gauge(name: string, help: string, labelNames: string[] = []): Gauge {
    const g = new Gauge({ name, help, labelNames, registers: [this.registry] });
    this.fromSnapshot.push(g);
    return g;
  }

  private counter(name: string, help: string, labelNames: string[] = []): Counter {
    const c = new Counter({ name, help, labelNames, registers: [this.registry] });
    this.fromSnapshot.push(c);
    return c;
  }
}
