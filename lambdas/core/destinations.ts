/**
 * The destinations as the engine holds them: each one's clients, its filter, and the choice
 * between it and its alternate while it is unreachable.
 */
import {
  type AlternateConfig,
  type DestinationConfig,
  destinationField,
  type ForwarderConfig,
  type StudyFilter,
  type VerifyLevel,
} from './config.ts';
import { ForwarderError } from './errors.ts';
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
   * while it answers. Shared by every worker of the process that holds this object.
   */
  readonly health: { unreachableSince: number | undefined };
}

/**
 * Refused connections, resets, timeouts and 5xx answers: the server may be down. A 4xx is an
 * answer, so the server is there (and an alternate would not make a refusal right).
 */
export const isUnreachable = (error: unknown): boolean =>
  error instanceof ForwarderError &&
  error.kind === 'transient' &&
  (error.status === undefined ? error.cause !== undefined : error.status >= 500);

const buildServer = (
  server: DestinationConfig | AlternateConfig,
  config: ForwarderConfig,
  options: EndpointOptions,
): DestinationServer => {
  const endpoint = createEndpoint(server, config.timeouts, {
    ...options,
    connections: config.concurrency * config.stow.parallel + 4,
  });
  const { orthancUrl } = server;
  return {
    label: endpoint.label,
    stow: new StowClient(endpoint),
    qido: new QidoClient(endpoint, config.qidoPageSize),
    wado: new WadoClient(endpoint),
    orthanc:
      orthancUrl === undefined
        ? undefined
        : new OrthancClient(createEndpoint({ ...server, url: orthancUrl }, config.timeouts, options)),
    pushServerName: server.pushServerName,
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
    health: { unreachableSince: undefined },
  }));
