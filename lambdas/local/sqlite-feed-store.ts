/**
 * The change-feed reader's state: per source, one cursor, one watch list, where the paged work
 * stands (progress) and the studies it queued whole, each as it was then.
 */
import {
  type FeedProgress,
  type FeedStateStore,
  QUEUED_MEMORY_MS,
  type QueuedStudy,
  type SourceControl,
  type StoredProgress,
  type WatchedStudy,
} from '../core/ports.ts';
import type { StateDb } from './sqlite-state.ts';

/** What an operator asked of each source (schema version 5). */
export const SOURCE_CONTROLS_SCHEMA = `
  CREATE TABLE IF NOT EXISTS source_controls (
    source_id TEXT PRIMARY KEY,
    paused_at INTEGER,
    sweep_requested_at INTEGER
  ) STRICT;
`;

/** Columns schema version 5 added to a table of an older file. */
export const FEED_COLUMNS_OF_5 = [
  { table: 'feed_progress', column: 'backlog_through', definition: 'INTEGER' },
];

export const FEED_SCHEMA = `${SOURCE_CONTROLS_SCHEMA}
  CREATE TABLE IF NOT EXISTS feed_cursors (
    source_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
  ) STRICT;
  CREATE TABLE IF NOT EXISTS watched_studies (
    source_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    last_update TEXT,
    last_update_seen_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, study_id)
  ) STRICT, WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS feed_progress (
    source_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    watch_after TEXT NOT NULL,
    sweep_below INTEGER,
    sweep_started_at INTEGER NOT NULL,
    settings TEXT NOT NULL,
    backlog_through INTEGER
  ) STRICT;
  CREATE TABLE IF NOT EXISTS queued_studies (
    source_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    last_update TEXT NOT NULL,
    settings TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, study_id)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS queued_studies_age ON queued_studies (source_id, queued_at);
`;

interface WatchedRow {
  study_id: string;
  last_update: string | null;
  last_update_seen_at: number;
}

interface ProgressRow {
  version: number;
  watch_after: string;
  sweep_below: number | null;
  sweep_started_at: number;
  settings: string;
  backlog_through: number | null;
}

interface QueuedRow {
  study_id: string;
  last_update: string;
  settings: string;
  queued_at: number;
}

const statements = (db: StateDb) => ({
  getCursor: db.prepare('SELECT seq FROM feed_cursors WHERE source_id = ?'),
  // The first advance must be conditional too: two readers that both saw no cursor may not both win.
  insertCursor: db.prepare(
    'INSERT INTO feed_cursors (source_id, seq) VALUES (?, ?) ON CONFLICT (source_id) DO NOTHING',
  ),
  updateCursor: db.prepare('UPDATE feed_cursors SET seq = ? WHERE source_id = ? AND seq = ?'),
  watch: db.prepare(
    `INSERT INTO watched_studies (source_id, study_id, last_update, last_update_seen_at)
     VALUES (?, ?, NULL, ?) ON CONFLICT (source_id, study_id) DO NOTHING`,
  ),
  watched: db.prepare(
    `SELECT study_id, last_update, last_update_seen_at FROM watched_studies
     WHERE source_id = ? AND study_id > ? ORDER BY study_id LIMIT ?`,
  ),
  watchedCount: db.prepare('SELECT count(*) AS count FROM watched_studies WHERE source_id = ?'),
  // An update, not an upsert: a late reader must not bring back a study that another unwatched.
  updateWatched: db.prepare(
    `UPDATE watched_studies SET last_update = ?, last_update_seen_at = ?
     WHERE source_id = ? AND study_id = ?`,
  ),
  unwatch: db.prepare('DELETE FROM watched_studies WHERE source_id = ? AND study_id = ?'),
  progress: db.prepare(
    `SELECT version, watch_after, sweep_below, sweep_started_at, settings, backlog_through FROM feed_progress
     WHERE source_id = ?`,
  ),
  // The first save must be conditional too: two polls that both saw none may not both win.
  insertProgress: db.prepare(
    `INSERT INTO feed_progress
       (source_id, version, watch_after, sweep_below, sweep_started_at, settings, backlog_through)
     VALUES (:sourceId, 1, :watchAfter, :sweepBelow, :sweepStartedAt, :settings, :backlogThrough)
     ON CONFLICT (source_id) DO NOTHING`,
  ),
  updateProgress: db.prepare(
    `UPDATE feed_progress SET version = version + 1, watch_after = :watchAfter, sweep_below = :sweepBelow,
       sweep_started_at = :sweepStartedAt, settings = :settings, backlog_through = :backlogThrough
     WHERE source_id = :sourceId AND version = :expected`,
  ),
  rememberQueued: db.prepare(
    `INSERT INTO queued_studies (source_id, study_id, last_update, settings, queued_at)
     VALUES (?, ?, ?, ?, ?) ON CONFLICT (source_id, study_id) DO UPDATE SET
       last_update = excluded.last_update, settings = excluded.settings, queued_at = excluded.queued_at`,
  ),
  forgetQueuedBefore: db.prepare('DELETE FROM queued_studies WHERE source_id = ? AND queued_at < ?'),
  forgetQueued: db.prepare('DELETE FROM queued_studies WHERE source_id = ? AND study_id = ?'),
  queued: db.prepare(
    `SELECT study_id, last_update, settings, queued_at FROM queued_studies
     WHERE source_id = ? AND study_id IN (SELECT value FROM json_each(?))`,
  ),
  control: db.prepare('SELECT paused_at, sweep_requested_at FROM source_controls WHERE source_id = ?'),
  // Each sets its column only where it is not set yet: the first pause, the pending request, stand.
  pause: db.prepare(
    `INSERT INTO source_controls (source_id, paused_at) VALUES (?1, ?2)
     ON CONFLICT (source_id) DO UPDATE SET paused_at = ?2 WHERE paused_at IS NULL`,
  ),
  resume: db.prepare(
    'UPDATE source_controls SET paused_at = NULL WHERE source_id = ? AND paused_at IS NOT NULL',
  ),
  requestSweep: db.prepare(
    `INSERT INTO source_controls (source_id, sweep_requested_at) VALUES (?1, ?2)
     ON CONFLICT (source_id) DO UPDATE SET sweep_requested_at = ?2 WHERE sweep_requested_at IS NULL`,
  ),
  clearSweepRequest: db.prepare(
    'UPDATE source_controls SET sweep_requested_at = NULL WHERE source_id = ? AND sweep_requested_at = ?',
  ),
});

/** Past any study ID: the watch list in one page. */
const EVERY_STUDY = { after: '', limit: -1 };

export class SqliteFeedStore implements FeedStateStore {
  readonly #db: StateDb;
  readonly #sql: ReturnType<typeof statements>;

  constructor(db: StateDb) {
    this.#db = db;
    this.#sql = statements(db);
  }

  async getCursor(sourceId: string): Promise<number | undefined> {
    const row = this.#sql.getCursor.get(sourceId) as { seq: number } | undefined;
    return row?.seq;
  }

  async advanceCursor(sourceId: string, expected: number | undefined, next: number): Promise<boolean> {
    if (!Number.isSafeInteger(next)) throw new RangeError(`cursor must be an integer, got ${next}`);
    const result =
      expected === undefined
        ? this.#sql.insertCursor.run(sourceId, next)
        : this.#sql.updateCursor.run(next, sourceId, expected);
    return Number(result.changes) === 1;
  }

  async watch(sourceId: string, studyIds: readonly string[], now: number): Promise<void> {
    this.#db.write(() => {
      for (const studyId of studyIds) this.#sql.watch.run(sourceId, studyId, now);
    });
  }

  async watched(sourceId: string, page = EVERY_STUDY): Promise<WatchedStudy[]> {
    const rows = this.#sql.watched.all(sourceId, page.after, page.limit) as unknown as WatchedRow[];
    return rows.map((row) => ({
      studyId: row.study_id,
      lastUpdate: row.last_update ?? undefined,
      lastUpdateSeenAt: row.last_update_seen_at,
    }));
  }

  async watchedCount(sourceId: string): Promise<number> {
    return (this.#sql.watchedCount.get(sourceId) as { count: number }).count;
  }

  async updateWatched(sourceId: string, study: WatchedStudy): Promise<void> {
    this.#sql.updateWatched.run(study.lastUpdate ?? null, study.lastUpdateSeenAt, sourceId, study.studyId);
  }

  async unwatch(sourceId: string, studyIds: readonly string[]): Promise<void> {
    this.#db.write(() => {
      for (const studyId of studyIds) this.#sql.unwatch.run(sourceId, studyId);
    });
  }

  async progress(sourceId: string): Promise<StoredProgress | undefined> {
    const row = this.#sql.progress.get(sourceId) as ProgressRow | undefined;
    if (row === undefined) return undefined;
    return {
      version: row.version,
      progress: {
        watchAfter: row.watch_after,
        ...(row.sweep_below === null ? {} : { sweepBelow: row.sweep_below }),
        sweepStartedAt: row.sweep_started_at,
        settings: row.settings,
        ...(row.backlog_through === null ? {} : { backlogThrough: row.backlog_through }),
      },
    };
  }

  async saveProgress(
    sourceId: string,
    expected: number | undefined,
    progress: FeedProgress,
  ): Promise<boolean> {
    const fields = {
      sourceId,
      watchAfter: progress.watchAfter,
      sweepBelow: progress.sweepBelow ?? null,
      sweepStartedAt: progress.sweepStartedAt,
      settings: progress.settings,
      backlogThrough: progress.backlogThrough ?? null,
    };
    const result =
      expected === undefined
        ? this.#sql.insertProgress.run(fields)
        : this.#sql.updateProgress.run({ ...fields, expected });
    return Number(result.changes) === 1;
  }

  /** Forgets, in the same transaction, what is older than the memory lasts: moved studies leave no rows for ever. */
  async rememberQueued(sourceId: string, studies: readonly QueuedStudy[]): Promise<void> {
    if (studies.length === 0) return;
    const newest = Math.max(...studies.map((study) => study.queuedAt));
    this.#db.write(() => {
      this.#sql.forgetQueuedBefore.run(sourceId, newest - QUEUED_MEMORY_MS);
      for (const { studyId, lastUpdate, settings, queuedAt } of studies) {
        this.#sql.rememberQueued.run(sourceId, studyId, lastUpdate, settings, queuedAt);
      }
    });
  }

  async forgetQueued(sourceId: string, studyIds: readonly string[]): Promise<void> {
    this.#db.write(() => {
      for (const studyId of studyIds) this.#sql.forgetQueued.run(sourceId, studyId);
    });
  }

  async control(sourceId: string): Promise<SourceControl> {
    const row = this.#sql.control.get(sourceId) as
      | { paused_at: number | null; sweep_requested_at: number | null }
      | undefined;
    const pausedAt = row?.paused_at ?? undefined;
    const sweepRequestedAt = row?.sweep_requested_at ?? undefined;
    return {
      ...(pausedAt === undefined ? {} : { pausedAt }),
      ...(sweepRequestedAt === undefined ? {} : { sweepRequestedAt }),
    };
  }

  async pause(sourceId: string, at: number): Promise<boolean> {
    return Number(this.#sql.pause.run(sourceId, at).changes) === 1;
  }

  async resume(sourceId: string): Promise<boolean> {
    return Number(this.#sql.resume.run(sourceId).changes) === 1;
  }

  async requestSweep(sourceId: string, at: number): Promise<boolean> {
    return Number(this.#sql.requestSweep.run(sourceId, at).changes) === 1;
  }

  async clearSweepRequest(sourceId: string, at: number): Promise<void> {
    this.#sql.clearSweepRequest.run(sourceId, at);
  }

  async queued(sourceId: string, studyIds: readonly string[]): Promise<QueuedStudy[]> {
    const rows = this.#sql.queued.all(sourceId, JSON.stringify(studyIds)) as unknown as QueuedRow[];
    return rows.map((row) => ({
      studyId: row.study_id,
      lastUpdate: row.last_update,
      settings: row.settings,
      queuedAt: row.queued_at,
    }));
  }
}
