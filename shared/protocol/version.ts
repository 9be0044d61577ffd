/**
 * Bumped on any incompatible change to an event or its payload. Checked at the handshake.
 * 2: the per-pair trust gate (transfer.gate, feedback.gateGrad and sourceGrad), the `skip` answer
 * to a target slice that started no cycle, `feedback_ack` after accepted feedback, `unknown_event`
 * refusals, and tensors with extra keys refused as `bad_tensor`.
 * 3: the output channel for pairs of unaligned models (docs/DESIGN.md §10): a public probe split in
 * the plan, `register.inputSpace`/`outputs`, plan pairs' `channel`, and the events `logits`,
 * `teacher_request`, `teacher` and `teacher_feedback`.
 */
export const PROTOCOL_VERSION = 3;

/** What each version added, for the refusal a device of an older version gets. */
export const VERSION_CHANGES: Record<number, string> = {
  2: 'the trust gate: transfer.gate, feedback.gateGrad, the skip and feedback_ack events',
  3: 'the output channel: the probe split, logits, teacher_request, teacher and teacher_feedback',
};
