// Entry of an adapter-pool worker thread: the sources are TypeScript run through tsx (as the CLI
// and npm scripts run them), and a worker does not inherit the parent's loader, so register it here.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);
