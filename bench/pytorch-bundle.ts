// The files that carry weights, inputs and gradients to the PyTorch reference
// (bench/reference/lpka_torch.py, read_bundle): a JSON manifest and, beside it, every tensor's
// float32 values back to back in one little-endian binary file. Binary so that the reference starts
// from the very bits the TypeScript adapter holds; JSON numbers would round-trip too, but are ~5×
// larger and slower to parse at 960×160.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface BundleTensor {
  name: string;
  shape: number[];
  values: Float32Array | Float64Array;
}

/**
 * Write `<dir>/<stem>.json` (the manifest: `extra` fields plus {data, tensors: [{name, shape,
 * offset}]}, offsets in floats) and `<dir>/<stem>.f32`. Float64 values are rounded to float32.
 * Returns the manifest's path.
 */
export function writeBundle(dir: string, stem: string, tensors: readonly BundleTensor[], extra: Record<string, unknown> = {}): string {
  const total = tensors.reduce((s, t) => s + t.values.length, 0);
  const data = new Float32Array(total);
  const entries: { name: string; shape: number[]; offset: number }[] = [];
  let offset = 0;
  for (const t of tensors) {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (numel !== t.values.length) throw new Error(`bundle: ${t.name} has ${t.values.length} values for shape [${t.shape.join(', ')}]`);
    data.set(t.values, offset);
    entries.push({ name: t.name, shape: t.shape, offset });
    offset += numel;
  }
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('bundle: a big-endian host would need byte swapping');
  const dataFile = `${stem}.f32`;
  writeFileSync(join(dir, dataFile), new Uint8Array(data.buffer));
  const manifest = join(dir, `${stem}.json`);
  writeFileSync(manifest, JSON.stringify({ ...extra, data: dataFile, tensors: entries }));
  return manifest;
}
