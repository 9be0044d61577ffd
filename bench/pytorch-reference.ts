// The client of the PyTorch reference: bench/reference/lpka_torch.py in a child process, one JSON
// request a line on its stdin, one JSON reply a line on its stdout. PyTorch is not a dependency of
// the project (CI has none), so starting it may fail; startPytorchReference then says why, and the
// benches fall back to the stated figures.
//
// Which python: env BENCH_PYTHON if set (only that one), else /tmp/torchenv/bin/python, then
// python3. A candidate counts only if the script starts, which imports torch.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { AdamWConfig } from '../coordinator/adapter/adamw.js';
import type { Factors, LpkaAdapter } from '../coordinator/adapter/lpka.js';
import { type BundleTensor, writeBundle } from './pytorch-bundle.js';

const SCRIPT = fileURLToPath(new URL('./reference/lpka_torch.py', import.meta.url));
const DEFAULT_PYTHONS = ['/tmp/torchenv/bin/python', 'python3'];
/** Importing torch takes seconds, more on a loaded machine. */
const START_TIMEOUT_MS = 120_000;
const STDERR_TAIL = 2000;

/**
 * How the reference computes attention: 'sdpa' (F.scaled_dot_product_attention, PyTorch's fused
 * CPU kernel) or 'matmul' (softmax(Q·Kᵀ)·V in three ops). Env BENCH_PYTORCH_ATTENTION; 'sdpa' by
 * default, as it was the faster here at every bench shape (1.3–1.4× at the two larger), so the bar
 * is PyTorch at its best. Both pass bench:pytorch:check.
 */
export type PytorchAttention = 'sdpa' | 'matmul';

export function pytorchAttentionFromEnv(v = process.env.BENCH_PYTORCH_ATTENTION): PytorchAttention {
  if (v === undefined || v === '' || v === 'sdpa') return 'sdpa';
  if (v === 'matmul') return v;
  throw new Error(`BENCH_PYTORCH_ATTENTION must be sdpa or matmul, got ${JSON.stringify(v)}`);
}

/** What the reference runs on: the adapter's weights and config, one pair's inputs, the optimiser's hyper-parameters. */
export interface PytorchLoad {
  adapter: LpkaAdapter;
  optimizer: AdamWConfig;
  target: Factors;
  source: Factors;
  /** upstream gradients of A′ [m, r] and B′ [r, n] */
  gA: Float32Array;
  gB: Float32Array;
}

export type PytorchStart = { ok: true; ref: PytorchReference } | { ok: false; reason: string };

/** The pythons to try, in order. */
export function pythonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  return env.BENCH_PYTHON ? [env.BENCH_PYTHON] : DEFAULT_PYTHONS;
}

/** Start the reference on the first candidate that has torch, or say why none did. */
export async function startPytorchReference(candidates = pythonCandidates(), attention = pytorchAttentionFromEnv()): Promise<PytorchStart> {
  const reasons: string[] = [];
  for (const python of candidates) {
    const started = await PytorchReference.start(python, attention);
    if (typeof started !== 'string') return { ok: true, ref: started };
    reasons.push(`${python}: ${started}`);
  }
  return { ok: false, reason: `no python with torch found (${reasons.join('; ')}); set BENCH_PYTHON` };
}

type Reply = Record<string, unknown> & { ok: boolean; error?: string };

export class PytorchReference {
  private readonly lines: string[] = [];
  private waiter: ((line: string | null) => void) | null = null;
  private exited = false;
  private stderr = '';
  private shapes = new Map<string, number[]>();
  torchVersion = '';
  threads = 0;

  private constructor(
    readonly python: string,
    readonly attention: PytorchAttention,
    private readonly child: ChildProcessWithoutNullStreams,
    /** where the bundles for this child are written; removed by close() */
    private readonly dir: string,
  ) {
    createInterface({ input: child.stdout }).on('line', (line) => this.push(line));
    // a write to a child that has died fails here; the exit itself is reported by request()
    child.stdin.on('error', () => {});
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      this.stderr = (this.stderr + s).slice(-STDERR_TAIL);
    });
    const end = (): void => {
      this.exited = true;
      this.push(null);
    };
    child.on('error', (err) => {
      this.stderr += (err as Error).message;
      end();
    });
    child.on('close', end);
  }

  /** A started reference, or why `python` could not start it. */
  static async start(python: string, attention: PytorchAttention): Promise<PytorchReference | string> {
    // One thread, as the stated figures were measured; the env keeps OpenMP/MKL from spawning pools.
    const env = { ...process.env, OMP_NUM_THREADS: '1', MKL_NUM_THREADS: '1', PYTHONUNBUFFERED: '1' };
    const child = spawn(python, [SCRIPT], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const ref = new PytorchReference(python, attention, child, mkdtempSync(join(tmpdir(), 'lpka-torch-')));
    const timer = setTimeout(() => child.kill(), START_TIMEOUT_MS);
    const line = await ref.nextLine();
    clearTimeout(timer);
    try {
      const hello = line === null ? null : (JSON.parse(line) as { ready?: boolean; torch?: string; threads?: number });
      if (hello?.ready === true) {
        ref.torchVersion = String(hello.torch);
        ref.threads = Number(hello.threads);
        return ref;
      }
    } catch {
      // not JSON: reported below
    }
    await ref.close();
    const why = ref.stderr.trim().split('\n').pop() || (line === null ? 'exited before it was ready' : `unexpected first line ${JSON.stringify(line.slice(0, 200))}`);
    return why;
  }

  private push(line: string | null): void {
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      w(line);
    } else if (line !== null) this.lines.push(line);
  }

  private nextLine(): Promise<string | null> {
    if (this.lines.length > 0) return Promise.resolve(this.lines.shift()!);
    if (this.exited) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /** One request and its reply; a failed request throws with the reference's message. */
  private async request(req: Record<string, unknown>): Promise<Reply> {
    if (this.exited) throw new Error(`PyTorch reference has exited: ${this.stderr.trim()}`);
    this.child.stdin.write(JSON.stringify(req) + '\n');
    const line = await this.nextLine();
    if (line === null) throw new Error(`PyTorch reference exited during ${String(req.cmd)}: ${this.stderr.trim()}`);
    const reply = JSON.parse(line) as Reply;
    if (!reply.ok) throw new Error(`PyTorch reference, ${String(req.cmd)}: ${reply.error}`);
    return reply;
  }

  /** Copy the adapter's current weights, the inputs and the optimiser config into the reference (fresh moments). */
  async load(spec: PytorchLoad): Promise<void> {
    const { adapter, target: t, source: s } = spec;
    const r = adapter.config.rank;
    const weights = adapter.exportWeights();
    this.shapes = new Map([...weights.keys()].map((name) => [name, adapter.paramShape(name)!]));
    const tensors: BundleTensor[] = [
      ...[...weights].map(([name, values]) => ({ name, shape: this.shapes.get(name)!, values })),
      { name: 'targetA', shape: [t.m, r], values: t.A },
      { name: 'targetB', shape: [r, t.n], values: t.B },
      { name: 'sourceA', shape: [s.m, r], values: s.A },
      { name: 'sourceB', shape: [r, s.n], values: s.B },
      { name: 'gA', shape: [t.m, r], values: spec.gA },
      { name: 'gB', shape: [r, t.n], values: spec.gB },
    ];
    const { layers, heads, attnDim, ffnDim } = adapter.config;
    const { lr, beta1, beta2, eps, weightDecay, clipNorm } = spec.optimizer;
    const path = writeBundle(this.dir, 'load', tensors, {
      config: { rank: r, layers, heads, attnDim, ffnDim },
      optimizer: { lr, beta1, beta2, eps, weightDecay, clipNorm },
      params: [...weights.keys()],
      attention: this.attention,
    });
    await this.request({ cmd: 'load', path });
  }

  /** A′ [m, r] and B′ [r, n], row-major, at the loaded weights and inputs. */
  async forward(): Promise<{ A: Float32Array; B: Float32Array }> {
    const reply = await this.request({ cmd: 'forward' });
    return { A: Float32Array.from(reply.A as number[]), B: Float32Array.from(reply.B as number[]) };
  }

  /** Gradients of ⟨A′, gA⟩ + ⟨B′, gB⟩ by parameter name (PyTorch autograd). */
  async vjp(): Promise<Map<string, Float32Array>> {
    return toMap((await this.request({ cmd: 'vjp' })).grads);
  }

  /** One clip + AdamW step with the given gradients; the parameters after it. */
  async step(grads: ReadonlyMap<string, Float32Array | Float64Array>): Promise<Map<string, Float32Array>> {
    const tensors = [...grads].map(([name, values]) => ({ name, shape: this.shapes.get(name)!, values }));
    const path = writeBundle(this.dir, 'grads', tensors);
    return toMap((await this.request({ cmd: 'step', path })).params);
  }

  /** `reps` forward+update reps (forward, backward, clip, AdamW step), ms each by perf_counter. */
  async time(reps: number): Promise<number[]> {
    return (await this.request({ cmd: 'time', reps })).ms as number[];
  }

  async close(): Promise<void> {
    if (!this.exited) {
      const exited = new Promise<void>((resolve) => this.child.once('close', () => resolve()));
      this.child.stdin.end(JSON.stringify({ cmd: 'quit' }) + '\n');
      const timer = setTimeout(() => this.child.kill(), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function toMap(obj: unknown): Map<string, Float32Array> {
  return new Map(Object.entries(obj as Record<string, number[]>).map(([k, v]) => [k, Float32Array.from(v)]));
}
