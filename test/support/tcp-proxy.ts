/**
 * A TCP proxy under a test's control, between the forwarder and one server, on loopback:
 *
 *   const proxy = await TcpProxy.start(server.httpPort);   // listens on 127.0.0.1:<proxy.port>
 *   proxy.setMode({ kind: 'reset', direction: 'up', afterBytes: 8192, match: 'POST /dicom-web/studies' });
 *   proxy.onTrigger(() => …);                              // once the mode first took effect
 *   proxy.heal();                                          // back to 'pass'
 *
 * It works on bytes, below HTTP, so it can do what an HTTP-level fake cannot: cut a body in the
 * middle, swallow a request that did reach the server, hold a connection open and silent.
 *
 * Modes (`up` is forwarder → server, `down` is server → forwarder):
 * - `pass`: forwards both ways.
 * - `drop`: refuses new connections (accepts and closes them at once); open ones go on.
 * - `delay`: forwards each chunk `ms` later (one chunk at a time per direction, order kept).
 * - `reset`: on a connection, once `afterBytes` bytes went in `direction`, forwards no more and
 *   resets both sockets (RST).
 * - `black-hole`: without `match`, accepts new connections, reads them and never answers nor
 *   forwards; with `match`, from the match on: `up` swallows the request (it never reaches the
 *   server) and everything after it, `down` lets the request through and swallows the answer.
 * - `tap`: forwards everything, and triggers once `afterBytes` bytes went in `direction`.
 *
 * `match` (for reset, black-hole and tap) limits the mode to connections whose requests (the `up`
 * bytes) contained that text, and counts bytes from there: `up` from the match's first byte, `down`
 * from the first answer byte after it. Without it the mode applies to every connection, counted
 * from the moment the mode was set. A mode triggers (`onTrigger`) the first time it takes effect.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { listenOnLoopback } from '../../testbed/loopback.ts';

export type Direction = 'up' | 'down';

export type ProxyMode =
  | { readonly kind: 'pass' }
  | { readonly kind: 'drop' }
  | { readonly kind: 'delay'; readonly ms: number }
  | {
      readonly kind: 'reset';
      readonly direction: Direction;
      readonly afterBytes: number;
      readonly match?: string | undefined;
    }
  | {
      readonly kind: 'black-hole';
      readonly direction?: Direction | undefined;
      readonly match?: string | undefined;
    }
  | {
      readonly kind: 'tap';
      readonly direction: Direction;
      readonly afterBytes: number;
      readonly match?: string | undefined;
    };

export interface ProxyStats {
  /** Connections accepted. */
  connections: number;
  /** Connections refused by `drop`. */
  dropped: number;
  /** Connections reset by `reset`. */
  resets: number;
  /** Connections held silent by `black-hole`. */
  blackHoled: number;
  /** Bytes received from the forwarder (`up`) and from the server (`down`), whatever was done with them. */
  readonly bytes: { up: number; down: number };
}

interface Connection {
  readonly client: Socket;
  server: Socket | undefined;
  /** The current mode's match was seen on this connection (always true for a mode without one). */
  matched: boolean;
  /** Bytes counted towards the mode's `afterBytes`, per direction. */
  readonly counted: { up: number; down: number };
  /** Directions whose bytes are swallowed from now on. */
  readonly swallow: Set<Direction>;
  /** The last bytes of each stream, to find a text split across two chunks. */
  readonly tails: Map<string, Buffer>;
  closed: boolean;
}

const matchOf = (mode: ProxyMode): string | undefined =>
  mode.kind === 'reset' || mode.kind === 'black-hole' || mode.kind === 'tap' ? mode.match : undefined;

export class TcpProxy {
  readonly port: number;
  readonly targetPort: number;
  readonly stats: ProxyStats = {
    connections: 0,
    dropped: 0,
    resets: 0,
    blackHoled: 0,
    bytes: { up: 0, down: 0 },
  };
  private mode: ProxyMode = { kind: 'pass' };
  private triggered = false;
  private triggerListeners: (() => void)[] = [];
  private readonly counters = new Map<string, number>();
  private readonly connections = new Set<Connection>();
  private readonly server: Server;

  private constructor(server: Server, port: number, targetPort: number) {
    this.server = server;
    this.port = port;
    this.targetPort = targetPort;
  }

  /** Listens on 127.0.0.1 on a free port and forwards to 127.0.0.1:targetPort. */
  static async start(targetPort: number): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = createServer({ allowHalfOpen: true }, (socket) => proxy?.accept(socket));
    proxy = new TcpProxy(server, await listenOnLoopback(server), targetPort);
    return proxy;
  }

  /** The proxy's HTTP root, to put in the forwarder's configuration instead of the server's. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Switches mode; counting and matching start afresh, and the next effect triggers again. */
  setMode(mode: ProxyMode): void {
    this.mode = mode;
    this.triggered = false;
    for (const connection of this.connections) {
      connection.matched = matchOf(mode) === undefined;
      connection.counted.up = 0;
      connection.counted.down = 0;
      connection.tails.delete('match');
    }
  }

  get currentMode(): ProxyMode {
    return this.mode;
  }

  /** Whether the current mode has taken effect. */
  get hasTriggered(): boolean {
    return this.triggered;
  }

  /** Called once, the first time the current mode takes effect (a drop, a reset, a swallowed byte, a tap). */
  onTrigger(listener: () => void): void {
    this.triggerListeners.push(listener);
  }

  /** Back to `pass`; connections held by a black hole are closed, so that nothing stays hanging. */
  heal(): void {
    this.setMode({ kind: 'pass' });
    this.triggerListeners = [];
    for (const connection of this.connections) {
      if (connection.swallow.size > 0) this.destroy(connection);
    }
  }

  /** Counts the occurrences of `text` in what the forwarder sends (`up`), from now on. */
  count(text: string): void {
    this.counters.set(text, 0);
  }

  counted(text: string): number {
    return this.counters.get(text) ?? 0;
  }

  async close(): Promise<void> {
    for (const connection of this.connections) this.destroy(connection);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private fire(): void {
    if (this.triggered) return;
    this.triggered = true;
    for (const listener of this.triggerListeners) listener();
  }

  private accept(client: Socket): void {
    this.stats.connections++;
    client.on('error', () => undefined);
    const mode = this.mode;
    if (mode.kind === 'drop') {
      this.stats.dropped++;
      client.destroy();
      this.fire();
      return;
    }
    const connection: Connection = {
      client,
      server: undefined,
      matched: matchOf(mode) === undefined,
      counted: { up: 0, down: 0 },
      swallow: new Set(),
      tails: new Map(),
      closed: false,
    };
    this.connections.add(connection);
    client.once('close', () => this.destroy(connection));
    if (mode.kind === 'black-hole' && mode.match === undefined) {
      this.stats.blackHoled++;
      connection.swallow.add('up').add('down');
      client.on('data', (chunk: Buffer) => {
        this.stats.bytes.up += chunk.length;
      });
      this.fire();
      return;
    }
    client.pause();
    const server = connect(this.targetPort, '127.0.0.1');
    connection.server = server;
    server.on('error', () => undefined);
    server.once('connect', () => client.resume());
    server.once('close', () => {
      // A held connection stays silent even when the server side goes (Orthanc's keep-alive ends).
      if (!connection.swallow.has('down')) this.destroy(connection);
    });
    client.on('end', () => {
      if (!connection.swallow.has('up')) server.end();
    });
    server.on('end', () => {
      if (!connection.swallow.has('down')) client.end();
    });
    client.on('data', (chunk: Buffer) => this.onData(connection, 'up', chunk));
    server.on('data', (chunk: Buffer) => this.onData(connection, 'down', chunk));
  }

  private destroy(connection: Connection): void {
    if (connection.closed) return;
    connection.closed = true;
    this.connections.delete(connection);
    connection.client.destroy();
    connection.server?.destroy();
  }

  /** Finds `text` in a stream split into chunks: its starts in `chunk` (negative: it began in an earlier chunk). */
  private find(connection: Connection, key: string, text: string, chunk: Buffer): number[] {
    const tail = connection.tails.get(key) ?? Buffer.alloc(0);
    const joined = tail.length === 0 ? chunk : Buffer.concat([tail, chunk]);
    const found: number[] = [];
    const needle = Buffer.from(text);
    for (let at = joined.indexOf(needle); at !== -1; at = joined.indexOf(needle, at + 1)) {
      found.push(at - tail.length);
    }
    const keep = Math.min(needle.length - 1, joined.length);
    connection.tails.set(key, Buffer.from(joined.subarray(joined.length - keep)));
    return found;
  }

  private onData(connection: Connection, direction: Direction, chunk: Buffer): void {
    this.stats.bytes[direction] += chunk.length;
    if (direction === 'up') {
      for (const [text, total] of this.counters) {
        this.counters.set(text, total + this.find(connection, `count:${text}`, text, chunk).length);
      }
    }
    if (connection.closed || connection.swallow.has(direction)) return;
    const mode = this.mode;
    const match = matchOf(mode);
    // Where, in this chunk, the mode starts to apply (0 unless the match is in this chunk).
    let from = 0;
    if (!connection.matched) {
      if (direction === 'down' || match === undefined) {
        this.forward(connection, direction, chunk);
        return;
      }
      const [at] = this.find(connection, 'match', match, chunk);
      if (at === undefined) {
        this.forward(connection, direction, chunk);
        return;
      }
      connection.matched = true;
      from = Math.max(0, at);
    }
    switch (mode.kind) {
      case 'pass':
      case 'drop':
        this.forward(connection, direction, chunk);
        return;
      case 'delay':
        this.fire();
        this.forwardLater(connection, direction, chunk, mode.ms);
        return;
      case 'black-hole': {
        const swallowed = mode.direction ?? 'up';
        if (direction !== swallowed) {
          this.forward(connection, direction, chunk);
          return;
        }
        this.stats.blackHoled++;
        connection.swallow.add(swallowed);
        // A request never sent on gets no answer either.
        if (swallowed === 'up') connection.swallow.add('down');
        if (from > 0) this.forward(connection, direction, chunk.subarray(0, from));
        this.fire();
        return;
      }
      case 'reset':
      case 'tap': {
        if (direction !== mode.direction) {
          this.forward(connection, direction, chunk);
          return;
        }
        // Bytes this connection may still pass in this direction before the mode acts.
        const room = mode.afterBytes - connection.counted[direction];
        const counting = chunk.length - from;
        connection.counted[direction] += counting;
        if (mode.kind === 'tap') {
          this.forward(connection, direction, chunk);
          if (counting >= room) this.fire();
          return;
        }
        if (counting <= room) {
          this.forward(connection, direction, chunk);
          return;
        }
        this.stats.resets++;
        const passed = chunk.subarray(0, from + Math.max(0, room));
        const target = direction === 'up' ? connection.server : connection.client;
        connection.swallow.add('up').add('down');
        const reset = () => {
          for (const socket of [connection.client, connection.server]) {
            try {
              socket?.resetAndDestroy();
            } catch {
              socket?.destroy();
            }
          }
          this.destroy(connection);
        };
        this.fire();
        if (passed.length > 0 && target !== undefined && !target.destroyed) target.write(passed, reset);
        else reset();
        return;
      }
    }
  }

  private forward(connection: Connection, direction: Direction, chunk: Buffer): void {
    const [source, target] =
      direction === 'up' ? [connection.client, connection.server] : [connection.server, connection.client];
    if (target === undefined || target.destroyed || chunk.length === 0) return;
    if (!target.write(chunk)) {
      source?.pause();
      target.once('drain', () => source?.resume());
    }
  }

  private forwardLater(connection: Connection, direction: Direction, chunk: Buffer, ms: number): void {
    const source = direction === 'up' ? connection.client : connection.server;
    source?.pause();
    setTimeout(() => {
      if (connection.closed) return;
      this.forward(connection, direction, chunk);
      const target = direction === 'up' ? connection.server : connection.client;
      if (target?.writableNeedDrain) return; // forward() resumes on drain
      source?.resume();
    }, ms).unref();
  }
}
