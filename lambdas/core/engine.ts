/** Builds the clients the engine needs from the configuration. */
import type { FeedContext } from './changes-feed.ts';
import type { ForwarderConfig } from './config.ts';
import type { SecretReader } from './credentials.ts';
import { buildDestinations } from './destinations.ts';
import type { Engine } from './forward-work-item.ts';
import { createEndpoint } from './http.ts';
import type { Log } from './log.ts';
import { type MoveOptions, stillSettled } from './move-study.ts';
import { moveTiming } from './move-timing.ts';
import { OrthancClient } from './orthanc-client.ts';
import type { FeedStateStore, Ledger } from './ports.ts';
import { ReadRate } from './read-rate.ts';
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

/**
 * Studies per page of the watch list and of the sweep: an expanded page of 1,000 is about 0.1 s at
 * Orthanc 1.10 (orthanc-client.ts).
 */
const LIST_PAGE_SIZE = 1000;

/**
 * A source's read-ahead requests on a STOW request's connection, unless it sets its own: 16 of
 * 10 KiB files in flight on each of 4 connections nearly fill 20 ms at 200 Mbit/s (read-ahead.ts).
 */
export const SOURCE_PIPELINING = 16;

/** What the change-feed reader takes from the configuration (besides its source and stores). */
export const feedSettings = (
  config: ForwarderConfig,
  ledger: Ledger,
): Pick<
  FeedContext,
  'pageSize' | 'listPageSize' | 'quietMs' | 'sweepIntervalMs' | 'settings' | 'trigger' | 'isSettled'
> => {
  const { settles, routing } = moveOptions(config);
  return {
    pageSize: config.changesPageSize,
    listPageSize: LIST_PAGE_SIZE,
    quietMs: config.quietSeconds * 1000,
    sweepIntervalMs: config.sweepIntervalSeconds * 1000,
    settings: routing,
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
  dependencies: {
    ledger: Ledger;
    feed?: FeedStateStore;
    log: Log;
    owner: string;
    env?: NodeJS.ProcessEnv;
    /** The AWS pipeline's secret store, where the servers' `secretId`s are read. */
    secrets?: SecretReader;
  },
): Engine => {
  const endpoints = {
    env: dependencies.env ?? process.env,
    ...(dependencies.secrets === undefined ? {} : { secrets: dependencies.secrets }),
  };
  const sources = new Map(
    config.sources.map((source, index) => {
      const megabytesPerSecond = source.maxReadMBps ?? config.maxReadMBps;
      return [
        source.id,
        new OrthancClient(
          createEndpoint(source, config.timeouts, {
            ...endpoints,
            field: `sources[${index}]`,
            pipelining: source.pipelining ?? SOURCE_PIPELINING,
          }),
          // One bucket per source and process: every worker's moves of the source share it.
          { readRate: megabytesPerSecond === undefined ? undefined : new ReadRate(megabytesPerSecond) },
        ),
      ];
    }),
  );
  return {
    sources,
    destinations: buildDestinations(config, endpoints),
    ledger: dependencies.ledger,
    feed: dependencies.feed,
    options: moveOptions(config),
    slots: new Map(
      config.sources.flatMap((source) =>
        source.maxConcurrentMoves === undefined ? [] : [[source.id, source.maxConcurrentMoves]],
      ),
    ),
    timing: new Map(
      config.sources.flatMap((source) => {
        const timing = moveTiming(config, source.id);
        return timing === undefined ? [] : [[source.id, timing]];
      }),
    ),
    log: dependencies.log,
    owner: dependencies.owner,
    // A move that takes longer keeps working; the lease only stops a second worker starting.
    leaseMs: 15 * 60_000,
  };
};
