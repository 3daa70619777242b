/**
 * HTTP to Orthanc and DICOMweb servers: one undici agent per server, with timeouts on connect,
 * headers and body (a paused server must never hang us), basic auth, optional CA bundle and
 * client certificate; every failure comes out classified as transient or permanent.
 */
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { Agent, type Dispatcher, request } from 'undici';
import type { TokenEndpoint } from './access-tokens.ts';
import type { AuthConfig } from './auth-config.ts';
import { authorizationFor } from './authorizers.ts';
import { cachedUntilRejected } from './concurrency.ts';
import {
  ConfigError,
  type ForwarderConfig,
  plainHttpUrls,
  type ServerConfig,
  type Timeouts,
} from './config.ts';
import {
  type Authorization,
  basicHeader,
  isSigner,
  type SecretReader,
  secretCredentials,
  secretTlsMaterial,
  type TlsMaterial,
} from './credentials.ts';
import { describe, ForwarderError, permanent, type ServerFault, transient } from './errors.ts';
import type { Log } from './log.ts';

export interface Endpoint {
  /** Base URL without a trailing slash. */
  readonly baseUrl: string;
  /**
   * The Authorization header: fixed, read from a secret that may be rotated, a token renewed
   * before it expires, or a signature made for each request.
   */
  readonly authorization: Authorization | undefined;
  /** The agent; built on first use where its TLS material comes from a secret store. */
  readonly dispatcher: () => Promise<Dispatcher>;
  /**
   * A connection of its own, for requests sent `pipelined` whose answers are read in the order
   * they were asked (a batch's read-ahead): none waits behind another reader's. Destroy it after.
   */
  readonly lane: () => Promise<Agent>;
  /** How long its recent answers took to come (their headers): is it near, or across a link? */
  readonly answers: AnswerTimes;
  /** Names the server in errors and logs: its URL's origin, never its credentials. */
  readonly label: string;
}

/**
 * The time to the headers of an endpoint's last few answers. The quickest of them is about the
 * round trip to the server (plus its least work): a read-ahead pays only across a link.
 */
export class AnswerTimes {
  static readonly KEPT = 16;
  readonly #times: number[] = [];

  record(ms: number): void {
    this.#times.push(ms);
    if (this.#times.length > AnswerTimes.KEPT) this.#times.shift();
  }

  /** The quickest of the recent answers, in ms; undefined before the first. */
  quickest(): number | undefined {
    return this.#times.length === 0 ? undefined : Math.min(...this.#times);
  }
}

const resolvePassword = (server: ServerConfig, env: NodeJS.ProcessEnv): string | undefined => {
  if (server.secretId !== undefined && server.password === undefined) {
    throw new ConfigError('secretId: Secrets Manager is read only on AWS; give password or passwordEnv here');
  }
  if (server.caSecretId !== undefined || server.clientCertSecretId !== undefined) {
    throw new ConfigError(
      'caSecretId, clientCertSecretId: Secrets Manager is read only on AWS; give caFile, clientCertFile and clientKeyFile here',
    );
  }
  if (server.passwordEnv === undefined) return server.password;
  const value = env[server.passwordEnv];
  if (value === undefined) {
    throw new ConfigError(`passwordEnv: environment variable ${server.passwordEnv} is not set`);
  }
  return value;
};

const readPem = (path: string | undefined, field: string): string | undefined => {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(
      `${field}: cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? error})`,
    );
  }
};

/**
 * Token requests of a server's `auth`. A refusal is a fault of the server's credentials (a wrong
 * client secret or key), which makes its studies wait rather than fail one by one.
 */
const tokenEndpoint = (timeouts: Timeouts, server: string): TokenEndpoint => {
  const endpoints = new Map<string, Endpoint>();
  return async (url, form) => {
    const { origin, pathname, search } = new URL(url);
    const endpoint = endpoints.get(origin) ?? createEndpoint({ url: origin }, timeouts, { connections: 2 });
    endpoints.set(origin, endpoint);
    const what = 'requesting an access token';
    const response = await call(endpoint, `${pathname}${search}`, what, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: form.toString(),
    });
    if (response.statusCode >= 200 && response.statusCode < 300) return readJson(endpoint, what, response);
    const error = await statusError(endpoint, what, response);
    if (error.kind === 'transient') throw error;
    throw permanent(`${error.message}: the credentials for ${server} are refused`, {
      status: error.status,
      serverFault: { kind: 'credentials', server },
    });
  };
};

/** What every server we talk to has, and what only a DICOMweb server may have: an `auth`. */
type EndpointServer = ServerConfig & { readonly auth?: AuthConfig | undefined };

const authorizationOf = (
  server: EndpointServer,
  timeouts: Timeouts,
  options: EndpointOptions,
): Authorization | undefined => {
  if (server.auth !== undefined) {
    return authorizationFor(server.auth, server.url, {
      env: options.env ?? process.env,
      secrets: options.secrets,
      tokenEndpoint: tokenEndpoint(timeouts, new URL(server.url).origin),
    });
  }
  if (server.secretId !== undefined && options.secrets !== undefined) {
    return secretCredentials({ secretId: server.secretId, username: server.username }, options.secrets);
  }
  const password = resolvePassword(server, options.env ?? process.env);
  return server.username === undefined ? undefined : basicHeader(server.username, password ?? '');
};

/** TLS material from PEM files (local mode), or from a secret store (AWS), read on first use. */
const tlsMaterial = (server: ServerConfig, options: EndpointOptions): (() => Promise<TlsMaterial>) => {
  const { secrets } = options;
  if (secrets !== undefined && (server.caSecretId !== undefined || server.clientCertSecretId !== undefined)) {
    return () => secretTlsMaterial(server, secrets);
  }
  const ca = readPem(server.caFile, 'caFile');
  const cert = readPem(server.clientCertFile, 'clientCertFile');
  const key = readPem(server.clientKeyFile, 'clientKeyFile');
  const material = {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
  };
  return async () => material;
};

export interface EndpointOptions {
  readonly connections?: number;
  readonly env?: NodeJS.ProcessEnv;
  /** Where `secretId`, `caSecretId` and `clientCertSecretId` are read: the AWS pipeline's secret store. */
  readonly secrets?: SecretReader;
  /** Where the server is in the configuration (`sources[0]`): errors of its settings name it. */
  readonly field?: string;
  /**
   * Requests a lane's connection carries before their answers are back (HTTP/1.1 pipelining):
   * over a long link each then costs its bytes, not a round trip. 1: one at a time.
   */
  readonly pipelining?: number;
}

/** Where the server is in the configuration file, for errors: `sources[1]`, `destination.alternate`, … */
const named = <T>(field: string | undefined, make: () => T): T => {
  try {
    return make();
  } catch (error) {
    if (field === undefined || !(error instanceof ConfigError)) throw error;
    throw new ConfigError(`${field}.${error.message}`);
  }
};

export const createEndpoint = (
  server: EndpointServer,
  timeouts: Timeouts,
  options: EndpointOptions = {},
): Endpoint => {
  const authorization = named(options.field, () => authorizationOf(server, timeouts, options));
  const material = named(options.field, () => tlsMaterial(server, options));
  const agent = async (connections: number, pipelining: number) =>
    new Agent({
      connect: {
        timeout: timeouts.connectMs,
        // Verification stays on whatever the CA: a custom bundle replaces the trust store, it never disables it.
        rejectUnauthorized: true,
        ...(await material()),
      },
      headersTimeout: timeouts.headersMs,
      bodyTimeout: timeouts.bodyMs,
      connections,
      pipelining,
      // Orthanc closes idle connections after 1 s (it answers Keep-Alive: timeout=1); reuse only
      // within that window. undici subtracts keepAliveTimeoutThreshold from the server's hint, and
      // its default (2 s) leaves nothing of 1 s: every request would open a new connection.
      keepAliveTimeout: 900,
      keepAliveMaxTimeout: 900,
      keepAliveTimeoutThreshold: 300,
    });
  return {
    baseUrl: server.url,
    authorization,
    dispatcher: cachedUntilRejected(() => agent(options.connections ?? 16, 1)),
    lane: () => agent(1, options.pipelining ?? 1),
    answers: new AnswerTimes(),
    label: new URL(server.url).origin,
  };
};

/** Hosts on this machine: basic auth to them over http:// never crosses a network. */
const isThisMachine = (hostname: string): boolean =>
  hostname === 'localhost' || hostname === '[::1]' || /^127(\.\d{1,3}){3}$/.test(hostname);

/**
 * Warns once per URL at the start of a local run of credentials sent over http:// to another
 * machine: a password or a bearer token crosses the network readable, a signature can be
 * replayed. `allowInsecureHttp` says it is known.
 */
export const warnOfPlainHttpAuth = (
  config: Pick<ForwarderConfig, 'sources' | 'destinations'>,
  log: Log,
): void => {
  for (const { field, url, server } of plainHttpUrls(config)) {
    const { hostname, origin } = new URL(url);
    const { auth } = server as { readonly auth?: AuthConfig };
    if ((server.username === undefined && auth === undefined) || isThisMachine(hostname)) continue;
    const what =
      auth === undefined
        ? 'basic auth over http:// beyond this machine: the password crosses the network readable'
        : `${auth.kind} auth over http:// beyond this machine: its credentials cross the network readable`;
    log.warn(what, {
      field,
      origin,
      hint: 'use https://, or set allowInsecureHttp: true on the server if the network is trusted',
    });
  }
};

export interface CallOptions {
  readonly method?: Dispatcher.HttpMethod;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string | Buffer | Readable;
  /**
   * The length of a streamed body, declared beforehand (Content-Length): a signature over the
   * request needs it (RequestSigner.streamedBodyLength); otherwise a stream is sent chunked.
   */
  readonly contentLength?: number;
  /** Aborts the request, e.g. when the invocation runs out of time. */
  readonly signal?: AbortSignal;
  /**
   * Sent on this lane (Endpoint.lane), behind the requests before it whose answers are not back
   * yet (undici's non-blocking request), instead of on the endpoint's pool.
   */
  readonly lane?: Dispatcher;
}

const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|ERR_SSL/;

/** Turns what undici or the socket threw into a classified error that names the server. */
export const networkError = (endpoint: Endpoint, what: string, error: unknown): ForwarderError => {
  // The signal of the time allowed (a Lambda's end, a STOW batch's deadline) fired: not the server's fault.
  if ((error as Error).name === 'TimeoutError') {
    return transient(`out of time: ${what} at ${endpoint.label} was cut when the time allowed ran out`, {
      cause: error,
    });
  }
  const code = (error as { code?: string }).code ?? (error as Error).name;
  const message = `${what} at ${endpoint.label}: ${code}`;
  // A certificate we refuse will be refused again: retrying only delays the alarm.
  if (typeof code === 'string' && TLS_CODES.test(code))
    return permanent(`${message} (TLS)`, {
      cause: error,
      serverFault: { kind: 'tls', server: endpoint.label },
    });
  // Refused, reset, timed out, aborted: the server or the network may be back next time.
  return transient(message, { cause: error });
};

/** A secret store that fails may be back next time: a passing fault, not the server's. */
const fromSecretStore = async <T>(endpoint: Endpoint, what: string, load: () => Promise<T>): Promise<T> => {
  try {
    return await load();
  } catch (error) {
    // Already classified (a token endpoint refusing the credentials), or a setting to fix.
    if (error instanceof ConfigError || error instanceof ForwarderError) throw error;
    throw transient(`reading the ${what} of ${endpoint.label}: ${describe(error)}`, { cause: error });
  }
};

const send = async (endpoint: Endpoint, path: string, what: string, options: CallOptions) => {
  const method = options.method ?? 'GET';
  const headers: Record<string, string> = {
    ...options.headers,
    ...(options.contentLength === undefined ? {} : { 'content-length': String(options.contentLength) }),
  };
  const { authorization } = endpoint;
  if (typeof authorization === 'string') headers.authorization = authorization;
  else if (isSigner(authorization)) {
    const { body } = options;
    const whole = typeof body === 'string' || Buffer.isBuffer(body) ? body : undefined;
    if (body !== undefined && whole === undefined && options.contentLength === undefined) {
      throw new Error(`${what}: a signed streamed body needs its contentLength`);
    }
    Object.assign(
      headers,
      await fromSecretStore(endpoint, 'credentials', () =>
        authorization.sign({
          method,
          url: new URL(`${endpoint.baseUrl}${path}`),
          body: whole,
          streamedLength: whole === undefined ? options.contentLength : undefined,
        }),
      ),
    );
  } else if (authorization !== undefined) {
    headers.authorization = await fromSecretStore(endpoint, 'credentials', () => authorization.header());
  }
  const dispatcher = options.lane ?? (await fromSecretStore(endpoint, 'TLS material', endpoint.dispatcher));
  const asked = performance.now();
  try {
    const answer = await request(`${endpoint.baseUrl}${path}`, {
      dispatcher,
      method,
      headers,
      ...(options.body === undefined ? {} : { body: options.body }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      ...(options.lane === undefined ? {} : { blocking: false }),
    });
    endpoint.answers.record(performance.now() - asked);
    return answer;
  } catch (error) {
    throw networkError(endpoint, what, error);
  }
};

/** A lane to the endpoint (Endpoint.lane), its TLS material read as for any request. */
export const openLane = (endpoint: Endpoint): Promise<Agent> =>
  fromSecretStore(endpoint, 'TLS material', endpoint.lane);

/**
 * Sends a request; the answer's status is the caller's to judge, network failures are classified.
 * A 401 or 403 from a server whose credentials can change (a secret, a token, a role's session)
 * renews them: if they changed, the request is sent again with the new ones — or, when its body
 * was a stream that cannot be sent twice, the attempt fails for now and its retry uses them.
 */
export const call = async (
  endpoint: Endpoint,
  path: string,
  what: string,
  options: CallOptions = {},
): Promise<Dispatcher.ResponseData> => {
  const response = await send(endpoint, path, what, options);
  const { authorization } = endpoint;
  const refused = response.statusCode === 401 || response.statusCode === 403;
  if (!refused || authorization === undefined || typeof authorization === 'string') return response;
  if (!(await authorization.refresh())) return response;
  await response.body.dump();
  if (options.body === undefined || typeof options.body === 'string' || Buffer.isBuffer(options.body)) {
    return send(endpoint, path, what, options);
  }
  throw transient(
    `${what} at ${endpoint.label} answered ${response.statusCode}: its credentials were rotated, the retry uses the new ones`,
    { status: response.statusCode },
  );
};

/**
 * Orthanc's names for the errors its REST API and DICOMweb plugin answer with, by OrthancStatus.
 * A fixed vocabulary of our own: an answer's own strings are never logged, since an archive's
 * free-text `Message` (or anything shaped like Orthanc's) may echo tags of the data set.
 */
const ORTHANC_ERRORS: ReadonlyMap<number, string> = new Map([
  [-1, 'Internal error'],
  [1, 'Error encountered within the plugin engine'],
  [2, 'Not implemented yet'],
  [3, 'Parameter out of range'],
  [4, 'Not enough memory'],
  [5, 'Bad type for a parameter'],
  [6, 'Bad sequence of calls'],
  [7, 'Accessing an inexistent item'],
  [8, 'Bad request'],
  [9, 'Error in the network protocol'],
  [11, 'Error with the database engine'],
  [12, 'Badly formatted URI'],
  [13, 'Inexistent file'],
  [14, 'Cannot write to file'],
  [15, 'Bad file format'],
  [16, 'Timeout'],
  [17, 'Unknown resource'],
  [19, 'The file storage is full'],
  [20, 'Corrupted file (e.g. inconsistent MD5 hash)'],
  [21, 'Inexistent tag'],
  [22, 'Cannot modify a read-only data structure'],
  [2018, 'Cannot store an instance'],
]);

/**
 * The part of an error answer that is safe to log: the error Orthanc names with its
 * OrthancStatus, in our words, or its number when we have none. Nothing else of the body.
 */
const safeDetail = async (response: Dispatcher.ResponseData): Promise<string> => {
  const type = String(response.headers['content-type'] ?? '');
  if (!type.includes('json')) {
    await response.body.dump();
    return type === '' ? '' : ` (${type.split(';')[0]})`;
  }
  try {
    const { OrthancStatus: code } = (await response.body.json()) as { OrthancStatus?: unknown };
    if (typeof code !== 'number' || !Number.isInteger(code)) return '';
    return ` (${ORTHANC_ERRORS.get(code) ?? `Orthanc error ${code}`})`;
  } catch {
    return '';
  }
};

/** 5xx, 408 and 429 may pass; any other refusal will be refused again. */
export const isTransientStatus = (status: number): boolean =>
  status >= 500 || status === 408 || status === 429;

/**
 * A 401 or 403 that reaches here is one `call` did not overcome by reading a rotated secret: the
 * server refuses our credentials as a whole. `fault` marks another answer that says as much of
 * the server (a missing root).
 */
export const statusError = async (
  endpoint: Endpoint,
  what: string,
  response: Dispatcher.ResponseData,
  fault?: ServerFault['kind'],
): Promise<ForwarderError> => {
  const status = response.statusCode;
  const message = `${what} at ${endpoint.label} answered ${status}${await safeDetail(response)}`;
  if (isTransientStatus(status)) return transient(message, { status });
  const kind = status === 401 || status === 403 ? 'credentials' : fault;
  return permanent(message, {
    status,
    ...(kind === undefined ? {} : { serverFault: { kind, server: endpoint.label } }),
  });
};

/** Reads a JSON answer, refusing anything that is not JSON with a clear error. */
export const readJson = async (
  endpoint: Endpoint,
  what: string,
  response: Dispatcher.ResponseData,
): Promise<unknown> => {
  const type = String(response.headers['content-type'] ?? '');
  if (!type.includes('json')) {
    await response.body.dump();
    // Often a proxy or a login page in front of the server: it may be gone next time.
    throw transient(
      `${what} at ${endpoint.label}: expected JSON, got ${type === '' ? 'no content type' : type}`,
    );
  }
  try {
    return await response.body.json();
  } catch (error) {
    throw transient(`${what} at ${endpoint.label}: the JSON answer is truncated or malformed`, {
      cause: error,
    });
  }
};

/** GET or POST expecting a JSON answer; `undefined` for a 404 when `allow404`. */
export const callJson = async (
  endpoint: Endpoint,
  path: string,
  what: string,
  options: CallOptions & { allow404?: boolean } = {},
): Promise<unknown> => {
  const response = await call(endpoint, path, what, options);
  if (response.statusCode === 404 && options.allow404 === true) {
    await response.body.dump();
    return undefined;
  }
  if (response.statusCode < 200 || response.statusCode >= 300)
    throw await statusError(endpoint, what, response);
  return readJson(endpoint, what, response);
};
