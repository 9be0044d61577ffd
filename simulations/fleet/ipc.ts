// Messages between the fleet runner (parent) and a device child process, over Node's IPC channel
// (child_process.fork; JSON-serialised).
import type { DeviceJob, DeviceProgress, DeviceReport } from './types.js';

export type ParentToChild =
  /** load data, build the model and the client, then answer `ready` */
  | { type: 'job'; job: DeviceJob }
  /** start training */
  | { type: 'go' }
  /** stop after the current step */
  | { type: 'stop' };

export type ChildToParent =
  | { type: 'ready'; pid: number; backend: string }
  | { type: 'progress'; progress: DeviceProgress }
  | { type: 'result'; report: DeviceReport }
  | { type: 'error'; message: string; stack?: string };
