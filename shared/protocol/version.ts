/** Bumped on any incompatible change to an event or its payload. Checked at the handshake. */
// 2: transfer.gate, feedback.gateGrad (the per-pair trust gate) and the `skip` event.
export const PROTOCOL_VERSION = 2;
