/**
 * The move protocol for one study of one source (or one series of it): snapshot, route, send to
 * each destination what it lacks, verify, delete exactly what every destination verified, record.
 * Every step is safe to repeat, so a crash anywhere converges when the work item is delivered again.
 */
import type { Readable } from 'node:stream';
import { runBounded } from './concurrency.ts';
import { type Destination, type DestinationServer, isUnreachable } from './destinations.ts';
import { describe, ForwarderError, NotVerifiedError, permanent, transient } from './errors.ts';
import type { Log } from './log.ts';
import type { OrthancClient, SourceInstance } from './orthanc-client.ts';
import type { Ledger, MoveResult, RejectedInstance, SettledStudy, StudyOutcome } from './ports.ts';
import { pushBatches } from './push.ts';
import { routeStudy, studyFacts } from './routing.ts';
import type { StowClient, StowPart } from './stow-client.ts';

export type VerifyLevel = 'stow' | 'qido' | 'md5';

export interface MoveOptions {
  readonly verify: VerifyLevel;
  readonly deleteAfterForward: boolean;
  readonly stow: { readonly maxInstances: number; readonly maxBytes: number; readonly parallel: number };
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
  /** Called after each step; only tests pass one. */
  readonly onStep?: ((step: MoveStep, studyId: string) => void | Promise<void>) | undefined;
}

/** Groups instances by series, then cuts batches bounded by count and bytes. */
export const planBatches = (
  instances: readonly SourceInstance[],
  limits: { readonly maxInstances: number; readonly maxBytes: number },
): SourceInstance[][] => {
  const sorted = [...instances].sort((a, b) => a.seriesId.localeCompare(b.seriesId));
  const batches: SourceInstance[][] = [];
  let batch: SourceInstance[] = [];
  let bytes = 0;
  for (const instance of sorted) {
    const full =
      batch.length >= limits.maxInstances ||
      (batch.length > 0 && bytes + instance.fileSize > limits.maxBytes);
    if (full) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(instance);
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

interface SendReport {
  /** Relay: listed by the STOW answers; push: in the jobs that succeeded. */
  readonly stored: Set<string>;
  readonly refused: Map<string, string>;
  readonly gone: Set<string>;
  bytes: number;
  /** The first failure of a batch, reported once what arrived has been dealt with. */
  failure?: unknown;
}

const nothingSent = (): SendReport => ({ stored: new Set(), refused: new Map(), gone: new Set(), bytes: 0 });

const openPart = (source: OrthancClient, instance: SourceInstance, signal?: AbortSignal): StowPart => ({
  sopInstanceUid: instance.sopInstanceUid,
  open: async (): Promise<Readable | undefined> => {
    try {
      return await source.openInstance(instance.id, signal);
    } catch (error) {
      // Deleted at the source meanwhile (by someone else): nothing to send, nothing lost.
      if (error instanceof ForwarderError && error.status === 404) return undefined;
      throw error;
    }
  },
});

/**
 * Relays the batches with STOW-RS. A batch that fails, or is not started because the deadline
 * passed, does not stop the others: what did arrive is verified and deleted, and the retry sends
 * the rest.
 */
const relay = async (
  ctx: MoveContext,
  stow: StowClient,
  instances: readonly SourceInstance[],
): Promise<SendReport> => {
  const report = nothingSent();
  const now = ctx.now ?? Date.now;
  await runBounded(planBatches(instances, ctx.options.stow), ctx.options.stow.parallel, async (batch) => {
    if (ctx.deadline !== undefined && now() >= ctx.deadline) {
      report.failure ??= transient('out of time: the rest of the study is sent by the next attempt');
      return;
    }
    const result = await stow.store(
      batch.map((instance) => openPart(ctx.source, instance, ctx.signal)),
      ctx.signal,
    );
    for (const uid of result.stored) report.stored.add(uid);
    for (const [uid, reason] of result.refused) report.refused.set(uid, reason);
    for (const uid of result.goneAtSource) report.gone.add(uid);
    report.bytes += result.bytes;
  }).catch((error: unknown) => {
    report.failure = error;
  });
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
  readonly heldBefore: ReadonlySet<string>;
  sent: SendReport;
  held: Set<string>;
  mismatched: Set<string>;
  /** The first failure with this destination, reported once the others are dealt with. */
  failure?: unknown;
}

/** Notes a failure; one that says the destination is down starts its "unreachable since". */
const fail = (ctx: MoveContext, delivery: Delivery, error: unknown): void => {
  delivery.failure ??= error;
  if (!delivery.viaAlternate && isUnreachable(error)) {
    delivery.destination.health.unreachableSince ??= (ctx.now ?? Date.now)();
  }
  ctx.log.warn('destination failed in this move', {
    sourceId: ctx.sourceId,
    destinationId: delivery.destination.id,
    server: delivery.server?.label ?? delivery.destination.primary.label,
    error: describe(error),
  });
};

/**
 * Lists what the destination holds of the study, which also tells whether it is reachable. While
 * it has been unreachable for longer than its alternate's afterSeconds, the alternate serves this
 * move instead: it is listed, sent to and verified.
 */
const openDelivery = async (
  ctx: MoveContext,
  destination: Destination,
  studyInstanceUid: string,
): Promise<Delivery> => {
  const now = ctx.now ?? Date.now;
  const opened = (server: DestinationServer | undefined, viaAlternate: boolean, heldBefore: Set<string>) => ({
    destination,
    server,
    viaAlternate,
    heldBefore,
    sent: nothingSent(),
    held: new Set<string>(),
    mismatched: new Set<string>(),
  });
  const { primary, alternate, health } = destination;
  try {
    const heldBefore = await primary.qido.studyInstances(studyInstanceUid, ctx.signal);
    health.unreachableSince = undefined;
    return opened(primary, false, heldBefore);
  } catch (error) {
    const failed = opened(undefined, false, new Set());
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
    const viaAlternate = opened(alternate.server, true, new Set());
    try {
      return {
        ...viaAlternate,
        heldBefore: await alternate.server.qido.studyInstances(studyInstanceUid, ctx.signal),
      };
    } catch (alternateError) {
      fail(ctx, viaAlternate, alternateError);
      return { ...viaAlternate, server: undefined };
    }
  }
};

/** Compares each instance's stored file at both ends; returns the UIDs whose MD5 differs. */
const md5Mismatches = async (
  ctx: MoveContext,
  server: DestinationServer,
  instances: readonly SourceInstance[],
): Promise<Set<string>> => {
  const destination = server.orthanc;
  if (destination === undefined) throw new Error("verify 'md5' needs the destination's Orthanc REST API");
  const mismatched = new Set<string>();
  await runBounded(instances, 8, async (instance) => {
    const destinationId = await destination.findInstance(instance.sopInstanceUid);
    const [here, there] = await Promise.all([
      ctx.source.instanceMd5(instance.id),
      destinationId === undefined ? undefined : destination.instanceMd5(destinationId),
    ]);
    if (here !== undefined && here !== there) mismatched.add(instance.sopInstanceUid);
  });
  return mismatched;
};

/**
 * The UIDs of the snapshot that the destination verifiably holds, at the configured level. A
 * push is verified with QIDO at least: the STOW answer went to the source, not to us.
 */
const verify = async (
  ctx: MoveContext,
  delivery: Delivery,
  studyInstanceUid: string,
  snapshot: readonly SourceInstance[],
): Promise<void> => {
  const { server } = delivery;
  if (server === undefined) return;
  const snapshotUids = new Set(snapshot.map((i) => i.sopInstanceUid));
  const inSnapshot = (uids: Iterable<string>) => new Set([...uids].filter((uid) => snapshotUids.has(uid)));
  const level =
    ctx.options.verify === 'stow' && delivery.destination.transfer === 'push' ? 'qido' : ctx.options.verify;
  try {
    if (level === 'stow') {
      delivery.held = inSnapshot([...delivery.heldBefore, ...delivery.sent.stored]);
      return;
    }
    const held = inSnapshot(await server.qido.studyInstances(studyInstanceUid, ctx.signal));
    if (level === 'md5') {
      delivery.mismatched = await md5Mismatches(
        ctx,
        server,
        snapshot.filter((i) => held.has(i.sopInstanceUid)),
      );
      for (const uid of delivery.mismatched) held.delete(uid);
    }
    delivery.held = held;
  } catch (error) {
    fail(ctx, delivery, error);
  }
};

/** Why this destination does not hold the instance, if it said so: for the record of refusals. */
const refusalAt = (delivery: Delivery, uid: string): string[] => {
  if (delivery.held.has(uid)) return [];
  const reason = delivery.mismatched.has(uid)
    ? 'the destination holds a different file under this SOPInstanceUID (MD5 differs)'
    : delivery.sent.refused.get(uid);
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
    bytes: 0,
    ...counts,
    durationMs: now() - started,
    finishedAt: now(),
  });

  // 1. Snapshot: the study's instances, or the series' for a series item. A study that is gone
  // was moved already (or deleted by someone else).
  const study = await ctx.source.study(studyId);
  const snapshot =
    study === undefined
      ? undefined
      : seriesId === undefined
        ? await ctx.source.studyInstances(studyId)
        : await ctx.source.seriesInstances(seriesId);
  if (study === undefined || snapshot === undefined || snapshot.length === 0) return outcome('gone');
  await ctx.onStep?.('snapshot-taken', studyId);

  // 2. Left at the source on purpose before (copied, or skipped) and unchanged since: nothing to
  // send, nothing to verify.
  const fingerprint = {
    sourceId: ctx.sourceId,
    studyId,
    seriesId: seriesId ?? '',
    lastUpdate: study.lastUpdate ?? '',
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

  // 3. Route: the destinations whose filter accepts the study.
  const routed = await routeStudy(ctx.destinations, studyFacts(ctx.source, study, snapshot, seriesId));
  if (routed.length === 0) {
    if (ctx.options.unrouted === 'keep') {
      await settle('skipped');
      return outcome('skipped', { instances: snapshot.length });
    }
    await ctx.source.deleteInstances(snapshot.map((i) => i.id));
    await ctx.onStep?.('deleted', studyId);
    return outcome('skipped', { instances: snapshot.length, deleted: snapshot.length });
  }

  // 4. Send each destination only what it lacks and what no destination refused for good before
  // (that stays at the source). A destination that fails does not stop the others: what they
  // hold is not sent again by the retry.
  const rejectedBefore = new Set(
    (await ctx.ledger.rejected(ctx.sourceId, studyId)).map((rejected) => rejected.instanceId),
  );
  const deliveries: Delivery[] = [];
  for (const destination of routed) {
    const delivery = await openDelivery(ctx, destination, study.studyInstanceUid);
    deliveries.push(delivery);
    const { server } = delivery;
    if (server === undefined) continue;
    const toSend = snapshot.filter(
      (i) => !delivery.heldBefore.has(i.sopInstanceUid) && !rejectedBefore.has(i.id),
    );
    delivery.sent =
      destination.transfer === 'push'
        ? await push(ctx, server, toSend, snapshot)
        : await relay(ctx, server.stow, toSend);
    if (delivery.sent.failure !== undefined) fail(ctx, delivery, delivery.sent.failure);
  }
  await ctx.onStep?.('sent', studyId);

  // 5. Verify, at each destination (or the alternate that served it).
  for (const delivery of deliveries) await verify(ctx, delivery, study.studyInstanceUid, snapshot);
  const everywhere = (i: SourceInstance) => deliveries.every((d) => d.held.has(i.sopInstanceUid));
  const verifiedInstances = snapshot.filter(everywhere);
  await ctx.onStep?.('verified', studyId);

  // 6. Record refusals before deleting anything, so that a crash cannot lose the reason.
  const refusedNow: RejectedInstance[] = snapshot.flatMap((i) => {
    const reasons = deliveries.flatMap((d) => refusalAt(d, i.sopInstanceUid));
    if (reasons.length === 0) return [];
    const refusal = {
      sourceId: ctx.sourceId,
      studyId,
      instanceId: i.id,
      sopInstanceUid: i.sopInstanceUid,
      reason: reasons.join('; '),
      rejectedAt: now(),
    };
    return [refusal];
  });
  await ctx.ledger.recordRejected(refusedNow);

  // 7. Delete exactly the instances of the snapshot that every destination verified; later
  // arrivals stay.
  if (ctx.options.deleteAfterForward) {
    await ctx.source.deleteInstances(verifiedInstances.map((i) => i.id));
    await ctx.onStep?.('deleted', studyId);
  }

  const refusedIds = new Set(refusedNow.map((r) => r.instanceId));
  const rejected =
    refusedNow.length +
    snapshot.filter((i) => rejectedBefore.has(i.id) && !refusedIds.has(i.id) && !everywhere(i)).length;
  const gone = new Set(deliveries.flatMap((d) => [...d.sent.gone]));
  const unaccounted = snapshot.filter(
    (i) =>
      !gone.has(i.sopInstanceUid) &&
      !rejectedBefore.has(i.id) &&
      deliveries.some((d) => !d.held.has(i.sopInstanceUid) && refusalAt(d, i.sopInstanceUid).length === 0),
  );
  if (unaccounted.length > 0) {
    // Verified ones are already deleted: a retry resumes with the rest.
    const failure = deliveries.find((d) => d.failure !== undefined)?.failure;
    if (failure !== undefined) throw failure;
    throw new NotVerifiedError(
      `${unaccounted.length} of ${snapshot.length} instances not verified at the destination yet`,
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
        sum +
        snapshot.filter((i) => d.held.has(i.sopInstanceUid) && !d.heldBefore.has(i.sopInstanceUid)).length,
      0,
    ),
    alreadyPresent: verifiedInstances.filter((i) =>
      deliveries.every((d) => d.heldBefore.has(i.sopInstanceUid)),
    ).length,
    deleted: ctx.options.deleteAfterForward ? verifiedInstances.length : 0,
    rejected,
    bytes: deliveries.reduce((sum, d) => sum + d.sent.bytes, 0),
  };
  const result: MoveResult = rejected > 0 ? 'partial' : ctx.options.deleteAfterForward ? 'moved' : 'copied';
  if (!ctx.options.deleteAfterForward) await settle(result === 'partial' ? 'partial' : 'copied');
  return outcome(result, counts);
};
