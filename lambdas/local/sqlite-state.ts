/**
 * Local mode keeps all its state (cursors, watch lists, the work queue and its dead letters, the
 * ledger) in one SQLite file, through node:sqlite so that no native addon has to be built.
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { FEED_SCHEMA, SqliteFeedStore } from './sqlite-feed-store.ts';
import {
  LEDGER_MIGRATION_FROM_1,
  LEDGER_MIGRATION_FROM_2,
  LEDGER_SCHEMA,
  SqliteLedger,
} from './sqlite-ledger.ts';
import { QUEUE_SCHEMA, SqliteWorkQueue } from './sqlite-work-queue.ts';

/**
 * Kept in PRAGMA user_version. Bump it with every change to a table and migrate from the old
 * value; a file written by a newer forwarder is refused rather than misread.
 */
export const SCHEMA_VERSION = 4;

/** The default of the configuration's retry.maxAttempts, which is what the caller should pass. */
export const DEFAULT_MAX_RECEIVES = 8;

/** What the stores need of the database: statements, and write transactions that cannot deadlock. */
export interface StateDb {
  prepare(sql: string): StatementSync;
  /** Runs `fn` in one transaction that holds the write lock from its start; rolls back if it throws. */
  write<T>(fn: () => T): T;
}

export interface StateOptions {
  /** Receives after which a message goes to the dead letters. */
  readonly maxReceives?: number;
  /** The queue's clock (epoch ms), for tests. */
  readonly now?: () => number;
  /** How long to wait for another process's write lock before failing with SQLITE_BUSY. */
  readonly busyTimeoutMs?: number;
}

export interface LocalState {
  readonly feed: SqliteFeedStore;
  readonly queue: SqliteWorkQueue;
  readonly ledger: SqliteLedger;
  /**
   * Takes back what a crashed process left behind: every in-flight message becomes receivable
   * again and every lease not held by `owner` is dropped. Only for a caller that is sure it is the
   * only user of the file (it holds a lease that says so, and that lease is kept).
   */
  reclaim(owner: string): { messages: number; leases: number };
  close(): void;
}

const configure = (db: DatabaseSync): void => {
  // WAL lets `status` read while `run` writes. FULL syncs the WAL at every commit, so what a
  // resolved call wrote survives a crash of the process and of the machine.
  db.exec('PRAGMA journal_mode = WAL');
  db.exec('PRAGMA synchronous = FULL');
};

/**
 * BEGIN IMMEDIATE rather than a deferred BEGIN: a deferred transaction that reads and then
 * writes cannot wait for another process's lock in WAL mode, it fails with SQLITE_BUSY at once.
 */
const writer =
  (db: DatabaseSync) =>
  <T>(fn: () => T): T => {
    db.exec('BEGIN IMMEDIATE');
    try {
      const result = fn();
      db.exec('COMMIT');
      return result;
    } catch (error) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw error;
    }
  };

const migrate = (db: DatabaseSync, write: StateDb['write']): void => {
  write(() => {
    const row = db.prepare('PRAGMA user_version').get() as { user_version: number };
    if (row.user_version > SCHEMA_VERSION) {
      throw new Error(
        `the state file has schema version ${row.user_version}, newer than this forwarder's ${SCHEMA_VERSION}`,
      );
    }
    // IF NOT EXISTS everywhere, so that opening an existing file (or two processes opening a
    // new one at once) is harmless.
    for (const sql of [FEED_SCHEMA, QUEUE_SCHEMA, LEDGER_SCHEMA]) db.exec(sql);
    // Version 0 is a new file, whose tables were just made in the current form; new tables of
    // later versions (conflicts in 3, deletion intents in 4) were just made in an older file too,
    // so a version 3 file has nothing more to do.
    if (row.user_version === 1) db.exec(LEDGER_MIGRATION_FROM_1);
    if (row.user_version === 2) db.exec(LEDGER_MIGRATION_FROM_2);
    if (row.user_version < SCHEMA_VERSION) db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
  });
};

/** Opens (creating if needed) a state file, or ':memory:', with the schema in place. */
export const openDatabase = (path: string, busyTimeoutMs = 10_000): { db: DatabaseSync; state: StateDb } => {
  const db = new DatabaseSync(path, { timeout: busyTimeoutMs });
  try {
    configure(db);
    const write = writer(db);
    migrate(db, write);
    return { db, state: { prepare: (sql) => db.prepare(sql), write } };
  } catch (error) {
    db.close();
    throw error;
  }
};

/** The three ports on one state file. Several processes may open the same file at once. */
export const openState = (path: string, options: StateOptions = {}): LocalState => {
  const { db, state } = openDatabase(path, options.busyTimeoutMs);
  const queue = new SqliteWorkQueue(state, {
    maxReceives: options.maxReceives ?? DEFAULT_MAX_RECEIVES,
    ...(options.now === undefined ? {} : { now: options.now }),
  });
  const ledger = new SqliteLedger(state);
  return {
    feed: new SqliteFeedStore(state),
    queue,
    ledger,
    reclaim: (owner) =>
      state.write(() => ({ messages: queue.reclaimInFlight(), leases: ledger.dropLeasesExcept(owner) })),
    close: () => db.close(),
  };
};
