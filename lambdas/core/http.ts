/**
 * HTTP to Orthanc and DICOMweb servers: one undici agent per server, with timeouts on connect,
 * headers and body (a paused server must never hang us), basic auth, optional CA bundle and
 * client certificate; every failure comes out classified as transient or permanent.
 */
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { Agent, type Dispatcher, request } from 'undici';
import { ConfigError, type ServerConfig, type Timeouts } from './config.ts';
import { type ForwarderError, permanent, transient } from './errors.ts';

export interface Endpoint {
  /** Base URL without a trailing slash. */
  readonly baseUrl: string;
  readonly authorization: string | undefined;
  readonly dispatcher: Dispatcher;
  /** Names the server in errors and logs: its URL's origin, never its credentials. */
  readonly label: string;
}

const resolvePassword = (server: ServerConfig, env: NodeJS.ProcessEnv): string | undefined => {
  if (server.secretId !== undefined && server.password === undefined) {
    throw new ConfigError('secretId: Secrets Manager is read only on AWS; give password or passwordEnv here');
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

export const createEndpoint = (
  server: ServerConfig,
  timeouts: Timeouts,
  options: { connections?: number; env?: NodeJS.ProcessEnv } = {},
): Endpoint => {
  const password = resolvePassword(server, options.env ?? process.env);
  const authorization =
    server.username === undefined
      ? undefined
      : `Basic ${Buffer.from(`${server.username}:${password ?? ''}`).toString('base64')}`;
  const ca = readPem(server.caFile, 'caFile');
  const cert = readPem(server.clientCertFile, 'clientCertFile');
  const key = readPem(server.clientKeyFile, 'clientKeyFile');
  const dispatcher = new Agent({
    connect: {
      timeout: timeouts.connectMs,
      // Verification stays on whatever the CA: a custom bundle replaces the trust store, it never disables it.
      rejectUnauthorized: true,
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined ? {} : { cert }),
      ...(key === undefined ? {} : { key }),
    },
    headersTimeout: timeouts.headersMs,
    bodyTimeout: timeouts.bodyMs,
    connections: options.connections ?? 16,
    // Orthanc closes idle connections after 1 s (it answers Keep-Alive: timeout=1); reuse only
    // within that window. undici subtracts keepAliveTimeoutThreshold from the server's hint, and
    // its default (2 s) leaves nothing of 1 s: every request would open a new connection.
    keepAliveTimeout: 900,
    keepAliveMaxTimeout: 900,
    keepAliveTimeoutThreshold: 300,
  });
  return { baseUrl: server.url, authorization, dispatcher, label: new URL(server.url).origin };
};

export interface CallOptions {
  readonly method?: Dispatcher.HttpMethod;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string | Buffer | Readable;
  /** Aborts the request, e.g. when the invocation runs out of time. */
  readonly signal?: AbortSignal;
}

const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|ERR_SSL/;

/** Turns what undici or the socket threw into a classified error that names the server. */
export const networkError = (endpoint: Endpoint, what: string, error: unknown): ForwarderError => {
  const code = (error as { code?: string }).code ?? (error as Error).name;
  const message = `${what} at ${endpoint.label}: ${code}`;
  // A certificate we refuse will be refused again: retrying only delays the alarm.
  if (typeof code === 'string' && TLS_CODES.test(code))
    return permanent(`${message} (TLS)`, { cause: error });
  // Refused, reset, timed out, aborted: the server or the network may be back next time.
  return transient(message, { cause: error });
};

/** Sends a request; the answer's status is the caller's to judge, network failures are classified. */
export const call = async (
  endpoint: Endpoint,
  path: string,
  what: string,
  options: CallOptions = {},
): Promise<Dispatcher.ResponseData> => {
  const headers: Record<string, string> = { ...options.headers };
  if (endpoint.authorization !== undefined) headers.authorization = endpoint.authorization;
  try {
    return await request(`${endpoint.baseUrl}${path}`, {
      dispatcher: endpoint.dispatcher,
      method: options.method ?? 'GET',
      headers,
      ...(options.body === undefined ? {} : { body: options.body }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
  } catch (error) {
    throw networkError(endpoint, what, error);
  }
};

/**
 * The part of an error answer that is safe to log: Orthanc's error name and message, never the
 * body as such (an archive may echo tags of the data set).
 */
const safeDetail = async (response: Dispatcher.ResponseData): Promise<string> => {
  const type = String(response.headers['content-type'] ?? '');
  if (!type.includes('json')) {
    await response.body.dump();
    return type === '' ? '' : ` (${type.split(';')[0]})`;
  }
  try {
    const body = (await response.body.json()) as { OrthancError?: unknown; Message?: unknown };
    const detail = [body.OrthancError, body.Message].filter((part) => typeof part === 'string').join(': ');
    return detail === '' ? '' : ` (${detail.slice(0, 200)})`;
  } catch {
    return '';
  }
};

/** 5xx, 408 and 429 may pass; any other refusal will be refused again. */
export const isTransientStatus = (status: number): boolean =>
  status >= 500 || status === 408 || status === 429;

export const statusError = async (
  endpoint: Endpoint,
  what: string,
  response: Dispatcher.ResponseData,
): Promise<ForwarderError> => {
  const status = response.statusCode;
  const message = `${what} at ${endpoint.label} answered ${status}${await safeDetail(response)}`;
  return isTransientStatus(status) ? transient(message, { status }) : permanent(message, { status });
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
