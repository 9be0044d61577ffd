/**
 * Bumped on any incompatible change to an event or its payload. Checked at the handshake.
 * 2: the coordinator acknowledges accepted feedback (`feedback_ack`), refuses unknown events
 * (`unknown_event`) and tensors with extra keys (`bad_tensor`).
 */
export const PROTOCOL_VERSION = 2;
