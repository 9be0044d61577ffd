// `npm run bench`: adapter forward+update time and slice time for representative slot shapes, on
// every backend that loads here, as JSON on stdout (medians over repeated runs).
import * as tf from '@tensorflow/tfjs';
import { availableBackends, initBackend } from '../shared/tf/backend.js';
import { AdapterWithOptimizer } from '../coordinator/adapter/update.js';
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { lowRankSlice } from '../shared/math/slice.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';

const SHAPES: { target: [number, number]; source: [number, number] }[] = [
  { target: [64, 10], source: [128, 10] },
  { target: [784, 128], source: [800, 128] },
  { target: [960, 160], source: [2048, 100] },
];
const RANKS = [8, 32];
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2);
const REPEATS = Number(process.env.BENCH_REPEATS ?? 7);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Time fn over WARMUP+REPEATS calls; fn must force its result (dataSync) so async backends finish. */
function timeIt(fn: () => void): { medianMs: number; minMs: number; runs: number } {
  for (let i = 0; i < WARMUP; i++) fn();
  const ts: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return { medianMs: +median(ts).toFixed(3), minMs: +Math.min(...ts).toFixed(3), runs: REPEATS };
}

/** A matrix with a decaying spectrum, like a trained weight. */
function decayingMatrix(m: number, n: number, seed: number): tf.Tensor2D {
  return tf.tidy(() => {
    const k = Math.min(m, n);
    const U = tf.linalg.qr(tf.randomNormal([m, k], 0, 1, 'float32', seed))[0];
    const V = tf.linalg.qr(tf.randomNormal([n, k], 0, 1, 'float32', seed + 1))[0];
    const s = tf.pow(tf.scalar(0.9), tf.range(0, k));
    return tf.matMul(tf.mul(U, s), V, false, true) as tf.Tensor2D;
  });
}

async function main(): Promise<void> {
  // BENCH_BACKENDS=wasm,cpu limits the run (the cpu backend takes minutes on the large shapes)
  const only = process.env.BENCH_BACKENDS?.split(',').map((b) => b.trim()).filter(Boolean);
  const backends = (await availableBackends()).filter((b) => !only || only.includes(b));
  const results: unknown[] = [];
  for (const backend of backends) {
    await initBackend(backend, () => {});
    for (const { target, source } of SHAPES) {
      for (const requested of RANKS) {
        const rank = Math.min(requested, ...target, ...source);
        const Wt = decayingMatrix(target[0], target[1], 1);
        const Ws = decayingMatrix(source[0], source[1], 2);
        const sliceTarget = timeIt(() => {
          const f = lowRankSlice(Wt, rank);
          f.B.dataSync();
          disposeLowRank(f);
        });
        const sliceSource = timeIt(() => {
          const f = lowRankSlice(Ws, rank);
          f.B.dataSync();
          disposeLowRank(f);
        });
        const t = lowRankSlice(Wt, rank);
        const s = lowRankSlice(Ws, rank);
        const pair = AdapterWithOptimizer.create(defaultAdapterConfig(rank, { seed: 1 }));
        const gA = tf.randomNormal(t.A.shape, 0, 1e-2, 'float32', 3) as tf.Tensor2D;
        const gB = tf.randomNormal(t.B.shape, 0, 1e-2, 'float32', 4) as tf.Tensor2D;
        const forward = timeIt(() => {
          const out: LowRank = pair.forward(t, s);
          out.B.dataSync();
          disposeLowRank(out);
        });
        const forwardUpdate = timeIt(() => {
          const out: LowRank = pair.forward(t, s);
          out.B.dataSync();
          disposeLowRank(out);
          pair.update({ target: t, source: s }, { gA, gB });
        });
        results.push({
          backend, target, source, rankRequested: requested, rank,
          adapterParams: pair.adapter.numParams(),
          forwardMs: forward.medianMs,
          forwardUpdateMs: forwardUpdate.medianMs,
          sliceTargetMs: sliceTarget.medianMs,
          sliceSourceMs: sliceSource.medianMs,
          repeats: REPEATS,
        });
        process.stderr.write(`bench ${backend} ${target.join('x')}/${source.join('x')} r=${rank}: forward+update ${forwardUpdate.medianMs} ms, slices ${sliceTarget.medianMs}/${sliceSource.medianMs} ms\n`);
        pair.dispose();
        tf.dispose([Wt, Ws, gA, gB]);
        disposeLowRank(t);
        disposeLowRank(s);
      }
    }
  }
  process.stdout.write(JSON.stringify({ date: new Date().toISOString(), node: process.version, warmup: WARMUP, repeats: REPEATS, results }, null, 2) + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
