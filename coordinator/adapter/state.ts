// Checkpoint of one adapter and its optimiser: format version, config, every weight, the AdamW
// moments and step count, as one MessagePack message of float32 wire tensors (bit-exact).
// Loading validates everything before it allocates a tensor, and every failure names the field.
import { CodecError, decodeMessage, encodeMessage, tensorToWire, wireToFloat32, type SizeLimit } from '../../shared/codec/tensor-codec.js';
import { AdamW } from './adamw.js';
import { type AdapterConfig, parseAdapterConfig } from './config.js';
import { LpkaAdapter, lpkaParamSpecs } from './lpka.js';

export const ADAPTER_STATE_FORMAT = 'mergenet-fed/adapter-state';
export const ADAPTER_STATE_VERSION = 1;

function fail(message: string): never {
  throw new CodecError('malformed', `adapter state: ${message}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function wireMap(values: Map<string, Float32Array>, shapeOf: (name: string) => number[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, arr] of values) out[name] = tensorToWire(arr, shapeOf(name));
  return out;
}

/** Serialize adapter weights, optimiser moments and step. The optimiser's hyperparameters are saved. */
export function serializeAdapterState(adapter: LpkaAdapter, opt: AdamW, limit: SizeLimit = {}): Uint8Array {
  if (adapter.isDisposed) throw new Error('serializeAdapterState: adapter has been disposed');
  const config: AdapterConfig = { ...adapter.config, ...opt.config };
  const shapeOf = (name: string): number[] => {
    const s = adapter.paramShape(name);
    if (!s) throw new Error(`serializeAdapterState: optimiser parameter ${name} is not an adapter parameter`);
    return s;
  };
  const st = opt.exportState();
  return encodeMessage(
    {
      format: ADAPTER_STATE_FORMAT,
      version: ADAPTER_STATE_VERSION,
      config,
      weights: wireMap(adapter.exportWeights(), shapeOf),
      optimizer: { step: st.step, m: wireMap(st.m, shapeOf), v: wireMap(st.v, shapeOf) },
    },
    limit,
  );
}

/** Read exactly the expected tensors of `field`, rejecting missing, extra and ill-shaped ones. */
function readTensors(field: string, raw: unknown, specs: { name: string; shape: number[] }[]): Map<string, Float32Array> {
  if (!isRecord(raw)) fail(`${field} must be a map of tensors`);
  const expected = new Set(specs.map((s) => s.name));
  for (const key of Object.keys(raw)) {
    if (!expected.has(key)) fail(`${field} has an unexpected entry "${key}"`);
  }
  const out = new Map<string, Float32Array>();
  for (const { name, shape } of specs) {
    if (!Object.hasOwn(raw, name)) fail(`${field} lacks "${name}"`);
    const { values } = wireToFloat32(raw[name], { name: `adapter state: ${field}["${name}"]`, shape });
    out.set(name, values);
  }
  return out;
}

/** Inverse of serializeAdapterState. The caller owns (and disposes) the returned adapter and optimiser. */
export function deserializeAdapterState(bytes: Uint8Array, limit: SizeLimit = {}): { adapter: LpkaAdapter; opt: AdamW } {
  const msg = decodeMessage(bytes, limit);
  if (!isRecord(msg)) fail('expected a map at the top level');
  if (msg.format !== ADAPTER_STATE_FORMAT) fail(`format is ${JSON.stringify(msg.format)}, expected "${ADAPTER_STATE_FORMAT}"`);
  if (msg.version !== ADAPTER_STATE_VERSION) {
    fail(`unsupported format version ${JSON.stringify(msg.version)} (this build reads version ${ADAPTER_STATE_VERSION})`);
  }
  let config: AdapterConfig;
  try {
    config = parseAdapterConfig(msg.config);
  } catch (err) {
    fail((err as Error).message);
  }
  const specs = lpkaParamSpecs(config);
  const weights = readTensors('weights', msg.weights, specs);
  const o = msg.optimizer;
  if (!isRecord(o)) fail('optimizer must be a map with step, m and v');
  if (typeof o.step !== 'number' || !Number.isSafeInteger(o.step) || o.step < 0) {
    fail(`optimizer.step must be a non-negative integer, got ${JSON.stringify(o.step)}`);
  }
  const m = readTensors('optimizer.m', o.m, specs);
  const v = readTensors('optimizer.v', o.v, specs);

  const adapter = new LpkaAdapter(config);
  let opt: AdamW | undefined;
  try {
    for (const [name, values] of weights) adapter.params.get(name)!.set(values);
    opt = new AdamW(adapter.namedParams(), config);
    opt.importState({ step: o.step, m, v });
    return { adapter, opt };
  } catch (err) {
    opt?.dispose();
    adapter.dispose();
    throw err;
  }
}
