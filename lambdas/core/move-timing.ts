/**
 * When a study may leave its source: once it is as old as the source's minimum age (so that local
 * viewers keep the recent ones), and then inside the source's transfer windows, or at any time
 * while it was received in the last `liveHours` (so that today's studies reach the cloud). The
 * poller holds back what may not move yet, and the forwarder makes a study that reaches it too
 * early wait (NotYetError) exactly until it may.
 */
import type { ForwarderConfig } from './config.ts';
import { isOpen, localMidnight, nextOpening, type TransferSchedule } from './transfer-window.ts';

const HOUR_MS = 3_600_000;

export interface MoveTiming {
  /** Absent: always open. */
  readonly schedule?: TransferSchedule | undefined;
  /** Studies received this recently move outside the windows. */
  readonly liveMs?: number | undefined;
  readonly minimumAge?: { readonly ms: number; readonly by: 'received' | 'studyDate' } | undefined;
}

/** What a study's timing is read from, as its source gives them. */
export interface StudyTimes {
  /** Orthanc's LastUpdate: when the source last received an instance of it. */
  readonly lastUpdate?: string | undefined;
  /** The StudyDate tag, YYYYMMDD: read for timing only, never logged. */
  readonly studyDate?: string | undefined;
}

export type WaitsFor = 'window' | 'minimumAge';

/** The source's timing, its own settings over the top-level ones; undefined when nothing holds its studies back. */
export const moveTiming = (
  config: Pick<ForwarderConfig, 'sources' | 'schedule' | 'minimumAge'>,
  sourceId: string,
): MoveTiming | undefined => {
  const source = config.sources.find((candidate) => candidate.id === sourceId);
  const schedule = source?.schedule ?? config.schedule;
  const minimumAge = source?.minimumAge ?? config.minimumAge;
  const timing: MoveTiming = {
    ...(schedule === undefined || schedule.windows.length === 0
      ? {}
      : {
          schedule: { timeZone: schedule.timeZone, windows: schedule.windows },
          ...(schedule.liveHours === undefined ? {} : { liveMs: Math.round(schedule.liveHours * HOUR_MS) }),
        }),
    ...(minimumAge === undefined || minimumAge.hours === 0
      ? {}
      : { minimumAge: { ms: Math.round(minimumAge.hours * HOUR_MS), by: minimumAge.by } }),
  };
  return timing.schedule === undefined && timing.minimumAge === undefined ? undefined : timing;
};

/** Orthanc writes LastUpdate as YYYYMMDDTHHMMSS in UTC. */
export const receivedAt = (lastUpdate: string | undefined): number | undefined => {
  const parts = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)/.exec(lastUpdate ?? '');
  if (parts === null) return undefined;
  const [year, month, day, hour, minute, second] = parts.slice(1).map(Number) as number[];
  return Date.UTC(year as number, (month as number) - 1, day, hour, minute, second);
};

/** The start of the StudyDate, on the clock of the source's schedule (UTC without one). */
const studyDayStart = (studyDate: string | undefined, timeZone: string): number | undefined => {
  const parts = /^(\d{4})(\d\d)(\d\d)$/.exec(studyDate?.trim() ?? '');
  if (parts === null) return undefined;
  const [year, month, day] = parts.slice(1).map(Number) as [number, number, number];
  return localMidnight(timeZone, year, month, day);
};

/**
 * The first instant at or after `now` at which the study may move, and what holds it back until
 * then. A study whose age cannot be told (no LastUpdate, no valid StudyDate) is old enough: a
 * missing tag must not keep it at its source for ever.
 */
export const whenMovable = (
  timing: MoveTiming | undefined,
  study: StudyTimes,
  now: number,
): { readonly at: number; readonly waitsFor?: WaitsFor } => {
  if (timing === undefined) return { at: now };
  const received = receivedAt(study.lastUpdate);
  const { minimumAge, schedule } = timing;
  const since =
    minimumAge?.by === 'studyDate'
      ? (studyDayStart(study.studyDate, schedule?.timeZone ?? 'UTC') ?? received)
      : received;
  const oldEnough =
    minimumAge === undefined || since === undefined ? now : Math.max(now, since + minimumAge.ms);
  const live = timing.liveMs !== undefined && received !== undefined && oldEnough - received < timing.liveMs;
  const at = live ? oldEnough : nextOpening(schedule, oldEnough);
  if (at <= now) return { at: now };
  return { at, waitsFor: oldEnough > now ? 'minimumAge' : 'window' };
};

/** Whether the source's windows are open now: what the poller asks before it starts or goes on with a sweep. */
export const windowOpen = (timing: MoveTiming | undefined, now: number): boolean =>
  isOpen(timing?.schedule, now);
