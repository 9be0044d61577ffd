// One device of a fleet run as its own process (forked by processes.ts with `--import tsx`). It
// waits for its job on the IPC channel, prepares the device, says `ready`, trains on `go`, sends
// progress while it trains and its report at the end, then exits. If the parent goes away (the IPC
// channel closes), it exits at once: a device process never outlives its runner.
import { createLogger } from '../../shared/log.js';
import { initBackend } from '../../shared/tf/backend.js';
import type { ChildToParent, ParentToChild } from './ipc.js';
import { prepareDevice, type PreparedDevice } from './run-device.js';

if (!process.send) {
  process.stderr.write('device-process.ts is started by the fleet runner (child_process.fork), not by hand\n');
  process.exit(2);
}

function send(msg: ChildToParent): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected) return resolve();
    process.send!(msg, undefined, {}, () => resolve());
  });
}

async function failAndExit(err: unknown): Promise<never> {
  const e = err instanceof Error ? err : new Error(String(err));
  process.stderr.write(`device process ${process.pid}: ${e.stack ?? e.message}\n`);
  await send({ type: 'error', message: e.message, stack: e.stack });
  process.exit(1);
}

let device: PreparedDevice | undefined;
let started = false;

process.on('disconnect', () => process.exit(0));
process.on('uncaughtException', (err) => void failAndExit(err));
process.on('unhandledRejection', (err) => void failAndExit(err));
// The parent handles Ctrl-C for the whole fleet (it stops or kills its children).
process.on('SIGINT', () => device?.stop());
process.on('SIGTERM', () => {
  if (device && started) device.stop();
  else process.exit(143);
});

process.on('message', (raw: unknown) => {
  const msg = raw as ParentToChild;
  void (async () => {
    try {
      if (msg.type === 'job') {
        const job = msg.job;
        const choice = await initBackend(job.backend, () => {});
        // Warnings and errors of the device client go to stderr, where the parent keeps the last lines.
        const logger = createLogger(`device:${job.device.id}`, process.env.MERGENET_LOG_LEVEL ?? 'warn');
        device = prepareDevice(job, {
          logger,
          progressEveryMs: 250,
          onProgress: (progress) => void send({ type: 'progress', progress }),
        });
        await send({ type: 'ready', pid: process.pid, backend: choice.backend });
      } else if (msg.type === 'go') {
        if (!device) throw new Error('`go` before `job`');
        if (started) return;
        started = true;
        const report = await device.run();
        await send({ type: 'result', report });
        process.exit(0);
      } else if (msg.type === 'stop') {
        if (device && started) device.stop();
        else process.exit(0);
      }
    } catch (err) {
      await failAndExit(err);
    }
  })();
});
