// `npm run demo:browser`: a coordinator and a Node device, and a browser tab as the second device.
// The coordinator runs in this process (it also serves the device page at /device, its bundle, the
// tfjs wasm files and the MNIST shard); the Node device is a child process of the CLI
// (`mergenet-fed client`). This prints the page's URL with a ready-made token and what to do, then
// a line of cycle counts every 10 s, until Ctrl+C.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseCoordinatorConfig, serve, type RunningCoordinator } from '../coordinator/index.js';
import { deviceBundle } from '../coordinator/device-page/bundle.js';
import { silentLogger } from '../shared/log.js';
import { initBackend } from '../shared/tf/backend.js';

const BIN = fileURLToPath(new URL('../bin/mergenet-fed.js', import.meta.url));

export interface BrowserDemoOptions {
  host?: string;
  /** default 7070; 0: a free port */
  port?: number;
  /** print here (default stdout) */
  out?: (line: string) => void;
  /** start the Node device (default true) */
  nodeDevice?: boolean;
  /** seconds between status lines (default 10; 0: none) */
  statusEverySec?: number;
}

export interface BrowserDemo {
  coord: RunningCoordinator;
  /** the device page with the browser device's id and token in its fragment */
  pageUrl: string;
  tokens: { node: string; browser: string; viewer: string };
  stop(): Promise<void>;
}

const token = () => randomBytes(12).toString('base64url');

export async function startBrowserDemo(o: BrowserDemoOptions = {}): Promise<BrowserDemo> {
  const out = o.out ?? ((l: string) => process.stdout.write(l + '\n'));
  const tokens = { node: token(), browser: token(), viewer: token() };
  await initBackend(undefined, () => undefined);
  const config = parseCoordinatorConfig({
    host: o.host ?? '127.0.0.1',
    port: o.port ?? 7070,
    devices: [
      { id: 'node', token: tokens.node },
      { id: 'browser', token: tokens.browser },
    ],
    viewers: [{ name: 'demo', token: tokens.viewer }],
    // The LPKA adapter runs for both pairs (align none); the gate's guard is off so the two keep
    // exchanging for as long as the demo runs (with it, a pair it finds useless leaves the plan).
    defaults: { rank: 8, tCycle: 20, k: 5, tau: 0.5, align: 'none', gate: { guard: 'none' } },
    pairs: [
      { id: 'node-to-browser', source: { device: 'node', slot: 'dense_0' }, target: { device: 'browser', slot: 'dense_0' } },
      { id: 'browser-to-node', source: { device: 'browser', slot: 'dense_0' }, target: { device: 'node', slot: 'dense_0' } },
    ],
    statusEveryMs: 0,
  });
  // Build the page's bundle first: the page then loads at once, and a broken build shows here.
  await deviceBundle();
  const coord = await serve(config, { logger: silentLogger() });
  let child: ChildProcess | undefined;
  if (o.nodeDevice !== false) {
    child = spawn(
      process.execPath,
      [BIN, 'client', '--coordinator', coord.url, '--device', 'node', '--token-env', 'MERGENET_DEMO_NODE_TOKEN',
        '--model', 'mnist-mlp', '--hidden', '64', '--dataset', 'mnist', '--train-size', '500', '--val-size', '200',
        '--offset', '0', '--seed', '1', '--lr', '0.002', '--eval-every', '50', '--progress-every', '10', '--backend', 'wasm'],
      { env: { ...process.env, MERGENET_DEMO_NODE_TOKEN: tokens.node, MERGENET_LOG_LEVEL: 'error' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const prefix = (chunk: Buffer) => chunk.toString().split('\n').filter((l) => l.trim()).forEach((l) => out(`  [node device] ${l.replace(/^\[node\] /, '')}`));
    child.stdout!.on('data', prefix);
    child.stderr!.on('data', prefix);
  }
  const pageUrl = `${coord.url}/device#device=browser&token=${encodeURIComponent(tokens.browser)}&model=mlp-64&offset=2000`;
  out('');
  out('mergenet-fed browser demo');
  out(`  coordinator  ${coord.url}  (pairs node.dense_0 → browser.dense_0 and back, rank 8, every 20 steps, LPKA adapter)`);
  out(`  Node device  "node": MLP 784-64-10 on 500 MNIST digits, a child process`);
  out(`  dashboard    ${coord.url}/?token=${tokens.viewer}`);
  out('');
  out('Open the device page in a browser on this machine:');
  out('');
  out(`  ${pageUrl}`);
  out('');
  out('The form is filled in (device "browser" and its token): press Join. The tab fetches its own');
  out('500 MNIST digits from the coordinator, trains an MLP 784-64-10 with tfjs (webgl on a GPU, else wasm),');
  out('and exchanges rank-8 slices, transfers and feedback with the Node device: watch "transfers');
  out('applied", the feedback acknowledged and the held-out accuracy. Try a wrong token: the page');
  out("shows the coordinator's refusal. Stop this command while the page runs: the page trains on");
  out('offline and reconnects when the coordinator is back on the same port.');
  out('Ctrl+C stops the coordinator and the Node device.');
  out('');
  const every = o.statusEverySec ?? 10;
  const timer = every > 0
    ? setInterval(() => {
        const s = coord.status();
        const pair = (id: string) => s.pairs.find((p) => p.id === id)?.updates ?? 0;
        const devs = s.devices.map((d) => `${d.id} ${d.connected ? 'connected' : 'offline'}${d.metrics?.valAcc !== undefined ? ` ${(100 * d.metrics.valAcc).toFixed(1)} %` : ''}`).join(', ');
        out(`[coordinator] cycles node → browser ${pair('node-to-browser')}, browser → node ${pair('browser-to-node')}; drops ${s.totals.drops}; ${devs}`);
      }, every * 1000)
    : undefined;
  timer?.unref();
  let stopped = false;
  return {
    coord,
    pageUrl,
    tokens,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (timer) clearInterval(timer);
      if (child && child.exitCode === null) {
        const exited = new Promise<void>((r) => child!.once('exit', () => r()));
        child.kill('SIGTERM');
        await exited;
      }
      await coord.close();
    },
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write('npm run demo:browser [-- --port N] [-- --host ADDR]\n  a coordinator (default 127.0.0.1:7070) and a Node device; prints the device page URL for a browser tab to join as the second device\n');
    return;
  }
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const port = opt('--port') !== undefined ? Number(opt('--port')) : undefined;
  const demo = await startBrowserDemo({ port, host: opt('--host') });
  let signals = 0;
  const onSignal = () => {
    signals += 1;
    if (signals > 1) process.exit(130);
    process.stdout.write('stopping…\n');
    void demo.stop().then(() => process.exit(0));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err: unknown) => {
    process.stderr.write(`demo:browser: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
