// Why a connection to the coordinator failed, in plain words. socket.io-client reports a failed
// attempt as "websocket error" (or "xhr poll error", "timeout"); the real cause — ECONNREFUSED,
// ENOTFOUND, a TLS failure, an HTTP status — sits in the error's `description` (the transport's
// ErrorEvent, whose `error` is Node's error) or `cause`. This digs it out.

export interface ConnectFailure {
  /** a system or TLS error code when one was found (ECONNREFUSED, ENOTFOUND, CERT_HAS_EXPIRED…) */
  code?: string;
  /** one line a person can act on */
  cause: string;
}

const TLS_CODE = /^(CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|ERR_SSL_|ERR_TLS_|HOSTNAME_MISMATCH|ERR_TLS_CERT_ALTNAME_INVALID)/;

interface ErrLike {
  message?: unknown;
  code?: unknown;
  description?: unknown;
  cause?: unknown;
  error?: unknown;
  context?: unknown;
  type?: unknown;
}

/** The innermost error-like objects of `err`, outermost first. */
function chain(err: unknown): ErrLike[] {
  const out: ErrLike[] = [];
  const seen = new Set<unknown>();
  const walk = (e: unknown, depth: number) => {
    if (!e || typeof e !== 'object' || seen.has(e) || depth > 6) return;
    seen.add(e);
    const x = e as ErrLike;
    out.push(x);
    walk(x.error, depth + 1);
    walk(x.description, depth + 1);
    walk(x.cause, depth + 1);
  };
  walk(err, 0);
  return out;
}

/** `host:port` of a URL, for messages. */
function hostPort(url: string): string {
  try {
    const u = new URL(url);
    const port = u.port || (u.protocol === 'https:' || u.protocol === 'wss:' ? '443' : '80');
    return `${u.hostname}:${port}`;
  } catch {
    return url;
  }
}

export function describeConnectFailure(url: string, err: unknown): ConnectFailure {
  const errs = chain(err);
  const code = errs.map((e) => e.code).find((c): c is string => typeof c === 'string' && c.length > 0);
  const messages = errs.map((e) => e.message).filter((m): m is string => typeof m === 'string' && m.length > 0);
  // OpenSSL messages carry newlines and source paths: one line, and only the part that speaks.
  const detail = (messages[messages.length - 1] ?? String(err)).replace(/\s+/g, ' ').trim();
  const where = hostPort(url);
  if (code === 'ECONNREFUSED') return { code, cause: `connection refused (ECONNREFUSED): nothing listens on ${where}, or a firewall refuses it` };
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return { code, cause: `DNS: the host name does not resolve (${code}: ${detail})` };
  if (code === 'ETIMEDOUT' || code === 'ECONNRESET' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EPIPE') {
    return { code, cause: `network: ${detail} (${code})` };
  }
  if (/wrong version number|packet length too long|http request/i.test(detail)) {
    return { code: code ?? 'EPROTO', cause: `TLS: the server at ${where} does not speak TLS (${code ?? 'EPROTO'}, wrong version number): use http://, or the TLS proxy's address` };
  }
  if ((code && TLS_CODE.test(code)) || /SSL|TLS|certificate/i.test(detail)) {
    return { code, cause: `TLS: ${detail}${code ? ` (${code})` : ''}; check the certificate, or the scheme (http vs https)` };
  }
  // ws: "Unexpected server response: 404" — something answers, but not a coordinator's socket.io.
  const status = /Unexpected server response: (\d+)/.exec(detail);
  if (status) return { code: `HTTP_${status[1]}`, cause: `the server at ${where} answered HTTP ${status[1]}: is it the coordinator (path /socket.io/), or a proxy without websocket upgrade?` };
  if (/timeout/i.test(detail)) return { code: code ?? 'TIMEOUT', cause: `no answer from ${where} within the connection timeout` };
  return { code, cause: code ? `${detail} (${code})` : detail };
}
