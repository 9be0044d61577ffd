// The coordinator's HTTP side against a live fleet: /healthz open; /status and /metrics only with
// a viewer token (never a device token); /status matches its zod schema; /metrics parses as
// Prometheus text, names every metric of the issue, and its counters move while cycles happen.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCoordinatorConfig, ConfigError } from '../coordinator/index.js';
import { statusSnapshotSchema } from '../coordinator/status-schema.js';
import { initBackend } from '../shared/tf/backend.js';
import { parsePrometheusText, sampleValue } from './helpers/prom-text.js';
import { deviceToken, startTwoDeviceFleet, VIEWER_TOKEN, waitFor, type Fleet } from './helpers/two-device-fleet.js';

let fleet: Fleet;
beforeAll(async () => {
  await initBackend();
  fleet = await startTwoDeviceFleet();
});
afterAll(async () => {
  await fleet?.stop();
});

const get = (path: string, token?: string) =>
  fetch(`${fleet.coord.url}${path}`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });

async function scrape() {
  const res = await get('/metrics', VIEWER_TOKEN);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return parsePrometheusText(await res.text());
}

describe('coordinator HTTP endpoints', () => {
  it('/healthz answers without a token', async () => {
    const res = await get('/healthz');
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true });
  });

  it('refuses a missing, wrong or device token with 401 and a message that says what to send', async () => {
    for (const path of ['/status', '/metrics', '/', '/events']) {
      const none = await get(path);
      expect(none.status, path).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
      const body = (await none.json()) as { error: string; message: string };
      expect(body.error).toBe('unauthorized');
      expect(body.message).toMatch(/viewer token is required/);
      expect(body.message).toMatch(/Authorization: Bearer/);

      for (const bad of ['nope', deviceToken('a'), deviceToken('b')]) {
        const res = await get(path, bad);
        expect(res.status, `${path} with ${bad}`).toBe(401);
        expect(((await res.json()) as { message: string }).message).toMatch(/not a viewer token/);
      }
    }
    // The dashboard's query token: a device token does not open it either.
    expect((await get(`/?token=${deviceToken('a')}`)).status).toBe(401);
    expect((await get(`/status?token=${VIEWER_TOKEN}`)).status).toBe(401); // headers only for the API
    const page = await get(`/?token=${VIEWER_TOKEN}`);
    expect(page.status).toBe(200);
    expect(await page.text()).toMatch(/<title>mergenet-fed/);
  });

  it('a config whose viewer token equals a device token is refused', () => {
    expect(() =>
      parseCoordinatorConfig({ devices: [{ id: 'a', token: 'same' }], viewers: [{ token: 'same' }] }),
    ).toThrow(ConfigError);
    expect(() => parseCoordinatorConfig({ devices: [{ id: 'a', token: 'same' }], viewers: [{ token: 'same' }] })).toThrow(/viewers\[0\]: the viewer token is the token of device "a"/);
  });

  it('/status is the snapshot, schema-checked, and /metrics moves while cycles happen', async () => {
    const before = await scrape();
    for (const name of [
      'mergenet_devices_connected',
      'mergenet_devices_registered',
      'mergenet_pairs',
      'mergenet_cycles_started_total',
      'mergenet_cycles_completed_total',
      'mergenet_cycles_skipped_total',
      'mergenet_adapter_updates_total',
      'mergenet_drops_total',
      'mergenet_rejects_total',
      'mergenet_adapter_seconds',
      'mergenet_queue_depth',
      'mergenet_bytes_received_total',
      'mergenet_bytes_sent_total',
      'mergenet_event_loop_lag_seconds',
      'mergenet_pair_gate_value',
      'mergenet_pair_branch_ratio',
      'mergenet_device_loss',
      'mergenet_device_val_accuracy',
    ]) {
      expect(before.has(name), name).toBe(true);
    }
    expect(before.get('mergenet_adapter_seconds')!.type).toBe('histogram');
    expect(before.get('mergenet_cycles_started_total')!.type).toBe('counter');
    expect(sampleValue(before, 'mergenet_devices_connected')).toBe(0);
    expect(sampleValue(before, 'mergenet_pairs', { state: 'active' })).toBe(2);
    const started0 = sampleValue(before, 'mergenet_cycles_started_total')!;

    fleet.start();
    const c = fleet.coord;
    await waitFor(() => c.status().pairs.every((p) => p.updates >= 3) && c.status().devices.every((d) => d.metrics?.valAcc !== undefined), 60_000, '3 updates per pair and metrics from both devices');

    const after = await scrape();
    expect(sampleValue(after, 'mergenet_devices_connected')).toBe(2);
    expect(sampleValue(after, 'mergenet_devices_registered')).toBe(2);
    expect(sampleValue(after, 'mergenet_cycles_started_total')!).toBeGreaterThan(started0);
    expect(sampleValue(after, 'mergenet_cycles_completed_total')!).toBeGreaterThanOrEqual(6);
    expect(sampleValue(after, 'mergenet_adapter_updates_total')!).toBeGreaterThanOrEqual(6);
    for (const pair of ['a-to-b', 'b-to-a']) expect(sampleValue(after, 'mergenet_pair_updates_total', { pair })!).toBeGreaterThanOrEqual(3);
    expect(sampleValue(after, 'mergenet_adapter_seconds_count', { op: 'update' })!).toBeGreaterThanOrEqual(6);
    expect(sampleValue(after, 'mergenet_adapter_seconds_count', { op: 'forward' })!).toBeGreaterThanOrEqual(6);
    expect(sampleValue(after, 'mergenet_bytes_received_total', { event: 'slice' })!).toBeGreaterThan(0);
    expect(sampleValue(after, 'mergenet_bytes_received_total', { event: 'feedback' })!).toBeGreaterThan(0);
    expect(sampleValue(after, 'mergenet_bytes_sent_total', { event: 'transfer' })!).toBeGreaterThan(0);
    expect(sampleValue(after, 'mergenet_bytes_sent_total', { event: 'plan' })!).toBeGreaterThan(0);
    expect(sampleValue(after, 'mergenet_queue_depth', { queue: 'outbound' })).toBeGreaterThanOrEqual(0);
    expect(sampleValue(after, 'mergenet_event_loop_lag_seconds', { stat: 'max' })).toBeGreaterThanOrEqual(0);
    for (const device of ['a', 'b']) {
      const acc = sampleValue(after, 'mergenet_device_val_accuracy', { device })!;
      expect(acc).toBeGreaterThanOrEqual(0);
      expect(acc).toBeLessThanOrEqual(1);
      expect(sampleValue(after, 'mergenet_device_loss', { device })).toBeGreaterThan(0);
    }
    // Every pair has a trust gate: its gauge matches the status, one sample per pair.
    const gates = after.get('mergenet_pair_gate_value')!.samples;
    expect(gates.map((g) => g.labels.pair).sort()).toEqual(['a-to-b', 'b-to-a']);
    for (const g of gates) {
      expect(g.value).toBeGreaterThan(0);
      expect(g.value).toBeLessThan(1);
    }

    const res = await get('/status', VIEWER_TOKEN);
    expect(res.status).toBe(200);
    const parsed = statusSnapshotSchema.safeParse(await res.json());
    expect(parsed.success, parsed.success ? '' : JSON.stringify(parsed.error.issues)).toBe(true);
    const st = parsed.data!;
    expect(st.devices.map((d) => d.id).sort()).toEqual(['a', 'b']);
    expect(st.pairs.every((p) => p.updates >= 3)).toBe(true);
    expect(st.wire!.in.slice!.bytes).toBeGreaterThan(0);
    // /status carries each pair's gate trace, a point per update ...
    for (const p of st.pairs) expect(p.gateTrace!.map((t) => t.update)).toEqual(Array.from({ length: p.updates }, (_, i) => i + 1));
    // ... unless asked to leave them out (most of a large fleet's snapshot); a bad value says what is allowed
    const lean = await get('/status?gateTraces=0', VIEWER_TOKEN);
    expect(lean.status).toBe(200);
    const leanSt = statusSnapshotSchema.parse(await lean.json());
    expect(leanSt.pairs.map((p) => p.id).sort()).toEqual(['a-to-b', 'b-to-a']);
    for (const p of leanSt.pairs) expect(p).not.toHaveProperty('gateTrace');
    const bad = await get('/status?gateTraces=no', VIEWER_TOKEN);
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: 'bad_request', message: 'gateTraces must be 0 or 1, got "no"' });

    // ... and the dashboard's feed, a snapshot a second, leaves the traces out (it draws none).
    const ac = new AbortController();
    const events = await fetch(`${fleet.coord.url}/events`, { headers: { authorization: `Bearer ${VIEWER_TOKEN}` }, signal: ac.signal });
    expect(events.status).toBe(200);
    const reader = events.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = '';
    while (!/event: hello\ndata: .*\n\n/.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    ac.abort();
    const hello = JSON.parse(/event: hello\ndata: (.*)\n\n/.exec(text)![1]);
    expect(hello.status.pairs.map((p: { id: string }) => p.id).sort()).toEqual(['a-to-b', 'b-to-a']);
    for (const p of hello.status.pairs) expect(p).not.toHaveProperty('gateTrace');
  });

  it('answers other paths and methods with a JSON error', async () => {
    const res = await get('/nope', VIEWER_TOKEN);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { message: string }).message).toMatch(/no such endpoint/);
    const post = await fetch(`${fleet.coord.url}/status`, { method: 'POST' });
    expect(post.status).toBe(405);
  });
});
