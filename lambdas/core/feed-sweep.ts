/**
 * The sweep, the feed's safety net for what the change feed cannot show: changes lost with a
 * wiped database, stability forgotten across a restart, a work item lost or long dead-lettered.
 * Every sweepIntervalSeconds, and at once when the settings digest changes, it lists every study
 * of the source with its stability and LastUpdate, a page per request, carried across polls. A
 * stable study is queued unless it was queued (or found settled) in the same state under the
 * same settings; a study still receiving goes on the watch list.
 *
 * A sweep neither starts nor goes on while the source's transfer window is closed: what it found
 * could not be queued. The first poll after the window opens starts one, if the window was
 * closed since the last one started: it queues what was held back meanwhile (feed-context.ts).
 *
 * The listing is walked from its end to its start. Orthanc pages by position, and a study deleted
 * meanwhile (a move) moves every later one down a place: walking down, that shows a study twice
 * at worst, where walking up would skip one. The database plugins list by ID, where a new study
 * can also move later ones up a place: each page reaches OVERLAP places above where the page
 * before it began, for those.
 */

import {
  clock,
  type FeedContext,
  type ProgressRef,
  pastDeadline,
  queueStudies,
  type Tally,
} from './feed-context.ts';
import { windowOpen } from './move-timing.ts';
import type { ListedStudy } from './orthanc-client.ts';
import { openMsBetween } from './transfer-window.ts';

const OVERLAP = 50;

const sweepPage = async (ctx: FeedContext, tally: Tally, studies: readonly ListedStudy[]): Promise<void> => {
  const receiving = studies.filter((study) => !study.isStable).map((study) => study.id);
  await ctx.store.watch(ctx.sourceId, receiving, clock(ctx));
  await queueStudies(
    ctx,
    tally,
    studies
      .filter((study) => study.isStable)
      .map((study) => ({
        studyId: study.id,
        lastUpdate: study.lastUpdate,
        studyDate: study.studyDate,
        steady: true,
        reason: 'stable',
        priority: 'backlog',
      })),
  );
};

/**
 * Starts a sweep when one is due and none is under way, or when the settings changed (then
 * even over one under way: it looked under the old ones). `force` makes one due, once the one
 * under way (if any) has ended. `goesOn`: a sweep is to go on; `started`: this call started it.
 */
const startIfDue = async (
  ctx: FeedContext,
  progress: ProgressRef,
  force: boolean,
): Promise<{ goesOn: boolean; started: boolean }> => {
  const { current } = progress;
  const settingsChanged = current.settings !== ctx.settings;
  const sinceLast = clock(ctx) - current.sweepStartedAt;
  const reopened = openMsBetween(ctx.timing?.schedule, current.sweepStartedAt, clock(ctx)) < sinceLast;
  const due =
    settingsChanged ||
    (current.sweepBelow === undefined && (force || reopened || sinceLast >= ctx.sweepIntervalMs));
  if (!due) return { goesOn: current.sweepBelow !== undefined, started: false };
  if (settingsChanged) {
    ctx.log.info('the settings changed: every study of the source is looked at again', {
      sourceId: ctx.sourceId,
    });
  } else if (reopened) {
    ctx.log.info('the transfer window opened: every study of the source is looked at again', {
      sourceId: ctx.sourceId,
    });
  }
  const count = await ctx.source.studyCount();
  const next = { ...current, sweepStartedAt: clock(ctx), settings: ctx.settings };
  const started = await progress.save({ ...next, sweepBelow: count === 0 ? undefined : count });
  return { goesOn: started, started };
};

/**
 * Goes on with the sweep under way (or starts a due one) until it ends or the deadline; `started`
 * when this call started one.
 */
export const sweepSome = async (
  ctx: FeedContext,
  tally: Tally,
  progress: ProgressRef,
  deadline: number | undefined,
  force: boolean,
): Promise<{ listed: number; started: boolean }> => {
  let listed = 0;
  if (pastDeadline(ctx, deadline) || !windowOpen(ctx.timing, clock(ctx))) return { listed, started: false };
  const { goesOn, started } = await startIfDue(ctx, progress, force);
  if (!goesOn) return { listed, started };
  for (let below = progress.current.sweepBelow; below !== undefined; below = progress.current.sweepBelow) {
    if (pastDeadline(ctx, deadline)) break;
    const since = Math.max(0, below - ctx.listPageSize);
    const studies = await ctx.source.studiesPage(since, below - since + OVERLAP);
    await sweepPage(ctx, tally, studies);
    listed += studies.length;
    // Another poll saved first: the sweep is its to go on with.
    if (!(await progress.save({ ...progress.current, sweepBelow: since === 0 ? undefined : since }))) break;
  }
  return { listed, started };
};
