import { describe, expect, it } from 'vitest';
import {
  isOpen,
  nextOpening,
  openMsBetween,
  type TransferSchedule,
  type TransferWindow,
} from '../lambdas/core/transfer-window.ts';

const HOUR = 3_600_000;
const MINUTE = 60_000;
const at = (iso: string): number => Date.parse(iso);

const berlin = (...windows: TransferWindow[]): TransferSchedule => ({ timeZone: 'Europe/Berlin', windows });
const newYork = (...windows: TransferWindow[]): TransferSchedule => ({
  timeZone: 'America/New_York',
  windows,
});
const everyNight: TransferWindow = {
  days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'],
  from: '19:00',
  to: '07:00',
};
/** The example: weekdays 19:00–07:00 and all weekend. */
const hospital = (timeZone: string): TransferSchedule => ({
  timeZone,
  windows: [
    { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '19:00', to: '07:00' },
    { days: ['sat', 'sun'], from: '00:00', to: '00:00' },
  ],
});

/** Open minutes counted one by one: slow, but independent of the arithmetic under test. */
const openMinutesByStepping = (schedule: TransferSchedule, from: number, to: number): number => {
  let open = 0;
  for (let t = from; t < to; t += MINUTE) if (isOpen(schedule, t)) open++;
  return open;
};

/** The schedule in the zone agrees with stepping over each week from the given day (UTC). */
const expectSteppingAgrees = (timeZone: string, weeks: readonly string[]) => {
  const schedule = hospital(timeZone);
  for (const day of weeks) {
    const from = at(`${day}T00:00:00Z`);
    const to = from + 7 * 24 * HOUR;
    expect(openMsBetween(schedule, from, to)).toBe(openMinutesByStepping(schedule, from, to) * MINUTE);
  }
};

describe('transfer window', () => {
  it('is always open without a schedule, or with no windows', () => {
    const empty: TransferSchedule = { timeZone: 'Europe/Berlin', windows: [] };
    for (const schedule of [undefined, empty]) {
      expect(isOpen(schedule, at('2025-06-04T12:00:00Z'))).toBe(true);
      expect(nextOpening(schedule, 1234)).toBe(1234);
      expect(openMsBetween(schedule, 1000, 5000)).toBe(4000);
    }
    expect(openMsBetween(undefined, 5000, 1000)).toBe(0);
  });

  it('opens and closes at the local clock times on an ordinary day', () => {
    const schedule = hospital('Europe/Berlin');
    // Wednesday 4 June 2025, CEST = UTC+2.
    expect(isOpen(schedule, at('2025-06-04T16:59:59Z'))).toBe(false);
    expect(isOpen(schedule, at('2025-06-04T17:00:00Z'))).toBe(true);
    expect(isOpen(schedule, at('2025-06-05T04:59:59Z'))).toBe(true);
    expect(isOpen(schedule, at('2025-06-05T05:00:00Z'))).toBe(false);
    expect(nextOpening(schedule, at('2025-06-04T08:00:00Z'))).toBe(at('2025-06-04T17:00:00Z'));
    expect(nextOpening(schedule, at('2025-06-04T18:00:00Z'))).toBe(at('2025-06-04T18:00:00Z'));
    // Friday's night runs into the weekend; Monday 00:00–07:00 belongs to no window.
    expect(isOpen(schedule, at('2025-06-07T05:30:00Z'))).toBe(true);
    expect(isOpen(schedule, at('2025-06-08T21:59:59Z'))).toBe(true);
    expect(isOpen(schedule, at('2025-06-08T22:00:00Z'))).toBe(false);
    expect(nextOpening(schedule, at('2025-06-08T22:00:00Z'))).toBe(at('2025-06-09T17:00:00Z'));
  });

  it('adds up a whole ordinary week', () => {
    // Monday 2 June 00:00 to Monday 9 June 00:00 Berlin: Mon 5 h, Tue–Fri 12 h each, Sat and Sun 24 h each.
    const open = openMsBetween(
      hospital('Europe/Berlin'),
      at('2025-06-01T22:00:00Z'),
      at('2025-06-08T22:00:00Z'),
    );
    expect(open).toBe((5 + 4 * 12 + 48) * HOUR);
  });

  it('wraps a window over Sunday midnight into Monday', () => {
    const schedule = berlin({ days: ['sun'], from: '22:00', to: '02:00' });
    expect(isOpen(schedule, at('2025-06-08T23:30:00Z'))).toBe(true); // Monday 01:30 local
    expect(isOpen(schedule, at('2025-06-09T00:00:00Z'))).toBe(false); // Monday 02:00 local
    expect(nextOpening(schedule, at('2025-06-09T00:00:00Z'))).toBe(at('2025-06-15T20:00:00Z'));
  });

  describe('Europe/Berlin daylight saving', () => {
    it('a night window over the spring change is one hour shorter', () => {
      // 30 March 2025: 02:00 CET becomes 03:00 CEST at 01:00Z.
      const night = openMsBetween(berlin(everyNight), at('2025-03-29T12:00:00Z'), at('2025-03-30T12:00:00Z'));
      expect(night).toBe(11 * HOUR);
      expect(isOpen(berlin(everyNight), at('2025-03-29T17:59:59Z'))).toBe(false);
      expect(isOpen(berlin(everyNight), at('2025-03-30T04:59:59Z'))).toBe(true);
      expect(isOpen(berlin(everyNight), at('2025-03-30T05:00:00Z'))).toBe(false);
    });

    it('a night window over the autumn change is one hour longer', () => {
      // 26 October 2025: 03:00 CEST becomes 02:00 CET at 01:00Z.
      const night = openMsBetween(berlin(everyNight), at('2025-10-25T12:00:00Z'), at('2025-10-26T12:00:00Z'));
      expect(night).toBe(13 * HOUR);
      expect(nextOpening(berlin(everyNight), at('2025-10-26T12:00:00Z'))).toBe(at('2025-10-26T18:00:00Z'));
    });

    it('a whole-day window lasts the day as the clock shows it', () => {
      const sunday = berlin({ days: ['sun'], from: '00:00', to: '00:00' });
      expect(openMsBetween(sunday, at('2025-03-29T00:00:00Z'), at('2025-03-31T00:00:00Z'))).toBe(23 * HOUR);
      expect(openMsBetween(sunday, at('2025-10-25T00:00:00Z'), at('2025-10-27T00:00:00Z'))).toBe(25 * HOUR);
    });

    it('agrees with minute-by-minute stepping over both change weeks', () => {
      expectSteppingAgrees('Europe/Berlin', ['2025-03-26', '2025-10-22']);
    });
  });

  describe('America/New_York daylight saving', () => {
    it('a window inside the skipped hour does not open that day', () => {
      // 9 March 2025: 02:00 EST becomes 03:00 EDT at 07:00Z.
      const skipped = newYork({ days: ['sun'], from: '02:00', to: '02:30' });
      expect(openMsBetween(skipped, at('2025-03-09T00:00:00Z'), at('2025-03-10T00:00:00Z'))).toBe(0);
      expect(nextOpening(skipped, at('2025-03-09T05:00:00Z'))).toBe(at('2025-03-16T06:00:00Z'));
    });

    it('a window starting inside the skipped hour opens when the clock jumps past its start', () => {
      const straddling = newYork({ days: ['sun'], from: '02:30', to: '04:00' });
      expect(nextOpening(straddling, at('2025-03-09T05:00:00Z'))).toBe(at('2025-03-09T07:00:00Z'));
      expect(openMsBetween(straddling, at('2025-03-09T00:00:00Z'), at('2025-03-10T00:00:00Z'))).toBe(HOUR);
    });

    it('a window inside the repeated hour opens twice', () => {
      // 2 November 2025: 02:00 EDT becomes 01:00 EST at 06:00Z; 01:00–02:00 is shown twice.
      const repeated = newYork({ days: ['sun'], from: '01:30', to: '01:45' });
      const from = at('2025-11-02T00:00:00Z');
      const to = at('2025-11-03T00:00:00Z');
      expect(openMsBetween(repeated, from, to)).toBe(30 * MINUTE);
      expect(nextOpening(repeated, from)).toBe(at('2025-11-02T05:30:00Z'));
      expect(nextOpening(repeated, at('2025-11-02T05:45:00Z'))).toBe(at('2025-11-02T06:30:00Z'));
    });

    it('a window over the autumn change lasts an hour longer than the clock says', () => {
      const early = newYork({ days: ['sun'], from: '00:00', to: '03:00' });
      expect(openMsBetween(early, at('2025-11-02T00:00:00Z'), at('2025-11-03T00:00:00Z'))).toBe(4 * HOUR);
    });

    it('agrees with minute-by-minute stepping over both change weeks', () => {
      expectSteppingAgrees('America/New_York', ['2025-03-05', '2025-10-29']);
    });
  });

  it('nextOpening is open, and nothing before it is', () => {
    const schedule = hospital('America/New_York');
    for (let t = at('2025-03-07T00:00:00Z'); t < at('2025-03-12T00:00:00Z'); t += 97 * MINUTE) {
      const opening = nextOpening(schedule, t);
      expect(isOpen(schedule, opening)).toBe(true);
      expect(openMsBetween(schedule, t, opening)).toBe(0);
    }
  });

  it('sums a year as the sum of its weeks', () => {
    const year = openMsBetween(
      hospital('Europe/Berlin'),
      at('2025-01-01T00:00:00Z'),
      at('2026-01-01T00:00:00Z'),
    );
    let weeks = 0;
    for (let t = at('2025-01-01T00:00:00Z'); t < at('2026-01-01T00:00:00Z'); t += 7 * 24 * HOUR) {
      weeks += openMsBetween(
        hospital('Europe/Berlin'),
        t,
        Math.min(t + 7 * 24 * HOUR, at('2026-01-01T00:00:00Z')),
      );
    }
    expect(year).toBe(weeks);
  });
});
