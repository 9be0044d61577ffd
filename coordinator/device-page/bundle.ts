// The browser device's bundle (client/browser/main.ts and the isomorphic device core it imports),
// built with esbuild (in node_modules through tsx; nothing is downloaded) the first time the
// coordinator serves /device/app.js, then kept in memory for the life of the process.
//
// The build doubles as the check that the device core imports no Node built-in:
// `nodeBuiltinImports` walks the metafile's import graph from the entry and the build fails on
// any `node:` or built-in module a project file imports (test/browser-core.test.ts).
import { builtinModules } from 'node:module';
import { relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Metafile, Plugin } from 'esbuild';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const BROWSER_ENTRY = resolve(ROOT, 'client/browser/main.ts');

const BUILTINS = new Set(builtinModules.filter((m) => !m.startsWith('_')));

/** Whether an import specifier names a Node built-in (`node:fs`, `fs`, `fs/promises`, …). */
export function isNodeBuiltin(spec: string): boolean {
  if (spec.startsWith('node:')) return true;
  return BUILTINS.has(spec) || BUILTINS.has(spec.split('/')[0]);
}

const inNodeModules = (file: string) => file.split(/[\\/]/).includes('node_modules');

export interface BuiltinImport {
  /** the importing file, relative to the repository */
  importer: string;
  /** the specifier as written */
  specifier: string;
  /** how the importer is reached from the entry: entry first, importer last */
  chain: string[];
}

/**
 * Every Node built-in in the bundle's import graph, walked from `entry` (a metafile input path):
 * imports of a built-in by a project file, and any import left external (a browser bundle has
 * none). A package's own `fs` that its package.json "browser" field disables (tfjs-backend-wasm's
 * emscripten glue) is not one: esbuild replaces it by an empty module.
 */
export function nodeBuiltinImports(meta: Metafile, entry: string): BuiltinImport[] {
  const out: BuiltinImport[] = [];
  const parent = new Map<string, string | undefined>([[entry, undefined]]);
  const queue = [entry];
  const chainOf = (file: string) => {
    const chain: string[] = [];
    for (let f: string | undefined = file; f !== undefined; f = parent.get(f)) chain.unshift(f);
    return chain;
  };
  while (queue.length > 0) {
    const file = queue.shift()!;
    const input = meta.inputs[file];
    if (!input) continue;
    for (const imp of input.imports) {
      const spec = imp.original ?? imp.path;
      if (imp.external || (!inNodeModules(file) && isNodeBuiltin(spec))) {
        out.push({ importer: file, specifier: spec, chain: chainOf(file) });
        continue;
      }
      if (!parent.has(imp.path) && meta.inputs[imp.path]) {
        parent.set(imp.path, file);
        queue.push(imp.path);
      }
    }
  }
  return out;
}

/**
 * Leaves a Node built-in imported by a project file external, so the build completes and the
 * metafile shows the import for nodeBuiltinImports to report (esbuild alone would stop at the
 * first one with "could not resolve").
 */
function keepProjectBuiltinsVisible(): Plugin {
  return {
    name: 'keep-project-builtins-visible',
    setup(build) {
      build.onResolve({ filter: /.*/ }, (args) => {
        if (args.kind === 'entry-point' || !isNodeBuiltin(args.path) || inNodeModules(args.importer)) return undefined;
        return { path: args.path, external: true };
      });
    },
  };
}

/** What buildBrowserBundle throws when the graph imports a Node built-in. */
export class NodeBuiltinInBrowserError extends Error {
  constructor(readonly found: BuiltinImport[]) {
    super(
      `the browser bundle imports Node built-ins (the device core must run in a browser, docs/DESIGN.md §12):\n` +
        found.map((f) => `  ${f.importer} imports "${f.specifier}" (reached by ${f.chain.join(' → ')})`).join('\n'),
    );
    this.name = 'NodeBuiltinInBrowserError';
  }
}

export interface DeviceBundle {
  js: Uint8Array;
  metafile: Metafile;
  /** the entry's key in metafile.inputs */
  entry: string;
}

/**
 * Bundle `entry` for the browser (ESM, minified, tfjs included). With `check` (default true) it
 * throws NodeBuiltinInBrowserError when the import graph from the entry reaches a Node built-in;
 * without, the caller gets the metafile to walk itself.
 */
export async function buildBrowserBundle(entry = BROWSER_ENTRY, opts: { check?: boolean; minify?: boolean } = {}): Promise<DeviceBundle> {
  const esbuild = await import('esbuild');
  const res = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: [entry],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    minify: opts.minify ?? true,
    write: false,
    outfile: 'device-app.js', // a name only: nothing is written (write: false)
    metafile: true,
    logLevel: 'silent',
    legalComments: 'none',
    // tfjs and socket.io read process.env.NODE_ENV in places; the browser has no process.
    define: { 'process.env.NODE_ENV': '"production"' },
    plugins: [keepProjectBuiltinsVisible()],
  });
  const js = res.outputFiles.find((f) => f.path.endsWith('.js'))!.contents;
  const key = relative(ROOT, entry).split(sep).join('/');
  if (opts.check !== false) {
    const found = nodeBuiltinImports(res.metafile, key);
    if (found.length > 0) throw new NodeBuiltinInBrowserError(found);
  }
  return { js, metafile: res.metafile, entry: key };
}

let cached: Promise<DeviceBundle> | undefined;

/** The device page's bundle, built once per process. A failed build is retried at the next call. */
export function deviceBundle(): Promise<DeviceBundle> {
  if (!cached) {
    cached = buildBrowserBundle();
    cached.catch(() => {
      cached = undefined;
    });
  }
  return cached;
}
