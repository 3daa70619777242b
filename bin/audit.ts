/**
 * `audit export`: the deletions the ledger recorded in a period (the state file's, or with `--aws`
 * the stack's table), page by page, as CSV or JSON lines, one row per deleted instance or per
 * deletion of a study. Orthanc IDs, UIDs, destination ids, verification levels, times, counts and
 * statuses only: the ledger records no patient value, so none can be printed.
 */
import { InvalidArgumentError } from 'commander';
import type { AuditedDeletion, DeletionQuery, DeletionStatus, Ledger } from '../lambdas/core/ports.ts';
import { DAY_MS } from '../lambdas/core/retention.ts';

export type AuditFormat = 'csv' | 'jsonl';
export type AuditRows = 'instance' | 'study';

export interface AuditOptions {
  since: Period;
  until?: Period;
  source?: string;
  format: AuditFormat;
  per: AuditRows;
}

/** A day (UTC) or an instant, as given to --since or --until. */
export interface Period {
  readonly start: number;
  /** A day's end (exclusive); an instant is its own end. */
  readonly end: number;
}

/** Parts read per page: at most 10 × DELETION_PART_SIZE instances are held at once. */
const PAGE_PARTS = 10;

const DAY = /^\d{4}-\d{2}-\d{2}$/;
/** An ISO 8601 time with its zone: one without would depend on the zone of the machine. */
const INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

/** commander's parser of --since and --until. */
export const parsePeriod = (value: string): Period => {
  const start = Date.parse(DAY.test(value) ? `${value}T00:00:00Z` : value);
  // Date.parse takes 2025-02-30 for 2025-03-02: a day must come back as it was given.
  const valid = DAY.test(value)
    ? !Number.isNaN(start) && new Date(start).toISOString().startsWith(value)
    : INSTANT.test(value) && !Number.isNaN(start);
  if (!valid) {
    throw new InvalidArgumentError(
      'must be a day (2025-01-31, UTC) or a time with its zone (2025-01-31T08:00:00Z, 2025-01-31T09:00:00+01:00)',
    );
  }
  return { start, end: DAY.test(value) ? start + DAY_MS : start };
};

/** From the start of --since to the end of --until (a day is included whole), or to now. */
export const auditQuery = (options: AuditOptions, now: number): DeletionQuery => {
  const until = options.until?.end ?? now;
  if (options.since.start >= until) throw new InvalidArgumentError('--since must be before --until');
  return { since: options.since.start, until, sourceId: options.source };
};

type Cell = string | number;

/** RFC 4180: a cell with a comma, a quote or a line break is quoted, its quotes doubled. */
export const csvCell = (value: Cell): string => {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
};

/** Why an instance could leave: verified at every destination, the operator's decision, or no destination takes its study. */
const basisOf = (deletion: AuditedDeletion, accepted: boolean) =>
  deletion.verifiedBy.length === 0 ? 'unrouted' : accepted ? 'accepted' : 'verified';

/** A row: its cells by column, the destinations as the ledger has them (a cell of their own in CSV). */
type Row = Record<string, Cell | AuditedDeletion['verifiedBy']>;

interface Table {
  readonly columns: readonly string[];
  /** Takes the parts in the ledger's order; returns the rows they complete. */
  add(part: AuditedDeletion): Row[];
  /** The rows still held once every part was added. */
  end(): Row[];
}

const when = (deletion: AuditedDeletion) => new Date(deletion.at).toISOString();

/** The columns of each kind of row, in the CSV's order. */
export const AUDIT_COLUMNS: Record<AuditRows, readonly string[]> = {
  instance: [
    'deletedAt',
    'status',
    'sourceId',
    'studyId',
    'seriesId',
    'instanceId',
    'studyInstanceUid',
    'sopInstanceUid',
    'destinations',
    'basis',
  ],
  study: [
    'deletedAt',
    'status',
    'sourceId',
    'studyId',
    'studyInstanceUid',
    'series',
    'instances',
    'verified',
    'accepted',
    'unrouted',
    'destinations',
  ],
};

const perInstance = (): Table => ({
  columns: AUDIT_COLUMNS.instance,
  add: (part) =>
    part.instances.map((instance) => ({
      deletedAt: when(part),
      status: part.status,
      sourceId: part.sourceId,
      studyId: part.studyId,
      seriesId: instance.seriesId,
      instanceId: instance.instanceId,
      studyInstanceUid: part.studyInstanceUid,
      sopInstanceUid: instance.sopInstanceUid,
      destinations: part.verifiedBy,
      basis: basisOf(part, instance.accepted),
    })),
  end: () => [],
});

/** One row per deletion: its parts come one after the other, so one is summed at a time. */
const perStudy = (): Table => {
  let current:
    | { first: AuditedDeletion; status: DeletionStatus; series: Set<string>; counts: Record<string, number> }
    | undefined;
  const flush = (): Row[] => {
    if (current === undefined) return [];
    const { first, status, series, counts } = current;
    current = undefined;
    return [
      {
        deletedAt: when(first),
        status,
        sourceId: first.sourceId,
        studyId: first.studyId,
        studyInstanceUid: first.studyInstanceUid,
        series: series.size,
        instances: (counts.verified ?? 0) + (counts.accepted ?? 0) + (counts.unrouted ?? 0),
        verified: counts.verified ?? 0,
        accepted: counts.accepted ?? 0,
        unrouted: counts.unrouted ?? 0,
        destinations: first.verifiedBy,
      },
    ];
  };
  return {
    columns: AUDIT_COLUMNS.study,
    add: (part) => {
      const same =
        current !== undefined &&
        current.first.at === part.at &&
        current.first.sourceId === part.sourceId &&
        current.first.studyId === part.studyId &&
        current.first.seriesId === part.seriesId;
      const done = same ? [] : flush();
      current ??= { first: part, status: part.status, series: new Set(), counts: {} };
      for (const instance of part.instances) {
        current.series.add(instance.seriesId);
        const basis = basisOf(part, instance.accepted);
        current.counts[basis] = (current.counts[basis] ?? 0) + 1;
      }
      return done;
    },
    end: flush,
  };
};

/** A CSV line: the destinations as `id:level` joined by commas, so quoted when there are two. */
const csvLine = (columns: readonly string[], row: Row): string =>
  columns
    .map((column) => {
      const value = row[column] ?? '';
      return csvCell(
        typeof value === 'object' ? value.map((v) => `${v.destinationId}:${v.verify}`).join(',') : value,
      );
    })
    .join(',');

/** Writes the export through `write` (which waits while the output is full), page by page. */
export const exportDeletions = async (
  ledger: Pick<Ledger, 'deletions'>,
  query: DeletionQuery,
  options: Pick<AuditOptions, 'format' | 'per'>,
  write: (text: string) => Promise<void>,
): Promise<void> => {
  const table = options.per === 'study' ? perStudy() : perInstance();
  const csv = options.format === 'csv';
  const line = (row: Row) => (csv ? `${csvLine(table.columns, row)}\r\n` : `${JSON.stringify(row)}\n`);
  const emit = async (done: readonly Row[]) => {
    if (done.length > 0) await write(done.map(line).join(''));
  };
  if (csv) await write(`${table.columns.join(',')}\r\n`);
  let after: string | undefined;
  do {
    const page = await ledger.deletions(query, { after, limit: PAGE_PARTS });
    for (const part of page.deletions) await emit(table.add(part));
    after = page.next;
  } while (after !== undefined);
  await emit(table.end());
};

/** Writes to stdout, waiting while its buffer is full: memory stays bounded however long the export. */
export const writeStdout = (text: string): Promise<void> =>
  new Promise((resolve) => {
    if (process.stdout.write(text)) resolve();
    else process.stdout.once('drain', resolve);
  });
