/**
 * Push mode: the source Orthanc sends to a DICOMweb server declared in its own configuration, as
 * a job the forwarder starts and follows. The bytes never pass through the forwarder; what the
 * destination holds afterwards is verified exactly as in relay mode.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { runBounded } from './concurrency.ts';
import { permanent, transient } from './errors.ts';
import type { OrthancClient, SourceInstance } from './orthanc-client.ts';

export interface PushContext {
  readonly source: OrthancClient;
  /** The server's name in the source's `DicomWeb.Servers`. */
  readonly serverName: string;
  /** Jobs in flight at once (Orthanc runs `ConcurrentJobs` of them, the rest wait in its queue). */
  readonly parallel: number;
  /** Longest wait for one job, as for the answer to one relayed STOW request. */
  readonly jobTimeoutMs: number;
  readonly now: () => number;
  /** No job starts after it, and no job is waited for beyond it. */
  readonly deadline?: number | undefined;
  readonly signal?: AbortSignal | undefined;
}

export interface PushReport {
  /** Orthanc IDs (at the source) of the instances in jobs that succeeded. */
  readonly pushed: Set<string>;
  bytes: number;
  /** The first failure, reported once what arrived has been verified and deleted. */
  failure?: unknown;
}

/** Orthanc's code for "Accessing an inexistent item", which an unknown server name also gives. */
const INEXISTENT_ITEM = 7;
const FIRST_POLL_MS = 100;
const MAX_POLL_MS = 2_000;

/**
 * The resources of one job: the series' ID when the batch is the whole series as the snapshot
 * knows it (one short request), its instances' IDs otherwise.
 */
const resourcesOf = (batch: readonly SourceInstance[], seriesSizes: ReadonlyMap<string, number>) => {
  const [first] = batch;
  const wholeSeries =
    first !== undefined &&
    batch.every((i) => i.seriesId === first.seriesId) &&
    seriesSizes.get(first.seriesId) === batch.length;
  return wholeSeries && first !== undefined ? [first.seriesId] : batch.map((i) => i.id);
};

/** Why a job failed, in Orthanc's fixed words (never the data's): permanent if the name is unknown. */
const jobFailure = async (ctx: PushContext, code: number | undefined, description: string | undefined) => {
  if (code === INEXISTENT_ITEM && !(await ctx.source.dicomWebServers()).includes(ctx.serverName)) {
    return permanent(
      `push: the source ${ctx.source.endpoint.label} declares no DicomWeb server '${ctx.serverName}' (pushServerName)`,
    );
  }
  return transient(
    `push job to '${ctx.serverName}' at ${ctx.source.endpoint.label} failed: error ${code ?? '?'} (${(description ?? '').slice(0, 120)})`,
  );
};

/** Waits for the job to end; throws its failure, or a timeout after cancelling it. */
const awaitJob = async (ctx: PushContext, jobId: string): Promise<void> => {
  const limit = Math.min(ctx.now() + ctx.jobTimeoutMs, ctx.deadline ?? Number.POSITIVE_INFINITY);
  for (let delay = FIRST_POLL_MS; ; delay = Math.min(MAX_POLL_MS, delay * 2)) {
    const job = await ctx.source.job(jobId);
    // Orthanc keeps only the latest jobs (and none across a restart): verification will tell.
    if (job === undefined || job.state === 'Success') return;
    if (job.state === 'Failure') throw await jobFailure(ctx, job.errorCode, job.errorDescription);
    if (ctx.now() >= limit) {
      // What it stored stays stored; the retry sends what the destination still lacks.
      await ctx.source.cancelJob(jobId).catch(() => undefined);
      throw transient(
        `push job to '${ctx.serverName}' at ${ctx.source.endpoint.label} still ${job.state.toLowerCase()} when its time ran out; cancelled`,
      );
    }
    await sleep(delay, undefined, ctx.signal === undefined ? {} : { signal: ctx.signal });
  }
};

/**
 * Pushes the batches, a few jobs at a time. A batch that fails, or is not started because the
 * deadline passed, does not stop the others: what arrived is verified and deleted, and the retry
 * sends the rest.
 */
export const pushBatches = async (
  ctx: PushContext,
  batches: readonly (readonly SourceInstance[])[],
  snapshot: readonly SourceInstance[],
): Promise<PushReport> => {
  const seriesSizes = new Map<string, number>();
  for (const instance of snapshot)
    seriesSizes.set(instance.seriesId, (seriesSizes.get(instance.seriesId) ?? 0) + 1);
  const report: PushReport = { pushed: new Set(), bytes: 0 };
  await runBounded(batches, ctx.parallel, async (batch) => {
    if (ctx.deadline !== undefined && ctx.now() >= ctx.deadline) {
      report.failure ??= transient('out of time: the rest of the study is sent by the next attempt');
      return;
    }
    try {
      const jobId = await ctx.source.pushToDicomWeb(ctx.serverName, resourcesOf(batch, seriesSizes));
      if (jobId === undefined) {
        throw transient(
          'push: an instance went away at the source before the push: the retry takes a new snapshot',
        );
      }
      await awaitJob(ctx, jobId);
      for (const instance of batch) report.pushed.add(instance.id);
      report.bytes += batch.reduce((sum, instance) => sum + instance.fileSize, 0);
    } catch (error) {
      report.failure ??= error;
    }
  });
  return report;
};
