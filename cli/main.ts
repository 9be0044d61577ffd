// The `mergenet-fed` command: one root with a subcommand per role. `coordinator` and `client` run
// the federated system; `simulate` and `demo` are registered here when they exist.
import { Command, Option } from 'commander';
import { registerClientCommand } from '../client/main.js';
import { registerDemoCommand } from '../simulations/demo.js';
import { registerSimulateCommand } from '../simulations/simulate.js';
import { installSignalHandlers, loadCoordinatorConfig, serve } from '../coordinator/index.js';
import { createLogger } from '../shared/log.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';

const VERSION = '0.1.0';

export interface CoordinatorCliOptions {
  config: string;
  backend: string;
  host?: string;
  port?: number;
}

/** `mergenet-fed coordinator --config FILE`: load and validate the config, serve, print the URL. */
export async function runCoordinator(o: CoordinatorCliOptions): Promise<void> {
  const log = createLogger('coordinator');
  const config = loadCoordinatorConfig(o.config); // ConfigError lists every bad field
  if (o.host !== undefined) config.host = o.host;
  if (o.port !== undefined) config.port = o.port;
  const running = await serve(config, { logger: log, backend: o.backend });
  installSignalHandlers(running, log);
  process.stdout.write(`coordinator listening on ${running.url} (protocol ${PROTOCOL_VERSION}; ${config.devices.length} devices, ${config.pairs.length} configured pairs${config.autoPair.enabled ? ', auto-pairing' : ''})\n`);
}

export function buildProgram(): Command {
  const program = new Command('mergenet-fed')
    .description('Federated MergeNet: move knowledge between heterogeneous tfjs models through low-rank slices and a coordinator-held adapter')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('coordinator')
    .description('run the coordinator: authenticates devices, holds one adapter per pair, runs the cycles, checkpoints')
    .requiredOption('--config <file>', 'YAML config (devices, tokens, pairs, limits, timing, checkpoint)')
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['auto', 'wasm', 'cpu', 'tensorflow']).default('auto'))
    .option('--host <host>', 'override the config\'s host')
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
    process.stderr.write(`error: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
