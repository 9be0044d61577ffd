// Checkpoint of one adapter and its optimiser: format version, config, every weight, the AdamW
// moments and step count, as one MessagePack message of float32 wire tensors (bit-exact).
// Loading validates everything with zod before it allocates a tensor, and every failure names the field.
import { z } from 'zod';
import { CodecError, decodeMessage, encodeMessage, tensorToWire, wireToFloat32, type SizeLimit } from '../../shared/codec/tensor-codec.js';
import { AdamW } from './adamw.js';
import { type AdapterConfig, adapterConfigSchema } from './config.js';
import { LpkaAdapter, lpkaParamSpecs } from './lpka.js';

export const ADAPTER_STATE_FORMAT = 'mergenet-fed/adapter-state';
export const ADAPTER_STATE_VERSION = 1;

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

// ---- decoding: zod schemas, in three stages (identity, header, tensors), so a state of another
// format is refused before its config is read, and the tensors are read against the shapes their
// config implies. Every issue is reported as one readable line naming the field.

const identitySchema = z.object(
  {
    format: z.literal(ADAPTER_STATE_FORMAT, { error: (iss) => `format is ${JSON.stringify(iss.input)}, expected "${ADAPTER_STATE_FORMAT}"` }),
    version: z.literal(ADAPTER_STATE_VERSION, {
      error: (iss) => `unsupported format version ${JSON.stringify(iss.input) ?? 'undefined'} (this build reads version ${ADAPTER_STATE_VERSION})`,
    }),
  },
  { error: 'expected a map at the top level' },
);

const headerSchema = z.object({
  config: adapterConfigSchema,
  optimizer: z.object(
    {
      step: z.number({ error: (iss) => `optimizer.step must be a non-negative integer, got ${JSON.stringify(iss.input)}` }).refine(
        (n) => Number.isSafeInteger(n) && n >= 0,
        { error: (iss) => `optimizer.step must be a non-negative integer, got ${JSON.stringify(iss.input)}` },
      ),
      m: z.unknown(),
      v: z.unknown(),
    },
    { error: 'optimizer must be a map with step, m and v' },
  ),
  weights: z.unknown(),
});

/** Exactly the tensors `specs` names, each float32 of its spec's shape, decoded to a Float32Array. */
function tensorMapSchema(field: string, specs: { name: string; shape: number[] }[]) {
  const entries = specs.map(({ name, shape }) => [
    name,
    z.unknown().transform((v, ctx) => {
      if (v === undefined) {
        ctx.addIssue({ code: 'custom', message: `${field} lacks "${name}"` });
        return z.NEVER;
      }
      try {
        return wireToFloat32(v, { name: `${field}["${name}"]`, shape }).values;
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
  ]);
  return z.strictObject(Object.fromEntries(entries) as Record<string, z.ZodType<Float32Array>>, {
    error: (iss) =>
      iss.code === 'unrecognized_keys' ? `${field} has an unexpected entry ${iss.keys.map((k) => JSON.stringify(k)).join(', ')}` : `${field} must be a map of tensors`,
  });
}

/** Parse with `schema`, or throw a CodecError whose message lists every issue ("adapter state: …"). */
function parseState<T extends z.ZodType>(schema: T, value: unknown): z.output<T> {
  const res = schema.safeParse(value);
  if (res.success) return res.data;
  const lines = res.error.issues.map((i) =>
    // The config schema's messages name the field; say it is the config they are about.
    i.path[0] === 'config' ? `invalid adapter config: ${i.path.slice(1).join('.') || '(config)'}: ${i.message}` : i.message,
  );
  throw new CodecError('malformed', `adapter state: ${lines.join('; ')}`);
}

/** Inverse of serializeAdapterState. The caller owns (and disposes) the returned adapter and optimiser. */
export function deserializeAdapterState(bytes: Uint8Array, limit: SizeLimit = {}): { adapter: LpkaAdapter; opt: AdamW } {
  const msg = decodeMessage(bytes, limit);
  parseState(identitySchema, msg);
  const { config, optimizer } = parseState(headerSchema, msg);
  const specs = lpkaParamSpecs(config);
  const tensors = parseState(
    z.object({ weights: tensorMapSchema('weights', specs), m: tensorMapSchema('optimizer.m', specs), v: tensorMapSchema('optimizer.v', specs) }),
    { weights: (msg as { weights: unknown }).weights, m: optimizer.m, v: optimizer.v },
  );
  const map = (r: Record<string, Float32Array>) => new Map(Object.entries(r));

  const adapter = new LpkaAdapter(config);
  let opt: AdamW | undefined;
  try {
    for (const [name, values] of Object.entries(tensors.weights)) adapter.params.get(name)!.set(values);
    opt = new AdamW(adapter.namedParams(), config);
    opt.importState({ step: optimizer.step, m: map(tensors.m), v: map(tensors.v) });
    return { adapter, opt };
  } catch (err) {
    opt?.dispose();
    adapter.dispose();
    throw err;
  }
}
