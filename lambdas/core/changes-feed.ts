/**
 * Turns a source's change feed into work items, at least once: the cursor moves only after the
 * items of the changes it passes are durably queued or watched.
 *
 * The trigger is StableStudy (a study item), StableSeries (a series item) or NewInstance (an
 * item for the instance's study, at once). Orthanc forgets stability when it restarts: a study
 * received before a restart never gets its stable changes. So every study seen in a NewStudy
 * change is watched until its StableStudy change (feed-watch.ts), and a periodic sweep of all
 * studies (feed-sweep.ts) adds what the feed cannot show.
 *
 * A poll does the three within its deadline, feed first, each carrying its place across polls,
 * so that each makes headway at every poll however large the source.
 *
 * What the feed reads as it happens is queued as `new`; the source's history, read the first time
 * (or again after a reset), and what the sweep finds are the `backlog`, served after it.
 */

import {
  type Candidate,
  clock,
  type FeedContext,
  loadProgress,
  lookUpAll,
  lookUpEach,
  mayMoveNow,
  type ProgressRef,
  pastDeadline,
  queueStudies,
  type Tally,
  type Trigger,
  workItem,
} from './feed-context.ts';
import { sweepSome } from './feed-sweep.ts';
import { lookAtWatched } from './feed-watch.ts';
import { windowOpen } from './move-timing.ts';
import type { Change, ChangesPage } from './orthanc-client.ts';
import type { WorkPriority } from './ports.ts';

export type { FeedContext } from './feed-context.ts';

export interface PollReport {
  readonly changesRead: number;
  readonly queued: number;
  /** Studies on the watch list when the poll ended, waiting to become stable or quiet. */
  readonly waiting: number;
  /** The source's database was found reset (its Last below our cursor, twice): read from the start. */
  readonly reset: boolean;
  readonly cursor: number;
  /** The newest change sequence number the source reported. */
  readonly last: number;
  /** Another reader moved the cursor under us: this read stopped early. */
  readonly raced: boolean;
  /** The deadline stopped the feed or the watch list before its end: the next poll goes on. */
  readonly outOfTime: boolean;
  /** A sweep is under way: the next poll goes on with it. */
  readonly sweeping: boolean;
  /** Studies the sweep listed in this poll. */
  readonly swept: number;
  /** Lookups the source answered with an error, each logged and left for later. */
  readonly lookupFailures: number;
  /** Studies (or series) not queued since they may not move yet (transfer window, minimum age). */
  readonly held: number;
  /** The source is paused (`orthanc-forwarder pause`): it was not asked anything. */
  readonly paused: boolean;
}

interface ReadReport {
  changesRead: number;
  reset: boolean;
  raced: boolean;
  outOfTime: boolean;
  cursor: number;
  last: number;
}

/** The change each trigger makes work of, each needing one lookup at the source. */
const TRIGGER_CHANGE: Readonly<Record<Trigger, string>> = {
  StableStudy: 'StableStudy',
  StableSeries: 'StableSeries',
  NewInstance: 'NewInstance',
};

/**
 * A page's changes are handled in chunks of at most this many lookups, the cursor advanced after
 * each: a deadline that passes mid-page costs at most one chunk's lookups.
 */
export const CHUNK_LOOKUPS = 64;

const chunksOf = (changes: readonly Change[], trigger: Trigger): Change[][] => {
  const chunks: Change[][] = [];
  let chunk: Change[] = [];
  let lookups = 0;
  for (const change of changes) {
    if (change.changeType === TRIGGER_CHANGE[trigger]) {
      if (lookups === CHUNK_LOOKUPS) {
        chunks.push(chunk);
        chunk = [];
        lookups = 0;
      }
      lookups++;
    }
    chunk.push(change);
  }
  if (chunk.length > 0) chunks.push(chunk);
  return chunks;
};

const idsOf = (changes: readonly Change[], type: string): string[] => [
  ...new Set(changes.filter((change) => change.changeType === type).map((change) => change.id)),
];

/**
 * StableStudy changes: each study as it is now, so that the sweep can tell it was queued in this
 * state. One gone is not queued; one that cannot be looked at is queued all the same.
 */
const stableCandidates = async (
  ctx: FeedContext,
  studyIds: readonly string[],
  priorityOf: (id: string) => WorkPriority,
): Promise<Candidate[]> => {
  const results = await lookUpEach(ctx, studyIds, (id) => ctx.source.study(id));
  return studyIds.flatMap((studyId): Candidate[] => {
    const priority = priorityOf(studyId);
    const result = results.get(studyId);
    if (result === undefined || !('found' in result))
      return [{ studyId, lastUpdate: undefined, steady: false, reason: 'stable', priority }];
    const study = result.found;
    return study === undefined
      ? []
      : [
          {
            studyId,
            lastUpdate: study.lastUpdate,
            studyDate: study.studyDate,
            steady: study.isStable,
            reason: 'stable',
            priority,
          },
        ];
  });
};

/** NewInstance changes: one lookup per instance (GET /instances/{id}/study), one candidate per study. */
const instanceCandidates = async (
  ctx: FeedContext,
  tally: Tally,
  instanceIds: readonly string[],
  priorityOf: (id: string) => WorkPriority,
): Promise<Candidate[]> => {
  const found = await lookUpAll(
    ctx,
    tally,
    instanceIds,
    (id) => ctx.source.instanceStudy(id),
    "an instance's study could not be looked up: the sweep queues it",
  );
  const studies = new Map<string, Candidate>();
  for (const [instanceId, study] of found) {
    if (study !== undefined)
      studies.set(study.id, {
        studyId: study.id,
        lastUpdate: study.lastUpdate,
        studyDate: study.studyDate,
        steady: study.isStable,
        reason: 'instance',
        // New as soon as one of its instances is.
        priority: studies.get(study.id)?.priority === 'new' ? 'new' : priorityOf(instanceId),
      });
  }
  return [...studies.values()];
};

/** StableSeries changes: one lookup per series for its study, one series item each. */
const queueSeries = async (
  ctx: FeedContext,
  tally: Tally,
  seriesIds: readonly string[],
  queued: Set<string>,
  priorityOf: (id: string) => WorkPriority,
): Promise<void> => {
  const found = await lookUpAll(
    ctx,
    tally,
    seriesIds,
    (id) => ctx.source.series(id),
    'a stable series could not be looked up: the sweep queues its study',
  );
  const items = seriesIds.flatMap((seriesId) => {
    const series = found.get(seriesId);
    // Gone already (moved with its study, or deleted), or queued by this read.
    if (series === undefined || queued.has(seriesId)) return [];
    // Held back: the sweep queues its study whole once it may move.
    if (!mayMoveNow(ctx, series)) {
      tally.held++;
      return [];
    }
    return [workItem(ctx.sourceId, series.studyId, 'stable', priorityOf(seriesId), seriesId)];
  });
  await ctx.sink.enqueue(items);
  tally.queued += items.length;
  for (const item of items) queued.add(item.seriesId ?? '');
};

/**
 * Per resource of the chunk's changes under the trigger: `backlog` when its newest change is of
 * the source's history (up to `backlogThrough`), `new` otherwise.
 */
const prioritiesOf = (
  changes: readonly Change[],
  trigger: Trigger,
  backlogThrough: number | undefined,
): ((id: string) => WorkPriority) => {
  const newest = new Map<string, number>();
  for (const change of changes) {
    if (change.changeType === TRIGGER_CHANGE[trigger])
      newest.set(change.id, Math.max(change.seq, newest.get(change.id) ?? 0));
  }
  return (id) => ((newest.get(id) ?? Number.POSITIVE_INFINITY) <= (backlogThrough ?? -1) ? 'backlog' : 'new');
};

/** Queues what a chunk of changes makes under the trigger; `queued` keeps one item per read. */
const queueChunk = async (
  ctx: FeedContext,
  tally: Tally,
  chunk: readonly Change[],
  queued: Set<string>,
  backlogThrough: number | undefined,
): Promise<void> => {
  const trigger = ctx.trigger ?? 'StableStudy';
  const ids = idsOf(chunk, TRIGGER_CHANGE[trigger]);
  const priorityOf = prioritiesOf(chunk, trigger, backlogThrough);
  if (trigger === 'StableSeries') return queueSeries(ctx, tally, ids, queued, priorityOf);
  const candidates =
    trigger === 'StableStudy'
      ? await stableCandidates(ctx, ids, priorityOf)
      : await instanceCandidates(ctx, tally, ids, priorityOf);
  for (const studyId of await queueStudies(
    ctx,
    tally,
    candidates.filter((c) => !queued.has(c.studyId)),
  ))
    queued.add(studyId);
};

/** Makes a chunk's effects durable: new studies watched, work queued, stable studies unwatched. */
const applyChunk = async (
  ctx: FeedContext,
  tally: Tally,
  chunk: readonly Change[],
  queued: Set<string>,
  backlogThrough: number | undefined,
) => {
  const stable = new Set(idsOf(chunk, 'StableStudy'));
  const created = idsOf(chunk, 'NewStudy').filter((id) => !stable.has(id));
  await ctx.store.watch(ctx.sourceId, created, clock(ctx));
  await queueChunk(ctx, tally, chunk, queued, backlogThrough);
  // A study Orthanc calls stable needs the watch list no more: under StableStudy it is queued;
  // under the other triggers its series or instances were.
  await ctx.store.unwatch(ctx.sourceId, [...stable]);
};

/**
 * A database reset (wiped, restored from a backup, replaced) numbers its changes from the start
 * again, and the cursor means nothing there. Orthanc answers `since` with the changes after it
 * only, so Last can fall below the cursor only in an empty page, where it is the database's
 * newest change; `/changes?last`, asked next, reads that again by another path. Both must say
 * so: one odd answer (a balancer that asked another server, a proxy's stale copy, a sequence
 * number read as negative) never makes the reader queue the whole feed again.
 */
const resetConfirmed = async (ctx: FeedContext, page: ChangesPage, cursor: number): Promise<boolean> =>
  page.changes.length === 0 && (await ctx.source.lastChange()) < cursor;

/**
 * Marks the source's history: its changes up to its newest one, when the feed is read from the
 * start (the first time, or after a reset). Kept in the progress, so that the polls that go on
 * with the same read still queue their studies as backlog. Another poll that saved first read the
 * same start and marked it.
 */
const markHistory = async (ctx: FeedContext, progress: ProgressRef): Promise<void> => {
  await progress.save({ ...progress.current, backlogThrough: await ctx.source.lastChange() });
};

/** Reads the feed from the stored cursor until Orthanc says Done, or the deadline. */
const readChanges = async (
  ctx: FeedContext,
  tally: Tally,
  progress: ProgressRef,
  deadline: number | undefined,
): Promise<ReadReport> => {
  let expected = await ctx.store.getCursor(ctx.sourceId);
  // Marked once the first page is in: the feed is read first, at every poll.
  let fromStart = expected === undefined;
  const report: ReadReport = {
    changesRead: 0,
    reset: false,
    raced: false,
    outOfTime: false,
    cursor: expected ?? 0,
    last: 0,
  };
  const advance = async (target: number): Promise<boolean> => {
    if (target === report.cursor && expected !== undefined) return true;
    if (!(await ctx.store.advanceCursor(ctx.sourceId, expected, target))) return false;
    expected = target;
    report.cursor = target;
    return true;
  };
  const queued = new Set<string>();
  for (;;) {
    if (pastDeadline(ctx, deadline)) return { ...report, outOfTime: true };
    const page = await ctx.source.changes(report.cursor, ctx.pageSize);
    report.last = page.last;
    if (fromStart) {
      await markHistory(ctx, progress);
      fromStart = false;
    }
    if (page.last < report.cursor) {
      const attributes = { sourceId: ctx.sourceId, cursor: report.cursor, last: page.last };
      if (!(await resetConfirmed(ctx, page, report.cursor))) {
        ctx.log.warn(
          'the source answered a last change below the cursor once: not taken for a reset',
          attributes,
        );
        return report;
      }
      ctx.log.warn('source database was reset: reading its change feed from the start', attributes);
      report.reset = true;
      report.cursor = 0;
      if (!(await ctx.store.advanceCursor(ctx.sourceId, expected, 0))) return { ...report, raced: true };
      expected = 0;
      fromStart = true;
      continue;
    }
    const chunks = chunksOf(page.changes, ctx.trigger ?? 'StableStudy');
    for (const [index, chunk] of chunks.entries()) {
      await applyChunk(ctx, tally, chunk, queued, progress.current.backlogThrough);
      report.changesRead += chunk.length;
      const next = Math.max(report.cursor, ...chunk.map((change) => change.seq));
      if (!(await advance(next))) return { ...report, raced: true };
      if (index < chunks.length - 1 && pastDeadline(ctx, deadline)) return { ...report, outOfTime: true };
    }
    if (page.done && !(await advance(Math.max(report.cursor, page.last)))) return { ...report, raced: true };
    if (page.done || page.changes.length === 0) return report;
  }
};

/** What a second read adds to the first one of the same poll. */
const followedBy = (first: ReadReport, second: ReadReport): ReadReport => ({
  ...second,
  changesRead: first.changesRead + second.changesRead,
  reset: first.reset || second.reset,
});

/**
 * The deadline of a phase that may take half the time left: the feed, then the watch list, each
 * always get some (the one before may have run past its own deadline, by a chunk or a page).
 */
const halfOfWhatIsLeft = (ctx: FeedContext): number | undefined =>
  ctx.deadline === undefined ? undefined : (clock(ctx) + ctx.deadline) / 2;

/**
 * A paused source is not read at all: its cursor stays where it is, so that the poll after it is
 * resumed reads every change made meanwhile, and nothing is asked of a server an operator may be
 * working on.
 */
const pausedReport = async (ctx: FeedContext): Promise<PollReport> => {
  const cursor = (await ctx.store.getCursor(ctx.sourceId)) ?? 0;
  return {
    changesRead: 0,
    queued: 0,
    waiting: await ctx.store.watchedCount(ctx.sourceId),
    reset: false,
    cursor,
    last: cursor,
    raced: false,
    outOfTime: false,
    sweeping: false,
    swept: 0,
    lookupFailures: 0,
    held: 0,
    paused: true,
  };
};

/**
 * One poll of one source: the feed, the watch list, then the sweep, each until it is done or its
 * share of the time ends (half of what is left for the first two, the rest for the sweep); what
 * time is left then goes to the feed and the watch list, if they did not finish. `sweepNow`, or
 * an operator's request in the store (`orthanc-forwarder sweep`), starts a sweep that is not due
 * yet; a request is cleared once its sweep started.
 */
export const pollSource = async (
  ctx: FeedContext,
  options: { sweepNow?: boolean } = {},
): Promise<PollReport> => {
  const control = await ctx.store.control(ctx.sourceId);
  if (control.pausedAt !== undefined) return pausedReport(ctx);
  const tally: Tally = { queued: 0, lookupFailures: 0, held: 0 };
  const progress = await loadProgress(ctx);
  let read = await readChanges(ctx, tally, progress, halfOfWhatIsLeft(ctx));
  const report = async (
    extra: Pick<PollReport, 'sweeping' | 'swept'>,
    watchDone: boolean,
  ): Promise<PollReport> => ({
    ...read,
    ...extra,
    ...tally,
    outOfTime: read.outOfTime || !watchDone,
    waiting: await ctx.store.watchedCount(ctx.sourceId),
    paused: false,
  });
  // Another reader is at it: the rest is its to do.
  if (read.raced) return report({ sweeping: false, swept: 0 }, true);
  let watch = await lookAtWatched(ctx, tally, progress, halfOfWhatIsLeft(ctx));
  const requested = control.sweepRequestedAt;
  const sweepNow = options.sweepNow === true || requested !== undefined;
  const sweep = await sweepSome(ctx, tally, progress, ctx.deadline, sweepNow);
  if (requested !== undefined && sweep.started) {
    ctx.log.info('the sweep an operator asked for started', { sourceId: ctx.sourceId });
    await ctx.store.clearSweepRequest(ctx.sourceId, requested);
  }
  if (read.outOfTime) read = followedBy(read, await readChanges(ctx, tally, progress, ctx.deadline));
  if (!watch.done) watch = await lookAtWatched(ctx, tally, progress, ctx.deadline);
  // A sweep the window stopped goes on once it opens: until then there is nothing to go on with.
  const sweeping = progress.current.sweepBelow !== undefined && windowOpen(ctx.timing, clock(ctx));
  return report({ sweeping, swept: sweep.listed }, watch.done);
};
