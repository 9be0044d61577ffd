// The gradient kernels patched into the wasm backend agree with tfjs's own cpu kernels, and a
// conv net and text models actually train on wasm.
//
// Agreement criterion: maxAbs(wasm − reference) / max(1, maxAbs(reference)) ≤ 1e-4, i.e. relative
// to the largest entry of the reference (absolute when that entry is below 1). Inputs are O(1)
// (uniform in [−1, 1]), so the gradients are sums of O(1) products and float32 rounding is far below
// this bound; an indexing bug gives errors of order 1.
//
// Tensors belong to one backend, so every case builds its inputs from plain arrays after switching.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import {
  PATCHED_KERNELS,
  conv2dFilterGradNHWC,
  depthwiseFilterGradNHWC,
  patchedWasmKernels,
  registerWasmGradientKernels,
} from '../shared/tf/wasm-kernels.js';
import { mulberry32, uniform } from './helpers/random.js';

const TOL = 1e-4;

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** max|a−b| / max(1, max|b|); b is the reference. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let diff = 0;
  let scale = 1;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/**
 * Run fn on one backend and return its (plain-array) result. With leakCheck the engine verifies,
 * after every kernel, that the kernel left no data ids behind (tfjs's IS_TEST check). It is only
 * enabled around plain ops: it misreports the tensors that customGrad ops (softmaxCrossEntropy,
 * fused matMul) save for their backward pass.
 */
async function on<T>(backend: 'cpu' | 'wasm', fn: () => T, leakCheck = true): Promise<T> {
  await tf.setBackend(backend);
  expect(tf.getBackend()).toBe(backend);
  const before = tf.memory().numTensors;
  let out: T;
  tf.env().set('IS_TEST', leakCheck);
  try {
    out = fn();
  } finally {
    tf.env().set('IS_TEST', false);
  }
  // Every case below returns plain arrays; nothing may be left behind on either backend.
  expect(tf.memory().numTensors).toBe(before);
  return out;
}

/** Run fn on cpu and on wasm and return both results (plain arrays). */
async function both<T>(fn: () => T, leakCheck = true): Promise<{ cpu: T; wasm: T }> {
  const cpu = await on('cpu', fn, leakCheck);
  const wasm = await on('wasm', fn, leakCheck);
  return { cpu, wasm };
}

function read(t: tf.Tensor): Float32Array {
  return Float32Array.from(t.dataSync());
}

beforeAll(async () => {
  const choice = await initBackend('wasm', () => {});
  expect(choice.backend).toBe('wasm');
  await tf.setBackend('cpu'); // make sure the cpu backend is initialised too
  await tf.setBackend('wasm');
});

describe('registration', () => {
  it('fills exactly the missing kernels, idempotently', () => {
    for (const name of PATCHED_KERNELS) expect(tf.getKernel(name, 'wasm'), name).toBeDefined();
    const first = patchedWasmKernels().sort();
    // tfjs-backend-wasm 4.22 ships none of them; if a later version does, it must be left alone.
    expect(first).toEqual([...PATCHED_KERNELS].sort());
    const fn = tf.getKernel('Conv2DBackpropFilter', 'wasm').kernelFunc;
    registerWasmGradientKernels();
    registerWasmGradientKernels();
    expect(patchedWasmKernels().sort()).toEqual(first);
    expect(tf.getKernel('Conv2DBackpropFilter', 'wasm').kernelFunc).toBe(fn);
    // The patch is wasm-only: cpu keeps its own kernels.
    expect(tf.getKernel('Conv2DBackpropFilter', 'cpu').kernelFunc).not.toBe(fn);
  });
});

describe('kernel plumbing', () => {
  it('accepts bare TensorInfo inputs (as a backend passes them), without freeing or leaking them', async () => {
    const xs = [2, 5, 5, 2];
    const dyShape = [2, 5, 5, 3];
    const xv = uniform(size(xs), 28);
    const dyv = uniform(size(dyShape), 29);
    await on('wasm', () => {
      const dataIds = tf.backend().numDataIds();
      const x = tf.tensor(xv, xs);
      const dy = tf.tensor(dyv, dyShape);
      const attrs = { strides: 1, pad: 'same', dataFormat: 'NHWC', filterShape: [3, 3, 2, 3] };
      const viaEngine = tf.engine().runKernel('Conv2DBackpropFilter', { x, dy }, attrs) as tf.Tensor;
      const bare = (t: tf.Tensor): tf.TensorInfo => ({ dataId: t.dataId, shape: t.shape, dtype: t.dtype });
      const before = tf.memory().numTensors;
      const direct = tf.getKernel('Conv2DBackpropFilter', 'wasm').kernelFunc({
        inputs: { x: bare(x), dy: bare(dy) }, backend: tf.backend(), attrs,
      }) as tf.Tensor;
      expect(tf.memory().numTensors).toBe(before + 1); // only the output
      expect(relErr(read(direct), read(viaEngine))).toBe(0);
      // the inputs are intact and still readable
      expect(read(x)).toEqual(xv);
      expect(read(dy)).toEqual(dyv);
      tf.dispose([x, dy, viaEngine, direct]);
      expect(tf.backend().numDataIds()).toBe(dataIds); // and everything is freed afterwards
    });
  });
});

type Pad = 'same' | 'valid' | number | tf.backend_util.ExplicitPadding;

interface ConvCase {
  name: string;
  x: [number, number, number, number];
  k: [number, number];
  cout: number;
  stride: number | [number, number];
  pad: Pad;
}

const convCases: ConvCase[] = [
  { name: 'k3 s1 same', x: [2, 8, 8, 3], k: [3, 3], cout: 4, stride: 1, pad: 'same' },
  { name: 'k3 s1 valid', x: [2, 8, 8, 3], k: [3, 3], cout: 4, stride: 1, pad: 'valid' },
  { name: 'k5 s2 same, odd sizes', x: [3, 11, 9, 2], k: [5, 5], cout: 3, stride: 2, pad: 'same' },
  { name: 'k5 s2 valid, odd sizes', x: [3, 11, 9, 2], k: [5, 5], cout: 3, stride: 2, pad: 'valid' },
  { name: 'k5 s1 same, 1→8 channels (MNIST-like first layer)', x: [2, 14, 14, 1], k: [5, 5], cout: 8, stride: 1, pad: 'same' },
  { name: 'k1 s1 valid (pointwise)', x: [2, 5, 5, 6], k: [1, 1], cout: 5, stride: 1, pad: 'valid' },
  { name: 'k3×2 stride [1,2] same', x: [2, 7, 8, 3], k: [3, 2], cout: 2, stride: [1, 2], pad: 'same' },
  { name: 'k3 s2 explicit asymmetric pads', x: [2, 9, 8, 2], k: [3, 3], cout: 3, stride: 2, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] },
  { name: 'k3 s2 numeric pad 2', x: [2, 8, 8, 2], k: [3, 3], cout: 3, stride: 2, pad: 2 },
  { name: 'k4 s3 same (stride > 2, even kernel)', x: [2, 10, 10, 2], k: [4, 4], cout: 2, stride: 3, pad: 'same' },
];

describe('Conv2DBackpropFilter (tf.grad of tf.conv2d w.r.t. the filter)', () => {
  for (const c of convCases) {
    it(c.name, async () => {
      const cin = c.x[3];
      const fShape: [number, number, number, number] = [c.k[0], c.k[1], cin, c.cout];
      const xv = uniform(size(c.x), 1);
      const fv = uniform(size(fShape), 2);
      const conv = (x: tf.Tensor4D, f: tf.Tensor4D) =>
        tf.conv2d(x, f, c.stride, c.pad as 'same', 'NHWC', 1);
      const outShape = await on('cpu', () => tf.tidy(() => conv(tf.tensor4d(xv, c.x), tf.tensor4d(fv, fShape)).shape));
      const dyv = uniform(size(outShape), 3);
      const r = await both(() => tf.tidy(() => {
        const x = tf.tensor4d(xv, c.x);
        const f = tf.tensor4d(fv, fShape);
        const dy = tf.tensor(dyv, outShape);
        const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => conv(a as tf.Tensor4D, b as tf.Tensor4D))([x, f], dy);
        return { dw: read(dw), dx: read(dx), shape: dw.shape };
      }));
      expect(r.wasm.shape).toEqual(fShape);
      expect(relErr(r.wasm.dw, r.cpu.dw)).toBeLessThan(TOL);
      // dx goes through wasm's own Conv2DBackpropInput; checked as well, since training needs both.
      expect(relErr(r.wasm.dx, r.cpu.dx)).toBeLessThan(TOL);
      // Guard against a vacuous pass: the gradient is not all zeros.
      expect(Math.max(...r.cpu.dw.map(Math.abs))).toBeGreaterThan(0.1);
    });
  }

  it('dilations 2 (kernel called directly; tf.grad forbids dilation > 1)', async () => {
    // Reference: a dilated conv equals a conv with the zero-stuffed filter, so its filter gradient
    // is the zero-stuffed filter's gradient sampled at the taps.
    for (const pad of ['same', 'valid'] as const) {
      const xs: [number, number, number, number] = [2, 10, 9, 2];
      const fShape: [number, number, number, number] = [3, 3, 2, 3];
      const bigShape: [number, number, number, number] = [5, 5, 2, 3];
      const xv = uniform(size(xs), 4);
      const fv = uniform(size(fShape), 5);
      const outShape = await on('cpu', () => tf.tidy(() =>
        tf.conv2d(tf.tensor4d(xv, xs), tf.tensor4d(fv, fShape), 1, pad, 'NHWC', 2).shape));
      const dyv = uniform(size(outShape), 6);
      const ref = await on('cpu', () => tf.tidy(() => {
        const big = tf.buffer(bigShape);
        const fb = tf.tensor4d(fv, fShape).bufferSync();
        for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let a = 0; a < 2; a++) for (let b = 0; b < 3; b++) {
          big.set(fb.get(i, j, a, b), 2 * i, 2 * j, a, b);
        }
        const g = tf.grad((f: tf.Tensor) => tf.conv2d(tf.tensor4d(xv, xs), f as tf.Tensor4D, 1, pad))(big.toTensor(), tf.tensor(dyv, outShape));
        return read(tf.stridedSlice(g, [0, 0, 0, 0], bigShape, [2, 2, 1, 1]));
      }));
      const got = await on('wasm', () => tf.tidy(() => read(tf.engine().runKernel('Conv2DBackpropFilter',
        { x: tf.tensor4d(xv, xs), dy: tf.tensor(dyv, outShape) },
        { strides: 1, pad, dataFormat: 'NHWC', filterShape: fShape, dilations: 2 }) as tf.Tensor)));
      expect(relErr(got, ref)).toBeLessThan(TOL);
    }
  });

  it("dimRoundingMode 'ceil': wasm's tf.grad equals the cpu kernel given the rounding mode", async () => {
    // tfjs's conv2d gradient does not forward dimRoundingMode to Conv2DBackpropFilter, so the cpu
    // kernel, reached through tf.grad, computes a 4×4 output where the forward pass made 5×5 and
    // ignores dy's last row and column. The wasm kernel sizes the windows from dy; the reference
    // is the cpu kernel called directly with the rounding mode.
    const xs: [number, number, number, number] = [2, 8, 8, 2];
    const fShape: [number, number, number, number] = [3, 3, 2, 3];
    const xv = uniform(size(xs), 23);
    const fv = uniform(size(fShape), 24);
    const conv = (x: tf.Tensor4D, f: tf.Tensor4D) => tf.conv2d(x, f, 2, 1, 'NHWC', 1, 'ceil');
    const outShape = await on('cpu', () => tf.tidy(() => conv(tf.tensor4d(xv, xs), tf.tensor4d(fv, fShape)).shape));
    expect(outShape).toEqual([2, 5, 5, 3]);
    const dyv = uniform(size(outShape), 25);
    const ref = await on('cpu', () => tf.tidy(() => read(tf.engine().runKernel('Conv2DBackpropFilter',
      { x: tf.tensor4d(xv, xs), dy: tf.tensor(dyv, outShape) },
      { strides: 2, pad: 1, dataFormat: 'NHWC', dimRoundingMode: 'ceil', filterShape: fShape }) as tf.Tensor)));
    const got = await on('wasm', () => tf.tidy(() =>
      read(tf.grad((f: tf.Tensor) => conv(tf.tensor4d(xv, xs), f as tf.Tensor4D))(tf.tensor4d(fv, fShape), tf.tensor(dyv, outShape)))));
    expect(relErr(got, ref)).toBeLessThan(TOL);
  });

  it('NCHW data format (kernel called directly, against the cpu kernel)', async () => {
    const xs: [number, number, number, number] = [2, 3, 9, 7]; // N C H W
    const fShape: [number, number, number, number] = [3, 3, 3, 4];
    const xv = uniform(size(xs), 7);
    const dyShape = [2, 4, 5, 4]; // stride 2 'same': ceil(9/2)=5, ceil(7/2)=4
    const dyv = uniform(size(dyShape), 8);
    const r = await both(() => tf.tidy(() => read(tf.engine().runKernel('Conv2DBackpropFilter',
      { x: tf.tensor4d(xv, xs), dy: tf.tensor(dyv, dyShape) },
      { strides: 2, pad: 'same', dataFormat: 'NCHW', filterShape: fShape }) as tf.Tensor)));
    expect(relErr(r.wasm, r.cpu)).toBeLessThan(TOL);
  });

  it('batch chunking gives the same result as one matMul', async () => {
    const xs: [number, number, number, number] = [5, 9, 9, 3];
    const fShape: [number, number, number, number] = [3, 3, 3, 2];
    const xv = uniform(size(xs), 9);
    const info = tf.backend_util.computeConv2DInfo(xs, fShape, 2, 1, 'same');
    const dyv = uniform(size(info.outShape), 10);
    const [whole, chunked] = await on('wasm', () => tf.tidy(() => {
      const x = tf.tensor4d(xv, xs);
      const dy = tf.tensor4d(dyv, info.outShape);
      // Patches per example: 5·5·9·3 = 675 elements; a 1500 limit gives chunks of 2, 2, 1.
      return [read(conv2dFilterGradNHWC(x, dy, info)), read(conv2dFilterGradNHWC(x, dy, info, 1500))];
    }));
    expect(relErr(chunked, whole)).toBeLessThan(1e-6);
  });
});

interface DwCase {
  name: string;
  x: [number, number, number, number];
  k: number;
  mult: number;
  stride: number | [number, number];
  pad: Pad;
  rounding?: 'floor' | 'round' | 'ceil';
}

const dwCases: DwCase[] = [
  { name: 'k3 s1 same, multiplier 1', x: [2, 8, 8, 3], k: 3, mult: 1, stride: 1, pad: 'same' },
  { name: 'k3 s1 valid, multiplier 2', x: [2, 8, 7, 3], k: 3, mult: 2, stride: 1, pad: 'valid' },
  { name: 'k5 s2 same, multiplier 2', x: [3, 11, 9, 2], k: 5, mult: 2, stride: 2, pad: 'same' },
  { name: 'k5 s2 valid, multiplier 1', x: [2, 11, 10, 4], k: 5, mult: 1, stride: 2, pad: 'valid' },
  { name: 'k3 stride [2,1] same, multiplier 3', x: [2, 9, 8, 2], k: 3, mult: 3, stride: [2, 1], pad: 'same' },
  { name: 'k3 s3, explicit pads larger than the kernel', x: [2, 8, 9, 2], k: 3, mult: 1, stride: 3, pad: [[0, 0], [3, 4], [0, 5], [0, 0]] },
  { name: 'k3 s2 numeric pad 1, ceil rounding (the depthwise gradient forwards it)', x: [2, 8, 8, 3], k: 3, mult: 2, stride: 2, pad: 1, rounding: 'ceil' },
];

describe('depthwise conv gradients (DepthwiseConv2dNativeBackpropFilter / BackpropInput)', () => {
  for (const c of dwCases) {
    it(c.name, async () => {
      const fShape: [number, number, number, number] = [c.k, c.k, c.x[3], c.mult];
      const xv = uniform(size(c.x), 11);
      const fv = uniform(size(fShape), 12);
      const outShape = await on('cpu', () => tf.tidy(() =>
        tf.depthwiseConv2d(tf.tensor4d(xv, c.x), tf.tensor4d(fv, fShape), c.stride, c.pad as 'same', 'NHWC', 1, c.rounding).shape));
      const dyv = uniform(size(outShape), 13);
      const r = await both(() => tf.tidy(() => {
        const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.stride, c.pad as 'same', 'NHWC', 1, c.rounding))(
          [tf.tensor4d(xv, c.x), tf.tensor4d(fv, fShape)], tf.tensor(dyv, outShape));
        return { dx: read(dx), dw: read(dw) };
      }));
      expect(relErr(r.wasm.dw, r.cpu.dw)).toBeLessThan(TOL);
      expect(relErr(r.wasm.dx, r.cpu.dx)).toBeLessThan(TOL);
      expect(Math.max(...r.cpu.dw.map(Math.abs))).toBeGreaterThan(0.1);
    });
  }

  it('batch chunking gives the same result as one batched matMul', async () => {
    const xs: [number, number, number, number] = [5, 9, 9, 3];
    const fShape: [number, number, number, number] = [3, 3, 3, 2];
    const xv = uniform(size(xs), 26);
    const info = tf.backend_util.computeConv2DInfo(xs, fShape, 2, 1, 'same', undefined, true);
    const dyv = uniform(size(info.outShape), 27);
    const [whole, chunked] = await on('wasm', () => tf.tidy(() => {
      const x = tf.tensor4d(xv, xs);
      const dy = tf.tensor4d(dyv, info.outShape);
      return [read(depthwiseFilterGradNHWC(x, dy, info)), read(depthwiseFilterGradNHWC(x, dy, info, 1500))];
    }));
    expect(relErr(chunked, whole)).toBeLessThan(1e-6);
  });

  it('dilations 2, stride 1 (kernels called directly, zero-stuffed-filter reference)', async () => {
    const xs: [number, number, number, number] = [2, 9, 10, 3];
    const fShape: [number, number, number, number] = [3, 3, 3, 2];
    const bigShape: [number, number, number, number] = [5, 5, 3, 2];
    const xv = uniform(size(xs), 14);
    const fv = uniform(size(fShape), 15);
    for (const pad of ['same', 'valid'] as const) {
      const outShape = await on('cpu', () => tf.tidy(() =>
        tf.depthwiseConv2d(tf.tensor4d(xv, xs), tf.tensor4d(fv, fShape), 1, pad, 'NHWC', 2).shape));
      const dyv = uniform(size(outShape), 16);
      const ref = await on('cpu', () => tf.tidy(() => {
        const big = tf.buffer(bigShape);
        const fb = tf.tensor4d(fv, fShape).bufferSync();
        for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let a = 0; a < 3; a++) for (let b = 0; b < 2; b++) {
          big.set(fb.get(i, j, a, b), 2 * i, 2 * j, a, b);
        }
        const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, pad))(
          [tf.tensor4d(xv, xs), big.toTensor()], tf.tensor(dyv, outShape));
        return { dx: read(dx), dw: read(tf.stridedSlice(dw, [0, 0, 0, 0], bigShape, [2, 2, 1, 1])) };
      }));
      const got = await on('wasm', () => tf.tidy(() => {
        const attrs = { strides: 1, pad, dilations: 2 };
        const dw = tf.engine().runKernel('DepthwiseConv2dNativeBackpropFilter',
          { x: tf.tensor4d(xv, xs), dy: tf.tensor(dyv, outShape) }, { ...attrs, filterShape: fShape }) as tf.Tensor;
        const dx = tf.engine().runKernel('DepthwiseConv2dNativeBackpropInput',
          { dy: tf.tensor(dyv, outShape), filter: tf.tensor4d(fv, fShape) }, { ...attrs, inputShape: xs }) as tf.Tensor;
        return { dx: read(dx), dw: read(dw) };
      }));
      expect(relErr(got.dw, ref.dw)).toBeLessThan(TOL);
      expect(relErr(got.dx, ref.dx)).toBeLessThan(TOL);
    }
  });
});

describe('UnsortedSegmentSum and the gradient of gather', () => {
  it('matches cpu for 1-D, 2-D and 3-D data with repeated and unused segments', async () => {
    const ids = [3, 0, 3, 1, 3, 0, 5, 1];
    for (const shape of [[8], [8, 4], [8, 2, 3]]) {
      const xv = uniform(size(shape), 17);
      const r = await both(() => tf.tidy(() =>
        read(tf.unsortedSegmentSum(tf.tensor(xv, shape), tf.tensor1d(ids, 'int32'), 7))));
      expect(r.wasm.length).toBe(7 * size(shape.slice(1)));
      expect(relErr(r.wasm, r.cpu)).toBeLessThan(TOL);
    }
  });

  it('drops negative and out-of-range ids, as cpu does; int32 data stays exact', async () => {
    const ids = [-1, 2, 0, 4, 2, 9, 1];
    const xi = [10, 20, 30, 40, 50, 60, 70];
    const r = await both(() => tf.tidy(() => {
      const out = tf.engine().runKernel('UnsortedSegmentSum',
        { x: tf.tensor1d(xi, 'int32'), segmentIds: tf.tensor1d(ids, 'int32') }, { numSegments: 4 }) as tf.Tensor;
      return Array.from(out.dataSync());
    }));
    expect(r.wasm).toEqual([30, 70, 20 + 50, 0]);
    expect(r.wasm).toEqual(r.cpu);
  });

  it('2-D segment ids (a prefix of the data shape) equal the flattened 1-D case', async () => {
    // The cpu kernel cannot broadcast rank-2 ids, so the reference is the same sum with the
    // leading axes flattened.
    const ids = [[0, 2], [2, 1], [1, 1]];
    const xv = uniform(3 * 2 * 4, 18);
    const ref = await on('cpu', () => tf.tidy(() =>
      read(tf.unsortedSegmentSum(tf.tensor2d(xv, [6, 4]), tf.tensor1d(ids.flat(), 'int32'), 3))));
    const got = await on('wasm', () => tf.tidy(() => read(tf.engine().runKernel('UnsortedSegmentSum',
      { x: tf.tensor3d(xv, [3, 2, 4]), segmentIds: tf.tensor2d(ids, [3, 2], 'int32') }, { numSegments: 3 }) as tf.Tensor)));
    expect(relErr(got, ref)).toBeLessThan(TOL);
  });

  it('tf.grad of tf.gather, axis 0 and axis 1, repeated indices', async () => {
    const pv = uniform(6 * 5, 19);
    for (const [axis, indices] of [[0, [4, 0, 4, 2, 4]], [1, [1, 1, 3, 0]]] as const) {
      const r = await both(() => tf.tidy(() => {
        const idx = tf.tensor1d([...indices], 'int32');
        const w = tf.tensor2d(uniform(axis === 0 ? 5 * 5 : 6 * 4, 20), axis === 0 ? [5, 5] : [6, 4]);
        // A weighted sum, so every gathered element carries a distinct gradient.
        return read(tf.grad((p: tf.Tensor) => tf.sum(tf.mul(tf.gather(p, idx, axis), w)))(tf.tensor2d(pv, [6, 5])));
      }));
      expect(relErr(r.wasm, r.cpu)).toBeLessThan(TOL);
      expect(Math.max(...r.cpu.map(Math.abs))).toBeGreaterThan(0.1);
    }
  });
});

// ---- whole models: identical weights on both backends, every variable's gradient compared ----

type Build = () => tf.LayersModel;

function smallCnn(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.conv2d({ inputShape: [12, 12, 1], filters: 4, kernelSize: 3, padding: 'same', activation: 'relu' }));
  m.add(tf.layers.maxPooling2d({ poolSize: 2 }));
  m.add(tf.layers.conv2d({ filters: 6, kernelSize: 5, strides: 2, padding: 'valid', activation: 'relu' }));
  m.add(tf.layers.flatten());
  m.add(tf.layers.dense({ units: 3 }));
  return m;
}

function textConv(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.embedding({ inputDim: 12, outputDim: 6, inputLength: 9 }));
  m.add(tf.layers.conv1d({ filters: 5, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu' }));
  m.add(tf.layers.globalAveragePooling1d());
  m.add(tf.layers.dense({ units: 3 }));
  return m;
}

function textGru(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.embedding({ inputDim: 12, outputDim: 6, inputLength: 9, maskZero: true }));
  m.add(tf.layers.gru({ units: 5 }));
  m.add(tf.layers.dense({ units: 3 }));
  return m;
}

function separable(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.conv2d({ inputShape: [9, 9, 2], filters: 3, kernelSize: 3, padding: 'same', activation: 'relu' }));
  m.add(tf.layers.separableConv2d({ filters: 4, kernelSize: 3, strides: 2, depthMultiplier: 2, padding: 'same' }));
  m.add(tf.layers.globalAveragePooling2d({}));
  m.add(tf.layers.dense({ units: 3 }));
  return m;
}

const tokens = [
  [1, 2, 3, 4, 0, 0, 0, 0, 0], [5, 6, 7, 1, 2, 3, 0, 0, 0], [11, 10, 9, 8, 7, 6, 5, 4, 3], [2, 2, 2, 0, 0, 0, 0, 0, 0],
  [7, 1, 7, 1, 7, 0, 0, 0, 0], [3, 4, 5, 6, 7, 8, 9, 10, 11], [9, 0, 0, 0, 0, 0, 0, 0, 0], [4, 8, 4, 8, 4, 8, 0, 0, 0],
];
const labels = [0, 1, 2, 0, 1, 2, 0, 1];

async function modelGradParity(build: Build, xShape: number[] | 'tokens'): Promise<void> {
  const xv = xShape === 'tokens' ? null : uniform(size(xShape), 21);
  const makeX = () => (xv ? tf.tensor(xv, xShape as number[]) : tf.tensor2d(tokens, undefined, 'float32'));
  // Weights drawn on cpu, then loaded on both backends.
  const weights = await on('cpu', () => {
    const m = build();
    const w = m.getWeights().map((t) => ({ values: read(t), shape: t.shape }));
    m.dispose();
    return w;
  });
  const r = await both(() => {
    const m = build();
    const init = weights.map((w) => tf.tensor(w.values, w.shape));
    m.setWeights(init);
    tf.dispose(init);
    const grads = tf.tidy(() => {
      const x = makeX();
      const y = tf.oneHot(tf.tensor1d(labels.slice(0, x.shape[0]), 'int32'), 3);
      const { grads: g } = tf.variableGrads(() => tf.losses.softmaxCrossEntropy(y, m.predict(x) as tf.Tensor) as tf.Scalar);
      return m.trainableWeights.map((v) => read(g[(v.read() as tf.Variable).name]));
    });
    m.dispose();
    return grads;
  }, false);
  expect(r.wasm.length).toBe(r.cpu.length);
  for (let i = 0; i < r.cpu.length; i++) expect(relErr(r.wasm[i], r.cpu[i]), `weight ${i}`).toBeLessThan(TOL);
}

describe('whole-model gradients agree between wasm and cpu', () => {
  it('CNN: conv same + maxpool + conv k5 s2 valid + dense, softmax cross-entropy', async () => {
    await modelGradParity(smallCnn, [4, 12, 12, 1]);
  });
  it('text: Embedding + Conv1D (stride 2, same) + GlobalAveragePooling1D', async () => {
    await modelGradParity(textConv, 'tokens');
  });
  it('text: Embedding (maskZero) + GRU', async () => {
    await modelGradParity(textGru, 'tokens');
  });
  it('conv + SeparableConv2D (depthwise kernels inside a network)', async () => {
    await modelGradParity(separable, [3, 9, 9, 2]);
  });
});

describe('training on wasm', () => {
  it('a conv-pool-conv-dense CNN with dropout: 20 SGD steps on a fixed batch lower the loss, no leak', async () => {
    await tf.setBackend('wasm');
    const n = 16;
    // Three classes with a learnable pattern: a bright row, a bright column, or a bright diagonal.
    const r = mulberry32(22);
    const xv = new Float32Array(n * 12 * 12);
    const ys: number[] = [];
    for (let s = 0; s < n; s++) {
      const cls = s % 3;
      ys.push(cls);
      const p = 2 + Math.floor(r() * 8);
      for (let i = 0; i < 12; i++) for (let j = 0; j < 12; j++) {
        const lit = cls === 0 ? i === p : cls === 1 ? j === p : i === j;
        xv[s * 144 + i * 12 + j] = (lit ? 1 : 0) + 0.1 * (r() - 0.5);
      }
    }
    // Seeded initialisers and dropout: the run is deterministic, not a lucky draw.
    const init = (seed: number) => tf.initializers.glorotUniform({ seed });
    const m = tf.sequential();
    m.add(tf.layers.conv2d({ inputShape: [12, 12, 1], filters: 6, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(11) }));
    m.add(tf.layers.maxPooling2d({ poolSize: 2 }));
    m.add(tf.layers.conv2d({ filters: 8, kernelSize: 3, strides: 2, padding: 'valid', activation: 'relu', kernelInitializer: init(12) }));
    m.add(tf.layers.flatten());
    m.add(tf.layers.dropout({ rate: 0.2, seed: 13 }));
    m.add(tf.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: init(14) }));
    m.compile({ optimizer: tf.train.sgd(0.3), loss: 'categoricalCrossentropy' });
    const x = tf.tensor4d(xv, [n, 12, 12, 1]);
    const y = tf.oneHot(tf.tensor1d(ys, 'int32'), 3);
    // Inference mode (dropout off), so the before/after losses are comparable.
    const evalLoss = () => tf.tidy(() => tf.mean(tf.metrics.categoricalCrossentropy(y, m.predict(x) as tf.Tensor)).dataSync()[0]);
    const before = evalLoss();
    let tensorsAfterFirst = 0;
    for (let step = 0; step < 20; step++) {
      await m.trainOnBatch(x, y);
      if (step === 0) tensorsAfterFirst = tf.memory().numTensors;
    }
    // Steady state: the patched kernels leave nothing behind per step.
    expect(tf.memory().numTensors).toBe(tensorsAfterFirst);
    const after = evalLoss();
    expect(Number.isFinite(after)).toBe(true);
    // Measured: 1.11 → 0.043 with these seeds (0.02–0.08 of the start over six other seeds).
    expect(after).toBeLessThan(0.5 * before);
    tf.dispose([x, y]);
    m.dispose();
  });
});
