// Coordinator config: defaults, token resolution, and errors that name the bad field.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, defaultPairId, loadCoordinatorConfig, pairAdapterConfig, parseCoordinatorConfig } from '../coordinator/config.js';

const dev = (id: string) => ({ id, token: `${id}-secret` });
const pair = (s: string, t: string) => ({ source: { device: s, slot: 'w' }, target: { device: t, slot: 'w' } });

function issuesOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  throw new Error('expected a ConfigError');
}

describe('coordinator config', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mergenet-cfg-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fills every default', () => {
    const c = parseCoordinatorConfig({ devices: [dev('a'), dev('b')], pairs: [pair('a', 'b')] });
    expect(c.host).toBe('127.0.0.1');
    expect(c.port).toBe(0);
    expect(c.defaults).toEqual({
      rank: 8, tCycle: 50, k: 10, tau: 0.5, adapter: {}, feedback: 'heldout', align: 'auto', refineLr: 0,
      gate: { enabled: true, init: -3, lr: 0.2, beta1: 0.9, beta2: 0.999, eps: 1e-8, guard: 'relevance', decideAfter: 25, shadows: 9, memorisedAt: 0.95, alpha: 0.05, alphaSource: 0.01, alphaReadout: 0.01 }, join: 'off',
      channel: 'auto', distill: { lambda: 1, temperature: 2, batchSize: 32 },
    });
    expect(c.limits).toEqual({ maxMessageBytes: 16 * 1024 * 1024, maxRank: 64 });
    expect(c.timing).toEqual({ cycleTimeoutMs: 30_000, sourceMaxAgeMs: 120_000 });
    expect(c.checkpoint).toEqual({ dir: undefined, everyUpdates: 50, minIntervalMs: 10_000 });
    expect(c.statusEveryMs).toBe(10_000);
    expect(c.autoPair).toEqual({ enabled: false, slot: 'first', sourceMode: 'real' });
    expect(c.pairs[0]).toMatchObject({ id: defaultPairId({ device: 'a', slot: 'w' }, { device: 'b', slot: 'w' }), rank: 8, tCycle: 50, k: 10, tau: 0.5, sourceMode: 'real', auto: false });
    expect(c.devices[0]).toMatchObject({ id: 'a', token: 'a-secret', tokenSource: 'inline' });
  });

  it('pair settings override defaults; adapter overrides merge; seeds differ per pair', () => {
    const c = parseCoordinatorConfig({
      devices: [dev('a'), dev('b')],
      defaults: { rank: 16, adapter: { lr: 1e-3, layers: 1 } },
      pairs: [{ ...pair('a', 'b'), id: 'x', rank: 4, k: 3, tau: 0.2, sourceMode: 'noise', adapter: { lr: 5e-4 } }, pair('b', 'a')],
    });
    expect(c.pairs[0]).toMatchObject({ id: 'x', rank: 4, k: 3, tau: 0.2, tCycle: 50, sourceMode: 'noise', adapter: { lr: 5e-4, layers: 1 } });
    const a0 = pairAdapterConfig(c.pairs[0], 4);
    const a1 = pairAdapterConfig(c.pairs[1], 4);
    expect(a0).toMatchObject({ rank: 4, lr: 5e-4, layers: 1, heads: 4, ffnDim: 16 });
    expect(a1.lr).toBe(1e-3);
    expect(a0.seed).not.toBe(a1.seed);
    expect(pairAdapterConfig(c.pairs[0], 4).seed).toBe(a0.seed);
  });

  it('names a missing field by its path', () => {
    const issues = issuesOf(() =>
      parseCoordinatorConfig({ devices: [dev('a'), dev('b')], pairs: [pair('a', 'b'), { source: { device: 'b', slot: 'w' }, target: { device: 'a' } }] }),
    );
    expect(issues).toContain('pairs[1].target.slot: required');
  });

  it('names wrong types, bad values and unknown keys', () => {
    const issues = issuesOf(() =>
      parseCoordinatorConfig({
        port: 'eighty',
        devices: [dev('a')],
        limits: { maxBytes: 5 },
        timing: { cycleTimeoutMs: -1 },
        defaults: { tau: 0 },
        pairs: [{ ...pair('a', 'a'), sourceMode: 'fake' }],
      }),
    );
    const text = issues.join('\n');
    expect(text).toMatch(/^port: /m);
    expect(text).toMatch(/^limits: .*maxBytes/m);
    expect(text).toMatch(/^timing\.cycleTimeoutMs: /m);
    expect(text).toMatch(/^defaults\.tau: /m);
    expect(text).toMatch(/^pairs\[0\]\.sourceMode: /m);
  });

  it('cross-checks pairs against devices and limits', () => {
    const issues = issuesOf(() =>
      parseCoordinatorConfig({
        devices: [dev('a'), dev('b'), dev('a')],
        limits: { maxRank: 8 },
        pairs: [pair('a', 'zed'), { ...pair('a', 'b'), id: 'same' }, { ...pair('b', 'a'), id: 'same', rank: 9 }, pair('a', 'a'), { ...pair('a', 'b'), id: 'dup-ends' }],
      }),
    );
    expect(issues).toContain('devices[2].id: duplicate device id "a"');
    expect(issues).toContain('pairs[0].target.device: unknown device "zed" (not in devices)');
    expect(issues).toContain('pairs[2].id: duplicate pair id "same"');
    expect(issues).toContain('pairs[2].rank: 9 is above limits.maxRank (8)');
    expect(issues).toContain('pairs[3].target: the target is the source itself');
    expect(issues).toContain('pairs[4]: another pair already links the same source and target');
  });

  it('validates adapter overrides with the adapter schema', () => {
    const issues = issuesOf(() =>
      parseCoordinatorConfig({
        devices: [dev('a'), dev('b')],
        pairs: [{ ...pair('a', 'b'), adapter: { lr: -1 } }, { ...pair('b', 'a'), adapter: { heads: 3 } }],
        defaults: { adapter: { rank: 4 } },
      }),
    );
    expect(issues.join('\n')).toMatch(/^pairs\[0\]\.adapter\.lr: lr must be ≥ 0$/m);
    expect(issues.join('\n')).toMatch(/^defaults\.adapter: Unrecognized key: "rank"$/m);
    const issues2 = issuesOf(() => parseCoordinatorConfig({ devices: [dev('a'), dev('b')], pairs: [{ ...pair('b', 'a'), adapter: { heads: 3 } }] }));
    expect(issues2.join('\n')).toMatch(/^pairs\[0\]\.adapter: attnDim: attnDim must be divisible by heads$/m);
  });

  it('resolves tokens from the environment and from files, with readable errors', async () => {
    await writeFile(join(dir, 'b.token'), 'from-file\n');
    const c = parseCoordinatorConfig(
      { devices: [{ id: 'a', tokenEnv: 'A_TOKEN' }, { id: 'b', tokenFile: 'b.token' }] },
      { env: { A_TOKEN: 'from-env' }, baseDir: dir },
    );
    expect(c.devices.map((d) => d.token)).toEqual(['from-env', 'from-file']);
    expect(c.devices[1].tokenSource).toBe(`file ${join(dir, 'b.token')}`);

    const issues = issuesOf(() =>
      parseCoordinatorConfig(
        {
          devices: [
            { id: 'a', tokenEnv: 'MISSING_TOKEN' },
            { id: 'b', tokenFile: 'nope.token' },
            { id: 'c', token: 'x', tokenEnv: 'Y' },
            { id: 'd' },
            { id: 'e', tokenEnv: 'EMPTY' },
          ],
        },
        { env: { EMPTY: '' }, baseDir: dir },
      ),
    );
    expect(issues.some((i) => i.startsWith('devices[2]: give exactly one of token, tokenEnv, tokenFile (got 2)'))).toBe(true);
    expect(issues.some((i) => i.startsWith('devices[3]: give exactly one of token, tokenEnv, tokenFile (got 0)'))).toBe(true);
    // Token resolution runs after the schema passes: check it on its own.
    const issues2 = issuesOf(() =>
      parseCoordinatorConfig(
        { devices: [{ id: 'a', tokenEnv: 'MISSING_TOKEN' }, { id: 'b', tokenFile: 'nope.token' }, { id: 'e', tokenEnv: 'EMPTY' }] },
        { env: { EMPTY: '' }, baseDir: dir },
      ),
    );
    expect(issues2).toContain('devices[0].tokenEnv: environment variable MISSING_TOKEN is not set');
    expect(issues2).toContain(`devices[1].tokenFile: cannot read ${join(dir, 'nope.token')}: ENOENT`);
    expect(issues2).toContain('devices[2].tokenEnv: environment variable EMPTY is empty');
  });

  it('loads YAML, resolving relative paths against the file, and reports YAML errors', async () => {
    await writeFile(join(dir, 'a.token'), 'tok-a');
    const path = join(dir, 'coord.yaml');
    await writeFile(
      path,
      [
        'port: 7070',
        'devices:',
        '  - id: a',
        '    tokenFile: a.token',
        '  - id: b',
        '    token: tok-b',
        'pairs:',
        '  - source: { device: a, slot: dense_1 }',
        '    target: { device: b, slot: dense_2 }',
        '    sourceMode: noise',
        'autoPair: { enabled: true, slot: dense_1 }',
        'checkpoint: { dir: ckpt, everyUpdates: 10 }',
        '',
      ].join('\n'),
    );
    const c = loadCoordinatorConfig(path);
    expect(c.port).toBe(7070);
    expect(c.devices[0].token).toBe('tok-a');
    expect(c.checkpoint).toEqual({ dir: join(dir, 'ckpt'), everyUpdates: 10, minIntervalMs: 10_000 });
    expect(c.autoPair).toMatchObject({ enabled: true, slot: 'dense_1' });
    expect(c.pairs[0]).toMatchObject({ sourceMode: 'noise', target: { device: 'b', slot: 'dense_2' } });

    await writeFile(join(dir, 'bad.yaml'), 'devices: [\n  - id: a\n');
    expect(() => loadCoordinatorConfig(join(dir, 'bad.yaml'))).toThrow(/not valid YAML/);
    await writeFile(join(dir, 'bad2.yaml'), 'devices:\n  - id: a\n    token: t\npairs:\n  - source: { device: a, slot: s }\n    target: { device: a }\n');
    expect(() => loadCoordinatorConfig(join(dir, 'bad2.yaml'))).toThrow(/pairs\[0\]\.target\.slot: required/);
    expect(() => loadCoordinatorConfig(join(dir, 'missing.yaml'))).toThrow(/cannot read .*missing\.yaml: ENOENT/);
  });
});
