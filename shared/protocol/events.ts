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
} as const;

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
}
