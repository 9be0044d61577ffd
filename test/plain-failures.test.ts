// Failures that speak plainly: a client that cannot reach the coordinator names the URL and the
// cause and exits non-zero in bounded time; URLs without a scheme; the plan's notes on why a
// device has no pairs; the coordinator's words on resuming and --fresh; stack traces only with
// --debug.
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeConnectFailure } from '../client/connect-failure.js';
import { normalizeCoordinatorUrl } from '../client/coordinator-url.js';
import { parseDurationOption } from '../client/main.js';
import { Checkpointer } from '../coordinator/checkpoint.js';
import { describeRestore, moveCheckpointAside } from '../coordinator/fresh-start.js';
import { parseCoordinatorConfig, serve } from '../coordinator/index.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';
import { FakeDevice } from './helpers/fake-device.js';

const BIN = resolve(__dirname, '../bin/mergenet-fed.js');

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, MERGENET_LOG_LEVEL: 'warn', MERGENET_BACKEND: 'cpu' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', rej);
    child.on('close', (code) => res({ code, stdout, stderr }));
  });
}

/** A port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

let dir: string;
beforeAll(async () => {
  await initBackend();
  dir = await mkdtemp(join(tmpdir(), 'mergenet-plain-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('a client that cannot reach the coordinator', () => {
  it('the CLI names the URL and ECONNREFUSED, retries, and exits 3 after --connect-timeout', async () => {
    const port = await closedPort();
    const url = `http://127.0.0.1:${port}`;
    const r = await run(['client', '--coordinator', url, '--device', 'x', '--token', 't', '--model', 'mnist-mlp', '--hidden', '8', '--dataset', 'mnist', '--train-size', '50', '--val-size', '20', '--test-size', '20', '--progress-every', '0', '--connect-timeout', '2s']);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain(`cannot reach the coordinator at ${url}: connection refused (ECONNREFUSED)`);
    expect(r.stderr).toMatch(/retrying with backoff \(attempt 1; --connect-timeout gives up 2 s after start\)/);
    expect(r.stderr).toMatch(new RegExp(`error: could not reach the coordinator at ${url.replace(/\./g, '\\.')} within 2 s \\(\\d+ attempts?\\): connection refused \\(ECONNREFUSED\\)`));
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace without --debug
  });

  it('a URL without a scheme is taken as http, with a notice; a wrong scheme is refused', async () => {
    expect(normalizeCoordinatorUrl('127.0.0.1:7070')).toEqual({ url: 'http://127.0.0.1:7070', notice: expect.stringMatching(/no scheme.*using http:\/\/127\.0\.0\.1:7070/) });
    expect(normalizeCoordinatorUrl('https://coord.example:443')).toEqual({ url: 'https://coord.example:443' });
    expect(() => normalizeCoordinatorUrl('ftp://x:1')).toThrow(/scheme "ftp": use http:\/\/ or https:\/\//);
    expect(() => normalizeCoordinatorUrl('')).toThrow(/empty/);
    const r = await run(['client', '--coordinator', 'ftp://127.0.0.1:1', '--device', 'x', '--token', 't', '--model', 'mlp', '--dataset', 'mnist']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error: coordinator URL "ftp:\/\/127\.0\.0\.1:1" has scheme "ftp"/);
  });

  it('digs the cause out of socket.io-client errors: DNS, TLS, HTTP status', () => {
    const wsError = (error: object) => Object.assign(new Error('websocket error'), { type: 'TransportError', description: { message: 'x', error } });
    expect(describeConnectFailure('http://nowhere.invalid:7070', wsError(Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.invalid'), { code: 'ENOTFOUND' })))).toEqual({
      code: 'ENOTFOUND',
      cause: 'DNS: the host name does not resolve (ENOTFOUND: getaddrinfo ENOTFOUND nowhere.invalid)',
    });
    expect(describeConnectFailure('https://h:443', wsError(Object.assign(new Error('self-signed certificate'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }))).cause).toMatch(/^TLS: self-signed certificate \(DEPTH_ZERO_SELF_SIGNED_CERT\)/);
    expect(describeConnectFailure('http://h:80', wsError(new Error('Unexpected server response: 404'))).cause).toMatch(/answered HTTP 404/);
    const plainPort = wsError(Object.assign(new Error('write EPROTO 40B8:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../deps/openssl/ssl/record/ssl3_record.c:354:\n'), { code: 'EPROTO' }));
    expect(describeConnectFailure('https://h:7070', plainPort).cause).toBe("TLS: the server at h:7070 does not speak TLS (EPROTO, wrong version number): use http://, or the TLS proxy's address");
    expect(parseDurationOption('30s')).toBe(30_000);
    expect(parseDurationOption('2m')).toBe(120_000);
    expect(parseDurationOption('0')).toBe(0);
    expect(() => parseDurationOption('soon')).toThrow(/duration/);
  });
});

describe('why a device has no pairs', () => {
  it('the plan carries notes: a slot the device did not offer, a peer not registered yet, no pair at all', async () => {
    const config = parseCoordinatorConfig({
      devices: [{ id: 'a', token: 'ta' }, { id: 'b', token: 'tb' }, { id: 'c', token: 'tc' }],
      pairs: [{ id: 'a-to-b', source: { device: 'a', slot: 'dense_0' }, target: { device: 'b', slot: 'dense_0' } }],
      statusEveryMs: 0,
    });
    const coord = await serve(config, { logger: silentLogger() });
    const devs: FakeDevice[] = [];
    try {
      const a = await FakeDevice.connect({ url: coord.url, deviceId: 'a', token: 'ta' });
      devs.push(a);
      const planA = await a.register([{ name: 'out', shape: [8, 4] }]);
      expect(planA.pairs).toEqual([]);
      expect(planA.notes).toEqual(['pair a-to-b: names slot "dense_0" of this device as its source, but this device offered "out"']);

      const b = await FakeDevice.connect({ url: coord.url, deviceId: 'b', token: 'tb' });
      devs.push(b);
      const planB = await b.register([{ name: 'dense_0', shape: [8, 4] }]);
      expect(planB.pairs.map((p) => p.pairId)).toEqual(['a-to-b']);
      expect(planB.notes).toEqual(['pair a-to-b: peer device "a" did not offer slot "dense_0" (no cycles until it does)']);

      const c = await FakeDevice.connect({ url: coord.url, deviceId: 'c', token: 'tc' });
      devs.push(c);
      const planC = await c.register([{ name: 'dense_0', shape: [8, 4] }]);
      expect(planC.notes).toEqual(['no pair in the coordinator config names device "c" (add one under pairs:, or enable autoPair)']);
    } finally {
      for (const d of devs) d.close();
      await coord.close();
    }
  });
});

describe('resuming and --fresh', () => {
  it('serve() reports the checkpoint it resumed from, in plain words', async () => {
    const ckdir = join(dir, 'ck');
    await new Checkpointer(ckdir).save({ totals: { updates: 42, cyclesStarted: 50 }, pairs: [] });
    const config = parseCoordinatorConfig({ checkpoint: { dir: ckdir }, statusEveryMs: 0 });
    const coord = await serve(config, { logger: silentLogger() });
    try {
      expect(coord.restored).toMatchObject({ resumed: true, dir: ckdir, updates: 42, pairs: 0 });
      expect(describeRestore(coord.restored)).toMatch(new RegExp(`^resumed from checkpoint ${ckdir} \\(step 42, 0 pairs\\), saved .*; use --fresh to start over$`));
    } finally {
      await coord.close();
    }
    expect(describeRestore({ resumed: false, dir: ckdir })).toBe(`no checkpoint in ${ckdir}: starting fresh (checkpoints will be written there)`);
    expect(describeRestore({ resumed: false })).toMatch(/^checkpoints off/);

    // --fresh moves it aside, whole, and says where.
    const aside = await moveCheckpointAside(ckdir, new Date('2026-01-02T03:04:05.678Z'));
    expect(aside).toBe(`${ckdir}.old-2026-01-02T03-04-05-678Z`);
    expect((await readdir(aside!)).length).toBeGreaterThan(0);
    expect(await moveCheckpointAside(ckdir)).toBeUndefined(); // nothing left to move
    await mkdir(ckdir);
    expect(await moveCheckpointAside(ckdir)).toBeUndefined(); // empty: nothing to move
  });

  it('the CLI prints stack traces only with --debug', async () => {
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'devices: [{ id: a }]\n');
    const plain = await run(['coordinator', '--config', bad]);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toMatch(/error: invalid coordinator config/);
    expect(plain.stderr).not.toMatch(/\n\s+at /);
    const debug = await run(['--debug', 'coordinator', '--config', bad]);
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/\n\s+at /);
  });
});
