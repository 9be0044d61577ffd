// `mergenet-fed client …`: one device from the command line. Builds (or loads) the model and the
// local data, starts a DeviceClient, prints a progress line periodically on stdout and JSON logs
// on stderr, and stops cleanly on SIGINT/SIGTERM (a second signal exits at once).
import * as tf from '@tensorflow/tfjs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, type Logger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';
import { DATASET_NAMES, describeDataset, loadDeviceData, parseDatasetSpec, type DatasetSpec } from './data/registry.js';
import { inputSpaceOf, loadShippedProbe } from './data/probe-data.js';
import { normalizeCoordinatorUrl } from './coordinator-url.js';
import { CoordinatorUnreachableError, DeviceClient, DeviceRefusedError, type DeviceStatus } from './device.js';
import { loadModelFromDisk, saveModelToDisk } from './model-io.js';
import { buildModelFor, MODEL_KINDS, parseModelSpec, type ModelKind, type ModelSpec } from './models/registry.js';
import { listSlots } from './slot.js';
import type { OptimizerName } from './trainer.js';

export interface ClientCliOptions {
  coordinator: string;
  device: string;
  token?: string;
  tokenEnv?: string;
  model: string;
  hidden?: number[];
  slots?: string[];
  dataset: string;
  task?: string;
  trainSize?: number;
  valSize?: number;
  labels?: number;
  heldout?: number;
  testSize?: number;
  offset?: number;
  seed: number;
  steps?: number;
  optimizer: OptimizerName;
  lr: number;
  batchSize: number;
  rank: number;
  evalEvery: number;
  backend: string;
  slowdown: number;
  progressEvery: number;
  save?: string;
  /** ms; give up when no first connection was made this long after start (0: retry forever) */
  connectTimeout: number;
}

/** Exit codes of `client`: 0 done, 1 failure, 2 refused by the coordinator, 3 coordinator unreachable. */
export const EXIT_UNREACHABLE = 3;

// ---- option parsers (commander calls them with the raw string) ----

export function parseIntOption(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? '∞' : max}], got "${v}"`);
    }
    return n;
  };
}

export function parseNumberOption(min: number, exclusiveMin = false) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || n < min || (exclusiveMin && n === min)) {
      throw new InvalidArgumentError(`expected a number ${exclusiveMin ? '>' : '≥'} ${min}, got "${v}"`);
    }
    return n;
  };
}

/** "30s", "2m", "500ms", "1h" or a bare number of seconds → ms. */
export function parseDurationOption(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$/.exec(v);
  if (!m) throw new InvalidArgumentError(`expected a duration such as 30s, 2m, 500ms or 0, got "${v}"`);
  const unit = m[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'h' ? 3_600_000 : 60_000;
  return Math.round(Number(m[1]) * factor);
}

function parseList(v: string): string[] {
  const items = v.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new InvalidArgumentError('expected a comma-separated list');
  return items;
}

function parseIntList(v: string): number[] {
  return parseList(v).map(parseIntOption(1, 4096));
}

/** Add `client`'s options and action to `program`. */
export function registerClientCommand(program: Command): Command {
  return program
    .command('client')
    .description('run one device: train a model on local data and exchange slices, transfers and feedback with a coordinator')
    .requiredOption('--coordinator <url>', 'coordinator URL, e.g. http://127.0.0.1:7070 (without a scheme, http:// is assumed and said so)')
    .requiredOption('--device <id>', 'this device\'s id (as in the coordinator config)')
    .option('--token <token>', 'the device\'s token (prefer --token-env: a command line is visible to other users)')
    .option('--token-env <var>', 'read the token from this environment variable')
    .requiredOption(
      '--model <name|path>',
      `a zoo model (${MODEL_KINDS.join(', ')}, optionally prefixed by the dataset, e.g. mnist-mlp, mnist-cnn) or path/to/model.json (a tfjs LayersModel ending in softmax)`,
    )
    .option('--hidden <widths>', 'zoo mlp: hidden widths, e.g. 128,64; zoo cnn: dense widths after the convolutions', parseIntList)
    .option('--slots <layers>', 'layers offered as slots, comma-separated (default: every dense/conv/embedding layer)', parseList)
    .addOption(new Option('--dataset <name>', 'local dataset').choices([...DATASET_NAMES]).makeOptionMandatory())
    .option('--task <task>', 'task on the dataset (mnist: digit|parity; penguins: species|island|sex)')
    .option('--train-size <n>', 'training examples', parseIntOption(1))
    .option('--val-size <n>', 'held-out examples for val accuracy', parseIntOption(1))
    .option('--labels <n>', 'labelled examples in all, of which --heldout are held out for the trust gates\' feedback (replaces --train-size and --val-size)', parseIntOption(2))
    .option('--heldout <fraction>', 'with --labels: the fraction held out (default 0.2)', parseNumberOption(0))
    .option('--test-size <n>', 'test examples', parseIntOption(1))
    .option('--offset <n>', 'where this device\'s train/val window starts in the corpus (disjoint devices: different offsets)', parseIntOption(0))
    .option('--seed <n>', 'seed of the data split, the model\'s initial weights and the batch order', parseIntOption(0), 0)
    .option('--steps <n>', 'stop after this many local steps (default: run until SIGINT/SIGTERM)', parseIntOption(1))
    .addOption(new Option('--optimizer <name>', 'local optimiser').choices(['sgd', 'adam', 'momentum']).default('adam'))
    .option('--lr <rate>', 'local learning rate', parseNumberOption(0, true), 0.001)
    .option('--batch-size <n>', 'local minibatch size', parseIntOption(1), 32)
    .option('--rank <r>', 'rank this device prefers for its slices (the coordinator\'s plan decides)', parseIntOption(1), 8)
    .option('--eval-every <n>', 'evaluate on the val split and report metrics every n steps (0: never)', parseIntOption(0), 100)
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['auto', 'wasm', 'cpu', 'tensorflow']).default('auto'))
    .option('--slowdown <factor>', '≥ 1: after each step sleep (factor − 1)× its time, to mimic weak hardware', parseNumberOption(1), 1)
    .option('--progress-every <seconds>', 'seconds between progress lines on stdout (0: none)', parseNumberOption(0), 5)
    .option('--save <dir>', 'on exit, save the trained model (model.json + weights.bin) to this directory')
    .option(
      '--connect-timeout <duration>',
      'exit with code 3 when no connection to the coordinator could be made this long after start (e.g. 30s, 2m; 0: retry forever). Once connected, a lost coordinator is retried forever while training goes on',
      parseDurationOption,
      30_000,
    )
    .action(async (opts: ClientCliOptions) => {
      process.exitCode = await runClient(opts);
    });
}

interface ZooChoice {
  kind: 'zoo';
  spec: ModelSpec;
  name: string;
}
interface FileChoice {
  kind: 'file';
  path: string;
}

/** `mnist-mlp` / `mlp` → a zoo spec; anything ending in .json → a file. */
export function resolveModelArg(model: string, dataset: string, hidden?: number[]): ZooChoice | FileChoice {
  if (model.endsWith('.json')) return { kind: 'file', path: model };
  const m = /^(?:([a-z]+)-)?([a-z]+)$/.exec(model);
  const kind = m?.[2];
  if (!m || !(MODEL_KINDS as readonly string[]).includes(kind!)) {
    throw new Error(`unknown model "${model}": expected one of ${MODEL_KINDS.join(', ')} (optionally as <dataset>-<kind>, e.g. mnist-cnn) or a path to model.json`);
  }
  if (m[1] && m[1] !== dataset) throw new Error(`model "${model}" is for dataset "${m[1]}", but --dataset is "${dataset}"`);
  let raw: Record<string, unknown> = { kind };
  if (hidden) {
    if (kind === 'mlp') raw = { kind, hidden };
    else if (kind === 'cnn') raw = { kind, dense: hidden };
    else throw new Error(`--hidden applies to mlp and cnn models, not "${kind}"`);
  }
  return { kind: 'zoo', spec: parseModelSpec(raw), name: model };
}

export function datasetSpecFromOptions(o: Pick<ClientCliOptions, 'dataset' | 'task' | 'trainSize' | 'valSize' | 'testSize' | 'offset' | 'labels' | 'heldout'>, modelKind?: ModelKind): DatasetSpec {
  const raw: Record<string, unknown> = { name: o.dataset };
  if (o.task !== undefined) raw.task = o.task;
  if (o.trainSize !== undefined) raw.trainSize = o.trainSize;
  if (o.valSize !== undefined) raw.valSize = o.valSize;
  if (o.labels !== undefined) raw.labels = o.labels;
  if (o.heldout !== undefined) raw.heldout = o.heldout;
  if (o.testSize !== undefined) raw.testSize = o.testSize;
  if (o.offset !== undefined) raw.offset = o.offset;
  // A zoo CNN reads MNIST as 28×28×1 images; everything else takes the flat layout.
  if (o.dataset === 'mnist' && modelKind === 'cnn') raw.layout = 'image';
  return parseDatasetSpec(raw, '--dataset');
}

/** "mlp: dense_0[784×64] out[64×10]": a readable architecture string from the model itself. */
export function describeArchitecture(label: string, model: tf.LayersModel): string {
  const slots = listSlots(model).map((s) => `${s.layer}[${s.shape.join('×')}]`);
  const out = `${label}: ${slots.join(' ')}`;
  return out.length <= 200 ? out : `${out.slice(0, 197)}...`;
}

function pct(x: number | undefined): string {
  return x === undefined ? '  –  ' : `${(100 * x).toFixed(1)}%`;
}

export function progressLine(s: DeviceStatus): string {
  const loss = s.loss === undefined ? '–' : s.loss.toFixed(4);
  const rejects = Object.values(s.rejects).reduce((a, b) => a + b, 0);
  return (
    `[${s.deviceId}] step ${s.step}  loss ${loss}  val ${pct(s.valAcc)}  ` +
    `transfers ${s.transfersApplied}  feedback ${s.feedbackSent}  pairs ${s.pairs.length}  ` +
    `${s.connected ? 'connected' : 'offline'}${rejects ? `  rejects ${rejects}` : ''}` +
    (s.stepsPerSec !== undefined ? `  ${s.stepsPerSec.toFixed(1)} steps/s` : '')
  );
}

export interface RunClientIo {
  /** progress lines (default stdout) */
  out: (line: string) => void;
  /** error lines (default stderr) */
  err?: (line: string) => void;
  logger?: Logger;
  /** Install SIGINT/SIGTERM handlers (default true). */
  signals?: boolean;
  env?: Record<string, string | undefined>;
}

/** Run a device until --steps or a signal. Returns the process exit code (0 ok, 1 failure, 2 refused). */
export async function runClient(o: ClientCliOptions, io: RunClientIo = { out: (l) => process.stdout.write(l + '\n') }): Promise<number> {
  const log = io.logger ?? createLogger('client');
  const errOut = io.err ?? ((l: string) => process.stderr.write(l + '\n'));
  const env = io.env ?? process.env;
  let token: string;
  try {
    if ((o.token === undefined) === (o.tokenEnv === undefined)) throw new Error('give exactly one of --token and --token-env');
    if (o.tokenEnv !== undefined) {
      const t = env[o.tokenEnv];
      if (!t) throw new Error(`environment variable ${o.tokenEnv} (--token-env) is not set or empty`);
      token = t;
    } else token = o.token!;
  } catch (err) {
    errOut(`error: ${(err as Error).message}`);
    return 1;
  }

  let url: string;
  try {
    const normalized = normalizeCoordinatorUrl(o.coordinator);
    if (normalized.notice) errOut(`[${o.device}] note: ${normalized.notice}`);
    url = normalized.url;
  } catch (err) {
    errOut(`error: ${(err as Error).message}`);
    return 1;
  }

  let model: tf.LayersModel | undefined;
  let device: DeviceClient | undefined;
  const removeSignals: (() => void)[] = [];
  try {
    await initBackend(o.backend, (line) => log.info(line));
    const choice = resolveModelArg(o.model, o.dataset, o.hidden);
    const dataSpec = datasetSpecFromOptions(o, choice.kind === 'zoo' ? choice.spec.kind : undefined);
    const described = describeDataset(dataSpec);
    const data = loadDeviceData(dataSpec, o.seed);
    let label: string;
    if (choice.kind === 'zoo') {
      model = buildModelFor(choice.spec, data, o.seed);
      label = choice.spec.kind;
    } else {
      model = await loadModelFromDisk(choice.path);
      label = 'user';
    }
    const name = choice.kind === 'zoo' ? choice.name : choice.path.slice(-200);
    device = new DeviceClient({
      url,
      deviceId: o.device,
      token,
      model,
      data,
      slots: o.slots,
      rank: o.rank,
      trainer: { optimizer: o.optimizer, lr: o.lr, batchSize: o.batchSize },
      seed: o.seed,
      maxSteps: o.steps,
      evalEvery: o.evalEvery,
      slowdown: o.slowdown,
      logger: log,
      connectTimeoutMs: o.connectTimeout,
      description: { name, architecture: describeArchitecture(label, model), task: described.task, modality: described.modality },
      inputSpace: inputSpaceOf(o.dataset),
      loadProbe: loadShippedProbe,
    });
    const dev = device;
    io.out(
      `[${o.device}] ${name} on ${described.task} (${data.train.n} train / ${data.val.n} val), slots ` +
        dev.slots().map((s) => `${s.name}[${s.shape.join('×')}]`).join(' ') + `, coordinator ${url}`,
    );

    if (io.signals !== false) {
      let signalled = false;
      const onSignal = (sig: NodeJS.Signals) => {
        if (signalled) {
          log.warn({ signal: sig }, 'second signal: exiting now');
          process.exit(130);
        }
        signalled = true;
        log.info({ signal: sig }, 'signal received: finishing the current step and stopping');
        dev.stop();
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      removeSignals.push(() => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      });
    }
    let lastCause: string | undefined;
    dev.on('plan', (p) => {
      io.out(`[${o.device}] plan (session ${p.session}): ${p.pairs.map((x) => `${x.pairId} ${x.role} ${x.slot} r${x.rank} T${x.tCycle} k${x.k}`).join('; ') || 'no pairs'}`);
      // The coordinator says why a pair is missing or waiting (optional `notes` of the plan).
      for (const note of p.notes ?? []) io.out(`[${o.device}]   ${note}`);
    });
    dev.on('unreachable', (f) => {
      lastCause = f.cause;
      const limit = o.connectTimeout > 0 && dev.status().connections === 0 ? `; --connect-timeout gives up ${o.connectTimeout / 1000} s after start` : '';
      errOut(`[${o.device}] cannot reach the coordinator at ${f.url}: ${f.cause}; retrying with backoff (attempt ${f.attempt}${limit})`);
    });
    dev.on('reject', (r) => io.out(`[${o.device}] rejected ${r.event}: ${r.code}: ${r.reason}`));
    let timer: NodeJS.Timeout | undefined;
    if (o.progressEvery > 0) timer = setInterval(() => io.out(progressLine(dev.status())), o.progressEvery * 1000);
    try {
      await dev.start();
    } finally {
      if (timer) clearInterval(timer);
    }
    const st = dev.status();
    io.out(progressLine(st));
    if (o.save) {
      const files = await saveModelToDisk(model, o.save);
      io.out(`[${o.device}] model saved to ${files.modelJson}`);
    }
    io.out(`[${o.device}] stopped at step ${st.step}: ${st.transfersApplied} transfers applied, ${st.feedbackSent} feedback sent, ${st.connections} connection(s)`);
    if (st.connections === 0) {
      // Training ended before any connection: the run was alone, which is worth a loud word.
      errOut(`error: finished ${st.step} steps without ever reaching the coordinator at ${url}${lastCause ? `: ${lastCause}` : ''}`);
      if (o.connectTimeout > 0) return EXIT_UNREACHABLE;
    }
    return 0;
  } catch (err) {
    if (err instanceof CoordinatorUnreachableError) {
      errOut(`error: ${err.message}`);
      log.error({ url: err.url, cause: err.lastFailure?.cause, attempts: err.attempts }, 'coordinator unreachable');
      return EXIT_UNREACHABLE;
    }
    if (err instanceof DeviceRefusedError) {
      errOut(`error: ${err.message}`);
      log.error({ code: err.code, reason: err.reason }, 'refused by the coordinator');
      return 2;
    }
    errOut(`error: ${(err as Error).message}`);
    log.error({ err }, 'client failed');
    return 1;
  } finally {
    for (const f of removeSignals) f();
    model?.dispose();
  }
}
