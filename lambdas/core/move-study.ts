/**
 * The move protocol for one study of one source: snapshot, send what the destination lacks,
 * verify, delete exactly what was verified, record. Every step is safe to repeat, so a crash
 * anywhere converges when the work item is delivered again.
 */
import type { Readable } from 'node:stream';
import { runBounded } from './concurrency.ts';
import { ForwarderError, transient } from './errors.ts';
import type { Log } from './log.ts';
import type { OrthancClient, SourceInstance } from './orthanc-client.ts';
import type { Ledger, MoveResult, RejectedInstance, StudyOutcome } from './ports.ts';
import type { QidoClient } from './qido-client.ts';
import type { StowClient, StowPart } from './stow-client.ts';

export type VerifyLevel = 'stow' | 'qido' | 'md5';

export interface MoveOptions {
  readonly verify: VerifyLevel;
  readonly deleteAfterForward: boolean;
  readonly stow: { readonly maxInstances: number; readonly maxBytes: number; readonly parallel: number };
}

/** Points between the protocol's steps, where the fault-injection tests crash or pause a worker. */
export type MoveStep = 'snapshot-taken' | 'sent' | 'verified' | 'deleted';

export interface MoveContext {
  readonly sourceId: string;
  readonly source: OrthancClient;
  readonly stow: StowClient;
  readonly qido: QidoClient;
  /** The destination's REST API, when it is an Orthanc: needed for `md5` verification. */
  readonly destinationOrthanc?: OrthancClient | undefined;
  readonly ledger: Ledger;
  readonly options: MoveOptions;
  readonly log: Log;
  readonly now?: () => number;
  readonly signal?: AbortSignal;
  /**
   * Epoch ms after which no further STOW batch starts (a Lambda about to time out): what was
   * sent is still verified and deleted, and the retry continues with the rest.
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

interface SendReport {
  readonly stored: Set<string>;
  readonly refused: Map<string, string>;
  readonly gone: Set<string>;
  bytes: number;
  /** The first failure of a batch, reported once what arrived has been dealt with. */
  failure?: unknown;
}

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
 * Sends the batches. A batch that fails, or is not started because the deadline passed, does not
 * stop the others: what did arrive is verified and deleted, and the retry sends the rest.
 */
const send = async (ctx: MoveContext, instances: readonly SourceInstance[]): Promise<SendReport> => {
  const report: SendReport = { stored: new Set(), refused: new Map(), gone: new Set(), bytes: 0 };
  const now = ctx.now ?? Date.now;
  await runBounded(planBatches(instances, ctx.options.stow), ctx.options.stow.parallel, async (batch) => {
    if (ctx.deadline !== undefined && now() >= ctx.deadline) {
      report.failure ??= transient('out of time: the rest of the study is sent by the next attempt');
      return;
    }
    const result = await ctx.stow.store(
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

/** Compares each instance's stored file at both ends; returns the UIDs whose MD5 differs. */
const md5Mismatches = async (
  ctx: MoveContext,
  instances: readonly SourceInstance[],
): Promise<Set<string>> => {
  const destination = ctx.destinationOrthanc;
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

/** The UIDs of the snapshot that the destination verifiably holds, at the configured level. */
const verified = async (
  ctx: MoveContext,
  studyInstanceUid: string,
  snapshot: readonly SourceInstance[],
  heldBefore: ReadonlySet<string>,
  sent: SendReport,
): Promise<{ held: Set<string>; mismatched: Set<string> }> => {
  const inSnapshot = (uids: Iterable<string>) => {
    const snapshotUids = new Set(snapshot.map((i) => i.sopInstanceUid));
    return new Set([...uids].filter((uid) => snapshotUids.has(uid)));
  };
  if (ctx.options.verify === 'stow')
    return { held: inSnapshot([...heldBefore, ...sent.stored]), mismatched: new Set() };
  const held = inSnapshot(await ctx.qido.studyInstances(studyInstanceUid, ctx.signal));
  if (ctx.options.verify === 'qido') return { held, mismatched: new Set() };
  const mismatched = await md5Mismatches(
    ctx,
    snapshot.filter((i) => held.has(i.sopInstanceUid)),
  );
  for (const uid of mismatched) held.delete(uid);
  return { held, mismatched };
};

export const moveStudy = async (ctx: MoveContext, studyId: string): Promise<StudyOutcome> => {
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

  // 1. Snapshot. A study that is gone was moved already (or deleted by someone else).
  const study = await ctx.source.study(studyId);
  const snapshot = study === undefined ? undefined : await ctx.source.studyInstances(studyId);
  if (study === undefined || snapshot === undefined || snapshot.length === 0) return outcome('gone');
  await ctx.onStep?.('snapshot-taken', studyId);

  // 2. Send only what the destination lacks and was not refused for good before.
  const rejectedBefore = new Set(
    (await ctx.ledger.rejected(ctx.sourceId, studyId)).map((rejected) => rejected.instanceId),
  );
  const heldBefore = await ctx.qido.studyInstances(study.studyInstanceUid, ctx.signal);
  const toSend = snapshot.filter((i) => !heldBefore.has(i.sopInstanceUid) && !rejectedBefore.has(i.id));
  const sent = await send(ctx, toSend);
  await ctx.onStep?.('sent', studyId);

  // 3. Verify.
  const { held, mismatched } = await verified(ctx, study.studyInstanceUid, snapshot, heldBefore, sent);
  const verifiedInstances = snapshot.filter((i) => held.has(i.sopInstanceUid));
  await ctx.onStep?.('verified', studyId);

  // 4. Record refusals before deleting anything, so that a crash cannot lose the reason.
  const refusedNow: RejectedInstance[] = snapshot
    .filter(
      (i) =>
        !held.has(i.sopInstanceUid) &&
        (sent.refused.has(i.sopInstanceUid) || mismatched.has(i.sopInstanceUid)),
    )
    .map((i) => ({
      sourceId: ctx.sourceId,
      studyId,
      instanceId: i.id,
      sopInstanceUid: i.sopInstanceUid,
      reason: mismatched.has(i.sopInstanceUid)
        ? 'the destination holds a different file under this SOPInstanceUID (MD5 differs)'
        : (sent.refused.get(i.sopInstanceUid) ?? 'refused'),
      rejectedAt: now(),
    }));
  await ctx.ledger.recordRejected(refusedNow);

  // 5. Delete exactly the verified instances of the snapshot; later arrivals stay.
  if (ctx.options.deleteAfterForward) {
    await ctx.source.deleteInstances(verifiedInstances.map((i) => i.id));
    await ctx.onStep?.('deleted', studyId);
  }

  const rejected =
    refusedNow.length +
    snapshot.filter((i) => rejectedBefore.has(i.id) && !held.has(i.sopInstanceUid)).length;
  const unaccounted = snapshot.filter(
    (i) =>
      !held.has(i.sopInstanceUid) &&
      !sent.gone.has(i.sopInstanceUid) &&
      !sent.refused.has(i.sopInstanceUid) &&
      !mismatched.has(i.sopInstanceUid) &&
      !rejectedBefore.has(i.id),
  );
  if (unaccounted.length > 0) {
    // Verified ones are already deleted: a retry resumes with the rest.
    if (sent.failure !== undefined) throw sent.failure;
    throw transient(
      `${unaccounted.length} of ${snapshot.length} instances not verified at the destination yet`,
    );
  }
  const counts = {
    instances: snapshot.length,
    sent: sent.stored.size,
    alreadyPresent: verifiedInstances.filter((i) => heldBefore.has(i.sopInstanceUid)).length,
    deleted: ctx.options.deleteAfterForward ? verifiedInstances.length : 0,
    rejected,
    bytes: sent.bytes,
  };
  const result: MoveResult = rejected > 0 ? 'partial' : ctx.options.deleteAfterForward ? 'moved' : 'copied';
  return outcome(result, counts);
};
