// The coordinator URL a person typed, made into one socket.io can use or refused with a reason.
// "127.0.0.1:7070" (no scheme) would otherwise be read as scheme "127.0.0.1:" and fail obscurely.

export interface CoordinatorUrl {
  url: string;
  /** said once when the URL was changed (a scheme added) */
  notice?: string;
}

const SCHEMES = ['http:', 'https:', 'ws:', 'wss:'];

/** Throws an Error whose message names the URL and what is wrong with it. */
export function normalizeCoordinatorUrl(raw: string): CoordinatorUrl {
  const given = raw.trim();
  if (given === '') throw new Error('coordinator URL is empty: give e.g. http://127.0.0.1:7070');
  let url = given;
  let notice: string | undefined;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(given)) {
    url = `http://${given}`;
    notice = `coordinator URL "${given}" has no scheme: using ${url} (write https://… for a TLS proxy)`;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`coordinator URL "${given}" is not a valid URL: give e.g. http://127.0.0.1:7070`);
  }
  if (!SCHEMES.includes(parsed.protocol)) {
    throw new Error(`coordinator URL "${given}" has scheme "${parsed.protocol.slice(0, -1)}": use http:// or https:// (ws:// and wss:// are accepted too)`);
  }
  if (!parsed.hostname) throw new Error(`coordinator URL "${given}" names no host`);
  return { url, notice };
}
