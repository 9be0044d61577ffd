// Who does what: the plan each device gets and the pairs autoPair links. Pure functions of the
// pairs and the registrations (no state, no I/O), so the engine only applies what they decide.
import type { PlanPair } from '../shared/protocol/messages.js';
import { hash32, type CoordinatorConfig, type PairConfig } from './config.js';
import type { Pair } from './pair.js';
import type { DeviceRecord, Registry } from './registry.js';

/** A device's part in every active pair whose slot it registered: its role, peer, rank and timing. */
export function planFor(deviceId: string, pairs: Iterable<Pair>, registry: Registry): PlanPair[] {
  const out: PlanPair[] = [];
  for (const p of pairs) {
    if (!p.active) continue;
    for (const role of ['source', 'target'] as const) {
      const me = p[role];
      const peer = role === 'source' ? p.target : p.source;
      if (me.device !== deviceId || !registry.slotShape(deviceId, me.slot)) continue;
      const entry: PlanPair = { pairId: p.id, role, slot: me.slot, peerDevice: peer.device, peerSlot: peer.slot, rank: p.rank, tCycle: p.config.tCycle, k: p.config.k, tau: p.config.tau };
      // A pair configured for the output channel tells its source so before its target registers:
      // a source that trains first (and may be done before the target comes) must send logits.
      if (p.channel === 'output' || (p.channel === undefined && p.config.channel === 'output')) {
        entry.channel = 'output';
        if (role === 'target') entry.distill = { ...p.config.distill };
        out.push(entry);
        continue;
      }
      // Only the target computes G.
      if (role === 'target') {
        entry.feedback = p.config.feedback;
        if (p.joinMode) entry.join = p.joinMode;
      }
      out.push(entry);
    }
  }
  return out;
}

/**
 * Why a device's plan lacks pairs it might expect, in plain words (the plan's `notes`): each pair
 * that names the device but is not in its plan, or waits for its peer; or, with no such pair,
 * that none names it. The device prints them; nothing parses them.
 */
export function planNotes(deviceId: string, pairs: Iterable<Pair>, registry: Registry, autoPair: CoordinatorConfig['autoPair']): string[] {
  const notes: string[] = [];
  const offered = [...(registry.get(deviceId)?.registration?.slots.keys() ?? [])];
  let named = 0;
  for (const p of pairs) {
    for (const role of ['source', 'target'] as const) {
      const me = p[role];
      if (me.device !== deviceId) continue;
      named++;
      const peer = role === 'source' ? p.target : p.source;
      if (!registry.slotShape(deviceId, me.slot)) {
        notes.push(`pair ${p.id}: names slot "${me.slot}" of this device as its ${role}, but this device offered ${offered.length ? offered.map((x) => `"${x}"`).join(', ') : 'no slots'}`);
      } else if (!p.active) {
        notes.push(`pair ${p.id}: inactive: ${p.inactiveReason ?? 'unknown reason'}`);
      } else if (!registry.get(peer.device)?.registration) {
        notes.push(`pair ${p.id}: waiting for peer device "${peer.device}" to register (no cycles until it does)`);
      } else if (!registry.slotShape(peer.device, peer.slot)) {
        notes.push(`pair ${p.id}: peer device "${peer.device}" did not offer slot "${peer.slot}" (no cycles until it does)`);
      } else if (p.channelReason) {
        notes.push(`pair ${p.id}: ${p.channel} channel: ${p.channelReason}`);
      }
    }
  }
  if (named === 0) {
    notes.push(
      autoPair.enabled
        ? `no pair names device "${deviceId}" yet: autoPair pairs it once another device registers${autoPair.slot === 'first' ? '' : ` (with a slot named "${autoPair.slot}", which this device ${offered.includes(autoPair.slot) ? 'offers' : 'does not offer'})`}`
        : `no pair in the coordinator config names device "${deviceId}" (add one under pairs:, or enable autoPair)`,
    );
  }
  return notes;
}

/** The rank autoPair gives its pairs: the default rank, capped by the coordinator's limit. */
export function autoPairRank(config: CoordinatorConfig): number {
  return Math.min(config.defaults.rank, config.limits.maxRank);
}

/** One direction between two slots: autoPair adds no second pair on a link that has one. */
function link(sourceDevice: string, sourceSlot: string, targetDevice: string, targetSlot: string): string {
  return `${sourceDevice}/${sourceSlot}>${targetDevice}/${targetSlot}`;
}

/**
 * autoPair: every two registered devices, both ways, on the configured slot of each. Returns the
 * configs of the pairs not linked yet (by `existing` or by an earlier one of the result), with
 * ids `auto:SRC.SLOT--TGT.SLOT` (hashed above 128 characters) and the configured defaults.
 */
export function autoPairConfigs(config: CoordinatorConfig, devices: readonly DeviceRecord[], existing: Iterable<Pair>): PairConfig[] {
  const { slot, sourceMode } = config.autoPair;
  const pick = (d: DeviceRecord): string | undefined => {
    const slots = d.registration?.slots;
    if (!slots) return undefined;
    if (slot === 'first') return slots.keys().next().value;
    return slots.has(slot) ? slot : undefined;
  };
  const ids = new Set<string>();
  const linked = new Set<string>();
  for (const p of existing) {
    ids.add(p.id);
    linked.add(link(p.source.device, p.source.slot, p.target.device, p.target.slot));
  }
  const out: PairConfig[] = [];
  for (const s of devices) {
    for (const t of devices) {
      if (s.id === t.id) continue;
      const ss = pick(s);
      const ts = pick(t);
      if (!ss || !ts || linked.has(link(s.id, ss, t.id, ts))) continue;
      let id = `auto:${s.id}.${ss}--${t.id}.${ts}`;
      if (id.length > 128) id = `auto:${hash32(id).toString(16)}`;
      if (ids.has(id)) continue;
      const d = config.defaults;
      out.push({
        id,
        source: { device: s.id, slot: ss },
        target: { device: t.id, slot: ts },
        rank: autoPairRank(config),
        tCycle: d.tCycle,
        k: d.k,
        tau: d.tau,
        sourceMode,
        feedback: d.feedback,
        align: d.align,
        refineLr: d.refineLr,
        gate: { ...d.gate },
        join: d.join,
        adapter: { ...d.adapter },
        auto: true,
        channel: d.channel,
        distill: { ...d.distill },
      });
      ids.add(id);
      linked.add(link(s.id, ss, t.id, ts));
    }
  }
  return out;
}
