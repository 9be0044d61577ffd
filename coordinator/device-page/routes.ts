// The browser device's side of the coordinator's HTTP server (docs/DESIGN.md §12): the page at
// /device, its bundle (built with esbuild on first request, ./bundle.ts), the tfjs wasm binaries
// from node_modules (nothing is downloaded at run time), and an MNIST shard as the demo's local
// data. None of it holds state of the coordinator or a secret: the page asks the person for the
// device id and token, and socket.io checks them as for any device. So these are served without a
// token, like the dashboard's static files.
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { mnistSplits, loadMnistAll } from '../../client/data/mnist.js';
import { encodeShard } from '../../shared/data/shard.js';
import { describeZodError } from '../../shared/protocol/messages.js';
import { deviceBundle } from './bundle.js';

const require = createRequire(import.meta.url);
const pageFile = (name: string) => fileURLToPath(new URL(`./${name}`, import.meta.url));
const wasmDir = () => join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist');

/** The three builds tfjs-backend-wasm may ask for (the page uses the SIMD one where it can). */
const WASM_FILES = new Set(['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm']);

const files = new Map<string, Buffer>();
async function cachedFile(path: string): Promise<Buffer> {
  let buf = files.get(path);
  if (!buf) {
    buf = await readFile(path);
    files.set(path, buf);
  }
  return buf;
}

const int = (min: number, max: number, dflt: number) => z.coerce.number().int().min(min).max(max).default(dflt);
/** The shard a page asks for: the same split rule as a Node device's `--dataset mnist` (client/data/mnist.ts). */
export const shardQuerySchema = z.strictObject({
  seed: int(-(2 ** 31), 2 ** 31 - 1, 1),
  offset: int(0, 10_000, 0),
  train: int(1, 10_000, 500),
  val: int(1, 10_000, 200),
  test: int(1, 10_000, 500),
  task: z.enum(['digit', 'parity']).default('digit'),
});

const shards = new Map<string, Uint8Array>();
/** The last few shards asked for (a page reloads; several tabs ask for the same one). */
function mnistShard(q: z.infer<typeof shardQuerySchema>): Uint8Array {
  const key = JSON.stringify(q);
  let buf = shards.get(key);
  if (!buf) {
    buf = encodeShard(mnistSplits({ seed: q.seed, offset: q.offset, trainSize: q.train, valSize: q.val, testSize: q.test, task: q.task, layout: 'flat' }));
    shards.set(key, buf);
    if (shards.size > 4) shards.delete(shards.keys().next().value!);
  }
  return buf;
}

function send(res: ServerResponse, type: string, body: Uint8Array | string, cache = 'no-cache'): void {
  res.writeHead(200, { 'content-type': type, 'cache-control': cache });
  res.end(body);
}

function fail(res: ServerResponse, code: number, error: string, message: string): void {
  res.writeHead(code, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ error, message }));
}

/** Serves /device and /device/*; false when `url` is not one of its paths. */
export async function serveDevicePage(_req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
  const path = url.pathname;
  if (path === '/device' || path === '/device/') {
    // The fragment of the demo's link carries a token: keep the page's URL out of Referer headers.
    res.setHeader('referrer-policy', 'no-referrer');
    send(res, 'text/html; charset=utf-8', await cachedFile(pageFile('index.html')), 'no-store');
    return true;
  }
  if (path === '/device/app.css') {
    send(res, 'text/css; charset=utf-8', await cachedFile(pageFile('app.css')));
    return true;
  }
  if (path === '/device/app.js') {
    const bundle = await deviceBundle();
    send(res, 'text/javascript; charset=utf-8', bundle.js);
    return true;
  }
  if (path.startsWith('/device/wasm/')) {
    const name = basename(path);
    if (!WASM_FILES.has(name) || path !== `/device/wasm/${name}`) {
      fail(res, 404, 'not_found', `no such wasm file: ${path} (served: ${[...WASM_FILES].join(', ')})`);
      return true;
    }
    send(res, 'application/wasm', await cachedFile(join(wasmDir(), name)), 'public, max-age=3600');
    return true;
  }
  if (path === '/device/data/mnist') {
    const q = shardQuerySchema.safeParse(Object.fromEntries(url.searchParams));
    if (!q.success) {
      fail(res, 400, 'bad_request', `mnist shard: ${describeZodError(q.error)}`);
      return true;
    }
    const { offset, train, val, test } = q.data;
    const pool = loadMnistAll().n - test;
    if (offset + train + val > pool) {
      fail(res, 400, 'bad_request', `mnist shard: offset ${offset} + train ${train} + held-out ${val} exceeds the ${pool} digits left after a test split of ${test}`);
      return true;
    }
    send(res, 'application/octet-stream', mnistShard(q.data), 'no-store');
    return true;
  }
  return false;
}
