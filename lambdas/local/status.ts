/**
 * What `status` shows: per source, the queue, dead letters, rejected instances and totals. The
 * table of sources and the ledger's lines are those of `status --aws` too (lambdas/aws/operations.ts).
 */
import type { ForwarderConfig } from '../core/config.ts';
import { describe } from '../core/errors.ts';
import { createEndpoint } from '../core/http.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import type { DeadLetter, QueueStats, RejectedInstance, Totals } from '../core/ports.ts';
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

/** What the ledger says: the instances refused for good, and the totals. */
export interface LedgerSummary {
  readonly rejected: readonly RejectedInstance[];
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
  totals: await state.ledger.totals(),
});

const row = (cells: readonly (string | number | undefined)[]) =>
  cells.map((c) => String(c ?? '-')).join('\t');

/** The table of sources, each with its state: `reachable`, or why not. */
export const sourceLines = <Source extends SourceProgress>(
  sources: readonly Source[],
  stateOf: (source: Source) => string | undefined,
): string[] => [
  'SOURCE\tCURSOR\tLAST\tLAG\tWAITING\tSTATE',
  ...sources.map((s) =>
    row([s.id, s.cursor, s.last, s.lag, s.waitingToBecomeStable, stateOf(s) ?? 'reachable']),
  ),
];

export const ledgerLines = (report: LedgerSummary): string[] => {
  const t = report.totals;
  return [
    `rejected instances: ${report.rejected.length}`,
    ...report.rejected.map((r) => `  ${r.sourceId} study ${r.studyId} instance ${r.instanceId}: ${r.reason}`),
    `moved so far: ${t.studies} studies, ${t.instances} instances, ${t.bytes} bytes, ${t.deleted} deleted`,
  ];
};

export const formatStatus = (report: StatusReport): string => {
  const q = report.queue;
  return [
    ...sourceLines(report.sources, (s) => s.error),
    '',
    `queue: ${q.waiting} waiting, ${q.inFlight} in flight, ${q.deadLetters} dead letters`,
    ...report.deadLetters.map((d) => `  dead letter ${d.id}: ${d.lastError} (${d.receiveCount} receives)`),
    ...ledgerLines(report),
  ].join('\n');
};
