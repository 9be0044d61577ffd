// A fleet run in this process: the real coordinator (serve(), on loopback) and one real
// DeviceClient per device, all sharing this process's thread (each device yields to the event loop
// after every step, so they interleave). Quicker to start than processes, slower to run.
import { waitForWarmup } from './warmup.js';
import { serve, type RunningCoordinator } from '../../coordinator/index.js';
import { silentLogger } from '../../shared/log.js';
import { initBackend } from '../../shared/tf/backend.js';
import { fleetCoordinatorConfig, randomToken } from './coordinator-config.js';
import { prepareDevice, type PreparedDevice } from './run-device.js';
import { FleetRunError, type DeviceProgress, type DeviceReport, type FleetRunOptions, type FleetRunResult } from './types.js';

export const DEFAULT_STALL_TIMEOUT_MS = 180_000;

export async function runFleetInProcess(opts: FleetRunOptions): Promise<FleetRunResult> {
  const t0 = performance.now();
  await initBackend(opts.backend, () => {});
  const tokens = new Map(opts.devices.map((d) => [d.id, randomToken()]));
  const config = fleetCoordinatorConfig(opts.devices, opts.pairs, opts.pairMode, tokens, { seed: opts.seed, probe: opts.probe });
  let coord: RunningCoordinator | undefined;
  const prepared: PreparedDevice[] = [];
  const lastStep = new Map<string, number>();
  let lastProgressAt = performance.now();
  let failure: FleetRunError | undefined;
  let watchdog: NodeJS.Timeout | undefined;
  const onProgress = (p: DeviceProgress) => {
    lastStep.set(p.device, p.step);
    lastProgressAt = performance.now();
    opts.onProgress?.(p);
  };
  const fail = (err: FleetRunError) => {
    if (failure) return;
    failure = err;
    for (const d of prepared) d.stop();
  };

  try {
    coord = await serve(config, { logger: silentLogger(), backend: opts.backend });
    for (const spec of opts.devices) {
      prepared.push(
        prepareDevice(
          { url: coord.url, token: tokens.get(spec.id)!, device: spec, seed: opts.seed, evalTest: true, paceTimeoutMs: opts.paceTimeoutMs },
          { onProgress },
        ),
      );
    }
    const stall = opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    const deadline = opts.timeoutMs ? t0 + opts.timeoutMs : Infinity;
    watchdog = setInterval(() => {
      const now = performance.now();
      if (now - lastProgressAt > stall) fail(new FleetRunError(`${opts.label}: no device made progress for ${Math.round(stall / 1000)} s`, opts.label));
      else if (now > deadline) fail(new FleetRunError(`${opts.label}: not finished after ${Math.round(opts.timeoutMs! / 1000)} s`, opts.label));
    }, 1000);
    watchdog.unref();

    const reports: Record<string, DeviceReport> = {};
    const runOne = (d: PreparedDevice) =>
      d.run().then(
        (r) => {
          reports[d.id] = r;
        },
        (err: unknown) => fail(new FleetRunError(`${opts.label}: device "${d.id}" failed: ${(err as Error).message}`, opts.label, d.id)),
      );
    const target = prepared.find((d) => d.id === opts.target);
    if (!target) throw new FleetRunError(`${opts.label}: the target "${opts.target}" is not among the fleet's devices`, opts.label);
    const others = prepared.filter((d) => d !== target);
    const running = others.map(runOne);
    const warmup = opts.sourceWarmup ?? 0;
    if (warmup > 0 && others.length > 0) await waitForWarmup(others, warmup, lastStep, () => failure !== undefined);
    if (!failure) running.push(runOne(target));
    else target.dispose();
    await Promise.all(running);
    if (failure) throw failure;
    const coordinator = coord.status();
    return { label: opts.label, devices: reports, coordinator, wallMs: Math.round(performance.now() - t0) };
  } finally {
    if (watchdog) clearInterval(watchdog);
    for (const d of prepared) d.dispose();
    await coord?.close().catch(() => undefined);
  }
}
