/**
 * What `status` gathers from the state file and the sources: per source, the queue, dead letters,
 * rejected instances, open conflicts and totals. bin/format.ts prints it.
 */
import type { ForwarderConfig } from '../core/config.ts';
import { describe } from '../core/errors.ts';
import { createEndpoint } from '../core/http.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import type { Conflict, DeadLetter, QueueStats, RejectedInstance, Totals } from '../core/ports.ts';
import type { LocalState } from './sqlite-state.ts';

/** Where the change-feed reader stands on a source. */
export interface SourceProgress {
  readonly id: string;
  readonly cursor: number | undefined;
  /** The source's newest change, or undefined when it was not reached. */
  readonly last: number | undefined;
  readonly lag: number | undefined;
  readonly waitingToBecomeStable: number;
}

export interface SourceReport extends SourceProgress {
  readonly error?: string;
}

/** What the ledger says: the instances refused for good, the open conflicts, and the totals. */
export interface LedgerSummary {
  readonly rejected: readonly RejectedInstance[];
  readonly conflicts: readonly Conflict[];
  readonly totals: Totals;
}

export interface StatusReport extends LedgerSummary {
  readonly sources: readonly SourceReport[];
  readonly queue: QueueStats;
  readonly deadLetters: readonly DeadLetter[];
}

const sourceReport = async (
  config: ForwarderConfig,
  state: LocalState,
  source: ForwarderConfig['sources'][number],
): Promise<SourceReport> => {
  const cursor = await state.feed.getCursor(source.id);
  const waitingToBecomeStable = (await state.feed.watched(source.id)).length;
  const timeouts = { ...config.timeouts, headersMs: 5_000, bodyMs: 5_000 };
  try {
    const last = await new OrthancClient(createEndpoint(source, timeouts)).lastChange();
    return { id: source.id, cursor, last, lag: Math.max(0, last - (cursor ?? 0)), waitingToBecomeStable };
  } catch (error) {
    return {
      id: source.id,
      cursor,
      last: undefined,
      lag: undefined,
      waitingToBecomeStable,
      error: describe(error),
    };
  }
};

export const gatherStatus = async (config: ForwarderConfig, state: LocalState): Promise<StatusReport> => ({
  sources: await Promise.all(config.sources.map((source) => sourceReport(config, state, source))),
  queue: await state.queue.stats(),
  deadLetters: await state.queue.deadLetters(),
  rejected: await state.ledger.rejected(),
  conflicts: await state.ledger.conflicts({ openOnly: true }),
  totals: await state.ledger.totals(),
});
