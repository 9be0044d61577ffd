// `npm run reference`: the paper's loop in one process on real MNIST, before any network.
// A CNN source on plenty of data, an MLP target on few labels; the target's test accuracy alone,
// with MergeNet transfer, and with a noise source of equal shape and norm, over several seeds.
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { initBackend } from '../shared/tf/backend.js';
import { mnistSplits } from '../client/data/mnist.js';
import { buildModel, type ModelSpec } from '../client/models/mnist-models.js';
import { slotInfo } from '../client/slot.js';
import { sliceFloats } from '../shared/math/slice.js';
import { writeReport } from './report/write-report.js';
import { summarize } from './report/summary.js';
import type { ConditionRun, ExperimentResult } from './report/types.js';
import { disposeTrace, runTarget, traceSource, type DeviceRecipe, type LoopConfig, type ReferenceCondition } from './reference/paper-loop.js';

const SOURCES: Record<string, ModelSpec> = {
  cnn: { kind: 'cnn', inputShape: [28, 28, 1], filters: [8, 16], kernelSize: 3, dense: [64], classes: 10 },
  mlp: { kind: 'mlp', inputShape: [784], hidden: [256], classes: 10 },
};
const TARGET: ModelSpec = { kind: 'mlp', inputShape: [784], hidden: [128], classes: 10 };

const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`expected an integer, got "${v}"`);
  return n;
};
const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`expected a number, got "${v}"`);
  return n;
};

const program = new Command('reference')
  .description('In-process MergeNet reference run on real MNIST: target alone vs with transfer vs noise-source control')
  .option('--seeds <n>', 'number of seeds (0..n-1)', int, 5)
  .addOption(new Option('--source <arch>', 'source architecture').choices(Object.keys(SOURCES)).default('cnn'))
  .option('--source-slot <layer>', 'source slot (layer name)', 'out')
  .option('--target-slot <layer>', 'target slot (layer name)', 'out')
  .option('--source-train <n>', 'source training examples', int, 5000)
  .option('--target-labels <n>', 'target training labels', int, 300)
  .option('--val <n>', 'target validation examples (held-out feedback only)', int, 500)
  .option('--test <n>', 'test examples (shared test split, disjoint from all training)', int, 2000)
  .option('--steps <n>', 'target training steps', int, 1000)
  .option('--source-warmup <n>', 'source steps before the target starts', int, 0)
  .option('--batch <n>', 'batch size', int, 32)
  .option('--lr <x>', 'device learning rate (adam)', num, 1e-3)
  .option('--rank <r>', 'slice rank', int, 8)
  .option('--t-cycle <n>', 'steps between transfers', int, 10)
  .option('--k <n>', 'local steps per transfer before feedback', int, 5)
  .option('--tau <x>', 'knowledge-branch cap', num, 0.5)
  .option('--adapter-lr <x>', 'adapter AdamW learning rate', num, 1e-4)
  .addOption(new Option('--feedback <where>', 'where G is computed').choices(['train', 'heldout']).default('train'))
  .option('--eval-every <n>', 'evaluate every n steps', int, 100)
  .option('--backend <name>', 'tfjs backend: auto, wasm, cpu, tensorflow')
  .option('--out <dir>', 'report folder', '')
  .option('--no-progress', 'no progress bar');

async function main(): Promise<void> {
  const o = program.parse().opts();
  const backend = await initBackend(o.backend);
  const seeds = Array.from({ length: o.seeds }, (_, i) => i);
  const cfg: LoopConfig = {
    steps: o.steps, rank: o.rank, tCycle: o.tCycle, k: o.k, tau: o.tau,
    sourceSlot: o.sourceSlot, targetSlot: o.targetSlot, adapter: { lr: o.adapterLr },
    evalEvery: o.evalEvery, feedback: o.feedback, sourceWarmup: o.sourceWarmup,
  };
  const sourceSpec = SOURCES[o.source];
  const conditions: ReferenceCondition[] = ['alone', 'mergenet', 'noise'];
  const startedAt = new Date().toISOString();
  const runs: ConditionRun[] = [];
  const sourceAcc: number[] = [];
  const bar = o.progress
    ? new cliProgress.SingleBar({ format: 'reference |{bar}| {percentage}% | seed {seed} {phase} | eta {eta_formatted}', stream: process.stderr, etaBuffer: 500 }, cliProgress.Presets.shades_classic)
    : undefined;
  const totalSteps = seeds.length * (cfg.sourceWarmup + cfg.steps + conditions.length * cfg.steps);
  bar?.start(totalSteps, 0, { seed: 0, phase: 'source' });
  let slotShapes: { source: [number, number]; target: [number, number] } | undefined;

  for (const seed of seeds) {
    // One shuffle per seed: target train, target val, then the source's training window, with
    // the shared test split at the end of the order, disjoint from every training example.
    const target = mnistSplits({ seed, trainSize: o.targetLabels, valSize: o.val, testSize: o.test, task: 'digit' });
    const source = mnistSplits({
      seed, trainSize: o.sourceTrain, valSize: 0, testSize: o.test, task: 'digit',
      offset: o.targetLabels + o.val, layout: sourceSpec.kind === 'cnn' ? 'image' : 'flat',
    });
    const sourceRecipe: DeviceRecipe = { build: (s) => buildModel(sourceSpec, 1000 + s), data: source, optimizer: 'adam', lr: o.lr, batchSize: o.batch };
    const targetRecipe: DeviceRecipe = { build: (s) => buildModel(TARGET, s), data: target, optimizer: 'adam', lr: o.lr, batchSize: o.batch };
    if (!slotShapes) {
      const s = sourceRecipe.build(0), t = targetRecipe.build(0);
      slotShapes = { source: slotInfo(s, cfg.sourceSlot).shape, target: slotInfo(t, cfg.targetSlot).shape };
      s.dispose(); t.dispose();
    }
    bar?.update({ seed, phase: 'source' });
    const trace = traceSource(sourceRecipe, cfg, seed, () => bar?.increment());
    sourceAcc.push(trace.finalAcc);
    for (const condition of conditions) {
      bar?.update({ seed, phase: condition });
      const out = runTarget(condition, targetRecipe, trace, cfg, seed, () => bar?.increment());
      const [m, n] = slotShapes.target;
      const [ms, ns] = slotShapes.source;
      // per cycle on the wire: target slice up, source slice up, transfer down, feedback up
      const perCycle = 4 * (3 * sliceFloats(m, n, cfg.rank) + sliceFloats(ms, ns, cfg.rank));
      const fullPerCycle = 4 * (3 * m * n + ms * ns);
      runs.push({
        condition, seed, device: 'target', curve: out.curve, finalAcc: out.finalAcc, bestAcc: out.bestAcc,
        bytesSent: out.cycles * perCycle, bytesFullWeights: out.cycles * fullPerCycle, wallMs: out.wallMs,
        extra: { cycles: out.cycles, branchRatio: out.meanBranchRatio, capBound: out.capBoundFraction },
      });
    }
    disposeTrace(trace);
  }
  bar?.stop();

  const result: ExperimentResult = {
    name: 'reference',
    description:
      `In-process paper loop on real MNIST: a ${o.source.toUpperCase()} source (${o.sourceTrain} examples) transfers into an MLP target ` +
      `(${o.targetLabels} labels) every ${cfg.tCycle} steps through the knowledge-branch rule (cap τ=${cfg.tau}, k=${cfg.k}, rank ${cfg.rank}, ` +
      `adapter lr ${o.adapterLr}, feedback on ${cfg.feedback} data). Same init, data order and steps in every condition.`,
    scenario: 'reference', startedAt, finishedAt: new Date().toISOString(), backend: backend.backend, mode: 'inprocess',
    target: 'target',
    devices: [
      { id: 'source', model: `${o.source} ${JSON.stringify(sourceSpec)}`, dataset: `mnist (${o.sourceTrain} train)`, task: 'digit', modality: 'image' },
      { id: 'target', model: `mlp ${JSON.stringify(TARGET)}`, dataset: `mnist (${o.targetLabels} train, ${o.test} test)`, task: 'digit', modality: 'image' },
    ],
    pairs: [{ source: 'source', sourceSlot: `${cfg.sourceSlot} [${slotShapes!.source.join('×')}]`, target: 'target', targetSlot: `${cfg.targetSlot} [${slotShapes!.target.join('×')}]`, rank: cfg.rank, tCycle: cfg.tCycle, k: cfg.k }],
    seeds, runs,
    notes: [
      `Source final test accuracy per seed: ${sourceAcc.map((a) => (100 * a).toFixed(1) + '%').join(', ')}.`,
      'The noise condition feeds the adapter Gaussian noise with the shape and Frobenius norm of each source factor.',
      'Best accuracy is the maximum over evaluations on the test split and is reported for completeness only; final accuracy is the measure.',
    ],
  };
  const outDir = o.out || `runs/reference-${startedAt.replace(/[:.]/g, '-')}`;
  const { markdown, paths } = writeReport(result, outDir);
  process.stdout.write(markdown + '\n');
  const summary = summarize(result);
  const figures = {
    backend: backend.backend, seeds, config: { ...cfg, source: o.source, targetLabels: o.targetLabels, adapterLr: o.adapterLr },
    sourceAcc,
    conditions: Object.fromEntries(summary.rows.map((r) => [r.condition, {
      finalMean: r.finalAcc.mean, finalStd: r.finalAcc.std, verdict: r.verdict,
      diffVsAlonePoints: r.diffVsAlone ? { mean: r.diffVsAlone.mean, ci95: r.diffVsAlone.ci95, perSeed: r.diffVsAlone.perSeed } : null,
    }])),
    perSeed: runs.map((r) => ({ seed: r.seed, condition: r.condition, finalAcc: r.finalAcc, ...r.extra })),
    report: paths,
  };
  process.stdout.write(JSON.stringify(figures, null, 2) + '\n');
}

main().catch((err) => {
  process.stderr.write(`reference: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
