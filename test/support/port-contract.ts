/**
 * The behaviour every FeedStateStore and Ledger must have, written once and run against each
 * implementation (SQLite, DynamoDB), so that the engine cannot tell them apart.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type AuditedDeletion,
  type Conflict,
  DELETION_PART_SIZE,
  type DeletionIntent,
  type DeletionQuery,
  type DeletionRecord,
  type FeedStateStore,
  type Ledger,
  MOVED_BUCKET_MS,
  type RejectedInstance,
  type SettledStudy,
  type StudyOutcome,
} from '../../lambdas/core/ports.ts';
import { movedBucketStart } from '../../lambdas/core/totals.ts';

export interface StateHandles {
  readonly feed: FeedStateStore;
  readonly ledger: Ledger;
}

export interface StateUnderTest {
  /** Another handle on the same state, as a second process or Lambda would have. */
  open(): StateHandles;
  dispose(): Promise<void>;
}

/** The last deletion intent of one series of a study ('' for the whole study), as the engine picks it. */
const intentOf = async (ledger: Ledger, sourceId: string, studyId: string, seriesId: string) =>
  (await ledger.intents(sourceId, studyId)).find((intent) => intent.seriesId === seriesId);

/** In the future (2033): DynamoDB Local deletes items whose `ttl` has passed, at moments of its own. */
export const CLOCK = 2_000_000_000_000;

export const outcome = (overrides: Partial<StudyOutcome>): StudyOutcome => ({
  sourceId: 'a',
  studyId: 's1',
  result: 'moved',
  instances: 0,
  sent: 0,
  alreadyPresent: 0,
  deleted: 0,
  rejected: 0,
  conflicts: 0,
  bytes: 0,
  deletedBytes: 0,
  durationMs: 10,
  finishedAt: CLOCK,
  ...overrides,
});

/** Studies, instances, bytes. */
const tally = (studies: number, instances: number, bytes: number) => ({ studies, instances, bytes });

export const rejection = (overrides: Partial<RejectedInstance>): RejectedInstance => ({
  sourceId: 'a',
  studyId: 's1',
  instanceId: 'i1',
  sopInstanceUid: '1.2.3',
  reason: 'refused',
  rejectedAt: CLOCK,
  ...overrides,
});

export const conflict = (overrides: Partial<Conflict>): Conflict => ({
  sourceId: 'a',
  studyId: 's1',
  instanceId: 'i1',
  destinationId: 'd1',
  sopInstanceUid: '1.2.3',
  attributes: ['PatientName'],
  detectedAt: CLOCK,
  ...overrides,
});

/** What `conflicts` lists of a conflict, for comparing lists. */
const named = (c: Conflict) => `${c.sourceId}/${c.studyId}/${c.instanceId}/${c.destinationId}`;

export const settledStudy = (overrides: Partial<SettledStudy>): SettledStudy => ({
  sourceId: 'a',
  studyId: 's1',
  seriesId: '',
  lastUpdate: '20240101T000000',
  instances: 6,
  routing: 'r',
  result: 'copied',
  settledAt: CLOCK,
  ...overrides,
});

export const intent = (overrides: Partial<DeletionIntent>): DeletionIntent => ({
  sourceId: 'a',
  studyId: 's1',
  seriesId: '',
  instances: 4,
  verifiedBy: [
    { destinationId: 'd1', verify: 'identity' },
    { destinationId: 'd2', verify: 'checksum' },
  ],
  routing: 'r',
  at: CLOCK,
  ...overrides,
});

/** `count` instances over three series; the second one deleted on the operator's decision. */
const deletedInstances = (count: number, prefix = 'i') =>
  Array.from({ length: count }, (_, index) => ({
    seriesId: `r${index % 3}`,
    instanceId: `${prefix}${String(index).padStart(5, '0')}`,
    sopInstanceUid: `1.2.826.0.1.${index}`,
    accepted: index === 1,
  }));

export const deletion = (overrides: Partial<DeletionRecord>): DeletionRecord => ({
  sourceId: 'a',
  studyId: 's1',
  seriesId: '',
  at: CLOCK,
  studyInstanceUid: '1.2.826.0.2',
  verifiedBy: [
    { destinationId: 'd1', verify: 'identity' },
    { destinationId: 'd2', verify: 'qido' },
  ],
  instances: deletedInstances(3),
  ...overrides,
});

/** Every part of the period, page by page; and how many pages that took. */
const allDeletions = async (ledger: Ledger, query: DeletionQuery, limit: number) => {
  const parts: AuditedDeletion[] = [];
  let pages = 0;
  let after: string | undefined;
  do {
    const page = await ledger.deletions(query, { after, limit });
    expect(page.deletions.length).toBeLessThanOrEqual(limit);
    parts.push(...page.deletions);
    pages++;
    after = page.next;
  } while (after !== undefined);
  return { parts, pages };
};

/** A part as the store should give it back. */
const part = (record: DeletionRecord, index: number, status: AuditedDeletion['status']): AuditedDeletion => ({
  ...record,
  part: index,
  status,
  instances: record.instances.slice(index * DELETION_PART_SIZE, (index + 1) * DELETION_PART_SIZE),
});

const DAY_MS = 24 * 60 * 60 * 1000;

/** Zero-padded, so that their sort order is their numeric order whatever the store sorts by. */
const ids = (prefix: string, count: number) =>
  Array.from({ length: count }, (_, index) => `${prefix}${String(index).padStart(3, '0')}`);

/** Registers the contract's tests; `fresh` makes an empty state for each test. */
export const stateContract = (name: string, fresh: () => Promise<StateUnderTest>): void => {
  describe(name, () => {
    let state: StateUnderTest;
    const open = () => state.open();

    beforeEach(async () => {
      state = await fresh();
    });

    afterEach(async () => {
      await state.dispose();
    });

    describe('feed state', () => {
      it('advances the cursor only from the expected value', async () => {
        const { feed } = open();
        expect(await feed.getCursor('a')).toBeUndefined();
        expect(await feed.advanceCursor('a', 3, 5)).toBe(false);
        expect(await feed.getCursor('a')).toBeUndefined();
        expect(await feed.advanceCursor('a', undefined, 5)).toBe(true);
        expect(await feed.advanceCursor('a', undefined, 6)).toBe(false);
        expect(await feed.advanceCursor('a', 4, 6)).toBe(false);
        expect(await feed.getCursor('a')).toBe(5);
        expect(await feed.advanceCursor('a', 5, 9)).toBe(true);
        expect(await feed.getCursor('a')).toBe(9);
        expect(await feed.advanceCursor('a', 9, 0)).toBe(true);
        expect(await feed.getCursor('a')).toBe(0);
        expect(await feed.getCursor('b')).toBeUndefined();
        await expect(feed.advanceCursor('a', 0, 1.5)).rejects.toThrow(RangeError);
      });

      it('lets only one of two overlapping readers advance, first cursor included', async () => {
        const one = open();
        const two = open();
        const first = await Promise.all([
          one.feed.advanceCursor('a', undefined, 10),
          two.feed.advanceCursor('a', undefined, 20),
        ]);
        expect([...first].sort()).toEqual([false, true]);
        const firstCursor = first[0] ? 10 : 20;
        expect(await two.feed.getCursor('a')).toBe(firstCursor);

        const second = await Promise.all([
          two.feed.advanceCursor('a', firstCursor, 30),
          one.feed.advanceCursor('a', firstCursor, 15),
        ]);
        expect([...second].sort()).toEqual([false, true]);
        expect(await one.feed.getCursor('a')).toBe(second[0] ? 30 : 15);
      });

      it('keeps the state of already watched studies and never brings back an unwatched one', async () => {
        const { feed } = open();
        await feed.watch('a', ['s2', 's1'], 100);
        expect(await feed.watched('a')).toEqual([
          { studyId: 's1', lastUpdate: undefined, lastUpdateSeenAt: 100 },
          { studyId: 's2', lastUpdate: undefined, lastUpdateSeenAt: 100 },
        ]);
        await feed.updateWatched('a', {
          studyId: 's1',
          lastUpdate: '20240101T000000',
          lastUpdateSeenAt: 150,
        });
        await feed.watch('a', ['s1', 's3'], 200);
        expect(await feed.watched('a')).toEqual([
          { studyId: 's1', lastUpdate: '20240101T000000', lastUpdateSeenAt: 150 },
          { studyId: 's2', lastUpdate: undefined, lastUpdateSeenAt: 100 },
          { studyId: 's3', lastUpdate: undefined, lastUpdateSeenAt: 200 },
        ]);
        await feed.updateWatched('a', { studyId: 's1', lastUpdate: undefined, lastUpdateSeenAt: 250 });
        expect((await feed.watched('a'))[0]).toEqual({
          studyId: 's1',
          lastUpdate: undefined,
          lastUpdateSeenAt: 250,
        });

        await feed.unwatch('a', ['s1', 's2', 'unknown']);
        await feed.updateWatched('a', { studyId: 's1', lastUpdate: 'x', lastUpdateSeenAt: 300 });
        expect((await feed.watched('a')).map((s) => s.studyId)).toEqual(['s3']);
        expect(await feed.watched('b')).toEqual([]);
        await feed.watch('b', ['s3'], 400);
        expect(await feed.watched('b')).toEqual([
          { studyId: 's3', lastUpdate: undefined, lastUpdateSeenAt: 400 },
        ]);
        expect(await feed.watched('a')).toEqual([
          { studyId: 's3', lastUpdate: undefined, lastUpdateSeenAt: 200 },
        ]);
      });

      it('watches and unwatches more studies than one batch or page holds, duplicates and empty lists included', async () => {
        const { feed } = open();
        const studies = ids('s', 60);
        await feed.watch('a', [], 1);
        await feed.unwatch('a', []);
        await feed.watch('a', [...studies, ...studies.slice(0, 5)], 100);
        await feed.updateWatched('a', { studyId: 's030', lastUpdate: '', lastUpdateSeenAt: 150 });
        const watched = await feed.watched('a');
        expect(watched.map((s) => s.studyId)).toEqual(studies);
        expect(watched[30]).toEqual({ studyId: 's030', lastUpdate: '', lastUpdateSeenAt: 150 });
        // Unwatching a cursor-like or foreign ID touches nothing else of the source.
        await feed.advanceCursor('a', undefined, 7);
        await feed.unwatch('a', [...studies.slice(0, 55), ...studies.slice(0, 3), 'cursor']);
        expect((await feed.watched('a')).map((s) => s.studyId)).toEqual(studies.slice(55));
        expect(await feed.getCursor('a')).toBe(7);
      });

      it('keeps the state of a study two readers watch at once', async () => {
        const one = open();
        const two = open();
        await Promise.all([one.feed.watch('a', ['s1', 's2'], 100), two.feed.watch('a', ['s2', 's1'], 200)]);
        const watched = await one.feed.watched('a');
        expect(watched.map((s) => s.studyId)).toEqual(['s1', 's2']);
        for (const study of watched) expect([100, 200]).toContain(study.lastUpdateSeenAt);
      });

      it('pages the watch list in study ID order after a given study, and counts it', async () => {
        const { feed } = open();
        const studies = ids('s', 25);
        expect(await feed.watched('a', { after: '', limit: 10 })).toEqual([]);
        expect(await feed.watchedCount('a')).toBe(0);
        await feed.watch('a', [...studies].reverse(), 100);
        await feed.watch('b', ['s000', 'x'], 100);
        await feed.advanceCursor('a', undefined, 3);
        const first = await feed.watched('a', { after: '', limit: 10 });
        expect(first.map((s) => s.studyId)).toEqual(studies.slice(0, 10));
        expect(first[0]).toEqual({ studyId: 's000', lastUpdate: undefined, lastUpdateSeenAt: 100 });
        expect((await feed.watched('a', { after: 's009', limit: 10 })).map((s) => s.studyId)).toEqual(
          studies.slice(10, 20),
        );
        // After a study no longer watched, and past the end.
        await feed.unwatch('a', ['s019', 's020']);
        expect((await feed.watched('a', { after: 's019', limit: 10 })).map((s) => s.studyId)).toEqual(
          studies.slice(21),
        );
        expect(await feed.watched('a', { after: 's024', limit: 10 })).toEqual([]);
        expect(await feed.watchedCount('a')).toBe(23);
        expect(await feed.watchedCount('b')).toBe(2);
      });

      it('saves the progress only over the version it read, first save included', async () => {
        const one = open();
        const two = open();
        const progress = { watchAfter: '', sweepStartedAt: 100, settings: 'd1' };
        expect(await one.feed.progress('a')).toBeUndefined();
        expect(await one.feed.saveProgress('a', 1, progress)).toBe(false);
        const first = await Promise.all([
          one.feed.saveProgress('a', undefined, progress),
          two.feed.saveProgress('a', undefined, { ...progress, settings: 'd2' }),
        ]);
        expect([...first].sort()).toEqual([false, true]);
        expect(await two.feed.progress('a')).toEqual({
          version: 1,
          progress: { ...progress, settings: first[0] ? 'd1' : 'd2' },
        });

        const sweeping = { watchAfter: 's7', sweepBelow: 2_000_000, sweepStartedAt: 200, settings: 'd3' };
        const second = await Promise.all([
          one.feed.saveProgress('a', 1, sweeping),
          two.feed.saveProgress('a', 1, { ...sweeping, watchAfter: 's8' }),
        ]);
        expect([...second].sort()).toEqual([false, true]);
        expect(await one.feed.progress('a')).toEqual({
          version: 2,
          progress: { ...sweeping, watchAfter: second[0] ? 's7' : 's8' },
        });
        // A sweep that ended leaves no position behind.
        expect(await two.feed.saveProgress('a', 2, progress)).toBe(true);
        expect(await one.feed.progress('a')).toEqual({ version: 3, progress });
        expect(await one.feed.saveProgress('a', 2, sweeping)).toBe(false);
        // Where the source's history ends, past 2^31 changes too.
        const marked = { ...progress, backlogThrough: 3_000_000_000 };
        expect(await one.feed.saveProgress('a', 3, marked)).toBe(true);
        expect(await two.feed.progress('a')).toEqual({ version: 4, progress: marked });
        expect(await one.feed.progress('b')).toBeUndefined();
      });

      it('remembers queued studies per source, the last one written of each, for more than a batch', async () => {
        const one = open();
        const two = open();
        const studies = ids('s', 130);
        // Now, not CLOCK: DynamoDB Local deletes an item once its TTL (here, the memory's end) passed.
        const now = Date.now();
        const queued = (studyId: string, queuedAt = now) => ({
          studyId,
          lastUpdate: '20240101T000000',
          settings: 'd1',
          queuedAt,
        });
        await one.feed.rememberQueued('a', []);
        expect(await one.feed.queued('a', [])).toEqual([]);
        expect(await one.feed.queued('a', ['s000'])).toEqual([]);
        await one.feed.rememberQueued(
          'a',
          studies.map((id) => queued(id)),
        );
        await one.feed.rememberQueued('b', [queued('s000')]);
        await two.feed.rememberQueued('a', [
          { ...queued('s001', now + 1), lastUpdate: '20240102T000000' },
          { ...queued('s001', now + 2), settings: 'd2' },
        ]);
        const remembered = await two.feed.queued('a', [...studies, 's000', 'unknown']);
        const byId = new Map(remembered.map((study) => [study.studyId, study]));
        expect([...byId.keys()].sort()).toEqual(studies);
        expect(remembered).toHaveLength(studies.length);
        expect(byId.get('s000')).toEqual(queued('s000'));
        expect(byId.get('s001')).toEqual({ ...queued('s001', now + 2), settings: 'd2' });
        expect(await one.feed.queued('b', ['s000', 's001'])).toEqual([queued('s000')]);
        expect(await one.feed.watched('a')).toEqual([]);

        // Forgotten (an operator's decision queued them outside the feed): only those, only there.
        await two.feed.forgetQueued('a', ['s000', 's001', 's001', 'unknown']);
        expect((await one.feed.queued('a', studies)).map((study) => study.studyId).sort()).toEqual(
          studies.filter((id) => id !== 's000' && id !== 's001'),
        );
        expect(await one.feed.queued('b', ['s000'])).toEqual([queued('s000')]);
        await one.feed.forgetQueued('a', []);
      });

      it('keeps what an operator asked of a source: the first pause until a resume, a pending sweep until its start', async () => {
        const one = open();
        const two = open();
        expect(await one.feed.control('a')).toEqual({});
        expect(await one.feed.resume('a')).toBe(false);

        // Paused once, from the first pause, for every handle, until resumed; per source.
        expect(await one.feed.pause('a', CLOCK)).toBe(true);
        expect(await two.feed.pause('a', CLOCK + 5)).toBe(false);
        expect(await two.feed.control('a')).toEqual({ pausedAt: CLOCK });
        expect(await two.feed.control('b')).toEqual({});
        expect(await two.feed.resume('a')).toBe(true);
        expect(await one.feed.resume('a')).toBe(false);
        expect(await one.feed.control('a')).toEqual({});
        expect(await one.feed.pause('a', CLOCK + 10)).toBe(true);

        // A sweep asked for twice before it starts is one request, the first; clearing it takes a
        // request made since only if it is that one.
        expect(await one.feed.requestSweep('a', CLOCK + 20)).toBe(true);
        expect(await two.feed.requestSweep('a', CLOCK + 30)).toBe(false);
        expect(await one.feed.control('a')).toEqual({ pausedAt: CLOCK + 10, sweepRequestedAt: CLOCK + 20 });
        await two.feed.clearSweepRequest('a', CLOCK + 30);
        expect((await one.feed.control('a')).sweepRequestedAt).toBe(CLOCK + 20);
        await two.feed.clearSweepRequest('a', CLOCK + 20);
        expect(await one.feed.control('a')).toEqual({ pausedAt: CLOCK + 10 });
        expect(await two.feed.requestSweep('a', CLOCK + 40)).toBe(true);
        expect(await one.feed.resume('a')).toBe(true);
        expect(await two.feed.control('a')).toEqual({ sweepRequestedAt: CLOCK + 40 });

        // None of it shows in the source's other state.
        expect(await one.feed.watched('a')).toEqual([]);
        expect(await one.feed.watchedCount('a')).toBe(0);
        expect(await one.feed.getCursor('a')).toBeUndefined();
        expect(await one.feed.progress('a')).toBeUndefined();
      });
    });

    describe('ledger', () => {
      it('grants a lease to one owner until it expires, and renews it for the same owner', async () => {
        const { ledger } = open();
        expect(await ledger.acquireLease('k', 'w1', 1_000, 0)).toBe(true);
        expect(await ledger.acquireLease('k', 'w2', 1_000, 500)).toBe(false);
        expect(await ledger.acquireLease('k', 'w1', 1_000, 900)).toBe(true);
        // Renewed until 1900: still held at 1000.
        expect(await ledger.acquireLease('k', 'w2', 1_000, 1_000)).toBe(false);
        expect(await ledger.acquireLease('k', 'w2', 1_000, 1_899)).toBe(false);
        expect(await ledger.acquireLease('k', 'w2', 1_000, 1_900)).toBe(true);
        expect(await ledger.acquireLease('k', 'w1', 1_000, 2_000)).toBe(false);
        expect(await ledger.acquireLease('other', 'w1', 1_000, 2_000)).toBe(true);
        await expect(ledger.acquireLease('k', 'w1', 0, 0)).rejects.toThrow(RangeError);
      });

      it('releases a lease only for its owner', async () => {
        const { ledger } = open();
        await ledger.acquireLease('k', 'w1', 60_000, 0);
        await ledger.releaseLease('k', 'w2');
        expect(await ledger.acquireLease('k', 'w2', 60_000, 1)).toBe(false);
        await ledger.releaseLease('k', 'w1');
        await ledger.releaseLease('k', 'w1');
        await ledger.releaseLease('never-taken', 'w1');
        expect(await ledger.acquireLease('k', 'w2', 60_000, 2)).toBe(true);
      });

      it('gives a contested lease to exactly one of two connections, also once it expired', async () => {
        const one = open();
        const two = open();
        const results = await Promise.all([
          one.ledger.acquireLease('k', 'w1', 60_000, 0),
          two.ledger.acquireLease('k', 'w2', 60_000, 0),
        ]);
        expect(results.sort()).toEqual([false, true]);
        const afterExpiry = await Promise.all([
          one.ledger.acquireLease('k', 'w3', 60_000, 60_000),
          two.ledger.acquireLease('k', 'w4', 60_000, 60_000),
        ]);
        expect(afterExpiry.sort()).toEqual([false, true]);
      });

      it('totals count per source what left it and, apart, what was copied; deletions and distinct refusals', async () => {
        const { ledger } = open();
        expect(await ledger.totals()).toEqual({
          moved: tally(0, 0, 0),
          copied: tally(0, 0, 0),
          deleted: 0,
          rejected: 0,
          sources: {},
        });
        await ledger.record(
          outcome({
            result: 'moved',
            instances: 5,
            sent: 4,
            alreadyPresent: 1,
            deleted: 5,
            bytes: 400,
            deletedBytes: 500,
          }),
        );
        await ledger.record(outcome({ result: 'copied', studyId: 's2', instances: 2, sent: 2, bytes: 200 }));
        await ledger.record(
          outcome({
            result: 'partial',
            studyId: 's3',
            instances: 3,
            sent: 2,
            deleted: 2,
            rejected: 1,
            bytes: 100,
            deletedBytes: 150,
          }),
        );
        await ledger.record(outcome({ result: 'gone', studyId: 's4' }));
        await ledger.recordRejected([rejection({ studyId: 's3', instanceId: 'i1' })]);
        // A later run of s3 reports the same refusal again.
        await ledger.record(outcome({ result: 'partial', studyId: 's3', instances: 1, rejected: 1 }));
        await ledger.recordRejected([rejection({ studyId: 's3', instanceId: 'i1', rejectedAt: CLOCK + 1 })]);
        // Copied, then moved once the configuration said so: the move sends nothing and deletes
        // what the copy sent. One copy and one move, not two studies moved.
        const study = { sourceId: 'b', studyId: 's5', instances: 3 };
        await ledger.record(outcome({ ...study, result: 'copied', sent: 3, bytes: 300 }));
        await ledger.record(
          outcome({ ...study, result: 'moved', alreadyPresent: 3, deleted: 3, deletedBytes: 300 }),
        );
        expect(await ledger.totals()).toEqual({
          moved: tally(2, 10, 950),
          copied: tally(2, 5, 500),
          deleted: 10,
          rejected: 1,
          sources: {
            a: { moved: tally(1, 7, 650), copied: tally(1, 2, 200), deleted: 7 },
            b: { moved: tally(1, 3, 300), copied: tally(1, 3, 300), deleted: 3 },
          },
        });
      });

      it('counts the same outcome twice when it is recorded twice, even in the same millisecond', async () => {
        const one = open();
        const two = open();
        const moved = outcome({ sent: 1, bytes: 10, deleted: 1, deletedBytes: 12 });
        await Promise.all([one.ledger.record(moved), two.ledger.record(moved), one.ledger.record(moved)]);
        expect(await two.ledger.totals()).toMatchObject({ moved: tally(3, 3, 36), deleted: 3 });
      });

      it('keeps the newest reason for a rejected instance and lists by source and study', async () => {
        const { ledger } = open();
        await ledger.recordRejected([]);
        await ledger.recordRejected([
          rejection({ instanceId: 'i1', reason: 'first', rejectedAt: 10 }),
          rejection({ instanceId: 'i2', reason: 'other', rejectedAt: 10 }),
          rejection({ sourceId: 'b', instanceId: 'i1', reason: 'b', rejectedAt: 10 }),
          rejection({ studyId: 's2', instanceId: 'i3', reason: 's2', rejectedAt: 10 }),
        ]);
        await ledger.recordRejected([rejection({ instanceId: 'i1', reason: 'newer', rejectedAt: 20 })]);
        await ledger.recordRejected([rejection({ instanceId: 'i1', reason: 'older', rejectedAt: 15 })]);

        expect(await ledger.rejected('a', 's1')).toEqual([
          rejection({ instanceId: 'i2', reason: 'other', rejectedAt: 10 }),
          rejection({ instanceId: 'i1', reason: 'newer', rejectedAt: 20 }),
        ]);
        expect((await ledger.rejected('a')).map((r) => r.instanceId)).toEqual(['i2', 'i1', 'i3']);
        expect((await ledger.rejected()).map((r) => `${r.sourceId}/${r.instanceId}`)).toEqual([
          'a/i2',
          'a/i1',
          'a/i3',
          'b/i1',
        ]);
        expect((await ledger.rejected(undefined, 's1')).map((r) => r.sourceId)).toEqual(['a', 'a', 'b']);
        expect(await ledger.rejected('c')).toEqual([]);
        expect(await ledger.rejected('a', 's9')).toEqual([]);
        expect((await ledger.totals()).rejected).toBe(4);
      });

      it('forgets a refusal only as it was given, and the totals keep counting it', async () => {
        const { ledger } = open();
        const given = ['i1', 'i2', 'i3'].map((instanceId) => rejection({ instanceId, rejectedAt: 10 }));
        await ledger.recordRejected(given);
        // i2 refused again since it was judged gone: the new refusal is about a new arrival.
        await ledger.recordRejected([rejection({ instanceId: 'i2', rejectedAt: 20 })]);
        const unknown = rejection({ instanceId: 'i9', rejectedAt: 10 });
        expect(await ledger.forgetRejected([...given.slice(0, 2), unknown])).toBe(1);
        expect(await ledger.forgetRejected([])).toBe(0);
        expect((await ledger.rejected('a')).map((r) => `${r.instanceId}@${r.rejectedAt}`)).toEqual([
          'i3@10',
          'i2@20',
        ]);
        expect((await ledger.totals()).rejected).toBe(3);
        // Refused again after it was forgotten: another refusal, counted.
        await ledger.recordRejected([rejection({ instanceId: 'i1', rejectedAt: 30 })]);
        expect((await ledger.totals()).rejected).toBe(4);
      });

      it('does not mistake a source or study whose ID extends another for it', async () => {
        const { ledger } = open();
        await ledger.recordRejected([
          rejection({ sourceId: 'a', studyId: 's1', instanceId: 'i1' }),
          rejection({ sourceId: 'a', studyId: 's10', instanceId: 'i2' }),
          rejection({ sourceId: 'ab', studyId: 's1', instanceId: 'i3' }),
        ]);
        expect((await ledger.rejected('a', 's1')).map((r) => r.instanceId)).toEqual(['i1']);
        expect((await ledger.rejected('a')).map((r) => r.instanceId)).toEqual(['i1', 'i2']);
        expect((await ledger.rejected(undefined, 's1')).map((r) => r.instanceId)).toEqual(['i1', 'i3']);
      });

      it('counts each instance once however often, in whatever batches and by however many workers it is refused', async () => {
        const one = open();
        const two = open();
        const instances = ids('i', 120);
        // Duplicates within one call: the newest refusal is kept, the later one on a tie.
        await one.ledger.recordRejected([
          rejection({ instanceId: 'i000', reason: 'old', rejectedAt: 5 }),
          rejection({ instanceId: 'i000', reason: 'tie-first', rejectedAt: 7 }),
          rejection({ instanceId: 'i000', reason: 'tie-second', rejectedAt: 7 }),
          rejection({ instanceId: 'i000', reason: 'older', rejectedAt: 6 }),
        ]);
        await Promise.all([
          one.ledger.recordRejected(instances.slice(0, 80).map((instanceId) => rejection({ instanceId }))),
          two.ledger.recordRejected(instances.slice(40).map((instanceId) => rejection({ instanceId }))),
        ]);
        expect((await one.ledger.totals()).rejected).toBe(120);
        const listed = await two.ledger.rejected('a', 's1');
        expect(listed.map((r) => r.instanceId)).toEqual(instances);
        expect(listed[0]).toEqual(rejection({ instanceId: 'i000' }));
      });

      it('remembers a settled study by source, study and series, and keeps the newest', async () => {
        const one = open();
        const two = open();
        expect(await one.ledger.settled('a', 's1', '')).toBeUndefined();
        await one.ledger.recordSettled(settledStudy({}));
        await one.ledger.recordSettled(settledStudy({ seriesId: 'r1', result: 'skipped', instances: 2 }));
        await one.ledger.recordSettled(settledStudy({ sourceId: 'ab', instances: 9 }));
        await one.ledger.recordSettled(settledStudy({ studyId: 's10', result: 'partial' }));
        expect(await two.ledger.settled('a', 's1', '')).toEqual(settledStudy({}));
        expect(await two.ledger.settled('a', 's1', 'r1')).toEqual(
          settledStudy({ seriesId: 'r1', result: 'skipped', instances: 2 }),
        );
        expect(await two.ledger.settled('ab', 's1', '')).toEqual(
          settledStudy({ sourceId: 'ab', instances: 9 }),
        );
        expect(await two.ledger.settled('a', 's10', '')).toEqual(
          settledStudy({ studyId: 's10', result: 'partial' }),
        );
        expect(await two.ledger.settled('a', 's1', 'r2')).toBeUndefined();
        expect(await two.ledger.settled('b', 's1', '')).toBeUndefined();

        // Two workers may write in either order: the newer record wins.
        await two.ledger.recordSettled(settledStudy({ lastUpdate: 'newer', settledAt: CLOCK + 10 }));
        await one.ledger.recordSettled(settledStudy({ lastUpdate: 'older', settledAt: CLOCK + 5 }));
        expect((await one.ledger.settled('a', 's1', ''))?.lastUpdate).toBe('newer');
        await one.ledger.recordSettled(settledStudy({ lastUpdate: 'newest', settledAt: CLOCK + 10 }));
        expect((await two.ledger.settled('a', 's1', ''))?.lastUpdate).toBe('newest');
      });

      it('keeps the last deletion intent per source, study and series, open until completed', async () => {
        const one = open();
        const two = open();
        expect(await intentOf(one.ledger, 'a', 's1', '')).toBeUndefined();
        await one.ledger.completeIntent('a', 's1', '', CLOCK);
        expect(await intentOf(one.ledger, 'a', 's1', '')).toBeUndefined();
        const study = intent({});
        const series = intent({
          seriesId: 'r1',
          instances: 1,
          verifiedBy: [{ destinationId: 'd3', verify: 'stow' }],
        });
        const others = [
          intent({ sourceId: 'ab', verifiedBy: [] }),
          intent({ studyId: 's10', instances: 0, routing: 'other' }),
          intent({ seriesId: 'r2' }),
        ];
        for (const each of [study, series, ...others]) await one.ledger.recordIntent(each);
        expect(await intentOf(two.ledger, 'a', 's1', '')).toEqual(study);
        // Open: no completedAt at all, rather than an undefined one.
        expect(Object.keys((await intentOf(two.ledger, 'a', 's1', '')) ?? {})).not.toContain('completedAt');
        expect(await intentOf(two.ledger, 'a', 's1', 'r1')).toEqual(series);
        for (const each of others) {
          expect(await intentOf(two.ledger, each.sourceId, each.studyId, each.seriesId)).toEqual(each);
        }
        expect(await intentOf(two.ledger, 'a', 's1', 'r3')).toBeUndefined();
        // The study's own and its series', in one read, and no other study's.
        expect(await two.ledger.intents('a', 's1')).toEqual(
          expect.arrayContaining([study, series, others[2]]),
        );
        expect(await two.ledger.intents('a', 's1')).toHaveLength(3);
        expect(await intentOf(two.ledger, 'b', 's1', '')).toBeUndefined();

        // Completing the whole study's leaves its series' open, and the other way round.
        await two.ledger.completeIntent('a', 's1', '', CLOCK + 1);
        expect(await intentOf(one.ledger, 'a', 's1', '')).toEqual({ ...study, completedAt: CLOCK + 1 });
        expect(await intentOf(one.ledger, 'a', 's1', 'r1')).toEqual(series);
        await one.ledger.completeIntent('a', 's1', 'r1', CLOCK + 2);
        expect(await intentOf(two.ledger, 'a', 's1', 'r1')).toEqual({ ...series, completedAt: CLOCK + 2 });
        expect(await intentOf(two.ledger, 'a', 's1', 'r2')).toEqual(others[2]);

        // Completing a completed one changes nothing, from either connection.
        await Promise.all([
          one.ledger.completeIntent('a', 's1', '', CLOCK + 3),
          two.ledger.completeIntent('a', 's1', '', CLOCK + 4),
        ]);
        expect(await intentOf(two.ledger, 'a', 's1', '')).toEqual({ ...study, completedAt: CLOCK + 1 });
      });

      it('replaces the last deletion intent, open or completed, with the one recorded after it', async () => {
        const one = open();
        const two = open();
        const next = intent({
          instances: 2,
          verifiedBy: [{ destinationId: 'd2', verify: 'qido' }],
          routing: 'r2',
          at: CLOCK + 10,
        });
        await one.ledger.recordIntent(intent({}));
        await two.ledger.recordIntent(next);
        expect(await intentOf(one.ledger, 'a', 's1', '')).toEqual(next);
        await two.ledger.completeIntent('a', 's1', '', CLOCK + 20);

        // A clock set back does not keep the new deletion from being recorded, and it is open
        // even when made from a completed one.
        const after = {
          ...(await intentOf(one.ledger, 'a', 's1', '')),
          ...intent({ instances: 3, at: CLOCK + 5 }),
        };
        expect(after.completedAt).toBe(CLOCK + 20);
        await one.ledger.recordIntent(after);
        expect(await intentOf(two.ledger, 'a', 's1', '')).toEqual(intent({ instances: 3, at: CLOCK + 5 }));
        await one.ledger.completeIntent('a', 's1', '', CLOCK + 30);
        expect((await intentOf(two.ledger, 'a', 's1', ''))?.completedAt).toBe(CLOCK + 30);
      });

      it('lists conflicts by source and study, ordered by source, study, detection, instance and destination', async () => {
        const one = open();
        const two = open();
        await one.ledger.recordConflicts([]);
        await one.ledger.recordConflicts([
          conflict({ instanceId: 'i2', detectedAt: 20 }),
          conflict({ instanceId: 'i1', destinationId: 'd2', detectedAt: 20 }),
          conflict({ instanceId: 'i1', detectedAt: 20 }),
          conflict({ instanceId: 'i3', detectedAt: 10, attributes: ['content'] }),
          conflict({ studyId: 's10', instanceId: 'i4', attributes: [] }),
          conflict({ sourceId: 'ab', instanceId: 'i5', attributes: ['PatientID', 'PatientName'] }),
          conflict({ sourceId: 'b', studyId: 's0', instanceId: 'i6' }),
        ]);
        expect((await two.ledger.conflicts()).map(named)).toEqual([
          'a/s1/i3/d1',
          'a/s1/i1/d1',
          'a/s1/i1/d2',
          'a/s1/i2/d1',
          'a/s10/i4/d1',
          'ab/s1/i5/d1',
          'b/s0/i6/d1',
        ]);
        expect(await two.ledger.conflicts({ sourceId: 'a', studyId: 's1' })).toEqual([
          conflict({ instanceId: 'i3', detectedAt: 10, attributes: ['content'] }),
          conflict({ instanceId: 'i1', detectedAt: 20 }),
          conflict({ instanceId: 'i1', destinationId: 'd2', detectedAt: 20 }),
          conflict({ instanceId: 'i2', detectedAt: 20 }),
        ]);
        // Open: no resolution at all, rather than an undefined one.
        expect(Object.keys((await two.ledger.conflicts())[0] ?? {})).not.toContain('resolution');
        expect((await two.ledger.conflicts({ sourceId: 'a' })).map(named)).toHaveLength(5);
        expect(await two.ledger.conflicts({ sourceId: 'a', studyId: 's10' })).toEqual([
          conflict({ studyId: 's10', instanceId: 'i4', attributes: [] }),
        ]);
        expect(await two.ledger.conflicts({ sourceId: 'ab' })).toEqual([
          conflict({ sourceId: 'ab', instanceId: 'i5', attributes: ['PatientID', 'PatientName'] }),
        ]);
        expect((await two.ledger.conflicts({ studyId: 's1' })).map(named)).toEqual([
          'a/s1/i3/d1',
          'a/s1/i1/d1',
          'a/s1/i1/d2',
          'a/s1/i2/d1',
          'ab/s1/i5/d1',
        ]);
        expect(await two.ledger.conflicts({ sourceId: 'c' })).toEqual([]);
        expect(await two.ledger.conflicts({ sourceId: 'a', studyId: 's2' })).toEqual([]);
      });

      it('keeps the first detection of a conflict, and the decision on it, when a move finds it again', async () => {
        const one = open();
        const two = open();
        await one.ledger.recordConflicts([
          conflict({ detectedAt: 10 }),
          conflict({ detectedAt: 5, attributes: ['content'] }),
        ]);
        await two.ledger.recordConflicts([conflict({ detectedAt: 20, attributes: ['PatientID'] })]);
        expect(await one.ledger.conflicts()).toEqual([conflict({ detectedAt: 10 })]);

        expect(await two.ledger.resolveConflict(conflict({}), 'keep-source', 30)).toBe(true);
        await one.ledger.recordConflicts([
          conflict({ detectedAt: 40, attributes: ['content'] }),
          conflict({ destinationId: 'd2', detectedAt: 40 }),
        ]);
        expect(await two.ledger.conflicts()).toEqual([
          { ...conflict({ detectedAt: 10 }), resolution: 'keep-source', resolvedAt: 30 },
          conflict({ destinationId: 'd2', detectedAt: 40 }),
        ]);
        expect(await two.ledger.conflicts({ openOnly: true })).toEqual([
          conflict({ destinationId: 'd2', detectedAt: 40 }),
        ]);
      });

      it('records a decision on a conflict once, and only on a recorded one', async () => {
        const one = open();
        const two = open();
        await one.ledger.recordConflicts([
          conflict({}),
          conflict({ destinationId: 'd2' }),
          conflict({ studyId: 's2', instanceId: 'i2' }),
        ]);
        const key = { sourceId: 'a', studyId: 's1', instanceId: 'i1', destinationId: 'd1' };
        expect(await one.ledger.resolveConflict({ ...key, sourceId: 'b' }, 'keep-source', 1)).toBe(false);
        expect(await one.ledger.resolveConflict({ ...key, studyId: 's2' }, 'keep-source', 1)).toBe(false);
        expect(await one.ledger.resolveConflict({ ...key, instanceId: 'i9' }, 'keep-source', 1)).toBe(false);
        expect(await one.ledger.resolveConflict({ ...key, destinationId: 'd3' }, 'keep-source', 1)).toBe(
          false,
        );
        expect(await one.ledger.conflicts({ openOnly: true })).toHaveLength(3);

        const racing = await Promise.all([
          one.ledger.resolveConflict(key, 'accept-destination', 10),
          two.ledger.resolveConflict(key, 'replace-destination', 10),
        ]);
        expect([...racing].sort()).toEqual([false, true]);
        const decided = racing[0] ? 'accept-destination' : 'replace-destination';
        expect(await two.ledger.resolveConflict(key, 'keep-source', 20)).toBe(false);
        expect(
          await two.ledger.resolveConflict({ ...key, studyId: 's2', instanceId: 'i2' }, 'keep-source', 30),
        ).toBe(true);
        await expect(
          one.ledger.resolveConflict({ ...key, destinationId: 'd2' }, 'delete' as 'keep-source', 40),
        ).rejects.toThrow(RangeError);

        expect(await one.ledger.conflicts()).toEqual([
          { ...conflict({}), resolution: decided, resolvedAt: 10 },
          conflict({ destinationId: 'd2' }),
          { ...conflict({ studyId: 's2', instanceId: 'i2' }), resolution: 'keep-source', resolvedAt: 30 },
        ]);
        expect(await one.ledger.conflicts({ sourceId: 'a', studyId: 's1', openOnly: true })).toEqual([
          conflict({ destinationId: 'd2' }),
        ]);
        expect(await one.ledger.conflicts({ studyId: 's2', openOnly: true })).toEqual([]);
      });

      it('records, lists and resolves more conflicts than one batch or page holds', async () => {
        const one = open();
        const two = open();
        const instances = ids('i', 120);
        await Promise.all([
          one.ledger.recordConflicts(instances.slice(0, 80).map((instanceId) => conflict({ instanceId }))),
          two.ledger.recordConflicts(instances.slice(40).map((instanceId) => conflict({ instanceId }))),
        ]);
        // Some on every page, the last included.
        const resolved = instances.filter((_, index) => index % 6 === 5);
        const results = await Promise.all(
          resolved.map((instanceId, index) =>
            (index % 2 === 0 ? one : two).ledger.resolveConflict(
              { sourceId: 'a', studyId: 's1', instanceId, destinationId: 'd1' },
              'keep-source',
              index,
            ),
          ),
        );
        expect(results.every(Boolean)).toBe(true);
        const listed = await two.ledger.conflicts({ sourceId: 'a', studyId: 's1' });
        expect(listed.map((c) => c.instanceId)).toEqual(instances);
        expect(listed[0]).toEqual(conflict({ instanceId: 'i000' }));
        expect(listed[119]).toEqual({
          ...conflict({ instanceId: 'i119' }),
          resolution: 'keep-source',
          resolvedAt: 19,
        });
        expect((await one.ledger.conflicts({ openOnly: true })).map((c) => c.instanceId)).toEqual(
          instances.filter((instanceId) => !resolved.includes(instanceId)),
        );
      });

      it('records skipped and unchanged outcomes without counting them as studies moved', async () => {
        const { ledger } = open();
        await ledger.record(outcome({ result: 'skipped', instances: 3 }));
        await ledger.record(
          outcome({ result: 'skipped', studyId: 's2', instances: 2, deleted: 2, deletedBytes: 20 }),
        );
        await ledger.record(outcome({ result: 'unchanged', studyId: 's3', instances: 4 }));
        // Deleted as unrouted: gone from the source, but not moved anywhere.
        const none = { moved: tally(0, 0, 0), copied: tally(0, 0, 0) };
        expect(await ledger.totals()).toEqual({
          ...none,
          deleted: 2,
          rejected: 0,
          sources: { a: { ...none, deleted: 2 } },
        });
      });

      it('counts what left each source since a time, from the start of the bucket that holds it', async () => {
        const one = open();
        const two = open();
        const bucket = movedBucketStart(CLOCK);
        const moved = { result: 'moved', deleted: 5, deletedBytes: 500 } as const;
        await Promise.all([
          one.ledger.record(outcome({ ...moved, finishedAt: bucket - 1 })),
          two.ledger.record(outcome({ ...moved, studyId: 's2', finishedAt: bucket + 1_000 })),
          one.ledger.record(
            outcome({
              result: 'partial',
              studyId: 's3',
              deleted: 2,
              deletedBytes: 20,
              finishedAt: bucket + 2_000,
            }),
          ),
          // Nothing of these left the source as moved: a copy, unrouted instances deleted, nothing found.
          two.ledger.record(
            outcome({ result: 'copied', studyId: 's4', sent: 3, bytes: 30, finishedAt: bucket }),
          ),
          one.ledger.record(outcome({ result: 'skipped', studyId: 's5', deleted: 1, deletedBytes: 9 })),
          two.ledger.record(outcome({ result: 'gone', studyId: 's6', finishedAt: bucket })),
          // Another source, and a source whose ID extends this one's.
          one.ledger.record(outcome({ ...moved, sourceId: 'b', finishedAt: bucket + 1_000 })),
          two.ledger.record(outcome({ ...moved, sourceId: 'ab', finishedAt: bucket + 1_000 })),
          one.ledger.record(
            outcome({ ...moved, studyId: 's7', finishedAt: bucket + MOVED_BUCKET_MS + 5, deleted: 1 }),
          ),
        ]);
        // From within a bucket: the whole bucket counts.
        expect(await one.ledger.movedSince('a', bucket + 2_500)).toEqual(tally(2, 8, 1_020));
        expect(await two.ledger.movedSince('a', bucket - 1)).toEqual(tally(3, 13, 1_520));
        expect(await one.ledger.movedSince('a', bucket + MOVED_BUCKET_MS)).toEqual(tally(1, 1, 500));
        expect(await one.ledger.movedSince('a', bucket + 2 * MOVED_BUCKET_MS)).toEqual(tally(0, 0, 0));
        expect(await two.ledger.movedSince('b', bucket)).toEqual(tally(1, 5, 500));
        expect(await two.ledger.movedSince('c', bucket - DAY_MS)).toEqual(tally(0, 0, 0));
      });
    });

    describe('audit trail of deletions', () => {
      it('keeps a deletion in parts and lists a period in order of time, source, study, series and part, page by page', async () => {
        const one = open();
        const two = open();
        const big = deletion({
          studyId: 's2',
          at: CLOCK + 1,
          instances: deletedInstances(2 * DELETION_PART_SIZE + 5),
        });
        const first = deletion({});
        const otherSource = deletion({ sourceId: 'ab' });
        const series = deletion({
          studyId: 's2',
          seriesId: 'r1',
          at: CLOCK + 1,
          instances: deletedInstances(1, 'j'),
        });
        // Two days later, an empty day between: deleted as unrouted, no destination.
        const unrouted = deletion({ at: CLOCK + 2 * DAY_MS, verifiedBy: [] });
        const before = deletion({ at: CLOCK - 1 });
        const atTheEnd = deletion({ at: CLOCK + 3 * DAY_MS });
        for (const record of [atTheEnd, unrouted, series, big, before, otherSource, first]) {
          await one.ledger.recordDeletion(record);
        }

        const period = { since: CLOCK, until: CLOCK + 3 * DAY_MS };
        const { parts, pages } = await allDeletions(two.ledger, period, 2);
        // No intent was recorded for them, so nothing says a deletion is still under way.
        expect(parts).toEqual([
          part(first, 0, 'deleted'),
          part(otherSource, 0, 'deleted'),
          part(big, 0, 'deleted'),
          part(big, 1, 'deleted'),
          part(big, 2, 'deleted'),
          part(series, 0, 'deleted'),
          part(unrouted, 0, 'deleted'),
        ]);
        expect(pages).toBeGreaterThanOrEqual(4);
        expect(
          parts.filter((p) => p.studyId === 's2' && p.seriesId === '').flatMap((p) => p.instances),
        ).toEqual(big.instances);
        expect((await allDeletions(two.ledger, { ...period, sourceId: 'ab' }, 5)).parts).toEqual([
          part(otherSource, 0, 'deleted'),
        ]);
        expect(
          (await allDeletions(two.ledger, { since: CLOCK + 2, until: CLOCK + 2 * DAY_MS }, 10)).parts,
        ).toEqual([]);
        // One page holds them all: no next page.
        expect((await two.ledger.deletions(period, { limit: 100 })).next).toBeUndefined();
      });

      it('reads a deletion as deleting while its intent is open, deleted once completed, confirmed or followed', async () => {
        const one = open();
        const two = open();
        const status = async () =>
          (await allDeletions(two.ledger, { since: CLOCK, until: CLOCK + DAY_MS }, 10)).parts.map(
            (p) => `${p.seriesId || 'study'}@${p.at - CLOCK}:${p.status}`,
          );
        await one.ledger.recordIntent(intent({}));
        await one.ledger.recordDeletion(deletion({}));
        await one.ledger.recordIntent(intent({ seriesId: 'r1', at: CLOCK + 5 }));
        await one.ledger.recordDeletion(deletion({ seriesId: 'r1', at: CLOCK + 5 }));
        expect(await status()).toEqual(['study@0:deleting', 'r1@5:deleting']);

        await two.ledger.completeIntent('a', 's1', '', CLOCK + 1);
        expect(await status()).toEqual(['study@0:deleted', 'r1@5:deleting']);

        // The study's next deletion: the first stays deleted, the new one is under way.
        await one.ledger.recordIntent(intent({ at: CLOCK + 10 }));
        await one.ledger.recordDeletion(deletion({ at: CLOCK + 10 }));
        expect(await status()).toEqual(['study@0:deleted', 'r1@5:deleting', 'study@10:deleting']);

        // Confirmed by a later move, whose own deletion then replaces the intent.
        await one.ledger.confirmDeletion(
          { sourceId: 'a', studyId: 's1', seriesId: 'r1', at: CLOCK + 5 },
          new Set(),
        );
        expect(await status()).toEqual(['study@0:deleted', 'r1@5:deleted', 'study@10:deleting']);
        await one.ledger.recordIntent(intent({ at: CLOCK + 20 }));
        expect(await status()).toEqual(['study@0:deleted', 'r1@5:deleted', 'study@10:deleted']);
      });

      it('confirms a deletion once: only the instances gone from the source stay, and a part left empty goes', async () => {
        const one = open();
        const two = open();
        const record = deletion({ instances: deletedInstances(2 * DELETION_PART_SIZE + 5) });
        const untouched = deletion({ studyId: 's2' });
        await one.ledger.recordIntent(intent({}));
        await one.ledger.recordDeletion(record);
        await one.ledger.recordDeletion(untouched);
        const key = { sourceId: 'a', studyId: 's1', seriesId: '', at: CLOCK };
        // Still at the source: the second part whole, and the first part's first ten.
        const still = new Set([
          ...record.instances.slice(0, 10).map((i) => i.instanceId),
          ...record.instances.slice(DELETION_PART_SIZE, 2 * DELETION_PART_SIZE).map((i) => i.instanceId),
        ]);
        // A key that names no recorded deletion changes nothing.
        await one.ledger.confirmDeletion({ ...key, at: CLOCK + 1 }, still);
        await one.ledger.confirmDeletion(key, still);
        const period = { since: CLOCK, until: CLOCK + 1_000 };
        const confirmed = [
          { ...part(record, 0, 'deleted'), instances: record.instances.slice(10, DELETION_PART_SIZE) },
          part(record, 2, 'deleted'),
        ];
        expect((await allDeletions(two.ledger, period, 10)).parts).toEqual([
          ...confirmed,
          part(untouched, 0, 'deleted'),
        ]);

        // Once: a confirmed deletion is left as it is, whatever is said of it later.
        await two.ledger.confirmDeletion(key, new Set(record.instances.map((i) => i.instanceId)));
        expect((await allDeletions(one.ledger, period, 10)).parts).toEqual([
          ...confirmed,
          part(untouched, 0, 'deleted'),
        ]);

        // Nothing of it gone: the whole record goes.
        await one.ledger.confirmDeletion(
          { ...key, studyId: 's2' },
          new Set(untouched.instances.map((i) => i.instanceId)),
        );
        expect((await allDeletions(two.ledger, period, 10)).parts).toEqual(confirmed);
      });
    });
  });
};
