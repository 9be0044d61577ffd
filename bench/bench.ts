// `npm run bench`: adapter forward and forward+update times for representative slot shapes, the
// slice times, and the device's per-cycle overhead, as JSON on stdout. "forwardUpdate" is what
// PyTorch's figure means: one forward with tape, backward and AdamW step. "cycle" is the
// coordinator's per-cycle adapter cost: the transfer's forward, then the update (which reuses the
// forward's tape when it fits KEEP_TAPE_BYTES, else recomputes it). "tfjsEngineForwardUpdate" is
// the same forward+update on the tfjs engine, interleaved, to place TFJS_ABOVE. "plain…" times the
// same two on plain arrays, alone and with more repeats: what an adapter worker runs, and the
// figure to set beside PyTorch's (its tensors are native arrays too).
//
// The adapter is timed twice in the same process, interleaved repeat by repeat: the Float32Array /
// wasm-SIMD kernels that run in the coordinator, and the tfjs implementation they replaced
// (coordinator/adapter/lpka-tfjs.ts, updated through the same AdamW as before). On
// machines whose cores are shared, absolute times swing with the load, but the two columns
// see the same load, so their ratio holds. Medians and minima are both reported.
//
// PyTorch: the bar for "plain" is the same LPKA in PyTorch on one thread (bench/reference/
// lpka_torch.py), run live in a child process and interleaved round by round with the plain-array
// forward+update (bench/pytorch-interleaved.ts), so both see the same load. Its median and min and
// the plain side's from the same rounds are in each row (pytorchSource 'live, interleaved'). With no
// python that has torch (CI has none), rows at r 8 carry issue 9's stated figures instead
// (pytorchSource 'stated (issue 9, one thread)') and pytorchReference.skipped says why.
// `npm run bench:pytorch` runs only this comparison; `npm run bench:pytorch:check` checks that
// the reference computes the same function as the kernels.
//
// Env: BENCH_REPEATS, BENCH_WARMUP, BENCH_BACKENDS=wasm,cpu, BENCH_SHAPES=0,1 (indices into
// SHAPES), BENCH_RANKS=8, BENCH_REFERENCE=0 (skip the tfjs reference), BENCH_DEVICE=0 (skip the
// device overhead). PyTorch: BENCH_PYTORCH=0 (stated figures, no live run), BENCH_PYTHON (the
// python with torch; default /tmp/torchenv/bin/python, then python3), BENCH_PYTORCH_ROUNDS (9),
// BENCH_PYTORCH_REPS (reps per side per round; default ~60 ms worth), BENCH_PYTORCH_ATTENTION=
// sdpa|matmul (the reference's attention; default sdpa). BENCH_ADAPTER=0 skips the adapter and
// slice timings (the device overhead only).
import * as tf from '@tensorflow/tfjs';
import { availableBackends, initBackend } from '../shared/tf/backend.js';
import { AdamW } from '../coordinator/adapter/adamw.js';
import { AdapterWithOptimizer, adapterUpdateFactors } from '../coordinator/adapter/update.js';
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { lpkaEngineFor, setLpkaEngine } from '../coordinator/adapter/lpka.js';
import { TfjsReferenceLpka } from '../coordinator/adapter/lpka-tfjs.js';
import { lowRankSlice } from '../shared/math/slice.js';
import { disposeLowRank, type LowRank } from '../shared/math/low-rank.js';
import { measureDeviceOverhead } from './device-overhead.js';
import { compareWithPytorch, type Interleaved, interleaveOptionsFromEnv, pytorchRowFields } from './pytorch-interleaved.js';
import { type PytorchStart, startPytorchReference } from './pytorch-reference.js';
import { benchInputs, PYTORCH_R8_MS, SHAPES } from './shapes.js';
import { median } from './stats.js';

const list = (v: string | undefined) => v?.split(',').map((x) => x.trim()).filter(Boolean);
const RANKS = (list(process.env.BENCH_RANKS) ?? ['8', '32']).map(Number);
const SHAPE_IDS = (list(process.env.BENCH_SHAPES) ?? ['0', '1', '2']).map(Number);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2);
const REPEATS = Number(process.env.BENCH_REPEATS ?? 7);
const WITH_REFERENCE = process.env.BENCH_REFERENCE !== '0';
const WITH_DEVICE = process.env.BENCH_DEVICE !== '0';
const WITH_PYTORCH = process.env.BENCH_PYTORCH !== '0';
const WITH_ADAPTER = process.env.BENCH_ADAPTER !== '0';

interface Timing {
  medianMs: number;
  minMs: number;
}

/** Run every named fn WARMUP times, then REPEATS rounds of one call each, interleaved. */
function timeInterleaved(fns: Record<string, () => void>): Record<string, Timing> {
  const names = Object.keys(fns);
  for (let i = 0; i < WARMUP; i++) for (const n of names) fns[n]();
  const ts: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let i = 0; i < REPEATS; i++) {
    for (const n of names) {
      const t0 = performance.now();
      fns[n]();
      ts[n].push(performance.now() - t0);
    }
  }
  return Object.fromEntries(names.map((n) => [n, { medianMs: +median(ts[n]).toFixed(3), minMs: +Math.min(...ts[n]).toFixed(3) }]));
}

/** WARMUP + 5 untimed calls (the JIT settles), then `repeats` timed ones. */
function timeSeries(fn: () => void, repeats: number): Timing {
  for (let i = 0; i < WARMUP + 5; i++) fn();
  const ts: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return { medianMs: +median(ts).toFixed(3), minMs: +Math.min(...ts).toFixed(3) };
}

async function main(): Promise<void> {
  const only = list(process.env.BENCH_BACKENDS);
  const backends = (await availableBackends()).filter((b) => !only || only.includes(b));
  const results: unknown[] = [];
  let deviceOverhead: unknown;
  const pytorch: PytorchStart = WITH_PYTORCH && WITH_ADAPTER ? await startPytorchReference() : { ok: false, reason: WITH_ADAPTER ? 'BENCH_PYTORCH=0' : 'BENCH_ADAPTER=0' };
  const torchRef = pytorch.ok ? pytorch.ref : null;
  process.stderr.write(pytorch.ok
    ? `bench: PyTorch reference live: ${pytorch.ref.python}, torch ${pytorch.ref.torchVersion}, ${pytorch.ref.threads} thread, attention ${pytorch.ref.attention}\n`
    : `bench: PyTorch reference skipped (${pytorch.reason}); rows at r 8 carry the stated figures\n`);
  try {
    // Time the kernels themselves; the row says which engine 'auto' would pick for the shape.
    setLpkaEngine('kernels');
    for (const backend of backends) {
      await initBackend(backend, () => {});
      for (const shapeId of WITH_ADAPTER ? SHAPE_IDS : []) {
        const { target, source } = SHAPES[shapeId];
        for (const requested of RANKS) {
          const rank = Math.min(requested, ...target, ...source);
          const inputs = benchInputs(SHAPES[shapeId], rank);
          const { Wt, Ws, t, s, gA, gB, arrays } = inputs;
          const slices = timeInterleaved({
            target: () => {
              const f = lowRankSlice(Wt, rank);
              f.B.dataSync();
              disposeLowRank(f);
            },
            source: () => {
              const f = lowRankSlice(Ws, rank);
              f.B.dataSync();
              disposeLowRank(f);
            },
          });
          // initScale 1: non-zero output projections, as in a trained adapter
          const cfg = defaultAdapterConfig(rank, { seed: 1, initScale: 1 });
          const pair = AdapterWithOptimizer.create(cfg);
          const ref = WITH_REFERENCE ? new TfjsReferenceLpka(cfg, pair.adapter.exportWeights(), (n) => pair.adapter.paramShape(n)!) : undefined;
          const refOpt = ref ? new AdamW([...ref.params].map(([name, variable]) => ({ name, variable })), cfg) : undefined;
          const fns: Record<string, () => void> = {
            // a forward that keeps no tape (so the update after it recomputes its own)
            forward: () => {
              const out: LowRank = pair.adapter.forward(t, s);
              out.B.dataSync();
              disposeLowRank(out);
            },
            // PyTorch's "forward+update": one forward with tape, backward, AdamW step (the update's
            // VJP runs the forward itself)
            forwardUpdate: () => {
              pair.update({ target: t, source: s }, { gA, gB });
            },
            // the coordinator's cycle: the transfer's forward (keeping its tape where it fits
            // KEEP_TAPE_BYTES), then the update at the same input
            cycle: () => {
              const out: LowRank = pair.forward(t, s);
              out.B.dataSync();
              disposeLowRank(out);
              pair.update({ target: t, source: s }, { gA, gB });
            },
            // the same forward+update on the tfjs engine (what 'auto' picks above TFJS_ABOVE)
            tfjsEngineForwardUpdate: () => {
              setLpkaEngine('tfjs');
              try {
                pair.update({ target: t, source: s }, { gA, gB });
              } finally {
                setLpkaEngine('kernels');
              }
            },
          };
          if (ref && refOpt) {
            fns.referenceForward = () => {
              const out = ref.forward(t, s);
              out.B.dataSync();
              disposeLowRank(out);
            };
            fns.referenceForwardUpdate = () => {
              const out = ref.forward(t, s);
              out.B.dataSync();
              disposeLowRank(out);
              refOpt.step(ref.vjp(t, s, gA, gB));
            };
          }
          const times = timeInterleaved(fns);
          // What an adapter worker runs: plain arrays, no tensors, timed on their own (not between
          // tfjs calls) with enough repeats for a stable median. PyTorch's figure is of this kind.
          const plainRepeats = Math.max(REPEATS, shapeId === 0 ? 200 : 21);
          const plain = {
            forwardUpdate: timeSeries(() => void adapterUpdateFactors(pair.adapter, pair.opt, arrays.t, arrays.s, arrays.gA, arrays.gB), plainRepeats),
            cycle: timeSeries(() => {
              pair.adapter.forwardFactors(arrays.t, arrays.s, undefined, { keepTape: true });
              adapterUpdateFactors(pair.adapter, pair.opt, arrays.t, arrays.s, arrays.gA, arrays.gB);
            }, plainRepeats),
          };
          // the same forward+update against the live PyTorch reference, in alternating rounds
          const live: Interleaved | null = torchRef ? await compareWithPytorch(torchRef, pair, arrays, interleaveOptionsFromEnv(WARMUP + 5)) : null;
          const autoEngine = (setLpkaEngine('auto'), lpkaEngineFor(target[0] + target[1], source[0] + source[1]));
          setLpkaEngine('kernels');
          const row = {
            backend, target, source, rankRequested: requested, rank,
            adapterParams: pair.adapter.numParams(),
            autoEngine,
            forwardMs: times.forward.medianMs,
            forwardUpdateMs: times.forwardUpdate.medianMs,
            forwardUpdateMinMs: times.forwardUpdate.minMs,
            cycleMs: times.cycle.medianMs,
            cycleMinMs: times.cycle.minMs,
            plainForwardUpdateMs: plain.forwardUpdate.medianMs,
            plainForwardUpdateMinMs: plain.forwardUpdate.minMs,
            plainCycleMs: plain.cycle.medianMs,
            plainCycleMinMs: plain.cycle.minMs,
            plainRepeats,
            tfjsEngineForwardUpdateMs: times.tfjsEngineForwardUpdate.medianMs,
            ...(ref ? {
              referenceForwardMs: times.referenceForward.medianMs,
              referenceForwardUpdateMs: times.referenceForwardUpdate.medianMs,
              referenceForwardUpdateMinMs: times.referenceForwardUpdate.minMs,
              speedup: +(times.referenceForwardUpdate.medianMs / times.forwardUpdate.medianMs).toFixed(2),
            } : {}),
            ...pytorchRowFields(live, requested === 8 ? PYTORCH_R8_MS[shapeId] : undefined),
            sliceTargetMs: slices.target.medianMs,
            sliceSourceMs: slices.source.medianMs,
            repeats: REPEATS,
          };
          results.push(row);
          process.stderr.write(
            `bench ${backend} ${target.join('x')}/${source.join('x')} r=${rank}: forward ${times.forward.medianMs} ms, forward+update ${times.forwardUpdate.medianMs} ms (min ${times.forwardUpdate.minMs}), ` +
              `cycle ${times.cycle.medianMs} ms; plain arrays: forward+update ${plain.forwardUpdate.medianMs} ms (min ${plain.forwardUpdate.minMs}), cycle ${plain.cycle.medianMs} ms; tfjs engine forward+update ${times.tfjsEngineForwardUpdate.medianMs} ms` +
              (ref ? `, tfjs reference ${times.referenceForwardUpdate.medianMs} ms (min ${times.referenceForwardUpdate.minMs})` : '') +
              `, slices ${slices.target.medianMs}/${slices.source.medianMs} ms` +
              (live ? `; interleaved with PyTorch: plain ${live.plain.medianMs} ms vs PyTorch ${live.pytorch.medianMs} ms (${live.ratioOfMedians}×, per round ${live.pairedRatio.median}×)` : '') +
              '\n',
          );
          pair.dispose();
          ref?.dispose();
          inputs.dispose();
        }
      }
      if (WITH_DEVICE && deviceOverhead === undefined) {
        deviceOverhead = measureDeviceOverhead({ tCycle: 2, rank: 8, batchSize: 32, warmup: WARMUP, repeats: REPEATS });
        process.stderr.write(`bench ${backend} device overhead: ${JSON.stringify(deviceOverhead)}\n`);
        // one entry per model (the MLP, the CNN), each with the backend it ran on
        deviceOverhead = (deviceOverhead as object[]).map((m) => ({ backend, ...m }));
      }
    }
  } finally {
    await torchRef?.close();
  }
  const pytorchReference = pytorch.ok
    ? { python: pytorch.ref.python, torch: pytorch.ref.torchVersion, threads: pytorch.ref.threads, attention: pytorch.ref.attention }
    : { skipped: pytorch.reason };
  process.stdout.write(JSON.stringify({ date: new Date().toISOString(), node: process.version, warmup: WARMUP, repeats: REPEATS, pytorchReference, results, deviceOverhead }, null, 2) + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
