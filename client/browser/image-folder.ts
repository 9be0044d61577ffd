/// <reference lib="dom" />
// A person's own images as a device's local data: files picked from disk (a folder per label,
// e.g. digits/3/a.png → label "3"), decoded by the browser, scaled to 28×28 grey levels in [0, 1]
// (light-on-dark like MNIST: a page whose mean is light is inverted), split seeded 80/10/10.
import { seededPermutation, type DeviceData, type Split } from '../data/dataset.js';

export const SIDE = 28;

/** The label of a picked file: the name of the folder it sits in. */
export function labelOf(relativePath: string): string | undefined {
  const parts = relativePath.split('/').filter((p) => p.length > 0);
  return parts.length >= 2 ? parts[parts.length - 2] : undefined;
}

async function pixels(file: File, ctx: CanvasRenderingContext2D): Promise<Float32Array> {
  const bitmap = await createImageBitmap(file);
  try {
    ctx.clearRect(0, 0, SIDE, SIDE);
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, SIDE, SIDE);
    ctx.drawImage(bitmap, 0, 0, SIDE, SIDE);
  } finally {
    bitmap.close();
  }
  const rgba = ctx.getImageData(0, 0, SIDE, SIDE).data;
  const out = new Float32Array(SIDE * SIDE);
  let sum = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = (0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]) / 255;
    sum += out[i];
  }
  if (sum / out.length > 0.5) for (let i = 0; i < out.length; i++) out[i] = 1 - out[i];
  return out;
}

/** DeviceData from picked image files; throws saying what is missing (labels, images, classes). */
export async function imageFolderData(files: readonly File[], seed: number): Promise<DeviceData> {
  const images = files.filter((f) => f.type.startsWith('image/'));
  const labelled = images.map((f) => ({ f, label: labelOf((f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name) }));
  const usable = labelled.filter((x): x is { f: File; label: string } => x.label !== undefined);
  if (usable.length === 0) throw new Error('no image inside a label folder: pick a folder holding one sub-folder per label (e.g. digits/3/a.png)');
  const classNames = [...new Set(usable.map((x) => x.label))].sort();
  if (classNames.length < 2) throw new Error(`only one label folder ("${classNames[0]}"): a classifier needs at least two`);
  if (usable.length < 3) throw new Error(`${usable.length} images: at least 3 are needed (train, val and test)`);
  const canvas = document.createElement('canvas');
  canvas.width = SIDE;
  canvas.height = SIDE;
  const ctx = canvas.getContext('2d', { willReadFrequently: true })!;
  const x = new Float32Array(usable.length * SIDE * SIDE);
  const y = new Int32Array(usable.length);
  for (let i = 0; i < usable.length; i++) {
    x.set(await pixels(usable[i].f, ctx), i * SIDE * SIDE);
    y[i] = classNames.indexOf(usable[i].label);
  }
  const order = seededPermutation(usable.length, seed, 'image-folder');
  const nTest = Math.max(1, Math.round(usable.length * 0.1));
  const nVal = Math.max(1, Math.round(usable.length * 0.1));
  const take = (from: number, count: number): Split => {
    const sx = new Float32Array(count * SIDE * SIDE);
    const sy = new Int32Array(count);
    for (let j = 0; j < count; j++) {
      const i = order[from + j];
      sx.set(x.subarray(i * SIDE * SIDE, (i + 1) * SIDE * SIDE), j * SIDE * SIDE);
      sy[j] = y[i];
    }
    return { x: sx, y: sy, n: count, inputShape: [SIDE * SIDE], numClasses: classNames.length };
  };
  const nTrain = usable.length - nVal - nTest;
  return { train: take(0, nTrain), val: take(nTrain, nVal), test: take(nTrain + nVal, nTest), task: 'images', classNames };
}
