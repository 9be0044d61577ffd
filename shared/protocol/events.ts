// The protocol's one table: every socket.io event, its direction and its payload schema. The
// socket.io event maps, the typed `send` of both sides and the coordinator's routes all derive from
// it, so an event cannot exist in one place and be missing in another. On the wire every event
// carries exactly one MessagePack Buffer (shared/codec/tensor-codec.ts) of the object its schema
// describes.
import type { z } from 'zod';
import {
  feedbackAckSchema,
  feedbackSchema,
  logitsSchema,
  metricsSchema,
  paceSchema,
  planSchema,
  registerSchema,
  rejectSchema,
  skipSchema,
  sliceSchema,
  teacherFeedbackSchema,
  teacherRequestSchema,
  teacherSchema,
  transferSchema,
} from './messages.js';

/** Device → coordinator. */
export const DEVICE_TO_COORDINATOR = {
  register: registerSchema,
  slice: sliceSchema,
  feedback: feedbackSchema,
  metrics: metricsSchema,
  /** protocol 3: a source's logits on the probe split */
  logits: logitsSchema,
  /** protocol 3: an output pair's target asks for the source's logits (a cycle's start) */
  teacher_request: teacherRequestSchema,
  /** protocol 3: the held-out gradient along a trial's readout swap */
  teacher_feedback: teacherFeedbackSchema,
} as const;

/** Coordinator → device. */
export const COORDINATOR_TO_DEVICE = {
  /** after register, and whenever the device's pairs change */
  plan: planSchema,
  /** the answer to a target slice that started a cycle */
  transfer: transferSchema,
  /** the answer to a target slice that started no cycle of a pair */
  skip: skipSchema,
  /** after an accepted feedback */
  feedback_ack: feedbackAckSchema,
  /** a refused message */
  reject: rejectSchema,
  /** protocol 3: the answer to a teacher_request that started a cycle of an output pair */
  teacher: teacherSchema,
  /** how far apart to send slices: a saturated coordinator's request (an older device may ignore it) */
  pace: paceSchema,
} as const;

export type DeviceEvent = keyof typeof DEVICE_TO_COORDINATOR;
export type CoordinatorEvent = keyof typeof COORDINATOR_TO_DEVICE;
/** The payload of a device → coordinator event. */
export type DeviceMessage<E extends DeviceEvent> = z.infer<(typeof DEVICE_TO_COORDINATOR)[E]>;
/** The payload of a coordinator → device event. */
export type CoordinatorMessage<E extends CoordinatorEvent> = z.infer<(typeof COORDINATOR_TO_DEVICE)[E]>;

/** Event names by a readable key (EVENTS.feedbackAck is the wire name 'feedback_ack'). */
export const EVENTS = {
  register: 'register',
  slice: 'slice',
  feedback: 'feedback',
  metrics: 'metrics',
  plan: 'plan',
  transfer: 'transfer',
  reject: 'reject',
  skip: 'skip',
  feedbackAck: 'feedback_ack',
  logits: 'logits',
  teacherRequest: 'teacher_request',
  teacher: 'teacher',
  teacherFeedback: 'teacher_feedback',
  pace: 'pace',
} as const satisfies Record<string, DeviceEvent | CoordinatorEvent>;

/** The events a device may send; any other name is refused with `unknown_event`. */
export const DEVICE_EVENTS: ReadonlySet<string> = new Set(Object.keys(DEVICE_TO_COORDINATOR));

type Bin = (payload: Buffer | Uint8Array) => void;

/** socket.io's typed event maps, one binary argument per event. */
export type ClientToServerEvents = { [E in DeviceEvent]: Bin };
export type ServerToClientEvents = { [E in CoordinatorEvent]: Bin };
