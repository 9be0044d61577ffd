// The coordinator's pure decisions, without sockets: who may connect (auth.ts) and which pairs
// autoPair creates (plan.ts). The end-to-end refusals over socket.io are in coordinator-reject.
import { describe, expect, it } from 'vitest';
import { checkHandshake, tokenDigest } from '../coordinator/auth.js';
import { autoPairConfigs } from '../coordinator/plan.js';
import { parseCoordinatorConfig } from '../coordinator/config.js';
import type { DeviceRecord } from '../coordinator/registry.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';

const digests = new Map([['alice', tokenDigest('tok-a')], ['bob', tokenDigest('tok-b')]]);
const digestOf = (id: string) => digests.get(id);
const hs = (over: Record<string, unknown>) => ({ deviceId: 'alice', token: 'tok-a', protocolVersion: PROTOCOL_VERSION, ...over });

describe('checkHandshake', () => {
  it('accepts the right token for the right device', () => {
    expect(checkHandshake(hs({}), digestOf)).toEqual({ ok: true, deviceId: 'alice' });
  });

  it('refuses each bad handshake with its own code, in the documented order', () => {
    const code = (auth: unknown) => {
      const r = checkHandshake(auth, digestOf);
      return r.ok ? 'ok' : r.code;
    };
    expect(code(undefined)).toBe('unauthorized');
    expect(code(hs({ token: '' }))).toBe('unauthorized');
    expect(code(hs({ token: undefined }))).toBe('unauthorized');
    expect(code(hs({ deviceId: 'bad id with spaces' }))).toBe('invalid_message');
    expect(code(hs({ protocolVersion: PROTOCOL_VERSION + 1 }))).toBe('protocol_version');
    // A device of protocol 1 (before the trust gate) is told what changed.
    const old = checkHandshake(hs({ protocolVersion: 1 }), digestOf);
    expect(old.ok).toBe(false);
    if (!old.ok) {
      expect(old.code).toBe('protocol_version');
      expect(old.reason).toMatch(/speaks protocol version 1, this coordinator only version 3: upgrade the device .*trust gate.*output channel/);
    }
    expect(code(hs({ deviceId: 'mallory' }))).toBe('unknown_device');
    expect(code(hs({ token: 'tok-b' }))).toBe('bad_token'); // bob's token cannot act for alice
    expect(code(hs({ token: 'tok-a-longer' }))).toBe('bad_token');
    // with two faults, the earlier check decides
    expect(code(hs({ deviceId: 'mallory', token: '' }))).toBe('unauthorized');
    expect(code(hs({ deviceId: 'mallory', protocolVersion: PROTOCOL_VERSION + 1 }))).toBe('protocol_version');
    expect(code(hs({ deviceId: 'bad id', protocolVersion: PROTOCOL_VERSION + 1 }))).toBe('invalid_message');
  });

  it('names the device and the problem in the reason', () => {
    const r = checkHandshake(hs({ deviceId: 'bob', token: 'nope' }), digestOf);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toContain('"bob"');
  });
});

function device(id: string, slots: [string, [number, number]][] | undefined): DeviceRecord {
  return {
    id,
    tokenDigest: tokenDigest(id),
    connected: true,
    connections: 1,
    slices: new Map(),
    registration: slots && { model: { name: id, architecture: 'mlp', task: 't', modality: 'image' }, slots: new Map(slots), rank: 8, step: 0, at: 0, session: 's' },
  };
}

describe('autoPairConfigs', () => {
  const config = (autoPair: Record<string, unknown>) =>
    parseCoordinatorConfig({
      devices: [{ id: 'a', token: 'x' }, { id: 'b', token: 'y' }, { id: 'c', token: 'z' }],
      defaults: { rank: 12, tCycle: 7, k: 3 },
      autoPair: { enabled: true, ...autoPair },
    });

  it('pairs every two registered devices both ways on their first slot, with the configured defaults', () => {
    const devs = [device('a', [['d0', [784, 64]], ['out', [64, 10]]]), device('b', [['h', [32, 16]]]), device('c', undefined)];
    const out = autoPairConfigs(config({}), devs, []);
    expect(out.map((p) => p.id).sort()).toEqual(['auto:a.d0--b.h', 'auto:b.h--a.d0']);
    for (const p of out) {
      expect(p.rank).toBe(12);
      expect(p.tCycle).toBe(7);
      expect(p.k).toBe(3);
      expect(p.auto).toBe(true);
    }
  });

  it('uses a named slot only on devices that have it, and the configured source mode', () => {
    const devs = [device('a', [['d0', [784, 64]], ['out', [64, 10]]]), device('b', [['out', [32, 10]]]), device('c', [['h', [8, 8]]])];
    const out = autoPairConfigs(config({ slot: 'out', sourceMode: 'noise' }), devs, []);
    expect(out.map((p) => `${p.source.device}.${p.source.slot}>${p.target.device}.${p.target.slot}`).sort()).toEqual(['a.out>b.out', 'b.out>a.out']);
    expect(out.every((p) => p.sourceMode === 'noise')).toBe(true);
  });

  it('adds nothing on a link that already has a pair, whatever that pair is called', () => {
    const devs = [device('a', [['d0', [784, 64]]]), device('b', [['h', [32, 16]]])];
    const first = autoPairConfigs(config({}), devs, []);
    const existing = first.map((p, i) => ({ id: `manual-${i}`, source: p.source, target: p.target }));
    expect(autoPairConfigs(config({}), devs, existing as never)).toEqual([]);
    // one direction configured by hand: autoPair adds only the other
    const back = autoPairConfigs(config({}), devs, existing.slice(0, 1) as never);
    expect(back.map((p) => `${p.source.device}>${p.target.device}`)).toEqual([`${first[1].source.device}>${first[1].target.device}`]);
  });
});
