/** Builds the clients the engine needs from the configuration. */
import type { ForwarderConfig } from './config.ts';
import type { Engine } from './forward-work-item.ts';
import { createEndpoint } from './http.ts';
import type { Log } from './log.ts';
import { OrthancClient } from './orthanc-client.ts';
import type { Ledger } from './ports.ts';
import { QidoClient } from './qido-client.ts';
import { StowClient } from './stow-client.ts';

export const buildEngine = (
  config: ForwarderConfig,
  dependencies: { ledger: Ledger; log: Log; owner: string; env?: NodeJS.ProcessEnv },
): Engine => {
  const env = dependencies.env ?? process.env;
  const sources = new Map(
    config.sources.map((source) => [
      source.id,
      new OrthancClient(createEndpoint(source, config.timeouts, { env })),
    ]),
  );
  const destination = createEndpoint(config.destination, config.timeouts, {
    env,
    connections: config.concurrency * config.stow.parallel + 4,
  });
  const { orthancUrl } = config.destination;
  return {
    sources,
    stow: new StowClient(destination),
    qido: new QidoClient(destination, config.qidoPageSize),
    destinationOrthanc:
      orthancUrl === undefined
        ? undefined
        : new OrthancClient(
            createEndpoint({ ...config.destination, url: orthancUrl }, config.timeouts, { env }),
          ),
    ledger: dependencies.ledger,
    options: { verify: config.verify, deleteAfterForward: config.deleteAfterForward, stow: config.stow },
    log: dependencies.log,
    owner: dependencies.owner,
    // A move that takes longer keeps working; the lease only stops a second worker starting.
    leaseMs: 15 * 60_000,
  };
};
