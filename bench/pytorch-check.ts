// `npm run bench:pytorch:check`: does the PyTorch reference (bench/reference/lpka_torch.py) compute
// the same function as the TypeScript adapter? Same weights, same inputs, compared:
//   forward   A′, B′ against forwardFactors                 max |Δ| / max |TS|, must be ≤ 1e-4
//   gradients of ⟨A′,gA⟩ + ⟨B′,gB⟩ against vjpFactors        per tensor max |Δ| / max |TS|, ≤ 1e-3
//             (the key biases, whose gradient is zero but for rounding: max |g| / largest |g|, ≤ 1e-3)
//   optimiser two clip + AdamW steps from the same gradients, clip engaged (clipNorm = ½‖g‖):
//             parameters after them                          max |Δ| / lr, ≤ 1e-2
// on the three bench shapes at r 8 and one odd configuration (3 layers, 2 heads of width 6, which
// takes the scalar attention path). Prints JSON; exits 1 if a bound is broken. Not part of the
// vitest suite: CI has no torch. Without one (see bench/pytorch-reference.ts) it prints why and
// exits 0.
import { AdamW } from '../coordinator/adapter/adamw.js';
import { type AdapterConfig, defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { LpkaAdapter, setLpkaEngine } from '../coordinator/adapter/lpka.js';
import { initBackend } from '../shared/tf/backend.js';
import { type PytorchReference, startPytorchReference } from './pytorch-reference.js';
import { benchInputs, SHAPES } from './shapes.js';

const BOUNDS = { forward: 1e-4, gradients: 1e-3, optimizerSteps: 1e-2 };

/** max |a − b| / max |b|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`);
  let d = 0;
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    s = Math.max(s, Math.abs(b[i]));
  }
  return s === 0 ? d : d / s;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/** The worst tensor of a by-name comparison. */
function worst(names: Iterable<string>, err: (name: string) => number): { max: number; tensor: string } {
  let out = { max: 0, tensor: '' };
  for (const name of names) {
    const e = err(name);
    if (!(e <= out.max)) out = { max: e, tensor: name }; // NaN counts as worst
  }
  return out;
}

/**
 * The key biases bk get no gradient in exact arithmetic: adding a vector to every key adds the same
 * score to all keys of a query, which the softmax cancels. Both sides' bk gradients are rounding
 * noise, so they are not compared relative to themselves; the check reports their size relative
 * to the largest gradient of any parameter (keyBiasGradNoise) instead.
 */
function isKeyBias(name: string): boolean {
  return name.endsWith('/bk');
}

function maxAbs(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s = Math.max(s, Math.abs(a[i]));
  return s;
}

const sci = (x: number): number => +x.toPrecision(3);

async function checkOne(ref: PytorchReference, label: string, cfg: AdapterConfig, dims: [number, number, number, number]) {
  const [m, n, ms, ns] = dims;
  const inputs = benchInputs({ target: [m, n], source: [ms, ns] }, cfg.rank);
  try {
    const { t, s, gA, gB } = inputs.arrays;
    const adapter = new LpkaAdapter(cfg);
    const out = adapter.forwardFactors(t, s);
    // copies: vjpFactors returns views that the next VJP overwrites
    const grads = new Map([...adapter.vjpFactors(t, s, gA, gB)].map(([k, g]) => [k, Float64Array.from(g)]));
    let sumSq = 0;
    for (const g of grads.values()) for (const x of g) sumSq += x * x;
    // a clip that binds, so the check covers it
    const optimizer = { ...cfg, clipNorm: Math.sqrt(sumSq) / 2 };

    await ref.load({ adapter, optimizer, target: t, source: s, gA, gB });
    const pyOut = await ref.forward();
    const pyGrads = await ref.vjp();
    const forward = Math.max(relErr(pyOut.A, out.A), relErr(pyOut.B, out.B));
    const gradients = worst([...grads.keys()].filter((k) => !isKeyBias(k)), (k) => relErr(pyGrads.get(k)!, grads.get(k)!));
    let gMax = 0;
    for (const g of grads.values()) for (const x of g) gMax = Math.max(gMax, Math.abs(x));
    const keyBiasNoise = worst([...grads.keys()].filter(isKeyBias), (k) => Math.max(maxAbs(grads.get(k)!), maxAbs(pyGrads.get(k)!)) / gMax);

    const opt = new AdamW(adapter.namedParams(), optimizer);
    opt.step(grads);
    const { clipped } = opt.step(grads);
    await ref.step(grads);
    const pyParams = await ref.step(grads);
    const steps = worst(adapter.params.keys(), (k) => maxAbsDiff(pyParams.get(k)!, adapter.params.get(k)!) / cfg.lr);
    adapter.dispose();
    opt.dispose();

    const result = {
      label, target: [m, n], source: [ms, ns], rank: cfg.rank, layers: cfg.layers, heads: cfg.heads, attnDim: cfg.attnDim, ffnDim: cfg.ffnDim,
      forwardRelErr: sci(forward),
      gradRelErr: sci(gradients.max), gradWorstTensor: gradients.tensor,
      keyBiasGradNoise: sci(keyBiasNoise.max),
      optimizerStepsErrInLr: sci(steps.max), optimizerWorstTensor: steps.tensor, clipped,
    };
    const ok = forward <= BOUNDS.forward && gradients.max <= BOUNDS.gradients && keyBiasNoise.max <= BOUNDS.gradients && steps.max <= BOUNDS.optimizerSteps;
    process.stderr.write(
      `check ${label}: forward ${result.forwardRelErr}, gradients ${result.gradRelErr} (${gradients.tensor}; bk noise ${result.keyBiasGradNoise}), two AdamW steps ${result.optimizerStepsErrInLr}·lr — ${ok ? 'ok' : 'FAILED'}\n`,
    );
    return { ...result, ok };
  } finally {
    inputs.dispose();
  }
}

async function main(): Promise<void> {
  await initBackend(undefined, () => {});
  // the kernels, as the benches time them ('auto' picks them at these sizes anyway)
  setLpkaEngine('kernels');
  const started = await startPytorchReference();
  if (!started.ok) {
    process.stdout.write(JSON.stringify({ skipped: started.reason }, null, 2) + '\n');
    process.stderr.write(`check skipped: ${started.reason}\n`);
    return;
  }
  const ref = started.ref;
  try {
    const cases: { label: string; cfg: AdapterConfig; dims: [number, number, number, number] }[] = [
      ...SHAPES.map(({ target, source }) => ({
        label: `${target.join('x')}/${source.join('x')} r8`,
        cfg: defaultAdapterConfig(8, { seed: 1, initScale: 1 }),
        dims: [...target, ...source] as [number, number, number, number],
      })),
      { label: 'odd config', cfg: defaultAdapterConfig(5, { seed: 7, initScale: 1, layers: 3, heads: 2, attnDim: 12, ffnDim: 7 }), dims: [37, 11, 23, 9] },
    ];
    const results = [];
    for (const c of cases) results.push(await checkOne(ref, c.label, c.cfg, c.dims));
    const ok = results.every((r) => r.ok);
    process.stdout.write(
      JSON.stringify({ date: new Date().toISOString(), python: ref.python, torch: ref.torchVersion, attention: ref.attention, bounds: BOUNDS, ok, results }, null, 2) + '\n',
    );
    if (!ok) process.exitCode = 1;
  } finally {
    await ref.close();
  }
}

main().catch((err) => {
  process.stderr.write(`bench:pytorch:check: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
