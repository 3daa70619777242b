/**
 * `plan`: what the forwarder would move from a source now, moving nothing and writing no state.
 * Every study is listed page by page as the sweep lists them (`/studies?expand&since=&limit=`),
 * routed by the move's own routing (routeStudy, with the facts its filters read), and counted
 * with its size (`/studies/{id}/statistics`) per destination, or as unrouted. One page is held at
 * a time, so memory stays bounded whatever the source holds; the cost is requests: one per page
 * of PAGE_SIZE studies, one per study, and what the filters read (one per study for modalities,
 * one per series for sending AETs), PLAN_CONCURRENCY at a time. Counts and sizes only: the
 * description a filter reads is never kept.
 */
import { runBounded } from './concurrency.ts';
import type { ForwarderConfig } from './config.ts';
import { moveTiming, whenMovable, windowOpen } from './move-timing.ts';
import type { OrthancClient, StudyInfo } from './orthanc-client.ts';
import type { Tally } from './ports.ts';
import { routeStudy, studyFacts } from './routing.ts';
import { NO_TALLY } from './totals.ts';
import { nextOpening } from './transfer-window.ts';

const PAGE_SIZE = 1000;
/** Studies looked at at once: a source that serves patients must not feel the plan. */
const PLAN_CONCURRENCY = 4;

export interface SourcePlan {
  readonly sourceId: string;
  /** Studies the source holds (its statistics), and how many of them were looked at (`--limit`). */
  readonly studies: number;
  readonly listed: number;
  /** Per destination, in configuration order, what its filter takes: a study two take counts in both. */
  readonly destinations: readonly (Tally & { readonly id: string })[];
  /** What no destination takes: kept at the source, or deleted there (`unrouted`). */
  readonly unrouted: Tally;
  /** Of the studies listed, those that would not leave yet: not stable, younger than the minimum age. */
  readonly notStable: number;
  readonly tooYoung: number;
  /** Whether the source's transfer windows are open now, and else when they open (epoch ms). */
  readonly windowOpen: boolean;
  readonly opensAt?: number | undefined;
}

const add = (tally: Tally, size: { instances: number; bytes: number }): Tally => ({
  studies: tally.studies + 1,
  instances: tally.instances + size.instances,
  bytes: tally.bytes + size.bytes,
});

/** Lists, routes and counts the studies of one source, the first `limit` of them at most. */
export const planSource = async (
  source: OrthancClient,
  config: ForwarderConfig,
  sourceId: string,
  options: { readonly limit?: number | undefined; readonly now: number },
): Promise<SourcePlan> => {
  const timing = moveTiming(config, sourceId);
  const limit = options.limit ?? Number.POSITIVE_INFINITY;
  const taken = config.destinations.map(() => NO_TALLY);
  let unrouted = NO_TALLY;
  let notStable = 0;
  let tooYoung = 0;
  const count = async (study: StudyInfo) => {
    const size = await source.studySize(study.id);
    // Gone since it was listed (moved by a run, say): nothing of it is left to move.
    if (size === undefined) return;
    const to = await routeStudy(config.destinations, studyFacts(source, study, undefined));
    for (const destination of to) {
      const index = config.destinations.indexOf(destination);
      taken[index] = add(taken[index] ?? NO_TALLY, size);
    }
    if (to.length === 0) unrouted = add(unrouted, size);
    if (!study.isStable) notStable++;
    if (whenMovable(timing, study, options.now).waitsFor === 'minimumAge') tooYoung++;
  };
  const studies = await source.studyCount();
  let listed = 0;
  while (listed < limit) {
    const asked = Math.min(PAGE_SIZE, limit - listed);
    const page = await source.studyInfosPage(listed, asked);
    await runBounded(page, PLAN_CONCURRENCY, count);
    listed += page.length;
    if (page.length < asked) break;
  }
  const open = windowOpen(timing, options.now);
  return {
    sourceId,
    studies,
    listed,
    destinations: config.destinations.map((destination, index) => ({
      id: destination.id,
      ...(taken[index] ?? NO_TALLY),
    })),
    unrouted,
    notStable,
    tooYoung,
    windowOpen: open,
    ...(open ? {} : { opensAt: nextOpening(timing?.schedule, options.now) }),
  };
};
