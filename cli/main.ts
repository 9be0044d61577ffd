// The `mergenet-fed` command: one root with a subcommand per role. `coordinator` and `client` run
// the federated system; `simulate` and `demo` are registered here when they exist.
import { Command, Option } from 'commander';
import { registerClientCommand } from '../client/main.js';
import { registerDemoCommand } from '../simulations/demo.js';
import { registerSimulateCommand } from '../simulations/simulate.js';
import { describeRestore, moveCheckpointAside } from '../coordinator/fresh-start.js';
import { installSignalHandlers, loadCoordinatorConfig, serve } from '../coordinator/index.js';
import { createLogger, debugEnabled } from '../shared/log.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';

const VERSION = '0.1.0';

export interface CoordinatorCliOptions {
  config: string;
  backend: string;
  host?: string;
  port?: number;
  fresh?: boolean;
}

/** `mergenet-fed coordinator --config FILE`: load and validate the config, serve, print the URL. */
export async function runCoordinator(o: CoordinatorCliOptions): Promise<void> {
  const log = createLogger('coordinator');
  const config = loadCoordinatorConfig(o.config); // ConfigError lists every bad field
  if (o.host !== undefined) config.host = o.host;
  if (o.port !== undefined) config.port = o.port;
  if (o.fresh && config.checkpoint.dir) {
    const aside = await moveCheckpointAside(config.checkpoint.dir);
    if (aside) process.stdout.write(`--fresh: moved the previous checkpoint ${config.checkpoint.dir} aside to ${aside}\n`);
  }
  const running = await serve(config, { logger: log, backend: o.backend });
  installSignalHandlers(running, log);
  process.stdout.write(`${describeRestore(running.restored)}\n`);
  process.stdout.write(
    config.viewers.length
      ? `dashboard: ${running.url}/?token=<viewer token>; /status and /metrics with 'Authorization: Bearer <viewer token>' (${config.viewers.length} viewer token(s))\n`
      : `no viewers in the config: /status, /metrics and the dashboard answer 401 until one is added (viewers: [{ tokenEnv: VAR }])\n`,
  );
  process.stdout.write(`coordinator listening on ${running.url} (protocol ${PROTOCOL_VERSION}; ${config.devices.length} devices, ${config.pairs.length} configured pairs${config.autoPair.enabled ? ', auto-pairing' : ''})\n`);
}

export function buildProgram(): Command {
  const program = new Command('mergenet-fed')
    .description('Federated MergeNet: move knowledge between heterogeneous tfjs models through low-rank slices and a coordinator-held adapter')
    .version(VERSION)
    .option('--debug', 'print stack traces with errors, in messages and logs (else: one line that says what went wrong)')
    .showHelpAfterError('(run with --help for usage)')
    .hook('preAction', (cmd) => {
      // Loggers are made inside the actions, after this: they read it from the environment.
      if (cmd.opts().debug) process.env.MERGENET_DEBUG = '1';
    });

  program
    .command('coordinator')
    .description('run the coordinator: authenticates devices, holds one adapter per pair, runs the cycles, checkpoints')
    .requiredOption('--config <file>', 'YAML config (devices, tokens, pairs, limits, timing, checkpoint)')
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['auto', 'wasm', 'cpu', 'tensorflow']).default('auto'))
    .option('--host <host>', 'override the config\'s host (default 127.0.0.1; 0.0.0.0 listens on every interface)')
    .option('--fresh', 'start over: move an existing checkpoint.dir aside (to DIR.old-<time>) instead of resuming from it')
    .option('--port <port>', 'override the config\'s port (0: any free port)', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`--port: expected 0..65535, got "${v}"`);
      return n;
    })
    .action(async (opts: CoordinatorCliOptions) => {
      await runCoordinator(opts);
    });

  registerClientCommand(program);
  registerSimulateCommand(program);
  registerDemoCommand(program);
  return program;
}

/** Parse argv and run the chosen subcommand; errors are printed without a stack trace. */
export async function runCli(argv: readonly string[] = process.argv): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    process.stderr.write(`error: ${(err as Error)?.message ?? String(err)}\n`);
    if (debugEnabled() && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  }
}
