/** Builds the clients the engine needs from the configuration. */
import type { FeedContext } from './changes-feed.ts';
import type { ForwarderConfig } from './config.ts';
import { buildDestinations } from './destinations.ts';
import type { Engine } from './forward-work-item.ts';
import { createEndpoint } from './http.ts';
import type { Log } from './log.ts';
import { type MoveOptions, stillSettled } from './move-study.ts';
import { OrthancClient } from './orthanc-client.ts';
import type { FeedStateStore, Ledger } from './ports.ts';
import { routingDigest } from './routing.ts';

/** What the move protocol takes from the configuration. */
export const moveOptions = (config: ForwarderConfig): MoveOptions => ({
  deleteAfterForward: config.deleteAfterForward,
  stow: config.stow,
  unrouted: config.unrouted,
  // Only copy mode and filters that skip leave studies at the source on purpose; otherwise the
  // ledger has nothing to remember and is not asked.
  settles:
    !config.deleteAfterForward ||
    (config.unrouted === 'keep' && config.destinations.some((d) => d.filter !== undefined)),
  routing: routingDigest(config),
  pushJobTimeoutMs: config.timeouts.headersMs,
});

/** What the change-feed reader takes from the configuration (besides its source and stores). */
export const feedSettings = (
  config: ForwarderConfig,
  ledger: Ledger,
): Pick<FeedContext, 'pageSize' | 'quietMs' | 'trigger' | 'isSettled'> => {
  const { settles, routing } = moveOptions(config);
  return {
    pageSize: config.changesPageSize,
    quietMs: config.quietSeconds * 1000,
    trigger: config.trigger,
    isSettled: settles
      ? async (sourceId, studyId, lastUpdate) =>
          stillSettled(await ledger.settled(sourceId, studyId, ''), { lastUpdate, routing })
      : undefined,
  };
};

/**
 * One engine per process: its workers share the clients and what it learns of the destinations
 * (since when one has been unreachable); each worker uses it under its own lease owner.
 */
export const buildEngine = (
  config: ForwarderConfig,
  dependencies: { ledger: Ledger; feed?: FeedStateStore; log: Log; owner: string; env?: NodeJS.ProcessEnv },
): Engine => {
  const env = dependencies.env ?? process.env;
  const sources = new Map(
    config.sources.map((source) => [
      source.id,
      new OrthancClient(createEndpoint(source, config.timeouts, { env })),
    ]),
  );
  return {
    sources,
    destinations: buildDestinations(config, env),
    ledger: dependencies.ledger,
    feed: dependencies.feed,
    options: moveOptions(config),
    log: dependencies.log,
    owner: dependencies.owner,
    // A move that takes longer keeps working; the lease only stops a second worker starting.
    leaseMs: 15 * 60_000,
  };
};
