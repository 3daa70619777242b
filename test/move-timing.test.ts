/**
 * When a study may move (move-timing.ts), on an injected clock: the minimum age by reception or
 * by StudyDate, the transfer windows with their live exception, each source's settings over the
 * defaults; and how the failure policy delays a study that may not move yet.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { NotYetError, SourcePausedError } from '../lambdas/core/errors.ts';
import { decideOnFailure } from '../lambdas/core/failure-policy.ts';
import { moveTiming, receivedAt, whenMovable } from '../lambdas/core/move-timing.ts';

const HOUR = 3_600_000;
const at = (iso: string): number => Date.parse(iso);
/** Orthanc's LastUpdate of an instant (UTC). */
const lastUpdate = (iso: string): string => iso.replace(/[-:]/g, '').slice(0, 15);

const source = { id: 'site-a', url: 'http://127.0.0.1:8042' };
const destination = { url: 'http://127.0.0.1:8043/dicom-web' };
const nights = {
  timeZone: 'Europe/Berlin',
  windows: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '19:00', to: '07:00' }],
};
const timingOf = (extra: Record<string, unknown>, sourceExtra: Record<string, unknown> = {}) =>
  moveTiming(parseConfig({ sources: [{ ...source, ...sourceExtra }], destination, ...extra }), 'site-a');

describe('move timing', () => {
  it('reads Orthanc’s LastUpdate as UTC, and nothing from what is no LastUpdate', () => {
    expect(receivedAt('20250604T101500')).toBe(at('2025-06-04T10:15:00Z'));
    expect(receivedAt(undefined)).toBeUndefined();
    expect(receivedAt('yesterday')).toBeUndefined();
  });

  it('holds nothing back without a schedule or a minimum age, or with none in force', () => {
    expect(timingOf({})).toBeUndefined();
    expect(
      timingOf({ minimumAge: { hours: 0 }, schedule: { timeZone: 'UTC', windows: [] } }),
    ).toBeUndefined();
    // A source's own empty schedule opts it out of the top-level one.
    expect(timingOf({ schedule: nights }, { schedule: { timeZone: 'UTC', windows: [] } })).toBeUndefined();
    expect(whenMovable(undefined, {}, 1234)).toEqual({ at: 1234 });
  });

  it('keeps a study younger than the minimum age until it is old enough, by reception', () => {
    const timing = timingOf({ minimumAge: { hours: 48 } });
    const received = { lastUpdate: lastUpdate('2025-06-04T10:00:00Z') };
    expect(whenMovable(timing, received, at('2025-06-05T10:00:00Z'))).toEqual({
      at: at('2025-06-06T10:00:00Z'),
      waitsFor: 'minimumAge',
    });
    const old = at('2025-06-06T10:00:00Z');
    expect(whenMovable(timing, received, old)).toEqual({ at: old });
    // No LastUpdate: its age cannot be told, and a missing value holds nothing back.
    expect(whenMovable(timing, {}, at('2025-06-05T10:00:00Z'))).toEqual({ at: at('2025-06-05T10:00:00Z') });
  });

  it('counts a minimum age by StudyDate from the start of that day on the schedule’s clock', () => {
    const timing = timingOf({ minimumAge: { hours: 168, by: 'studyDate' }, schedule: nights });
    const study = { lastUpdate: lastUpdate('2025-06-10T08:00:00Z'), studyDate: '20250604' };
    // 4 June 00:00 in Berlin (CEST) is 3 June 22:00 UTC; a week later the night window is open.
    expect(whenMovable(timing, study, at('2025-06-10T12:00:00Z'))).toEqual({
      at: at('2025-06-10T22:00:00Z'),
      waitsFor: 'minimumAge',
    });
    // Without a valid StudyDate, the reception counts: old enough at 10:00, moved at 19:00.
    expect(whenMovable(timing, { ...study, studyDate: '2025-06-04' }, at('2025-06-10T12:00:00Z'))).toEqual({
      at: at('2025-06-17T17:00:00Z'),
      waitsFor: 'minimumAge',
    });
  });

  it('holds a study outside the window until it opens, unless it arrived in the last liveHours', () => {
    const timing = timingOf({ schedule: { ...nights, liveHours: 6 } });
    const noon = at('2025-06-04T10:00:00Z'); // 12:00 in Berlin
    expect(whenMovable(timing, { lastUpdate: lastUpdate('2025-06-03T10:00:00Z') }, noon)).toEqual({
      at: at('2025-06-04T17:00:00Z'),
      waitsFor: 'window',
    });
    expect(whenMovable(timing, { lastUpdate: lastUpdate('2025-06-04T05:00:00Z') }, noon)).toEqual({
      at: noon,
    });
    const night = at('2025-06-04T20:00:00Z');
    expect(whenMovable(timing, { lastUpdate: lastUpdate('2025-06-03T10:00:00Z') }, night)).toEqual({
      at: night,
    });
  });

  it('takes the window after the minimum age: old enough in the day, it waits for the night', () => {
    const timing = timingOf({ schedule: nights, minimumAge: { hours: 24 } });
    const study = { lastUpdate: lastUpdate('2025-06-04T09:00:00Z') };
    expect(whenMovable(timing, study, at('2025-06-04T10:00:00Z'))).toEqual({
      at: at('2025-06-05T17:00:00Z'),
      waitsFor: 'minimumAge',
    });
    expect(whenMovable(timing, study, at('2025-06-05T10:00:00Z'))).toEqual({
      at: at('2025-06-05T17:00:00Z'),
      waitsFor: 'window',
    });
  });

  it('a source’s own settings win over the defaults', () => {
    const timing = timingOf(
      { schedule: nights, minimumAge: { hours: 24 } },
      { schedule: { timeZone: 'UTC', windows: [{ days: ['sat'], from: '00:00', to: '00:00' }] } },
    );
    expect(timing?.schedule?.timeZone).toBe('UTC');
    expect(timing?.minimumAge).toEqual({ ms: 24 * HOUR, by: 'received' });
  });

  it('a study that may not move yet waits exactly until it may, uncounted, beyond retry.maxDelayMs', () => {
    const retry = { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 1_000 };
    const now = at('2025-06-04T10:00:00Z');
    const error = new NotYetError({ sourceId: 'site-a', studyId: 's' }, 'window', now + 7 * HOUR, now);
    expect(error.message).toContain("source 'site-a' is outside its transfer window");
    for (const receiveCount of [1, 2, 50]) {
      expect(decideOnFailure(error, receiveCount, retry)).toEqual({
        action: 'retry',
        delayMs: 7 * HOUR,
        counted: false,
      });
    }
    // A wait without a known end still backs off within maxDelayMs.
    const paused = decideOnFailure(new SourcePausedError('site-a'), 1, retry);
    expect(paused).toMatchObject({ action: 'retry', counted: false });
    expect(paused.action === 'retry' && paused.delayMs).toBeLessThanOrEqual(1_000);
  });
});
