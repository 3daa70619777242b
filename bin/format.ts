/**
 * What the CLI prints, the same for the state file and for the deployed stack (`--aws`): the
 * status report and the conflicts. Orthanc IDs, SOPInstanceUIDs, counts, sizes, times and
 * attribute names only: a conflict records which attributes differ, never their values.
 */
import type { ErrorGroup } from '../lambdas/core/dead-letters.ts';
import type { SourcePlan } from '../lambdas/core/plan.ts';
import type { Conflict, ConflictResolution, Tally } from '../lambdas/core/ports.ts';
import type { PreflightProblem, PreflightReport } from '../lambdas/core/preflight.ts';
import type { SourceProgress } from '../lambdas/core/progress.ts';
import type { SourceStatus, StatusReport } from '../lambdas/core/status.ts';

/** How many open conflicts `status` lists; `conflicts list` shows them all. */
const STATUS_CONFLICTS = 10;

const row = (cells: readonly (string | number | undefined)[]) =>
  cells.map((c) => String(c ?? '-')).join('\t');

const iso = (epochMs: number | undefined) =>
  epochMs === undefined ? undefined : new Date(epochMs).toISOString();

const SIZE_UNITS = ['KB', 'MB', 'GB', 'TB', 'PB'];

/** A size as people read it, in units of 1024 as Orthanc counts them: `512 B`, `1.5 KB`, `213 MB`. */
export const formatSize = (bytes: number): string => {
  if (bytes < 1024) return `${bytes} B`;
  let value = bytes;
  let unit = -1;
  while (value >= 1024 && unit < SIZE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${SIZE_UNITS[unit]}`;
};

/** Columns padded to their widest cell, so that a table reads in a terminal. */
const table = (rows: readonly (readonly string[])[]): string[] => {
  const widths = (rows[0] ?? []).map((_, column) =>
    Math.max(...rows.map((cells) => cells[column]?.length ?? 0)),
  );
  return rows.map((cells) =>
    cells
      .map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join('  '),
  );
};

const tally = (t: Tally | undefined): string =>
  t === undefined ? '?' : `${t.studies} / ${t.instances} / ${formatSize(t.bytes)}`;

/** A duration as people read it, to the minute: `12 min`, `3 h 5 min`, `4 d 2 h`. */
export const formatDuration = (ms: number): string => {
  const minutes = Math.round(ms / 60_000);
  if (minutes < 1) return 'under a minute';
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
};

/** What left per hour the windows were open: `1.2 GB/h`; `-` when nothing left lately. */
export const formatRate = (p: SourceProgress): string =>
  p.rate === undefined ? '-' : `${formatSize(Math.round(p.rate.bytesPerHour))}/h`;

/**
 * When the source would hold nothing more at that rate: `in 3 d 4 h`; `done` when it holds
 * nothing; `-` without a rate (or further than one can say); `?` when what it holds is unknown.
 */
export const formatEta = (p: SourceProgress, now: number): string => {
  if (p.left === undefined) return '?';
  if (p.left.instances === 0) return 'done';
  return p.finishAt === undefined ? '-' : `in ${formatDuration(p.finishAt - now)}`;
};

/** What an operator asked of a source, before its state: `paused since …`, `sweep requested at …`. */
const controlOf = (s: SourceStatus): string[] => [
  ...(s.pausedAt === undefined ? [] : [`paused since ${iso(s.pausedAt)}`]),
  ...(s.sweepRequestedAt === undefined ? [] : [`sweep requested at ${iso(s.sweepRequestedAt)}`]),
];

/** The columns of the sources' table, in `status` and on `run --listen`'s page: a header and a cell of each source. */
export const SOURCE_COLUMNS: readonly (readonly [string, (s: SourceStatus, at: number) => string])[] = [
  ['SOURCE', (s) => s.id],
  ['AT SOURCE', (s) => tally(s.atSource)],
  ['MOVED', (s) => tally(s.moved)],
  ['LAST HOUR', (s) => tally(s.progress.lastHour)],
  ['LAST DAY', (s) => tally(s.progress.lastDay)],
  ['RATE', (s) => formatRate(s.progress)],
  ['ETA', (s, at) => formatEta(s.progress, at)],
  ['COPIED', (s) => tally(s.copied)],
  ['REJECTED', (s) => String(s.rejected)],
  ['CONFLICTS', (s) => String(s.openConflicts)],
  ['WAITING', (s) => String(s.waitingToBecomeStable)],
  ['STATE', (s) => [...controlOf(s), s.unknown ?? 'reachable'].join('; ')],
];

const sourceLines = (report: StatusReport): string[] => [
  ...table([
    SOURCE_COLUMNS.map(([header]) => header),
    ...report.sources.map((s) => SOURCE_COLUMNS.map(([, cell]) => cell(s, report.at))),
  ]),
  '(studies / instances / size; AT SOURCE: what the source holds now; MOVED: what left it, verified at every destination; LAST HOUR, LAST DAY: what left it lately; RATE: per hour its windows were open; ETA: when the rest would be gone at that rate, inside its windows; WAITING: studies not stable yet)',
];

/** The largest groups of dead letters or refusals, one line each, and what else there is. */
const groupLines = (groups: readonly ErrorGroup[], total: number, seeAll: string): string[] => {
  const shown = groups.reduce((sum, group) => sum + group.count, 0);
  return [
    ...groups.map((g) => `  ${g.count} × ${g.error} (newest ${iso(g.newestAt) ?? 'unknown'})`),
    ...(total > shown ? [`  and ${total - shown} more: ${seeAll}`] : []),
  ];
};

const deadLetterLines = (report: StatusReport): string[] => {
  const { queue } = report;
  const lines = [
    `queue: ${queue.waiting} waiting, ${queue.inFlight} in flight (being moved, or waiting out a retry delay), ${queue.deadLetters} dead letters`,
  ];
  if (queue.deadLetters === 0) return lines;
  const groups = report.deadLetterGroups;
  return [
    ...lines,
    ...(groups === undefined
      ? ['  group them with `dlq list --group-by error`']
      : groupLines(groups, queue.deadLetters, '`dlq list --group-by error`')),
    '  put them back with `dlq redrive` (`--source`, `--error` for some of them)',
  ];
};

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

const totalsLine = (report: StatusReport): string => {
  const t = report.totals;
  const unrouted = t.deleted - t.moved.instances;
  return [
    `all sources so far: moved ${t.moved.studies} studies, ${t.moved.instances} instances, ${formatSize(t.moved.bytes)}`,
    `copied ${t.copied.studies} studies, ${t.copied.instances} instances, ${formatSize(t.copied.bytes)}`,
    ...(unrouted > 0 ? [`deleted unrouted ${unrouted} instances`] : []),
  ].join('; ');
};

export const formatStatus = (report: StatusReport): string =>
  [
    ...sourceLines(report),
    '',
    ...deadLetterLines(report),
    report.rejected.length === 0
      ? 'rejected instances: 0'
      : `rejected instances: ${report.rejected.length} (held at their source; \`status --json\` lists them)`,
    ...groupLines(report.rejectedGroups, report.rejected.length, '`status --json`'),
    ...conflictLines(report.conflicts),
    totalsLine(report),
  ].join('\n');

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

/** One problem of the pre-flight check in a line: the field to fix, what was found, what to do. */
export const formatProblem = (p: PreflightProblem): string => `${p.field}: ${p.problem}; ${p.fix}`;

/** `check`: a table of the servers, then every problem found. */
export const formatCheck = (report: PreflightReport): string => {
  const problems = report.servers.flatMap((server) => server.problems);
  return [
    'SERVER\tID\tURL\tORTHANC\tDICOMWEB\tRESULT\tVERIFIED',
    ...report.servers.map((s) =>
      row([
        s.field,
        s.id,
        s.url,
        s.orthanc,
        s.dicomWeb,
        s.problems.length === 0 ? 'ok' : `${s.problems.length} problem(s)`,
        s.verified.join(', '),
      ]),
    ),
    '',
    ...(problems.length === 0
      ? ['all good']
      : [`${problems.length} problem(s):`, ...problems.map((p) => `  ${formatProblem(p)}`)]),
  ].join('\n');
};

/** A source's plan, or why it has none. */
export type PlanResult = SourcePlan | { readonly sourceId: string; readonly unreachable: string };

/** What `plan --json` prints: the plans, and what decides what the destinations' rows mean. */
export interface PlanReport {
  readonly at: number;
  /** False: copy mode, nothing leaves the sources. */
  readonly deleteAfterForward: boolean;
  /** What becomes of the unrouted studies: kept, or deleted (never in copy mode). */
  readonly unrouted: 'keep' | 'delete';
  readonly sources: readonly PlanResult[];
}

const planNotes = (p: PlanResult, at: number): string => {
  if ('unreachable' in p) return `${p.sourceId}: no plan: ${p.unreachable}`;
  const windows = p.windowOpen
    ? 'its windows are open now'
    : `its windows open ${p.opensAt === undefined ? 'never' : `in ${formatDuration(p.opensAt - at)}`}`;
  return `${p.sourceId}: looked at ${p.listed} of its ${p.studies} studies; not yet: ${p.notStable} not stable, ${p.tooYoung} younger than the minimum age; ${windows}`;
};

/** `plan`: per source and destination what a run would send there, then what would wait. */
export const formatPlan = (report: PlanReport): string => {
  const deletes = report.deleteAfterForward && report.unrouted === 'delete';
  const unrouted = `unrouted (${deletes ? 'deleted at the source' : 'kept at the source'})`;
  const rows = report.sources.flatMap((p) =>
    'unreachable' in p
      ? [[p.sourceId, '?', '?', '?', '?']]
      : [...p.destinations, { id: unrouted, ...p.unrouted }].map((d) => [
          p.sourceId,
          d.id,
          String(d.studies),
          String(d.instances),
          formatSize(d.bytes),
        ]),
  );
  return [
    `what a run would ${report.deleteAfterForward ? 'move' : 'copy'} now, per destination (nothing was moved; a study several destinations take counts in each):`,
    ...table([['SOURCE', 'DESTINATION', 'STUDIES', 'INSTANCES', 'SIZE'], ...rows]),
    '',
    ...report.sources.map((p) => planNotes(p, report.at)),
  ].join('\n');
};
