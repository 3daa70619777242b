/**
 * The audit trail of deletions in the state file (schema version 5): one row per part of a
 * recorded deletion (audit.ts), read by period through its key, which starts with the time.
 */
import { decodeDeleted, deletionParts, deletionStatus, encodeDeleted } from '../core/audit.ts';
import type {
  AuditedDeletion,
  DeletionIntent,
  DeletionKey,
  DeletionPage,
  DeletionQuery,
  DeletionRecord,
} from '../core/ports.ts';
import type { StateDb } from './sqlite-state.ts';

export const DELETIONS_SCHEMA = `
  CREATE TABLE IF NOT EXISTS deletion_parts (
    at INTEGER NOT NULL,
    source_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    series_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    study_instance_uid TEXT NOT NULL,
    -- A JSON array of {destinationId, verify}; empty for a deletion as unrouted.
    verified_by TEXT NOT NULL,
    -- A JSON array of the instances, each as audit.ts encodes it.
    instances TEXT NOT NULL,
    -- 1 once a later move confirmed it against its source.
    confirmed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (at, source_id, study_id, series_id, part)
  ) STRICT, WITHOUT ROWID;
`;

interface PartRow {
  at: number;
  source_id: string;
  study_id: string;
  series_id: string;
  part: number;
  study_instance_uid: string;
  verified_by: string;
  instances: string;
  confirmed: number;
  /** Of the study's (or series') last intent, if any. */
  intent_at: number | null;
  completed_at: number | null;
}

const KEY = 'at = :at AND source_id = :sourceId AND study_id = :studyId AND series_id = :seriesId';

const statements = (db: StateDb) => ({
  // A repeated record of the same deletion replaces it, as a DynamoDB put does.
  record: db.prepare(
    `INSERT OR REPLACE INTO deletion_parts (at, source_id, study_id, series_id, part, study_instance_uid,
       verified_by, instances)
     VALUES (:at, :sourceId, :studyId, :seriesId, :part, :studyInstanceUid, :verifiedBy, :instances)`,
  ),
  unconfirmed: db.prepare(`SELECT part, instances FROM deletion_parts WHERE ${KEY} AND confirmed = 0`),
  confirm: db.prepare(
    `UPDATE deletion_parts SET instances = :instances, confirmed = 1 WHERE ${KEY} AND part = :part`,
  ),
  drop: db.prepare(`DELETE FROM deletion_parts WHERE ${KEY} AND part = :part`),
  // After the key the page starts from: a row-value comparison, in the primary key's order.
  page: db.prepare(
    `SELECT p.at, p.source_id, p.study_id, p.series_id, p.part, p.study_instance_uid, p.verified_by,
       p.instances, p.confirmed, i.at AS intent_at, i.completed_at
     FROM deletion_parts AS p LEFT JOIN deletion_intents AS i USING (source_id, study_id, series_id)
     WHERE (p.at, p.source_id, p.study_id, p.series_id, p.part) > (:at, :sourceId, :studyId, :seriesId, :part)
       AND p.at < :until AND (:only IS NULL OR p.source_id = :only)
     ORDER BY p.at, p.source_id, p.study_id, p.series_id, p.part
     LIMIT :limit`,
  ),
  prune: db.prepare('DELETE FROM deletion_parts WHERE at < ?'),
});

/** The page's start: after the last part of the previous page, else before the period's first. */
type After = [at: number, sourceId: string, studyId: string, seriesId: string, part: number];

const toAudited = (row: PartRow): AuditedDeletion => ({
  sourceId: row.source_id,
  studyId: row.study_id,
  seriesId: row.series_id,
  at: row.at,
  part: row.part,
  studyInstanceUid: row.study_instance_uid,
  verifiedBy: JSON.parse(row.verified_by) as DeletionIntent['verifiedBy'],
  instances: (JSON.parse(row.instances) as string[]).map(decodeDeleted),
  status: deletionStatus(
    row.confirmed === 1,
    row.at,
    row.intent_at === null ? undefined : { at: row.intent_at, completedAt: row.completed_at ?? undefined },
  ),
});

export class SqliteDeletions {
  readonly #db: StateDb;
  readonly #sql: ReturnType<typeof statements>;

  constructor(db: StateDb) {
    this.#db = db;
    this.#sql = statements(db);
  }

  record(deletion: DeletionRecord): void {
    const { at, sourceId, studyId, seriesId, studyInstanceUid } = deletion;
    const verifiedBy = JSON.stringify(
      deletion.verifiedBy.map(({ destinationId, verify }) => ({ destinationId, verify })),
    );
    this.#db.write(() => {
      for (const { part, instances } of deletionParts(deletion)) {
        this.#sql.record.run({
          at,
          sourceId,
          studyId,
          seriesId,
          part,
          studyInstanceUid,
          verifiedBy,
          instances: JSON.stringify(instances.map(encodeDeleted)),
        });
      }
    });
  }

  /** Each unconfirmed part keeps the instances gone from the source; a part left empty goes. */
  confirm(key: DeletionKey, stillAtSource: ReadonlySet<string>): void {
    const { at, sourceId, studyId, seriesId } = key;
    const where = { at, sourceId, studyId, seriesId };
    this.#db.write(() => {
      const parts = this.#sql.unconfirmed.all(where) as unknown as { part: number; instances: string }[];
      for (const { part, instances } of parts) {
        const gone = (JSON.parse(instances) as string[]).filter(
          (text) => !stillAtSource.has(decodeDeleted(text).instanceId),
        );
        if (gone.length === 0) this.#sql.drop.run({ ...where, part });
        else this.#sql.confirm.run({ ...where, part, instances: JSON.stringify(gone) });
      }
    });
  }

  page(
    query: DeletionQuery,
    page: { readonly after?: string | undefined; readonly limit: number },
  ): DeletionPage {
    // No source ID is '' and no part is -1: before every part of the period's first millisecond.
    const [at, sourceId, studyId, seriesId, part] =
      page.after === undefined ? [query.since, '', '', '', -1] : (JSON.parse(page.after) as After);
    const rows = this.#sql.page.all({
      at,
      sourceId,
      studyId,
      seriesId,
      part,
      until: query.until,
      only: query.sourceId ?? null,
      limit: page.limit,
    }) as unknown as PartRow[];
    const last = rows.at(-1);
    const next: After | undefined =
      rows.length < page.limit || last === undefined
        ? undefined
        : [last.at, last.source_id, last.study_id, last.series_id, last.part];
    return { deletions: rows.map(toAudited), ...(next === undefined ? {} : { next: JSON.stringify(next) }) };
  }

  /** Forgets the deletions recorded before `before` (epoch ms); returns how many parts. */
  prune(before: number): number {
    return Number(this.#sql.prune.run(before).changes);
  }
}
