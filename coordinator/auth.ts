// The handshake check, apart from socket.io so it can be read (and tested) on its own. A device
// proves its identity once, at connection: auth = {deviceId, token, protocolVersion}. Tokens are
// kept and compared only as sha256 digests.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { ErrorCode } from '../shared/protocol/errors.js';
import { describeZodError, handshakeSchema } from '../shared/protocol/messages.js';
import { PROTOCOL_VERSION, VERSION_CHANGES } from '../shared/protocol/version.js';

/** What the versions after `from` added, for a device that must upgrade. */
function upgradeNotes(from: number): string {
  const notes: string[] = [];
  for (let v = Math.max(from + 1, 2); v <= PROTOCOL_VERSION; v++) if (VERSION_CHANGES[v]) notes.push(`version ${v} added ${VERSION_CHANGES[v]}`);
  return notes.join('; ');
}

export type HandshakeResult = { ok: true; deviceId: string } | { ok: false; code: ErrorCode; reason: string; deviceId?: string };

export function tokenDigest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/**
 * Check a handshake's auth object. `digestOf` gives the configured token digest of a device id
 * (undefined for an unknown device). Refusals, in the order checked: unauthorized (no token),
 * invalid_message (auth malformed), protocol_version, unknown_device, bad_token.
 */
export function checkHandshake(auth: unknown, digestOf: (deviceId: string) => Buffer | undefined): HandshakeResult {
  const a = auth as Record<string, unknown> | undefined;
  const deviceId = typeof a?.deviceId === 'string' ? a.deviceId : undefined;
  if (!a || a.token === undefined || a.token === null || a.token === '') {
    return { ok: false, code: 'unauthorized', reason: 'no token in the handshake (auth.token)', deviceId };
  }
  const res = handshakeSchema.safeParse(a);
  if (!res.success) return { ok: false, code: 'invalid_message', reason: `handshake auth: ${describeZodError(res.error)}`, deviceId };
  const hs = res.data;
  if (hs.protocolVersion !== PROTOCOL_VERSION) {
    return { ok: false, code: 'protocol_version', reason: `the device speaks protocol version ${hs.protocolVersion}, this coordinator only version ${PROTOCOL_VERSION}: upgrade ${hs.protocolVersion < PROTOCOL_VERSION ? `the device (${upgradeNotes(hs.protocolVersion)})` : 'the coordinator'}`, deviceId: hs.deviceId };
  }
  const expected = digestOf(hs.deviceId);
  const given = tokenDigest(hs.token);
  // Equal-length digests compared with timingSafeEqual, so neither the length nor a prefix of
  // the token leaks. (Whether an id exists is not secret: the refusal says so.)
  if (!expected) {
    return { ok: false, code: 'unknown_device', reason: `no device "${hs.deviceId}" in the coordinator config`, deviceId: hs.deviceId };
  }
  if (!timingSafeEqual(given, expected)) {
    return { ok: false, code: 'bad_token', reason: `the token does not match device "${hs.deviceId}"`, deviceId: hs.deviceId };
  }
  return { ok: true, deviceId: hs.deviceId };
}
