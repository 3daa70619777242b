/** What was moved, what the destination refused, and who is moving which study right now. */
import {
  CONFLICT_RESOLUTIONS,
  type Conflict,
  type ConflictFilter,
  type ConflictKey,
  type ConflictResolution,
  type DeletionIntent,
  type DeletionKey,
  type DeletionPage,
  type DeletionQuery,
  type DeletionRecord,
  type Ledger,
  type RejectedInstance,
  type SettledStudy,
  type StudyOutcome,
  type Tally,
  type Totals,
} from '../core/ports.ts';
import { movedBucketStart, sumTotals } from '../core/totals.ts';
import { DELETIONS_SCHEMA, SqliteDeletions } from './sqlite-deletions.ts';
import type { StateDb } from './sqlite-state.ts';

const outcomesTable = (name: string) => `
  CREATE TABLE IF NOT EXISTS ${name} (
    id INTEGER PRIMARY KEY,
    source_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    result TEXT NOT NULL
      CHECK (result IN ('moved', 'partial', 'gone', 'copied', 'skipped', 'unchanged')),
    instances INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    already_present INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    -- Last, where ALTER TABLE put them in older files, so that every file has the same columns.
    conflicts INTEGER NOT NULL DEFAULT 0,
    -- NULL in the outcomes of version 4 and older.
    deleted_bytes INTEGER
  ) STRICT;
  CREATE INDEX IF NOT EXISTS ${name}_study ON ${name} (source_id, study_id);
  -- What left a source lately (movedSince): the newest rows of the source, not the whole table.
  CREATE INDEX IF NOT EXISTS ${name}_finished ON ${name} (source_id, finished_at);
`;

/**
 * Schema version 2 allows the results 'skipped' and 'unchanged'. SQLite cannot alter a CHECK
 * constraint, so a version 1 file's outcomes move to a table made anew, in the current form: the
 * columns added since take their defaults, and nothing more is to be done to the file.
 */
export const LEDGER_MIGRATION_FROM_1 = `
  ${outcomesTable('study_outcomes_v2')}
  INSERT INTO study_outcomes_v2 (id, source_id, study_id, result, instances, sent, already_present,
    deleted, rejected, bytes, duration_ms, finished_at)
  SELECT * FROM study_outcomes;
  DROP TABLE study_outcomes;
  ALTER TABLE study_outcomes_v2 RENAME TO study_outcomes;
  DROP INDEX study_outcomes_v2_study;
  CREATE INDEX study_outcomes_study ON study_outcomes (source_id, study_id);
  DROP INDEX study_outcomes_v2_finished;
  CREATE INDEX study_outcomes_finished ON study_outcomes (source_id, finished_at);
`;

/** Schema version 3 counts the instances each run left at the source for a conflict. */
export const LEDGER_MIGRATION_FROM_2 = `
  ALTER TABLE study_outcomes ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
`;

/** Schema version 5 keeps the size of what each run deleted at the source. */
export const LEDGER_COLUMNS_OF_5 = [
  { table: 'study_outcomes', column: 'deleted_bytes', definition: 'INTEGER' },
];

/**
 * Schema version 5 counts pruned outcomes per source, copies apart from moves. What an older file
 * had pruned cannot be told apart: it goes to the source '' (Totals.sources says how it counts).
 */
export const LEDGER_MIGRATION_TO_5 = `
  INSERT INTO pruned_source_totals (source_id, moved_studies, moved_instances, moved_bytes,
    copied_studies, copied_instances, copied_bytes, deleted)
  SELECT '', studies, deleted, bytes, 0, 0, 0, deleted FROM pruned_totals
  WHERE id = 1 AND studies + instances + bytes + deleted > 0
  ON CONFLICT (source_id) DO NOTHING;
  UPDATE pruned_totals SET studies = 0, instances = 0, bytes = 0, deleted = 0;
`;

const SOURCE_TOTALS = [
  'moved_studies',
  'moved_instances',
  'moved_bytes',
  'copied_studies',
  'copied_instances',
  'copied_bytes',
  'deleted',
] as const;

/*
 * What the totals count of outcomes, per source: core/totals.ts's outcomeTotals(), summed. An
 * outcome of version 4 or older has no deleted_bytes: what it sent stands for it.
 */
const OUTCOME_SUMS = `count(*) FILTER (WHERE result = 'moved') AS moved_studies,
  coalesce(sum(deleted) FILTER (WHERE result <> 'skipped'), 0) AS moved_instances,
  coalesce(sum(coalesce(deleted_bytes, CASE WHEN deleted > 0 THEN bytes ELSE 0 END))
    FILTER (WHERE result <> 'skipped'), 0) AS moved_bytes,
  count(*) FILTER (WHERE result = 'copied') AS copied_studies,
  coalesce(sum(sent) FILTER (WHERE result = 'copied'), 0) AS copied_instances,
  coalesce(sum(bytes) FILTER (WHERE result = 'copied'), 0) AS copied_bytes,
  coalesce(sum(deleted), 0) AS deleted`;

const SQL_RESOLUTIONS = CONFLICT_RESOLUTIONS.map((resolution) => `'${resolution}'`).join(', ');

export const LEDGER_SCHEMA = `
  CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at INTEGER NOT NULL
  ) STRICT;
  ${outcomesTable('study_outcomes')}
  CREATE TABLE IF NOT EXISTS settled_studies (
    source_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    series_id TEXT NOT NULL,
    last_update TEXT NOT NULL,
    instances INTEGER NOT NULL,
    routing TEXT NOT NULL,
    result TEXT NOT NULL CHECK (result IN ('copied', 'partial', 'skipped')),
    settled_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, study_id, series_id)
  ) STRICT, WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS rejected_instances (
    source_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, instance_id)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS rejected_instances_study ON rejected_instances (source_id, study_id);
  CREATE TABLE IF NOT EXISTS conflicts (
    source_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    destination_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    -- A JSON array of attribute names.
    attributes TEXT NOT NULL,
    detected_at INTEGER NOT NULL,
    resolution TEXT CHECK (resolution IN (${SQL_RESOLUTIONS})),
    resolved_at INTEGER,
    CHECK ((resolution IS NULL) = (resolved_at IS NULL)),
    PRIMARY KEY (source_id, instance_id, destination_id)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS conflicts_study ON conflicts (source_id, study_id);
  -- What pruned outcomes counted, per source: the totals do not shrink with the rows.
  CREATE TABLE IF NOT EXISTS pruned_source_totals (
    source_id TEXT PRIMARY KEY,
    ${SOURCE_TOTALS.map((column) => `${column} INTEGER NOT NULL`).join(',\n    ')}
  ) STRICT, WITHOUT ROWID;
  -- What forgotten refusals counted (and, before version 5, pruned outcomes).
  CREATE TABLE IF NOT EXISTS pruned_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    studies INTEGER NOT NULL,
    instances INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    rejected INTEGER NOT NULL
  ) STRICT;
  CREATE TABLE IF NOT EXISTS deletion_intents (
    source_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    series_id TEXT NOT NULL,
    instances INTEGER NOT NULL,
    -- A JSON array of {destinationId, verify}.
    verified_by TEXT NOT NULL,
    routing TEXT NOT NULL,
    at INTEGER NOT NULL,
    -- NULL while open.
    completed_at INTEGER,
    PRIMARY KEY (source_id, study_id, series_id)
  ) STRICT, WITHOUT ROWID;
  ${DELETIONS_SCHEMA}
`;

/** The columns of a table kept per study and per series of it: settled studies, deletion intents. */
interface SeriesRow {
  source_id: string;
  study_id: string;
  series_id: string;
}

const seriesOf = (row: SeriesRow) => ({
  sourceId: row.source_id,
  studyId: row.study_id,
  seriesId: row.series_id,
});

interface SettledRow extends SeriesRow {
  last_update: string;
  instances: number;
  routing: string;
  result: SettledStudy['result'];
  settled_at: number;
}

interface RejectedRow {
  source_id: string;
  study_id: string;
  instance_id: string;
  sop_instance_uid: string;
  reason: string;
  rejected_at: number;
}

interface ConflictRow {
  source_id: string;
  instance_id: string;
  destination_id: string;
  study_id: string;
  sop_instance_uid: string;
  attributes: string;
  detected_at: number;
  resolution: ConflictResolution | null;
  /** Set whenever resolution is (the table's CHECK). */
  resolved_at: number;
}

type SourceTotalsRow = { source_id: string } & Record<(typeof SOURCE_TOTALS)[number], number>;

interface IntentRow extends SeriesRow {
  instances: number;
  verified_by: string;
  routing: string;
  at: number;
  completed_at: number | null;
}

const toConflict = (row: ConflictRow): Conflict => ({
  sourceId: row.source_id,
  studyId: row.study_id,
  instanceId: row.instance_id,
  destinationId: row.destination_id,
  sopInstanceUid: row.sop_instance_uid,
  attributes: JSON.parse(row.attributes) as string[],
  detectedAt: row.detected_at,
  ...(row.resolution === null ? {} : { resolution: row.resolution, resolvedAt: row.resolved_at }),
});

const statements = (db: StateDb) => ({
  // One statement, so that two workers cannot both see the lease free and both take it.
  acquireLease: db.prepare(
    `INSERT INTO leases (key, owner, expires_at) VALUES (:key, :owner, :expiresAt)
     ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
     WHERE leases.expires_at <= :now OR leases.owner = excluded.owner`,
  ),
  releaseLease: db.prepare('DELETE FROM leases WHERE key = ? AND owner = ?'),
  dropLeases: db.prepare('DELETE FROM leases WHERE owner <> ?'),
  leaseHolder: db.prepare('SELECT owner FROM leases WHERE key = ?'),
  dropLease: db.prepare('DELETE FROM leases WHERE key = ? AND owner = ?'),
  record: db.prepare(
    `INSERT INTO study_outcomes (source_id, study_id, result, instances, sent, already_present,
       deleted, rejected, conflicts, bytes, deleted_bytes, duration_ms, finished_at)
     VALUES (:sourceId, :studyId, :result, :instances, :sent, :alreadyPresent,
       :deleted, :rejected, :conflicts, :bytes, :deletedBytes, :durationMs, :finishedAt)`,
  ),
  // The newest refusal wins, whatever order two workers write theirs in.
  recordRejected: db.prepare(
    `INSERT INTO rejected_instances (source_id, instance_id, study_id, sop_instance_uid, reason, rejected_at)
     VALUES (:sourceId, :instanceId, :studyId, :sopInstanceUid, :reason, :rejectedAt)
     ON CONFLICT (source_id, instance_id) DO UPDATE SET study_id = excluded.study_id,
       sop_instance_uid = excluded.sop_instance_uid, reason = excluded.reason, rejected_at = excluded.rejected_at
     WHERE excluded.rejected_at >= rejected_instances.rejected_at`,
  ),
  recordConflict: db.prepare(
    `INSERT INTO conflicts (source_id, instance_id, destination_id, study_id, sop_instance_uid, attributes, detected_at)
     VALUES (:sourceId, :instanceId, :destinationId, :studyId, :sopInstanceUid, :attributes, :detectedAt)
     ON CONFLICT (source_id, instance_id, destination_id) DO NOTHING`,
  ),
  conflicts: db.prepare(
    `SELECT source_id, instance_id, destination_id, study_id, sop_instance_uid, attributes, detected_at,
       resolution, resolved_at FROM conflicts
     WHERE (?1 IS NULL OR source_id = ?1) AND (?2 IS NULL OR study_id = ?2) AND (?3 = 0 OR resolution IS NULL)
     ORDER BY source_id, study_id, detected_at, instance_id, destination_id`,
  ),
  resolveConflict: db.prepare(
    `UPDATE conflicts SET resolution = :resolution, resolved_at = :at
     WHERE source_id = :sourceId AND study_id = :studyId AND instance_id = :instanceId
       AND destination_id = :destinationId AND resolution IS NULL`,
  ),
  /*
   * The last written wins whatever its time, unlike settled studies: the lease makes its writer
   * the study's only mover, and a clock set back must not lose a deletion's intent in silence
   * behind an older one that is kept for good. completed_at is left NULL: a new deletion is open.
   */
  recordIntent: db.prepare(
    `INSERT OR REPLACE INTO deletion_intents (source_id, study_id, series_id, instances, verified_by, routing, at)
     VALUES (:sourceId, :studyId, :seriesId, :instances, :verifiedBy, :routing, :at)`,
  ),
  intents: db.prepare(
    `SELECT source_id, study_id, series_id, instances, verified_by, routing, at, completed_at
     FROM deletion_intents WHERE source_id = ? AND study_id = ? ORDER BY series_id`,
  ),
  completeIntent: db.prepare(
    `UPDATE deletion_intents SET completed_at = :at
     WHERE source_id = :sourceId AND study_id = :studyId AND series_id = :seriesId AND completed_at IS NULL`,
  ),
  // The newest wins, whatever order two workers write theirs in.
  recordSettled: db.prepare(
    `INSERT INTO settled_studies (source_id, study_id, series_id, last_update, instances, routing, result, settled_at)
     VALUES (:sourceId, :studyId, :seriesId, :lastUpdate, :instances, :routing, :result, :settledAt)
     ON CONFLICT (source_id, study_id, series_id) DO UPDATE SET last_update = excluded.last_update,
       instances = excluded.instances, routing = excluded.routing, result = excluded.result,
       settled_at = excluded.settled_at
     WHERE excluded.settled_at >= settled_studies.settled_at`,
  ),
  settled: db.prepare(
    `SELECT source_id, study_id, series_id, last_update, instances, routing, result, settled_at
     FROM settled_studies WHERE source_id = ? AND study_id = ? AND series_id = ?`,
  ),
  rejected: db.prepare(
    `SELECT source_id, study_id, instance_id, sop_instance_uid, reason, rejected_at FROM rejected_instances
     WHERE (?1 IS NULL OR source_id = ?1) AND (?2 IS NULL OR study_id = ?2)
     ORDER BY source_id, study_id, rejected_at, instance_id`,
  ),
  /*
   * The first outcome still to keep. Outcomes are appended as they finish, so every row before it
   * is older than `before`, and finding it reads only those: no index on finished_at to maintain.
   */
  firstKept: db.prepare(
    `SELECT coalesce(
       (SELECT id FROM study_outcomes WHERE finished_at >= ? ORDER BY id LIMIT 1),
       (SELECT max(id) + 1 FROM study_outcomes)) AS id`,
  ),
  foldOutcomes: db.prepare(
    `INSERT INTO pruned_source_totals (source_id, ${SOURCE_TOTALS.join(', ')})
     SELECT source_id, ${OUTCOME_SUMS} FROM study_outcomes WHERE id < ? GROUP BY source_id
     ON CONFLICT (source_id) DO UPDATE SET
       ${SOURCE_TOTALS.map((column) => `${column} = ${column} + excluded.${column}`).join(', ')}`,
  ),
  pruneOutcomes: db.prepare('DELETE FROM study_outcomes WHERE id < ?'),
  movedSince: db.prepare(
    `SELECT ${OUTCOME_SUMS} FROM study_outcomes WHERE source_id = ? AND finished_at >= ?`,
  ),
  // Only the refusal that was judged gone: one recorded since is about a new arrival.
  forgetRejected: db.prepare(
    'DELETE FROM rejected_instances WHERE source_id = ? AND instance_id = ? AND rejected_at = ?',
  ),
  foldRejected: db.prepare(
    `INSERT INTO pruned_totals (id, studies, instances, bytes, deleted, rejected) VALUES (1, 0, 0, 0, 0, ?)
     ON CONFLICT (id) DO UPDATE SET rejected = rejected + excluded.rejected`,
  ),
  sourceTotals: db.prepare(
    `SELECT source_id, ${SOURCE_TOTALS.map((column) => `sum(${column}) AS ${column}`).join(', ')} FROM (
       SELECT source_id, ${OUTCOME_SUMS} FROM study_outcomes GROUP BY source_id
       UNION ALL
       SELECT source_id, ${SOURCE_TOTALS.join(', ')} FROM pruned_source_totals
     ) GROUP BY source_id ORDER BY source_id`,
  ),
  /*
   * Distinct instances refused for good, from their own table, because every later run of the
   * same study reports its earlier refusals again in its outcome; forgotten ones through pruned_totals.
   */
  rejectedTotal: db.prepare(
    `SELECT (SELECT count(*) FROM rejected_instances)
       + coalesce((SELECT rejected FROM pruned_totals WHERE id = 1), 0) AS rejected`,
  ),
});

export class SqliteLedger implements Ledger {
  readonly #db: StateDb;
  readonly #sql: ReturnType<typeof statements>;
  readonly #deletions: SqliteDeletions;

  constructor(db: StateDb) {
    this.#db = db;
    this.#sql = statements(db);
    this.#deletions = new SqliteDeletions(db);
  }

  /** The lease is free when nobody holds it, its holder let it expire, or the caller holds it (a renewal). */
  async acquireLease(key: string, owner: string, ttlMs: number, now: number): Promise<boolean> {
    if (!(ttlMs > 0)) throw new RangeError(`lease ttlMs must be positive, got ${ttlMs}`);
    const result = this.#sql.acquireLease.run({ key, owner, expiresAt: now + ttlMs, now });
    return Number(result.changes) === 1;
  }

  /** Only the holder can release, so a worker whose lease expired cannot free its successor's. */
  async releaseLease(key: string, owner: string): Promise<void> {
    this.#sql.releaseLease.run(key, owner);
  }

  /** Who holds the lease, expired or not. */
  leaseHolder(key: string): string | undefined {
    return (this.#sql.leaseHolder.get(key) as { owner: string } | undefined)?.owner;
  }

  /** Drops a lease whose holder the caller knows is dead, unless someone else took it meanwhile. */
  dropLeaseOf(key: string, owner: string): void {
    this.#sql.dropLease.run(key, owner);
  }

  /** Drops every lease not held by `owner`; for a caller that knows their holders are gone. */
  dropLeasesExcept(owner: string): number {
    return Number(this.#sql.dropLeases.run(owner).changes);
  }

  async record(outcome: StudyOutcome): Promise<void> {
    const { sourceId, studyId, result, instances, sent, alreadyPresent, deleted, rejected, bytes } = outcome;
    const { conflicts, deletedBytes, durationMs, finishedAt } = outcome;
    this.#sql.record.run({
      sourceId,
      studyId,
      result,
      instances,
      sent,
      alreadyPresent,
      deleted,
      rejected,
      conflicts,
      bytes,
      deletedBytes,
      durationMs,
      finishedAt,
    });
  }

  async recordRejected(instances: readonly RejectedInstance[]): Promise<void> {
    if (instances.length === 0) return;
    this.#db.write(() => {
      for (const { sourceId, instanceId, studyId, sopInstanceUid, reason, rejectedAt } of instances) {
        this.#sql.recordRejected.run({ sourceId, instanceId, studyId, sopInstanceUid, reason, rejectedAt });
      }
    });
  }

  async rejected(sourceId?: string, studyId?: string): Promise<RejectedInstance[]> {
    const rows = this.#sql.rejected.all(sourceId ?? null, studyId ?? null) as unknown as RejectedRow[];
    return rows.map((row) => ({
      sourceId: row.source_id,
      studyId: row.study_id,
      instanceId: row.instance_id,
      sopInstanceUid: row.sop_instance_uid,
      reason: row.reason,
      rejectedAt: row.rejected_at,
    }));
  }

  async recordConflicts(conflicts: readonly Conflict[]): Promise<void> {
    if (conflicts.length === 0) return;
    this.#db.write(() => {
      for (const conflict of conflicts) {
        const { sourceId, instanceId, destinationId, studyId, sopInstanceUid, detectedAt } = conflict;
        const attributes = JSON.stringify(conflict.attributes);
        this.#sql.recordConflict.run({
          sourceId,
          instanceId,
          destinationId,
          studyId,
          sopInstanceUid,
          attributes,
          detectedAt,
        });
      }
    });
  }

  async conflicts(filter: ConflictFilter = {}): Promise<Conflict[]> {
    const { sourceId, studyId, openOnly } = filter;
    const rows = this.#sql.conflicts.all(sourceId ?? null, studyId ?? null, openOnly ? 1 : 0);
    return (rows as unknown as ConflictRow[]).map(toConflict);
  }

  async resolveConflict(key: ConflictKey, resolution: ConflictResolution, at: number): Promise<boolean> {
    if (!CONFLICT_RESOLUTIONS.includes(resolution)) throw new RangeError(`unknown resolution ${resolution}`);
    const { sourceId, studyId, instanceId, destinationId } = key;
    const result = this.#sql.resolveConflict.run({
      sourceId,
      studyId,
      instanceId,
      destinationId,
      resolution,
      at,
    });
    return Number(result.changes) === 1;
  }

  async recordIntent(intent: DeletionIntent): Promise<void> {
    const { sourceId, studyId, seriesId, instances, routing, at } = intent;
    // Only the two fields, so that what is read back is what the DynamoDB ledger keeps too.
    const verifiedBy = JSON.stringify(
      intent.verifiedBy.map(({ destinationId, verify }) => ({ destinationId, verify })),
    );
    this.#sql.recordIntent.run({ sourceId, studyId, seriesId, instances, verifiedBy, routing, at });
  }

  async intents(sourceId: string, studyId: string): Promise<DeletionIntent[]> {
    return (this.#sql.intents.all(sourceId, studyId) as unknown as IntentRow[]).map((row) => ({
      ...seriesOf(row),
      instances: row.instances,
      verifiedBy: JSON.parse(row.verified_by) as DeletionIntent['verifiedBy'],
      routing: row.routing,
      at: row.at,
      ...(row.completed_at === null ? {} : { completedAt: row.completed_at }),
    }));
  }

  async completeIntent(sourceId: string, studyId: string, seriesId: string, at: number): Promise<void> {
    this.#sql.completeIntent.run({ sourceId, studyId, seriesId, at });
  }

  async recordSettled(study: SettledStudy): Promise<void> {
    const { sourceId, studyId, seriesId, lastUpdate, instances, routing, result, settledAt } = study;
    this.#sql.recordSettled.run({
      sourceId,
      studyId,
      seriesId,
      lastUpdate,
      instances,
      routing,
      result,
      settledAt,
    });
  }

  async settled(sourceId: string, studyId: string, seriesId: string): Promise<SettledStudy | undefined> {
    const row = this.#sql.settled.get(sourceId, studyId, seriesId) as SettledRow | undefined;
    if (row === undefined) return undefined;
    return {
      ...seriesOf(row),
      lastUpdate: row.last_update,
      instances: row.instances,
      routing: row.routing,
      result: row.result,
      settledAt: row.settled_at,
    };
  }

  /**
   * Forgets the outcomes finished before `before` (epoch ms), keeping what they counted in the
   * totals; returns how many. DynamoDB's TTL does the same there.
   */
  pruneOutcomes(before: number): number {
    return this.#db.write(() => {
      const { id } = this.#sql.firstKept.get(before) as { id: number | null };
      if (id === null) return 0;
      this.#sql.foldOutcomes.run(id);
      return Number(this.#sql.pruneOutcomes.run(id).changes);
    });
  }

  async forgetRejected(instances: readonly RejectedInstance[]): Promise<number> {
    if (instances.length === 0) return 0;
    return this.#db.write(() => {
      let forgotten = 0;
      for (const { sourceId, instanceId, rejectedAt } of instances) {
        forgotten += Number(this.#sql.forgetRejected.run(sourceId, instanceId, rejectedAt).changes);
      }
      this.#sql.foldRejected.run(forgotten);
      return forgotten;
    });
  }

  async totals(): Promise<Totals> {
    const rows = this.#sql.sourceTotals.all() as unknown as SourceTotalsRow[];
    const { rejected } = this.#sql.rejectedTotal.get() as { rejected: number };
    return sumTotals(
      Object.fromEntries(
        rows.map((row) => [
          row.source_id,
          {
            moved: { studies: row.moved_studies, instances: row.moved_instances, bytes: row.moved_bytes },
            copied: { studies: row.copied_studies, instances: row.copied_instances, bytes: row.copied_bytes },
            deleted: row.deleted,
          },
        ]),
      ),
      rejected,
    );
  }

  async recordDeletion(deletion: DeletionRecord): Promise<void> {
    this.#deletions.record(deletion);
  }

  async confirmDeletion(key: DeletionKey, stillAtSource: ReadonlySet<string>): Promise<void> {
    this.#deletions.confirm(key, stillAtSource);
  }

  async deletions(
    query: DeletionQuery,
    page: { readonly after?: string | undefined; readonly limit: number },
  ): Promise<DeletionPage> {
    return this.#deletions.page(query, page);
  }

  /**
   * Forgets the deletions recorded before `before` (epoch ms): `retention.auditDays`. Returns how
   * many parts. DynamoDB's TTL does the same there.
   */
  pruneDeletions(before: number): number {
    return this.#deletions.prune(before);
  }

  async movedSince(sourceId: string, since: number): Promise<Tally> {
    const row = this.#sql.movedSince.get(sourceId, movedBucketStart(since)) as unknown as SourceTotalsRow;
    return { studies: row.moved_studies, instances: row.moved_instances, bytes: row.moved_bytes };
  }
}
