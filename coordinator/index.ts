// The coordinator's public API: configuration, serve(), and the pieces tests and the CLI use.
export {
  ConfigError,
  loadCoordinatorConfig,
  parseCoordinatorConfig,
  pairAdapterConfig,
  defaultPairId,
  type CoordinatorConfig,
  type DeviceConfig,
  type PairConfig,
  type Endpoint,
  type SourceMode,
  type FeedbackSource,
  type ParseOptions,
} from './config.js';
export {
  serve,
  installSignalHandlers,
  TRANSPORT_LIMIT_FACTOR,
  type RunningCoordinator,
  type ServeOptions,
  type CoordinatorEvents,
  type UpdateEvent,
  type DropEvent,
  type CycleEvent,
} from './server.js';
export { type StatusSnapshot, type DeviceStatus, type PairStatus, statusLogFields } from './status.js';
export { Checkpointer, CheckpointError, CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, MANIFEST_NAME, type CheckpointData, type CheckpointPair, type LoadedCheckpoint } from './checkpoint.js';
export { noiseLikeLowRank, noiseLikeTensor } from './noise.js';
