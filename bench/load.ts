// `npm run bench:load`: one coordinator process under N simulated devices (a benchmark, not a test).
// The coordinator runs in this process, with checkpoints on (a temp dir) and event-loop delay
// monitored here; the devices run in a child process (bench/load-devices.ts), and the late ones in a second, over real socket.io
// connections on 127.0.0.1. Device 2i is the source and 2i+1 the target of pair i (tCycle 1, k 1),
// so N devices offer N/2 pair-cycles per slice period. Prints a JSON report and a summary line.
//
//   npm run bench:load -- --devices 1000 --duration 60 --slots small
import { type ChildProcess, fork } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import { serve } from '../coordinator/server.js';
import { createLogger } from '../shared/log.js';
import type { LoadDeviceSpec, LoadDevicesJob, LoadDevicesReport } from './load-devices.js';

const SLOT_SETS: Record<string, { source: [number, number]; target: [number, number] }> = {
  small: { source: [128, 10], target: [64, 10] },
  large: { source: [800, 128], target: [784, 128] },
};

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const mb = (bytes: number) => Math.round(bytes / (1 << 20));

/**
 * CPU seconds of this process's main thread and of all its other threads (the adapter workers,
 * GC and libuv helpers), from /proc; null where there is no /proc (not Linux).
 */
function threadCpuSeconds(): { main: number; others: number } | null {
  try {
    const tick = 100; // USER_HZ, 100 on every Linux this runs on
    const out = { main: 0, others: 0 };
    for (const tid of readdirSync('/proc/self/task')) {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const seconds = (Number(f[11]) + Number(f[12])) / tick;
      if (Number(tid) === process.pid) out.main += seconds;
      else out.others += seconds;
    }
    return out;
  } catch {
    return null;
  }
}

async function main(): Promise<void> {
  const o = new Command('bench:load')
    .option('--devices <n>', 'simulated devices (an even number: one pair per two)', positiveInt, 100)
    .option('--duration <s>', 'seconds of load after registration', positiveInt, 30)
    .option('--slots <set>', `slot shapes: ${Object.keys(SLOT_SETS).join(' or ')}`, 'small')
    .option('--rank <r>', 'pair rank', positiveInt, 8)
    .option('--slice-ms <ms>', 'each device sends a slice this often', positiveInt, 1000)
    .option('--late <n>', 'late devices that register during the load', positiveInt, 20)
    .option('--warmup <s>', 'seconds of load before RSS counts as settled', (v) => Number(v), 30)
    .option('--checkpoint-every <n>', 'checkpoint every n adapter updates (0: off)', (v) => Number(v), 50)
    .option('--checkpoint-interval <ms>', 'checkpoint.minIntervalMs (default: the config default)', (v) => Number(v))
    .option('--connect-concurrency <n>', 'connections opened at once while registering', positiveInt, 50)
    .option('--max-queued <n>', 'throughput.maxQueuedPerWorker (default: the config default)', positiveInt)
    .option('--no-pace', 'turn the coordinator\'s slice pace off (throughput.pace.enabled false): devices send every --slice-ms')
    .option('--workers <n>', "adapter worker threads ('auto': one per core; 0: adapters on the event loop)", (v) => (v === 'auto' ? v : Number(v)), 'auto' as number | 'auto')
    .parse(process.argv)
    .opts<{ devices: number; duration: number; slots: string; rank: number; sliceMs: number; late: number; checkpointEvery: number; connectConcurrency: number; workers: number | 'auto'; maxQueued?: number; checkpointInterval?: number; warmup: number; pace: boolean }>();
  const shapes = SLOT_SETS[o.slots];
  if (!shapes) throw new InvalidArgumentError(`--slots must be one of ${Object.keys(SLOT_SETS).join(', ')}`);
  const pairs = Math.floor(o.devices / 2);

  const spec = (id: string, role: 'source' | 'target'): LoadDeviceSpec => ({ id, token: `${id}-token`, slot: role === 'source' ? 's' : 't', shape: role === 'source' ? shapes.source : shapes.target });
  const devices: LoadDeviceSpec[] = [];
  for (let i = 0; i < pairs; i++) devices.push(spec(`d${2 * i}`, 'source'), spec(`d${2 * i + 1}`, 'target'));
  const late = Array.from({ length: o.late }, (_, i) => spec(`late${i}`, 'target'));
  const dir = o.checkpointEvery > 0 ? await mkdtemp(join(tmpdir(), 'mergenet-load-')) : undefined;
  const config = parseCoordinatorConfig({
    devices: [...devices, ...late].map((d) => ({ id: d.id, token: d.token })),
    // The LPKA runs every cycle (no pass-through start, no guard to stop a pair): the load is the adapter's.
    defaults: { rank: o.rank, tCycle: 1, k: 1, align: 'none', gate: { guard: 'none' } },
    throughput: { adapterWorkers: o.workers, ...(o.maxQueued ? { maxQueuedPerWorker: o.maxQueued } : {}), pace: { enabled: o.pace } },
    pairs: Array.from({ length: pairs }, (_, i) => ({ id: `p${i}`, source: { device: `d${2 * i}`, slot: 's' }, target: { device: `d${2 * i + 1}`, slot: 't' } })),
    checkpoint: dir ? { dir, everyUpdates: o.checkpointEvery, ...(o.checkpointInterval !== undefined ? { minIntervalMs: o.checkpointInterval } : {}) } : {},
    statusEveryMs: 0,
  });

  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const coord = await serve(config, { logger: createLogger('coordinator', process.env.MERGENET_LOG_LEVEL ?? 'warn') });
  let updates = 0;
  coord.on('update', () => updates++);
  // the slice pace asked of the devices over time (s from the start of the load)
  const paces: { t: number; sliceIntervalMs: number; shedFraction: number; why: string; capacity?: number; busy?: number; loop?: number }[] = [];
  coord.on('pace', (p) =>
    paces.push({
      t: +((performance.now() - (loadStartedAt || performance.now())) / 1000).toFixed(1),
      sliceIntervalMs: p.sliceIntervalMs,
      shedFraction: +p.shedFraction.toFixed(3),
      why: p.why,
      ...(p.capacity !== undefined ? { capacity: +p.capacity.toFixed(1) } : {}),
      ...(p.busy !== undefined ? { busy: +p.busy.toFixed(3) } : {}),
      ...(p.loop !== undefined ? { loop: +p.loop.toFixed(3) } : {}),
    }),
  );
  let cycles = 0;
  coord.on('cycle', () => cycles++);
  // loopUtilization: the event loop's, over each 5 s sample
  const rss: { t: number; mb: number; heapMb: number; externalMb: number; cyclesPerSec: number; loopUtilization: number }[] = [];
  let cyclesAtSample = 0;
  let eluAtSample = performance.eventLoopUtilization();
  const t0 = performance.now();
  const sampler = setInterval(() => {
    // heap and external are the main thread's; RSS also holds the adapter workers' heaps
    const m = process.memoryUsage();
    const elu = performance.eventLoopUtilization();
    const loopUtilization = +performance.eventLoopUtilization(elu, eluAtSample).utilization.toFixed(3);
    eluAtSample = elu;
    rss.push({ t: Math.round((performance.now() - t0) / 1000), mb: mb(m.rss), heapMb: mb(m.heapUsed), externalMb: mb(m.external), cyclesPerSec: +((cycles - cyclesAtSample) / 5).toFixed(1), loopUtilization });
    cyclesAtSample = cycles;
  }, 5000);

  const here = dirname(fileURLToPath(import.meta.url));
  const spawnDevices = () => fork(join(here, 'load-devices.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const job: LoadDevicesJob = {
    url: coord.url, rank: o.rank, devices, late: [], sliceMs: o.sliceMs, durationMs: o.duration * 1000,
    connectConcurrency: o.connectConcurrency, connectTimeoutMs: 15_000,
  };
  // The late devices connect from a process of their own: in the fleet's busy process their
  // registration time would include that process's own backlog, not the coordinator's.
  const lateJob: LoadDevicesJob = { ...job, devices: [], late };
  let updatesAtLoadStart = 0;
  let cpuAtLoadStart = process.cpuUsage();
  let threadsAtLoadStart = threadCpuSeconds();
  let loadStartedAt = 0;
  const reportOf = (child: ChildProcess, onRegistered?: () => void) =>
    new Promise<LoadDevicesReport>((resolve, reject) => {
      child.on('message', (m: { kind: string; report?: LoadDevicesReport }) => {
        if (m.kind === 'registered') onRegistered?.();
        else if (m.kind === 'report') resolve(m.report!);
      });
      child.once('exit', (code) => (code === 0 ? undefined : reject(new Error(`load devices exited with code ${code}`))));
    });
  const fleet = spawnDevices();
  let lateReport: Promise<LoadDevicesReport> | undefined;
  const fleetReport = reportOf(fleet, () => {
    // measure the load phase only
    updatesAtLoadStart = updates;
    loadStartedAt = performance.now();
    cpuAtLoadStart = process.cpuUsage();
    threadsAtLoadStart = threadCpuSeconds();
    lag.reset();
    if (late.length) {
      const lateChild = spawnDevices();
      lateReport = reportOf(lateChild);
      lateChild.send(lateJob);
    }
  });
  fleet.send(job);
  const report = await fleetReport;
  if (lateReport) report.lateRegisterMs = (await lateReport).lateRegisterMs;
  const loadSeconds = (performance.now() - loadStartedAt) / 1000;
  // CPU of this process (every thread: the event loop and the adapter workers) over the load phase
  const cpu = process.cpuUsage(cpuAtLoadStart);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const threadsNow = threadCpuSeconds();
  const threads = threadsNow && threadsAtLoadStart
    ? { mainCores: +((threadsNow.main - threadsAtLoadStart.main) / loadSeconds).toFixed(2), otherThreadsCores: +((threadsNow.others - threadsAtLoadStart.others) / loadSeconds).toFixed(2) }
    : null;
  lag.disable();
  clearInterval(sampler);
  const status = coord.status();
  await coord.close();
  if (dir) await rm(dir, { recursive: true, force: true });

  const loadUpdates = updates - updatesAtLoadStart;
  // RSS after warm-up: the samples from o.warmup seconds into the load on, against their median
  const loadStartS = (loadStartedAt - t0) / 1000;
  const settled = rss.filter((r) => r.t >= loadStartS + o.warmup).map((r) => r.mb);
  const rssMedian = settled.length ? [...settled].sort((a, b) => a - b)[settled.length >> 1] : null;
  const rssAfterWarmup = rssMedian === null ? null : {
    fromS: o.warmup,
    samples: settled.length,
    firstMb: settled[0],
    lastMb: settled[settled.length - 1],
    minMb: Math.min(...settled),
    maxMb: Math.max(...settled),
    medianMb: rssMedian,
    /** the largest departure from the median, in % of it */
    maxDeviationPct: +((Math.max(...settled.map((x) => Math.abs(x - rssMedian))) / rssMedian) * 100).toFixed(1),
  };
  // pair-cycles/s once warmed up: the samples whose 5 s lie wholly after the warm-up and within the load
  const warm = rss.filter((r) => r.t - 5 >= loadStartS + o.warmup && r.t <= loadStartS + loadSeconds);
  const cyclesAfterWarmup = warm.length ? +(warm.reduce((a, r) => a + r.cyclesPerSec, 0) / warm.length).toFixed(1) : null;
  const lat = report.latencyMs;
  const lateOk = report.lateRegisterMs.filter((x): x is number => x !== null).sort((a, b) => a - b);
  const result = {
    date: new Date().toISOString(),
    node: process.version,
    options: { ...o, pairs },
    registered: report.registered,
    failedToRegister: report.failedToRegister,
    registerAllMs: report.registerAllMs,
    loadSeconds: +loadSeconds.toFixed(1),
    offeredCyclesPerSec: +(pairs * (1000 / o.sliceMs)).toFixed(1),
    pairCyclesPerSec: +(report.transfers / (report.loadMs / 1000)).toFixed(1),
    adapterUpdatesPerSec: +(loadUpdates / loadSeconds).toFixed(1),
    pairCyclesPerSecAfterWarmup: cyclesAfterWarmup,
    coordinatorCpu: { cores: +(cpuSeconds / loadSeconds).toFixed(2), msPerUpdate: loadUpdates ? +((cpuSeconds * 1000) / loadUpdates).toFixed(2) : null, ...threads },
    sliceToTransferMs: { p50: percentile(lat, 50), p99: percentile(lat, 99), n: lat.length },
    eventLoopLagMs: { p50: +(lag.percentile(50) / 1e6).toFixed(1), p99: +(lag.percentile(99) / 1e6).toFixed(1), max: +(lag.max / 1e6).toFixed(1) },
    lateRegisterMs: {
      each: report.lateRegisterMs,
      p50: percentile(lateOk, 50),
      p99: percentile(lateOk, 99),
      max: lateOk.length ? lateOk[lateOk.length - 1] : null,
      timedOut: report.lateRegisterMs.filter((x) => x === null).length,
    },
    rssAfterWarmup,
    rssMb: rss,
    adapterWorkers: status.totals.adapterWorkers ?? 0,
    drops: status.drops,
    skips: report.skips,
    rejects: report.rejects,
    device: { cpuCores: report.cpuCores, slicesSent: report.slicesSent, slicesPaced: report.slicesPaced, paceMessages: report.paceMessages, transfers: report.transfers, feedbackSent: report.feedbackSent, disconnects: report.disconnects },
    pace: o.pace ? { changes: paces.length, lastSliceIntervalMs: status.totals.sliceIntervalMs ?? 0, timeline: paces } : 'off',
  };
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  const rssFirst = rss[0]?.mb;
  const rssLast = rss[rss.length - 1]?.mb;
  process.stdout.write(
    `bench:load ${o.devices} devices (${o.slots} slots, r ${o.rank}): registered ${report.registered} in ${report.registerAllMs} ms; ` +
      `${result.pairCyclesPerSec} pair-cycles/s of ${result.offeredCyclesPerSec} offered (${cyclesAfterWarmup ?? '–'} after ${o.warmup} s), ${result.adapterUpdatesPerSec} updates/s; ` +
      `slice→transfer p50 ${result.sliceToTransferMs.p50} / p99 ${result.sliceToTransferMs.p99} ms; ` +
      `coordinator CPU ${result.coordinatorCpu.cores} cores (${result.coordinatorCpu.msPerUpdate} ms per update` +
      (threads ? `; main thread ${threads.mainCores}, other threads ${threads.otherThreadsCores}` : '') +
      `; devices' process ${report.cpuCores} cores); loop lag p99 ${result.eventLoopLagMs.p99} ms; late register p99 ${result.lateRegisterMs.p99} ms (${result.lateRegisterMs.timedOut} of ${o.late} timed out); ` +
      `RSS ${rssFirst} → ${rssLast} MB` +
      (o.pace ? `; slice pace ${status.totals.sliceIntervalMs ?? 0} ms (${paces.length} changes)` : '; slice pace off') +
      (rssAfterWarmup ? ` (after ${o.warmup} s: ${rssAfterWarmup.minMb}–${rssAfterWarmup.maxMb} MB, ±${rssAfterWarmup.maxDeviationPct} % of the median)` : '') +
      `; drops ${JSON.stringify(status.drops)}; skips ${JSON.stringify(report.skips)}; rejects ${JSON.stringify(report.rejects)}\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`bench:load: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
