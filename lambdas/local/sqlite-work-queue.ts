/**
 * The local work queue, with the semantics of SQS and its redrive policy, so that the engine
 * behaves the same on one machine as on AWS.
 */
import { randomUUID } from 'node:crypto';
import { matchesDeadLetter } from '../core/dead-letters.ts';
import type {
  DeadLetter,
  DeadLetterFilter,
  QueueStats,
  ReceivedMessage,
  WorkItem,
  WorkPriority,
  WorkQueue,
} from '../core/ports.ts';
import { encodeWorkItem, priorityOf } from '../core/work-item.ts';
import type { StateDb } from './sqlite-state.ts';

/*
 * A message is in one of three states:
 * - waiting: visible_at <= now; receivable (handle is set if an earlier receive timed out);
 * - in flight: handle set and visible_at > now; a consumer holds it;
 * - delayed: handle NULL and visible_at > now; released for a retry later.
 * The handle changes at every receive and is cleared on release, so that a consumer whose
 * visibility timed out cannot ack or release the message out from under the next one.
 * Messages are served by priority (0: new studies, 1: the backlog), each in FIFO order: the
 * AUTOINCREMENT id gives it and is never reused, so it also names dead letters.
 */
export const QUEUE_SCHEMA = `
  CREATE TABLE IF NOT EXISTS queue_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    source_id TEXT,
    study_id TEXT,
    enqueued_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    handle TEXT UNIQUE,
    last_error TEXT,
    priority INTEGER NOT NULL DEFAULT 0
  ) STRICT;
  CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages (visible_at);
  CREATE INDEX IF NOT EXISTS queue_messages_study ON queue_messages (source_id, study_id);
  CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    source_id TEXT,
    study_id TEXT,
    receive_count INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_lettered_at INTEGER NOT NULL
  ) STRICT;
`;

/** Columns schema version 5 added to a table of an older file. */
export const QUEUE_COLUMNS_OF_5 = [
  { table: 'queue_messages', column: 'priority', definition: 'INTEGER NOT NULL DEFAULT 0' },
];

/** Made once QUEUE_COLUMNS_OF_5 are there: an older file gets them only after its tables exist. */
export const QUEUE_INDEXES_OF_5 = `
  CREATE INDEX IF NOT EXISTS queue_messages_priority ON queue_messages (priority, id);
`;

const PRIORITY: Readonly<Record<WorkPriority, number>> = { new: 0, backlog: 1 };

/** Dead letters read at a time: listing, grouping or redriving them keeps this many in memory. */
const DEAD_LETTER_PAGE = 500;

export interface WorkQueueOptions {
  /** Receives after which a message goes to the dead letters (SQS's maxReceiveCount). */
  readonly maxReceives: number;
  readonly now?: () => number;
}

interface MessageRow {
  id: number;
  priority: number;
  receive_count: number;
  last_error: string | null;
}

interface DeadLetterRow {
  id: number;
  body: string;
  source_id: string | null;
  study_id: string | null;
  receive_count: number;
  last_error: string;
  dead_lettered_at: number;
}

const statements = (db: StateDb) => ({
  // A waiting whole-study item covers any item of the study; a series item covers its series.
  waitingDuplicate: db.prepare(
    `SELECT id, priority FROM queue_messages
     WHERE source_id = :sourceId AND study_id = :studyId AND (handle IS NULL OR visible_at <= :now)
       AND (CASE WHEN json_valid(body) THEN json_extract(body, '$.seriesId') END IS NULL
            OR CASE WHEN json_valid(body) THEN json_extract(body, '$.seriesId') END = :seriesId)
     LIMIT 1`,
  ),
  insert: db.prepare(
    `INSERT INTO queue_messages (body, source_id, study_id, enqueued_at, visible_at, priority)
     VALUES (?, ?, ?, ?, ?, ?)`,
  ),
  raisePriority: db.prepare('UPDATE queue_messages SET priority = ? WHERE id = ? AND priority > ?'),
  // Keyed on the last (priority, id) seen rather than on visibility, so that a zero visibility
  // timeout cannot make the loop in receive() pick the same message twice.
  nextVisible: db.prepare(
    `SELECT id, priority, receive_count, last_error FROM queue_messages
     WHERE visible_at <= ? AND (priority, id) > (?, ?) ORDER BY priority, id LIMIT ?`,
  ),
  markReceived: db.prepare(
    `UPDATE queue_messages SET receive_count = receive_count + 1, visible_at = ?, handle = ?
     WHERE id = ? RETURNING body, receive_count`,
  ),
  byHandle: db.prepare('SELECT id, receive_count, last_error FROM queue_messages WHERE handle = ?'),
  deleteByHandle: db.prepare('DELETE FROM queue_messages WHERE handle = ?'),
  delay: db.prepare(
    `UPDATE queue_messages SET visible_at = ?, last_error = ?, handle = NULL,
       receive_count = max(0, receive_count - ?) WHERE id = ?`,
  ),
  copyToDead: db.prepare(
    `INSERT INTO dead_letters (id, body, source_id, study_id, receive_count, last_error, dead_lettered_at)
     SELECT id, body, source_id, study_id, receive_count, ?, ? FROM queue_messages WHERE id = ?`,
  ),
  deleteById: db.prepare('DELETE FROM queue_messages WHERE id = ?'),
  // Keyset pages: (dead_lettered_at, id) after the last row of the page before.
  deadLetters: db.prepare(
    `SELECT id, body, source_id, study_id, receive_count, last_error, dead_lettered_at
     FROM dead_letters WHERE (dead_lettered_at, id) > (?, ?) ORDER BY dead_lettered_at, id LIMIT ?`,
  ),
  redriveOrder: db.prepare(
    `SELECT id, body, source_id, study_id, last_error FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?`,
  ),
  deleteDead: db.prepare('DELETE FROM dead_letters WHERE id = ?'),
  reclaim: db.prepare(
    'UPDATE queue_messages SET visible_at = ?1, handle = NULL WHERE handle IS NOT NULL AND visible_at > ?1',
  ),
  stats: db.prepare(
    `SELECT count(*) FILTER (WHERE visible_at <= ?1) AS waiting,
            count(*) FILTER (WHERE visible_at > ?1) AS in_flight,
            (SELECT count(*) FROM dead_letters) AS dead_letters
     FROM queue_messages
     WHERE source_id IS NULL OR source_id NOT IN (SELECT value FROM json_each(?2))`,
  ),
});

const checkCount = (name: string, value: number, min: number): void => {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
};

export class SqliteWorkQueue implements WorkQueue {
  readonly #db: StateDb;
  readonly #sql: ReturnType<typeof statements>;
  readonly #maxReceives: number;
  readonly #now: () => number;

  constructor(db: StateDb, options: WorkQueueOptions) {
    checkCount('maxReceives', options.maxReceives, 1);
    this.#db = db;
    this.#sql = statements(db);
    this.#maxReceives = options.maxReceives;
    this.#now = options.now ?? Date.now;
  }

  /**
   * A study (or series) already waiting is not queued twice: the waiting message will move it as
   * it is then, at the higher of the two priorities (a backlog study the feed now sees as new
   * goes ahead). One in flight does not count, since the study may have changed after its
   * snapshot was taken.
   */
  async enqueue(items: readonly WorkItem[]): Promise<void> {
    this.#db.write(() => {
      const now = this.#now();
      for (const item of items) {
        const { sourceId, studyId } = item;
        const priority = PRIORITY[item.priority ?? 'new'];
        if (this.#waiting(sourceId, studyId, item.seriesId, now, priority)) continue;
        this.#sql.insert.run(encodeWorkItem(item), sourceId, studyId, now, now, priority);
      }
    });
  }

  /** Whether the study (or series) waits already; raises the waiting message to `priority` if it was lower. */
  #waiting(
    sourceId: string,
    studyId: string,
    seriesId: string | undefined,
    now: number,
    priority: number,
  ): boolean {
    const waiting = this.#sql.waitingDuplicate.get({ sourceId, studyId, now, seriesId: seriesId ?? null }) as
      | { id: number; priority: number }
      | undefined;
    if (waiting === undefined) return false;
    this.#sql.raisePriority.run(priority, waiting.id, priority);
    return true;
  }

  /** Queues any body, even one no consumer can parse: that is how tests make a poison message. */
  async enqueueRaw(body: string): Promise<void> {
    const now = this.#now();
    this.#sql.insert.run(body, null, null, now, now, PRIORITY.new);
  }

  async receive(max: number, visibilityTimeoutMs: number): Promise<ReceivedMessage[]> {
    checkCount('max', max, 0);
    checkCount('visibilityTimeoutMs', visibilityTimeoutMs, 0);
    return this.#db.write(() => {
      const now = this.#now();
      const received: ReceivedMessage[] = [];
      let last = { priority: Number.MIN_SAFE_INTEGER, id: 0 };
      while (received.length < max) {
        const rows = this.#sql.nextVisible.all(
          now,
          last.priority,
          last.id,
          max - received.length,
        ) as unknown as MessageRow[];
        if (rows.length === 0) break;
        for (const row of rows) {
          last = row;
          // Like SQS, a message that has used up its receives (its consumers kept timing out
          // without releasing it) is dead-lettered when it would be received once more.
          if (row.receive_count >= this.#maxReceives) {
            const error = row.last_error ?? `not acked after ${row.receive_count} receives`;
            this.#moveToDead(row.id, error, now);
            continue;
          }
          const handle = randomUUID();
          const updated = this.#sql.markReceived.get(now + visibilityTimeoutMs, handle, row.id) as {
            body: string;
            receive_count: number;
          };
          received.push({ handle, body: updated.body, receiveCount: updated.receive_count });
        }
      }
      return received;
    });
  }

  async ack(handle: string): Promise<void> {
    this.#sql.deleteByHandle.run(handle);
  }

  async release(
    handle: string,
    error: string,
    delayMs: number,
    options: { readonly counted?: boolean } = {},
  ): Promise<void> {
    checkCount('delayMs', delayMs, 0);
    const counted = options.counted !== false;
    this.#db.write(() => {
      const row = this.#sql.byHandle.get(handle) as MessageRow | undefined;
      if (row === undefined) return;
      const now = this.#now();
      if (counted && row.receive_count >= this.#maxReceives) this.#moveToDead(row.id, error, now);
      else this.#sql.delay.run(now + delayMs, error, counted ? 0 : 1, row.id);
    });
  }

  async deadLetter(handle: string, error: string): Promise<void> {
    this.#db.write(() => {
      const row = this.#sql.byHandle.get(handle) as MessageRow | undefined;
      if (row !== undefined) this.#moveToDead(row.id, error, this.#now());
    });
  }

  async *deadLetters(): AsyncGenerator<DeadLetter> {
    let after = { at: Number.MIN_SAFE_INTEGER, id: 0 };
    for (;;) {
      const rows = this.#sql.deadLetters.all(
        after.at,
        after.id,
        DEAD_LETTER_PAGE,
      ) as unknown as DeadLetterRow[];
      for (const row of rows) {
        yield {
          id: String(row.id),
          body: row.body,
          receiveCount: row.receive_count,
          lastError: row.last_error,
          deadLetteredAt: row.dead_lettered_at,
        };
      }
      const last = rows.at(-1);
      if (last === undefined || rows.length < DEAD_LETTER_PAGE) return;
      after = { at: last.dead_lettered_at, id: last.id };
    }
  }

  /**
   * The dead letters the filter matches go to the back of the queue as new messages (new ids),
   * in the order they were first queued; the others stay. The de-duplication of enqueue applies:
   * a study already waiting is not queued twice. A page at a time, each in its own transaction:
   * one interrupted leaves every dead letter either queued again or still dead. Returns how many
   * dead letters were taken off the dead-letter list.
   */
  async redrive(filter: DeadLetterFilter = {}): Promise<number> {
    let redriven = 0;
    for (let after = 0, more = true; more; ) {
      ({ after, more } = this.#db.write(() => {
        const now = this.#now();
        const rows = this.#sql.redriveOrder.all(after, DEAD_LETTER_PAGE) as unknown as DeadLetterRow[];
        for (const row of rows) {
          if (!matchesDeadLetter(filter, { sourceId: row.source_id ?? undefined, lastError: row.last_error }))
            continue;
          const priority = PRIORITY[priorityOf(row.body)];
          const duplicate =
            row.source_id !== null &&
            row.study_id !== null &&
            this.#waiting(row.source_id, row.study_id, seriesOf(row.body), now, priority);
          if (!duplicate) this.#sql.insert.run(row.body, row.source_id, row.study_id, now, now, priority);
          this.#sql.deleteDead.run(row.id);
          redriven++;
        }
        return { after: rows.at(-1)?.id ?? after, more: rows.length === DEAD_LETTER_PAGE };
      }));
    }
    return redriven;
  }

  /**
   * `inFlight` counts every invisible message: those being worked on and those waiting for a retry.
   * Messages of the sources in `exceptSources` (paused ones) are left out of both.
   */
  async stats(options: { readonly exceptSources?: readonly string[] } = {}): Promise<QueueStats> {
    const row = this.#sql.stats.get(this.#now(), JSON.stringify(options.exceptSources ?? [])) as {
      waiting: number;
      in_flight: number;
      dead_letters: number;
    };
    return { waiting: row.waiting, inFlight: row.in_flight, deadLetters: row.dead_letters };
  }

  /**
   * Makes every in-flight message receivable now, keeping its receive count (a study that crashes
   * its worker every time must still end in the dead letters). Only for a caller that knows every
   * consumer of the file is gone; returns how many it took back.
   */
  reclaimInFlight(): number {
    return Number(this.#sql.reclaim.run(this.#now()).changes);
  }

  /** Only inside a write transaction. */
  #moveToDead(id: number, error: string, now: number): void {
    this.#sql.copyToDead.run(error, now, id);
    this.#sql.deleteById.run(id);
  }
}

/** The series of a queued body, if it is a series item. */
const seriesOf = (body: string): string | undefined => {
  try {
    const { seriesId } = JSON.parse(body) as { seriesId?: unknown };
    return typeof seriesId === 'string' ? seriesId : undefined;
  } catch {
    return undefined;
  }
};
