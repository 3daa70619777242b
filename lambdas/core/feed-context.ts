/**
 * What the change-feed reader, the watch list and the sweep share: their context, the poll's
 * clock and deadlines, lookups at the source that one failure does not stop, and the decision
 * to queue a study whole, which remembers what it queued so that nothing queues it twice, and
 * holds back what may not move yet (move-timing.ts) for a later sweep to queue.
 */
import { runBounded } from './concurrency.ts';
import type { ForwarderConfig } from './config.ts';
import { describe, ForwarderError } from './errors.ts';
import type { Log } from './log.ts';
import { type MoveTiming, type StudyTimes, whenMovable } from './move-timing.ts';
import type { OrthancClient } from './orthanc-client.ts';
import {
  type FeedProgress,
  type FeedStateStore,
  QUEUED_MEMORY_MS,
  type QueuedStudy,
  type WorkItem,
  type WorkPriority,
  type WorkSink,
} from './ports.ts';

export type Trigger = ForwarderConfig['trigger'];

export interface FeedContext {
  readonly sourceId: string;
  /** Which change makes work; StableStudy when absent. */
  readonly trigger?: Trigger | undefined;
  /**
   * Whether the study was left at the source on purpose (copied, or skipped by the filters) and
   * has not changed since: such a study is not queued again.
   */
  readonly isSettled?:
    | ((sourceId: string, studyId: string, lastUpdate: string | undefined) => Promise<boolean>)
    | undefined;
  readonly source: OrthancClient;
  readonly store: FeedStateStore;
  readonly sink: WorkSink;
  readonly log: Log;
  /** Changes per `/changes` request. */
  readonly pageSize: number;
  /** Studies per page of the watch list and of the sweep's listing. */
  readonly listPageSize: number;
  readonly quietMs: number;
  readonly sweepIntervalMs: number;
  /** The routing digest in force (routing.ts): a study remembered under another one is queued again. */
  readonly settings: string;
  /** When the source's studies may move (move-timing.ts); absent: at any time. */
  readonly timing?: MoveTiming | undefined;
  readonly now?: () => number;
  /**
   * Epoch ms after which no further request starts (a Lambda about to time out): each phase
   * stops where its last durable step left it, and the next poll goes on from there.
   */
  readonly deadline?: number | undefined;
}

/** What a poll counts as it goes. */
export interface Tally {
  queued: number;
  /** Lookups the source answered with an error: logged, left for a later poll. */
  lookupFailures: number;
  /** Studies (or series) not queued since they may not move yet: a later sweep queues them. */
  held: number;
}

export const clock = (ctx: FeedContext): number => (ctx.now ?? Date.now)();

export const pastDeadline = (ctx: FeedContext, deadline: number | undefined): boolean =>
  deadline !== undefined && clock(ctx) >= deadline;

export const workItem = (
  sourceId: string,
  studyId: string,
  reason: WorkItem['reason'],
  priority: WorkPriority,
  seriesId?: string,
): WorkItem => ({
  sourceId,
  studyId,
  ...(seriesId === undefined ? {} : { seriesId }),
  reason,
  // Absent means new: a message without one (queued by an older version) is served first, as it was.
  ...(priority === 'backlog' ? { priority } : {}),
});

/** Whether a study (or series) of this source may move now: one that may not is held back, not queued. */
export const mayMoveNow = (ctx: FeedContext, study: StudyTimes): boolean =>
  whenMovable(ctx.timing, study, clock(ctx)).waitsFor === undefined;

/** Lookups a few at a time: each is a few ms at the source. */
const LOOKUPS_IN_FLIGHT = 8;

type Lookup<T> = { readonly found: T } | { readonly failed: unknown };

/**
 * Looks up each key on its own, a few at a time: one failing does not stop the others. Keys not
 * started by the deadline are left out of the answer.
 */
export const lookUpEach = async <T>(
  ctx: FeedContext,
  keys: readonly string[],
  lookup: (key: string) => Promise<T>,
  deadline?: number,
): Promise<Map<string, Lookup<T>>> => {
  const results = new Map<string, Lookup<T>>();
  await runBounded(keys, LOOKUPS_IN_FLIGHT, async (key) => {
    if (pastDeadline(ctx, deadline)) return;
    try {
      results.set(key, { found: await lookup(key) });
    } catch (error) {
      results.set(key, { failed: error });
    }
  });
  return results;
};

/**
 * Sorts out a batch's failed lookups. One the source answered with an error concerns that
 * resource alone: it is logged with its ID (an Orthanc ID, never a tag) and `outcome` (what
 * becomes of it), counted, and left behind. One that got no answer (refused, reset, timed out,
 * malformed) means the source is unreachable: it is returned, for the caller to throw once what
 * succeeded is durable.
 */
export const sortFailures = (
  ctx: FeedContext,
  tally: Tally,
  outcome: string,
  results: ReadonlyMap<string, Lookup<unknown>>,
): unknown => {
  let unreachable: unknown;
  for (const [id, result] of results) {
    if (!('failed' in result)) continue;
    const error = result.failed;
    if (error instanceof ForwarderError && error.status !== undefined) {
      tally.lookupFailures++;
      ctx.log.warn(outcome, {
        sourceId: ctx.sourceId,
        id,
        error: describe(error),
      });
    } else {
      unreachable ??= error;
    }
  }
  return unreachable;
};

/**
 * Looks up each key; what fails is sorted out (sortFailures): left out and logged as `outcome`,
 * or thrown when the source did not answer. Nothing else of the batch is durable yet.
 */
export const lookUpAll = async <T>(
  ctx: FeedContext,
  tally: Tally,
  keys: readonly string[],
  lookup: (key: string) => Promise<T>,
  outcome: string,
): Promise<Map<string, T>> => {
  const results = await lookUpEach(ctx, keys, lookup);
  const unreachable = sortFailures(ctx, tally, outcome, results);
  if (unreachable !== undefined) throw unreachable;
  return new Map([...results].flatMap(([key, result]) => ('found' in result ? [[key, result.found]] : [])));
};

/** A source's progress as this poll knows it; a save fails once another poll saved first. */
export interface ProgressRef {
  readonly current: FeedProgress;
  save(next: FeedProgress): Promise<boolean>;
}

/** The stored progress, or a first one: the first sweep comes one interval after the first poll. */
export const loadProgress = async (ctx: FeedContext): Promise<ProgressRef> => {
  const stored = await ctx.store.progress(ctx.sourceId);
  let version = stored?.version;
  let current = stored?.progress ?? { watchAfter: '', sweepStartedAt: clock(ctx), settings: ctx.settings };
  const ref: ProgressRef = {
    get current() {
      return current;
    },
    save: async (next) => {
      if (!(await ctx.store.saveProgress(ctx.sourceId, version, next))) return false;
      version = (version ?? 0) + 1;
      current = next;
      return true;
    },
  };
  if (stored === undefined) await ref.save(current);
  return ref;
};

/** A study the feed would queue whole, as it saw it. */
export interface Candidate extends StudyTimes {
  readonly studyId: string;
  readonly lastUpdate: string | undefined;
  /**
   * Orthanc called it stable, or its LastUpdate stayed the same for the quiet time: an instance
   * that arrives later gets a later LastUpdate, so this state can be remembered.
   */
  readonly steady: boolean;
  readonly reason: WorkItem['reason'];
  readonly priority: WorkPriority;
}

const remembered = (ctx: FeedContext, memory: QueuedStudy | undefined, candidate: Candidate): boolean =>
  memory !== undefined &&
  candidate.steady &&
  memory.lastUpdate === candidate.lastUpdate &&
  memory.settings === ctx.settings &&
  clock(ctx) - memory.queuedAt < QUEUED_MEMORY_MS;

/** What the feed store remembers of the steady candidates: only a steady state is remembered. */
const recall = async (
  ctx: FeedContext,
  candidates: readonly Candidate[],
): Promise<Map<string, QueuedStudy>> => {
  const steady = candidates.filter((c) => c.steady).map((c) => c.studyId);
  return new Map((await ctx.store.queued(ctx.sourceId, steady)).map((m) => [m.studyId, m]));
};

/** The steady candidates the ledger remembers left at the source (copied, skipped) as they are now. */
const settledOf = async (ctx: FeedContext, candidates: readonly Candidate[]): Promise<Set<string>> => {
  const settled = new Set<string>();
  await runBounded(candidates, LOOKUPS_IN_FLIGHT, async (c) => {
    if (c.steady && (await ctx.isSettled?.(ctx.sourceId, c.studyId, c.lastUpdate))) settled.add(c.studyId);
  });
  return settled;
};

/**
 * Queues each candidate unless it was queued before in the same state under the same settings
 * (it is then queued, in flight, or done: its outcome followed from that state), or the ledger
 * remembers it left at the source in that state. One that may not move yet is held back: neither
 * queued nor remembered, so that a sweep queues it once it may (docs/operations.md). Remembers
 * what it queued or found settled. Returns the IDs it queued.
 */
export const queueStudies = async (
  ctx: FeedContext,
  tally: Tally,
  candidates: readonly Candidate[],
): Promise<Set<string>> => {
  const memory = await recall(ctx, candidates);
  const fresh = candidates.filter((c) => !remembered(ctx, memory.get(c.studyId), c));
  const settled = await settledOf(ctx, fresh);
  const held = new Set(
    fresh.filter((c) => !settled.has(c.studyId) && !mayMoveNow(ctx, c)).map((c) => c.studyId),
  );
  const due = fresh.filter((c) => !settled.has(c.studyId) && !held.has(c.studyId));
  await ctx.sink.enqueue(due.map((c) => workItem(ctx.sourceId, c.studyId, c.reason, c.priority)));
  tally.queued += due.length;
  tally.held += held.size;
  const queuedAt = clock(ctx);
  await ctx.store.rememberQueued(
    ctx.sourceId,
    fresh.flatMap((c) =>
      c.steady && c.lastUpdate !== undefined && !held.has(c.studyId)
        ? [{ studyId: c.studyId, lastUpdate: c.lastUpdate, settings: ctx.settings, queuedAt }]
        : [],
    ),
  );
  return new Set(due.map((c) => c.studyId));
};
