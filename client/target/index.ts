// The device's target side, in one place: everything between a `transfer` arriving and its
// `feedback` leaving (docs/DESIGN.md §4–6, §9 hops 11–14), free of sockets.
// - transfer-queue.ts: transfers received, waiting for the gap between two steps;
// - slice-memory.ts: the target slices sent, so a transfer is applied against the A·B it came from;
// - transfer-apply.ts: apply a transfer (the gated knowledge branch) and open its feedback window;
//   close a window into the feedback message (gA, gB, gateGrad, sourceGrad);
// - feedback-windows.ts: the k-step windows and their training-gradient sums;
// - heldout-feedback.ts: the held-out gradient source (the default), used instead of the training sums;
// - feedback.ts: the projection of G onto the adapter's output factors.
export { TransferQueue, type QueuedTransfer } from './transfer-queue.js';
export { SliceMemory, type RememberedSlice, type SliceMemoryLimits } from './slice-memory.js';
export { FeedbackWindows, type ClosedWindow, type GradientAccumulator, type WindowSpec } from './feedback-windows.js';
export { HeldoutFeedback, type HeldoutSum } from './heldout-feedback.js';
export { TransferApplier, windowFeedback, type TransferApplierDeps, type WindowFeedback } from './transfer-apply.js';
export { projectFeedback, type Feedback } from './feedback.js';
