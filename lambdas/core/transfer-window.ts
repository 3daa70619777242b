/**
 * When moves may run: weekly windows of local clock time in an IANA time zone. A schedule is open
 * exactly when the zone's clock reads a time inside one of its windows, so daylight saving needs
 * no special case: a window boundary inside the hour skipped in spring is passed when the clock
 * jumps over it, and one inside the hour repeated in autumn is passed twice. No schedule (undefined)
 * means always open.
 */

export const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
export type Weekday = (typeof WEEKDAYS)[number];

export interface TransferWindow {
  readonly days: readonly Weekday[];
  /** 'HH:MM', local time. */
  readonly from: string;
  /** 'HH:MM', local time; at or before `from`, the window ends on the next day ('00:00' to '00:00' is a whole day). */
  readonly to: string;
}

export interface TransferSchedule {
  readonly timeZone: string;
  readonly windows: readonly TransferWindow[];
}

const MINUTE_MS = 60_000;
const DAY_MS = 24 * 60 * MINUTE_MS;
const WEEK_MS = 7 * DAY_MS;
/** 1970-01-01 was a Thursday: wall-clock weeks counted from the Monday before it. */
const MONDAY_MS = -3 * DAY_MS;

const mod = (value: number, by: number): number => ((value % by) + by) % by;

const clockMs = (hhmm: string): number => {
  const [hours = 0, minutes = 0] = hhmm.split(':').map(Number);
  return (hours * 60 + minutes) * MINUTE_MS;
};

/** Open spans in wall-clock milliseconds since Monday 00:00; a span over Sunday midnight ends past WEEK_MS. */
const openSpans = (schedule: TransferSchedule): readonly (readonly [number, number])[] =>
  schedule.windows.flatMap((window) => {
    const from = clockMs(window.from);
    const to = clockMs(window.to);
    const length = to > from ? to - from : DAY_MS - from + to;
    return window.days.map((day) => {
      const start = WEEKDAYS.indexOf(day) * DAY_MS + from;
      return [start, start + length] as const;
    });
  });

const formats = new Map<string, Intl.DateTimeFormat>();

const formatIn = (timeZone: string): Intl.DateTimeFormat => {
  let format = formats.get(timeZone);
  if (format === undefined) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formats.set(timeZone, format);
  }
  return format;
};

/** Throws a RangeError for a name that is no IANA time zone this runtime knows. */
export const checkTimeZone = (timeZone: string): void => {
  formatIn(timeZone);
};

/** Local clock minus UTC at `at`, in milliseconds. */
const offsetAt = (timeZone: string, at: number): number => {
  const clock = { year: 0, month: 1, day: 1, hour: 0, minute: 0, second: 0 };
  for (const { type, value } of formatIn(timeZone).formatToParts(at)) {
    if (type in clock) clock[type as keyof typeof clock] = Number(value);
  }
  const wholeSecond = at - mod(at, 1000);
  return (
    Date.UTC(clock.year, clock.month - 1, clock.day, clock.hour, clock.minute, clock.second) - wholeSecond
  );
};

/** The instant the zone's clock reads 00:00 on this date (the first such instant, should it read it twice). */
export const localMidnight = (timeZone: string, year: number, month: number, day: number): number => {
  const wall = Date.UTC(year, month - 1, day);
  const guess = wall - offsetAt(timeZone, wall);
  return wall - offsetAt(timeZone, guess);
};

const wallOfWeek = (at: number, offset: number): number => mod(at + offset - MONDAY_MS, WEEK_MS);

const openAtWall = (spans: readonly (readonly [number, number])[], wall: number): boolean =>
  spans.some(([start, end]) => (wall >= start && wall < end) || wall + WEEK_MS < end);

/**
 * The first instant after `at` at which the schedule may open or close: the next window boundary
 * on the clock, or sooner a change of the zone's offset (when the clock jumps).
 */
const nextChange = (
  schedule: TransferSchedule,
  spans: readonly (readonly [number, number])[],
  at: number,
) => {
  const offset = offsetAt(schedule.timeZone, at);
  const wall = wallOfWeek(at, offset);
  const untilBoundary = Math.min(
    ...spans.flatMap((span) => span.map((boundary) => mod(boundary - wall, WEEK_MS) || WEEK_MS)),
  );
  let unchanged = at;
  let changed = at + untilBoundary;
  if (offsetAt(schedule.timeZone, changed) === offset) return changed;
  while (changed - unchanged > 1) {
    const middle = Math.floor((unchanged + changed) / 2);
    if (offsetAt(schedule.timeZone, middle) === offset) unchanged = middle;
    else changed = middle;
  }
  return changed;
};

const spansOf = (schedule: TransferSchedule | undefined) =>
  schedule === undefined || schedule.windows.length === 0 ? undefined : openSpans(schedule);

export const isOpen = (schedule: TransferSchedule | undefined, at: number): boolean => {
  const spans = spansOf(schedule);
  if (schedule === undefined || spans === undefined) return true;
  return openAtWall(spans, wallOfWeek(at, offsetAt(schedule.timeZone, at)));
};

/** The first instant at or after `from` at which the schedule is open (`from` itself when open). */
export const nextOpening = (schedule: TransferSchedule | undefined, from: number): number => {
  const spans = spansOf(schedule);
  if (schedule === undefined || spans === undefined) return from;
  let at = from;
  while (!isOpen(schedule, at)) at = nextChange(schedule, spans, at);
  return at;
};

/** How many milliseconds of [from, to) the schedule is open. */
export const openMsBetween = (schedule: TransferSchedule | undefined, from: number, to: number): number => {
  if (to <= from) return 0;
  const spans = spansOf(schedule);
  if (schedule === undefined || spans === undefined) return to - from;
  let open = 0;
  for (let at = from; at < to; ) {
    const next = Math.min(nextChange(schedule, spans, at), to);
    if (isOpen(schedule, at)) open += next - at;
    at = next;
  }
  return open;
};
