/**
 * What a worker does with one queued message, in local mode and in the forwarder Lambda alike:
 * validate it, take the study's lease, run the move protocol, record and log the outcome, and
 * watch the study again if instances arrived during the move.
 */
import { confirmOpenDeletion } from './audit.ts';
import type { Destination } from './destinations.ts';
import { describe, NotYetError, permanent, SourcePausedError, transient } from './errors.ts';
import type { Log } from './log.ts';
import { type MoveContext, type MoveOptions, moveStudy } from './move-study.ts';
import { type MoveTiming, whenMovable, windowOpen } from './move-timing.ts';
import type { OrthancClient } from './orthanc-client.ts';
import type { DeletionIntent, FeedStateStore, Ledger, StudyOutcome, WorkItem } from './ports.ts';
import { decodeWorkItem } from './work-item.ts';

export interface Engine {
  readonly sources: ReadonlyMap<string, OrthancClient>;
  readonly destinations: readonly Destination[];
  readonly ledger: Ledger;
  /** The change feed's state: a study whose late arrivals stayed at the source is watched again. */
  readonly feed?: FeedStateStore | undefined;
  readonly options: MoveOptions;
  /** Per source, how many of its studies may be moved at once (`maxConcurrentMoves`); absent: any. */
  readonly slots?: ReadonlyMap<string, number>;
  /** Per source, when its studies may move (transfer windows, minimum age); absent: at any time. */
  readonly timing?: ReadonlyMap<string, MoveTiming>;
  readonly log: Log;
  /** Who holds leases taken by this worker. */
  readonly owner: string;
  /** How long a lease lasts: longer than one move may take, short enough to outlive a crash. */
  readonly leaseMs: number;
  readonly now?: () => number;
  readonly onStep?: MoveContext['onStep'];
  readonly onDelivery?: MoveContext['onDelivery'];
}

/**
 * The STOW limits of an attempt: each counted attempt before it halves the batches (count and
 * bytes), so that a batch too large to get through before a Lambda's deadline gets smaller until
 * it does; an uncounted retry made headway, and starts again from the configured limits.
 */
export const attemptStowLimits = (stow: MoveOptions['stow'], attempt: number): MoveOptions['stow'] => {
  const factor = 2 ** Math.min(30, Math.max(0, attempt - 1));
  return {
    ...stow,
    maxInstances: Math.max(1, Math.ceil(stow.maxInstances / factor)),
    maxBytes: Math.max(1, Math.floor(stow.maxBytes / factor)),
  };
};

/** Per study, also for a series item: two series of one study are never moved at once. */
const leaseKey = (sourceId: string, studyId: string) => `study#${sourceId}#${studyId}`;

/**
 * Instances that arrived during a move stay at the source, and Orthanc announces the study
 * stable again only StableAge later: nothing in the feed says so before then (a NewInstance
 * change names the instance, not its study). Watch such a study, so that the feed queues it once
 * it is stable (or quiet), and local mode's `--until-idle` does not call the source drained
 * meanwhile. Only after a move that deleted something: a copy, a skipped study or one found gone
 * leaves nothing of ours behind. Instances the destination refused for good, or held by a
 * conflict, do not count: they stay, and moving them again would loop.
 */
const watchLateArrivals = async (engine: Engine, item: WorkItem, outcome: StudyOutcome): Promise<void> => {
  const source = engine.sources.get(item.sourceId);
  if (engine.feed === undefined || source === undefined || outcome.deleted === 0) return;
  try {
    const left =
      item.seriesId === undefined
        ? await source.studyInstances(item.studyId)
        : await source.seriesInstances(item.seriesId);
    if (left === undefined || left.length === 0) return;
    const stays = new Set([
      ...(await engine.ledger.rejected(item.sourceId, item.studyId)).map((r) => r.instanceId),
      ...(await engine.ledger.conflicts({ sourceId: item.sourceId, studyId: item.studyId })).map(
        (c) => c.instanceId,
      ),
    ]);
    if (left.some((instance) => !stays.has(instance.id))) {
      await engine.feed.watch(item.sourceId, [item.studyId], (engine.now ?? Date.now)());
    }
  } catch (error) {
    // The study's own StableStudy change still queues it; only the idle check is less sure.
    engine.log.warn('could not check a moved study for late arrivals', {
      sourceId: item.sourceId,
      studyId: item.studyId,
      error: describe(error),
    });
  }
};

/**
 * Renews the leases while the move runs, so that a long move keeps them however long it takes. A
 * renewal refused means another worker took one (this one's had run out): the move is stopped
 * before it deletes anything more.
 */
const holdLeases = (engine: Engine, keys: readonly string[], lost: AbortController): (() => void) => {
  const now = engine.now ?? Date.now;
  const timer = setInterval(() => {
    for (const key of keys) {
      engine.ledger.acquireLease(key, engine.owner, engine.leaseMs, now()).then(
        (held) => {
          if (!held) lost.abort(transient('a lease of the move was taken by another worker'));
        },
        (error: unknown) => {
          // The lease still runs; the next tick tries again.
          engine.log.warn('could not renew a lease', { error: describe(error) });
        },
      );
    }
  }, engine.leaseMs / 3);
  timer.unref();
  return () => clearInterval(timer);
};

/**
 * One of the source's `maxConcurrentMoves` slots, each a lease in the ledger, so that every
 * worker of every process counts against the same number; the first free one from a random
 * start, so that workers spread. `''` when the source has no cap, undefined when all are taken.
 */
const takeSlot = async (engine: Engine, sourceId: string): Promise<string | undefined> => {
  const count = engine.slots?.get(sourceId);
  if (count === undefined) return '';
  const start = Math.floor(Math.random() * count);
  for (let i = 0; i < count; i++) {
    const key = `slot#${sourceId}#${(start + i) % count}`;
    if (await engine.ledger.acquireLease(key, engine.owner, engine.leaseMs, (engine.now ?? Date.now)()))
      return key;
  }
  return undefined;
};

/**
 * A study that may not move yet waits until it may, before it takes a slot. Its source is asked
 * for its LastUpdate and StudyDate only when they can matter: a minimum age, or a closed window
 * with perhaps a live exception.
 */
const waitForTiming = async (engine: Engine, item: WorkItem, source: OrthancClient): Promise<void> => {
  const timing = engine.timing?.get(item.sourceId);
  const now = (engine.now ?? Date.now)();
  if (timing === undefined || (timing.minimumAge === undefined && windowOpen(timing, now))) return;
  const study = await source.study(item.studyId);
  // Gone: the move finds it so, and records what an earlier attempt deleted.
  if (study === undefined) return;
  const { at, waitsFor } = whenMovable(timing, study, now);
  if (waitsFor !== undefined) throw new NotYetError(item, waitsFor, at, now);
};

/**
 * The outcome to record. A previous attempt that died between its deletion and its outcome left
 * its deletion open; finding the study gone now, this attempt records that deletion, not `gone`
 * (without its size, which the intent does not keep: the totals' moved bytes miss it).
 */
const outcomeToRecord = (outcome: StudyOutcome, open: DeletionIntent | undefined): StudyOutcome =>
  open === undefined || open.completedAt !== undefined || outcome.result !== 'gone'
    ? outcome
    : {
        ...outcome,
        // A deletion as unrouted (no destination verified it) is a skip, as its move would have said.
        result: open.verifiedBy.length === 0 ? 'skipped' : 'moved',
        instances: open.instances,
        deleted: open.instances,
      };

export const forwardWorkItem = async (
  engine: Engine,
  body: string,
  limits: {
    readonly signal?: AbortSignal;
    /** No new STOW batch or push job after it, and those in flight are cut (epoch ms). */
    readonly deadline?: number;
    /** No new slice of instances verified after it (epoch ms): the rest waits for the retry. */
    readonly finishBy?: number;
    /** Which receive of the item this is, 1 for the first: a retry sends smaller batches. */
    readonly attempt?: number;
  } = {},
): Promise<StudyOutcome> => {
  const item = decodeWorkItem(body);
  const source = engine.sources.get(item.sourceId);
  if (source === undefined) throw permanent(`work item names an unknown source '${item.sourceId}'`);
  // Asked at every item, so that a pause takes effect without a restart; a move under way finishes.
  if ((await engine.feed?.control(item.sourceId))?.pausedAt !== undefined)
    throw new SourcePausedError(item.sourceId);
  await waitForTiming(engine, item, source);
  const now = engine.now ?? Date.now;
  const slot = await takeSlot(engine, item.sourceId);
  if (slot === undefined) {
    // Nothing was tried: the study waits its turn without using up an attempt.
    throw transient(
      `source '${item.sourceId}' has its maxConcurrentMoves (${engine.slots?.get(item.sourceId)}) moves running: the study waits`,
      { uncounted: true },
    );
  }
  const key = leaseKey(item.sourceId, item.studyId);
  if (!(await engine.ledger.acquireLease(key, engine.owner, engine.leaseMs, now()))) {
    if (slot !== '') await engine.ledger.releaseLease(slot, engine.owner);
    throw transient('the study is being moved by another worker');
  }
  const held = slot === '' ? [key] : [key, slot];
  const lost = new AbortController();
  const releaseHold = holdLeases(engine, held, lost);
  try {
    const seriesId = item.seriesId ?? '';
    const intents = await engine.ledger.intents(item.sourceId, item.studyId);
    const last = intents.find((intent) => intent.seriesId === seriesId);
    if (last !== undefined) await confirmOpenDeletion(engine.ledger, source, last);
    const context: MoveContext = {
      sourceId: item.sourceId,
      source,
      destinations: engine.destinations,
      ledger: engine.ledger,
      options:
        (limits.attempt ?? 1) > 1
          ? { ...engine.options, stow: attemptStowLimits(engine.options.stow, limits.attempt ?? 1) }
          : engine.options,
      log: engine.log,
      now,
      onStep: engine.onStep,
      onDelivery: engine.onDelivery,
      deadline: limits.deadline,
      finishBy: limits.finishBy,
      intents,
      signal: limits.signal === undefined ? lost.signal : AbortSignal.any([limits.signal, lost.signal]),
    };
    const outcome = outcomeToRecord(await moveStudy(context, item.studyId, item.seriesId), last);
    // An unchanged study was looked at and left as it was: there is nothing to record.
    if (outcome.result !== 'unchanged') await engine.ledger.record(outcome);
    await engine.ledger.completeIntent(item.sourceId, item.studyId, seriesId, now());
    engine.log.info('study outcome', {
      ...outcome,
      ...(item.seriesId === undefined ? {} : { seriesId: item.seriesId }),
    });
    await watchLateArrivals(engine, item, outcome);
    return outcome;
  } finally {
    releaseHold();
    for (const lease of held) await engine.ledger.releaseLease(lease, engine.owner);
  }
};
