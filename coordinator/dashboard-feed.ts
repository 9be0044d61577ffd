// What the live dashboard shows over time: a sampled timeline (held-out accuracy per device,
// completed cycles per pair), the most recent drops and rejects, and the server-sent-event
// streams of the pages that watch. Kept apart from the HTTP routing so the routes stay a table.
import type { ServerResponse } from 'node:http';
import type { DropEvent } from './events.js';
import type { StatusSnapshot } from './status.js';

export interface TimelineSample {
  /** unix time, seconds (uPlot's time axis unit) */
  t: number;
  /** held-out accuracy per device (null before its first evaluation) */
  acc: Record<string, number | null>;
  /** the device's local step per device (null before its first metrics) */
  step: Record<string, number | null>;
  /** completed cycles (adapter updates) per pair */
  updates: Record<string, number>;
}

export interface RecentDrop extends DropEvent {
  at: string;
}

/** Samples kept: when full, every other one is dropped, so a long run keeps its whole shape. */
const MAX_SAMPLES = 1200;
const MAX_DROPS = 100;

/**
 * One sample as stored: values in typed arrays (NaN for null) against a shared list of ids. As
 * objects keyed by id, 1200 samples of a 1000-device fleet held ~250 MB; this holds ~25 MB.
 */
interface StoredSample {
  t: number;
  deviceIds: readonly string[];
  acc: Float64Array;
  step: Float64Array;
  pairIds: readonly string[];
  updates: Float64Array;
}

/** The id list to store: the previous one when unchanged, so samples share it. */
function sameOr(prev: readonly string[] | undefined, ids: string[]): readonly string[] {
  return prev && prev.length === ids.length && prev.every((id, i) => id === ids[i]) ? prev : ids;
}

function expand(s: StoredSample): TimelineSample {
  const out: TimelineSample = { t: s.t, acc: {}, step: {}, updates: {} };
  const orNull = (x: number) => (Number.isNaN(x) ? null : x);
  s.deviceIds.forEach((id, i) => {
    out.acc[id] = orNull(s.acc[i]);
    out.step[id] = orNull(s.step[i]);
  });
  s.pairIds.forEach((id, i) => (out.updates[id] = s.updates[i]));
  return out;
}

export class DashboardFeed {
  private readonly samples: StoredSample[] = [];
  private readonly drops: RecentDrop[] = [];
  private readonly clients = new Set<ServerResponse>();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly snapshot: () => StatusSnapshot,
    private readonly everyMs: number,
  ) {}

  start(): void {
    this.tick();
    this.timer = setInterval(() => this.tick(), this.everyMs).unref();
  }

  recordDrop(d: DropEvent): void {
    this.drops.push({ ...d, at: new Date().toISOString() });
    if (this.drops.length > MAX_DROPS) this.drops.shift();
  }

  /** A page subscribes: it gets the whole timeline once, then one `tick` per sample. */
  subscribe(res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      // nginx and similar proxies buffer responses unless told not to; events must flow as made.
      'x-accel-buffering': 'no',
    });
    this.clients.add(res);
    res.on('close', () => this.clients.delete(res));
    send(res, 'hello', { everyMs: this.everyMs, timeline: this.samples.map(expand), status: this.snapshot(), drops: this.drops });
  }

  /** End every stream (at shutdown: an open SSE response would keep the http server alive). */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const res of this.clients) res.end();
    this.clients.clear();
  }

  private tick(): void {
    const status = this.snapshot();
    const last = this.samples[this.samples.length - 1];
    const stored: StoredSample = {
      t: Date.parse(status.at) / 1000,
      deviceIds: sameOr(last?.deviceIds, status.devices.map((d) => d.id)),
      acc: Float64Array.from(status.devices, (d) => d.metrics?.valAcc ?? NaN),
      step: Float64Array.from(status.devices, (d) => d.metrics?.step ?? NaN),
      pairIds: sameOr(last?.pairIds, status.pairs.map((p) => p.id)),
      updates: Float64Array.from(status.pairs, (p) => p.updates),
    };
    this.samples.push(stored);
    if (this.samples.length > MAX_SAMPLES) {
      const kept = this.samples.filter((_, i) => i % 2 === 0);
      this.samples.splice(0, this.samples.length, ...kept);
    }
    if (this.clients.size === 0) return;
    const payload = { sample: expand(stored), status, drops: this.drops.slice(-20) };
    for (const res of this.clients) send(res, 'tick', payload);
  }
}

function send(res: ServerResponse, event: string, data: unknown): void {
  res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}
