// `npm run bench:pytorch`: the adapter's plain-array forward+update against the live PyTorch
// reference (bench/reference/lpka_torch.py, one thread), interleaved in alternating rounds
// (bench/pytorch-interleaved.ts), for the three bench shapes at r 8. JSON on stdout, one summary
// line per shape on stderr. Without a python that has torch it prints the stated figures, with
// pytorchSource saying so, and the reason.
//
// Env: BENCH_PYTHON (python to use; default /tmp/torchenv/bin/python, then python3),
// BENCH_PYTORCH_ATTENTION=sdpa|matmul, BENCH_PYTORCH_ROUNDS (9), BENCH_PYTORCH_REPS (reps per side
// per round; default ~60 ms worth), BENCH_WARMUP (2; +5 untimed reps), BENCH_SHAPES=0,1,2.
// `npm run bench:pytorch:check` checks that the reference computes the same function.
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { setLpkaEngine } from '../coordinator/adapter/lpka.js';
import { AdapterWithOptimizer } from '../coordinator/adapter/update.js';
import { initBackend } from '../shared/tf/backend.js';
import { compareWithPytorch, interleaveOptionsFromEnv, pytorchRowFields } from './pytorch-interleaved.js';
import { startPytorchReference } from './pytorch-reference.js';
import { benchInputs, PYTORCH_R8_MS, SHAPES } from './shapes.js';

const RANK = 8;
const SHAPE_IDS = (process.env.BENCH_SHAPES?.split(',').map((x) => x.trim()).filter(Boolean) ?? ['0', '1', '2']).map(Number);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2) + 5;

async function main(): Promise<void> {
  const opts = interleaveOptionsFromEnv(WARMUP);
  const started = await startPytorchReference();
  const ref = started.ok ? started.ref : null;
  if (!started.ok) process.stderr.write(`bench:pytorch: live reference skipped: ${started.reason}\n`);
  await initBackend(undefined, () => {});
  // time the kernels ('auto' picks them at these sizes anyway)
  setLpkaEngine('kernels');
  const results: Record<string, unknown>[] = [];
  try {
    for (const shapeId of SHAPE_IDS) {
      const { target, source } = SHAPES[shapeId];
      const label = `${target.join('x')}/${source.join('x')} r${RANK}`;
      if (ref === null) {
        results.push({ target, source, rank: RANK, ...pytorchRowFields(null, PYTORCH_R8_MS[shapeId]) });
        process.stderr.write(`bench:pytorch ${label}: PyTorch ${PYTORCH_R8_MS[shapeId]} ms (stated, not measured here)\n`);
        continue;
      }
      const inputs = benchInputs(SHAPES[shapeId], RANK);
      // initScale 1: non-zero output projections, as in a trained adapter (as `npm run bench`)
      const pair = AdapterWithOptimizer.create(defaultAdapterConfig(RANK, { seed: 1, initScale: 1 }));
      try {
        const live = await compareWithPytorch(ref, pair, inputs.arrays, opts);
        results.push({ target, source, rank: RANK, ...pytorchRowFields(live, undefined) });
        process.stderr.write(
          `bench:pytorch ${label}: TS ${live.plain.medianMs} ms (min ${live.plain.minMs}), PyTorch ${live.pytorch.medianMs} ms (min ${live.pytorch.minMs}), ` +
            `ratio of medians ${live.ratioOfMedians}, per round ${live.pairedRatio.median} [${live.pairedRatio.min}, ${live.pairedRatio.max}] ` +
            `(${live.rounds} rounds × ${live.repsPerRound})\n`,
        );
      } finally {
        pair.dispose();
        inputs.dispose();
      }
    }
  } finally {
    await ref?.close();
  }
  const reference = started.ok
    ? { python: started.ref.python, torch: started.ref.torchVersion, threads: started.ref.threads, attention: started.ref.attention }
    : { skipped: started.reason };
  process.stdout.write(JSON.stringify({ date: new Date().toISOString(), node: process.version, pytorchReference: reference, results }, null, 2) + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench:pytorch: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
