import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { WorkItem } from '../lambdas/core/ports.ts';
import {
  type LocalState,
  openState,
  SCHEMA_VERSION,
  type StateOptions,
} from '../lambdas/local/sqlite-state.ts';
import { collect } from './support/fixtures.ts';
import {
  CLOCK,
  conflict,
  deletion,
  intent,
  outcome,
  rejection,
  stateContract,
} from './support/port-contract.ts';

const STATE_MODULE = fileURLToPath(new URL('../lambdas/local/sqlite-state.ts', import.meta.url));

let dir: string;
let file: string;
let clock: number;
const opened: LocalState[] = [];

const open = (options: StateOptions = {}): LocalState => {
  const state = openState(file, { maxReceives: 3, now: () => clock, ...options });
  opened.push(state);
  return state;
};

const closeAll = () => {
  for (const state of opened.splice(0)) {
    try {
      state.close();
    } catch {
      // already closed by the test
    }
  }
};

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sqlite-state-'));
  file = join(dir, 'state.sqlite');
  clock = CLOCK;
});

afterEach(() => {
  closeAll();
  rmSync(dir, { recursive: true, force: true });
});

const none = { studies: 0, instances: 0, bytes: 0 };

const item = (studyId: string, sourceId = 'a', reason: WorkItem['reason'] = 'stable'): WorkItem => ({
  sourceId,
  studyId,
  reason,
});

describe('state file', () => {
  it('is created in WAL mode with the schema version set, and opening it again is harmless', () => {
    open().close();
    const raw = new DatabaseSync(file);
    expect(raw.prepare('PRAGMA journal_mode').get()).toEqual({ journal_mode: 'wal' });
    expect(raw.prepare('PRAGMA user_version').get()).toEqual({ user_version: SCHEMA_VERSION });
    raw.close();
    open().close();
  });

  it('refuses a file written by a newer schema', () => {
    open().close();
    const raw = new DatabaseSync(file);
    raw.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(() => openState(file)).toThrow(/newer/);
  });

  describe('migration', () => {
    /** What version 5 added to a file in the current form. */
    const WITHOUT_VERSION_5 = `DROP TABLE source_controls; DROP TABLE pruned_source_totals;
      ALTER TABLE study_outcomes DROP COLUMN deleted_bytes; DROP TABLE deletion_parts;
      DROP INDEX queue_messages_priority; ALTER TABLE queue_messages DROP COLUMN priority;
      ALTER TABLE feed_progress DROP COLUMN backlog_through;`;

    /** An older file as the forwarder wrote it: only the outcomes table differed, in these ways. */
    const writeOldFile = (version: number, results: string) => {
      const raw = new DatabaseSync(file);
      raw.exec(`CREATE TABLE study_outcomes (
        id INTEGER PRIMARY KEY, source_id TEXT NOT NULL, study_id TEXT NOT NULL,
        result TEXT NOT NULL CHECK (result IN (${results})),
        instances INTEGER NOT NULL, sent INTEGER NOT NULL, already_present INTEGER NOT NULL,
        deleted INTEGER NOT NULL, rejected INTEGER NOT NULL, bytes INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL, finished_at INTEGER NOT NULL) STRICT;
        CREATE INDEX study_outcomes_study ON study_outcomes (source_id, study_id);
        INSERT INTO study_outcomes VALUES (1, 'a', 's1', 'moved', 5, 5, 0, 5, 0, 500, 10, 1);
        PRAGMA user_version = ${version};`);
      raw.close();
    };

    const inspect = (path: string) => {
      const raw = new DatabaseSync(path);
      try {
        return {
          version: raw.prepare('PRAGMA user_version').get(),
          tables: raw.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all(),
          columns: raw.prepare('PRAGMA table_info(study_outcomes)').all(),
          queueColumns: raw.prepare('PRAGMA table_info(queue_messages)').all(),
          progressColumns: raw.prepare('PRAGMA table_info(feed_progress)').all(),
          queueIndexes: raw
            .prepare(
              "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue_messages' ORDER BY name",
            )
            .all(),
          indexes: raw
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'study_outcomes'")
            .all(),
          outcomes: raw
            .prepare('SELECT study_id, result, conflicts, deleted_bytes FROM study_outcomes ORDER BY id')
            .all(),
        };
      } finally {
        raw.close();
      }
    };

    /** The same tables as a file made new, with the old outcome kept and new ones recorded in full. */
    const expectMigrated = async () => {
      const state = open();
      // The old outcome kept no size of what it deleted: what it sent stands for it.
      const moved = { studies: 1, instances: 5, bytes: 500 };
      const ofA = async () => (await state.ledger.totals()).sources.a;
      expect(await ofA()).toMatchObject({ moved, deleted: 5 });
      await state.ledger.record(
        outcome({ result: 'skipped', studyId: 's2', instances: 2, deleted: 2, deletedBytes: 20 }),
      );
      await state.ledger.record(outcome({ result: 'partial', studyId: 's3', instances: 2, conflicts: 2 }));
      expect(await ofA()).toMatchObject({ moved, deleted: 7 });
      await state.ledger.recordConflicts([conflict({ studyId: 's3' })]);
      expect(await state.ledger.conflicts()).toEqual([conflict({ studyId: 's3' })]);
      await state.ledger.recordIntent(intent({ studyId: 's3' }));
      expect(await state.ledger.intents('a', 's3')).toEqual([intent({ studyId: 's3' })]);
      state.close();

      const fresh = join(dir, 'fresh.sqlite');
      openState(fresh).close();
      const migrated = inspect(file);
      expect(migrated).toMatchObject({
        version: { user_version: SCHEMA_VERSION },
        indexes: [{ name: 'study_outcomes_study' }, { name: 'study_outcomes_finished' }],
        outcomes: [
          { study_id: 's1', result: 'moved', conflicts: 0, deleted_bytes: null },
          { study_id: 's2', result: 'skipped', conflicts: 0, deleted_bytes: 20 },
          { study_id: 's3', result: 'partial', conflicts: 2, deleted_bytes: 0 },
        ],
      });
      const made = inspect(fresh);
      for (const part of ['columns', 'tables', 'queueColumns', 'queueIndexes', 'progressColumns'] as const)
        expect(migrated[part]).toEqual(made[part]);
      open().close();
    };

    it('from version 1: the outcomes stay, and what versions 2 to 4 added is kept', async () => {
      writeOldFile(1, "'moved', 'partial', 'gone', 'copied'");
      await expectMigrated();
    });

    it('from version 2: the outcomes stay, and the conflicts of version 3 and intents of version 4 are kept', async () => {
      writeOldFile(2, "'moved', 'partial', 'gone', 'copied', 'skipped', 'unchanged'");
      await expectMigrated();
    });

    it('from version 3: the outcomes stay, and the deletion intents of version 4 are kept', async () => {
      // Version 3 is the current form without the intents.
      openState(file).close();
      const raw = new DatabaseSync(file);
      raw.exec(`DROP TABLE deletion_intents;
        ${WITHOUT_VERSION_5}
        INSERT INTO study_outcomes VALUES (1, 'a', 's1', 'moved', 5, 5, 0, 5, 0, 500, 10, 1, 0);
        PRAGMA user_version = 3;`);
      raw.close();
      await expectMigrated();
    });

    it('from version 4: the outcomes stay, and the source controls of version 5 are kept', async () => {
      // Version 4 is the current form without what version 5 added.
      openState(file).close();
      const raw = new DatabaseSync(file);
      raw.exec(`${WITHOUT_VERSION_5}
        INSERT INTO study_outcomes VALUES (1, 'a', 's1', 'moved', 5, 5, 0, 5, 0, 500, 10, 1, 0);
        INSERT INTO pruned_totals VALUES (1, 2, 9, 900, 8, 1);
        PRAGMA user_version = 4;`);
      raw.close();
      await expectMigrated();
      const state = open();
      expect(await state.feed.pause('a', clock)).toBe(true);
      expect(await state.feed.control('a')).toEqual({ pausedAt: clock });
      await state.ledger.recordDeletion(deletion({}));
      expect(
        (await state.ledger.deletions({ since: CLOCK, until: CLOCK + 1 }, { limit: 10 })).deletions,
      ).toEqual([{ ...deletion({}), part: 0, status: 'deleted' }]);
      // What version 4 had pruned cannot be told apart by source, nor copies from moves.
      const none = { studies: 0, instances: 0, bytes: 0 };
      expect(await state.ledger.totals()).toMatchObject({
        moved: { studies: 3, instances: 13, bytes: 1400 },
        rejected: 1,
        sources: { '': { moved: { studies: 2, instances: 8, bytes: 900 }, copied: none, deleted: 8 } },
      });
    });
  });

  it('works in memory too', async () => {
    const state = openState(':memory:');
    opened.push(state);
    await state.queue.enqueue([item('s1')]);
    expect((await state.queue.stats()).waiting).toBe(1);
  });

  it('keeps cursor, watch list, queue, dead letters, ledger and deletion intents across a close and reopen', async () => {
    const first = open();
    await first.feed.advanceCursor('a', undefined, 42);
    await first.feed.watch('a', ['w1'], clock);
    await first.queue.enqueue([item('s1'), item('s2'), item('s3')]);
    const [doomed, inFlight] = await first.queue.receive(2, 60_000);
    await first.queue.deadLetter(doomed?.handle ?? '', 'refused for good');
    await first.ledger.acquireLease('study#a#s9', 'w1', 60_000, clock);
    await first.ledger.record(outcome({ sent: 3, bytes: 300, deleted: 3, deletedBytes: 300 }));
    await first.ledger.recordRejected([rejection({})]);
    await first.ledger.recordIntent(intent({}));
    first.close();

    const second = open();
    expect(await second.feed.getCursor('a')).toBe(42);
    expect(await second.feed.watched('a')).toEqual([
      { studyId: 'w1', lastUpdate: undefined, lastUpdateSeenAt: clock },
    ]);
    expect(await second.queue.stats()).toEqual({ waiting: 1, inFlight: 1, deadLetters: 1 });
    expect(await collect(second.queue.deadLetters())).toMatchObject([
      { body: JSON.stringify(item('s1')), lastError: 'refused for good', receiveCount: 1 },
    ]);
    // The in-flight message's handle still works after the reopen.
    await second.queue.ack(inFlight?.handle ?? '');
    expect((await second.queue.stats()).inFlight).toBe(0);
    expect(await second.ledger.acquireLease('study#a#s9', 'w2', 60_000, clock + 1)).toBe(false);
    const moved = { moved: { studies: 1, instances: 3, bytes: 300 }, copied: none, deleted: 3 };
    expect(await second.ledger.totals()).toEqual({ ...moved, rejected: 1, sources: { a: moved } });
    expect(await second.ledger.rejected('a', 's1')).toEqual([rejection({})]);
    expect(await second.ledger.intents('a', 's1')).toEqual([intent({})]);
  });

  it('loses no acknowledged enqueue or cursor advance when the process is SIGKILLed right after', async () => {
    const script = `
      import { openState } from ${JSON.stringify(pathToFileURL(STATE_MODULE).href)};
      const state = openState(${JSON.stringify(file)});
      await state.queue.enqueue([{ sourceId: 'a', studyId: 'killed', reason: 'quiet' }]);
      await state.feed.advanceCursor('a', undefined, 7);
      process.stdout.write('enqueued\\n');
      setInterval(() => {}, 60_000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += String(chunk);
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.on('exit', (_code, signal) => resolve(signal)),
    );
    try {
      await new Promise<void>((resolve, reject) => {
        let stdout = '';
        child.stdout.on('data', (chunk) => {
          stdout += String(chunk);
          if (stdout.includes('enqueued')) {
            child.kill('SIGKILL');
            resolve();
          }
        });
        child.on('exit', () => reject(new Error(`child exited before enqueueing: ${stderr}`)));
      });
    } finally {
      // Never leave it running, whatever went wrong.
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    expect(await exited).toBe('SIGKILL');

    // The child ran on the real clock.
    const state = open({ now: Date.now });
    expect(await state.feed.getCursor('a')).toBe(7);
    const [message] = await state.queue.receive(10, 60_000);
    expect(message?.body).toBe(JSON.stringify({ sourceId: 'a', studyId: 'killed', reason: 'quiet' }));
  });
});

describe('work queue', () => {
  it('stores JSON bodies and hands them out in FIFO order, at most max at a time', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1'), item('s2', 'b', 'quiet'), item('s3')]);
    const first = await queue.receive(2, 1_000);
    expect(first.map((m) => m.body)).toEqual([
      JSON.stringify(item('s1')),
      JSON.stringify({ sourceId: 'b', studyId: 's2', reason: 'quiet' }),
    ]);
    expect(first.map((m) => m.receiveCount)).toEqual([1, 1]);
    expect(new Set(first.map((m) => m.handle)).size).toBe(2);
    const second = await queue.receive(10, 1_000);
    expect(second.map((m) => m.body)).toEqual([JSON.stringify(item('s3'))]);
    expect(await queue.receive(10, 1_000)).toEqual([]);
    expect(await queue.receive(0, 1_000)).toEqual([]);
    expect(await queue.stats()).toEqual({ waiting: 0, inFlight: 3, deadLetters: 0 });
  });

  it('serves new studies before a backlog of 200, each in FIFO order; a waiting backlog study the feed sees as new goes ahead', async () => {
    const { queue } = open();
    const backlog = Array.from({ length: 200 }, (_, i) => ({
      ...item(`b${String(i).padStart(3, '0')}`),
      priority: 'backlog' as const,
    }));
    await queue.enqueue(backlog);
    await queue.enqueue([item('new1')]);
    // Seen as new by the feed: the waiting backlog message is raised, not queued twice.
    await queue.enqueue([item('b150')]);
    await queue.enqueue([item('new2')]);
    const order = [];
    for (
      let message = await queue.receive(1, 60_000);
      message.length > 0;
      message = await queue.receive(1, 60_000)
    )
      order.push(JSON.parse(message[0]?.body ?? '{}').studyId);
    expect(order).toHaveLength(202);
    expect(order.slice(0, 3)).toEqual(['b150', 'new1', 'new2']);
    expect(order.slice(3)).toEqual(backlog.map((b) => b.studyId).filter((id) => id !== 'b150'));
    // A retried backlog message keeps its priority and its place.
    await queue.enqueue([item('late')]);
    await queue.enqueue([
      { ...item('old'), priority: 'backlog' },
      { ...item('older'), priority: 'backlog' },
    ]);
    const [late, old] = await queue.receive(2, 60_000);
    expect(JSON.parse(late?.body ?? '{}').studyId).toBe('late');
    await queue.release(old?.handle ?? '', 'waits', 0, { counted: false });
    await queue.enqueue([item('newest')]);
    expect((await queue.receive(3, 60_000)).map((m) => JSON.parse(m.body).studyId)).toEqual([
      'newest',
      'old',
      'older',
    ]);
  });

  it('stores a body no consumer can parse', async () => {
    const { queue } = open();
    await queue.enqueueRaw('{not json');
    const [message] = await queue.receive(1, 1_000);
    expect(message?.body).toBe('{not json');
  });

  it('makes a message receivable again once its visibility timeout expires, with a new handle', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    const [first] = await queue.receive(1, 30_000);
    clock += 29_999;
    expect(await queue.receive(1, 30_000)).toEqual([]);
    clock += 1;
    expect(await queue.stats()).toEqual({ waiting: 1, inFlight: 0, deadLetters: 0 });
    const [second] = await queue.receive(1, 30_000);
    expect(second?.receiveCount).toBe(2);
    expect(second?.body).toBe(first?.body);
    expect(second?.handle).not.toBe(first?.handle);
  });

  it('ignores a stale handle: it can neither ack, release nor dead-letter the re-received message', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    const [first] = await queue.receive(1, 1_000);
    clock += 1_000;
    const [second] = await queue.receive(1, 1_000);
    await queue.ack(first?.handle ?? '');
    await queue.release(first?.handle ?? '', 'late', 0);
    await queue.deadLetter(first?.handle ?? '', 'late');
    expect(await queue.stats()).toEqual({ waiting: 0, inFlight: 1, deadLetters: 0 });
    await queue.ack(second?.handle ?? '');
    expect(await queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 0 });
    await queue.ack(second?.handle ?? '');
  });

  it('a released handle is spent', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    const [message] = await queue.receive(1, 1_000);
    await queue.release(message?.handle ?? '', 'busy', 0);
    await queue.ack(message?.handle ?? '');
    expect((await queue.stats()).waiting).toBe(1);
  });

  it('release hides the message for the delay and remembers the error', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    const [first] = await queue.receive(1, 60_000);
    await queue.release(first?.handle ?? '', 'server restarting', 5_000);
    expect(await queue.stats()).toEqual({ waiting: 0, inFlight: 1, deadLetters: 0 });
    clock += 4_999;
    expect(await queue.receive(1, 60_000)).toEqual([]);
    clock += 1;
    const [second] = await queue.receive(1, 60_000);
    expect(second?.receiveCount).toBe(2);
    // The error is kept: it names the cause if the message later dies of timeouts.
    clock += 60_000;
    const [third] = await queue.receive(1, 60_000);
    expect(third?.receiveCount).toBe(3);
    clock += 60_000;
    expect(await queue.receive(1, 60_000)).toEqual([]);
    expect(await collect(queue.deadLetters())).toMatchObject([
      { lastError: 'server restarting', receiveCount: 3 },
    ]);
  });

  it('dead-letters a message released after maxReceives receives', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    for (let attempt = 1; attempt <= 3; attempt++) {
      const [message] = await queue.receive(1, 60_000);
      expect(message?.receiveCount).toBe(attempt);
      await queue.release(message?.handle ?? '', `failure ${attempt}`, 0);
    }
    expect(await queue.stats()).toEqual({ waiting: 0, inFlight: 0, deadLetters: 1 });
    expect(await collect(queue.deadLetters())).toEqual([
      {
        id: expect.any(String),
        body: JSON.stringify(item('s1')),
        receiveCount: 3,
        lastError: 'failure 3',
        deadLetteredAt: clock,
      },
    ]);
    expect(await queue.receive(1, 60_000)).toEqual([]);
  });

  it('dead-letters a message whose consumers kept timing out, when it would be received again', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1'), item('s2')]);
    for (let attempt = 1; attempt <= 3; attempt++) {
      const [message] = await queue.receive(1, 1_000);
      expect(message?.body).toBe(JSON.stringify(item('s1')));
      clock += 1_000;
    }
    // s1 is dead-lettered and the receive goes on to s2.
    const [next] = await queue.receive(1, 1_000);
    expect(next?.body).toBe(JSON.stringify(item('s2')));
    expect(await collect(queue.deadLetters())).toMatchObject([
      { body: JSON.stringify(item('s1')), receiveCount: 3, lastError: 'not acked after 3 receives' },
    ]);
  });

  it('deadLetter moves the message at once, and redrive puts every dead letter back with a fresh count', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1'), item('s2'), item('s3')]);
    const [m1, m2] = await queue.receive(2, 60_000);
    await queue.deadLetter(m2?.handle ?? '', 'second');
    clock += 1;
    await queue.deadLetter(m1?.handle ?? '', 'first');
    expect((await collect(queue.deadLetters())).map((d) => d.lastError)).toEqual(['second', 'first']);
    expect(await queue.stats()).toEqual({ waiting: 1, inFlight: 0, deadLetters: 2 });

    expect(await queue.redrive()).toBe(2);
    expect(await collect(queue.deadLetters())).toEqual([]);
    expect(await queue.redrive()).toBe(0);
    const received = await queue.receive(10, 60_000);
    // Redriven messages go behind s3, in the order they were first queued.
    expect(received.map((m) => [m.body, m.receiveCount])).toEqual([
      [JSON.stringify(item('s3')), 1],
      [JSON.stringify(item('s1')), 1],
      [JSON.stringify(item('s2')), 1],
    ]);
  });

  it('redrive does not queue a study a second time while it is waiting', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    await queue.enqueueRaw('poison');
    for (const message of await queue.receive(2, 60_000)) await queue.deadLetter(message.handle, 'x');
    await queue.enqueue([item('s1', 'a', 'quiet')]);
    expect(await queue.redrive()).toBe(2);
    expect((await queue.receive(10, 60_000)).map((m) => m.body)).toEqual([
      JSON.stringify(item('s1', 'a', 'quiet')),
      'poison',
    ]);
  });

  it('redrives only the dead letters of a source or an error, as recorded or as grouped, and leaves the others', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1'), item('s2'), item('s3', 'b'), item('s4')]);
    await queue.enqueueRaw('poison');
    const errors = [
      'destination at http://127.0.0.1:8043 answered 503: busy',
      'reading the source at http://127.0.0.1:8042: ECONNREFUSED',
      'destination at http://127.0.0.1:8043 answered 503: busy',
      '3 of 12 instances not verified at the destination yet',
      'malformed work item: not JSON',
    ];
    const received = await queue.receive(5, 60_000);
    for (const [index, message] of received.entries())
      await queue.deadLetter(message.handle, errors[index] ?? '');
    const left = async () => (await collect(queue.deadLetters())).map((d) => d.body);

    expect(await queue.redrive({ sourceId: 'b' })).toBe(1);
    expect(await queue.redrive({ error: 'ANSWERED 503' })).toBe(1);
    expect(await queue.redrive({ sourceId: 'a', error: 'econnrefused' })).toBe(1);
    // As `dlq list --group-by error` shows it: the numbers of another study's failure differ.
    expect(await queue.redrive({ error: 'N of N instances not verified' })).toBe(1);
    expect(await queue.redrive({ error: 'nothing like it' })).toBe(0);
    // A body that is not a work item has no source: only an error filter selects it.
    expect(await queue.redrive({ sourceId: 'a' })).toBe(0);
    expect(await left()).toEqual(['poison']);
    expect((await queue.receive(10, 60_000)).map((m) => JSON.parse(m.body).studyId)).toEqual([
      's3',
      's1',
      's2',
      's4',
    ]);
  });

  it('lists and redrives more dead letters than a page holds, in the order they were dead-lettered', async () => {
    const { queue } = open();
    const studies = Array.from({ length: 1_050 }, (_, n) => `s${String(n).padStart(4, '0')}`);
    await queue.enqueue(studies.map((studyId, n) => item(studyId, n % 2 === 0 ? 'a' : 'b')));
    // Dead-lettered in the reverse order of their ids, one millisecond apart.
    for (const message of (await queue.receive(studies.length, 60_000)).reverse()) {
      clock += 1;
      await queue.deadLetter(message.handle, 'x');
    }
    const listed = (await collect(queue.deadLetters())).map((d) => JSON.parse(d.body).studyId);
    expect(listed).toEqual([...studies].reverse());
    expect(await queue.redrive({ sourceId: 'b' })).toBe(525);
    expect((await queue.stats()).deadLetters).toBe(525);
    expect(await queue.redrive()).toBe(525);
    expect(await queue.stats()).toEqual({ waiting: 1_050, inFlight: 0, deadLetters: 0 });
  });

  it('de-duplicates a study that is waiting, but not one that is in flight', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1'), item('s1', 'a', 'quiet'), item('s1', 'b')]);
    expect((await queue.stats()).waiting).toBe(2);
    await queue.enqueue([item('s1')]);
    expect((await queue.stats()).waiting).toBe(2);

    const [inFlight] = await queue.receive(1, 60_000);
    expect(inFlight?.body).toBe(JSON.stringify(item('s1')));
    await queue.enqueue([item('s1', 'a', 'quiet')]);
    await queue.enqueue([item('s1')]);
    expect(await queue.stats()).toEqual({ waiting: 2, inFlight: 1, deadLetters: 0 });

    // A message whose visibility expired is waiting again.
    const all = await queue.receive(10, 1_000);
    expect(all.map((m) => m.body)).toEqual([
      JSON.stringify(item('s1', 'b')),
      JSON.stringify(item('s1', 'a', 'quiet')),
    ]);
    clock += 1_000;
    await queue.enqueue([item('s1', 'b')]);
    expect(await queue.stats()).toEqual({ waiting: 2, inFlight: 1, deadLetters: 0 });
  });

  it('de-duplicates a series item against a waiting item of its series or of its whole study', async () => {
    const { queue } = open();
    const series = (studyId: string, seriesId: string): WorkItem => ({ ...item(studyId), seriesId });
    await queue.enqueue([series('s1', 'r1'), series('s1', 'r2'), series('s1', 'r1')]);
    // A whole-study item is not covered by a series item; then it covers every series of the study.
    await queue.enqueue([item('s1'), series('s1', 'r3'), item('s1', 'a', 'quiet')]);
    const bodies = (await queue.receive(10, 60_000)).map((m) => m.body);
    expect(bodies).toEqual([
      JSON.stringify(series('s1', 'r1')),
      JSON.stringify(series('s1', 'r2')),
      JSON.stringify(item('s1')),
    ]);
    expect(JSON.parse(bodies[0] as string)).toEqual({
      sourceId: 'a',
      studyId: 's1',
      reason: 'stable',
      seriesId: 'r1',
    });
  });

  it('does not queue a study again while it waits for a retry: the retry moves it as it is then', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1')]);
    const [message] = await queue.receive(1, 60_000);
    await queue.release(message?.handle ?? '', 'busy', 10_000);
    await queue.enqueue([item('s1')]);
    expect(await queue.stats()).toEqual({ waiting: 0, inFlight: 1, deadLetters: 0 });
  });

  it('hands a message to one of two connections only', async () => {
    const one = open();
    const two = open();
    await one.queue.enqueue([item('s1'), item('s2'), item('s3')]);
    const [a, b] = await Promise.all([one.queue.receive(2, 60_000), two.queue.receive(2, 60_000)]);
    const bodies = [...(a ?? []), ...(b ?? [])].map((m) => m.body).sort();
    expect(bodies).toEqual(['s1', 's2', 's3'].map((s) => JSON.stringify(item(s))));
  });

  it('receives each message once per call even with a zero visibility timeout', async () => {
    const { queue } = open();
    await queue.enqueue([item('s1'), item('s2')]);
    expect((await queue.receive(10, 0)).map((m) => m.receiveCount)).toEqual([1, 1]);
    expect((await queue.receive(10, 0)).map((m) => m.receiveCount)).toEqual([2, 2]);
  });

  it('rejects nonsense arguments', async () => {
    const { queue } = open();
    await expect(queue.receive(-1, 1_000)).rejects.toThrow(RangeError);
    await expect(queue.receive(1, 1.5)).rejects.toThrow(RangeError);
    await expect(queue.release('h', 'e', -1)).rejects.toThrow(RangeError);
    expect(() => open({ maxReceives: 0 })).toThrow(RangeError);
  });

  it('reclaim makes in-flight messages receivable and drops the leases of other owners', async () => {
    const state = open();
    await state.queue.enqueue([item('s1'), item('s2'), item('s3')]);
    const [, delayed] = await state.queue.receive(2, 60_000);
    await state.queue.release(delayed?.handle ?? '', 'later', 60_000);
    await state.ledger.acquireLease('local-runner', 'me', 15_000, clock);
    await state.ledger.acquireLease('study#a#s1', 'dead:w0', 60_000, clock);
    expect(state.reclaim('me')).toEqual({ messages: 1, leases: 1 });
    expect(await state.queue.stats()).toEqual({ waiting: 2, inFlight: 1, deadLetters: 0 });
    const [again] = await state.queue.receive(1, 60_000);
    expect(again).toMatchObject({ body: JSON.stringify(item('s1')), receiveCount: 2 });
    expect(await state.ledger.acquireLease('study#a#s1', 'me:w0', 60_000, clock)).toBe(true);
    expect(await state.ledger.acquireLease('local-runner', 'other', 15_000, clock)).toBe(false);
  });
});

describe('ledger retention', () => {
  it('prunes the outcomes finished before a time, and the totals keep what they counted', async () => {
    const state = open();
    for (const finishedAt of [10, 20, 30]) {
      await state.ledger.record(
        outcome({ studyId: `s${finishedAt}`, finishedAt, sent: 1, bytes: 10, deleted: 1, deletedBytes: 10 }),
      );
    }
    // Recorded after a newer one (a slower worker): kept until everything before it is old too.
    await state.ledger.record(outcome({ studyId: 'late', finishedAt: 15, result: 'partial', sent: 1 }));
    const totals = await state.ledger.totals();
    const a = { moved: { studies: 3, instances: 3, bytes: 30 }, copied: none, deleted: 3 };
    expect(totals).toEqual({ ...a, rejected: 0, sources: { a } });

    expect(state.ledger.pruneOutcomes(25)).toBe(2);
    expect(state.ledger.pruneOutcomes(25)).toBe(0);
    expect(await state.ledger.totals()).toEqual(totals);
    const raw = new DatabaseSync(file);
    expect(raw.prepare('SELECT study_id FROM study_outcomes ORDER BY id').all()).toEqual([
      { study_id: 's30' },
      { study_id: 'late' },
    ]);
    raw.close();

    expect(state.ledger.pruneOutcomes(Number.MAX_SAFE_INTEGER)).toBe(2);
    expect(await state.ledger.totals()).toEqual(totals);
    await state.ledger.record(
      outcome({ studyId: 'next', finishedAt: 40, sent: 2, deleted: 2, deletedBytes: 20 }),
    );
    await state.ledger.record(
      outcome({ sourceId: 'b', finishedAt: 50, result: 'copied', sent: 1, bytes: 5 }),
    );
    const after = { moved: { studies: 4, instances: 5, bytes: 50 }, copied: none, deleted: 5 };
    const b = { moved: none, copied: { studies: 1, instances: 1, bytes: 5 }, deleted: 0 };
    expect(await state.ledger.totals()).toEqual({
      moved: after.moved,
      copied: b.copied,
      deleted: 5,
      rejected: 0,
      sources: { a: after, b },
    });
    // Pruned per source too.
    expect(state.ledger.pruneOutcomes(Number.MAX_SAFE_INTEGER)).toBe(2);
    expect((await state.ledger.totals()).sources).toEqual({ a: after, b });
  });
});

stateContract('SQLite state (port contract)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'port-contract-'));
  const opened: LocalState[] = [];
  return {
    open: () => {
      const state = openState(join(dir, 'state.sqlite'));
      opened.push(state);
      return state;
    },
    dispose: async () => {
      for (const state of opened) state.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
