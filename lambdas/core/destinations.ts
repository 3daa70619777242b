/**
 * The destinations as the engine holds them: each one's clients, its filter, and the choice
 * between it and its alternate while it is unreachable.
 */
import { authSecretField } from './auth-config.ts';
import {
  type AlternateConfig,
  type DestinationConfig,
  destinationField,
  type ForwarderConfig,
  type StudyFilter,
  type VerifyLevel,
} from './config.ts';
import { KIND_PROFILES } from './destination-kind.ts';
import { ForwarderError, type ServerFault } from './errors.ts';
import { createEndpoint, type EndpointOptions } from './http.ts';
import { OrthancClient } from './orthanc-client.ts';
import { QidoClient } from './qido-client.ts';
import { StowClient } from './stow-client.ts';
import { WadoClient } from './wado-client.ts';

/** One server studies can be delivered to: a destination, or its alternate. */
export interface DestinationServer {
  /** The server's origin, for logs and errors; never its credentials. */
  readonly label: string;
  readonly stow: StowClient;
  readonly qido: QidoClient;
  readonly wado: WadoClient;
  /**
   * Its Orthanc REST API, when it is an Orthanc: `checksum` reads Orthanc's MD5s there instead of
   * retrieving every instance, and `replace-destination` can delete there.
   */
  readonly orthanc?: OrthancClient | undefined;
  /** Its name in the sources' `DicomWeb.Servers`, for `push`. */
  readonly pushServerName?: string | undefined;
  /** The origins of its endpoints: a ServerFault of one of them is this server's. */
  readonly origins: ReadonlySet<string>;
  /** The setting to look at for each fault of the server as a whole, e.g. `destinations[0].password`. */
  readonly faultFields: Readonly<Record<ServerFault['kind'], string>>;
}

export interface Destination {
  readonly id: string;
  readonly transfer: 'relay' | 'push';
  /** How this destination is proven to hold the same instance before the source's copy goes. */
  readonly verify: VerifyLevel;
  readonly filter?: StudyFilter | undefined;
  readonly primary: DestinationServer;
  readonly alternate?: { readonly server: DestinationServer; readonly afterMs: number } | undefined;
  /**
   * Since when (epoch ms) the primary has been unreachable, as this process saw it; undefined
   * while it answers. Shared by every worker of the process that holds this object. `faults`:
   * the moves in a row that found it refusing us as a whole (destination-faults.ts).
   */
  readonly health: { unreachableSince: number | undefined; faults: DestinationFaults | undefined };
}

/** A destination refusing us as a whole, as this process has seen it since the last move it served. */
export interface DestinationFaults {
  /** Moves in a row that met the fault: the backoff of the studies grows with it. */
  count: number;
  /** When the fault was last logged (epoch ms): it is logged once per period, not per study. */
  reportedAt: number;
}

/**
 * Refused connections, resets, timeouts and 5xx answers: the server may be down. A 4xx is an
 * answer, so the server is there (and an alternate would not make a refusal right).
 */
export const isUnreachable = (error: unknown): boolean =>
  error instanceof ForwarderError &&
  error.kind === 'transient' &&
  (error.status === undefined ? error.cause !== undefined : error.status >= 500);

/**
 * The settings each fault points at. Credentials: the one giving the password (or the `auth`'s
 * secret, or `auth` itself for a role), or `username` when none is configured. TLS: the CA to trust (on AWS its secret: a server with secrets is on AWS).
 */
const faultFields = (server: DestinationConfig | AlternateConfig, field: string) => {
  const onAws = server.secretId !== undefined || server.caSecretId !== undefined;
  const password =
    server.auth !== undefined
      ? authSecretField(server.auth)
      : server.secretId !== undefined
        ? 'secretId'
        : server.passwordEnv !== undefined
          ? 'passwordEnv'
          : server.password !== undefined
            ? 'password'
            : 'username';
  return {
    credentials: `${field}.${password}`,
    tls: `${field}.${onAws ? 'caSecretId' : 'caFile'}`,
    root: `${field}.url`,
  };
};

const buildServer = (
  server: DestinationConfig | AlternateConfig,
  config: ForwarderConfig,
  options: EndpointOptions & { readonly field: string },
): DestinationServer => {
  const endpoint = createEndpoint(server, config.timeouts, {
    ...options,
    connections: config.concurrency * config.stow.parallel + 4,
  });
  const { orthancUrl } = server;
  const orthanc =
    orthancUrl === undefined
      ? undefined
      : new OrthancClient(createEndpoint({ ...server, url: orthancUrl }, config.timeouts, options));
  const profile = KIND_PROFILES[server.kind];
  return {
    label: endpoint.label,
    stow: new StowClient(endpoint, profile),
    qido: new QidoClient(endpoint, config.qidoPageSize, { profile }),
    wado: new WadoClient(endpoint),
    orthanc,
    pushServerName: server.pushServerName,
    origins: new Set([endpoint.label, ...(orthancUrl === undefined ? [] : [new URL(orthancUrl).origin])]),
    faultFields: faultFields(server, options.field),
  };
};

export const buildDestinations = (config: ForwarderConfig, options: EndpointOptions): Destination[] =>
  config.destinations.map((destination, index) => ({
    id: destination.id,
    transfer: destination.transfer,
    verify: destination.verify ?? config.verify,
    filter: destination.filter,
    primary: buildServer(destination, config, { ...options, field: destinationField(config, index) }),
    alternate:
      destination.alternate === undefined
        ? undefined
        : {
            server: buildServer(destination.alternate, config, {
              ...options,
              field: `${destinationField(config, index)}.alternate`,
            }),
            afterMs: destination.alternate.afterSeconds * 1000,
          },
    health: { unreachableSince: undefined, faults: undefined },
  }));
