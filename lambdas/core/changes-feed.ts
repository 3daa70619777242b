/**
 * Turns a source's change feed into work items, at least once: the cursor moves only after the
 * items of the changes it passes are durably queued or watched.
 *
 * StableStudy is the trigger, but Orthanc forgets stability when it restarts: a study received
 * before a restart never gets its StableStudy change. So every study seen in a NewStudy change
 * is watched until it is queued, and queued once Orthanc calls it stable or it has been quiet
 * (its LastUpdate unchanged) for the configured time. An occasional sweep of all studies adds
 * what the feed cannot show (changes lost with a wiped database, late instances after a restart).
 */

import { runBounded } from './concurrency.ts';
import type { Log } from './log.ts';
import type { OrthancClient } from './orthanc-client.ts';
import type { FeedStateStore, WorkItem, WorkSink } from './ports.ts';

export interface FeedContext {
  readonly sourceId: string;
  readonly source: OrthancClient;
  readonly store: FeedStateStore;
  readonly sink: WorkSink;
  readonly log: Log;
  readonly pageSize: number;
  readonly quietMs: number;
  readonly now?: () => number;
  /**
   * Epoch ms after which no further page is read (a Lambda about to time out). The cursor
   * stands where the last durable page left it; the next poll goes on from there.
   */
  readonly deadline?: number | undefined;
}

export interface PollReport {
  readonly changesRead: number;
  readonly queued: number;
  /** Studies still waiting to become stable or quiet. */
  readonly waiting: number;
  /** The source's database was found reset (its Last below our cursor). */
  readonly reset: boolean;
  readonly cursor: number;
  /** The newest change sequence number the source reported. */
  readonly last: number;
  /** Another reader moved the cursor under us: this read stopped early. */
  readonly raced: boolean;
  /** The deadline stopped the read before the feed's end. */
  readonly outOfTime?: boolean | undefined;
}

interface ReadReport {
  /** The deadline stopped the read before Done. */
  outOfTime?: boolean;
  changesRead: number;
  queued: number;
  reset: boolean;
  raced: boolean;
  cursor: number;
  last: number;
}

const item = (sourceId: string, studyId: string, reason: WorkItem['reason']): WorkItem => ({
  sourceId,
  studyId,
  reason,
});

/** Reads the feed from the stored cursor until Orthanc says Done. */
export const readChanges = async (ctx: FeedContext): Promise<ReadReport> => {
  const stored = await ctx.store.getCursor(ctx.sourceId);
  const report: ReadReport = {
    changesRead: 0,
    queued: 0,
    reset: false,
    raced: false,
    cursor: stored ?? 0,
    last: 0,
  };
  let expected = stored;
  const queuedThisRead = new Set<string>();
  for (;;) {
    const page = await ctx.source.changes(report.cursor, ctx.pageSize);
    report.last = page.last;
    if (page.last < report.cursor) {
      ctx.log.warn('source database was reset: reading its change feed from the start', {
        sourceId: ctx.sourceId,
        cursor: report.cursor,
        last: page.last,
      });
      report.reset = true;
      if (!(await ctx.store.advanceCursor(ctx.sourceId, expected, 0))) return { ...report, raced: true };
      expected = 0;
      report.cursor = 0;
      continue;
    }
    const stable = new Set<string>();
    const created = new Set<string>();
    for (const change of page.changes) {
      if (change.changeType === 'StableStudy') stable.add(change.id);
      else if (change.changeType === 'NewStudy') created.add(change.id);
    }
    const fresh = [...stable].filter((id) => !queuedThisRead.has(id));
    await ctx.store.watch(
      ctx.sourceId,
      [...created].filter((id) => !stable.has(id)),
      (ctx.now ?? Date.now)(),
    );
    await ctx.sink.enqueue(fresh.map((id) => item(ctx.sourceId, id, 'stable')));
    await ctx.store.unwatch(ctx.sourceId, [...stable]);
    for (const id of fresh) queuedThisRead.add(id);
    report.queued += fresh.length;
    report.changesRead += page.changes.length;
    const next = page.changes.reduce((max, change) => Math.max(max, change.seq), report.cursor);
    const target = page.done ? Math.max(next, page.last) : next;
    if (target !== report.cursor || expected === undefined) {
      if (!(await ctx.store.advanceCursor(ctx.sourceId, expected, target))) return { ...report, raced: true };
      expected = target;
      report.cursor = target;
    }
    if (page.done || page.changes.length === 0) return report;
    if (ctx.deadline !== undefined && (ctx.now ?? Date.now)() >= ctx.deadline)
      return { ...report, outOfTime: true };
  }
};

/** Queues watched studies that Orthanc calls stable or that have been quiet long enough. */
export const checkWatched = async (ctx: FeedContext): Promise<{ queued: number; waiting: number }> => {
  const now = (ctx.now ?? Date.now)();
  const watched = await ctx.store.watched(ctx.sourceId);
  const ready: WorkItem[] = [];
  const gone: string[] = [];
  await runBounded(watched, 8, async (entry) => {
    const study = await ctx.source.study(entry.studyId);
    if (study === undefined) {
      gone.push(entry.studyId);
    } else if (study.isStable) {
      ready.push(item(ctx.sourceId, entry.studyId, 'stable'));
    } else if (study.lastUpdate !== entry.lastUpdate) {
      await ctx.store.updateWatched(ctx.sourceId, {
        ...entry,
        lastUpdate: study.lastUpdate,
        lastUpdateSeenAt: now,
      });
    } else if (now - entry.lastUpdateSeenAt >= ctx.quietMs) {
      ready.push(item(ctx.sourceId, entry.studyId, 'quiet'));
    }
  });
  await ctx.sink.enqueue(ready);
  await ctx.store.unwatch(ctx.sourceId, [...gone, ...ready.map((r) => r.studyId)]);
  return { queued: ready.length, waiting: watched.length - ready.length - gone.length };
};

/** Watches every study the source holds: the safety net for what the feed cannot show. */
export const sweepStudies = async (ctx: FeedContext): Promise<number> => {
  const ids = await ctx.source.studyIds();
  await ctx.store.watch(ctx.sourceId, ids, (ctx.now ?? Date.now)());
  return ids.length;
};

/** One poll of one source: the feed, an optional sweep, then the watch list. */
export const pollSource = async (ctx: FeedContext, options: { sweep: boolean }): Promise<PollReport> => {
  const read = await readChanges(ctx);
  if (options.sweep) await sweepStudies(ctx);
  const watched = await checkWatched(ctx);
  return { ...read, queued: read.queued + watched.queued, waiting: watched.waiting };
};
