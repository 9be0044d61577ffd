// Adapter checkpoints: bit-exact round trip of weights, moments and step; the restored adapter
// computes the same forward and the same next update; malformed inputs are rejected by name.
import * as tf from '@tensorflow/tfjs';
import seedrandom from 'seedrandom';
import { beforeAll, describe, expect, it } from 'vitest';
import { defaultAdapterConfig } from '../coordinator/adapter/config.js';
import { ADAPTER_STATE_VERSION, deserializeAdapterState, serializeAdapterState } from '../coordinator/adapter/state.js';
import { AdapterWithOptimizer } from '../coordinator/adapter/update.js';
import { CodecError, decodeMessage, encodeMessage, tensorToWire } from '../shared/codec/tensor-codec.js';
import type { LowRank } from '../shared/math/low-rank.js';
import { initBackend } from '../shared/tf/backend.js';
import { bitsOf, bitsOfMap, randn, randnFactors } from './helpers/tensors.js';

beforeAll(async () => {
  await initBackend();
});

describe('adapter state', () => {
  const cfg = defaultAdapterConfig(4, { heads: 2, attnDim: 8, ffnDim: 12, lr: 3e-3, weightDecay: 0.02, clipNorm: 7, seed: 21 });
  let input: { target: LowRank; source: LowRank };
  let up1: { gA: tf.Tensor2D; gB: tf.Tensor2D };
  let up2: { gA: tf.Tensor2D; gB: tf.Tensor2D };
  beforeAll(() => {
    const rng = seedrandom('state');
    input = { target: randnFactors(rng, 9, 4, 6), source: randnFactors(rng, 7, 4, 5) };
    up1 = { gA: randn(rng, [9, 4]), gB: randn(rng, [4, 6]) };
    up2 = { gA: randn(rng, [9, 4]), gB: randn(rng, [4, 6]) };
  });

  function trained(): AdapterWithOptimizer {
    const aw = AdapterWithOptimizer.create(cfg);
    for (let i = 0; i < 3; i++) aw.update(input, up1);
    return aw;
  }

  it('round-trips bit for bit and continues identically', () => {
    const aw = trained();
    const bytes = serializeAdapterState(aw.adapter, aw.opt);
    const { adapter, opt } = deserializeAdapterState(bytes);
    const back = new AdapterWithOptimizer(adapter, opt);
    expect(back.config).toEqual(aw.config);
    expect(bitsOfMap(back.adapter.exportWeights())).toEqual(bitsOfMap(aw.adapter.exportWeights()));
    const s0 = aw.opt.exportState();
    const s1 = back.opt.exportState();
    expect(s1.step).toBe(3);
    expect(bitsOfMap(s1.m)).toEqual(bitsOfMap(s0.m));
    expect(bitsOfMap(s1.v)).toEqual(bitsOfMap(s0.v));
    // a second serialization is byte-identical
    expect(Buffer.from(serializeAdapterState(back.adapter, back.opt)).equals(Buffer.from(bytes))).toBe(true);

    const o0 = aw.forward(input.target, input.source);
    const o1 = back.forward(input.target, input.source);
    expect(bitsOf(o1.A)).toEqual(bitsOf(o0.A));
    expect(bitsOf(o1.B)).toEqual(bitsOf(o0.B));
    // output is not the identity any more, so the comparison above is not vacuous
    expect(tf.max(tf.abs(tf.sub(o0.A, input.target.A))).dataSync()[0]).toBeGreaterThan(0);
    tf.dispose([o0.A, o0.B, o1.A, o1.B]);

    const r0 = aw.update(input, up2);
    const r1 = back.update(input, up2);
    expect(r1).toEqual(r0);
    expect(r1.step).toBe(4);
    expect(bitsOfMap(back.adapter.exportWeights())).toEqual(bitsOfMap(aw.adapter.exportWeights()));
    aw.dispose();
    back.dispose();
  });

  it('rejects malformed bytes, wrong versions and bad weights, naming the problem', () => {
    const aw = trained();
    const good = serializeAdapterState(aw.adapter, aw.opt);
    aw.dispose();
    const n0 = tf.memory().numTensors;
    const msg = decodeMessage(good) as Record<string, any>;
    const mutate = (f: (m: Record<string, any>) => void): Uint8Array => {
      const copy = decodeMessage(good) as Record<string, any>;
      f(copy);
      return encodeMessage(copy);
    };
    const expectFail = (bytes: Uint8Array, re: RegExp) => {
      let err: unknown;
      try {
        deserializeAdapterState(bytes);
      } catch (e) {
        err = e;
      }
      expect(err, `expected ${re}`).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(re);
    };

    expect(() => deserializeAdapterState(new Uint8Array([0xc1, 0x00, 0x12]))).toThrow(CodecError);
    expectFail(good.subarray(0, good.length - 10), /not valid MessagePack|malformed/i);
    expectFail(encodeMessage([1, 2, 3]), /adapter state: expected a map/);
    expectFail(mutate((m) => (m.format = 'something-else')), /adapter state: format is "something-else"/);
    expectFail(mutate((m) => (m.version = ADAPTER_STATE_VERSION + 1)), /unsupported format version 2 \(this build reads version 1\)/);
    expectFail(mutate((m) => delete m.version), /unsupported format version undefined/);
    expectFail(mutate((m) => (m.config.heads = 3)), /adapter state: invalid adapter config: attnDim: attnDim must be divisible by heads/);
    expectFail(mutate((m) => delete m.weights['layer1/ffn_rows/W2']), /weights lacks "layer1\/ffn_rows\/W2"/);
    expectFail(mutate((m) => (m.weights['layer9/extra'] = m.weights['layer0/ffn_rows/b2'])), /weights has an unexpected entry "layer9\/extra"/);
    expectFail(
      mutate((m) => (m.weights['layer0/attn_rows_cols/Wq'] = tensorToWire(new Float32Array(32), [8, 4]))),
      /weights\["layer0\/attn_rows_cols\/Wq"\]: shape \[8, 4\] does not match the expected \[4, 8\]/,
    );
    expectFail(
      mutate((m) => (m.weights['layer0/ffn_cols/b1'] = tensorToWire(new Float32Array(12).fill(NaN), [12]))),
      /weights\["layer0\/ffn_cols\/b1"\]: element 0 is NaN/,
    );
    expectFail(mutate((m) => (m.weights['layer0/ffn_cols/b1'].data = Buffer.alloc(5))), /data has 5 bytes/);
    expectFail(mutate((m) => delete m.optimizer.v['layer0/ln_query_rows/gain']), /optimizer\.v lacks "layer0\/ln_query_rows\/gain"/);
    expectFail(mutate((m) => (m.optimizer.step = -1)), /optimizer\.step must be a non-negative integer/);
    expectFail(mutate((m) => (m.optimizer = null)), /optimizer must be a map/);
    expect(msg.version).toBe(1);
    // nothing allocated by the failed loads survives
    expect(tf.memory().numTensors).toBe(n0);
  });
});

describe('adapter state decoding (zod)', () => {
  const cfg = defaultAdapterConfig(2, { heads: 1, attnDim: 4, ffnDim: 4, seed: 3 });
  const good = (): Record<string, any> => {
    const aw = AdapterWithOptimizer.create(cfg);
    const bytes = serializeAdapterState(aw.adapter, aw.opt);
    aw.dispose();
    return decodeMessage(bytes) as Record<string, any>;
  };
  const reason = (state: unknown): string => {
    try {
      deserializeAdapterState(encodeMessage(state));
    } catch (err) {
      expect(err).toBeInstanceOf(CodecError);
      expect((err as CodecError).code).toBe('malformed');
      return (err as Error).message;
    }
    throw new Error('the malformed state was accepted');
  };

  it('lists every problem of a malformed state in one readable line, naming each field', () => {
    const s = good();
    const [w0, w1] = Object.keys(s.weights);
    delete s.weights[w0];
    s.weights[w1] = { ...s.weights[w1], extra: 1 };
    s.optimizer.m = 'not a map';
    const msg = reason(s);
    expect(msg).toMatch(/^adapter state: /);
    expect(msg).toContain(`weights lacks "${w0}"`);
    expect(msg).toContain(`weights["${w1}"]: unexpected key(s) "extra"`);
    expect(msg).toContain('optimizer.m must be a map of tensors');
  });

  it('refuses a header problem before reading any tensor, and another format before its header', () => {
    const s = good();
    s.optimizer.step = 'seven';
    s.config.rank = 0;
    s.weights = null; // not reported: the header is wrong already
    const msg = reason(s);
    expect(msg).toBe('adapter state: invalid adapter config: rank: rank must be at least 1; optimizer.step must be a non-negative integer, got "seven"');
    expect(reason({ ...s, format: 'other' })).toBe('adapter state: format is "other", expected "mergenet-fed/adapter-state"');
  });
});
