// A TCP proxy on loopback whose device→coordinator direction can be held: bytes the device sends
// while held are buffered and delivered in one go on release. It stands in for a coordinator that
// is busy (not reading its socket) without reaching into socket.io's internals. It reads the
// WebSocket frames it buffers only to tell when the device has sent its close frame.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export class PausableProxy {
  private server?: Server;
  private held = false;
  private readonly pending: { upstream: Socket; chunks: Buffer[]; ended: boolean }[] = [];
  private closeSeen: (() => void)[] = [];
  private readonly links: { client: Socket; upstream: Socket }[] = [];
  url = '';

  constructor(private readonly targetPort: number) {}

  async listen(): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, '127.0.0.1');
      const link = { upstream, chunks: [] as Buffer[], ended: false };
      this.pending.push(link);
      this.links.push({ client, upstream });
      client.on('data', (b) => {
        if (!this.held) return void upstream.write(b);
        link.chunks.push(b);
        if (hasCloseFrame(Buffer.concat(link.chunks))) for (const f of this.closeSeen.splice(0)) f();
      });
      client.on('end', () => {
        if (this.held) {
          link.ended = true;
        } else upstream.end();
      });
      upstream.on('data', (b) => client.write(b));
      upstream.on('end', () => client.end());
      const destroy = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', destroy);
      upstream.on('error', destroy);
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Stop forwarding device → coordinator bytes (they are buffered). */
  hold(): void {
    this.held = true;
  }

  /** Resolves once a held connection's buffer holds a WebSocket close frame from the device. */
  closeFrameHeld(): Promise<void> {
    if (this.pending.some((l) => hasCloseFrame(Buffer.concat(l.chunks)))) return Promise.resolve();
    return new Promise((r) => this.closeSeen.push(r));
  }

  /** Deliver everything buffered, in order and in one write per connection, then forward again. */
  release(): void {
    this.held = false;
    for (const l of this.pending) {
      if (l.chunks.length) l.upstream.write(Buffer.concat(l.chunks.splice(0)));
      if (l.ended) l.upstream.end();
    }
  }

  async close(): Promise<void> {
    for (const { client, upstream } of this.links) {
      client.destroy();
      upstream.destroy();
    }
    await new Promise<void>((r) => this.server?.close(() => r()) ?? r());
  }
}

/**
 * Whether a run of client→server WebSocket frames (RFC 6455 §5.2; the run starts at a frame
 * boundary, as the proxy holds only between messages) contains a close frame (opcode 8).
 */
function hasCloseFrame(b: Buffer): boolean {
  let at = 0;
  while (at + 2 <= b.length) {
    const opcode = b[at] & 0x0f;
    if (opcode === 8) return true;
    const masked = (b[at + 1] & 0x80) !== 0;
    let len = b[at + 1] & 0x7f;
    let head = 2;
    if (len === 126) {
      if (at + 4 > b.length) return false;
      len = b.readUInt16BE(at + 2);
      head = 4;
    } else if (len === 127) {
      if (at + 10 > b.length) return false;
      len = Number(b.readBigUInt64BE(at + 2));
      head = 10;
    }
    at += head + (masked ? 4 : 0) + len;
  }
  return false;
}
