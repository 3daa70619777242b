/**
 * A poller at hospital scale against the Orthanc stand-in: scheduled polls, each with a budget in
 * the stand-in's virtual clock, on any feed store. New studies arrive before each poll, and the
 * forwarder moves (deletes) some queued studies after it, as they would. It records every work item queued and
 * what each poll did, for the tests to judge.
 */
import { expect } from 'vitest';
import {
  CHUNK_LOOKUPS,
  type FeedContext,
  type PollReport,
  pollSource,
} from '../../lambdas/core/changes-feed.ts';
import { parseConfig } from '../../lambdas/core/config.ts';
import { feedSettings } from '../../lambdas/core/engine.ts';
import { createEndpoint } from '../../lambdas/core/http.ts';
import { createLog } from '../../lambdas/core/log.ts';
import { OrthancClient } from '../../lambdas/core/orthanc-client.ts';
import type { FeedStateStore, Ledger, WorkItem } from '../../lambdas/core/ports.ts';
import type { OrthancStandIn } from './orthanc-standin.ts';

export const PERIOD_MS = 60_000;
/**
 * Virtual costs: a request, and each item of a listing or page of changes (Orthanc 1.10 lists
 * 500 expanded studies in 50 ms on the development machine: 0.1 ms each).
 */
export const COSTS = { request: 4, perItem: 0.1 };

/** A study ID in Orthanc's shape, distinct per number. */
export const studyId = (n: number): string => {
  const hex = n.toString(16).padStart(40, '0');
  return [0, 8, 16, 24, 32].map((at) => hex.slice(at, at + 8)).join('-');
};

export interface ScaleSource {
  readonly standIn: OrthancStandIn;
  /** Every study that ever was at the source. */
  readonly created: Set<string>;
  next: number;
}

/**
 * Fills the stand-in: `total` studies, of which a tenth were received before a restart (a
 * NewStudy change, never a StableStudy one) and a tenth arrived with changes since lost (a
 * wiped database refilled): only the sweep can find those.
 */
export const fillSource = (standIn: OrthancStandIn, total: number): ScaleSource => {
  const source: ScaleSource = { standIn, created: new Set(), next: 0 };
  for (let n = 0; n < total; n++) {
    const kind = n % 10;
    addStudy(source, kind === 0 ? ['NewStudy'] : kind === 1 ? [] : ['NewStudy', 'StableStudy']);
  }
  return source;
};

const addStudy = (source: ScaleSource, changes: readonly string[]): void => {
  const id = studyId(source.next++);
  source.standIn.addStudy(id, { isStable: true, lastUpdate: '20240101T000000', changes });
  source.created.add(id);
};

/** What a test keeps of successive polls, each with a budget. */
export interface BudgetedPolls {
  readonly reports: PollReport[];
  /** Virtual ms each poll used. */
  readonly used: number[];
  readonly budgetMs: number;
  /** How far past its deadline a poll may end: what starts before it and cannot be cut. */
  readonly overshootMs: number;
}

/** Every poll ended within its budget, and each made headway until there was nothing left. */
export const expectBoundedHeadway = (polls: BudgetedPolls): void => {
  for (const used of polls.used) expect(used).toBeLessThanOrEqual(polls.budgetMs + polls.overshootMs);
  for (const [index, report] of polls.reports.entries()) {
    const before = polls.reports[index - 1];
    const busy = before === undefined || before.outOfTime || before.sweeping || before.waiting > 0;
    if (!busy) continue;
    const headway =
      report.changesRead > 0 ||
      report.queued > 0 ||
      report.swept > 0 ||
      report.waiting < (before?.waiting ?? Number.POSITIVE_INFINITY);
    expect({ poll: index, headway }).toEqual({ poll: index, headway: true });
  }
};

export interface ScaleRun extends BudgetedPolls {
  readonly items: WorkItem[];
  /** The settings digest the polls run under: the configuration's until changed. */
  settings: string;
  poll(options?: { sweepNow?: boolean }): Promise<PollReport>;
}

/** A poller with the configuration's defaults (pages of 1,000 unless told) and an in-memory sink. */
export const scaleRun = (
  source: ScaleSource,
  store: FeedStateStore,
  ledger: Ledger,
  options: { budgetMs: number; movesPerPoll: number; arrivalsPerPoll: number; listPageSize?: number },
): ScaleRun => {
  const config = parseConfig({
    sources: [{ id: 'big', url: source.standIn.url }],
    destination: { url: 'http://127.0.0.1:9/dicom-web' },
  });
  const items: WorkItem[] = [];
  const settings = {
    ...feedSettings(config, ledger),
    ...(options.listPageSize === undefined ? {} : { listPageSize: options.listPageSize }),
  };
  const context: FeedContext = {
    sourceId: 'big',
    source: new OrthancClient(
      createEndpoint(config.sources[0] as (typeof config.sources)[number], config.timeouts),
    ),
    store,
    sink: { enqueue: async (queued) => void items.push(...queued) },
    log: createLog({ level: 'SILENT' }),
    ...settings,
    now: () => source.standIn.clock,
  };
  const { standIn } = source;
  const start = standIn.clock;
  const run: ScaleRun = {
    items,
    settings: settings.settings,
    reports: [],
    used: [],
    budgetMs: options.budgetMs,
    // A page of changes with one chunk of its lookups, or a page of the listing (its overlap included).
    overshootMs: COSTS.request + CHUNK_LOOKUPS * COSTS.request + 2 * settings.listPageSize * COSTS.perItem,
    poll: async ({ sweepNow } = {}) => {
      standIn.clock = Math.max(standIn.clock, start + run.reports.length * PERIOD_MS);
      for (let n = 0; n < options.arrivalsPerPoll; n++) addStudy(source, ['NewStudy', 'StableStudy']);
      const began = standIn.clock;
      const report = await pollSource(
        { ...context, settings: run.settings, deadline: began + options.budgetMs },
        { sweepNow: sweepNow === true },
      );
      run.used.push(standIn.clock - began);
      run.reports.push(report);
      moveSome(source, items, options.movesPerPoll);
      return report;
    },
  };
  return run;
};

/** The forwarder moves some queued studies meanwhile: they leave the source, shifting the listing. */
const moveSome = (source: ScaleSource, items: readonly WorkItem[], count: number): void => {
  let moved = 0;
  for (let index = items.length - 1; index >= 0 && moved < count; index--) {
    const id = items[index]?.studyId ?? '';
    if (source.standIn.has(id)) {
      source.standIn.deleteStudy(id);
      moved++;
    }
  }
};

/** How many times each study was queued. */
export const queuedCounts = (items: readonly WorkItem[]): Map<string, number> => {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(item.studyId, (counts.get(item.studyId) ?? 0) + 1);
  return counts;
};

/** Polls until the feed is read, the watch list is empty, no sweep is under way, and `done`. */
export const pollUntil = async (run: ScaleRun, done: () => boolean, limit: number): Promise<void> => {
  for (let polls = 0; polls < limit; polls++) {
    const report = await run.poll();
    if (!report.outOfTime && !report.sweeping && report.waiting === 0 && done()) return;
  }
  throw new Error(`still busy after ${limit} polls: ${JSON.stringify(run.reports.slice(-3))}`);
};
