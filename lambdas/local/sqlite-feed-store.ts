/** The change-feed reader's state: one cursor and one watch list per source. */
import type { FeedStateStore, WatchedStudy } from '../core/ports.ts';
import type { StateDb } from './sqlite-state.ts';

export const FEED_SCHEMA = `
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
`;

interface WatchedRow {
  study_id: string;
  last_update: string | null;
  last_update_seen_at: number;
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
     WHERE source_id = ? ORDER BY study_id`,
  ),
  // An update, not an upsert: a late reader must not bring back a study that another unwatched.
  updateWatched: db.prepare(
    `UPDATE watched_studies SET last_update = ?, last_update_seen_at = ?
     WHERE source_id = ? AND study_id = ?`,
  ),
  unwatch: db.prepare('DELETE FROM watched_studies WHERE source_id = ? AND study_id = ?'),
});

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

  async watched(sourceId: string): Promise<WatchedStudy[]> {
    return (this.#sql.watched.all(sourceId) as unknown as WatchedRow[]).map((row) => ({
      studyId: row.study_id,
      lastUpdate: row.last_update ?? undefined,
      lastUpdateSeenAt: row.last_update_seen_at,
    }));
  }

  async updateWatched(sourceId: string, study: WatchedStudy): Promise<void> {
    this.#sql.updateWatched.run(study.lastUpdate ?? null, study.lastUpdateSeenAt, sourceId, study.studyId);
  }

  async unwatch(sourceId: string, studyIds: readonly string[]): Promise<void> {
    this.#db.write(() => {
      for (const studyId of studyIds) this.#sql.unwatch.run(sourceId, studyId);
    });
  }
}
