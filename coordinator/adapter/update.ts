// The adapter update of docs/DESIGN.md §5: the device reports gA = ∂loss/∂A′ and gB = ∂loss/∂B′ for the
// factors the adapter produced; the coordinator pulls them back through the adapter (a
// vector-Jacobian product at the input that produced A′, B′) and takes one AdamW step.
import * as tf from '@tensorflow/tfjs';
import type { LowRank } from '../../shared/math/low-rank.js';
import { AdamW, type StepResult } from './adamw.js';
import { type AdapterConfig, parseAdapterConfig } from './config.js';
import { type Factors, LpkaAdapter } from './lpka.js';

export interface AdapterInput {
  target: LowRank;
  source: LowRank;
}

export interface UpstreamGrads {
  gA: tf.Tensor2D;
  gB: tf.Tensor2D;
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function checkUpstream(input: AdapterInput, upstream: UpstreamGrads): void {
  const wantA = input.target.A.shape;
  const wantB = input.target.B.shape;
  if (!upstream || !upstream.gA || !upstream.gB) throw new Error('adapter update: upstream gradients gA and gB are required');
  // A′ has the target A's shape and B′ the target B's: the adapter maps tokens to tokens.
  if (!sameShape(upstream.gA.shape, wantA)) {
    throw new Error(`adapter update: gA has shape ${shapeStr(upstream.gA.shape)}, but A′ has shape ${shapeStr(wantA)}`);
  }
  if (!sameShape(upstream.gB.shape, wantB)) {
    throw new Error(`adapter update: gB has shape ${shapeStr(upstream.gB.shape)}, but B′ has shape ${shapeStr(wantB)}`);
  }
}

function factorsOf(f: LowRank): Factors {
  if (f.A.shape.length !== 2 || f.B.shape.length !== 2) throw new Error('adapter update: factors must be 2-D');
  return { A: f.A.dataSync() as Float32Array, B: f.B.dataSync() as Float32Array, m: f.A.shape[0], n: f.B.shape[1] };
}

/** Parameter gradients as plain arrays (views into the adapter, valid until its next VJP). */
function vjpArrays(adapter: LpkaAdapter, input: AdapterInput, upstream: UpstreamGrads): Map<string, Float64Array> {
  checkUpstream(input, upstream);
  // dataSync views are only read, before any other tfjs call, so no copy is needed.
  return adapter.vjpFactors(factorsOf(input.target), factorsOf(input.source), upstream.gA.dataSync() as Float32Array, upstream.gB.dataSync() as Float32Array);
}

/**
 * Gradients of ⟨A′, gA⟩ + ⟨B′, gB⟩ with respect to every adapter parameter, where A′, B′ =
 * adapter.forward(input). That is the VJP of the adapter's output with the upstream gradients.
 * The caller owns the returned tensors.
 */
export function adapterVjp(adapter: LpkaAdapter, input: AdapterInput, upstream: UpstreamGrads): Map<string, tf.Tensor> {
  const grads = vjpArrays(adapter, input, upstream);
  const out = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) out.set(name, tf.tensor(Float32Array.from(g), adapter.paramShape(name)!, 'float32'));
  return out;
}

/**
 * One adapter update: VJP at the remembered input, global-norm clip, AdamW step.
 * Inputs and upstream gradients stay owned by the caller; nothing else survives the call.
 */
export function adapterUpdate(adapter: LpkaAdapter, opt: AdamW, input: AdapterInput, upstream: UpstreamGrads): StepResult {
  return opt.step(vjpArrays(adapter, input, upstream));
}

/** The same update on plain arrays (gA [m, r], gB [r, n] row-major): what a worker thread runs. */
export function adapterUpdateFactors(adapter: LpkaAdapter, opt: AdamW, target: Factors, source: Factors, gA: Float32Array, gB: Float32Array): StepResult {
  return opt.step(adapter.vjpFactors(target, source, gA, gB));
}

/** An adapter and its optimiser, created and disposed together: what the coordinator holds per pair. */
export class AdapterWithOptimizer {
  constructor(
    readonly adapter: LpkaAdapter,
    readonly opt: AdamW,
  ) {}

  static create(config: AdapterConfig): AdapterWithOptimizer {
    const cfg = parseAdapterConfig(config);
    const adapter = new LpkaAdapter(cfg);
    return new AdapterWithOptimizer(adapter, new AdamW(adapter.namedParams(), cfg));
  }

  get config(): AdapterConfig {
    return this.adapter.config;
  }

  get step(): number {
    return this.opt.stepCount;
  }

  /**
   * A′, B′ for a target slice given a source slice; the caller owns the result. The pass's tape is
   * kept (within KEEP_TAPE_BYTES), so an update at the same input runs only the backward pass.
   */
  forward(target: LowRank, source: LowRank): LowRank {
    return this.adapter.forward(target, source, { keepTape: true });
  }

  update(input: AdapterInput, upstream: UpstreamGrads): StepResult {
    return adapterUpdate(this.adapter, this.opt, input, upstream);
  }

  dispose(): void {
    this.opt.dispose();
    this.adapter.dispose();
  }
}
