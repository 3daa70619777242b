/**
 * The link emulator (testbed/link-emulator.ts) against trivial servers on loopback: the round
 * trip it adds, the bandwidth it allows each way and shares between connections, and that a
 * stream is pipelined (a long round trip does not throttle it below the bandwidth). The ratios
 * are loose: the machine is shared, so only "at least the delay" and "at most the cap" are tight.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  LinkEmulator,
  type LinkProfile,
  linkCapacityMBps,
  parseLinkProfile,
} from '../testbed/link-emulator.ts';
import { listenOnLoopback } from '../testbed/loopback.ts';

const servers: Server[] = [];
const links: LinkEmulator[] = [];

afterEach(async () => {
  for (const link of links.splice(0)) await link.close();
  for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve));
});

/** A server on a free loopback port running `onConnection` for each client. */
const serve = async (onConnection: (socket: Socket) => void): Promise<number> => {
  const server = createServer({ allowHalfOpen: true }, onConnection);
  servers.push(server);
  return listenOnLoopback(server);
};

const linkTo = async (port: number, profile: LinkProfile): Promise<LinkEmulator> => {
  const link = await LinkEmulator.start(port, profile);
  links.push(link);
  return link;
};

const open = async (port: number): Promise<Socket> => {
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  return socket;
};

const echo = (socket: Socket) => socket.pipe(socket);

/** Bytes received by the sink until the sender ends; answers the count and closes. */
const sink = (socket: Socket) => {
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  socket.on('end', () => socket.end(String(bytes)));
};

const MB = 1e6;
const block = Buffer.alloc(64 * 1024, 7);

/** Writes `bytes` honouring backpressure, then ends; resolves with what the peer answers. */
const upload = async (socket: Socket, bytes: number): Promise<string> => {
  const answer: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => answer.push(chunk));
  for (let sent = 0; sent < bytes; sent += block.length) {
    if (!socket.write(block.subarray(0, Math.min(block.length, bytes - sent)))) await once(socket, 'drain');
  }
  socket.end();
  await once(socket, 'close');
  return Buffer.concat(answer).toString();
};

/** MB/s of `bytes` moved by `move`, timed from the call to its end. */
const rate = async (bytes: number, move: () => Promise<unknown>): Promise<number> => {
  const started = performance.now();
  await move();
  return bytes / MB / ((performance.now() - started) / 1000);
};

describe('link emulator', () => {
  it('parses RTT_MS:MBIT and names the form when it is wrong', () => {
    expect(parseLinkProfile('20:200')).toEqual({ rttMs: 20, mbit: 200 });
    expect(parseLinkProfile('0.5:1000')).toEqual({ rttMs: 0.5, mbit: 1000 });
    expect(linkCapacityMBps({ rttMs: 40, mbit: 1000 })).toBe(125);
    expect(() => parseLinkProfile('20')).toThrow(/RTT_MS:MBIT/);
    expect(() => parseLinkProfile('20:0')).toThrow(/RTT_MS:MBIT/);
  });

  it('adds the round trip to each exchange, and one more to a new connection (the handshake)', async () => {
    const profile = { rttMs: 40, mbit: 100 };
    const link = await linkTo(await serve(echo), profile);
    const socket = await open(link.port);
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const sent = performance.now();
      socket.write('x');
      await once(socket, 'data');
      times.push(performance.now() - sent);
    }
    const first = times.shift() ?? 0;
    const median = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)] ?? 0;
    console.info(`link 40 ms: first exchange ${first.toFixed(1)} ms, then median ${median.toFixed(1)} ms`);
    expect(first).toBeGreaterThanOrEqual(2 * profile.rttMs - 1);
    for (const time of times) expect(time).toBeGreaterThanOrEqual(profile.rttMs - 1);
    expect(median).toBeLessThan(profile.rttMs * 3);
    socket.end();
    await once(socket, 'close');
  });

  it('delivers an answer written in two parts (a header, then a body a moment later) a round trip after the question: no write held for an ACK', async () => {
    // As Orthanc answers (TcpNoDelay) and undici asks: neither end waits to coalesce its writes.
    // With Nagle's algorithm on its sockets, the emulator would hold the body until the client's
    // delayed ACK (40 ms on Linux), three round trips of this link instead of one.
    const profile = { rttMs: 20, mbit: 100 };
    const port = await serve((socket) => {
      socket.setNoDelay(true);
      socket.on('data', () => {
        socket.write('head');
        setTimeout(() => socket.write('body'), 5);
      });
      socket.on('end', () => socket.end());
    });
    const socket = await open((await linkTo(port, profile)).port);
    socket.setNoDelay(true);
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const sent = performance.now();
      socket.write('?');
      let received = '';
      while (received.length < 'headbody'.length) received += String((await once(socket, 'data'))[0]);
      expect(received).toBe('headbody');
      times.push(performance.now() - sent);
    }
    const median = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)] ?? 0;
    console.info(`link 20 ms, an answer in two writes: median ${median.toFixed(1)} ms`);
    expect(median).toBeGreaterThanOrEqual(profile.rttMs - 1);
    expect(median).toBeLessThan(profile.rttMs * 2);
    socket.end();
    await once(socket, 'close');
  });

  it('caps each direction at the bandwidth, a long round trip notwithstanding (a pipelined delay line)', async () => {
    const profile = { rttMs: 40, mbit: 200 };
    const cap = linkCapacityMBps(profile);
    const bytes = 25 * MB;
    const up = await linkTo(await serve(sink), profile);
    const upMBps = await rate(bytes, async () => {
      expect(await upload(await open(up.port), bytes)).toBe(String(bytes));
    });
    const down = await linkTo(await serve((socket) => void upload(socket, bytes)), profile);
    const downMBps = await rate(bytes, async () => {
      const socket = await open(down.port);
      let received = 0;
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
      socket.end();
      await once(socket, 'close');
      expect(received).toBe(bytes);
    });
    console.info(
      `link 40:200 (cap ${cap} MB/s): up ${upMBps.toFixed(1)} MB/s, down ${downMBps.toFixed(1)} MB/s`,
    );
    for (const measured of [upMBps, downMBps]) {
      expect(measured).toBeLessThanOrEqual(cap * 1.1);
      expect(measured).toBeGreaterThanOrEqual(cap * 0.5);
    }
    expect(up.stats.bytes.up).toBe(bytes);
    expect(down.stats.bytes.down).toBe(bytes);
  });

  it('shares the bandwidth between connections', async () => {
    const profile = { rttMs: 10, mbit: 200 };
    const cap = linkCapacityMBps(profile);
    const link = await linkTo(await serve(sink), profile);
    const each = 8 * MB;
    const streams = 4;
    const total = await rate(each * streams, () =>
      Promise.all(Array.from({ length: streams }, async () => upload(await open(link.port), each))),
    );
    console.info(`link 10:200 (cap ${cap} MB/s), ${streams} connections: ${total.toFixed(1)} MB/s together`);
    expect(total).toBeLessThanOrEqual(cap * 1.1);
    expect(total).toBeGreaterThanOrEqual(cap * 0.5);
    expect(link.stats.connections).toBe(streams);
  });

  it('keeps the order of a connection with jitter', async () => {
    const link = await linkTo(await serve(echo), { rttMs: 4, mbit: 100, jitterMs: 20 });
    const socket = await open(link.port);
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    const sent: Buffer[] = [];
    for (let i = 0; i < 200; i++) {
      const piece = Buffer.from(`${i},`);
      sent.push(piece);
      socket.write(piece);
      if (i % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 2));
    }
    socket.end();
    await once(socket, 'close');
    expect(Buffer.concat(received).toString()).toBe(Buffer.concat(sent).toString());
  });
});
