/** Bumped on any incompatible change to an event or its payload. Checked at the handshake. */
export const PROTOCOL_VERSION = 1;
