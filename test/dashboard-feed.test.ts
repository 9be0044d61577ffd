// The dashboard's timeline is stored compactly (typed arrays against shared id lists) but must
// reach a page exactly as sampled: ids, nulls before the first metrics, and devices that join later.
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { DashboardFeed, type TimelineSample } from '../coordinator/dashboard-feed.js';
import type { StatusSnapshot } from '../coordinator/status.js';

/** A ServerResponse that records the server-sent events written to it. */
function recorder() {
  const events: { event: string; data: any }[] = [];
  const res = {
    writeHead: () => res,
    on: () => res,
    end: () => undefined,
    write: (chunk: string) => {
      const m = /^event: (\w+)\ndata: (.*)\n\n$/s.exec(chunk);
      if (m) events.push({ event: m[1], data: JSON.parse(m[2]) });
      return true;
    },
  };
  return { res: res as unknown as ServerResponse, events };
}

type Dev = { id: string; metrics?: { valAcc?: number; step?: number } };

function snapshot(at: number, devices: Dev[], pairs: { id: string; updates: number }[]): StatusSnapshot {
  return { at: new Date(at).toISOString(), devices, pairs } as unknown as StatusSnapshot;
}

describe('dashboard feed', () => {
  it('hands a page the timeline as sampled, nulls and late devices included', () => {
    const states = [
      snapshot(1_000, [{ id: 'a' }, { id: 'b', metrics: { valAcc: 0.5, step: 10 } }], [{ id: 'p', updates: 0 }]),
      snapshot(2_000, [{ id: 'a', metrics: { valAcc: 0.25, step: 3 } }, { id: 'b', metrics: { valAcc: 0.75, step: 20 } }], [{ id: 'p', updates: 4 }]),
      snapshot(3_000, [{ id: 'a', metrics: { valAcc: 0.25, step: 3 } }, { id: 'b' }, { id: 'c', metrics: { step: 1 } }], [{ id: 'p', updates: 9 }, { id: 'q', updates: 1 }]),
    ];
    let i = 0;
    const feed = new DashboardFeed(() => states[Math.min(i, states.length - 1)], 60_000);
    feed.start(); // samples states[0]
    const live = recorder();
    i = 0;
    feed.subscribe(live.res);
    // tick is private: drive it the way the timer does
    const tick = () => (feed as unknown as { tick(): void }).tick();
    i = 1;
    tick();
    i = 2;
    tick();
    feed.close();

    const expected: TimelineSample[] = [
      { t: 1, acc: { a: null, b: 0.5 }, step: { a: null, b: 10 }, updates: { p: 0 } },
      { t: 2, acc: { a: 0.25, b: 0.75 }, step: { a: 3, b: 20 }, updates: { p: 4 } },
      { t: 3, acc: { a: 0.25, b: null, c: null }, step: { a: 3, b: null, c: 1 }, updates: { p: 9, q: 1 } },
    ];
    expect(live.events[0].event).toBe('hello');
    expect(live.events[0].data.timeline).toEqual(expected.slice(0, 1));
    expect(live.events.slice(1).map((e) => e.data.sample)).toEqual(expected.slice(1));

    const late = recorder();
    const again = new DashboardFeed(() => states[Math.min(i, states.length - 1)], 60_000);
    i = 0;
    again.start();
    i = 1;
    (again as unknown as { tick(): void }).tick();
    i = 2;
    (again as unknown as { tick(): void }).tick();
    again.subscribe(late.res);
    again.close();
    expect(late.events[0].data.timeline).toEqual(expected);
  });
});
