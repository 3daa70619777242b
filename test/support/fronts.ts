/**
 * Small servers the bad-input and security tests put in front of a real Orthanc, on loopback:
 *
 * - `HttpFront`, a reverse proxy that passes every request to the Orthanc behind it, except those
 *   a rule picks: for those it gives an answer no real Orthanc can be made to give (an HTML login
 *   page, truncated JSON, a wrong content type, a STOW answer without its sequences).
 * - `TlsFront`, a TLS terminator that pipes each connection to the Orthanc's plain HTTP port, with
 *   a certificate of the test's own CA, optionally demanding a client certificate.
 * - `testPki`, a throwaway CA and certificates made with the `openssl` command; `useTestPki`, one
 *   for a test file.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import {
  createServer as createHttpServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from 'node:tls';
import { afterAll, beforeAll } from 'vitest';
import { listenOnLoopback } from '../../testbed/loopback.ts';

/** Headers that describe one hop, not the message: never copied across the proxy. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade', 'te'];

const endToEnd = (headers: IncomingHttpHeaders): IncomingHttpHeaders => {
  const copy = { ...headers };
  for (const name of HOP_BY_HOP) delete copy[name];
  return copy;
};

export interface FakeAnswer {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string | Buffer;
}

export interface Fault {
  /** Answer this instead of the server (the request body is read and dropped). */
  readonly answer?: FakeAnswer;
  /** Pass the request on, then change the server's answer (read whole: only for small answers). */
  readonly rewrite?: (real: FakeAnswer) => FakeAnswer;
}

/** Decides, per request, whether to fake its answer. */
export type FaultRule = (request: {
  readonly method: string;
  readonly path: string;
  /** The Authorization header sent, if any: a front can stand for a server whose password changed. */
  readonly authorization?: string | undefined;
}) => Fault | undefined;

/**
 * A small HTTP server on loopback: what `handle` throws is kept in `errors` (the test's to
 * check) and ends that connection.
 */
export const serve = async (
  handle: (request: IncomingMessage, response: ServerResponse) => Promise<void>,
  errors: unknown[],
): Promise<{ readonly port: number; close(): Promise<void> }> => {
  const server = createHttpServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      errors.push(error);
      response.destroy();
    });
  });
  const port = await listenOnLoopback(server);
  return {
    port,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
};

const samePathAt = (origin: string, serverUrl: string): string => {
  const path = new URL(serverUrl).pathname;
  return `${origin}${path === '/' ? '' : path}`;
};

export const readAll = async (stream: IncomingMessage): Promise<Buffer> => {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
};

export const send = (response: ServerResponse, answer: FakeAnswer): void => {
  const body = typeof answer.body === 'string' ? Buffer.from(answer.body) : answer.body;
  response.writeHead(answer.status, { ...answer.headers, 'content-length': String(body.length) });
  response.end(body);
};

export class HttpFront {
  /** Which requests get a fake answer; undefined passes everything on (the fault is healed). */
  rule: FaultRule | undefined;
  /** How many answers were faked so far. */
  faked = 0;
  /** Requests passed on to the server. */
  passed = 0;
  /** What went wrong in the front itself (a rule's own assertion, the server gone): the test's to check. */
  readonly errors: unknown[] = [];
  private readonly server: Server;
  private readonly target: URL;
  private port = 0;

  private constructor(target: string, rule: FaultRule | undefined) {
    this.target = new URL(target);
    this.rule = rule;
    this.server = createHttpServer((request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        this.errors.push(error);
        response.destroy();
      });
    });
  }

  /** A front for the server at `target` (its origin: the path of each request is kept). */
  static async start(target: string, rule?: FaultRule): Promise<HttpFront> {
    const front = new HttpFront(target, rule);
    front.port = await listenOnLoopback(front.server);
    return front;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** This front's URL for a URL of the server behind it (same path). */
  urlFor(serverUrl: string): string {
    return samePathAt(this.origin, serverUrl);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close').catch(() => undefined);
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const fault = this.rule?.({
      method: request.method ?? 'GET',
      path: request.url ?? '/',
      authorization: request.headers.authorization,
    });
    if (fault?.answer !== undefined) {
      await readAll(request);
      this.faked++;
      send(response, fault.answer);
      return;
    }
    this.passed++;
    const upstream = httpRequest({
      host: this.target.hostname,
      port: this.target.port,
      method: request.method,
      path: request.url,
      headers: endToEnd(request.headers),
      // A fresh connection each time: Orthanc closes idle ones after 1 s, and a reused one it
      // is closing would turn into a reset the test did not ask for.
      agent: false,
    });
    upstream.once('error', () => response.destroy());
    request.pipe(upstream);
    const [real] = (await once(upstream, 'response')) as [IncomingMessage];
    if (fault?.rewrite === undefined) {
      response.writeHead(real.statusCode ?? 502, endToEnd(real.headers));
      real.pipe(response);
      return;
    }
    const body = await readAll(real);
    const headers = Object.fromEntries(
      Object.entries(endToEnd(real.headers)).map(([name, value]) => [name, String(value)]),
    );
    delete headers['content-length'];
    this.faked++;
    send(response, fault.rewrite({ status: real.statusCode ?? 502, headers, body }));
  }
}

export interface TlsFrontOptions {
  readonly key: string;
  readonly cert: string;
  /** Demand a client certificate signed by one of these CAs (mutual TLS). */
  readonly clientCa?: string;
}

export class TlsFront {
  /** Connections whose handshake failed (a client that did not trust us, or had no certificate). */
  handshakeFailures = 0;
  /** Connections passed on to the server behind. */
  connections = 0;
  /** Common names of the client certificates presented on accepted connections. */
  readonly clientNames = new Set<string>();
  private readonly server: TlsServer;
  private readonly sockets = new Set<Socket>();
  private port = 0;

  private constructor(targetPort: number, options: TlsFrontOptions) {
    this.server = createTlsServer(
      {
        key: options.key,
        cert: options.cert,
        ...(options.clientCa === undefined
          ? {}
          : { requestCert: true, rejectUnauthorized: true, ca: options.clientCa }),
      },
      (socket: TLSSocket) => {
        this.connections++;
        const name = socket.getPeerCertificate().subject?.CN;
        if (typeof name === 'string') this.clientNames.add(name);
        const upstream = connect(targetPort, '127.0.0.1');
        this.track(socket);
        this.track(upstream);
        socket.pipe(upstream).pipe(socket);
        const abort = () => {
          socket.destroy();
          upstream.destroy();
        };
        socket.once('error', abort);
        upstream.once('error', abort);
        // The client gone, nothing to answer; the server done (Orthanc closes idle connections
        // after 1 s), close the client's connection cleanly, as a TLS terminator would.
        socket.once('close', () => upstream.destroy());
        upstream.once('close', () => socket.end());
      },
    );
    this.server.on('tlsClientError', (_error, socket) => {
      this.handshakeFailures++;
      socket.destroy();
    });
  }

  /** A TLS front for the plain HTTP server at `target` (a URL; its port is used). */
  static async start(target: string, options: TlsFrontOptions): Promise<TlsFront> {
    const front = new TlsFront(Number(new URL(target).port), options);
    front.port = await listenOnLoopback(front.server);
    return front;
  }

  get origin(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  /** This front's URL for a URL of the server behind it (same path). */
  urlFor(serverUrl: string): string {
    return samePathAt(this.origin, serverUrl);
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    this.server.close();
    await once(this.server, 'close').catch(() => undefined);
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }
}

export interface TestPki {
  /** PEM file of the throwaway CA. */
  readonly caFile: string;
  /** Server certificate for IP 127.0.0.1, signed by the CA. */
  readonly server: { readonly key: string; readonly cert: string };
  /** Signed by the CA, but for IP 127.0.0.2: valid, for the wrong name. */
  readonly wrongName: { readonly key: string; readonly cert: string };
  /** A client certificate signed by the CA (CN `orthanc-forwarder test client`), as files. */
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
  /** A second, unrelated CA: trusting it instead must not make our server trusted. */
  readonly otherCaFile: string;
  /** The CA's certificate (PEM), to demand client certificates signed by it. */
  readonly caPem: string;
}

const openssl = (dir: string, args: readonly string[]): string =>
  execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

const makeCa = (dir: string, name: string, commonName: string): void => {
  openssl(dir, [
    'req',
    '-x509',
    ...newKey,
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-subj',
    `/CN=${commonName}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
};

const makeLeaf = (dir: string, name: string, commonName: string, extensions: string, serial: number) => {
  writeFileSync(join(dir, `${name}.ext`), extensions);
  openssl(dir, [
    'req',
    ...newKey,
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    `/CN=${commonName}`,
  ]);
  openssl(dir, [
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-set_serial',
    String(serial),
    '-days',
    '2',
    '-out',
    `${name}.pem`,
    '-extfile',
    `${name}.ext`,
  ]);
};

/** Makes a throwaway CA and its certificates in `dir` (with the `openssl` command). */
export const testPki = (dir: string): TestPki => {
  makeCa(dir, 'ca', 'orthanc-forwarder throwaway test CA');
  makeCa(dir, 'other-ca', 'an unrelated CA');
  makeLeaf(
    dir,
    'server',
    '127.0.0.1',
    'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n',
    2,
  );
  makeLeaf(
    dir,
    'wrong-name',
    '127.0.0.2',
    'subjectAltName=IP:127.0.0.2\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n',
    3,
  );
  makeLeaf(
    dir,
    'client',
    'orthanc-forwarder test client',
    'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n',
    4,
  );
  const text = (file: string) => readFileSync(join(dir, file), 'utf8');
  return {
    caFile: join(dir, 'ca.pem'),
    caPem: text('ca.pem'),
    server: { key: text('server.key'), cert: text('server.pem') },
    wrongName: { key: text('wrong-name.key'), cert: text('wrong-name.pem') },
    clientCertFile: join(dir, 'client.pem'),
    clientKeyFile: join(dir, 'client.key'),
    otherCaFile: join(dir, 'other-ca.pem'),
  };
};

/** A throwaway PKI for the test file: made before its tests (its fields are set then), removed after them. */
export const useTestPki = (): TestPki => {
  const pki = {} as TestPki;
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-pki-'));
    Object.assign(pki, testPki(dir));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  return pki;
};
