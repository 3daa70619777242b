/**
 * A network link between two hosts, emulated on loopback: a TCP proxy that adds a one-way delay
 * in each direction and caps each direction's bandwidth, for the benchmark over a link
 * (docs/performance.md, "Over a link").
 *
 *   const link = await LinkEmulator.start(server.httpPort, { rttMs: 20, mbit: 200 });
 *   // point the client at link.url instead of the server
 *
 * The model, per direction:
 * - The wire: every connection's bytes in that direction share one serialiser at `mbit`
 *   (10^6 bits/s), first come first served (a token bucket one chunk deep). A chunk leaves the
 *   wire once the chunks queued before it, from any connection, have.
 * - The delay line: a chunk is handed on `rttMs / 2` (plus up to `jitterMs`) after it left the
 *   wire. Many chunks are in flight at once, so the delay does not throttle a stream the way a
 *   stop-and-wait proxy does; order is kept within a connection.
 * - The window: as TCP's, a connection holds at most `windowBytes` per direction not yet
 *   acknowledged; a chunk is acknowledged one way-delay after it was handed on. Reading from the
 *   sender stops meanwhile, so the proxy's memory stays bounded by connections × 2 × window.
 * - A new connection's first request bytes arrive one and a half round trips after it was
 *   accepted, as after TCP's handshake: each new connection costs a round trip.
 *
 * It is a userspace proxy (no privileges, no kernel queueing discipline); its own CPU use comes
 * out of the machine's, which the benchmark reports.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { listenOnLoopback } from './loopback.ts';

export interface LinkProfile {
  /** Round-trip time the link adds, ms: half of it in each direction. */
  readonly rttMs: number;
  /** Bandwidth of each direction, Mbit/s (10^6 bits). */
  readonly mbit: number;
  /** Extra one-way delay of each chunk, uniform in [0, jitterMs] ms; order within a connection kept. */
  readonly jitterMs?: number | undefined;
  /** Bytes a connection may have in flight per direction (TCP's window); default 4 MiB. */
  readonly windowBytes?: number | undefined;
}

/** About Linux's receive window after autotuning (net.ipv4.tcp_rmem's maximum is 6 MiB). */
const DEFAULT_WINDOW = 4 * 1024 * 1024;

/** `RTT_MS:MBIT`, e.g. `20:200`. */
export const parseLinkProfile = (text: string): LinkProfile => {
  const match = /^(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(text.trim());
  const rttMs = Number(match?.[1]);
  const mbit = Number(match?.[2]);
  if (match === null || !(mbit > 0)) {
    throw new RangeError(`a link is RTT_MS:MBIT with a bandwidth above 0, e.g. 20:200; got '${text}'`);
  }
  return { rttMs, mbit };
};

export const linkLabel = (profile: LinkProfile): string => `${profile.rttMs}:${profile.mbit}`;

/** What one direction of the link carries at most, MB/s (10^6 bytes). */
export const linkCapacityMBps = (profile: LinkProfile): number => profile.mbit / 8;

/** One direction's serialiser, shared by every connection. */
class Wire {
  private freeAt = 0;
  private readonly bytesPerMs: number;

  constructor(mbit: number) {
    this.bytesPerMs = (mbit * 1e6) / 8 / 1000;
  }

  /** When a chunk handed to the wire `now` has left it. */
  send(bytes: number, now: number): number {
    this.freeAt = Math.max(this.freeAt, now) + bytes / this.bytesPerMs;
    return this.freeAt;
  }
}

interface Held {
  readonly chunk: Buffer;
  readonly deliverAt: number;
  readonly ackAt: number;
}

/** One direction of one connection: the delay line from `from` to `to`. */
class Lane {
  private readonly held: Held[] = [];
  /** held[0 .. delivered) were written to `to` and wait for their acknowledgement. */
  private delivered = 0;
  private inFlight = 0;
  private lastDelivery: number;
  private ended = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly from: Socket;
  private readonly to: Socket;
  private readonly wire: Wire;
  private readonly profile: LinkProfile;

  /** `notBefore`: no chunk is delivered before then (the handshake). */
  constructor(from: Socket, to: Socket, wire: Wire, profile: LinkProfile, notBefore: number) {
    this.from = from;
    this.to = to;
    this.wire = wire;
    this.profile = profile;
    this.lastDelivery = notBefore;
    from.on('data', (chunk: Buffer) => this.take(chunk));
    from.on('end', () => {
      this.ended = true;
      this.tick();
    });
    to.on('drain', () => this.tick());
  }

  private get oneWayMs(): number {
    return this.profile.rttMs / 2;
  }

  private take(chunk: Buffer): void {
    const now = performance.now();
    const jitter = Math.random() * (this.profile.jitterMs ?? 0);
    const deliverAt = Math.max(this.wire.send(chunk.length, now) + this.oneWayMs + jitter, this.lastDelivery);
    this.lastDelivery = deliverAt;
    this.held.push({ chunk, deliverAt, ackAt: deliverAt + this.oneWayMs });
    this.inFlight += chunk.length;
    if (this.inFlight >= (this.profile.windowBytes ?? DEFAULT_WINDOW)) this.from.pause();
    this.schedule();
  }

  private tick(): void {
    this.timer = undefined;
    if (this.to.destroyed) return;
    const now = performance.now();
    for (let next = this.held[this.delivered]; next !== undefined && next.deliverAt <= now; ) {
      this.to.write(next.chunk);
      next = this.held[++this.delivered];
    }
    let acked = 0;
    while (acked < this.delivered && (this.held[acked]?.ackAt ?? Infinity) <= now) {
      this.inFlight -= this.held[acked]?.chunk.length ?? 0;
      acked++;
    }
    this.held.splice(0, acked);
    this.delivered -= acked;
    if (this.ended && this.delivered === this.held.length && !this.to.writableEnded) this.to.end();
    const window = this.profile.windowBytes ?? DEFAULT_WINDOW;
    // A receiver slower than the link holds the sender back too.
    if (this.inFlight < window && !this.to.writableNeedDrain) this.from.resume();
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    const next = this.held[this.delivered]?.deliverAt ?? Infinity;
    const ack = this.delivered > 0 ? (this.held[0]?.ackAt ?? Infinity) : Infinity;
    const at = Math.min(next, ack);
    if (at === Infinity) return;
    this.timer = setTimeout(() => this.tick(), Math.max(0, at - performance.now()));
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

export interface LinkStats {
  connections: number;
  /** Bytes accepted towards the server (`up`) and towards the client (`down`). */
  readonly bytes: { up: number; down: number };
}

export class LinkEmulator {
  readonly port: number;
  readonly profile: LinkProfile;
  readonly stats: LinkStats = { connections: 0, bytes: { up: 0, down: 0 } };
  private readonly server: Server;
  private readonly up: Wire;
  private readonly down: Wire;
  private readonly sockets = new Set<Socket>();

  private constructor(server: Server, port: number, profile: LinkProfile) {
    this.server = server;
    this.port = port;
    this.profile = profile;
    this.up = new Wire(profile.mbit);
    this.down = new Wire(profile.mbit);
  }

  /** Listens on 127.0.0.1 on a free port; every connection crosses the link to 127.0.0.1:targetPort. */
  static async start(targetPort: number, profile: LinkProfile): Promise<LinkEmulator> {
    let link: LinkEmulator | undefined;
    const server = createServer({ allowHalfOpen: true }, (socket) => link?.accept(socket, targetPort));
    link = new LinkEmulator(server, await listenOnLoopback(server), profile);
    return link;
  }

  /** The HTTP root across the link, to configure instead of the server's. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket, targetPort: number): void {
    this.stats.connections++;
    // Nagle's algorithm off on both sides, as the endpoints have it (Orthanc's TcpNoDelay, undici):
    // on, the emulator would hold each response's second write until the client's delayed ACK,
    // 40 ms on Linux, and add it to every exchange.
    client.setNoDelay(true);
    const server = connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true, noDelay: true });
    // After TCP's handshake: the client sends once its SYN-ACK is back (1 RTT), its bytes arrive
    // half a round trip later; a server speaking first is heard 1 RTT after the client's SYN.
    const accepted = performance.now();
    const lanes = [
      new Lane(client, server, this.up, this.profile, accepted + 1.5 * this.profile.rttMs),
      new Lane(server, client, this.down, this.profile, accepted + this.profile.rttMs),
    ];
    client.on('data', (chunk: Buffer) => {
      this.stats.bytes.up += chunk.length;
    });
    server.on('data', (chunk: Buffer) => {
      this.stats.bytes.down += chunk.length;
    });
    const reset = () => {
      for (const lane of lanes) lane.stop();
      for (const socket of [client, server]) socket.destroy();
    };
    for (const socket of [client, server]) {
      this.sockets.add(socket);
      socket.on('error', reset);
      // Closed after its end: the other lane still delivers what it holds, then ends the other
      // side. Closed without one (destroyed): the other side is cut too.
      socket.once('close', () => {
        this.sockets.delete(socket);
        if (!socket.readableEnded) reset();
      });
    }
  }
}
