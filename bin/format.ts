/**
 * What the CLI prints, the same for the state file and for the deployed stack (`--aws`): the
 * status report and the conflicts. Orthanc IDs, SOPInstanceUIDs, counts, times and attribute
 * names only: a conflict records which attributes differ, never their values.
 */
import type { AwsStatusReport } from '../lambdas/aws/operations.ts';
import type { Conflict, ConflictResolution } from '../lambdas/core/ports.ts';
import type { LedgerSummary, SourceProgress, StatusReport } from '../lambdas/local/status.ts';

/** How many open conflicts `status` lists; `conflicts list` shows them all. */
const STATUS_CONFLICTS = 10;

const row = (cells: readonly (string | number | undefined)[]) =>
  cells.map((c) => String(c ?? '-')).join('\t');

const iso = (epochMs: number | undefined) =>
  epochMs === undefined ? undefined : new Date(epochMs).toISOString();

/** The table of sources, each with its state: `reachable`, or why not. */
const sourceLines = <Source extends SourceProgress>(
  sources: readonly Source[],
  stateOf: (source: Source) => string | undefined,
): string[] => [
  'SOURCE\tCURSOR\tLAST\tLAG\tWAITING\tSTATE',
  ...sources.map((s) =>
    row([s.id, s.cursor, s.last, s.lag, s.waitingToBecomeStable, stateOf(s) ?? 'reachable']),
  ),
];

/** One conflict in a line: where it is, and the names of the attributes that differ. */
export const describeConflict = (c: Conflict): string =>
  `${c.sourceId} study ${c.studyId} instance ${c.instanceId} at ${c.destinationId} (differs: ${c.attributes.join(', ')})`;

const conflictLines = (open: readonly Conflict[]): string[] => {
  if (open.length === 0) return ['open conflicts: 0'];
  const more = open.length - STATUS_CONFLICTS;
  return [
    `open conflicts: ${open.length} (held at their source: the destination holds another instance under the same SOPInstanceUID)`,
    ...open.slice(0, STATUS_CONFLICTS).map((c) => `  ${describeConflict(c)}`),
    ...(more > 0 ? [`  and ${more} more`] : []),
    '  see them with `conflicts list`, decide with `conflicts resolve`',
  ];
};

const ledgerLines = (report: LedgerSummary): string[] => {
  const t = report.totals;
  return [
    `rejected instances: ${report.rejected.length}`,
    ...report.rejected.map((r) => `  ${r.sourceId} study ${r.studyId} instance ${r.instanceId}: ${r.reason}`),
    ...conflictLines(report.conflicts),
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

export const formatAwsStatus = (report: AwsStatusReport): string => {
  const q = report.queue;
  return [
    ...sourceLines(report.sources, (s) => s.unknown),
    '',
    `queue: ${q.waiting} waiting, ${q.inFlight} in flight (being moved, or waiting out a retry delay), ${q.deadLetters} dead letters`,
    ...(q.deadLetters > 0 ? ['  see them with `dlq list`, put them back with `redrive`'] : []),
    ...ledgerLines(report),
  ].join('\n');
};

/** `conflicts list`: a table, one conflict a line. */
export const formatConflicts = (conflicts: readonly Conflict[], openOnly: boolean): string => {
  if (conflicts.length === 0) return openOnly ? 'no open conflicts' : 'no conflicts';
  return [
    'SOURCE\tSTUDY\tINSTANCE\tSOP_INSTANCE_UID\tDESTINATION\tDIFFERS\tDETECTED\tRESOLUTION',
    ...conflicts.map((c) =>
      row([
        c.sourceId,
        c.studyId,
        c.instanceId,
        c.sopInstanceUid,
        c.destinationId,
        c.attributes.join(','),
        iso(c.detectedAt),
        c.resolution === undefined ? 'open' : `${c.resolution} ${iso(c.resolvedAt) ?? ''}`.trim(),
      ]),
    ),
  ].join('\n');
};

/** `conflicts resolve`: what was decided. */
export const formatDecisions = (
  resolution: ConflictResolution,
  decisions: { readonly resolved: readonly Conflict[]; readonly skipped: readonly Conflict[] },
): string =>
  [
    ...decisions.resolved.map((c) => `${resolution}: ${describeConflict(c)}`),
    ...decisions.skipped.map((c) => `already resolved meanwhile, left as it was: ${describeConflict(c)}`),
    `resolved ${decisions.resolved.length} conflict(s)`,
  ].join('\n');
