// Every reason the coordinator can refuse something, with what the sender should do about it.
// docs/PROTOCOL.md is generated from the same facts; keep the two in step.

export const ERROR_CODES = {
  // handshake (delivered as a connect_error whose `data` is {code, reason})
  unauthorized: 'no token was given in the handshake: pass auth.token; do not retry without one',
  bad_token: 'the token does not match the device id: check the token; retrying will not help',
  unknown_device: 'the coordinator has no device with this id in its config: fix the id',
  protocol_version: 'the handshake protocol version is not supported: upgrade the client or coordinator',
  // any message
  malformed: 'the payload is not one valid MessagePack value: fix the encoder; the message was ignored',
  oversize: 'the payload is larger than the limit in the plan: send less (lower the rank); the message was ignored',
  invalid_message: 'the message does not match its schema (the reason names the field): fix the sender',
  unknown_event: 'the event name is not one a device may send (register, slice, feedback, metrics, logits, teacher_request, teacher_feedback): fix the sender; the message was ignored',
  not_registered: 'send `register` first and wait for `plan`',
  spoofed_device: 'the message names a device other than the authenticated one: a device may only act for itself',
  // slices, transfers and feedback
  unknown_slot: 'the slot is not one this device registered: register it, or fix the name',
  unknown_pair: 'no such pair, or this device is not its target: follow the latest plan',
  bad_tensor: 'a tensor is not exactly {dtype:"float32", shape, data} with matching byte length: fix the encoder',
  shape_mismatch: 'a tensor shape does not match the registered slot and rank: follow the plan',
  non_finite: 'a tensor holds NaN or Inf: the device should not send it (check its training)',
  rank_out_of_bounds: 'the rank is outside [1, min(m, n)] or above the coordinator limit',
  stale_cycle: 'the feedback names a cycle that is not the one in flight (replayed, or already finished): dropped; keep training',
  cycle_timeout: 'the feedback arrived after the cycle deadline: dropped; the next cycle starts with the next slice',
  session_replaced: 'the feedback belongs to an earlier connection of this device: dropped',
  unknown_probe: 'the logits name a probe split other than the one in this device\'s plan, or the device has none: follow the latest plan',
  internal: 'the coordinator failed to process a valid message: it was dropped and logged; report it',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** An error the coordinator sends back to the sender of a message (event `reject`). */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    readonly reason: string,
  ) {
    super(`${code}: ${reason}`);
    this.name = 'ProtocolError';
  }
}

export function isErrorCode(v: unknown): v is ErrorCode {
  return typeof v === 'string' && Object.prototype.hasOwnProperty.call(ERROR_CODES, v);
}
