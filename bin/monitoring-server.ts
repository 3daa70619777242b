/**
 * `run --listen` (and `demo --listen`): a small HTTP server beside the local run. GET /metrics
 * (Prometheus text format), /healthz (the process is up), /readyz (readiness.ts: 200 or 503
 * with the reasons), and / (status-page.ts). Local mode only; loopback unless told otherwise.
 * With ORTHANC_FORWARDER_MONITOR_TOKEN set, every endpoint but /healthz asks for it, as a bearer
 * token or as the password of basic auth (any user name): a scraper and a browser can both give it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { InvalidArgumentError } from 'commander';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import { describe } from '../lambdas/core/errors.ts';
import type { Log } from '../lambdas/core/log.ts';
import { LocalRunner, type RunParts } from '../lambdas/local/local-runner.ts';
import { PrometheusMetrics } from '../lambdas/local/prometheus-metrics.ts';
import { readiness } from '../lambdas/local/readiness.ts';
import type { LocalState } from '../lambdas/local/sqlite-state.ts';
import { gatherStatus } from '../lambdas/local/status.ts';
import { type ListenAddress, LOOPBACK } from './listen.ts';
import { renderStatusPage } from './status-page.ts';

export const MONITOR_TOKEN_ENV = 'ORTHANC_FORWARDER_MONITOR_TOKEN';

/** What the server reports on. */
export interface MonitoredRun {
  readonly config: ForwarderConfig;
  readonly state: LocalState;
  readonly statePath: string;
  readonly runner: LocalRunner;
  readonly metrics: PrometheusMetrics;
}

export interface Monitoring {
  /** Where it listens, e.g. http://127.0.0.1:9464 */
  readonly url: string;
  close(): Promise<void>;
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/** The token given, as a bearer token or as basic auth's password. */
const presented = (request: IncomingMessage): string | undefined => {
  const [scheme, value] = (request.headers.authorization ?? '').split(' ', 2);
  if (value === undefined) return undefined;
  if (scheme?.toLowerCase() === 'bearer') return value;
  if (scheme?.toLowerCase() !== 'basic') return undefined;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  return decoded.slice(decoded.indexOf(':') + 1);
};

const authorized = (request: IncomingMessage, token: string | undefined): boolean => {
  if (token === undefined) return true;
  const given = presented(request);
  return given !== undefined && timingSafeEqual(digest(given), digest(token));
};

const send = (response: ServerResponse, status: number, contentType: string, body: string) => {
  response.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store' });
  response.end(body);
};

const sendJson = (response: ServerResponse, status: number, body: object) =>
  send(response, status, 'application/json', `${JSON.stringify(body)}\n`);

const liveness = (runner: LocalRunner) =>
  new Map(
    [...runner.sourceStatus()].map(([id, status]) => [
      id,
      { lastPollAt: status.lastPollAt, lastError: status.lastError },
    ]),
  );

const routes: Readonly<Record<string, (run: MonitoredRun, response: ServerResponse) => Promise<void>>> = {
  '/metrics': async (run, response) => {
    const { body, contentType } = await run.metrics.scrape();
    send(response, 200, contentType, body);
  },
  '/readyz': async (run, response) => {
    const ready = readiness(run.runner, { config: run.config, statePath: run.statePath, now: Date.now() });
    sendJson(response, ready.ready ? 200 : 503, ready);
  },
  '/': async (run, response) => {
    const report = await gatherStatus(run.config, run.state);
    send(response, 200, 'text/html; charset=utf-8', renderStatusPage(report, liveness(run.runner)));
  },
};

const handle = async (
  run: MonitoredRun,
  token: string | undefined,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> => {
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.setHeader('allow', 'GET, HEAD');
    return sendJson(response, 405, { error: 'read-only: GET only' });
  }
  if (path === '/healthz') return sendJson(response, 200, { status: 'up' });
  if (!authorized(request, token)) {
    response.setHeader('www-authenticate', 'Basic realm="orthanc-forwarder", charset="UTF-8"');
    return sendJson(response, 401, { error: `give the token of ${MONITOR_TOKEN_ENV}` });
  }
  const route = routes[path];
  if (route === undefined)
    return sendJson(response, 404, { error: 'not found: /, /metrics, /healthz, /readyz' });
  await route(run, response);
};

export const startMonitoring = async (
  address: ListenAddress,
  run: MonitoredRun,
  options: { readonly log: Log; readonly env?: NodeJS.ProcessEnv },
): Promise<Monitoring> => {
  const token = (options.env ?? process.env)[MONITOR_TOKEN_ENV] || undefined;
  run.metrics.watch(run.runner, run.state);
  const server = createServer((request, response) => {
    handle(run, token, request, response).catch((error: unknown) => {
      options.log.warn('monitoring request failed', { path: request.url, error: describe(error) });
      if (!response.headersSent) sendJson(response, 500, { error: describe(error) });
      else response.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    // A port in use, an address not of this machine: the option's to fix (exit 2).
    server.once('error', (error) =>
      reject(new InvalidArgumentError(`--listen ${address.host}:${address.port}: ${describe(error)}`)),
    );
    server.listen(address.port, address.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  const url = `http://${host}:${port}`;
  const loopback = address.host === LOOPBACK || address.host === '::1' || address.host === 'localhost';
  if (!loopback && token === undefined)
    options.log.warn(`monitoring listens beyond loopback without a token: set ${MONITOR_TOKEN_ENV}`, { url });
  options.log.info('monitoring listening', { url });
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
};

/** Hands `use` a runner whose metrics the server started for it reports, until `use` is done. */
export const withMonitoring = async <T>(
  address: ListenAddress,
  parts: RunParts,
  use: (runner: LocalRunner) => Promise<T>,
  onListening?: (url: string) => void,
): Promise<T> => {
  const metrics = new PrometheusMetrics(parts.config);
  const runner = new LocalRunner(parts.config, parts.state, parts.log, {
    metrics,
    onDelivery: metrics.delivered,
  });
  const monitoring = await startMonitoring(address, { ...parts, runner, metrics }, { log: parts.log });
  onListening?.(monitoring.url);
  try {
    return await use(runner);
  } finally {
    await monitoring.close();
  }
};
