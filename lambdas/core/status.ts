/**
 * What `status` reports, the same for the state file and the deployed stack (bin/format.ts prints
 * it): per source what it still holds (its own statistics), what left it and what was copied
 * (the ledger), what left it lately and when the rest may be gone (progress.ts), its refusals and
 * open conflicts, and where the change feed stands; then the work queue, the dead letters grouped
 * by error, and the totals. Counts, sizes, Orthanc IDs and error texts only: no PHI.
 */
import { ConfigError, type ForwarderConfig } from './config.ts';
import { type ErrorGroup, groupByError } from './dead-letters.ts';
import { describe } from './errors.ts';
import { moveTiming } from './move-timing.ts';
import type { OrthancClient } from './orthanc-client.ts';
import type { Conflict, QueueStats, RejectedInstance, SourceControl, Tally, Totals } from './ports.ts';
import { type RecentMoves, type SourceProgress, sourceProgress } from './progress.ts';
import { NO_TOTALS } from './totals.ts';

/** How many groups of dead letters, and of refusals, `status` shows: `dlq list --group-by error` has them all. */
export const STATUS_GROUPS = 3;

/** Where the change-feed reader stands on a source: a detail, next to what the source holds. */
export interface FeedPosition {
  /** The last change read and queued. */
  readonly cursor: number | undefined;
  /** The source's newest change, when it was reached. */
  readonly last: number | undefined;
  /** Changes not read yet (every change counts, not only those of new studies). */
  readonly lag: number | undefined;
}

/** A source; `pausedAt` and `sweepRequestedAt` are what an operator asked of it (`pause`, `sweep`). */
export interface SourceStatus extends SourceControl {
  readonly id: string;
  /** What the source holds now (GET /statistics); undefined when it was not asked or not reached. */
  readonly atSource: Tally | undefined;
  /** What left it, and what was copied from it (the ledger's totals). */
  readonly moved: Tally;
  readonly copied: Tally;
  /** What left it in the last hour and day, the rate, and when the rest may be gone at that rate. */
  readonly progress: SourceProgress;
  /** Instances deleted at it without being sent anywhere: unrouted, under `unrouted: "delete"`. */
  readonly deletedUnrouted: number;
  /** Its instances refused for good and on record: they stay at the source. */
  readonly rejected: number;
  readonly openConflicts: number;
  readonly waitingToBecomeStable: number;
  readonly feed: FeedPosition;
  /** Why `atSource` and the feed's `last` are unknown. */
  readonly unknown?: string;
}

export interface StatusReport {
  /** When it was made (epoch ms). */
  readonly at: number;
  readonly sources: readonly SourceStatus[];
  readonly queue: QueueStats;
  /**
   * The dead letters grouped by error, the largest groups first, STATUS_GROUPS of them; absent
   * where they are not read (on AWS: reading a dead letter hides it from a redrive meanwhile).
   */
  readonly deadLetterGroups?: readonly ErrorGroup[];
  /** Every instance refused for good and on record, and the largest groups of their reasons. */
  readonly rejected: readonly RejectedInstance[];
  readonly rejectedGroups: readonly ErrorGroup[];
  /** The open ones. */
  readonly conflicts: readonly Conflict[];
  /** Every source's, those no longer configured included. */
  readonly totals: Totals;
}

/** What the source itself said: its newest change and what it holds, or why it did not say. */
export type SourceAnswer = { readonly last: number; readonly holds: Tally } | { readonly unknown: string };

/**
 * Asks a source what it holds and how far its change feed has gone: two cheap requests. Whatever
 * fails, reaching it included (its credentials, its TLS material), is the answer.
 */
export const askSource = async (
  connect: () => OrthancClient | Promise<OrthancClient>,
): Promise<SourceAnswer> => {
  try {
    const client = await connect();
    // One after the other, so that a source that fails says so about its change feed first.
    const last = await client.lastChange();
    return { last, holds: await client.holdings() };
  } catch (error) {
    // A setting of this mode refused (secretId in local mode, say) is no failure to reach it.
    return { unknown: error instanceof ConfigError ? describe(error) : `unreachable: ${describe(error)}` };
  }
};

/** What is known of one source apart from the ledger. */
export interface SourceProbe {
  readonly control: SourceControl;
  readonly cursor: number | undefined;
  readonly waitingToBecomeStable: number;
  readonly answer: SourceAnswer;
  readonly recent: RecentMoves;
}

const count = <T extends { readonly sourceId: string }>(items: readonly T[], sourceId: string) =>
  items.filter((item) => item.sourceId === sourceId).length;

/** The report from its parts; `probes` in the order of the configuration's sources. */
export const assembleStatus = async (
  config: ForwarderConfig,
  parts: {
    readonly probes: readonly SourceProbe[];
    readonly queue: QueueStats;
    readonly deadLetters?: AsyncIterable<{ readonly lastError: string; readonly deadLetteredAt: number }>;
    readonly rejected: readonly RejectedInstance[];
    readonly conflicts: readonly Conflict[];
    readonly totals: Totals;
    /** When the report is made (epoch ms): the progress is estimated from then. */
    readonly now: number;
  },
): Promise<StatusReport> => {
  const sources = config.sources.map((source, index): SourceStatus => {
    const probe = parts.probes[index] as SourceProbe;
    const totals = parts.totals.sources[source.id] ?? NO_TOTALS;
    const { answer } = probe;
    const reached = 'last' in answer;
    return {
      id: source.id,
      ...probe.control,
      atSource: reached ? answer.holds : undefined,
      moved: totals.moved,
      copied: totals.copied,
      progress: sourceProgress(
        reached ? answer.holds : undefined,
        probe.recent,
        moveTiming(config, source.id)?.schedule,
        parts.now,
      ),
      deletedUnrouted: totals.deleted - totals.moved.instances,
      rejected: count(parts.rejected, source.id),
      openConflicts: count(parts.conflicts, source.id),
      waitingToBecomeStable: probe.waitingToBecomeStable,
      feed: {
        cursor: probe.cursor,
        last: reached ? answer.last : undefined,
        lag: reached ? Math.max(0, answer.last - (probe.cursor ?? 0)) : undefined,
      },
      ...(reached ? {} : { unknown: answer.unknown }),
    };
  });
  const largest = (groups: ErrorGroup[]) => groups.slice(0, STATUS_GROUPS);
  return {
    at: parts.now,
    sources,
    queue: parts.queue,
    ...(parts.deadLetters === undefined
      ? {}
      : {
          deadLetterGroups: largest(
            await groupByError(parts.deadLetters, (d) => ({ error: d.lastError, at: d.deadLetteredAt })),
          ),
        }),
    rejected: parts.rejected,
    rejectedGroups: largest(
      await groupByError(parts.rejected, (r) => ({ error: r.reason, at: r.rejectedAt })),
    ),
    conflicts: parts.conflicts,
    totals: parts.totals,
  };
};
