/**
 * Bumped on any incompatible change to an event or its payload. Checked at the handshake.
 * 2: the per-pair trust gate (transfer.gate, feedback.gateGrad and sourceGrad), the `skip` answer
 * to a target slice that started no cycle, `feedback_ack` after accepted feedback, `unknown_event`
 * refusals, and tensors with extra keys refused as `bad_tensor`.
 */
export const PROTOCOL_VERSION = 2;
