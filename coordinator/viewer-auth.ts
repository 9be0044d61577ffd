// Who may read the coordinator's HTTP endpoints: holders of a viewer token from the config.
// Viewer tokens are a separate list from device tokens (config.ts refuses a viewer token equal to
// a device's), so a device's secret never opens /status, /metrics or the dashboard. Compared as
// sha256 digests in constant time, like device tokens.
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { tokenDigest } from './auth.js';
import type { ViewerConfig } from './config.js';

export type ViewerCheck = { ok: true; viewer: string } | { ok: false; message: string };

export class ViewerAuth {
  private readonly digests: { name: string; digest: Buffer }[];

  constructor(viewers: readonly ViewerConfig[]) {
    this.digests = viewers.map((v) => ({ name: v.name, digest: tokenDigest(v.token) }));
  }

  /**
   * The request's token: `Authorization: Bearer …`, or, where `allowQuery` (the dashboard page
   * and its event stream: a browser cannot set headers on a link or an EventSource), `?token=…`.
   */
  check(req: IncomingMessage, url: URL, allowQuery: boolean): ViewerCheck {
    if (this.digests.length === 0) {
      return { ok: false, message: 'no viewer token is configured: add `viewers: [{ tokenEnv: SOME_VAR }]` (or token, tokenFile) to the coordinator config' };
    }
    const header = req.headers.authorization;
    let token: string | undefined;
    if (header !== undefined) {
      const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
      if (!m) return { ok: false, message: 'the Authorization header must be "Bearer <viewer token>"' };
      token = m[1];
    } else if (allowQuery) {
      token = url.searchParams.get('token') ?? undefined;
    }
    if (!token) {
      const how = allowQuery ? "send 'Authorization: Bearer <token>' or add ?token=<token> to the URL" : "send 'Authorization: Bearer <token>'";
      return { ok: false, message: `a viewer token is required: ${how} (a token from the coordinator config's viewers list)` };
    }
    const given = tokenDigest(token);
    // Compare with every viewer, always, so the time taken does not tell which (if any) matched.
    let match: string | undefined;
    for (const v of this.digests) if (timingSafeEqual(given, v.digest) && match === undefined) match = v.name;
    if (match === undefined) return { ok: false, message: 'this token is not a viewer token of this coordinator (device tokens cannot read these endpoints)' };
    return { ok: true, viewer: match };
  }
}
