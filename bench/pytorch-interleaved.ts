// The TypeScript adapter's forward+update and the PyTorch reference's, timed in alternating rounds
// in the same run: k reps of one, then k of the other, and so on. On this VM absolute times swing
// by up to 2× from run to run (and within one); both sides of a round see the same load, so the
// ratio is steadier than either time, and the per-round ratio steadier still.
import { type AdapterWithOptimizer, adapterUpdateFactors } from '../coordinator/adapter/update.js';
import type { PytorchReference } from './pytorch-reference.js';
import { type PlainInputs, PYTORCH_LIVE, PYTORCH_STATED } from './shapes.js';
import { median, type Timing, timingOf } from './stats.js';

export interface InterleaveOptions {
  /** Rounds (each: k TS reps, then k PyTorch reps). */
  rounds: number;
  /** Reps per side per round; default: as many as fill ROUND_MS on the slower side (1–50). */
  reps?: number;
  /** Untimed reps of each side first (JIT; torch's allocator and kernel choice). */
  warmup: number;
}

export interface Interleaved {
  rounds: number;
  repsPerRound: number;
  /** over every rep of every round */
  plain: Timing;
  pytorch: Timing;
  /** plain median / PyTorch median (> 1: the TypeScript adapter is slower) */
  ratioOfMedians: number;
  /** per round, median of its plain reps / median of its PyTorch reps */
  pairedRatio: { median: number; min: number; max: number };
}

/** How long one side of a round should last when the reps are not given (the load changes slower than that). */
const ROUND_MS = 60;

/**
 * Interleave `plainStep` (one forward+update of the TypeScript adapter, synchronous) with the
 * reference's forward+update on what was last loaded into it.
 */
export async function interleaveWithPytorch(plainStep: () => void, ref: PytorchReference, opts: InterleaveOptions): Promise<Interleaved> {
  for (let i = 0; i < opts.warmup; i++) plainStep();
  await ref.time(opts.warmup);
  // one more rep of each, warm, to size the rounds
  const t0 = performance.now();
  plainStep();
  const slower = Math.max(performance.now() - t0, (await ref.time(1))[0]);
  const k = opts.reps ?? Math.min(50, Math.max(1, Math.round(ROUND_MS / slower)));

  const plain: number[] = [];
  const torch: number[] = [];
  const ratios: number[] = [];
  for (let round = 0; round < opts.rounds; round++) {
    const p: number[] = [];
    for (let i = 0; i < k; i++) {
      const s = performance.now();
      plainStep();
      p.push(performance.now() - s);
    }
    const q = await ref.time(k);
    plain.push(...p);
    torch.push(...q);
    ratios.push(median(p) / median(q));
  }
  const a = timingOf(plain);
  const b = timingOf(torch);
  const r3 = (x: number): number => +x.toFixed(3);
  return {
    rounds: opts.rounds,
    repsPerRound: k,
    plain: a,
    pytorch: b,
    ratioOfMedians: r3(median(plain) / median(torch)),
    pairedRatio: { median: r3(median(ratios)), min: r3(Math.min(...ratios)), max: r3(Math.max(...ratios)) },
  };
}

/** Rounds and reps from env BENCH_PYTORCH_ROUNDS (default 9) and BENCH_PYTORCH_REPS (default: ROUND_MS's worth). */
export function interleaveOptionsFromEnv(warmup: number, env: NodeJS.ProcessEnv = process.env): InterleaveOptions {
  const int = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  return { rounds: int('BENCH_PYTORCH_ROUNDS', env.BENCH_PYTORCH_ROUNDS) ?? 9, reps: int('BENCH_PYTORCH_REPS', env.BENCH_PYTORCH_REPS), warmup };
}

/**
 * Load the pair's current weights and `inputs` into the reference, then interleave the pair's
 * plain-array forward+update (what an adapter worker runs: adapterUpdateFactors, whose VJP runs
 * its own forward) with the reference's. Both sides keep stepping their own copy of the weights;
 * at lr 1e-4 that changes no shape and no cost.
 */
export async function compareWithPytorch(ref: PytorchReference, pair: AdapterWithOptimizer, inputs: PlainInputs, opts: InterleaveOptions): Promise<Interleaved> {
  const { t, s, gA, gB } = inputs;
  await ref.load({ adapter: pair.adapter, optimizer: pair.opt.config, target: t, source: s, gA, gB });
  return interleaveWithPytorch(() => void adapterUpdateFactors(pair.adapter, pair.opt, t, s, gA, gB), ref, opts);
}

/**
 * A bench row's PyTorch fields: from the live comparison when there is one, else the stated figure
 * (issue 9's, r 8 only), else none.
 */
export function pytorchRowFields(live: Interleaved | null, statedMs: number | undefined): Record<string, unknown> {
  if (live !== null) {
    return {
      pytorchForwardUpdateMs: live.pytorch.medianMs,
      pytorchForwardUpdateMinMs: live.pytorch.minMs,
      pytorchSource: PYTORCH_LIVE,
      plainInterleavedForwardUpdateMs: live.plain.medianMs,
      plainInterleavedForwardUpdateMinMs: live.plain.minMs,
      plainVsPytorchRatio: live.ratioOfMedians,
      plainVsPytorchPairedRatio: live.pairedRatio,
      pytorchRounds: live.rounds,
      pytorchRepsPerRound: live.repsPerRound,
    };
  }
  return statedMs === undefined ? {} : { pytorchForwardUpdateMs: statedMs, pytorchSource: PYTORCH_STATED };
}
