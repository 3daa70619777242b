/** What `status` shows: per source, the queue, dead letters, rejected instances and totals. */
import type { ForwarderConfig } from '../core/config.ts';
import { describe } from '../core/errors.ts';
import { createEndpoint } from '../core/http.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import type { DeadLetter, QueueStats, RejectedInstance, Totals } from '../core/ports.ts';
import type { LocalState } from './sqlite-state.ts';

export interface SourceReport {
  readonly id: string;
  readonly cursor: number | undefined;
  /** The source's newest change, or undefined when it could not be reached. */
  readonly last: number | undefined;
  readonly lag: number | undefined;
  readonly waitingToBecomeStable: number;
  readonly error?: string;
}

export interface StatusReport {
  readonly sources: readonly SourceReport[];
  readonly queue: QueueStats;
  readonly deadLetters: readonly DeadLetter[];
  readonly rejected: readonly RejectedInstance[];
  readonly totals: Totals;
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

export const formatStatus = (report: StatusReport): string => {
  const lines = ['SOURCE\tCURSOR\tLAST\tLAG\tWAITING\tSTATE'];
  for (const s of report.sources) {
    lines.push(row([s.id, s.cursor, s.last, s.lag, s.waitingToBecomeStable, s.error ?? 'reachable']));
  }
  const q = report.queue;
  lines.push('', `queue: ${q.waiting} waiting, ${q.inFlight} in flight, ${q.deadLetters} dead letters`);
  for (const d of report.deadLetters)
    lines.push(`  dead letter ${d.id}: ${d.lastError} (${d.receiveCount} receives)`);
  lines.push(`rejected instances: ${report.rejected.length}`);
  for (const r of report.rejected) {
    lines.push(`  ${r.sourceId} study ${r.studyId} instance ${r.instanceId}: ${r.reason}`);
  }
  const t = report.totals;
  lines.push(
    `moved so far: ${t.studies} studies, ${t.instances} instances, ${t.bytes} bytes, ${t.deleted} deleted`,
  );
  return lines.join('\n');
};
