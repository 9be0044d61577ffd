// socket.io event names and their typed maps. Every event carries exactly one MessagePack Buffer.
export const EVENTS = {
  register: 'register', // device → coordinator: RegisterMsg
  slice: 'slice', // device → coordinator: SliceMsg
  feedback: 'feedback', // device → coordinator: FeedbackMsg
  metrics: 'metrics', // device → coordinator: Metrics
  plan: 'plan', // coordinator → device: PlanMsg (after register, and whenever pairs change)
  transfer: 'transfer', // coordinator → device: TransferMsg
  reject: 'reject', // coordinator → device: RejectMsg
  skip: 'skip', // coordinator → device: SkipMsg (a target slice that started no cycle of a pair)
  feedbackAck: 'feedback_ack', // coordinator → device: FeedbackAckMsg (after an accepted feedback)
} as const;

/** The events a device may send; any other name is refused with `unknown_event`. */
export const DEVICE_EVENTS: ReadonlySet<string> = new Set([EVENTS.register, EVENTS.slice, EVENTS.feedback, EVENTS.metrics]);

type Bin = (payload: Buffer | Uint8Array) => void;

export interface ClientToServerEvents {
  register: Bin;
  slice: Bin;
  feedback: Bin;
  metrics: Bin;
}

export interface ServerToClientEvents {
  plan: Bin;
  transfer: Bin;
  reject: Bin;
  skip: Bin;
  feedback_ack: Bin;
}
