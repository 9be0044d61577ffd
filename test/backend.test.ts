// Backend selection. The tests run in order and share one process (tfjs keeps global state), so
// the first one sees a fresh initBackend.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { availableBackends, initBackend } from '../shared/tf/backend.js';
import { PATCHED_KERNELS } from '../shared/tf/wasm-kernels.js';

let nativeInstalled = false;
const savedEnv = process.env.MERGENET_BACKEND;

beforeAll(async () => {
  delete process.env.MERGENET_BACKEND;
  try {
    const name = '@tensorflow/tfjs-node';
    await import(name);
    nativeInstalled = true;
  } catch {
    nativeInstalled = false;
  }
});

afterAll(() => {
  if (savedEnv === undefined) delete process.env.MERGENET_BACKEND;
  else process.env.MERGENET_BACKEND = savedEnv;
});

describe('initBackend', () => {
  it('auto picks wasm when tfjs-node is not installed, logs the choice once, patches wasm', async (ctx) => {
    if (nativeInstalled) ctx.skip(); // on a machine with tfjs-node, auto picks 'tensorflow'
    const lines: string[] = [];
    const choice = await initBackend(undefined, (l) => lines.push(l));
    expect(choice).toEqual({ backend: 'wasm', reason: 'auto: tfjs-node not installed' });
    expect(tf.getBackend()).toBe('wasm');
    expect(lines).toEqual(['[mergenet-fed] tfjs backend: wasm (auto: tfjs-node not installed)']);
    for (const k of PATCHED_KERNELS) expect(tf.getKernel(k, 'wasm'), k).toBeDefined();
    // A repeated auto call keeps the choice and does not log again.
    expect(await initBackend('auto', (l) => lines.push(l))).toBe(choice);
    expect(await initBackend('', (l) => lines.push(l))).toBe(choice);
    expect(lines).toHaveLength(1);
    // and the backend computes
    expect(Array.from(tf.tidy(() => tf.add(tf.tensor1d([1, 2]), 1).dataSync()))).toEqual([2, 3]);
  });

  it("an explicit 'cpu' works, and switching back to 'wasm' works", async () => {
    expect(await initBackend('cpu', () => {})).toEqual({ backend: 'cpu', reason: 'requested' });
    expect(tf.getBackend()).toBe('cpu');
    expect(Array.from(tf.tidy(() => tf.mul(tf.tensor1d([2, 3]), 2).dataSync()))).toEqual([4, 6]);
    expect(await initBackend('wasm', () => {})).toEqual({ backend: 'wasm', reason: 'requested' });
    expect(tf.getBackend()).toBe('wasm');
  });

  it('MERGENET_BACKEND is honoured when no argument is given; an argument overrides it', async () => {
    process.env.MERGENET_BACKEND = 'cpu';
    try {
      expect((await initBackend(undefined, () => {})).backend).toBe('cpu');
      expect((await initBackend('wasm', () => {})).backend).toBe('wasm');
    } finally {
      delete process.env.MERGENET_BACKEND;
    }
  });

  it('an unknown name throws a readable error listing the valid ones', async () => {
    const before = tf.getBackend();
    await expect(initBackend('gpu', () => {})).rejects.toThrow('unknown backend "gpu": expected one of auto, tensorflow, wasm, cpu');
    await expect(initBackend('WASM', () => {})).rejects.toThrow(/unknown backend "WASM"/);
    process.env.MERGENET_BACKEND = 'webgl';
    try {
      await expect(initBackend(undefined, () => {})).rejects.toThrow(/unknown backend "webgl"/);
    } finally {
      delete process.env.MERGENET_BACKEND;
    }
    expect(tf.getBackend()).toBe(before); // a bad request changes nothing
  });

  it("'tensorflow' without tfjs-node throws an error that says to install tfjs-node", async (ctx) => {
    if (nativeInstalled) ctx.skip();
    const before = tf.getBackend();
    await expect(initBackend('tensorflow', () => {})).rejects.toThrow(
      /backend "tensorflow" is not available \(install @tensorflow\/tfjs-node/,
    );
    // No silent fallback: the previous backend is still active.
    expect(tf.getBackend()).toBe(before);
  });
});

describe('availableBackends', () => {
  it('lists the backends that load here and restores the active one', async () => {
    await initBackend('wasm', () => {});
    const list = await availableBackends();
    expect(list).toEqual(nativeInstalled ? ['tensorflow', 'wasm', 'cpu'] : ['wasm', 'cpu']);
    expect(tf.getBackend()).toBe('wasm');
  });
});
