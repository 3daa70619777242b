/**
 * How far a source's move has come (lambdas/core/progress.ts): the rate of what left it per hour
 * its windows were open, over the last hour or else the last day, and when the rest would be gone
 * at that rate, counting only the hours its windows will be open.
 */
import { describe, expect, it } from 'vitest';
import type { Tally } from '../lambdas/core/ports.ts';
import { afterOpenTime, HOUR_MS, sourceProgress } from '../lambdas/core/progress.ts';
import { NO_TALLY } from '../lambdas/core/totals.ts';
import { openMsBetween, type TransferSchedule } from '../lambdas/core/transfer-window.ts';

const GB = 1024 ** 3;
const at = (iso: string): number => Date.parse(iso);
const tally = (studies: number, instances: number, bytes: number): Tally => ({ studies, instances, bytes });
const EVERY_DAY = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
/** Open 8 hours a night, 22:00 to 06:00 UTC. */
const nights: TransferSchedule = {
  timeZone: 'UTC',
  windows: [{ days: EVERY_DAY, from: '22:00', to: '06:00' }],
};

describe('progress', () => {
  // On a bucket's start, so that the last hour is exactly an hour.
  const now = at('2025-06-04T12:00:00Z');

  it('without windows: the last hour’s rate, and the rest gone in as many hours as it holds hours of it', () => {
    const recent = { lastHour: tally(2, 20, 2 * GB), lastDay: tally(10, 100, 10 * GB) };
    const progress = sourceProgress(tally(30, 300, 30 * GB), recent, undefined, now);
    expect(progress.rate).toEqual({ bytesPerHour: 2 * GB, instancesPerHour: 20, over: 'hour' });
    expect(progress.finishAt).toBe(now + 15 * HOUR_MS);
    expect(progress).toMatchObject({ left: tally(30, 300, 30 * GB), ...recent });
  });

  it('takes the day’s rate when nothing left in the last hour, per hour of the day', () => {
    const recent = { lastHour: NO_TALLY, lastDay: tally(24, 240, 24 * GB) };
    const progress = sourceProgress(tally(3, 30, 3 * GB), recent, undefined, now);
    expect(progress.rate).toEqual({ bytesPerHour: GB, instancesPerHour: 10, over: 'day' });
    expect(progress.finishAt).toBe(now + 3 * HOUR_MS);
  });

  it('counts by instances when the sizes are unknown', () => {
    const recent = { lastHour: tally(1, 10, 0), lastDay: tally(1, 10, 0) };
    expect(sourceProgress(tally(1, 50, 0), recent, undefined, now).finishAt).toBe(now + 5 * HOUR_MS);
  });

  it('has no rate when nothing left lately, no estimate without what the source holds, and is done when it holds nothing', () => {
    const idle = sourceProgress(tally(3, 30, GB), { lastHour: NO_TALLY, lastDay: NO_TALLY }, undefined, now);
    expect(idle.rate).toBeUndefined();
    expect(idle.finishAt).toBeUndefined();
    const recent = { lastHour: tally(1, 1, GB), lastDay: tally(1, 1, GB) };
    const unknown = sourceProgress(undefined, recent, undefined, now);
    expect(unknown.rate).toBeDefined();
    expect(unknown.finishAt).toBeUndefined();
    expect(sourceProgress(tally(0, 0, 0), recent, undefined, now).finishAt).toBe(now);
  });

  it('inside windows: the rate per open hour, and the rest only in the hours the windows will be open', () => {
    // 06:00, the night's window just closed: the last hour was open all of it.
    const morning = at('2025-06-04T06:00:00Z');
    const recent = { lastHour: tally(1, 10, GB), lastDay: tally(8, 80, 8 * GB) };
    const progress = sourceProgress(tally(10, 100, 10 * GB), recent, nights, morning);
    expect(progress.rate).toEqual({ bytesPerHour: GB, instancesPerHour: 10, over: 'hour' });
    // 10 open hours: tonight's 8, then 2 of the next night's, which begins 40 hours from now.
    const expected = morning + 42 * HOUR_MS;
    expect(progress.finishAt).toBeGreaterThanOrEqual(expected);
    expect(progress.finishAt).toBeLessThan(expected + 1_000);

    // At noon the last hour was closed: the day's 8 open hours give the rate.
    const noon = sourceProgress(tally(10, 100, 10 * GB), recent, nights, now);
    expect(noon.rate).toEqual({ bytesPerHour: GB, instancesPerHour: 10, over: 'day' });
  });

  it('finds the end of many weeks of open time, in a zone whose clock changes, and none beyond ten years', () => {
    const berlinNights: TransferSchedule = { ...nights, timeZone: 'Europe/Berlin' };
    const needed = 300 * 8 * HOUR_MS;
    const end = afterOpenTime(berlinNights, now, needed) as number;
    // Whole weeks are skipped as if each held as much open time as the first: an hour off per clock change.
    expect(Math.abs(openMsBetween(berlinNights, now, end) - needed)).toBeLessThanOrEqual(2 * HOUR_MS);
    expect(afterOpenTime(nights, now, 10 * 365 * 8 * HOUR_MS + HOUR_MS)).toBeDefined();
    expect(afterOpenTime(nights, now, 11 * 365 * 8 * HOUR_MS)).toBeUndefined();
    expect(afterOpenTime(undefined, now, HOUR_MS)).toBe(now + HOUR_MS);
  });
});
