/**
 * The timed operations, each run in a child process of its own (scripts/bench/child.ts) so that
 * its CPU time and peak RSS are its own: the ceiling (files uploaded straight to the
 * destination), the push (the source Orthanc sends each study itself), the relay (our local
 * mode), reading series from the source (WADO-RS against one request per instance), and the
 * poller run (scripts/bench/poller-job.ts).
 */
import diagnostics from 'node:diagnostics_channel';
import { createReadStream } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, type Dispatcher, request } from 'undici';
import { runBounded } from '../../lambdas/core/concurrency.ts';
import { parseConfig } from '../../lambdas/core/config.ts';
import { SOURCE_PIPELINING } from '../../lambdas/core/engine.ts';
import { createEndpoint } from '../../lambdas/core/http.ts';
import { createLog } from '../../lambdas/core/log.ts';
import { planBatches } from '../../lambdas/core/move-study.ts';
import { OrthancClient } from '../../lambdas/core/orthanc-client.ts';
import type { StudyOutcome } from '../../lambdas/core/ports.ts';
import { readAhead, readAheadLimits } from '../../lambdas/core/read-ahead.ts';
import { LocalRunner } from '../../lambdas/local/local-runner.ts';
import { openState } from '../../lambdas/local/sqlite-state.ts';
import { configDefaults } from './options.ts';
import type { PollerJob } from './poller-job.ts';

export interface ServerRef {
  readonly url: string;
  readonly username: string;
  readonly password: string;
}

export interface CeilingJob {
  readonly kind: 'ceiling';
  readonly destination: ServerRef;
  readonly files: readonly string[];
  readonly concurrency: number;
}

export interface PushJob {
  readonly kind: 'push';
  readonly source: ServerRef;
  /** The name of the destination in the source's DicomWeb.Servers. */
  readonly destinationName: string;
  readonly studies: readonly string[];
  readonly concurrency: number;
}

export interface RelayJob {
  readonly kind: 'relay';
  /** The raw forwarder configuration (one source). */
  readonly config: unknown;
  readonly studies: readonly string[];
  readonly statePath: string;
}

export interface SeriesRef {
  readonly studyInstanceUid: string;
  readonly seriesInstanceUid: string;
  readonly instanceIds: readonly string[];
}

export interface ReadJob {
  readonly kind: 'read';
  readonly source: ServerRef;
  readonly series: readonly SeriesRef[];
  /**
   * `wado`: one WADO-RS request per series; `instances`: GET /instances/{id}/file each, in turn;
   * `ahead`: the same GETs as the relay makes them, read ahead on pipelined connections
   * (lambdas/core/read-ahead.ts at the configuration's defaults), `concurrency` batches at once.
   */
  readonly mode: ReadMode;
  readonly concurrency: number;
  /** The instances' average size, for the read-ahead's byte budget. */
  readonly instanceBytes: number;
}

export type ReadMode = 'wado' | 'instances' | 'ahead';

export type ChildJob = CeilingJob | PushJob | RelayJob | ReadJob | PollerJob;

/** Requests made and TCP connections opened, per server (host:port). */
export type ConnectionCounts = Record<string, { requests: number; connections: number }>;

export interface OperationResult {
  readonly seconds: number;
  /** CPU used from the start to the end of the timed part, when the operation measures it itself. */
  readonly cpu?: NodeJS.CpuUsage;
  /** What the operation did: instances moved or read, bytes, failures. */
  readonly counts: Readonly<Record<string, number>>;
}

export interface ChildResult extends OperationResult {
  /** Its WARN and ERROR log lines, counted by message (added by the parent, from its stderr). */
  readonly warnings?: Readonly<Record<string, number>>;
  /** CPU seconds (user + system) this process used during the operation. */
  readonly cpuSeconds: number;
  /** The part of it spent in the kernel (system time): socket and file I/O, page faults. */
  readonly cpuSystemSeconds: number;
  /** The process's peak resident set over its whole life (VmHWM), in MB of 10^6 bytes. */
  readonly peakRssMb: number;
  /** The peak while starting (loading and compiling modules), before the operation. */
  readonly startupPeakRssMb: number;
  /** The peak during the operation alone (VmHWM reset before it), where the kernel allows it. */
  readonly operationPeakRssMb: number | undefined;
  /** Resident set just before the operation started (modules loaded), in MB. */
  readonly baselineRssMb: number;
  /** The highest values of process.memoryUsage() during the operation (sampled every 100 ms), in MB. */
  readonly memoryPeaksMb: {
    readonly heapTotal: number;
    readonly heapUsed: number;
    readonly external: number;
    readonly arrayBuffers: number;
  };
  readonly connections: ConnectionCounts;
}

/** Counts requests and new connections per server through undici's diagnostics channels. */
export const countConnections = (): ConnectionCounts => {
  const counts: ConnectionCounts = {};
  const entry = (host: string) => {
    counts[host] ??= { requests: 0, connections: 0 };
    return counts[host];
  };
  diagnostics.subscribe('undici:client:connected', (message) => {
    const { connectParams } = message as { connectParams: { hostname: string; port: string | number } };
    entry(`${connectParams.hostname}:${connectParams.port}`).connections++;
  });
  diagnostics.subscribe('undici:request:create', (message) => {
    const { request: created } = message as { request: { origin: string | URL } };
    entry(new URL(String(created.origin)).host).requests++;
  });
  return counts;
};

/** The agent of a well-behaved client of Orthanc: it reuses a connection within Orthanc's 1 s keep-alive. */
const clientAgent = (connections: number): Agent =>
  new Agent({ connections, keepAliveTimeout: 900, keepAliveMaxTimeout: 900, keepAliveTimeoutThreshold: 300 });

const basic = (server: ServerRef): string =>
  `Basic ${Buffer.from(`${server.username}:${server.password}`).toString('base64')}`;

const jsonCall = async <T>(
  agent: Dispatcher,
  server: ServerRef,
  method: Dispatcher.HttpMethod,
  path: string,
  body?: unknown,
): Promise<T> => {
  const response = await request(`${server.url}${path}`, {
    dispatcher: agent,
    method,
    headers: { authorization: basic(server), 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.body.text();
  if (response.statusCode !== 200) {
    throw new Error(`${method} ${path} answered ${response.statusCode}: ${text.slice(0, 200)}`);
  }
  return (text === '' ? undefined : JSON.parse(text)) as T;
};

/** Uploads every file with POST /instances, chunked, `concurrency` at a time. */
export const runCeiling = async (job: CeilingJob): Promise<OperationResult> => {
  const agent = clientAgent(job.concurrency);
  const counts = { instances: 0, success: 0, alreadyStored: 0, failed: 0 };
  const authorization = basic(job.destination);
  const started = performance.now();
  await runBounded(job.files, job.concurrency, async (file) => {
    const response = await request(`${job.destination.url}/instances`, {
      dispatcher: agent,
      method: 'POST',
      headers: { authorization, 'content-type': 'application/dicom' },
      body: createReadStream(file),
    });
    const text = await response.body.text();
    counts.instances++;
    const status = response.statusCode === 200 ? (JSON.parse(text) as { Status?: string }).Status : undefined;
    if (status === 'Success') counts.success++;
    else if (status === 'AlreadyStored') counts.alreadyStored++;
    else counts.failed++;
  });
  const seconds = (performance.now() - started) / 1000;
  await agent.close();
  return { seconds, counts };
};

interface OrthancJob {
  readonly State: string;
  readonly ErrorDescription?: string;
}

/**
 * The proof of concept's method: the source Orthanc pushes each study with its DICOMweb client
 * (an asynchronous job, polled until done), then the snapshot taken before is bulk-deleted.
 */
export const runPush = async (job: PushJob): Promise<OperationResult> => {
  const agent = clientAgent(4);
  const counts = { studies: 0, instances: 0, failed: 0 };
  const started = performance.now();
  await runBounded(job.studies, job.concurrency, async (studyId) => {
    const snapshot = await jsonCall<{ ID: string }[]>(
      agent,
      job.source,
      'GET',
      `/studies/${studyId}/instances`,
    );
    const { ID } = await jsonCall<{ ID: string }>(
      agent,
      job.source,
      'POST',
      `/dicom-web/servers/${job.destinationName}/stow`,
      { Resources: [studyId], Synchronous: false },
    );
    for (;;) {
      const state = await jsonCall<OrthancJob>(agent, job.source, 'GET', `/jobs/${ID}`);
      if (state.State === 'Success') break;
      if (state.State === 'Failure') {
        counts.failed++;
        throw new Error(`push job failed: ${state.ErrorDescription ?? ''}`);
      }
      await sleep(50);
    }
    await jsonCall(agent, job.source, 'POST', '/tools/bulk-delete', {
      Resources: snapshot.map((instance) => instance.ID),
    });
    counts.studies++;
    counts.instances += snapshot.length;
  });
  const seconds = (performance.now() - started) / 1000;
  await agent.close();
  return { seconds, counts };
};

const silentUntilWarn = () => createLog({ level: 'WARN' });

/**
 * Where a study's time goes: from its snapshot to the end of sending, verifying, deleting.
 * Summed over the studies, in ms (studies moved at once overlap, so the sum can exceed the run).
 */
const phaseClock = () => {
  const last = new Map<string, number>();
  const totals = { sendMs: 0, verifyMs: 0, deleteMs: 0 };
  const phaseOf: Record<string, keyof typeof totals> = {
    sent: 'sendMs',
    verified: 'verifyMs',
    deleted: 'deleteMs',
  };
  const onStep = (step: string, studyId: string) => {
    const now = performance.now();
    const phase = phaseOf[step];
    const since = last.get(studyId);
    if (phase !== undefined && since !== undefined) totals[phase] += Math.round(now - since);
    last.set(studyId, now);
  };
  return { totals, onStep };
};

/**
 * Our local mode: the studies are queued straight into the state's queue (the feed's cursor set
 * to the source's last change, so the poller finds nothing more), and the runner moves them.
 * Timed from the enqueue to the last study's outcome (moved, verified, deleted).
 */
export const runRelay = async (job: RelayJob): Promise<OperationResult> => {
  const config = parseConfig(job.config, 'benchmark configuration');
  const source = config.sources[0];
  if (source === undefined) throw new Error('the relay job needs one source');
  const state = openState(job.statePath, { maxReceives: config.retry.maxAttempts });
  // busyMs: the studies' move durations summed, what Lambda bills with one study per invocation.
  const counts = { studies: 0, instances: 0, bytes: 0, rejected: 0, deadLettered: 0, busyMs: 0 };
  try {
    const agent = clientAgent(1);
    const { Last } = await jsonCall<{ Last: number }>(agent, source as ServerRef, 'GET', '/changes?last');
    await agent.close();
    await state.feed.advanceCursor(source.id, undefined, Last);
    const phases = phaseClock();
    const runner = new LocalRunner(config, state, silentUntilWarn(), { onStep: phases.onStep });
    let finished: { at: number; cpu: NodeJS.CpuUsage } | undefined;
    const onOutcome = (outcome: StudyOutcome) => {
      if (outcome.result === 'moved') counts.studies++;
      counts.instances += outcome.deleted;
      counts.bytes += outcome.bytes;
      counts.rejected += outcome.rejected;
      counts.busyMs += outcome.durationMs;
      if (counts.studies === job.studies.length) {
        finished ??= { at: performance.now(), cpu: process.cpuUsage(cpuStart) };
      }
    };
    // The clock starts when the studies are queued; the runner then idles until it sees the
    // queue empty, which is not counted.
    const cpuStart = process.cpuUsage();
    const started = performance.now();
    await state.queue.enqueue(
      job.studies.map((studyId) => ({ sourceId: source.id, studyId, reason: 'stable' })),
    );
    const summary = await runner.run({ untilIdle: true, onOutcome });
    counts.deadLettered = summary.deadLettered;
    Object.assign(counts, phases.totals);
    const end = finished ?? { at: performance.now(), cpu: process.cpuUsage(cpuStart) };
    return {
      seconds: (end.at - started) / 1000,
      cpu: end.cpu,
      counts,
    };
  } finally {
    state.close();
  }
};

/** The `ahead` reader: each series cut into STOW-sized batches, each batch's files read ahead. */
const readAheadAll = async (
  job: ReadJob,
  counts: { series: number; requests: number; bytes: number; instances: number },
): Promise<void> => {
  const source = new OrthancClient(
    createEndpoint(job.source, configDefaults.timeouts, { pipelining: SOURCE_PIPELINING }),
  );
  // Cut as the relay cuts them; the sizes are the set's average, the attachments unknown here.
  const instances = job.series.flatMap((series) =>
    series.instanceIds.map((id) => ({
      id,
      sopInstanceUid: id,
      seriesId: series.seriesInstanceUid,
      fileSize: job.instanceBytes,
      fileUuid: '',
    })),
  );
  await runBounded(planBatches(instances, configDefaults.stow), job.concurrency, async (batch) => {
    const lane = await source.lane();
    const open = (item: { id: string }, ahead: boolean) =>
      source.openInstance(item.id, undefined, ahead ? { lane } : {});
    try {
      const limits = readAheadLimits(configDefaults.stow, source.quickestAnswerMs());
      for (const part of readAhead(batch, open, limits)) {
        const stream = await part.open();
        if (stream === undefined) throw new Error('an instance of the set is gone from the source');
        for await (const chunk of stream) counts.bytes += (chunk as Buffer).length;
        counts.requests++;
        counts.instances++;
      }
    } finally {
      await lane.destroy();
    }
  });
  counts.series = job.series.length;
};

/** Reads whole series from the source, without storing them: bytes and parts are counted. */
export const runRead = async (job: ReadJob): Promise<OperationResult> => {
  const agent = clientAgent(job.concurrency);
  const authorization = basic(job.source);
  const counts = { series: 0, requests: 0, bytes: 0, instances: 0 };
  const drain = async (path: string, accept: string) => {
    const response = await request(`${job.source.url}${path}`, {
      dispatcher: agent,
      headers: { authorization, accept },
    });
    if (response.statusCode !== 200) throw new Error(`GET ${path} answered ${response.statusCode}`);
    counts.requests++;
    for await (const chunk of response.body) counts.bytes += (chunk as Buffer).length;
  };
  const started = performance.now();
  if (job.mode === 'wado') {
    await runBounded(job.series, job.concurrency, async (series) => {
      await drain(
        `/dicom-web/studies/${series.studyInstanceUid}/series/${series.seriesInstanceUid}`,
        'multipart/related; type="application/dicom"',
      );
      counts.series++;
      counts.instances += series.instanceIds.length;
    });
  } else if (job.mode === 'ahead') {
    await readAheadAll(job, counts);
  } else {
    const ids = job.series.flatMap((series) => series.instanceIds);
    await runBounded(ids, job.concurrency, async (id) => {
      await drain(`/instances/${id}/file`, 'application/dicom');
      counts.instances++;
    });
    counts.series = job.series.length;
  }
  const seconds = (performance.now() - started) / 1000;
  await agent.close();
  return { seconds, counts };
};

export const runOperation = async (job: ChildJob): Promise<OperationResult> => {
  switch (job.kind) {
    case 'ceiling':
      return runCeiling(job);
    case 'push':
      return runPush(job);
    case 'relay':
      return runRelay(job);
    case 'read':
      return runRead(job);
    case 'poller':
      // Imported here only: the AWS SDK would weigh on the other children's memory figures.
      return (await import('./poller-job.ts')).runPoller(job);
  }
};
