// Gradient kernels that @tensorflow/tfjs-backend-wasm 4.22 does not ship, built from kernels it
// does ship. Without them a conv net cannot train on wasm (Conv2DBackpropFilter), nor a depthwise
// or separable conv (DepthwiseConv2dNativeBackpropFilter / ...BackpropInput), nor anything with
// an Embedding (the gradient of gather is UnsortedSegmentSum).
//
// The engine does not tape ops run inside a kernel (kernelDepth > 0), so a kernel may be written
// with ordinary tf ops; every intermediate is disposed by tf.tidy and one tensor is returned.
import * as tf from '@tensorflow/tfjs';
// Imported so that the wasm registry is populated before we look for gaps in it.
import '@tensorflow/tfjs-backend-wasm';

type Pad = 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
type Rounding = 'floor' | 'round' | 'ceil' | undefined;
type Pair = number | [number, number];

/**
 * Patch matrices larger than this many elements are built one batch chunk at a time, so the
 * im2col buffer stays bounded (16 MiB of float32) whatever the batch size.
 */
export const MAX_PATCH_ELEMENTS = 1 << 22;

/** The kernels this module supplies, in registration order. */
export const PATCHED_KERNELS = [
  'Conv2DBackpropFilter',
  'DepthwiseConv2dNativeBackpropFilter',
  'DepthwiseConv2dNativeBackpropInput',
  'UnsortedSegmentSum',
] as const;

function asTensor(info: tf.TensorInfo | undefined, name: string): tf.Tensor {
  if (info === undefined) throw new Error(`wasm gradient kernel: missing input "${name}"`);
  // Ops pass real Tensors to kernels; a backend calling a kernel directly passes a bare TensorInfo.
  // The wrapper shares the data id. makeTensorFromTensorInfo does not add a reference, and
  // disposing the wrapper (the surrounding tidy does) drops one, so add one first, or the caller's
  // input would be freed.
  if ((info as tf.Tensor).rank !== undefined) return info as tf.Tensor;
  (tf.backend() as unknown as { incRef(dataId: object): void }).incRef(info.dataId);
  return tf.engine().makeTensorFromTensorInfo(info);
}

interface PatchGeometry {
  outHeight: number;
  outWidth: number;
  filterHeight: number;
  filterWidth: number;
  strideHeight: number;
  strideWidth: number;
  dilationHeight: number;
  dilationWidth: number;
  top: number;
  left: number;
}

/**
 * Zero-pad the spatial axes (2 and 3) of a [C, B, H, W] tensor so that every window of the
 * forward conv lies inside it. Extra rows/columns beyond the stated pads are added when 'ceil'
 * rounding asks for windows that overhang the input (they read zeros, as in the cpu kernel).
 */
function padSpatial(xc: tf.Tensor4D, g: PatchGeometry): tf.Tensor4D {
  const [, , h, w] = xc.shape;
  const needH = (g.outHeight - 1) * g.strideHeight + (g.filterHeight - 1) * g.dilationHeight + 1;
  const needW = (g.outWidth - 1) * g.strideWidth + (g.filterWidth - 1) * g.dilationWidth + 1;
  const bottom = Math.max(0, needH - g.top - h);
  const right = Math.max(0, needW - g.left - w);
  if (g.top === 0 && g.left === 0 && bottom === 0 && right === 0) return xc;
  return tf.pad(xc, [[0, 0], [0, 0], [g.top, bottom], [g.left, right]]);
}

/**
 * The KH·KW windows of a padded [C, B, Hp, Wp] tensor, each [C, B, OH, OW], stacked on `axis`:
 * axis 0 gives [K, C, B, OH, OW], axis 1 gives [C, K, B, OH, OW]. Either way the rows of the
 * result, flattened, are the im2col matrix already transposed, so the following matMul needs no
 * transpose flag (measured on wasm: a [400×6272]·[6272×32] product takes 3.5 ms, the same
 * product written as transposeA takes 45 ms).
 */
function windows(xc: tf.Tensor4D, g: PatchGeometry, axis: 0 | 1): tf.Tensor {
  const [c, b] = xc.shape;
  const parts: tf.Tensor4D[] = [];
  for (let kh = 0; kh < g.filterHeight; kh++) {
    for (let kw = 0; kw < g.filterWidth; kw++) {
      const r0 = kh * g.dilationHeight;
      const c0 = kw * g.dilationWidth;
      if (g.strideHeight === 1 && g.strideWidth === 1) {
        parts.push(tf.slice(xc, [0, 0, r0, c0], [c, b, g.outHeight, g.outWidth]));
      } else {
        parts.push(tf.stridedSlice(
          xc,
          [0, 0, r0, c0],
          [c, b, r0 + (g.outHeight - 1) * g.strideHeight + 1, c0 + (g.outWidth - 1) * g.strideWidth + 1],
          [1, 1, g.strideHeight, g.strideWidth],
        ) as tf.Tensor4D);
      }
    }
  }
  return tf.stack(parts, axis);
}

/**
 * Window geometry of the forward conv. The output size is taken from dy itself: tfjs's conv2d
 * gradient drops dimRoundingMode when it calls Conv2DBackpropFilter, so under 'ceil' rounding
 * info.outHeight can be one short of dy, and trusting it would silently ignore dy's last row.
 */
function geometry(info: tf.backend_util.Conv2DInfo, dyHeight: number, dyWidth: number): PatchGeometry {
  return {
    outHeight: dyHeight,
    outWidth: dyWidth,
    filterHeight: info.filterHeight,
    filterWidth: info.filterWidth,
    strideHeight: info.strideHeight,
    strideWidth: info.strideWidth,
    dilationHeight: info.dilationHeight,
    dilationWidth: info.dilationWidth,
    top: info.padInfo.top,
    left: info.padInfo.left,
  };
}

/** Batch chunk size that keeps one chunk's patch matrix under maxElements. */
function chunkSize(batch: number, perExample: number, maxElements: number): number {
  return Math.max(1, Math.min(batch, Math.floor(maxElements / Math.max(1, perExample))));
}

/** Sum f(b0, nb) over batch chunks [b0, b0+nb), disposing partial sums as it goes. */
function sumOverChunks<T extends tf.Tensor>(batch: number, step: number, f: (b0: number, nb: number) => T): T {
  let acc: T | undefined;
  for (let b0 = 0; b0 < batch; b0 += step) {
    const part = tf.tidy(() => f(b0, Math.min(step, batch - b0)));
    if (acc === undefined) {
      acc = part;
    } else {
      const next = tf.add(acc, part) as T;
      tf.dispose([acc, part]);
      acc = next;
    }
  }
  return acc!;
}

/**
 * The frame both filter gradients share: x [B, H, W, Cin] is turned into padded windows
 * [Cin, B, Hp, Wp], and `product(xs, ds, g, rows)` of each batch chunk (xs the chunk's windows,
 * ds its rows of dy, rows = chunk·OH·OW) is summed over chunks small enough that one chunk's
 * patch matrix stays under maxElements. Undefined when there are no windows (empty batch or
 * output). Call inside a tidy.
 */
function sumPatchProducts<T extends tf.Tensor>(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  info: tf.backend_util.Conv2DInfo,
  maxElements: number,
  product: (xs: tf.Tensor4D, ds: tf.Tensor4D, g: PatchGeometry, rows: number) => T,
): T | undefined {
  const g = geometry(info, dy.shape[1], dy.shape[2]);
  const batch = x.shape[0];
  if (batch === 0 || g.outHeight === 0 || g.outWidth === 0) return undefined;
  const xc = padSpatial(tf.transpose(x, [3, 0, 1, 2]), g); // [Cin, B, Hp, Wp]
  const step = chunkSize(batch, g.outHeight * g.outWidth * g.filterHeight * g.filterWidth * info.inChannels, maxElements);
  return sumOverChunks(batch, step, (b0, nb) => {
    const xs = nb === batch ? xc : tf.slice(xc, [0, b0, 0, 0], [-1, nb, -1, -1]);
    const ds = nb === batch ? dy : tf.slice(dy, [b0, 0, 0, 0], [nb, -1, -1, -1]);
    return product(xs, ds, g, nb * g.outHeight * g.outWidth);
  });
}

/**
 * dW of a 2-D convolution, NHWC. x: [B, H, W, Cin], dy: [B, OH, OW, Cout] → [KH, KW, Cin, Cout].
 * im2col: the windows of x form Pᵀ: [KH·KW·Cin, B·OH·OW] (rows in the filter's own flattening
 * order), and dW = Pᵀ·dy, one plain matMul per batch chunk. The caller owns the result.
 */
export function conv2dFilterGradNHWC(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  info: tf.backend_util.Conv2DInfo,
  maxPatchElements = MAX_PATCH_ELEMENTS,
): tf.Tensor4D {
  return tf.tidy(() => {
    const { filterHeight: kh, filterWidth: kw, inChannels: cin, outChannels: cout } = info;
    const dw = sumPatchProducts(x, dy, info, maxPatchElements, (xs, ds, g, rows) => {
      const pt = tf.reshape(windows(xs, g, 0), [kh * kw * cin, rows]) as tf.Tensor2D;
      return tf.matMul(pt, tf.reshape(ds, [rows, cout]) as tf.Tensor2D) as tf.Tensor2D;
    });
    if (dw === undefined) return tf.zeros([kh, kw, cin, cout]) as tf.Tensor4D;
    return tf.reshape(dw, [kh, kw, cin, cout]) as tf.Tensor4D;
  });
}

/**
 * dW of a depthwise 2-D convolution, NHWC. x: [B, H, W, Cin], dy: [B, OH, OW, Cin·M] →
 * [KH, KW, Cin, M]. One batched matMul over channels: for channel c, dW[:, c, :] = P_cᵀ·dy_c with
 * P_cᵀ: [KH·KW, B·OH·OW] the windows of channel c. The caller owns the result.
 */
export function depthwiseFilterGradNHWC(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  info: tf.backend_util.Conv2DInfo,
  maxPatchElements = MAX_PATCH_ELEMENTS,
): tf.Tensor4D {
  return tf.tidy(() => {
    const { filterHeight: kh, filterWidth: kw, inChannels: cin, outChannels: cout } = info;
    const mult = cout / cin;
    const dw = sumPatchProducts(x, dy, info, maxPatchElements, (xs, ds, g, rows) => {
      const pt = tf.reshape(windows(xs, g, 1), [cin, kh * kw, rows]) as tf.Tensor3D;
      const d = tf.transpose(tf.reshape(ds, [rows, cin, mult]), [1, 0, 2]) as tf.Tensor3D;
      return tf.matMul(pt, d) as tf.Tensor3D; // [Cin, K, M]
    });
    if (dw === undefined) return tf.zeros([kh, kw, cin, mult]) as tf.Tensor4D;
    return tf.reshape(tf.transpose(dw, [1, 0, 2]), [kh, kw, cin, mult]) as tf.Tensor4D;
  });
}

/** Insert stride−1 zeros between the rows (axis 1) and columns (axis 2) of [B, OH, OW, C]. */
function zeroStuff(dy: tf.Tensor4D, sh: number, sw: number): tf.Tensor4D {
  let z = dy;
  if (sh > 1) {
    const [b, oh, ow, c] = z.shape;
    const spread = tf.pad(tf.reshape(z, [b, oh, 1, ow, c]), [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, 0]]);
    z = tf.slice(tf.reshape(spread, [b, oh * sh, ow, c]), [0, 0, 0, 0], [-1, (oh - 1) * sh + 1, -1, -1]) as tf.Tensor4D;
  }
  if (sw > 1) {
    const [b, h, ow, c] = z.shape;
    const spread = tf.pad(tf.reshape(z, [b, h, ow, 1, c]), [[0, 0], [0, 0], [0, 0], [0, sw - 1], [0, 0]]);
    z = tf.slice(tf.reshape(spread, [b, h, ow * sw, c]), [0, 0, 0, 0], [-1, -1, (ow - 1) * sw + 1, -1]) as tf.Tensor4D;
  }
  return z;
}

/** Pad (positive) or crop (negative) the spatial axes of [B, H, W, C]. */
function padOrCrop(z: tf.Tensor4D, top: number, bottom: number, left: number, right: number): tf.Tensor4D {
  let out = z;
  if (top > 0 || bottom > 0 || left > 0 || right > 0) {
    out = tf.pad(out, [[0, 0], [Math.max(0, top), Math.max(0, bottom)], [Math.max(0, left), Math.max(0, right)], [0, 0]]);
  }
  if (top < 0 || bottom < 0 || left < 0 || right < 0) {
    const [, h, w] = out.shape;
    const t = Math.max(0, -top);
    const l = Math.max(0, -left);
    out = tf.slice(out, [0, t, l, 0], [-1, h - t - Math.max(0, -bottom), w - l - Math.max(0, -right), -1]);
  }
  return out;
}

/**
 * dx of a depthwise 2-D convolution, NHWC. dx[i] = Σ_{o,k: o·s + k·d − top = i} dy[o]·f[k] is a
 * stride-1 depthwise convolution of dy (zero-stuffed by the stride, re-padded) with the flipped
 * filter, so it runs on wasm's fast forward DepthwiseConv2dNative. With channel multiplier M the
 * conv runs over all Cin·M channels of dy and the M products of each input channel are summed.
 * The caller owns the result.
 */
export function depthwiseInputGradNHWC(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  inputShape: [number, number, number, number],
  info: tf.backend_util.Conv2DInfo,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [kh, kw, cin, mult] = filter.shape;
    const [b, h, w] = inputShape;
    const [, oh, ow] = dy.shape;
    const { strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
    const effH = (kh - 1) * dh + 1;
    const effW = (kw - 1) * dw + 1;
    const top = effH - 1 - info.padInfo.top;
    const left = effW - 1 - info.padInfo.left;
    // Extents chosen so that the 'valid' conv below outputs exactly h × w.
    const bottom = h + info.padInfo.top - (oh - 1) * sh - 1;
    const right = w + info.padInfo.left - (ow - 1) * sw - 1;
    const z = padOrCrop(zeroStuff(dy, sh, sw), top, bottom, left, right);
    const flipped = tf.reshape(tf.reverse(filter, [0, 1]), [kh, kw, cin * mult, 1]) as tf.Tensor4D;
    const y = tf.depthwiseConv2d(z, flipped, 1, 'valid', 'NHWC', [dh, dw]);
    return (mult === 1 ? y : tf.sum(tf.reshape(y, [b, h, w, cin, mult]), 4)) as tf.Tensor4D;
  });
}

/**
 * out[s, ...] = Σ_{i: ids[i] = s} x[i, ...] for s in [0, numSegments); ids outside that range are
 * dropped (TensorFlow's semantics). segmentIds may have any rank that is a prefix of x's shape.
 * Built on wasm's ScatterNd, which accumulates duplicate indices: dropped ids are routed to an
 * extra row that is sliced away. The caller owns the result.
 */
export function unsortedSegmentSumVia(x: tf.Tensor, segmentIds: tf.Tensor, numSegments: number): tf.Tensor {
  return tf.tidy(() => {
    const m = segmentIds.size;
    const inner = x.shape.slice(segmentIds.rank);
    const ids = tf.reshape(tf.cast(segmentIds, 'int32'), [m]);
    const bad = tf.logicalOr(tf.less(ids, 0), tf.greaterEqual(ids, numSegments));
    const routed = tf.where(bad, tf.fill([m], numSegments, 'int32'), ids);
    const updates = tf.reshape(x, [m, ...inner]);
    const summed = tf.scatterND(tf.reshape(routed, [m, 1]), updates, [numSegments + 1, ...inner]);
    return tf.slice(summed, 0, numSegments);
  });
}

function nchwToNhwc(t: tf.Tensor): tf.Tensor4D {
  return tf.transpose(t, [0, 2, 3, 1]) as tf.Tensor4D;
}

type Shape4 = [number, number, number, number];

/** Attributes common to both depthwise backprop kernels. */
interface DepthwiseAttrs {
  strides: Pair;
  dilations?: Pair;
  pad: Pad;
  dimRoundingMode?: Rounding;
}

function depthwiseInfo(a: DepthwiseAttrs, inShape: Shape4, filterShape: Shape4): tf.backend_util.Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(inShape, filterShape, a.strides, a.dilations ?? 1, a.pad, a.dimRoundingMode, true);
}

const kernels: Record<(typeof PATCHED_KERNELS)[number], tf.KernelFunc> = {
  Conv2DBackpropFilter: ({ inputs, attrs }) => {
    const a = attrs as unknown as {
      strides: Pair; pad: Pad; dataFormat?: 'NHWC' | 'NCHW'; dimRoundingMode?: Rounding;
      filterShape: Shape4; dilations?: Pair;
    };
    return tf.tidy(() => {
      const format = tf.backend_util.convertConv2DDataFormat(a.dataFormat ?? 'NHWC');
      let x = asTensor(inputs.x, 'x') as tf.Tensor4D;
      let dy = asTensor(inputs.dy, 'dy') as tf.Tensor4D;
      const info = tf.backend_util.computeConv2DInfo(
        x.shape, a.filterShape, a.strides, a.dilations ?? 1, a.pad, a.dimRoundingMode, false, format);
      if (format === 'channelsFirst') {
        x = nchwToNhwc(x);
        dy = nchwToNhwc(dy);
      }
      return conv2dFilterGradNHWC(x, dy, info);
    });
  },
  DepthwiseConv2dNativeBackpropFilter: ({ inputs, attrs }) => {
    const a = attrs as unknown as DepthwiseAttrs & { filterShape: Shape4 };
    return tf.tidy(() => {
      const x = asTensor(inputs.x, 'x') as tf.Tensor4D;
      const dy = asTensor(inputs.dy, 'dy') as tf.Tensor4D;
      return depthwiseFilterGradNHWC(x, dy, depthwiseInfo(a, x.shape, a.filterShape));
    });
  },
  DepthwiseConv2dNativeBackpropInput: ({ inputs, attrs }) => {
    const a = attrs as unknown as DepthwiseAttrs & { inputShape: Shape4 };
    return tf.tidy(() => {
      const dy = asTensor(inputs.dy, 'dy') as tf.Tensor4D;
      const filter = asTensor(inputs.filter, 'filter') as tf.Tensor4D;
      return depthwiseInputGradNHWC(dy, filter, a.inputShape, depthwiseInfo(a, a.inputShape, filter.shape));
    });
  },
  UnsortedSegmentSum: ({ inputs, attrs }) => {
    const { numSegments } = attrs as unknown as { numSegments: number };
    return tf.tidy(() => unsortedSegmentSumVia(asTensor(inputs.x, 'x'), asTensor(inputs.segmentIds, 'segmentIds'), numSegments));
  },
};

const added = new Set<string>();

/**
 * Register, for the 'wasm' backend, each kernel of PATCHED_KERNELS that wasm does not already
 * provide. Idempotent, and a no-op for kernels a future tfjs-backend-wasm ships itself.
 * Returns nothing; `patchedWasmKernels()` says what was added.
 */
export function registerWasmGradientKernels(): void {
  for (const name of PATCHED_KERNELS) {
    if (tf.getKernel(name, 'wasm') !== undefined) continue;
    tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc: kernels[name] });
    added.add(name);
  }
}

/** Kernel names this module has registered for wasm in this process. */
export function patchedWasmKernels(): string[] {
  return [...added];
}
