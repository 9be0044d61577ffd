// The `mergenet-fed` executable (bin/mergenet-fed.js → cli/main.ts), run as a child process.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClient } from '../client/device.js';
import { loadDeviceData } from '../client/data/registry.js';
import { buildModel } from '../client/models/mnist-models.js';
import { parseCoordinatorConfig, serve, type RunningCoordinator } from '../coordinator/index.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';
import { waitForEvent } from './helpers/fake-device.js';
import { waitUntil } from './helpers/wait-until.js';

const BIN = resolve(__dirname, '../bin/mergenet-fed.js');

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], opts: { env?: Record<string, string>; onStdout?: (chunk: string, kill: (s: NodeJS.Signals) => void) => void } = {}): Promise<Run> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, MERGENET_LOG_LEVEL: 'warn', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      opts.onStdout?.(stdout, (s) => child.kill(s));
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', rej);
    child.on('close', (code, signal) => res({ code, signal, stdout, stderr }));
  });
}

let dir: string;
beforeAll(async () => {
  await initBackend();
  dir = await mkdtemp(join(tmpdir(), 'mergenet-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('mergenet-fed CLI', () => {
  it('--help lists the subcommands, and client --help its options', async () => {
    const root = await run(['--help']);
    expect(root.code).toBe(0);
    expect(root.stdout).toMatch(/Usage: mergenet-fed/);
    expect(root.stdout).toMatch(/coordinator \[options\]/);
    expect(root.stdout).toMatch(/client \[options\]/);
    const client = await run(['client', '--help']);
    expect(client.code).toBe(0);
    for (const opt of ['--coordinator', '--device', '--token-env', '--model', '--slots', '--dataset', '--backend', '--slowdown', '--steps']) {
      expect(client.stdout).toContain(opt);
    }
    const bad = await run(['client', '--coordinator', 'http://127.0.0.1:9', '--device', 'x', '--token', 't', '--model', 'mlp', '--dataset', 'cifar']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--dataset.*cifar.*mnist/s);
  }, 30_000);

  it('coordinator --config prints its URL and exits 0 on SIGTERM', async () => {
    const cfg = join(dir, 'coord.yaml');
    await writeFile(cfg, 'host: 127.0.0.1\nport: 0\ndevices:\n  - { id: x, token: tx }\nstatusEveryMs: 0\n');
    const r = await run(['coordinator', '--config', cfg, '--backend', 'cpu'], {
      onStdout: (out, kill) => {
        if (/listening on http:\/\/127\.0\.0\.1:\d+/.test(out)) kill('SIGTERM');
      },
    });
    expect(r.stdout).toMatch(/coordinator listening on http:\/\/127\.0\.0\.1:\d+ \(protocol 3; 1 devices/);
    expect(r.code).toBe(0);
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'devices:\n  - { id: x }\npairs: 3\n');
    const rb = await run(['coordinator', '--config', bad]);
    expect(rb.code).toBe(1);
    expect(rb.stderr).toMatch(/devices\[0\]: give exactly one of token, tokenEnv, tokenFile/);
    expect(rb.stderr).toMatch(/pairs:/);
  }, 30_000);

  describe('client against a coordinator', () => {
    let coord: RunningCoordinator;
    beforeAll(async () => {
      coord = await serve(
        parseCoordinatorConfig({
          host: '127.0.0.1',
          port: 0,
          devices: [{ id: 'cli', token: 'tok-cli' }, { id: 'peer', token: 'tok-peer' }],
          pairs: [
            { id: 'peer-to-cli', source: { device: 'peer', slot: 'dense_1' }, target: { device: 'cli', slot: 'dense_1' } },
            { id: 'cli-to-peer', source: { device: 'cli', slot: 'dense_1' }, target: { device: 'peer', slot: 'dense_1' } },
          ],
          defaults: { rank: 4, tCycle: 5, k: 2, align: 'none', gate: { guard: 'none' } },
          statusEveryMs: 0,
        }),
        { logger: silentLogger() },
      );
    });
    afterAll(async () => {
      await coord.close();
    });

    it('runs a device to --steps, printing plan and progress, with the token from the environment', async () => {
      const data = loadDeviceData({ name: 'mnist', trainSize: 200, valSize: 100, testSize: 100, offset: 2000 }, 5);
      const peer = new DeviceClient({
        url: coord.url,
        deviceId: 'peer',
        token: 'tok-peer',
        model: buildModel({ kind: 'mlp', inputShape: [784], hidden: [24, 12], classes: 10 }, 5),
        data,
        rank: 4,
        trainer: { optimizer: 'adam', lr: 0.002, batchSize: 16 },
        seed: 5,
        evalEvery: 50,
        description: { name: 'peer', architecture: 'mlp', task: data.task, modality: 'image' },
      });
      const peerRun = peer.start();

      const r = await run(
        ['client', '--coordinator', coord.url, '--device', 'cli', '--token-env', 'CLI_TOKEN', '--model', 'mnist-mlp', '--hidden', '16,8',
          '--dataset', 'mnist', '--task', 'parity', '--train-size', '200', '--val-size', '100', '--test-size', '100',
          '--steps', '300', '--eval-every', '50', '--progress-every', '0.5', '--backend', 'wasm', '--save', join(dir, 'saved')],
        { env: { CLI_TOKEN: 'tok-cli' } },
      );
      peer.stop();
      await peerRun;
      expect(r.stderr).not.toMatch(/error/i);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/\[cli\] mnist-mlp on mnist-parity \(200 train \/ 100 val\), slots dense_0\[784×16\] dense_1\[16×8\] out\[8×2\]/);
      expect(r.stdout).toMatch(/plan \(session [^)]+\): peer-to-cli target dense_1 r4 T5 k2; cli-to-peer source dense_1 r4 T5 k2/);
      expect(r.stdout).toMatch(/\[cli\] step \d+ {2}loss \d\.\d{4} {2}val \d+\.\d% {2}transfers \d+ {2}feedback \d+/);
      const last = /stopped at step 300: (\d+) transfers applied, (\d+) feedback sent/.exec(r.stdout);
      expect(last).not.toBeNull();
      // how many cycles fit in 300 fast steps depends on the machine's load; that some do is the point
      expect(Number(last![2])).toBeGreaterThan(0);
      expect(r.stdout).toContain(`model saved to ${join(dir, 'saved', 'model.json')}`);
      // The child has exited; its last messages may still wait in this process's socket buffers.
      const sent = Number(last![2]);
      await waitUntil(() => coord.status().pairs.find((p) => p.id === 'peer-to-cli')!.updates >= sent, 10_000, 'the feedback the child sent');
      const st = coord.status();
      expect(st.pairs.find((p) => p.id === 'peer-to-cli')!.updates).toBe(sent);
      expect(st.devices.find((d) => d.id === 'cli')!.model?.architecture).toBe('mlp: dense_0[784×16] dense_1[16×8] out[8×2]');
    }, 60_000);

    it('loads a user\'s model.json from disk (the one saved above) and offers only --slots', async () => {
      const modelJson = join(dir, 'saved', 'model.json');
      const r = await run(['client', '--coordinator', coord.url, '--device', 'cli', '--token', 'tok-cli', '--model', modelJson,
        '--slots', 'dense_1', '--dataset', 'mnist', '--task', 'parity', '--train-size', '100', '--val-size', '50', '--test-size', '50',
        '--steps', '40', '--progress-every', '0']);
      expect(r.stderr).not.toMatch(/error/i);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`[cli] ${modelJson} on mnist-parity (100 train / 50 val), slots dense_1[16×8],`);
      expect(r.stdout).toMatch(/plan \(session [^)]+\): peer-to-cli target dense_1/);
      expect(coord.status().devices.find((d) => d.id === 'cli')!.slots).toEqual([{ name: 'dense_1', shape: [16, 8] }]);
      const bad = await run(['client', '--coordinator', coord.url, '--device', 'cli', '--token', 'tok-cli', '--model', modelJson,
        '--slots', 'nope', '--dataset', 'mnist', '--task', 'parity', '--steps', '5']);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/model has no layer "nope"; available slots: dense_0 \[784×16\], dense_1 \[16×8\], out \[8×2\]/);
    }, 30_000);

    it('stops cleanly on SIGINT: finishes the step, disconnects, exits 0', async () => {
      let signalled = false;
      const disconnected = waitForEvent(coord, 'disconnect', (d) => d.deviceId === 'cli', 30_000);
      // SIGINT once the device has a plan and has trained (a progress line after the plan)
      const r = await run(
        ['client', '--coordinator', coord.url, '--device', 'cli', '--token', 'tok-cli', '--model', 'mlp', '--hidden', '16,8',
          '--dataset', 'mnist', '--train-size', '100', '--val-size', '50', '--test-size', '50', '--progress-every', '0.05'],
        {
          onStdout: (out, kill) => {
            if (!signalled && /plan \(session[\s\S]*\[cli\] step [1-9]/.test(out)) {
              signalled = true;
              kill('SIGINT');
            }
          },
        },
      );
      expect(signalled).toBe(true);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/\[cli\] stopped at step [1-9]\d*: /);
      await disconnected;
      expect(coord.status().devices.find((d) => d.id === 'cli')!.connected).toBe(false);
    }, 30_000);

    it('a wrong token exits 2 with the refusal code, without retrying', async () => {
      const r = await run(['client', '--coordinator', coord.url, '--device', 'cli', '--token', 'nope', '--model', 'mlp',
        '--dataset', 'penguins', '--steps', '100000', '--progress-every', '0']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/error: coordinator refused device: bad_token/);
    }, 30_000);
  });
});
