/**
 * How far the move of a source has come, and when it may end: what the source still holds (its
 * own statistics), what left it in the last hour and the last day (the ledger), the rate of that
 * per hour its transfer windows were open, and the instant the rest would be gone at that rate,
 * counting only the time the windows will be open. `status`, the poller's Progress metrics and
 * `run`'s progress line all read it from here. Counts and sizes only.
 */
import type { OrthancClient } from './orthanc-client.ts';
import { type Ledger, MOVED_BUCKET_MS, type Tally } from './ports.ts';
import { movedBucketStart } from './totals.ts';
import { nextOpening, openMsBetween, type TransferSchedule } from './transfer-window.ts';

export const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const WEEK_MS = 7 * DAY_MS;
/** An estimate further out than this is no estimate: the rate is too low to say. */
const HORIZON_WEEKS = 520;

/** What left a source lately, by the ledger. */
export interface RecentMoves {
  readonly lastHour: Tally;
  readonly lastDay: Tally;
}

/** What left per hour the windows were open, over the last hour, or the last day when the hour moved nothing. */
export interface MoveRate {
  readonly bytesPerHour: number;
  readonly instancesPerHour: number;
  readonly over: 'hour' | 'day';
}

export interface SourceProgress extends RecentMoves {
  /** What the source still holds; undefined when it was not asked or not reached. */
  readonly left: Tally | undefined;
  /** Undefined when nothing left the source in the last day while its windows were open. */
  readonly rate?: MoveRate | undefined;
  /**
   * When the source would hold nothing more at that rate, inside its windows (epoch ms): now when
   * it holds nothing; undefined when what it holds or the rate is unknown, or too far out to say.
   */
  readonly finishAt?: number | undefined;
}

/** The ledger's counts of the last hour and day: two reads of a few small rows (Ledger.movedSince). */
export const recentMoves = async (
  ledger: Pick<Ledger, 'movedSince'>,
  sourceId: string,
  now: number,
): Promise<RecentMoves> => {
  const [lastHour, lastDay] = await Promise.all([
    ledger.movedSince(sourceId, now - HOUR_MS),
    ledger.movedSince(sourceId, now - DAY_MS),
  ]);
  return { lastHour, lastDay };
};

/**
 * The rate over `moved` since `from`: per hour of open windows since the start of its bucket (what
 * movedSince counted from). None when nothing moved, or the windows were open less than a bucket
 * (moves outside them, of studies received lately, would make a rate of nearly no time).
 */
const rateOver = (
  moved: Tally,
  from: number,
  now: number,
  schedule: TransferSchedule | undefined,
  over: MoveRate['over'],
): MoveRate | undefined => {
  const openMs = openMsBetween(schedule, movedBucketStart(from), now);
  if (moved.instances === 0 || openMs < MOVED_BUCKET_MS) return undefined;
  return {
    bytesPerHour: (moved.bytes * HOUR_MS) / openMs,
    instancesPerHour: (moved.instances * HOUR_MS) / openMs,
    over,
  };
};

/**
 * The first instant by which the schedule has been open `openMs` since `from`; undefined when it
 * never opens, or not within HORIZON_WEEKS. The windows repeat every week, so whole weeks are
 * skipped at once (a week with a clock change is an hour off: an estimate's error), then the rest
 * is found by halving.
 */
export const afterOpenTime = (
  schedule: TransferSchedule | undefined,
  from: number,
  openMs: number,
): number | undefined => {
  if (schedule === undefined) return from + openMs;
  const start = nextOpening(schedule, from);
  const weekly = openMsBetween(schedule, start, start + WEEK_MS);
  if (weekly === 0) return undefined;
  const weeks = Math.max(0, Math.floor(openMs / weekly) - 1);
  if (weeks > HORIZON_WEEKS) return undefined;
  const at = start + weeks * WEEK_MS;
  const rest = openMs - weeks * weekly;
  let low = at;
  let high = at + 3 * WEEK_MS;
  while (high - low > 1_000) {
    const middle = Math.floor((low + high) / 2);
    if (openMsBetween(schedule, at, middle) >= rest) high = middle;
    else low = middle;
  }
  return high;
};

/** The progress from what the source holds and what left it lately, at `now`. */
export const sourceProgress = (
  left: Tally | undefined,
  recent: RecentMoves,
  schedule: TransferSchedule | undefined,
  now: number,
): SourceProgress => {
  const rate =
    rateOver(recent.lastHour, now - HOUR_MS, now, schedule, 'hour') ??
    rateOver(recent.lastDay, now - DAY_MS, now, schedule, 'day');
  const progress = { left, ...recent, rate };
  if (left === undefined) return progress;
  if (left.instances === 0) return { ...progress, finishAt: now };
  if (rate === undefined) return progress;
  // By bytes, as long as sizes are known on both sides; else by instances.
  const hours =
    left.bytes > 0 && rate.bytesPerHour > 0
      ? left.bytes / rate.bytesPerHour
      : left.instances / rate.instancesPerHour;
  return { ...progress, finishAt: afterOpenTime(schedule, now, hours * HOUR_MS) };
};

/** Asks the source what it holds (GET /statistics: one cheap request) and the ledger what left it lately. */
export const measureProgress = async (
  source: Pick<OrthancClient, 'holdings'>,
  ledger: Pick<Ledger, 'movedSince'>,
  sourceId: string,
  schedule: TransferSchedule | undefined,
  now: number,
): Promise<SourceProgress> => {
  const [left, recent] = await Promise.all([source.holdings(), recentMoves(ledger, sourceId, now)]);
  return sourceProgress(left, recent, schedule, now);
};
