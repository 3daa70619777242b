/**
 * The move protocol for one study of one source (or one series of it): snapshot, route, send to
 * each destination what it lacks, verify that it holds the same instances, delete exactly those
 * (and only while they are still the files that were verified), record. An instance the
 * destination holds as another instance under its SOPInstanceUID is a conflict: it stays at the
 * source, is not sent again, and waits for the operator. Every step is safe to repeat, so a crash
 * anywhere converges when the work item is delivered again.
 */
import type { Readable } from 'node:stream';
import type { Agent, Dispatcher } from 'undici';
import { runBounded } from './concurrency.ts';
import type { VerifyLevel } from './config.ts';
import { destinationServed, destinationUnavailable, isDestinationFault } from './destination-faults.ts';
import { type Destination, type DestinationServer, isUnreachable } from './destinations.ts';
import { describe, ForwarderError, NotVerifiedError, permanent, transient, withProgress } from './errors.ts';
import { unknownAttributes } from './identity.ts';
import type { Log } from './log.ts';
import type { OrthancClient, SourceInstance } from './orthanc-client.ts';
import type {
  Conflict,
  DeletionIntent,
  Ledger,
  MoveResult,
  RejectedInstance,
  SettledStudy,
  StudyOutcome,
} from './ports.ts';
import { pushBatches } from './push.ts';
import type { ListedCopy } from './qido-client.ts';
import { type ReadAheadLimits, readAhead, readAheadLimits } from './read-ahead.ts';
import { routeStudy, studyFacts } from './routing.ts';
import type { StowClient, StowPart } from './stow-client.ts';
import {
  type Check,
  checkFor,
  completeCopies,
  copiesByUid,
  duplicatedUids,
  judge,
  judgeIdentity,
  readSeriesIdentities,
  sourceIdentities,
  type Verdict,
} from './verification.ts';

export interface MoveOptions {
  readonly deleteAfterForward: boolean;
  readonly stow: {
    readonly maxInstances: number;
    readonly maxBytes: number;
    readonly parallel: number;
    readonly readAheadInstances: number;
    readonly readAheadBytes: number;
  };
  /** A study no destination's filter accepts stays at the source, or is deleted there. */
  readonly unrouted: 'keep' | 'delete';
  /**
   * Whether studies can be left at the source on purpose (copy mode, filters that skip): then
   * the ledger remembers them, and an unchanged one is not looked at again.
   */
  readonly settles: boolean;
  /** The routing digest (routing.ts): a study settled under another configuration is looked at again. */
  readonly routing: string;
  /** Longest wait for one push job, as for the answer to one relayed STOW request. */
  readonly pushJobTimeoutMs: number;
}

/** Points between the protocol's steps, where the fault-injection tests crash or pause a worker. */
export type MoveStep = 'snapshot-taken' | 'sent' | 'verified' | 'deleted';

/** What one move did at one destination (or its alternate): counts only. */
export interface DeliveryReport {
  readonly destinationId: string;
  /** Instances it stored in this move (STOW answers, push jobs). */
  readonly sent: number;
  /** Instances of the study it was verified to hold. */
  readonly verified: number;
  /** It failed in this move: unreachable, refused, or not holding what it was sent. */
  readonly failed: boolean;
}

export interface MoveContext {
  readonly sourceId: string;
  readonly source: OrthancClient;
  readonly destinations: readonly Destination[];
  readonly ledger: Ledger;
  readonly options: MoveOptions;
  readonly log: Log;
  readonly now?: () => number;
  readonly signal?: AbortSignal;
  /**
   * Epoch ms after which no further STOW batch or push job starts (a Lambda about to time out):
   * what was sent is still verified and deleted, and the retry continues with the rest.
   */
  readonly deadline?: number | undefined;
  /**
   * Epoch ms after which no further slice of instances is verified, so that deletion and the
   * record still fit: what is verified by then is deleted, and the retry verifies the rest.
   */
  readonly finishBy?: number | undefined;
  /** Called after each step; only tests pass one. */
  readonly onStep?: ((step: MoveStep, studyId: string) => void | Promise<void>) | undefined;
  /** Told, once the study is verified, what each destination was sent and holds: local mode's metrics. */
  readonly onDelivery?: ((report: DeliveryReport) => void) | undefined;
  /** The last deletions of the study and of each series of it, from the ledger: where it went before. */
  readonly intents?: readonly DeletionIntent[] | undefined;
}

/**
 * Groups instances by series, then cuts batches bounded by count and bytes. Two instances with
 * one SOPInstanceUID never share a batch: a STOW answer names instances by UID alone.
 */
export const planBatches = (
  instances: readonly SourceInstance[],
  limits: { readonly maxInstances: number; readonly maxBytes: number },
): SourceInstance[][] => {
  const sorted = [...instances].sort((a, b) => a.seriesId.localeCompare(b.seriesId));
  const batches: SourceInstance[][] = [];
  let batch: SourceInstance[] = [];
  let uids = new Set<string>();
  let bytes = 0;
  for (const instance of sorted) {
    const full =
      batch.length >= limits.maxInstances ||
      (batch.length > 0 && bytes + instance.fileSize > limits.maxBytes) ||
      uids.has(instance.sopInstanceUid);
    if (full) {
      batches.push(batch);
      batch = [];
      uids = new Set();
      bytes = 0;
    }
    batch.push(instance);
    uids.add(instance.sopInstanceUid);
    bytes += instance.fileSize;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
};

/** Per series, then by count and bytes: one push job per batch, so that a failure resends little. */
export const planSeriesBatches = (
  instances: readonly SourceInstance[],
  limits: { readonly maxInstances: number; readonly maxBytes: number },
): SourceInstance[][] => {
  const bySeries = new Map<string, SourceInstance[]>();
  for (const instance of instances) {
    const series = bySeries.get(instance.seriesId) ?? [];
    series.push(instance);
    bySeries.set(instance.seriesId, series);
  }
  return [...bySeries.values()].flatMap((series) => planBatches(series, limits));
};

/** What was sent to one destination, by the instances' Orthanc IDs at the source. */
interface SendReport {
  /** Relay: listed by the STOW answers; push: in the jobs that succeeded. */
  readonly stored: Set<string>;
  readonly refused: Map<string, string>;
  /** Answered "already exists", or stored with a warning: only identity can tell. */
  readonly unproven: Set<string>;
  readonly gone: Set<string>;
  bytes: number;
  /** The first failure of a batch, reported once what arrived has been dealt with. */
  failure?: unknown;
}

const nothingSent = (): SendReport => ({
  stored: new Set(),
  refused: new Map(),
  unproven: new Set(),
  gone: new Set(),
  bytes: 0,
});

/** A batch's parts, their files asked for ahead on its lane to the source (read-ahead.ts). */
const partsOf = (
  ctx: MoveContext,
  batch: readonly SourceInstance[],
  lane: Dispatcher,
  limits: ReadAheadLimits,
  signal: AbortSignal | undefined,
): StowPart[] =>
  readAhead(
    batch,
    async (instance, ahead): Promise<Readable | undefined> => {
      try {
        return await ctx.source.openInstance(instance.id, signal, ahead ? { lane } : {});
      } catch (error) {
        // Deleted at the source meanwhile (by someone else): nothing to send, nothing lost.
        if (error instanceof ForwarderError && error.status === 404) return undefined;
        throw error;
      }
    },
    limits,
  );

/**
 * Why a batch that the deadline cut failed. An instance alone in the only batch of an attempt had
 * the whole window to itself: it will never fit one, and retrying it would time out for ever.
 */
const cutByDeadline = (batch: readonly SourceInstance[], alone: boolean, windowMs: number) => {
  const [only] = batch;
  if (alone && only !== undefined && batch.length === 1) {
    return permanent(
      `instance ${only.id} (${only.fileSize} bytes) cannot be sent within the ${Math.round(windowMs / 1000)} s ` +
        'one attempt allows: raise aws.forwarder.timeoutSeconds, or move this study in local mode',
    );
  }
  return transient('out of time: a batch was cut at the deadline; the next attempt sends smaller ones');
};

/**
 * Relays the batches with STOW-RS. A batch that fails, or is not started because the deadline
 * passed, does not stop the others: what did arrive is verified and deleted, and the retry sends
 * the rest. A batch still in flight at the deadline is cut, so that verification and deletion
 * keep the time reserved for them.
 */
const relay = async (
  ctx: MoveContext,
  stow: StowClient,
  instances: readonly SourceInstance[],
): Promise<SendReport> => {
  const report = nothingSent();
  const now = ctx.now ?? Date.now;
  const started = now();
  // The archive's own limit on a request, where it has one, bounds the configured one.
  const maxBytes = Math.min(ctx.options.stow.maxBytes, stow.maxBytes ?? Number.POSITIVE_INFINITY);
  const batches = planBatches(instances, { ...ctx.options.stow, maxBytes });
  const limits = readAheadLimits(ctx.options.stow, ctx.source.quickestAnswerMs());
  // A batch's lane goes to the next batch once every answer on it was read (the request
  // succeeded): its connection is open already.
  const lanes: Agent[] = [];
  await runBounded(batches, ctx.options.stow.parallel, async (batch) => {
    if (ctx.deadline !== undefined && now() >= ctx.deadline) {
      report.failure ??= transient('out of time: the rest of the study is sent by the next attempt');
      return;
    }
    const cut =
      ctx.deadline === undefined ? undefined : AbortSignal.timeout(Math.max(0, ctx.deadline - now()));
    const signals = [ctx.signal, cut].filter((signal) => signal !== undefined);
    const signal = signals.length === 0 ? undefined : AbortSignal.any(signals);
    const lane = lanes.pop() ?? (await ctx.source.lane());
    const result = await stow
      .store(partsOf(ctx, batch, lane, limits, signal), signal)
      .catch((error: unknown) => {
        // With the answers still ahead when the request failed part-way.
        void lane.destroy();
        if (cut?.aborted !== true || ctx.deadline === undefined) throw error;
        throw cutByDeadline(batch, batches.length === 1, ctx.deadline - started);
      });
    lanes.push(lane);
    // UIDs are unique within a batch (planBatches): each names one instance.
    const byUid = new Map(batch.map((instance) => [instance.sopInstanceUid, instance.id]));
    const ids = (uids: Iterable<string>) => [...uids].flatMap((uid) => byUid.get(uid) ?? []);
    for (const id of ids(result.stored)) report.stored.add(id);
    for (const id of ids([...result.existing, ...result.coerced])) report.unproven.add(id);
    for (const id of ids(result.goneAtSource)) report.gone.add(id);
    for (const [uid, reason] of result.refused) {
      const id = byUid.get(uid);
      if (id !== undefined) report.refused.set(id, reason);
    }
    report.bytes += result.bytes;
  })
    .catch((error: unknown) => {
      report.failure = error;
    })
    .finally(() => Promise.all(lanes.map((lane) => lane.destroy())));
  return report;
};

/** Has the source push the instances, one job per series (cut by count and bytes). */
const push = async (
  ctx: MoveContext,
  server: DestinationServer,
  instances: readonly SourceInstance[],
  snapshot: readonly SourceInstance[],
): Promise<SendReport> => {
  if (server.pushServerName === undefined) throw permanent("transfer 'push' needs pushServerName");
  const pushed = await pushBatches(
    {
      source: ctx.source,
      serverName: server.pushServerName,
      parallel: ctx.options.stow.parallel,
      jobTimeoutMs: ctx.options.pushJobTimeoutMs,
      now: ctx.now ?? Date.now,
      deadline: ctx.deadline,
      signal: ctx.signal,
    },
    planSeriesBatches(instances, ctx.options.stow),
    snapshot,
  );
  return { ...nothingSent(), stored: pushed.pushed, bytes: pushed.bytes, failure: pushed.failure };
};

/** What one destination was sent and holds in this move. */
interface Delivery {
  readonly destination: Destination;
  /** The destination, or its alternate while it is unreachable; undefined when neither answered. */
  readonly server: DestinationServer | undefined;
  readonly viaAlternate: boolean;
  /** Its level; a push is verified with QIDO at least: the STOW answer went to the source, not to us. */
  readonly level: VerifyLevel;
  /** What it listed before anything was sent, by SOPInstanceUID. */
  listedBefore: Map<string, ListedCopy[]>;
  /** The verdicts before sending, then after verification, by source instance ID. */
  verdicts: Map<string, Verdict>;
  /** The instances it held before anything was sent. */
  heldBefore: Set<string>;
  sent: SendReport;
  /** The first failure with this destination, reported once the others are dealt with. */
  failure?: unknown;
}

/** Notes a failure; one that says the destination is down starts its "unreachable since". */
const fail = (ctx: MoveContext, delivery: Delivery, error: unknown): void => {
  delivery.failure ??= error;
  if (!delivery.viaAlternate && isUnreachable(error)) {
    delivery.destination.health.unreachableSince ??= (ctx.now ?? Date.now)();
  }
  // A fault of the destination as a whole is logged once per period, not per study.
  if (isDestinationFault(delivery.destination, error)) return;
  ctx.log.warn('destination failed in this move', {
    sourceId: ctx.sourceId,
    destinationId: delivery.destination.id,
    server: delivery.server?.label ?? delivery.destination.primary.label,
    error: describe(error),
  });
};

/**
 * Notes, per destination, whether it served this move or refused us as a whole; returns the wait
 * the move ends in if one did.
 */
const destinationWait = (ctx: MoveContext, deliveries: readonly Delivery[]) => {
  const context = { log: ctx.log, now: ctx.now ?? Date.now, sourceId: ctx.sourceId };
  const waits = deliveries.map((delivery) => {
    if (delivery.failure === undefined) destinationServed(ctx.log, delivery.destination);
    ctx.onDelivery?.({
      destinationId: delivery.destination.id,
      sent: delivery.sent.stored.size,
      verified: [...delivery.verdicts.values()].filter((verdict) => verdict.kind === 'held').length,
      failed: delivery.failure !== undefined,
    });
    return destinationUnavailable(context, delivery.destination, delivery.failure);
  });
  return waits.find((wait) => wait !== undefined);
};

/** What the study's move knows besides its deliveries. */
interface Study {
  readonly id: string;
  readonly studyInstanceUid: string;
  readonly snapshot: readonly SourceInstance[];
  readonly identityOf: ReturnType<typeof sourceIdentities>;
  readonly duplicated: ReadonlySet<string>;
  /** Conflicts recorded before this move, by `instanceId#destinationId`. */
  readonly recorded: ReadonlyMap<string, Conflict>;
  /** Instances refused for good before: they stay at the source and are not sent again. */
  readonly rejectedBefore: ReadonlySet<string>;
}

const conflictKey = (instanceId: string, destinationId: string) => `${instanceId}#${destinationId}`;

const recordedConflict = (study: Study, instance: SourceInstance, delivery: Delivery) =>
  study.recorded.get(conflictKey(instance.id, delivery.destination.id));

/** Lists what a server holds of the study, completed from WADO-RS metadata where identity needs it. */
const listAt = async (
  ctx: MoveContext,
  server: DestinationServer,
  study: Study,
  needsIdentity: boolean,
): Promise<Map<string, ListedCopy[]>> => {
  const listed = await server.qido.studyInstances(study.studyInstanceUid, ctx.signal);
  const complete = listed.every((copy) => unknownAttributes(copy.identity).length === 0);
  if (!needsIdentity || complete) return copiesByUid(listed);
  const seriesOf = new Map<string, string>();
  for (const instance of study.snapshot) {
    const series = (await study.identityOf(instance))?.SeriesInstanceUID;
    if (series !== undefined) seriesOf.set(instance.sopInstanceUid, series);
  }
  return copiesByUid(await completeCopies(server, study.studyInstanceUid, listed, seriesOf, ctx.signal));
};

/**
 * Lists what the destination holds of the study, which also tells whether it is reachable. While
 * it has been unreachable for longer than its alternate's afterSeconds, the alternate serves this
 * move instead: it is listed, sent to and verified.
 */
const openDelivery = async (ctx: MoveContext, destination: Destination, study: Study): Promise<Delivery> => {
  const now = ctx.now ?? Date.now;
  const level =
    destination.verify === 'stow' && destination.transfer === 'push' ? 'qido' : destination.verify;
  const needsIdentity = level === 'identity' || level === 'checksum' || study.duplicated.size > 0;
  const opened = (server: DestinationServer | undefined, viaAlternate: boolean): Delivery => ({
    destination,
    server,
    viaAlternate,
    level,
    listedBefore: new Map(),
    verdicts: new Map(),
    heldBefore: new Set(),
    sent: nothingSent(),
  });
  const { primary, alternate, health } = destination;
  try {
    const delivery = opened(primary, false);
    delivery.listedBefore = await listAt(ctx, primary, study, needsIdentity);
    health.unreachableSince = undefined;
    return delivery;
  } catch (error) {
    const failed = opened(undefined, false);
    fail(ctx, failed, error);
    const since = health.unreachableSince;
    if (alternate === undefined || since === undefined || now() - since < alternate.afterMs) return failed;
    ctx.log.warn('destination unreachable: its alternate serves this move', {
      sourceId: ctx.sourceId,
      destinationId: destination.id,
      server: primary.label,
      alternate: alternate.server.label,
      unreachableMs: now() - since,
    });
    const viaAlternate = opened(alternate.server, true);
    try {
      viaAlternate.listedBefore = await listAt(ctx, alternate.server, study, needsIdentity);
      return viaAlternate;
    } catch (alternateError) {
      fail(ctx, viaAlternate, alternateError);
      return { ...viaAlternate, server: undefined };
    }
  }
};

const checksOf = (study: Study, delivery: Delivery, instances: readonly SourceInstance[]) =>
  new Map<SourceInstance, Check>(
    instances.map((instance) => [
      instance,
      checkFor(delivery.level, instance, { duplicated: study.duplicated, unproven: delivery.sent.unproven }),
    ]),
  );

/**
 * The operator chose to replace the destination's copy: delete the copies the destination holds
 * under the UID in this study (another patient's copy elsewhere is not ours to touch), unless one
 * already is the source's instance (a previous attempt replaced it; bytes cannot be told apart
 * that cheaply, so a `content` conflict is replaced again). Only at an Orthanc whose REST API we
 * have; elsewhere the decision waits, and says why.
 */
const replaceAtDestination = async (
  ctx: MoveContext,
  study: Study,
  delivery: Delivery,
  server: DestinationServer,
): Promise<void> => {
  const replaced = study.snapshot.filter(
    (instance) => recordedConflict(study, instance, delivery)?.resolution === 'replace-destination',
  );
  if (replaced.length === 0) return;
  const { orthanc } = server;
  if (orthanc === undefined) {
    fail(
      ctx,
      delivery,
      permanent(
        `replace-destination: '${delivery.destination.id}' at ${server.label} has no orthancUrl, so the forwarder cannot delete there`,
      ),
    );
    return;
  }
  for (const instance of replaced) {
    const copies = delivery.listedBefore.get(instance.sopInstanceUid);
    const byContent = recordedConflict(study, instance, delivery)?.attributes.includes('content') === true;
    if (!byContent && judgeIdentity(await study.identityOf(instance), copies).kind === 'held') continue;
    const inStudy = [];
    for (const id of await orthanc.findInstances(instance.sopInstanceUid, ctx.signal)) {
      if ((await orthanc.instanceStudy(id))?.studyInstanceUid === study.studyInstanceUid) inStudy.push(id);
    }
    await orthanc.deleteInstances(inStudy);
    delivery.listedBefore.delete(instance.sopInstanceUid);
    ctx.log.info('replaced at the destination by the operator’s decision', {
      sourceId: ctx.sourceId,
      studyId: study.id,
      instanceId: instance.id,
      destinationId: delivery.destination.id,
    });
  }
};

/**
 * Whether this move may send the instance to the destination, given what was recorded: not what
 * it holds already or refused for good, not what waits for the operator or was kept at the source.
 * An accepted destination copy that the destination has lost since is sent after all.
 */
const sendable = (study: Study, delivery: Delivery, instance: SourceInstance): boolean => {
  const verdict = delivery.verdicts.get(instance.id)?.kind;
  if (verdict === 'held' || study.rejectedBefore.has(instance.id)) return false;
  const conflict = recordedConflict(study, instance, delivery);
  if (conflict?.resolution === 'accept-destination') return verdict === 'absent';
  return conflict === undefined || conflict.resolution === 'replace-destination';
};

/** Sends the destination what it lacks (or holds as another instance, so that it may take it). */
const deliver = async (ctx: MoveContext, study: Study, delivery: Delivery): Promise<void> => {
  const { server } = delivery;
  if (server === undefined) return;
  try {
    await replaceAtDestination(ctx, study, delivery, server);
    delivery.verdicts = await judge(
      {
        source: ctx.source,
        server,
        studyInstanceUid: study.studyInstanceUid,
        listed: delivery.listedBefore,
        stored: new Set(),
        compareBytes: false,
        identityOf: study.identityOf,
        signal: ctx.signal,
      },
      checksOf(study, delivery, study.snapshot),
    );
  } catch (error) {
    fail(ctx, delivery, error);
    return;
  }
  delivery.heldBefore = new Set(
    study.snapshot.filter((instance) => delivery.verdicts.get(instance.id)?.kind === 'held').map((i) => i.id),
  );
  const toSend = study.snapshot.filter((instance) => sendable(study, delivery, instance));
  if (delivery.level === 'identity' || delivery.level === 'checksum') {
    // Read while the instances are sent: verification needs every identity, sending none. A
    // failure here shows again, awaited, when verification asks.
    readSeriesIdentities(study.identityOf, toSend).catch(() => undefined);
  }
  delivery.sent =
    delivery.destination.transfer === 'push'
      ? await push(ctx, server, toSend, study.snapshot)
      : await relay(ctx, server.stow, toSend);
  if (delivery.sent.failure !== undefined) fail(ctx, delivery, delivery.sent.failure);
};

/** At most this many instances are verified between two looks at the clock. */
const VERIFY_SLICE = 200;

/**
 * The checks a series at a time (a large series cut at VERIFY_SLICE): the identities are read
 * per series at both ends, so that no two slices read the same series unless it is larger than one.
 */
const verifySlices = (checks: ReadonlyMap<SourceInstance, Check>): Map<SourceInstance, Check>[] => {
  const slices: Map<SourceInstance, Check>[] = [];
  let slice = new Map<SourceInstance, Check>();
  let series: string | undefined;
  for (const [instance, check] of [...checks].sort(([a], [b]) => a.seriesId.localeCompare(b.seriesId))) {
    if (slice.size > 0 && (instance.seriesId !== series || slice.size >= VERIFY_SLICE)) {
      slices.push(slice);
      slice = new Map();
    }
    slice.set(instance, check);
    series = instance.seriesId;
  }
  if (slice.size > 0) slices.push(slice);
  return slices;
};

/**
 * Verifies, at each destination (or the alternate that served it), every instance of the
 * snapshot — slice by slice until ctx.finishBy, and always one slice, so that every attempt
 * verifies something: what is not verified stays at the source for the retry.
 */
const verify = async (ctx: MoveContext, study: Study, delivery: Delivery): Promise<void> => {
  const { server } = delivery;
  if (server === undefined) return;
  const checks = checksOf(study, delivery, study.snapshot);
  const trustsAnswers = [...checks.values()].every((check) => check === 'stow');
  const now = ctx.now ?? Date.now;
  try {
    const listed = trustsAnswers
      ? delivery.listedBefore
      : await listAt(
          ctx,
          server,
          study,
          [...checks.values()].some((check) => check === 'identity' || check === 'checksum'),
        );
    const input = {
      source: ctx.source,
      server,
      studyInstanceUid: study.studyInstanceUid,
      listed,
      stored: delivery.sent.stored,
      compareBytes: true,
      identityOf: study.identityOf,
      signal: ctx.signal,
    };
    delivery.verdicts = new Map();
    for (const slice of verifySlices(checks)) {
      if (delivery.verdicts.size > 0 && ctx.finishBy !== undefined && now() >= ctx.finishBy) break;
      for (const [id, verdict] of await judge(input, slice)) delivery.verdicts.set(id, verdict);
    }
  } catch (error) {
    delivery.verdicts = new Map();
    fail(ctx, delivery, error);
  }
};

/**
 * Where an instance stands at one destination once verified: the operator's decision on a
 * recorded conflict comes first, then the verdict.
 */
type Standing = 'held' | 'kept' | 'open-conflict' | 'new-conflict' | 'refused' | 'unverified';

const standing = (study: Study, delivery: Delivery, instance: SourceInstance): Standing => {
  const recorded = recordedConflict(study, instance, delivery);
  const verdict = delivery.verdicts.get(instance.id);
  // Accepted: the destination's copy stands, as long as it verifiably still has one.
  if (recorded?.resolution === 'accept-destination')
    return verdict?.kind === 'conflict' || verdict?.kind === 'held' ? 'held' : 'unverified';
  if (recorded?.resolution === 'keep-source') return 'kept';
  if (recorded !== undefined && recorded.resolution === undefined) return 'open-conflict';
  if (verdict?.kind === 'held') return 'held';
  // A replacement that still differs is not a new conflict: the decision stands, the retry retries.
  if (verdict?.kind === 'conflict') return recorded === undefined ? 'new-conflict' : 'unverified';
  return delivery.sent.refused.has(instance.id) ? 'refused' : 'unverified';
};

/** Why this destination does not hold the instance, if it said so: for the record of refusals. */
const refusalAt = (delivery: Delivery, instance: SourceInstance): string[] => {
  const reason = delivery.sent.refused.get(instance.id);
  return reason === undefined ? [] : [`destination '${delivery.destination.id}': ${reason}`];
};

/**
 * Whether what the ledger remembers of a settled study still describes it: same LastUpdate at
 * the source (it changes when an instance arrives), same routing, and the same instance count
 * when the caller knows it.
 */
export const stillSettled = (
  settled: SettledStudy | undefined,
  current: { readonly lastUpdate: string | undefined; readonly routing: string; readonly instances?: number },
): boolean =>
  settled !== undefined &&
  settled.lastUpdate === (current.lastUpdate ?? '') &&
  settled.routing === current.routing &&
  (current.instances === undefined || settled.instances === current.instances);

/**
 * Of the instances to delete, those whose file is still the one snapshotted (`same`), and those
 * whose file changed (`changed`): an instance ID can name new content by now (a re-send that
 * overwrote it, a delete and re-send), and that content was not verified. It stays for the next
 * round. Those gone meanwhile (deleted by someone else) are in neither.
 */
const stillTheSame = async (
  ctx: MoveContext,
  studyId: string,
  seriesId: string | undefined,
  instances: readonly SourceInstance[],
): Promise<{ same: SourceInstance[]; changed: SourceInstance[] }> => {
  if (instances.length === 0) return { same: [], changed: [] };
  const now =
    seriesId === undefined
      ? await ctx.source.studyInstances(studyId)
      : await ctx.source.seriesInstances(seriesId);
  const current = new Map((now ?? []).map((instance) => [instance.id, instance.fileUuid]));
  const present = instances.filter((instance) => current.has(instance.id));
  return {
    same: present.filter((instance) => current.get(instance.id) === instance.fileUuid),
    changed: present.filter((instance) => current.get(instance.id) !== instance.fileUuid),
  };
};

/**
 * Every destination the study, or any series of it, was routed to when part of it was deleted,
 * if the routing has not changed since (a changed configuration routes it anew) and they are all
 * still configured: what is left of a study, a series item included, goes where the rest went.
 */
const rememberedRoute = (ctx: MoveContext): Destination[] | undefined => {
  // A deletion as unrouted went nowhere: what is left of that study is routed anew.
  const current = (ctx.intents ?? []).filter(
    (intent) => intent.routing === ctx.options.routing && intent.verifiedBy.length > 0,
  );
  if (current.length === 0) return undefined;
  const ids = new Set(current.flatMap((intent) => intent.verifiedBy.map((v) => v.destinationId)));
  const remembered = ctx.destinations.filter((d) => ids.has(d.id));
  return remembered.length === ids.size ? remembered : undefined;
};

/** Their size at the source. */
const sizeOf = (instances: readonly SourceInstance[]): number =>
  instances.reduce((sum, instance) => sum + instance.fileSize, 0);

/**
 * Makes a deletion durable before the source is asked for it: its intent, then its audit record
 * (audit.ts) at the same time. `verifiedBy` is empty for a study deleted as unrouted.
 */
const recordDeletion = async (
  ctx: MoveContext,
  study: { readonly id: string; readonly seriesId: string | undefined; readonly studyInstanceUid: string },
  instances: readonly SourceInstance[],
  verifiedBy: DeletionIntent['verifiedBy'],
  accepted: (instance: SourceInstance) => boolean = () => false,
): Promise<void> => {
  const key = {
    sourceId: ctx.sourceId,
    studyId: study.id,
    seriesId: study.seriesId ?? '',
    at: (ctx.now ?? Date.now)(),
  };
  await ctx.ledger.recordIntent({
    ...key,
    instances: instances.length,
    verifiedBy,
    routing: ctx.options.routing,
  });
  await ctx.ledger.recordDeletion({
    ...key,
    studyInstanceUid: study.studyInstanceUid,
    verifiedBy,
    instances: instances.map((instance) => ({
      seriesId: instance.seriesId,
      instanceId: instance.id,
      sopInstanceUid: instance.sopInstanceUid,
      accepted: accepted(instance),
    })),
  });
};

export const moveStudy = async (
  ctx: MoveContext,
  studyId: string,
  seriesId?: string | undefined,
): Promise<StudyOutcome> => {
  const now = ctx.now ?? Date.now;
  const started = now();
  const outcome = (result: MoveResult, counts: Partial<StudyOutcome> = {}): StudyOutcome => ({
    sourceId: ctx.sourceId,
    studyId,
    result,
    instances: 0,
    sent: 0,
    alreadyPresent: 0,
    deleted: 0,
    rejected: 0,
    conflicts: 0,
    bytes: 0,
    deletedBytes: 0,
    ...counts,
    durationMs: now() - started,
    finishedAt: now(),
  });

  // 1. Snapshot: the study's instances, or the series' for a series item. A study that is gone
  // was moved already (or deleted by someone else).
  const info = await ctx.source.study(studyId);
  const snapshot =
    info === undefined
      ? undefined
      : seriesId === undefined
        ? await ctx.source.studyInstances(studyId)
        : await ctx.source.seriesInstances(seriesId);
  if (info === undefined || snapshot === undefined || snapshot.length === 0) return outcome('gone');
  await ctx.onStep?.('snapshot-taken', studyId);

  // 2. Left at the source on purpose before (copied, or skipped) and unchanged since: nothing to
  // send, nothing to verify.
  const fingerprint = {
    sourceId: ctx.sourceId,
    studyId,
    seriesId: seriesId ?? '',
    lastUpdate: info.lastUpdate ?? '',
    instances: snapshot.length,
    routing: ctx.options.routing,
  };
  const settle = (result: SettledStudy['result']) =>
    ctx.options.settles ? ctx.ledger.recordSettled({ ...fingerprint, result, settledAt: now() }) : undefined;
  if (ctx.options.settles) {
    const before = await ctx.ledger.settled(ctx.sourceId, studyId, fingerprint.seriesId);
    if (stillSettled(before, fingerprint)) {
      return outcome('unchanged', { instances: snapshot.length });
    }
  }

  // 3. Route: the destinations whose filter accepts the study — unless part of it was moved
  // before under the same configuration: then it goes where it went, since what is left (a
  // refused series, the series a deadline cut off) may no longer match the filters that sent it.
  const recorded = new Map(
    (await ctx.ledger.conflicts({ sourceId: ctx.sourceId, studyId })).map((c) => [
      conflictKey(c.instanceId, c.destinationId),
      c,
    ]),
  );
  const rejectedBefore = new Set((await ctx.ledger.rejected(ctx.sourceId, studyId)).map((r) => r.instanceId));
  const routed =
    rememberedRoute(ctx) ??
    (await routeStudy(
      ctx.destinations,
      studyFacts(ctx.source, info, seriesId === undefined ? snapshot : undefined),
    ));
  if (routed.length === 0) {
    // A study with refusals or conflicts is a partial one, whatever the filters say of the rest:
    // nothing of it is deleted as unrouted, and its refusals stay in view.
    const held = snapshot.filter(
      (i) => rejectedBefore.has(i.id) || [...recorded.values()].some((c) => c.instanceId === i.id),
    );
    if (held.length > 0) {
      return outcome('partial', { instances: snapshot.length, rejected: held.length });
    }
    if (ctx.options.unrouted === 'keep') {
      await settle('skipped');
      return outcome('skipped', { instances: snapshot.length });
    }
    await recordDeletion(
      ctx,
      { id: studyId, seriesId, studyInstanceUid: info.studyInstanceUid },
      snapshot,
      [],
    );
    await ctx.source.deleteInstances(snapshot.map((i) => i.id));
    await ctx.onStep?.('deleted', studyId);
    return outcome('skipped', {
      instances: snapshot.length,
      deleted: snapshot.length,
      deletedBytes: sizeOf(snapshot),
    });
  }

  // 4. Send each destination what it lacks, and what it holds as another instance (it may take
  // the new one), but nothing refused for good before or held by a recorded conflict. A
  // destination that fails does not stop the others: what they hold is not sent again.
  const study: Study = {
    id: studyId,
    studyInstanceUid: info.studyInstanceUid,
    snapshot,
    identityOf: sourceIdentities(ctx.source, ctx.signal),
    duplicated: duplicatedUids(snapshot),
    recorded,
    rejectedBefore,
  };
  const deliveries: Delivery[] = [];
  for (const destination of routed) {
    const delivery = await openDelivery(ctx, destination, study);
    deliveries.push(delivery);
    await deliver(ctx, study, delivery);
  }
  await ctx.onStep?.('sent', studyId);

  // 5. Verify, at each destination (or the alternate that served it).
  for (const delivery of deliveries) await verify(ctx, study, delivery);
  const standings = new Map(
    snapshot.map((instance) => [instance.id, deliveries.map((d) => standing(study, d, instance))]),
  );
  const all = (instance: SourceInstance, wanted: Standing) =>
    (standings.get(instance.id) ?? []).every((s) => s === wanted);
  const any = (instance: SourceInstance, wanted: Standing) =>
    (standings.get(instance.id) ?? []).includes(wanted);
  const verifiedInstances = snapshot.filter((instance) => all(instance, 'held'));
  const destinationUnavailableWait = destinationWait(ctx, deliveries);
  await ctx.onStep?.('verified', studyId);

  // 6. Record conflicts and refusals before deleting anything, so that a crash cannot lose them.
  const conflictsNow: Conflict[] = deliveries.flatMap((delivery) =>
    snapshot.flatMap((instance) => {
      const verdict = delivery.verdicts.get(instance.id);
      if (standing(study, delivery, instance) !== 'new-conflict' || verdict?.kind !== 'conflict') return [];
      return [
        {
          sourceId: ctx.sourceId,
          studyId,
          instanceId: instance.id,
          sopInstanceUid: instance.sopInstanceUid,
          destinationId: delivery.destination.id,
          attributes: verdict.attributes,
          detectedAt: now(),
        },
      ];
    }),
  );
  await ctx.ledger.recordConflicts(conflictsNow);
  for (const conflict of conflictsNow) {
    ctx.log.warn('conflict: the destination holds another instance under this SOPInstanceUID', {
      sourceId: ctx.sourceId,
      studyId,
      instanceId: conflict.instanceId,
      destinationId: conflict.destinationId,
      attributes: conflict.attributes.join(','),
    });
  }
  const refusedNow: RejectedInstance[] = snapshot.flatMap((instance) => {
    if (!any(instance, 'refused')) return [];
    const reasons = deliveries.flatMap((d) =>
      standing(study, d, instance) === 'refused' ? refusalAt(d, instance) : [],
    );
    return [
      {
        sourceId: ctx.sourceId,
        studyId,
        instanceId: instance.id,
        sopInstanceUid: instance.sopInstanceUid,
        reason: reasons.join('; '),
        rejectedAt: now(),
      },
    ];
  });
  await ctx.ledger.recordRejected(refusedNow);

  // 7. Delete exactly the instances of the snapshot that every destination verified, and only
  // while each is still the file that was verified; later arrivals stay.
  const { same: deleted, changed } = ctx.options.deleteAfterForward
    ? await stillTheSame(ctx, studyId, seriesId, verifiedInstances)
    : { same: [], changed: [] };
  if (ctx.options.deleteAfterForward) {
    if (deleted.length > 0) {
      await recordDeletion(
        ctx,
        { id: studyId, seriesId, studyInstanceUid: info.studyInstanceUid },
        deleted,
        deliveries.map((d) => ({ destinationId: d.destination.id, verify: d.level })),
        (instance) =>
          deliveries.some((d) => recordedConflict(study, instance, d)?.resolution === 'accept-destination'),
      );
    }
    await ctx.source.deleteInstances(
      deleted.map((i) => i.id),
      ctx.signal,
    );
    await ctx.onStep?.('deleted', studyId);
  }

  const held = (instance: SourceInstance) =>
    any(instance, 'open-conflict') || any(instance, 'new-conflict') || any(instance, 'kept');
  const conflicts = snapshot.filter((i) => any(i, 'open-conflict') || any(i, 'new-conflict')).length;
  const rejected = snapshot.filter(
    (i) => !held(i) && !all(i, 'held') && (any(i, 'refused') || study.rejectedBefore.has(i.id)),
  ).length;
  const gone = new Set(deliveries.flatMap((d) => [...d.sent.gone]));
  const unaccounted = snapshot.filter(
    (i) =>
      !gone.has(i.id) &&
      !study.rejectedBefore.has(i.id) &&
      !held(i) &&
      (any(i, 'unverified') || changed.includes(i)),
  );
  if (unaccounted.length > 0) {
    // Verified ones are already deleted: a retry resumes with the rest, and if this attempt moved
    // something (verified new instances, or deleted), it does not use up an attempt.
    const gained = deliveries.some((d) =>
      [...d.verdicts].some(([id, v]) => v.kind === 'held' && !d.heldBefore.has(id)),
    );
    const progress = (error: unknown) => (gained || deleted.length > 0 ? withProgress(error) : error);
    // A destination that refuses us as a whole holds the study up whatever the others did: it waits.
    if (destinationUnavailableWait !== undefined) throw destinationUnavailableWait;
    const failure = deliveries.find((d) => d.failure !== undefined)?.failure;
    if (failure !== undefined) throw progress(failure);
    if (changed.length > 0) {
      throw progress(
        transient(`${changed.length} instances changed at the source during the move: moved again next time`),
      );
    }
    throw progress(
      new NotVerifiedError(
        `${unaccounted.length} of ${snapshot.length} instances not verified at the destination yet`,
      ),
    );
  }
  // Deleted at the source by someone else while we moved it: nothing of it went anywhere.
  if (gone.size === snapshot.length) return outcome('gone', { instances: snapshot.length });
  const counts = {
    instances: snapshot.length,
    // What this move put at the destinations, as verified there: a STOW answer may be lost
    // after the archive stored the batch.
    sent: deliveries.reduce(
      (sum, d) =>
        sum + snapshot.filter((i) => d.verdicts.get(i.id)?.kind === 'held' && !d.heldBefore.has(i.id)).length,
      0,
    ),
    alreadyPresent: verifiedInstances.filter((i) => deliveries.every((d) => d.heldBefore.has(i.id))).length,
    deleted: deleted.length,
    rejected,
    conflicts,
    bytes: deliveries.reduce((sum, d) => sum + d.sent.bytes, 0),
    deletedBytes: sizeOf(deleted),
  };
  const whole = rejected === 0 && snapshot.every((i) => !held(i));
  const result: MoveResult = !whole ? 'partial' : ctx.options.deleteAfterForward ? 'moved' : 'copied';
  // A conflict is never settled: the study is looked at again until the operator resolves it.
  if (!ctx.options.deleteAfterForward && conflicts === 0) await settle(whole ? 'copied' : 'partial');
  return outcome(result, counts);
};
