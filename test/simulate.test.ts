// The simulation runner end to end: devices as child processes (they start, train, report, and are
// all gone afterwards), a device process that crashes (reported as a failed condition/seed, never
// waited on), and the CLI (a bad experiment file is an error naming the field; a good one prints
// the table and the report's path).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import { loadExperiment, parseExperiment, type Experiment } from '../simulations/experiment/schema.js';
import { tinyExperimentObject, type TinyShape } from './helpers/experiments.js';
import { runExperiment, runFleet } from '../simulations/experiment/run-experiment.js';
import { runBaseline } from '../simulations/baselines/index.js';
import { silentProgress } from '../simulations/experiment/progress.js';
import { liveChildPids } from '../simulations/fleet/processes.js';
import { waitUntil } from './helpers/wait-until.js';

const SHAPE: TinyShape = { name: 'tiny-sim', steps: 60, targetEvalEvery: 20, sourceEvalEvery: 30, baselines: ['alone', 'mergenet'], mode: 'process' };
const tinyObject = (over: Record<string, unknown> = {}) => tinyExperimentObject(SHAPE, over);
const tiny = (over: Record<string, unknown> = {}): Experiment => parseExperiment(tinyObject(over));

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'simulate-'));
  dirs.push(d);
  return d;
};
beforeAll(async () => {
  await initBackend('wasm', () => {});
});
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('process mode', () => {
  it('runs a tiny experiment end to end with devices as child processes, and leaves none behind', async () => {
    const out = tmp();
    const pids = new Map<string, number>();
    const res = await runExperiment(tiny(), { out, onSpawn: (device, pid) => pids.set(device, pid) });
    expect(res.failures).toEqual([]);
    expect([...pids.keys()].sort()).toEqual(['source', 'target']);
    const [alone, mergenet] = res.result.runs;
    expect(mergenet.condition).toBe('mergenet');
    expect(mergenet.curve.map((p) => p.step)).toEqual([20, 40, 60]);
    // Same data and test split as here (the curves differ from step 1 on: the gate starts open a little).
    expect(mergenet.curve.map((p) => p.step)).toEqual(alone.curve.map((p) => p.step));
    // The target's pair reports its trust gate, one point per accepted feedback.
    expect(mergenet.gates).toHaveLength(1);
    expect(mergenet.gates![0].trace.length).toBe(mergenet.extra!.updates);
    expect(mergenet.extra!.cycles).toBeGreaterThanOrEqual(1);
    for (const p of Object.values(res.paths!)) expect(existsSync(p)).toBe(true);
    const json = JSON.parse(readFileSync(res.paths!.json, 'utf8'));
    expect(json.mode).toBe('process');
    expect(json.runs).toHaveLength(2);
    await waitUntil(() => [...pids.values()].every((pid) => !alive(pid)), 10_000, 'the device processes to exit');
    expect(liveChildPids()).toEqual([]);
  }, 60_000);

  it('a child-process target with no pairs reproduces the local alone curve exactly', async () => {
    const e = tiny();
    const alone = await runBaseline('alone', e, 2);
    const fleet = await runFleet(e, 2, { mode: 'process', pairMode: 'real', pairs: [], label: 'no pairs' });
    expect(fleet.devices.target.curve).toEqual(alone.curve);
    expect(fleet.devices.target.backend).toBe('wasm');
  }, 30_000);

  it('reports a crashed device process as a failed condition/seed instead of hanging', async () => {
    const out = tmp();
    const pids: number[] = [];
    let targetPid = 0;
    let killedAt: number | undefined;
    const res = await runExperiment(tiny({ seeds: [0] }), {
      out,
      stallTimeoutMs: 20_000,
      timeoutMs: 40_000,
      onSpawn: (device, pid) => {
        pids.push(pid);
        if (device === 'target') targetPid = pid;
      },
      progress: {
        ...silentProgress(),
        update: (p) => {
          // Mid-training, the target dies as a crashing device would: killed, no goodbye.
          if (p.device === 'target' && targetPid && killedAt === undefined && p.step >= 20 && p.step < 60) {
            killedAt = p.step;
            process.kill(targetPid, 'SIGKILL');
          }
        },
      },
    });
    expect(killedAt).toBeDefined();
    // not hanging: the failure names the crash (a run that hung would end as a timeout instead)
    expect(res.failures).toHaveLength(1);
    expect(res.failures[0]).toMatchObject({ condition: 'mergenet', seed: 0 });
    expect(res.failures[0].error).toMatch(/device "target" exited \(signal SIGKILL\)/);
    expect(res.result.runs.map((r) => r.condition)).toEqual(['alone']);
    expect(res.result.notes!.some((n) => n.startsWith('FAILED: mergenet, seed 0'))).toBe(true);
    expect(readFileSync(res.paths!.md, 'utf8')).toContain('FAILED: mergenet, seed 0');
    await waitUntil(() => [...pids].every((pid) => !alive(pid)), 10_000, 'the device processes to exit');
    expect(liveChildPids()).toEqual([]);
  }, 60_000);
});

describe('the simulate CLI', () => {
  const cli = (args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'simulations/simulate.ts', ...args], { encoding: 'utf8', timeout: 50_000, env: { ...process.env, MERGENET_BACKEND: 'wasm' } });

  it('refuses a bad experiment file with an error naming the field', () => {
    const dir = tmp();
    const obj = tinyObject();
    (obj.devices as Record<string, unknown>[])[1].steps = -5;
    (obj.pairs as Record<string, unknown>[])[0].k = 9; // k > tCycle
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, stringify(obj));
    expect(() => loadExperiment(file)).toThrow(/devices\[1\]\.steps/);
    const r = cli([file]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/devices\[1\]\.steps: /);
    expect(r.stderr).toMatch(/pairs\[0\]\.k: k \(9\) must not exceed tCycle \(6\)/);
    expect(r.stdout).toBe('');
  }, 30_000);

  it('runs a file and prints the table and the report path', () => {
    const dir = tmp();
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, stringify(tinyObject({ mode: 'inprocess', baselines: ['alone'] })));
    const r = cli([file, '--out', join(dir, 'report'), '--seeds', '0,1', '--no-progress']);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\| alone +\| +2 \|/);
    expect(r.stdout).toContain(`report: ${join(dir, 'report', 'report.md')}`);
    expect(existsSync(join(dir, 'report', 'report.html'))).toBe(true);
    const bad = cli([file, '--conditions', 'alone,telepathy', '--no-progress']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/unknown condition "telepathy"/);
  }, 50_000);
});
