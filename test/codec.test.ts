// The wire/disk codec: bit-exact float32 round trips, unaligned receive buffers, and a typed
// CodecError for every kind of bad input.
import { Packr, Unpackr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  CodecError,
  type CodecErrorCode,
  DEFAULT_MAX_BYTES,
  decodeMessage,
  encodeMessage,
  tensorToWire,
  wireToFloat32,
  type WireTensor,
} from '../shared/codec/tensor-codec.js';

/** Float32Array holding exactly these bit patterns. */
function fromBits(bits: number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits).buffer);
}

function bitsOf(f: Float32Array): number[] {
  return Array.from(new Uint32Array(f.buffer, f.byteOffset, f.length));
}

/** Run fn, expect a CodecError with this code, and return its message. */
function codecError(fn: () => unknown, code: CodecErrorCode): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CodecError);
    expect((err as CodecError).code).toBe(code);
    expect((err as CodecError).name).toBe('CodecError');
    return (err as CodecError).message;
  }
  throw new Error(`expected a CodecError '${code}', but nothing was thrown`);
}

/** encode → decode → validate, as a message crosses the wire. */
function roundTrip(values: Float32Array, shape: number[], finite = true) {
  const bytes = encodeMessage({ kind: 'slice', t: tensorToWire(values, shape) });
  const msg = decodeMessage(bytes) as { kind: string; t: unknown };
  expect(msg.kind).toBe('slice');
  return wireToFloat32(msg.t, { name: 'slice.A', shape, finite });
}

const SPECIAL_FINITE_BITS = [
  0x00000000, // +0
  0x80000000, // −0
  0x00000001, // smallest subnormal
  0x807fffff, // largest subnormal, negative
  0x00800000, // smallest normal
  0x7f7fffff, // largest float
  0xff7fffff, // most negative float
  0x3f800000, // 1
  0x3eaaaaab, // 1/3 rounded
  0x40490fdb, // π
];

describe('round trip', () => {
  it('is bit-exact for −0, subnormals, max/min float and ordinary values', () => {
    const values = fromBits(SPECIAL_FINITE_BITS);
    const out = roundTrip(values, [2, 5]);
    expect(out.shape).toEqual([2, 5]);
    expect(bitsOf(out.values)).toEqual(SPECIAL_FINITE_BITS);
    expect(Object.is(out.values[1], -0)).toBe(true);
  });

  it('keeps NaN payloads and ±Inf bit for bit when finite:false', () => {
    const bits = [0x7fc00000, 0x7fc00001, 0x7f800001 /* signalling */, 0xffc12345, 0x7fffffff, 0x7f800000, 0xff800000, 0x80000000];
    const out = roundTrip(fromBits(bits), [8], false);
    expect(bitsOf(out.values)).toEqual(bits);
  });

  it('is bit-exact for 100k random finite bit patterns, rank 1 to 4', () => {
    let s = 12345;
    const bits: number[] = [];
    while (bits.length < 100_000) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      if ((s & 0x7f800000) !== 0x7f800000) bits.push(s); // skip NaN/Inf exponents
    }
    for (const shape of [[100_000], [400, 250], [10, 100, 100], [10, 10, 25, 40]]) {
      expect(bitsOf(roundTrip(fromBits(bits), shape).values)).toEqual(bits);
    }
  });

  it('returns a fresh aligned array that does not alias the wire bytes', () => {
    const wire = tensorToWire(new Float32Array([1, 2, 3]), [3]);
    const { values } = wireToFloat32(wire);
    expect(values.byteOffset).toBe(0);
    wire.data.fill(0);
    expect(Array.from(values)).toEqual([1, 2, 3]);
  });

  it('tensorToWire copies, so the caller may reuse its array, and takes subarray views', () => {
    const base = new Float32Array([9, 1, 2, 9]);
    const wire = tensorToWire(base.subarray(1, 3), [2]);
    base.fill(7);
    expect(Array.from(wireToFloat32(wire).values)).toEqual([1, 2]);
    expect(codecError(() => tensorToWire(new Float32Array(5), [2, 3]), 'shape_mismatch')).toMatch(/5 values.*\[2, 3\]/);
  });

  it('sends data as a standard MessagePack bin (readable by any library), not an msgpackr extension', () => {
    const bytes = encodeMessage({ data: tensorToWire(new Float32Array([1.5, -2]), [2]).data });
    // fixmap/map16 header, then the key "data" as a fixstr, then the value's type byte.
    const key = Buffer.from([0xa4, ...Buffer.from('data')]);
    const at = bytes.indexOf(key);
    expect(at).toBeGreaterThan(-1);
    expect(bytes[at + key.length]).toBe(0xc4); // bin 8
    expect(bytes[at + key.length + 1]).toBe(8); // 8 bytes
  });

  it('decodes from a Buffer, a plain Uint8Array and an ArrayBuffer alike', () => {
    const bytes = encodeMessage({ t: tensorToWire(new Float32Array([0.5, 0.25]), [2]) });
    const u8 = new Uint8Array(bytes); // a copy, not a Buffer
    const ab = u8.slice().buffer;
    for (const input of [bytes, u8, ab]) {
      const msg = decodeMessage(input) as { t: WireTensor };
      expect(Array.from(wireToFloat32(msg.t).values)).toEqual([0.5, 0.25]);
    }
  });

  it('an encoded message stays intact after many later encodes (msgpackr reuses its buffer)', () => {
    const first = encodeMessage({ t: tensorToWire(new Float32Array([1, 2, 3, 4]), [4]) });
    const snapshot = Buffer.from(first);
    for (let i = 0; i < 3000; i++) encodeMessage({ i, filler: Buffer.alloc(1000, i & 0xff) });
    expect(Buffer.compare(first, snapshot)).toBe(0);
  });

  it('does not let a "__proto__" key change the decoded object\'s prototype', () => {
    const hostile = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as object;
    const msg = decodeMessage(encodeMessage(hostile)) as Record<string, unknown>;
    expect(Object.getPrototypeOf(msg)).toBe(Object.prototype);
    expect(msg.polluted).toBeUndefined();
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(msg.a).toBe(1);
  });
});

describe('unaligned receive buffers', () => {
  it('a message inside a larger Buffer at byte offset 1 decodes right', () => {
    const values = fromBits([...SPECIAL_FINITE_BITS, 0x3f000000, 0xc0000000]);
    const bytes = encodeMessage({ t: tensorToWire(values, [3, 4]) });
    const frame = Buffer.alloc(bytes.length + 3, 0xee); // socket frame with a 1-byte header
    bytes.copy(frame, 1);
    const received = frame.subarray(1, 1 + bytes.length);
    expect(received.byteOffset % 4).not.toBe(0);
    const msg = decodeMessage(received) as { t: WireTensor };
    // The bin is a view into the frame (no copy by msgpackr), at an offset that is not a multiple
    // of 4, so a Float32Array view of it would throw; the codec copies instead.
    expect(msg.t.data.buffer).toBe(frame.buffer);
    expect(msg.t.data.byteOffset % 4).not.toBe(0);
    expect(() => new Float32Array(msg.t.data.buffer, msg.t.data.byteOffset, 12)).toThrow(RangeError);
    expect(bitsOf(wireToFloat32(msg.t, { shape: [3, 4] }).values)).toEqual(bitsOf(values));
  });

  it('every offset 0..7 gives the same values', () => {
    const values = new Float32Array([1.25, -3.5, 1e-30, 6.02e23, -0]);
    const bytes = encodeMessage({ t: tensorToWire(values, [5]) });
    for (let off = 0; off < 8; off++) {
      const frame = Buffer.alloc(bytes.length + off);
      bytes.copy(frame, off);
      const msg = decodeMessage(frame.subarray(off)) as { t: WireTensor };
      expect(bitsOf(wireToFloat32(msg.t).values)).toEqual(bitsOf(values));
    }
  });
});

describe("why the codec exists: msgpackr's default Packr", () => {
  it('does not round-trip a Float32Array: a receiver reading it as floats gets wrong values', () => {
    const sent = new Float32Array([1.5, 2.25, -3.75, 1e10]);
    const back = new Unpackr().unpack(new Packr().pack({ v: sent })) as { v: unknown };
    // The type is lost on the way: what arrives is a byte array, not a Float32Array.
    expect(back.v).not.toBeInstanceOf(Float32Array);
    expect(back.v).toBeInstanceOf(Uint8Array);
    // The natural receiver code converts element by element: one float per byte. (Older msgpackr
    // versions lost the values already when packing, writing one byte per float; either way the
    // floats that arrive are not the floats that were sent.)
    const received = new Float32Array(back.v as Uint8Array);
    expect(received.length).not.toBe(sent.length);
    expect(Array.from(received.subarray(0, 4))).not.toEqual(Array.from(sent));
    // The codec's path delivers exactly what was sent.
    const ok = decodeMessage(encodeMessage({ v: tensorToWire(sent, [4]) })) as { v: WireTensor };
    expect(Array.from(wireToFloat32(ok.v).values)).toEqual(Array.from(sent));
  });
});

describe('malformed input → CodecError "malformed"', () => {
  const good = encodeMessage({ kind: 'slice', t: tensorToWire(new Float32Array(16).fill(0.5), [4, 4]) });

  it('random garbage', () => {
    let s = 99;
    for (let trial = 0; trial < 50; trial++) {
      const junk = Buffer.alloc(64);
      for (let i = 0; i < junk.length; i++) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        junk[i] = s >>> 24;
      }
      const msg = codecError(() => decodeMessage(junk), 'malformed');
      expect(msg).toMatch(/MessagePack/);
    }
  });

  it('a truncated message, cut anywhere', () => {
    for (const cut of [1, 2, 5, good.length >> 1, good.length - 1]) {
      const msg = codecError(() => decodeMessage(good.subarray(0, cut)), 'malformed');
      expect(msg).toMatch(/not valid MessagePack/);
    }
  });

  it('trailing bytes after a complete message', () => {
    expect(codecError(() => decodeMessage(Buffer.concat([good, Buffer.from([0x00])])), 'malformed'))
      .toMatch(/expected one MessagePack value, found 2/);
    // a trailing byte that starts an incomplete value
    codecError(() => decodeMessage(Buffer.concat([good, Buffer.from([0xdc])])), 'malformed');
    // two complete messages back to back
    codecError(() => decodeMessage(Buffer.concat([good, good])), 'malformed');
  });

  it('an empty payload', () => {
    expect(codecError(() => decodeMessage(Buffer.alloc(0)), 'malformed')).toMatch(/empty/);
    expect(codecError(() => decodeMessage(new ArrayBuffer(0)), 'malformed')).toMatch(/empty/);
  });

  it('non-binary input names what it got', () => {
    const cases: [unknown, RegExp][] = [
      ['a string', /got string/],
      [42, /got number/],
      [null, /got null/],
      [undefined, /got undefined/],
      [[1, 2, 3], /got an array/],
      [{ data: good }, /got object/],
      [new Float32Array(4), /got object/],
    ];
    for (const [input, re] of cases) {
      const msg = codecError(() => decodeMessage(input), 'malformed');
      expect(msg).toMatch(/expected a binary payload/);
      expect(msg).toMatch(re);
    }
  });
});

describe('size limits → CodecError "oversize"', () => {
  it('on encode, with the limit and the size in the message', () => {
    const value = { blob: Buffer.alloc(1000) };
    expect(encodeMessage(value, { maxBytes: 2000 }).byteLength).toBeGreaterThan(1000);
    const msg = codecError(() => encodeMessage(value, { maxBytes: 1000 }), 'oversize');
    expect(msg).toMatch(/limit of 1000/);
    expect(msg).toMatch(/\d{4} bytes/);
  });

  it('on decode, checked before parsing', () => {
    const bytes = encodeMessage({ blob: Buffer.alloc(1000) });
    expect(codecError(() => decodeMessage(bytes, { maxBytes: 999 }), 'oversize')).toMatch(/limit of 999/);
    // Garbage that is too large is reported as oversize, not malformed: the size check comes first.
    codecError(() => decodeMessage(Buffer.alloc(2000, 0xc1), { maxBytes: 1000 }), 'oversize');
    expect(decodeMessage(bytes, { maxBytes: bytes.length })).toBeTruthy();
  });

  it('the default limit is 64 MiB, on both sides', () => {
    expect(DEFAULT_MAX_BYTES).toBe(64 * 1024 * 1024);
    codecError(() => decodeMessage(Buffer.alloc(DEFAULT_MAX_BYTES + 1)), 'oversize');
    codecError(() => encodeMessage({ blob: Buffer.alloc(DEFAULT_MAX_BYTES) }), 'oversize');
  });
});

describe('bad tensors → CodecError "bad_tensor"', () => {
  const data = (n: number) => Buffer.alloc(4 * n);

  it('not an object', () => {
    for (const w of [null, 42, 'x', [1, 2]]) {
      expect(codecError(() => wireToFloat32(w, { name: 'slice.A' }), 'bad_tensor')).toMatch(/^slice\.A: expected \{dtype, shape, data\}/);
    }
  });

  it('wrong dtype', () => {
    for (const dtype of ['float64', 'int32', undefined, 1]) {
      const msg = codecError(() => wireToFloat32({ dtype, shape: [2], data: data(2) }, { name: 'w' }), 'bad_tensor');
      expect(msg).toMatch(/^w: dtype must be "float32"/);
    }
  });

  it('bad shapes', () => {
    const shapes: unknown[] = [[], [0], [-1], [1.5], [2, 'x'], [1, 1, 1, 1, 1], '4', undefined, [2 ** 25]];
    for (const shape of shapes) {
      const msg = codecError(() => wireToFloat32({ dtype: 'float32', shape, data: data(4) }, { name: 'slice.B' }), 'bad_tensor');
      expect(msg).toMatch(/^slice\.B: shape must be 1 to 4 positive integers/);
    }
  });

  it('data that is not binary', () => {
    for (const d of [[0, 0, 0, 0, 0, 0, 0, 0], 'abcdefgh', undefined]) {
      expect(codecError(() => wireToFloat32({ dtype: 'float32', shape: [2], data: d }), 'bad_tensor')).toMatch(/data must be binary/);
    }
  });

  it('byte count that does not match the shape', () => {
    for (const n of [0, 7, 9, 12]) {
      const msg = codecError(() => wireToFloat32({ dtype: 'float32', shape: [2, 1], data: Buffer.alloc(n) }, { name: 'g' }), 'bad_tensor');
      expect(msg).toBe(`g: data has ${n} bytes, shape [2, 1] needs 8`);
    }
  });

  it('survive the wire: a decoded message with a bad tensor fails the same way', () => {
    const bytes = encodeMessage({ t: { dtype: 'float32', shape: [3], data: Buffer.alloc(8) } });
    const msg = decodeMessage(bytes) as { t: unknown };
    expect(codecError(() => wireToFloat32(msg.t, { name: 'feedback.gA' }), 'bad_tensor')).toMatch(/^feedback\.gA: data has 8 bytes/);
  });
});

describe('expected shape → CodecError "shape_mismatch"', () => {
  const wire = tensorToWire(new Float32Array(12), [3, 4]);

  it('names the tensor, the actual and the expected shape', () => {
    const msg = codecError(() => wireToFloat32(wire, { name: 'transfer.A', shape: [4, 3] }), 'shape_mismatch');
    expect(msg).toBe('transfer.A: shape [3, 4] does not match the expected [4, 3]');
  });

  it('rank mismatch, and -1 as a wildcard', () => {
    codecError(() => wireToFloat32(wire, { name: 'x', shape: [12] }), 'shape_mismatch');
    codecError(() => wireToFloat32(wire, { name: 'x', shape: [3, 4, 1] }), 'shape_mismatch');
    expect(codecError(() => wireToFloat32(wire, { name: 'x', shape: [-1, 5] }), 'shape_mismatch')).toMatch(/expected \[\*, 5\]/);
    expect(wireToFloat32(wire, { shape: [-1, 4] }).shape).toEqual([3, 4]);
    expect(wireToFloat32(wire, { shape: [3, -1] }).shape).toEqual([3, 4]);
  });
});

describe('NaN / Inf → CodecError "non_finite"', () => {
  it('names the tensor and the index of the first bad element', () => {
    const cases: [number, number, RegExp][] = [
      [3, NaN, /element 3 is NaN/],
      [0, Infinity, /element 0 is Infinity/],
      [11, -Infinity, /element 11 is -Infinity/],
    ];
    for (const [index, bad, re] of cases) {
      const v = new Float32Array(12).fill(1);
      v[index] = bad;
      const msg = codecError(() => roundTrip(v, [3, 4]), 'non_finite');
      expect(msg).toMatch(/^slice\.A: /);
      expect(msg).toMatch(re);
    }
  });

  it('a NaN with a payload is still NaN; finite is the default', () => {
    const v = fromBits([0x3f800000, 0x7fc12345]);
    const wire = tensorToWire(v, [2]);
    expect(codecError(() => wireToFloat32(wire), 'non_finite')).toMatch(/^tensor: element 1 is NaN/);
    expect(bitsOf(wireToFloat32(wire, { finite: false }).values)).toEqual([0x3f800000, 0x7fc12345]);
  });
});

describe('reserved MessagePack bytes', () => {
  it('rejects 0xc1 and empty fixext as malformed, at the top level and nested', async () => {
    const { decodeMessage, CodecError } = await import('../shared/codec/tensor-codec.js');
    for (const bytes of [[0xc1], [0xd4, 0, 0], [0x81, 0xa1, 0x61, 0xc1], [0x91, 0xc1]]) {
      let err: unknown;
      try {
        decodeMessage(Buffer.from(bytes));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CodecError);
      expect((err as InstanceType<typeof CodecError>).code).toBe('malformed');
    }
  });
});

describe('nesting depth', () => {
  it('rejects a message nested deeper than 32 levels as malformed (a 0xc1 cannot hide below the check)', async () => {
    const { decodeMessage, encodeMessage, CodecError } = await import('../shared/codec/tensor-codec.js');
    let deep: unknown = 1;
    for (let i = 0; i < 40; i++) deep = [deep];
    let err: unknown;
    try {
      decodeMessage(encodeMessage(deep));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CodecError);
    expect((err as InstanceType<typeof CodecError>).code).toBe('malformed');
    let ok: unknown = 1;
    for (let i = 0; i < 10; i++) ok = [ok];
    expect(decodeMessage(encodeMessage(ok))).toEqual(ok);
  });
});
