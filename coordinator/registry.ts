// Devices the coordinator knows: their credentials, their current connection (session), their
// registered slots and the latest slice of each slot. Owns the slice tensors it stores.
import { randomBytes } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import type { Metrics, RegisterMsg } from '../shared/protocol/messages.js';
import { tokenDigest } from './auth.js';
import type { DeviceConfig } from './config.js';

/** The latest slice of one slot of one device. The registry owns A and B. */
export interface StoredSlice {
  slot: string;
  sliceId: number;
  /** the device's training step when it took the slice */
  step: number;
  rank: number;
  A: tf.Tensor2D;
  B: tf.Tensor2D;
  /** arrival time, ms since the epoch */
  at: number;
  session: string;
}

export interface Registration {
  model: RegisterMsg['model'];
  /** protocol 3: the input space of its examples and the width of its logits, when it said */
  inputSpace?: string;
  outputs?: number;
  /** slot name → [m, n], in the order the device registered them */
  slots: Map<string, [number, number]>;
  rank: number;
  step: number;
  at: number;
  session: string;
}

export interface DeviceRecord {
  id: string;
  /** sha256 of the configured token (auth.ts compares it in constant time); never logged */
  tokenDigest: Buffer;
  connected: boolean;
  socketId?: string;
  /** changes at every connection; feedback of an older session is dropped */
  session?: string;
  /** connections so far */
  connections: number;
  lastSeen?: number;
  registration?: Registration;
  metrics?: Metrics & { at: number };
  slices: Map<string, StoredSlice>;
  /** the plan last sent on the current session, to resend only when it changes */
  lastPlanKey?: string;
}

export class Registry {
  private readonly devices = new Map<string, DeviceRecord>();

  constructor(configured: readonly DeviceConfig[]) {
    for (const d of configured) {
      this.devices.set(d.id, { id: d.id, tokenDigest: tokenDigest(d.token), connected: false, connections: 0, slices: new Map() });
    }
  }

  get(id: string): DeviceRecord | undefined {
    return this.devices.get(id);
  }

  all(): DeviceRecord[] {
    return [...this.devices.values()];
  }

  /** Devices that have registered (in any session), in config order. */
  registered(): DeviceRecord[] {
    return this.all().filter((d) => d.registration !== undefined);
  }

  /**
   * A new connection of a device: a fresh session replaces any previous one. Returns the previous
   * socket id, which the caller disconnects.
   */
  connect(id: string, socketId: string, now: number): { session: string; previousSocketId?: string } {
    const d = this.mustGet(id);
    const previousSocketId = d.connected ? d.socketId : undefined;
    d.connections++;
    d.session = `s${d.connections}-${randomBytes(6).toString('hex')}`;
    d.socketId = socketId;
    d.connected = true;
    d.lastSeen = now;
    d.lastPlanKey = undefined;
    return { session: d.session, previousSocketId };
  }

  /** A socket closed. Only the device's current socket marks it disconnected. */
  disconnect(id: string, socketId: string, now: number): boolean {
    const d = this.devices.get(id);
    if (!d || d.socketId !== socketId) return false;
    d.connected = false;
    d.lastSeen = now;
    return true;
  }

  touch(id: string, now: number): void {
    const d = this.devices.get(id);
    if (d) d.lastSeen = now;
  }

  /**
   * Record a (re-)registration. Stored slices of slots that vanished or changed shape are
   * disposed; the others are kept (a reconnecting device keeps its source slices usable).
   */
  register(id: string, msg: RegisterMsg, session: string, now: number): void {
    const d = this.mustGet(id);
    const slots = new Map<string, [number, number]>();
    for (const s of msg.slots) slots.set(s.name, [s.shape[0], s.shape[1]]);
    for (const [name, slice] of d.slices) {
      const shape = slots.get(name);
      if (!shape || shape[0] !== slice.A.shape[0] || shape[1] !== slice.B.shape[1]) {
        slice.A.dispose();
        slice.B.dispose();
        d.slices.delete(name);
      }
    }
    d.registration = { model: msg.model, slots, rank: msg.rank, step: msg.step, at: now, session, inputSpace: msg.inputSpace, outputs: msg.outputs };
  }

  slotShape(id: string, slot: string): [number, number] | undefined {
    return this.devices.get(id)?.registration?.slots.get(slot);
  }

  /** Store a slot's latest slice, taking ownership of its tensors and disposing the previous one. */
  storeSlice(id: string, slice: StoredSlice): void {
    const d = this.mustGet(id);
    const old = d.slices.get(slice.slot);
    if (old) {
      old.A.dispose();
      old.B.dispose();
    }
    d.slices.set(slice.slot, slice);
  }

  latestSlice(id: string, slot: string): StoredSlice | undefined {
    return this.devices.get(id)?.slices.get(slot);
  }

  setMetrics(id: string, metrics: Metrics, now: number): void {
    const d = this.devices.get(id);
    if (d) d.metrics = { ...metrics, at: now };
  }

  /** Dispose every stored slice. */
  dispose(): void {
    for (const d of this.devices.values()) {
      for (const s of d.slices.values()) {
        s.A.dispose();
        s.B.dispose();
      }
      d.slices.clear();
    }
  }

  private mustGet(id: string): DeviceRecord {
    const d = this.devices.get(id);
    if (!d) throw new Error(`unknown device ${id}`);
    return d;
  }
}
