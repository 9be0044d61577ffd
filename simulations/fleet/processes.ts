// A fleet run with every device in its own process: the real coordinator runs here, each device
// is `child_process.fork` of device-process.ts (with `--import tsx`) and talks to it over
// loopback sockets like any remote device would. Progress, readiness, results and errors come back
// over the IPC channel.
//
// Children never outlive the run: a failed run kills the rest, and the runner kills every live
// child when this process exits or gets SIGINT/SIGTERM (a child whose IPC channel closes exits by
// itself as well). A child that crashes is reported as a failed run with its exit code and its
// last stderr lines; nothing waits on it.
import { waitForWarmup } from './warmup.js';
import { fork, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { serve, type RunningCoordinator } from '../../coordinator/index.js';
import { silentLogger } from '../../shared/log.js';
import { initBackend } from '../../shared/tf/backend.js';
import { fleetCoordinatorConfig, randomToken } from './coordinator-config.js';
import { DEFAULT_STALL_TIMEOUT_MS } from './inprocess.js';
import type { ChildToParent, ParentToChild } from './ipc.js';
import { FleetRunError, type DeviceReport, type FleetRunOptions, type FleetRunResult } from './types.js';

const DEVICE_PROCESS = fileURLToPath(new URL('./device-process.ts', import.meta.url));
/** tsx's ESM loader as a file URL, so children resolve it whatever their working directory. */
const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
/** Time a child may take to load its backend, data and model before the run is failed. */
export const READY_TIMEOUT_MS = 120_000;
const STDERR_LINES = 30;

const live = new Set<ChildProcess>();
let hooksInstalled = false;

/** Kill every live device child now (SIGKILL). Safe to call at any time. */
export function killAllChildren(): void {
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
}

/** pids of the device children that are alive now (tests check that none are left behind). */
export function liveChildPids(): number[] {
  return [...live].map((c) => c.pid!).filter((p) => p !== undefined);
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killAllChildren);
  const onSignal = (sig: NodeJS.Signals) => {
    const hadChildren = live.size > 0;
    killAllChildren();
    // Another handler (e.g. a CLI's) decides what happens next; alone, we exit as the signal would.
    if (process.listenerCount(sig) <= 1) {
      if (hadChildren) process.stderr.write(`\n${sig}: stopped the device processes\n`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

interface Child {
  id: string;
  proc: ChildProcess;
  stderr: string[];
  ready: boolean;
  report?: DeviceReport;
  exited: boolean;
}

function tail(lines: string[]): string {
  const t = lines.slice(-12).join('\n').trim();
  return t ? `\n    last stderr lines:\n      ${t.split('\n').join('\n      ')}` : '';
}

export async function runFleetInProcesses(opts: FleetRunOptions): Promise<FleetRunResult> {
  const t0 = performance.now();
  installExitHooks();
  await initBackend(opts.backend, () => {});
  const tokens = new Map(opts.devices.map((d) => [d.id, randomToken()]));
  const config = fleetCoordinatorConfig(opts.devices, opts.pairs, opts.pairMode, tokens, { seed: opts.seed, probe: opts.probe });
  let coord: RunningCoordinator | undefined;
  const children: Child[] = [];
  let watchdog: NodeJS.Timeout | undefined;

  // One promise settles the whole run: the first failure, or every report.
  let settle!: { resolve: () => void; reject: (e: FleetRunError) => void };
  const done = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  done.catch(() => undefined);
  let failed: FleetRunError | undefined;
  const fail = (msg: string, device?: string) => {
    if (failed) return;
    failed = new FleetRunError(`${opts.label}: ${msg}`, opts.label, device);
    settle.reject(failed);
  };
  let lastProgressAt = performance.now();
  const lastStep = new Map<string, number>();

  const send = (c: Child, msg: ParentToChild) => {
    if (c.proc.connected) c.proc.send(msg);
  };

  try {
    coord = await serve(config, { logger: silentLogger(), backend: opts.backend });
    const url = coord.url;
    const allReady = new Promise<void>((resolve) => {
      const check = () => {
        if (children.every((c) => c.ready)) resolve();
      };
      for (const spec of opts.devices) {
        const proc = fork(DEVICE_PROCESS, [], {
          execArgv: ['--import', TSX_LOADER],
          stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
          env: { ...process.env, MERGENET_LOG_LEVEL: process.env.MERGENET_LOG_LEVEL ?? 'warn' },
        });
        live.add(proc);
        const child: Child = { id: spec.id, proc, stderr: [], ready: false, exited: false };
        children.push(child);
        proc.stderr?.setEncoding('utf8');
        proc.stderr?.on('data', (chunk: string) => {
          child.stderr.push(...chunk.split('\n').filter((l) => l.trim() !== ''));
          if (child.stderr.length > STDERR_LINES) child.stderr.splice(0, child.stderr.length - STDERR_LINES);
        });
        proc.on('message', (raw: unknown) => {
          const m = raw as ChildToParent;
          switch (m.type) {
            case 'ready':
              child.ready = true;
              opts.onSpawn?.(spec.id, m.pid);
              check();
              break;
            case 'progress':
              lastProgressAt = performance.now();
              lastStep.set(spec.id, m.progress.step);
              opts.onProgress?.(m.progress);
              break;
            case 'result':
              child.report = m.report;
              if (children.every((c) => c.report)) settle.resolve();
              break;
            case 'error':
              fail(`device "${spec.id}" failed: ${m.message}${tail(child.stderr)}`, spec.id);
              break;
          }
        });
        proc.on('error', (err) => fail(`device "${spec.id}" process error: ${err.message}`, spec.id));
        proc.on('exit', (code, signal) => {
          child.exited = true;
          live.delete(proc);
          if (!child.report) {
            // Let the last stderr chunk and an 'error' message arrive before naming the cause.
            setTimeout(
              () => fail(`device "${spec.id}" exited (${signal ? `signal ${signal}` : `code ${code}`}) before it finished${tail(child.stderr)}`, spec.id),
              50,
            );
          }
        });
        send(child, {
          type: 'job',
          job: { url, token: tokens.get(spec.id)!, device: spec, seed: opts.seed, evalTest: true, paceTimeoutMs: opts.paceTimeoutMs, backend: spec.backend === 'auto' ? opts.backend : spec.backend },
        });
      }
    });

    const stall = opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    const deadline = opts.timeoutMs ? t0 + opts.timeoutMs : Infinity;
    const readyBy = performance.now() + READY_TIMEOUT_MS;
    let started = false;
    watchdog = setInterval(() => {
      const now = performance.now();
      if (!started && now > readyBy) fail(`device processes not ready after ${READY_TIMEOUT_MS / 1000} s: ${children.filter((c) => !c.ready).map((c) => c.id).join(', ')}`);
      else if (started && now - lastProgressAt > stall) fail(`no device made progress for ${Math.round(stall / 1000)} s`);
      else if (now > deadline) fail(`not finished after ${Math.round(opts.timeoutMs! / 1000)} s`);
    }, 500);
    watchdog.unref();

    await Promise.race([allReady, done]);
    started = true;
    lastProgressAt = performance.now();
    const target = children.find((c) => c.id === opts.target);
    if (!target) throw new FleetRunError(`${opts.label}: the target "${opts.target}" is not among the fleet's devices`, opts.label);
    const others = children.filter((c) => c !== target);
    for (const c of others) send(c, { type: 'go' });
    const warmup = opts.sourceWarmup ?? 0;
    if (warmup > 0 && others.length > 0) {
      const steps = new Map(opts.devices.map((d) => [d.id, d.steps]));
      const counted = others.map((c) => ({ id: c.id, steps: steps.get(c.id)! }));
      await Promise.race([waitForWarmup(counted, warmup, lastStep, () => failed !== undefined), done]);
    }
    send(target, { type: 'go' });
    await done;
    const reports: Record<string, DeviceReport> = {};
    for (const c of children) reports[c.id] = c.report!;
    return { label: opts.label, devices: reports, coordinator: coord.status(), wallMs: Math.round(performance.now() - t0) };
  } finally {
    if (watchdog) clearInterval(watchdog);
    await stopChildren(children);
    await coord?.close().catch(() => undefined);
  }
}

/** Ask children still running to stop, then kill what is left after a grace period; wait for every exit. */
async function stopChildren(children: Child[]): Promise<void> {
  const running = children.filter((c) => !c.exited);
  if (running.length === 0) return;
  const exits = running.map(
    (c) =>
      new Promise<void>((resolve) => {
        if (c.exited) return resolve();
        c.proc.once('exit', () => resolve());
      }),
  );
  for (const c of running) {
    // Finished children exit by themselves after their report; the others get SIGKILL: a failed
    // run's devices have nothing worth saving.
    if (!c.report) c.proc.kill('SIGKILL');
  }
  const grace = setTimeout(() => {
    for (const c of running) if (!c.exited) c.proc.kill('SIGKILL');
  }, 5000);
  await Promise.all(exits);
  clearTimeout(grace);
  for (const c of running) live.delete(c.proc);
}
