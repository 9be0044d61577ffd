// The coordinator's plain-HTTP side, on the same port as socket.io (which takes /socket.io/ and
// hands every other request here): /healthz, /status, /metrics, the dashboard page, its event
// stream and its static files; the browser device's page under /device. Everything but /healthz,
// the static files and /device needs a viewer token.
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../shared/log.js';
import { serveDevicePage } from './device-page/routes.js';
import type { DashboardFeed } from './dashboard-feed.js';
import type { CoordinatorMetrics } from './metrics.js';
import type { StatusSnapshot } from './status.js';
import type { ViewerAuth } from './viewer-auth.js';

export interface HttpRoutesDeps {
  auth: ViewerAuth;
  metrics: CoordinatorMetrics;
  feed: DashboardFeed;
  /** gateTraces false: without the pairs' gate traces (up to 512 points a pair: most of a large fleet's snapshot) */
  status(opts?: { gateTraces?: boolean }): StatusSnapshot;
  /** messages waiting in the sockets' write buffers */
  outboundQueue(): number;
  log: Logger;
}

const require = createRequire(import.meta.url);
const dashboardFile = (name: string) => fileURLToPath(new URL(`./dashboard/${name}`, import.meta.url));

/**
 * Static files of the dashboard: its own page, script and style, and uPlot from node_modules (no
 * CDN: nothing is downloaded at run time). They hold no state of the coordinator, so they are
 * served without a token; the page itself and its data are not.
 */
const STATIC: Record<string, { file: () => string; type: string }> = {
  '/dashboard/app.js': { file: () => dashboardFile('app.js'), type: 'text/javascript; charset=utf-8' },
  '/dashboard/app.css': { file: () => dashboardFile('app.css'), type: 'text/css; charset=utf-8' },
  '/dashboard/uplot.js': { file: () => require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  '/dashboard/uplot.css': { file: () => require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

const cache = new Map<string, Buffer>();
async function readStatic(path: string): Promise<Buffer> {
  let buf = cache.get(path);
  if (!buf) {
    buf = await readFile(path);
    cache.set(path, buf);
  }
  return buf;
}

function json(res: ServerResponse, code: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(code, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

/** The request handler for every non-socket.io request. Never throws. */
export function httpRoutes(deps: HttpRoutesDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const authorized = (req: IncomingMessage, res: ServerResponse, url: URL, allowQuery: boolean): boolean => {
    const r = deps.auth.check(req, url, allowQuery);
    if (r.ok) return true;
    json(res, 401, { error: 'unauthorized', message: r.message }, { 'www-authenticate': 'Bearer realm="mergenet-fed"' });
    return false;
  };

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://coordinator');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return json(res, 405, { error: 'method_not_allowed', message: `${req.method} is not served; the endpoints are read-only (GET)` }, { allow: 'GET, HEAD' });
    }
    const path = url.pathname;
    if (path === '/healthz') return json(res, 200, { ok: true, uptimeMs: deps.status({ gateTraces: false }).uptimeMs });
    const file = STATIC[path];
    if (file) {
      const body = await readStatic(file.file());
      res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-cache' });
      res.end(body);
      return;
    }
    if (path === '/status') {
      if (!authorized(req, res, url, false)) return;
      const traces = url.searchParams.get('gateTraces');
      if (traces !== null && traces !== '0' && traces !== '1') {
        return json(res, 400, { error: 'bad_request', message: `gateTraces must be 0 or 1, got ${JSON.stringify(traces)}` });
      }
      json(res, 200, deps.status({ gateTraces: traces !== '0' }));
      return;
    }
    if (path === '/metrics') {
      if (!authorized(req, res, url, false)) return;
      const text = await deps.metrics.render(deps.status({ gateTraces: false }), deps.outboundQueue());
      res.writeHead(200, { 'content-type': deps.metrics.contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (path === '/' || path === '/index.html') {
      if (!authorized(req, res, url, true)) return;
      const body = await readStatic(dashboardFile('index.html'));
      // The page carries the token in its URL: keep it out of Referer headers.
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'referrer-policy': 'no-referrer' });
      res.end(body);
      return;
    }
    if (path === '/events') {
      if (authorized(req, res, url, true)) deps.feed.subscribe(res);
      return;
    }
    // The browser device's page, bundle, wasm files and demo data (coordinator/device-page/).
    if ((path === '/device' || path.startsWith('/device/')) && (await serveDevicePage(req, res, url))) return;
    json(res, 404, { error: 'not_found', message: `no such endpoint: ${path} (served: /, /healthz, /status, /metrics, /events, /device, /socket.io/)` });
  };

  return (req, res) => {
    route(req, res).catch((err: unknown) => {
      deps.log.error({ err, url: req.url }, 'http request failed');
      if (!res.headersSent) json(res, 500, { error: 'internal', message: 'the coordinator failed to answer this request' });
      else res.end();
    });
  };
}
