/**
 * Local mode keeps all its state (cursors, watch lists, the work queue and its dead letters, the
 * ledger) in one SQLite file, through node:sqlite so that no native addon has to be built.
 */
import { statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { DELETIONS_SCHEMA } from './sqlite-deletions.ts';
import {
  FEED_COLUMNS_OF_5,
  FEED_SCHEMA,
  SOURCE_CONTROLS_SCHEMA,
  SqliteFeedStore,
} from './sqlite-feed-store.ts';
import {
  LEDGER_COLUMNS_OF_5,
  LEDGER_MIGRATION_FROM_1,
  LEDGER_MIGRATION_FROM_2,
  LEDGER_MIGRATION_TO_5,
  LEDGER_SCHEMA,
  SqliteLedger,
} from './sqlite-ledger.ts';
import {
  QUEUE_COLUMNS_OF_5,
  QUEUE_INDEXES_OF_5,
  QUEUE_SCHEMA,
  SqliteWorkQueue,
} from './sqlite-work-queue.ts';

/**
 * Kept in PRAGMA user_version. Bump it with every change to a table and migrate from the old
 * value; a file written by a newer forwarder is refused rather than misread.
 */
export const SCHEMA_VERSION = 5;

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

/**
 * From version 4 (or older) to 5, on a file that existed before: what version 5 added, as
 * `CREATE TABLE IF NOT EXISTS` and `ALTER TABLE … ADD COLUMN` statements. A new file gets it with
 * each store's full schema instead. Version 5: per-source operator controls (pause, sweep
 * requests); the ledger's totals per source, copies apart from moves, and the size of what was
 * deleted (a new column: COLUMNS_OF_5, added before these run); the audit trail of deletions;
 * work items' priorities (new studies before the backlog, a column and its index) and where each
 * source's history ends (a column of the feed's progress).
 */
const MIGRATION_TO_5 = [SOURCE_CONTROLS_SCHEMA, LEDGER_MIGRATION_TO_5, DELETIONS_SCHEMA];
/** Added only where missing: a version 1 file's outcomes were just made anew, in the current form. */
const COLUMNS_OF_5 = [...LEDGER_COLUMNS_OF_5, ...FEED_COLUMNS_OF_5, ...QUEUE_COLUMNS_OF_5];

const addMissingColumns = (db: DatabaseSync, columns: typeof COLUMNS_OF_5): void => {
  const has = db.prepare('SELECT 1 FROM pragma_table_info(?) WHERE name = ?');
  for (const { table, column, definition } of columns) {
    if (has.get(table, column) === undefined)
      db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`);
  }
};

const migrate = (db: DatabaseSync, write: StateDb['write']): void => {
  write(() => {
    const row = db.prepare('PRAGMA user_version').get() as { user_version: number };
    if (row.user_version > SCHEMA_VERSION) {
      throw new StateFileError(
        `the state file has schema version ${row.user_version}, newer than this forwarder's ${SCHEMA_VERSION}: use the forwarder that wrote it, or a newer one`,
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
    if (row.user_version > 0 && row.user_version < 5) {
      addMissingColumns(db, COLUMNS_OF_5);
      for (const sql of MIGRATION_TO_5) db.exec(sql);
    }
    // In a new file too: an index on a column an older file has only once COLUMNS_OF_5 are added.
    db.exec(QUEUE_INDEXES_OF_5);
    if (row.user_version < SCHEMA_VERSION) db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
  });
};

/** A state file that cannot be used, told so that an operator can fix it (no stack trace). */
export class StateFileError extends Error {
  override name = 'StateFileError';
}

const isFolder = (path: string): boolean => statSync(path, { throwIfNoEntry: false })?.isDirectory() === true;

/** SQLite's primary result codes (the low byte of an extended one) that the file chosen explains. */
const SQLITE_PERM = 3;
const SQLITE_READONLY = 8;
const SQLITE_CANTOPEN = 14;
const SQLITE_NOTADB = 26;

/** What SQLite's refusal of a file means to an operator, or the error itself when it is something else. */
const explained = (path: string, error: unknown): unknown => {
  const code = (error as { errcode?: unknown }).errcode;
  if (typeof code !== 'number') return error;
  const file = `the state file ${path}`;
  const folder = dirname(path);
  switch (code & 0xff) {
    case SQLITE_CANTOPEN:
      return new StateFileError(
        isFolder(folder)
          ? `${file} cannot be opened or created: this user must be able to write it and its folder ${folder} (SQLite writes -wal and -shm files beside it); or give --state another file`
          : `${file} cannot be created: ${folder} is not an existing folder; create it, or give --state another file`,
      );
    case SQLITE_NOTADB:
      return new StateFileError(
        `${file} is not a SQLite database: give --state the forwarder's own state file, or a new file`,
      );
    case SQLITE_READONLY:
    case SQLITE_PERM:
      return new StateFileError(
        `${file} cannot be written: this user must be able to write it and its folder ${folder}; or give --state another file`,
      );
    default:
      return error;
  }
};

/** Opens (creating if needed) a state file, or ':memory:', with the schema in place. */
export const openDatabase = (path: string, busyTimeoutMs = 10_000): { db: DatabaseSync; state: StateDb } => {
  if (isFolder(path)) {
    throw new StateFileError(
      `the state file ${path} is a folder: give --state a file, e.g. ${join(path, 'forwarder.state.sqlite')}`,
    );
  }
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path, { timeout: busyTimeoutMs });
  } catch (error) {
    throw explained(path, error);
  }
  try {
    configure(db);
    const write = writer(db);
    migrate(db, write);
    return { db, state: { prepare: (sql) => db.prepare(sql), write } };
  } catch (error) {
    db.close();
    throw explained(path, error);
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
