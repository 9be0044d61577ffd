// `npm run demo`: the README's main command. A small heterogeneous fleet in which knowledge moves
// (simulations/scenarios/demo.yaml): the real coordinator in this process and 3 devices as child
// processes on loopback, each condition over 3 seeds. Prints the summary table and the report's path.
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { simulate } from './simulate.js';

export const DEMO_FILE = fileURLToPath(new URL('./scenarios/demo.yaml', import.meta.url));

/** Run the demo; resolves with the number of failed runs. */
export async function runDemo(o: { out?: string; progress?: boolean } = {}): Promise<number> {
  process.stderr.write('mergenet-fed demo: two MLP sources and an MLP target with 100 labels on MNIST digits, the real coordinator, devices as processes\n');
  const res = await simulate(DEMO_FILE, { mode: 'process', out: o.out, progress: o.progress });
  return res.failures.length;
}

export function registerDemoCommand(program: Command): Command {
  return program
    .command('demo')
    .description('run the demo fleet (simulations/scenarios/demo.yaml): the real coordinator and 3 devices as processes; prints the table and the report path')
    .option('--out <dir>', 'report folder (default: runs/demo)')
    .option('--no-progress', 'no progress bars on stderr')
    .action(async (opts: { out?: string; progress?: boolean }) => {
      if ((await runDemo(opts)) > 0) process.exitCode = 1;
    });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(
      'npm run demo [-- --out DIR] [-- --no-progress]\n' +
        `  runs ${DEMO_FILE} with devices as processes; the full scenarios are in simulations/scenarios/ (npm run simulate -- FILE)\n`,
    );
    return;
  }
  const outAt = args.indexOf('--out');
  const out = outAt >= 0 ? args[outAt + 1] : undefined;
  if ((await runDemo({ out, progress: !args.includes('--no-progress') })) > 0) process.exitCode = 1;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await main();
  } catch (err) {
    process.stderr.write(`error: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
  process.exit(process.exitCode ?? 0);
}
