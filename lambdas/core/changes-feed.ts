/**
 * Turns a source's change feed into work items, at least once: the cursor moves only after the
 * items of the changes it passes are durably queued or watched.
 *
 * The trigger is StableStudy (a study item), StableSeries (a series item) or NewInstance (an
 * item for the instance's study, at once). Orthanc forgets stability when it restarts: a study
 * received before a restart never gets its stable changes. So every study seen in a NewStudy
 * change is watched until its StableStudy change, and queued whole once Orthanc calls it stable
 * or it has been quiet (its LastUpdate unchanged) for the configured time. An occasional sweep of
 * all studies adds what the feed cannot show (changes lost with a wiped database, late instances
 * after a restart).
 */

import { runBounded } from './concurrency.ts';
import type { ForwarderConfig } from './config.ts';
import type { Log } from './log.ts';
import type { OrthancClient } from './orthanc-client.ts';
import type { FeedStateStore, WorkItem, WorkSink } from './ports.ts';

export type Trigger = ForwarderConfig['trigger'];

export interface FeedContext {
  readonly sourceId: string;
  /** Which change makes work; StableStudy when absent. */
  readonly trigger?: Trigger | undefined;
  /**
   * Whether the study was left at the source on purpose (copied, or skipped by the filters) and
   * has not changed since: such a watched study leaves the watch list without being queued, so
   * that a sweep does not queue every copied or skipped study again.
   */
  readonly isSettled?:
    | ((sourceId: string, studyId: string, lastUpdate: string | undefined) => Promise<boolean>)
    | undefined;
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
  /** Studies this read put on the watch list and left there. */
  watched: Set<string>;
  /** Studies this read took off the watch list (Orthanc called them stable). */
  unwatched: Set<string>;
  changesRead: number;
  queued: number;
  reset: boolean;
  raced: boolean;
  cursor: number;
  last: number;
}

const item = (
  sourceId: string,
  studyId: string,
  reason: WorkItem['reason'],
  seriesId?: string,
): WorkItem => ({
  sourceId,
  studyId,
  ...(seriesId === undefined ? {} : { seriesId }),
  reason,
});

/** The key that de-duplicates items within one read. */
const itemKey = (workItem: WorkItem) => `${workItem.studyId}/${workItem.seriesId ?? ''}`;

/** Lookups of a page's series or instances, a few at a time: each is a few ms at the source. */
const LOOKUPS_IN_FLIGHT = 8;

/** Series items for StableSeries changes: one lookup per series for its study. */
const seriesItems = async (ctx: FeedContext, seriesIds: readonly string[]): Promise<WorkItem[]> => {
  const items: WorkItem[] = [];
  await runBounded(seriesIds, LOOKUPS_IN_FLIGHT, async (seriesId) => {
    const series = await ctx.source.series(seriesId);
    // Gone already: moved with its study, or deleted.
    if (series !== undefined) items.push(item(ctx.sourceId, series.studyId, 'stable', seriesId));
  });
  return items;
};

/**
 * Study items for NewInstance changes: one lookup per instance (GET /instances/{id}/study, which
 * names the study in one request), one item per study.
 */
const instanceItems = async (ctx: FeedContext, instanceIds: readonly string[]): Promise<WorkItem[]> => {
  const studies = new Set<string>();
  await runBounded(instanceIds, LOOKUPS_IN_FLIGHT, async (instanceId) => {
    const study = await ctx.source.instanceStudy(instanceId);
    if (study !== undefined) studies.add(study.id);
  });
  return [...studies].map((studyId) => item(ctx.sourceId, studyId, 'instance'));
};

/** The items a page of changes makes under the trigger. */
const pageItems = async (
  ctx: FeedContext,
  changes: {
    readonly stableStudies: Set<string>;
    readonly stableSeries: Set<string>;
    readonly instances: Set<string>;
  },
): Promise<WorkItem[]> => {
  switch (ctx.trigger ?? 'StableStudy') {
    case 'StableStudy':
      return [...changes.stableStudies].map((id) => item(ctx.sourceId, id, 'stable'));
    case 'StableSeries':
      return seriesItems(ctx, [...changes.stableSeries]);
    case 'NewInstance':
      return instanceItems(ctx, [...changes.instances]);
  }
};

/**
 * Reads the feed from the stored cursor until Orthanc says Done. Items in `alreadyQueued` (by
 * the watch-list check of the same poll) are not queued again.
 */
export const readChanges = async (
  ctx: FeedContext,
  alreadyQueued: ReadonlySet<string> = new Set(),
): Promise<ReadReport> => {
  const stored = await ctx.store.getCursor(ctx.sourceId);
  const report: ReadReport = {
    changesRead: 0,
    queued: 0,
    reset: false,
    raced: false,
    cursor: stored ?? 0,
    last: 0,
    watched: new Set(),
    unwatched: new Set(),
  };
  let expected = stored;
  const queuedThisRead = new Set<string>(alreadyQueued);
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
    const stableSeries = new Set<string>();
    const instances = new Set<string>();
    for (const change of page.changes) {
      if (change.changeType === 'StableStudy') stable.add(change.id);
      else if (change.changeType === 'NewStudy') created.add(change.id);
      else if (change.changeType === 'StableSeries') stableSeries.add(change.id);
      else if (change.changeType === 'NewInstance') instances.add(change.id);
    }
    const fresh = (await pageItems(ctx, { stableStudies: stable, stableSeries, instances })).filter(
      (workItem) => !queuedThisRead.has(itemKey(workItem)),
    );
    const toWatch = [...created].filter((id) => !stable.has(id));
    await ctx.store.watch(ctx.sourceId, toWatch, (ctx.now ?? Date.now)());
    for (const id of toWatch) report.watched.add(id);
    await ctx.sink.enqueue(fresh);
    // A study Orthanc calls stable needs the watch list no more: under StableStudy it is queued;
    // under the other triggers its series or instances were.
    await ctx.store.unwatch(ctx.sourceId, [...stable]);
    for (const id of stable) {
      report.watched.delete(id);
      report.unwatched.add(id);
    }
    for (const workItem of fresh) queuedThisRead.add(itemKey(workItem));
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
export const checkWatched = async (
  ctx: FeedContext,
): Promise<{ queued: number; waiting: string[]; keys: Set<string> }> => {
  const now = (ctx.now ?? Date.now)();
  const watched = await ctx.store.watched(ctx.sourceId);
  const ready: WorkItem[] = [];
  // Gone, or settled and unchanged: nothing to queue, nothing to wait for.
  const done: string[] = [];
  await runBounded(watched, LOOKUPS_IN_FLIGHT, async (entry) => {
    const study = await ctx.source.study(entry.studyId);
    const queue = async (reason: WorkItem['reason']) => {
      if (await ctx.isSettled?.(ctx.sourceId, entry.studyId, study?.lastUpdate)) done.push(entry.studyId);
      else ready.push(item(ctx.sourceId, entry.studyId, reason));
    };
    if (study === undefined) {
      done.push(entry.studyId);
    } else if (study.isStable && (ctx.trigger ?? 'StableStudy') === 'StableStudy') {
      // Under the series and instance triggers their own changes queue the study's parts: a
      // whole-study item then waits for the quiet time, as the safety net it is.
      await queue('stable');
    } else if (study.lastUpdate !== entry.lastUpdate) {
      await ctx.store.updateWatched(ctx.sourceId, {
        ...entry,
        lastUpdate: study.lastUpdate,
        lastUpdateSeenAt: now,
      });
    } else if (now - entry.lastUpdateSeenAt >= ctx.quietMs) {
      await queue('quiet');
    }
  });
  await ctx.sink.enqueue(ready);
  const left = new Set([...done, ...ready.map((r) => r.studyId)]);
  await ctx.store.unwatch(ctx.sourceId, [...left]);
  return {
    queued: ready.length,
    waiting: watched.map((entry) => entry.studyId).filter((id) => !left.has(id)),
    keys: new Set(ready.map(itemKey)),
  };
};

/** Watches every study the source holds: the safety net for what the feed cannot show. */
export const sweepStudies = async (ctx: FeedContext): Promise<number> => {
  const ids = await ctx.source.studyIds();
  await ctx.store.watch(ctx.sourceId, ids, (ctx.now ?? Date.now)());
  return ids.length;
};

/**
 * One poll of one source: an optional sweep, the watch list, then the feed. The watch list goes
 * first: Orthanc flags a study stable and logs its StableStudy change at one moment, so a check
 * that follows the read could queue a study whose change the next poll queues again; this way
 * the read skips what the check just queued.
 */
export const pollSource = async (ctx: FeedContext, options: { sweep: boolean }): Promise<PollReport> => {
  if (options.sweep) await sweepStudies(ctx);
  const watched = await checkWatched(ctx);
  const { watched: newlyWatched, unwatched, ...read } = await readChanges(ctx, watched.keys);
  // What the watch list holds now: a study the check left waiting may have turned stable in the read.
  const waiting = new Set([...watched.waiting.filter((id) => !unwatched.has(id)), ...newlyWatched]);
  return { ...read, queued: read.queued + watched.queued, waiting: waiting.size };
};
