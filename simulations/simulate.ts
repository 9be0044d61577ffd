// `npm run simulate -- FILE [--mode process|inprocess] [--seeds 0,1] [--out DIR]
//   [--conditions alone,mergenet] [--backend NAME] [--no-progress]`
// Runs one experiment file with the real coordinator and device code, prints the Markdown summary
// on stdout and the report's paths after it. Progress goes to stderr. Also `mergenet-fed simulate`.
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { loadExperiment } from './experiment/schema.js';
import { createProgress, silentProgress } from './experiment/progress.js';
import { runExperiment, type ExperimentOutput, type FleetMode } from './experiment/run-experiment.js';

export interface SimulateOptions {
  mode?: FleetMode;
  seeds?: number[];
  out?: string;
  conditions?: string[];
  backend?: string;
  progress?: boolean;
  /** `path=value` overrides of the file, e.g. devices[1].dataset.labels=300 */
  set?: string[];
}

function parseSeeds(v: string): number[] {
  const seeds = v.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (seeds.length === 0 || seeds.some((s) => !Number.isInteger(s) || s < 0)) throw new Error(`--seeds: expected non-negative integers like 0,1,2, got "${v}"`);
  return [...new Set(seeds)];
}

function parseList(v: string): string[] {
  const items = v.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (items.length === 0) throw new Error(`expected a comma-separated list, got "${v}"`);
  return items;
}

/** Run the experiment in `file`, print the summary and the report's paths. Returns the output. */
export async function simulate(
  file: string,
  o: SimulateOptions = {},
  print: (s: string) => void = (s) => process.stdout.write(s),
): Promise<ExperimentOutput> {
  const e = loadExperiment(file, o.set ?? []); // errors name the bad field
  const progress = o.progress === false ? silentProgress() : createProgress();
  const mode = o.mode ?? e.mode;
  progress.log(`${e.name}: ${e.seeds.length > 0 ? `seeds ${(o.seeds ?? e.seeds).join(',')}` : ''}, mode ${mode}, report → ${o.out ?? e.output}`);
  const out = await runExperiment(e, { mode, seeds: o.seeds, conditions: o.conditions, out: o.out, backend: o.backend, progress });
  print(out.markdown! + '\n');
  print(`report: ${out.paths!.md}\n        ${out.paths!.html}\n        ${out.paths!.json} (raw per-step metrics also in ${out.paths!.csv})\n`);
  print(`wall time: ${(out.wallMs / 1000).toFixed(1)} s\n`);
  if (out.failures.length) print(`${out.failures.length} run(s) FAILED (see the report's notes)\n`);
  return out;
}

/** Adds `simulate FILE` to a commander program (the `mergenet-fed` CLI and this script share it). */
export function registerSimulateCommand(program: Command): Command {
  return program
    .command('simulate')
    .description('run an experiment file (devices, pairs, seeds, baselines) with the real coordinator and devices; print and write the report')
    .argument('<file>', 'experiment YAML (see simulations/scenarios/)')
    .addOption(new Option('--mode <mode>', 'devices as child processes, or all in this process (default: the file\'s mode)').choices(['process', 'inprocess']))
    .option('--seeds <list>', 'seeds to run instead of the file\'s, e.g. 0,1', parseSeeds)
    .option('--out <dir>', 'report folder (default: the file\'s output)')
    .option('--conditions <list>', 'conditions to run instead of the file\'s baselines, e.g. alone,mergenet', parseList)
    .addOption(new Option('--backend <name>', 'tfjs backend of the coordinator and local runs').choices(['auto', 'wasm', 'cpu', 'tensorflow']))
    .option('--no-progress', 'no progress bars on stderr')
    .option('--set <path=value>', 'override a field of the file, e.g. devices[1].dataset.labels=300 (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .action(async (file: string, opts: SimulateOptions) => {
      const out = await simulate(file, opts);
      if (out.failures.length) process.exitCode = 1;
    });
}

async function main(): Promise<void> {
  const program = new Command('simulate').showHelpAfterError('(run with --help for usage)');
  program.exitOverride();
  registerSimulateCommand(program);
  try {
    await program.parseAsync(['node', 'simulate', 'simulate', ...process.argv.slice(2)]);
  } catch (err) {
    const e = err as Error & { code?: string; exitCode?: number };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return;
    if (e.code?.startsWith('commander.')) {
      process.exitCode = e.exitCode ?? 1;
      return;
    }
    process.stderr.write(`error: ${e.message}\n`);
    process.exitCode = 1;
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main();
  // Anything left (a socket, a timer of a library) must not keep a finished run alive.
  process.exit(process.exitCode ?? 0);
}
