// Slot: a named 2-D view of one weight of a tfjs LayersModel (docs/DESIGN.md §2 "Slots and slices").
// A dense kernel [in, out] is viewed as is; a conv kernel [kh, kw, cin, cout] (or conv1d
// [k, cin, cout]) as [kh·kw·cin, cout] by a plain row-major reshape; an embedding table
// [vocab, dim] as is. One slot per layer, named by the layer.
import * as tf from '@tensorflow/tfjs';

export type SlotKind = 'dense' | 'conv1d' | 'conv2d' | 'conv3d' | 'conv2dTranspose' | 'embedding' | 'other';

export interface SlotInfo {
  /** Layer name; the slot's name. */
  layer: string;
  kind: SlotKind;
  /** The layer's class name (e.g. 'Dense', 'Conv2D', 'LSTM'), for kind 'other'. */
  className: string;
  /** Shape of the underlying weight variable. */
  kernelShape: number[];
  /** The 2-D view [rows, cols]: rows = product of all but the last axis, cols = the last axis. */
  shape: [number, number];
}

const KINDS: Record<string, SlotKind> = {
  Dense: 'dense',
  Conv1D: 'conv1d',
  Conv2D: 'conv2d',
  Conv3D: 'conv3d',
  Conv2DTranspose: 'conv2dTranspose',
  Embedding: 'embedding',
};

/** Weight names (the last segment of a layer variable's name) that can back a slot. */
const SLOT_WEIGHTS = ['kernel', 'embeddings'];

/** [rows, cols] of the 2-D view of a weight of rank ≥ 2. */
export function slotShapeOf(kernelShape: readonly number[]): [number, number] {
  if (kernelShape.length < 2) throw new Error(`a weight of rank ${kernelShape.length} cannot be a slot (rank ≥ 2 needed)`);
  const cols = kernelShape[kernelShape.length - 1];
  // loops, not closures: this runs every cycle, and tsx (keepNames) wraps each closure it makes
  let rows = 1;
  for (let i = 0; i < kernelShape.length - 1; i++) rows *= kernelShape[i];
  return [rows, cols];
}

interface Found {
  info: SlotInfo;
  variable: tf.Variable;
}

/**
 * The layer's own kernel/embeddings weight. Matching "<layer name>/kernel" exactly keeps
 * wrappers and nested models (whose weights belong to inner layers) out, and leaves LSTM's
 * recurrent_kernel and a separable conv's depthwise/pointwise kernels alone.
 */
function findSlot(layer: tf.layers.Layer): Found | undefined {
  for (const w of layer.weights) {
    const parts = w.originalName.split('/');
    const last = parts[parts.length - 1];
    if (parts.length < 2 || parts[parts.length - 2] !== layer.name || !SLOT_WEIGHTS.includes(last)) continue;
    if (w.shape.length < 2) continue;
    const variable = w.read();
    if (!(variable instanceof tf.Variable)) {
      throw new Error(`layer "${layer.name}": weight ${w.originalName} is not backed by a tf.Variable`);
    }
    const className = layer.getClassName();
    const kernelShape = [...w.shape] as number[];
    return {
      info: { layer: layer.name, kind: KINDS[className] ?? 'other', className, kernelShape, shape: slotShapeOf(kernelShape) },
      variable,
    };
  }
  return undefined;
}

/** Every layer of the model that has a kernel or embeddings weight of rank ≥ 2, in layer order. */
export function listSlots(model: tf.LayersModel): SlotInfo[] {
  const out: SlotInfo[] = [];
  for (const layer of model.layers) {
    const found = findSlot(layer);
    if (found) out.push(found.info);
  }
  return out;
}

function resolve(model: tf.LayersModel, layer: string): Found {
  let l: tf.layers.Layer | undefined;
  for (const x of model.layers) {
    if (x.name === layer) {
      l = x;
      break;
    }
  }
  const found = l ? findSlot(l) : undefined;
  if (!found) {
    const available = listSlots(model).map((s) => `${s.layer} [${s.shape.join('×')}]`);
    const why = l ? `layer "${layer}" (${l.getClassName()}) has no kernel or embeddings weight` : `model has no layer "${layer}"`;
    throw new Error(`${why}; available slots: ${available.length ? available.join(', ') : '(none)'}`);
  }
  return found;
}

export function slotInfo(model: tf.LayersModel, layer: string): SlotInfo {
  return resolve(model, layer).info;
}

/**
 * The tf.Variable the model trains for this slot (kernel-shaped, not 2-D). Optimisers and
 * model.setWeights assign into this same object, so it stays valid for the model's lifetime.
 * Not owned by the caller: do not dispose it.
 */
export function slotVariable(model: tf.LayersModel, layer: string): tf.Variable {
  return resolve(model, layer).variable;
}

/** A snapshot of the slot as [rows, cols]. The caller owns the returned tensor. */
export function readSlot(model: tf.LayersModel, layer: string): tf.Tensor2D {
  const { info, variable } = resolve(model, layer);
  // one op, no intermediate tensor: no tidy (nor its closure) needed
  return tf.reshape(variable, info.shape) as tf.Tensor2D;
}

/**
 * Write a [rows, cols] tensor into the slot (reshaped back to the kernel's shape). The model's
 * next prediction uses it. The caller keeps ownership of w2d (disposing it later is safe).
 */
export function writeSlot(model: tf.LayersModel, layer: string, w2d: tf.Tensor2D): void {
  const { info, variable } = resolve(model, layer);
  if (w2d.rank !== 2 || w2d.shape[0] !== info.shape[0] || w2d.shape[1] !== info.shape[1]) {
    throw new Error(
      `writeSlot "${layer}": expected shape [${info.shape.join(', ')}] (kernel [${info.kernelShape.join(', ')}]), got [${w2d.shape.join(', ')}]`,
    );
  }
  if (w2d.dtype !== variable.dtype) {
    throw new Error(`writeSlot "${layer}": expected dtype ${variable.dtype}, got ${w2d.dtype}`);
  }
  tf.tidy(() => variable.assign(tf.reshape(w2d, info.kernelShape)));
}
