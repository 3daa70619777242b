/**
 * The watch list: studies seen in NewStudy changes (or put back by a move that left late arrivals
 * behind) whose stability Orthanc may never announce, since it forgets it when it restarts. It is
 * looked at in pages, in study ID order, one lap at most per poll and carried across polls: a
 * study is queued once Orthanc calls it stable or its LastUpdate has not changed for the quiet
 * time, as a new study: it was seen arriving.
 */

import {
  type Candidate,
  clock,
  type FeedContext,
  lookUpEach,
  type ProgressRef,
  pastDeadline,
  queueStudies,
  sortFailures,
  type Tally,
} from './feed-context.ts';
import type { WatchedStudy } from './ports.ts';

/** LastUpdate counts whole seconds: a quiet time of one at least puts a later arrival in a later one. */
const steadyWhenQuiet = (ctx: FeedContext) => ctx.quietMs >= 1_000;

/**
 * Looks at one page; returns how many of its studies, in order, were looked at (the rest were
 * not started by the deadline).
 */
const lookAtPage = async (
  ctx: FeedContext,
  tally: Tally,
  page: readonly WatchedStudy[],
  deadline: number | undefined,
): Promise<number> => {
  const results = await lookUpEach(
    ctx,
    page.map((entry) => entry.studyId),
    (id) => ctx.source.study(id),
    deadline,
  );
  const now = clock(ctx);
  const gone: string[] = [];
  const due: Candidate[] = [];
  const changed: WatchedStudy[] = [];
  for (const entry of page) {
    const result = results.get(entry.studyId);
    if (result === undefined || !('found' in result)) continue;
    const study = result.found;
    const candidate = {
      studyId: entry.studyId,
      lastUpdate: study?.lastUpdate,
      studyDate: study?.studyDate,
      priority: 'new' as const,
    };
    if (study === undefined) gone.push(entry.studyId);
    // Under the series and instance triggers their own changes queue the study's parts: a
    // whole-study item then waits for the quiet time, as the safety net it is.
    else if (study.isStable && (ctx.trigger ?? 'StableStudy') === 'StableStudy')
      due.push({ ...candidate, steady: true, reason: 'stable' });
    else if (study.lastUpdate !== entry.lastUpdate)
      changed.push({ ...entry, lastUpdate: study.lastUpdate, lastUpdateSeenAt: now });
    else if (now - entry.lastUpdateSeenAt >= ctx.quietMs)
      due.push({ ...candidate, steady: steadyWhenQuiet(ctx), reason: 'quiet' });
  }
  for (const study of changed) await ctx.store.updateWatched(ctx.sourceId, study);
  await queueStudies(ctx, tally, due);
  // Queued, or queued before in this state, or settled: nothing more to wait for.
  await ctx.store.unwatch(ctx.sourceId, [...gone, ...due.map((c) => c.studyId)]);
  const unreachable = sortFailures(
    ctx,
    tally,
    'a watched study could not be looked at: it stays watched',
    results,
  );
  if (unreachable !== undefined) throw unreachable;
  const notStarted = page.findIndex((entry) => !results.has(entry.studyId));
  return notStarted === -1 ? page.length : notStarted;
};

/** Goes on with the lap under way until it ends or the deadline; `done` once it ended. */
export const lookAtWatched = async (
  ctx: FeedContext,
  tally: Tally,
  progress: ProgressRef,
  deadline: number | undefined,
): Promise<{ done: boolean }> => {
  for (;;) {
    if (pastDeadline(ctx, deadline)) return { done: false };
    const { watchAfter } = progress.current;
    const page = await ctx.store.watched(ctx.sourceId, { after: watchAfter, limit: ctx.listPageSize });
    const lookedAt = await lookAtPage(ctx, tally, page, deadline);
    const lapEnds = lookedAt === page.length && page.length < ctx.listPageSize;
    const after = lapEnds ? '' : (page[lookedAt - 1]?.studyId ?? watchAfter);
    // Another poll saved first: the lap is its to go on with. (An empty list costs no write.)
    const saved = after === watchAfter || (await progress.save({ ...progress.current, watchAfter: after }));
    if (!saved) return { done: true };
    if (lapEnds) return { done: true };
    if (lookedAt < page.length) return { done: false };
  }
};
