// Binary codec for everything that crosses the wire or goes to disk.
//
// Tensors travel as { dtype, shape, data } with `data` a MessagePack `bin` of little-endian float32
// bytes. That is portable (any MessagePack library can read it) and sidesteps msgpackr's default
// Packr, which does not round-trip a Float32Array (msgpackr 2.1.4 sends its bytes as a bare `bin`
// that comes back as a byte array; older versions wrote one byte per element). Received bins can
// sit at unaligned byte offsets inside a socket frame, so they are always copied into a fresh
// Float32Array.
//
// The same module runs in the browser device (no Node built-ins: test/browser-core.test.ts). There
// is no Buffer there: msgpackr then packs a plain Uint8Array as a standard `bin` (its byte-array
// class is Uint8Array) and decodes a `bin` to one, so "binary" means a Buffer in Node and a plain
// Uint8Array in a browser (see isBin).
import { C1, Packr, Unpackr } from 'msgpackr';

/** Node's Buffer where there is one (Node), undefined in a browser. */
const NodeBuffer: typeof Buffer | undefined = (globalThis as { Buffer?: typeof Buffer }).Buffer;

/** Bytes of a MessagePack `bin` as this runtime decodes them: a Buffer in Node, a Uint8Array elsewhere. */
function isBin(v: unknown): v is Uint8Array {
  if (NodeBuffer) return NodeBuffer.isBuffer(v);
  return v instanceof Uint8Array && v.constructor === Uint8Array;
}

/** A zeroed byte array that msgpackr packs as a standard `bin` in this runtime. */
function allocBin(bytes: number): Uint8Array {
  return NodeBuffer ? NodeBuffer.alloc(bytes) : new Uint8Array(bytes);
}

/** A view of `bytes` of the type msgpackr decodes from (no copy). */
function binView(bytes: Uint8Array | ArrayBuffer): Uint8Array {
  if (bytes instanceof ArrayBuffer) return NodeBuffer ? NodeBuffer.from(bytes) : new Uint8Array(bytes);
  if (!NodeBuffer) return bytes;
  return NodeBuffer.isBuffer(bytes) ? bytes : NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function littleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

export type CodecErrorCode = 'oversize' | 'malformed' | 'bad_tensor' | 'shape_mismatch' | 'non_finite';

export class CodecError extends Error {
  constructor(
    readonly code: CodecErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'CodecError';
  }
}

export interface WireTensor {
  dtype: 'float32';
  shape: number[];
  /** little-endian float32 bytes, length 4·prod(shape) */
  data: Uint8Array;
}

/** 64 MiB: far above any slice (r·(m+n) floats), low enough to stop a runaway sender. */
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
/**
 * Nesting levels a message may have (the top-level map is level 0); protocol messages use fewer
 * than 5. A deeper message is `malformed` (docs/PROTOCOL.md §8).
 */
export const MAX_DEPTH = 32;
/** Dimensions above this are certainly a malformed shape, not a model. */
const MAX_DIM = 1 << 24;

if (!littleEndian()) {
  throw new Error('mergenet-fed assumes a little-endian host (float32 bytes are sent as-is)');
}

// useRecords:false keeps plain MessagePack maps, readable by other languages; moreTypes makes a
// stray typed array round-trip correctly instead of being silently corrupted. int64AsType 'auto'
// is the decode boundary for 64-bit ints (uint64/int64, as Go, Java and C++ encoders emit): a value
// that fits a double exactly becomes a number, a larger one stays a bigint, which every schema
// refuses. (msgpackr's cut-off is 2⁵³ itself; the schemas' safe-integer bound removes that one.)
const packr = new Packr({ useRecords: false, moreTypes: true });
const unpackr = new Unpackr({ useRecords: false, moreTypes: true, mapsAsObjects: true,
  // 'auto' is implemented by msgpackr 2.1.4's unpacker, but its type definitions omit it.
  int64AsType: 'auto' as 'bigint' });

export interface SizeLimit {
  maxBytes?: number;
}

/** A Buffer in Node; a plain Uint8Array in a browser (no Buffer there; the type is Node's view). */
export function encodeMessage(value: unknown, opts: SizeLimit = {}): Buffer {
  const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const out = packr.pack(value);
  if (out.byteLength > max) {
    throw new CodecError('oversize', `message is ${out.byteLength} bytes, above the limit of ${max}`);
  }
  return out;
}

export function decodeMessage(bytes: unknown, opts: SizeLimit = {}): unknown {
  const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  // Decoded as a Buffer (a view, no copy), so every MessagePack `bin` comes back as a Buffer and an
  // extension that decodes to a typed array (msgpackr's 0x74) can be told apart from it. (In a
  // browser both are Uint8Arrays; only the coordinator's own messages are decoded there.)
  let buf: Uint8Array;
  if (bytes instanceof Uint8Array || bytes instanceof ArrayBuffer) buf = binView(bytes);
  else throw new CodecError('malformed', `expected a binary payload, got ${describe(bytes)}`);
  if (buf.byteLength > max) {
    throw new CodecError('oversize', `message is ${buf.byteLength} bytes, above the limit of ${max}`);
  }
  if (buf.byteLength === 0) throw new CodecError('malformed', 'empty payload');
  try {
    // unpackMultiple would accept trailing garbage silently; a single unpack of a full buffer
    // throws on truncation, and we check that the whole buffer was consumed.
    const values = unpackr.unpackMultiple(buf) as unknown[];
    if (values.length !== 1) throw new Error(`expected one MessagePack value, found ${values.length}`);
    // 0xc1 ("never used") and empty fixext decode to sentinels rather than throwing
    // (undefined is only refused at the top level: a JS sender's optional fields encode as it)
    if (values[0] === undefined || !plainValue(values[0], 0)) throw new Error('contains the reserved 0xc1 byte, nests deeper than 32 levels, or holds no value');
    return values[0];
  } catch (err) {
    if (err instanceof CodecError) throw err;
    throw new CodecError('malformed', `not valid MessagePack: ${(err as Error).message}`);
  }
}

/** No 0xc1 sentinel anywhere, and no deeper nesting than any protocol message has (so none is missed). */
function plainValue(v: unknown, depth: number): boolean {
  if (v === C1 || depth > MAX_DEPTH) return false;
  if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v)) return true;
  const items = Array.isArray(v) ? v : Object.values(v as Record<string, unknown>);
  return items.every((x) => plainValue(x, depth + 1));
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

/**
 * A short rendering of a received value for an error message. Never throws: extension types decode
 * to bigints, Dates, Sets and the like, on which JSON.stringify throws or says nothing useful.
 */
function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (typeof v === 'bigint') return `${v}n (a bigint: a 64-bit int beyond 2^53, or an extension type)`;
  if (Array.isArray(v)) return `[${v.slice(0, 5).map(show).join(', ')}${v.length > 5 ? ', …' : ''}]`;
  const ctor = (v as object).constructor?.name;
  return ctor && ctor !== 'Object' ? `a ${ctor} (an extension type?)` : typeof v;
}

const TENSOR_KEYS = ['dtype', 'shape', 'data'];

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Wrap float32 values of a given shape for the wire. Copies, so the caller may reuse `values`. */
export function tensorToWire(values: Float32Array, shape: readonly number[]): WireTensor {
  if (values.length !== numel(shape)) {
    throw new CodecError('shape_mismatch', `${values.length} values do not fill shape [${shape.join(', ')}]`);
  }
  // A Buffer, not a plain Uint8Array: with moreTypes, msgpackr packs a plain Uint8Array as its own
  // typed-array extension (ext 0x74), which other MessagePack libraries cannot read; a Buffer is
  // packed as a standard `bin`.
  const data = allocBin(values.byteLength);
  data.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  return { dtype: 'float32', shape: [...shape], data };
}

export interface WireCheck {
  /** Name used in error messages, e.g. "slice.A". */
  name?: string;
  /** Exact expected shape; -1 in a position accepts any size there. */
  shape?: readonly number[];
  /** Reject NaN and ±Inf (default true). */
  finite?: boolean;
}

/**
 * Validate a decoded wire tensor and return its values in a fresh, aligned Float32Array.
 * Every failure names the tensor and the problem.
 */
export function wireToFloat32(w: unknown, check: WireCheck = {}): { values: Float32Array; shape: number[] } {
  const name = check.name ?? 'tensor';
  if (typeof w !== 'object' || w === null || Array.isArray(w)) {
    throw new CodecError('bad_tensor', `${name}: expected {dtype, shape, data}, got ${describe(w)}`);
  }
  const t = w as Record<string, unknown>;
  // Exactly these keys (docs/PROTOCOL.md §2.2): an extra key is an encoder bug, or a future field
  // this version cannot honour.
  const keys = Object.keys(t);
  const extra = keys.filter((k) => !TENSOR_KEYS.includes(k));
  if (extra.length > 0) throw new CodecError('bad_tensor', `${name}: unexpected key(s) ${extra.map(show).join(', ')}; a tensor has exactly dtype, shape and data`);
  const missing = TENSOR_KEYS.filter((k) => !keys.includes(k));
  if (missing.length > 0) throw new CodecError('bad_tensor', `${name}: missing key(s) ${missing.join(', ')}`);
  if (t.dtype !== 'float32') throw new CodecError('bad_tensor', `${name}: dtype must be "float32", got ${show(t.dtype)}`);
  const shape = t.shape;
  if (!Array.isArray(shape) || shape.length === 0 || shape.length > 4 ||
      !shape.every((d) => Number.isInteger(d) && d > 0 && d <= MAX_DIM)) {
    throw new CodecError('bad_tensor', `${name}: shape must be 1 to 4 positive integers, got ${show(shape)}`);
  }
  // A Buffer: what decodeMessage makes of a `bin` and what tensorToWire makes. A plain typed array
  // here came from a MessagePack extension, which the protocol does not allow.
  if (!isBin(t.data)) throw new CodecError('bad_tensor', `${name}: data must be binary (bin), got ${show(t.data)}`);
  const expectedBytes = 4 * numel(shape as number[]);
  if (t.data.byteLength !== expectedBytes) {
    throw new CodecError('bad_tensor', `${name}: data has ${t.data.byteLength} bytes, shape [${shape.join(', ')}] needs ${expectedBytes}`);
  }
  if (check.shape) {
    const want = check.shape;
    const ok = want.length === shape.length && want.every((d, i) => d === -1 || d === shape[i]);
    if (!ok) {
      throw new CodecError('shape_mismatch', `${name}: shape [${shape.join(', ')}] does not match the expected [${want.map((d) => (d === -1 ? '*' : d)).join(', ')}]`);
    }
  }
  // Copy: a received Buffer may start at an offset that is not a multiple of 4.
  const values = new Float32Array(expectedBytes / 4);
  new Uint8Array(values.buffer).set(t.data);
  if (check.finite !== false) {
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        throw new CodecError('non_finite', `${name}: element ${i} is ${values[i]}; only finite values are accepted`);
      }
    }
  }
  return { values, shape: shape as number[] };
}
