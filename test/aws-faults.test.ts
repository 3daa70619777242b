/**
 * The AWS handlers under faults, against real parts: the real poller and forwarder handlers on
 * DynamoDB Local, an SQS emulator (fauxqs) and real Orthancs, each Orthanc behind a TCP proxy
 * (test/support/tcp-proxy.ts) that is the handlers' configured URL. What the local-mode fault
 * scenarios (fault-injection.test.ts) show of the runner, here of the Lambda adapters: DynamoDB
 * leases and outcome transactions, SQS visibility backoff, batch item failures, the dead-letter
 * queue after maxReceiveCount, the invocation's deadline, and a Lambda that dies mid-move (one
 * invocation in a child process, test/support/lambda-crash-at.ts).
 *
 * Every fault is proven to have taken effect (the proxy reports it, or the child's marker does),
 * and "nothing is lost" is checked at the servers (test/support/invariant.ts) over and over while
 * the fault plays out, and after recovery. No wall-clock threshold: the forwarder's timeouts are
 * configured short, and every waiting loop is bounded by a count.
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { QueryCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import {
  ChangeMessageVisibilityCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
} from '@aws-sdk/client-sqs';
import type { Context, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { type AwsRuntime, createRuntime } from '../lambdas/aws/runtime.ts';
import { encodeWorkItem } from '../lambdas/core/work-item.ts';
import { createForwarderHandler } from '../lambdas/handlers/forwarder.ts';
import { createPollerHandler } from '../lambdas/handlers/poller.ts';
import { type GeneratedInstance, generateStudies } from '../testbed/dicom-generator.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { type DeliveryReport, deliverOnce, lambdaContext } from '../testbed/event-source-mapping.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { emulatorEnv, type SqsEmulator, startSqsEmulator } from '../testbed/sqs-emulator.ts';
import { deliverNext, drainQueue, queueDepth } from './support/aws-emulators.ts';
import { REQUESTS, STOW_PART, untilStudiesStable } from './support/fault-scenario.ts';
import {
  captureLog,
  instanceCount,
  type LogEntry,
  shape,
  startServers,
  upload,
  useTestbed,
} from './support/harness.ts';
import {
  checkNothingLost,
  type InvariantOptions,
  type InvariantReport,
  type InvariantWatch,
  isComplete,
  watchNothingLost,
} from './support/invariant.ts';
import { LAMBDA_CRASH_AT, type LambdaCrashPoint, startProcess } from './support/processes.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

/** The queue's maxReceiveCount and the forwarder's retry.maxAttempts, as the stack sets them. */
const MAX_RECEIVES = 3;
const RETRY = { maxAttempts: MAX_RECEIVES, baseDelayMs: 1_000, maxDelayMs: 4_000 };
/** Short, so that a black hole is felt soon. */
const TIMEOUTS = { connectMs: 1_000, headersMs: 2_000, bodyMs: 2_000 };
/**
 * The queue's own visibility timeout: far longer than any backoff and than every waiting loop
 * here, so a failed message that comes back within one was delayed by the handler's backoff.
 */
const QUEUE_VISIBILITY_SECONDS = 600;
/** Outside every sweep period (600 s boundaries, a 1-minute schedule): a poll reads the feed only. */
const POLL_TIME = '2026-01-01T00:05:00.000Z';
const SOURCE_ID = 'site-0';
const RETRY_MESSAGE = 'work item failed, will retry';
const BULK_DELETE = REQUESTS.bulkDelete;

interface Pipeline {
  readonly source: OrthancServer;
  readonly destination: OrthancServer;
  readonly sourceProxy: TcpProxy;
  readonly destinationProxy: TcpProxy;
  readonly sqs: SqsEmulator;
  readonly runtime: AwsRuntime;
  readonly tableName: string;
  /** The Lambda's environment, for a handler in a child process. */
  readonly env: Record<string, string>;
  readonly instances: readonly GeneratedInstance[];
  /** The source's Orthanc IDs of the studies. */
  readonly studyIds: readonly string[];
  /** What the handlers logged (the runtime's log). */
  readonly log: LogEntry[];
  readonly invariant: InvariantOptions;
  poll(): ReturnType<ReturnType<typeof createPollerHandler>>;
  /** One poll of the event source mapping; `remainingMs` is the invocation's time budget. */
  deliver(remainingMs?: number): Promise<DeliveryReport>;
  drain(): Promise<DeliveryReport[]>;
  /** The next invocation, once a message is visible again (after its backoff). */
  redeliver(): Promise<DeliveryReport>;
  /** The VisibilityTimeout of each ChangeMessageVisibility the handler sent, in order. */
  visibilityTimeouts(): number[];
  /** The bodies of the work items the poller queued, in order. */
  queued(): string[];
}

const retries = (log: readonly LogEntry[]) => log.filter((entry) => entry.message === RETRY_MESSAGE);

/** Each retry's delay is the backoff of its receive, and the handler set it as the message's visibility. */
const expectBackoff = (pipeline: Pipeline, receiveCounts: readonly number[]): void => {
  const logged = retries(pipeline.log);
  expect(logged.map((entry) => entry.receiveCount)).toEqual(receiveCounts);
  const delays = logged.map((entry) => entry.delayMs as number);
  for (const [index, delay] of delays.entries()) {
    const capped = Math.min(RETRY.maxDelayMs, RETRY.baseDelayMs * 2 ** ((receiveCounts[index] ?? 1) - 1));
    expect(delay).toBeGreaterThanOrEqual(capped / 2);
    expect(delay).toBeLessThanOrEqual(capped);
  }
  expect(pipeline.visibilityTimeouts()).toEqual(delays.map((delay) => Math.round(delay / 1000)));
};

const expectNothingLostIn = (reports: readonly InvariantReport[]): void => {
  expect(reports.length).toBeGreaterThan(0);
  for (const report of reports) {
    expect(report.lost).toEqual([]);
    expect(report.duplicates).toEqual([]);
    expect(report.corrupt).toEqual([]);
  }
};

/**
 * Stops a watch and checks every report it took; with AWS_FAULTS_REPORT set, appends the test's
 * figures to that file (for docs/reliability.md): the checks, the STOW-RS parts the destination's
 * proxy saw (cut ones included), the failed attempts.
 */
const endWatch = async (pipeline: Pipeline, watch: InvariantWatch): Promise<void> => {
  const reports = await watch.stop();
  expectNothingLostIn(reports);
  const path = process.env.AWS_FAULTS_REPORT;
  if (path === undefined) return;
  const partsSent = pipeline.destinationProxy.counted(STOW_PART);
  const figures = {
    name: expect.getState().currentTestName,
    instances: pipeline.instances.length,
    checks: reports.length,
    partsSent,
    resent: Math.max(0, partsSent - pipeline.instances.length),
    failedAttempts: retries(pipeline.log).length,
  };
  appendFileSync(path, `${JSON.stringify(figures)}\n`);
};

/** The move is complete: the source empty, the destination holds every instance once, byte for byte. */
const expectComplete = async (pipeline: Pipeline): Promise<void> => {
  const final = await checkNothingLost(pipeline.invariant);
  expectNothingLostIn([final]);
  expect(isComplete(final)).toBe(true);
  expect(final.destinationCounts).toEqual([pipeline.instances.length]);
  expect(await instanceCount(pipeline.source)).toBe(0);
  expect(await queueDepth(pipeline.sqs.client, pipeline.sqs.queueUrl)).toBe(0);
  expect(await queueDepth(pipeline.sqs.client, pipeline.sqs.deadLetterQueueUrl)).toBe(0);
};

/** The outcomes the ledger recorded for a study, oldest first. */
const outcomesOf = async (dynamo: DynamoDbLocal, tableName: string, studyId: string) =>
  (
    (
      await dynamo.client.send(
        new QueryCommand({
          TableName: tableName,
          KeyConditionExpression: 'pk = :pk',
          ExpressionAttributeValues: { ':pk': { S: `outcome#${SOURCE_ID}#${studyId}` } },
          ConsistentRead: true,
        }),
      )
    ).Items ?? []
  ).map((item) => ({
    result: item.result?.S,
    sent: Number(item.sent?.N),
    alreadyPresent: Number(item.alreadyPresent?.N),
    deleted: Number(item.deleted?.N),
  }));

/** The study's lease item (forward-work-item.ts keys it `study#<source>#<study>`), if any. */
const leaseKeyOf = (studyId: string) => ({
  pk: { S: `lease#study#${SOURCE_ID}#${studyId}` },
  sk: { S: 'lease' },
});

/**
 * What the handlers write to stdout during a test: Powertools' EMF records (their log lines go to
 * the captured log), kept out of the test's output.
 */
const stdout: string[] = [];

/** The EMF records the handlers wrote while `run` ran. */
const emfDuring = async <T>(
  run: () => Promise<T>,
): Promise<{ result: T; records: Record<string, unknown>[] }> => {
  const from = stdout.length;
  const result = await run();
  const records = stdout
    .slice(from)
    .join('')
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => '_aws' in line);
  return { result, records };
};

describe('the AWS handlers under faults, on DynamoDB Local, fauxqs and real Orthancs behind TCP proxies', () => {
  const { fleet, workPath, closeAfterTest } = useTestbed('aws-faults');
  let dynamo: DynamoDbLocal;
  let tables = 0;

  beforeAll(async () => {
    dynamo = await startDynamoDbLocal();
  });
  afterAll(async () => {
    await dynamo?.stop();
  });
  beforeEach(() => {
    stdout.length = 0;
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stdout.push(String(chunk));
      return true;
    });
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  /**
   * A source and a destination, each behind a proxy; a fresh queue pair and state table; one or two
   * generated studies (2 series × 3 instances of 16 KB each) uploaded, and stable, before anything
   * runs; the handlers as Lambda builds them, with the runtime's log captured.
   */
  const startPipeline = async (
    seed: string,
    options: { readonly patients?: number; readonly extra?: Readonly<Record<string, unknown>> } = {},
  ): Promise<Pipeline> => {
    const [servers, sqs] = await Promise.all([
      startServers(fleet, ['site-0', 'destination']),
      startSqsEmulator({ maxReceiveCount: MAX_RECEIVES, visibilityTimeoutSeconds: QUEUE_VISIBILITY_SECONDS }),
    ]);
    closeAfterTest({ close: () => sqs.stop() });
    const [source, destination] = servers;
    const [sourceProxy, destinationProxy] = (
      await Promise.all([TcpProxy.start(source.httpPort), TcpProxy.start(destination.httpPort)])
    ).map(closeAfterTest) as [TcpProxy, TcpProxy];
    tables += 1;
    const tableName = `state-${tables}`;
    await dynamo.createTable(tableName);

    const set = generateStudies(shape(seed, { patients: options.patients ?? 1 }));
    await upload(source, set.instances);
    const studyIds = await source.rest<string[]>('GET', '/studies');
    await untilStudiesStable(source, studyIds.length);

    const env = {
      ...emulatorEnv({ dynamodb: dynamo.endpoint, sqs: sqs.endpoint }),
      AWS_LAMBDA_FUNCTION_NAME: 'orthanc-forwarder-faults-test',
      POWERTOOLS_METRICS_NAMESPACE: 'OrthancForwarderTest',
      POWERTOOLS_LOG_LEVEL: 'WARN',
      FORWARDER_CONFIG: JSON.stringify({
        sources: [
          { id: SOURCE_ID, url: sourceProxy.url, username: source.username, password: source.password },
        ],
        destination: {
          url: `${destinationProxy.url}/dicom-web`,
          username: destination.username,
          password: destination.password,
        },
        quietSeconds: 2,
        retry: RETRY,
        timeouts: TIMEOUTS,
        ...options.extra,
      }),
      STATE_TABLE: tableName,
      QUEUE_URL: sqs.queueUrl,
      DLQ_URL: sqs.deadLetterQueueUrl,
    };
    // The SDK clients the runtime builds take their endpoints from the process's environment.
    Object.assign(process.env, env);
    const { log, entries } = captureLog();
    // The credentials are in the configuration: no secret is read.
    const runtime: AwsRuntime = { ...(await createRuntime(env)), log };
    closeAfterTest({
      close: async () => {
        runtime.sqs.destroy();
        runtime.dynamodb.destroy();
      },
    });
    const sqsCalls = vi.spyOn(runtime.sqs, 'send');
    destinationProxy.count(STOW_PART);
    const poller = createPollerHandler(async () => runtime);
    const forwarder = createForwarderHandler(async () => runtime);
    const mapping = { sqs: sqs.client, queueUrl: sqs.queueUrl, handler: forwarder };
    return {
      source,
      destination,
      sourceProxy,
      destinationProxy,
      sqs,
      runtime,
      tableName,
      env,
      instances: set.instances,
      studyIds,
      log: entries,
      invariant: { instances: set.instances, sources: [source], destinations: [destination] },
      poll: () => poller({ time: POLL_TIME }, lambdaContext('poller', 60_000)),
      deliver: (remainingMs) =>
        deliverOnce({
          ...mapping,
          handler: (event: SQSEvent, context: Context): Promise<SQSBatchResponse> =>
            forwarder(event, remainingMs === undefined ? context : lambdaContext('forwarder', remainingMs)),
        }),
      drain: () => drainQueue(mapping),
      redeliver: () => deliverNext(mapping),
      visibilityTimeouts: () =>
        sqsCalls.mock.calls
          .map(([command]) => command)
          .filter((command) => command instanceof ChangeMessageVisibilityCommand)
          .map((command) => command.input.VisibilityTimeout ?? -1),
      queued: () =>
        sqsCalls.mock.calls
          .map(([command]) => command)
          .filter((command) => command instanceof SendMessageBatchCommand)
          .flatMap((command) => command.input.Entries ?? [])
          .map((entry) => entry.MessageBody ?? ''),
    };
  };

  /**
   * A pipeline whose one poll queued every study (all stable already), with a watch of the
   * invariant started: what each forwarder scenario starts from.
   */
  const startQueued = async (seed: string): Promise<{ pipeline: Pipeline; watch: InvariantWatch }> => {
    const pipeline = await startPipeline(seed);
    const result = await pipeline.poll();
    expect(result.sources).toEqual([expect.objectContaining({ sourceId: SOURCE_ID, ok: true })]);
    expect(result.sources[0]?.report?.queued).toBe(pipeline.studyIds.length);
    return { pipeline, watch: watchNothingLost(pipeline.invariant) };
  };

  it('a STOW-RS request reset mid-body: the item fails with backoff, nothing is deleted, the redelivery completes the move', async () => {
    const { pipeline, watch } = await startQueued('aws-stow-reset');
    const { destinationProxy, runtime } = pipeline;
    destinationProxy.setMode({ kind: 'reset', direction: 'up', afterBytes: 8_000, match: REQUESTS.stow });
    expect(await pipeline.deliver()).toEqual({ received: 1, failed: 1 });
    // The reset took effect 8 KB into the body of the one STOW-RS request (6 instances of 16 KB).
    expect(destinationProxy.stats.resets).toBe(1);
    const cut = destinationProxy.counted(STOW_PART);
    expect(cut).toBeGreaterThan(0);
    const [failure] = retries(pipeline.log);
    expect(failure).toMatchObject({
      kind: 'transient',
      error: expect.stringContaining(destinationProxy.url),
    });
    expectBackoff(pipeline, [1]);
    // The destination discarded the incomplete body; the source kept everything; nothing recorded.
    expect(await checkNothingLost(pipeline.invariant)).toMatchObject({
      atSources: pipeline.instances.length,
      atDestination: 0,
      destinationCounts: [0],
    });
    const none = { studies: 0, instances: 0, bytes: 0 };
    expect(await runtime.ledger.totals()).toEqual({
      moved: none,
      copied: none,
      deleted: 0,
      rejected: 0,
      sources: {},
    });

    // Back after the backoff (not the queue's 600 s visibility), once the proxy passes again.
    destinationProxy.heal();
    const deliveries = await pipeline.drain();
    expect(deliveries.filter((delivery) => delivery.received > 0)).toEqual([{ received: 1, failed: 0 }]);
    await endWatch(pipeline, watch);
    await expectComplete(pipeline);
    // Every instance sent once more, whole: the cut parts were never stored.
    expect(destinationProxy.counted(STOW_PART)).toBe(cut + pipeline.instances.length);
    expect(await outcomesOf(dynamo, pipeline.tableName, pipeline.studyIds[0] as string)).toEqual([
      { result: 'moved', sent: 6, alreadyPresent: 0, deleted: 6 },
    ]);
    expect(await runtime.ledger.totals()).toMatchObject({
      moved: { studies: 1, instances: 6 },
      deleted: 6,
      rejected: 0,
    });
  });

  it('a black-holed destination (accepts, never answers): the handler gives up by its timeouts, the item fails, and later completes', async () => {
    const { pipeline, watch } = await startQueued('aws-black-hole');
    const { destinationProxy } = pipeline;

    // The whole destination: its QIDO-RS listing, the move's first request to it, gets no answer.
    destinationProxy.setMode({ kind: 'black-hole' });
    expect(await pipeline.deliver()).toEqual({ received: 1, failed: 1 });
    expect(destinationProxy.stats.blackHoled).toBeGreaterThan(0);
    expect(retries(pipeline.log)[0]?.error).toMatch(/QIDO.*UND_ERR_HEADERS_TIMEOUT/);
    expect(destinationProxy.counted(STOW_PART)).toBe(0);

    // Its STOW-RS requests only: swallowed whole, never answered; the verification finds nothing.
    destinationProxy.heal();
    destinationProxy.setMode({ kind: 'black-hole', match: REQUESTS.stow });
    expect(await pipeline.redeliver()).toEqual({ received: 1, failed: 1 });
    expect(destinationProxy.hasTriggered).toBe(true);
    expect(retries(pipeline.log)[1]?.error).toMatch(/STOW.*UND_ERR_HEADERS_TIMEOUT/);
    expect(destinationProxy.counted(STOW_PART)).toBeGreaterThan(0);
    expect(await checkNothingLost(pipeline.invariant)).toMatchObject({
      atSources: pipeline.instances.length,
      atDestination: 0,
    });
    expectBackoff(pipeline, [1, 2]);

    destinationProxy.heal();
    const deliveries = await pipeline.drain();
    expect(deliveries.filter((delivery) => delivery.received > 0)).toEqual([{ received: 1, failed: 0 }]);
    await endWatch(pipeline, watch);
    await expectComplete(pipeline);
    expect(await outcomesOf(dynamo, pipeline.tableName, pipeline.studyIds[0] as string)).toEqual([
      { result: 'moved', sent: 6, alreadyPresent: 0, deleted: 6 },
    ]);
  });

  it('a source unreachable during polls: each poll reports it failed and counts it, the cursor stays before what was not queued, the next poll queues every study', async () => {
    const pageSize = 5;
    const pipeline = await startPipeline('aws-poll-faults', {
      patients: 2,
      extra: { changesPageSize: pageSize },
    });
    const { source, sourceProxy, runtime } = pipeline;
    // The feed as the poller will page it; the page holding the first StableStudy change is cut.
    const pages: { since: number; changes: { Seq: number; ChangeType: string; ID: string }[] }[] = [];
    for (let since = 0; pages.length < 100; ) {
      const page = await source.rest<{
        Changes: { Seq: number; ChangeType: string; ID: string }[];
        Done: boolean;
      }>('GET', `/changes?since=${since}&limit=${pageSize}`);
      pages.push({ since, changes: page.Changes });
      if (page.Done || page.Changes.length === 0) break;
      since = Math.max(...page.Changes.map((change) => change.Seq));
    }
    const cutAt = pages.findIndex((page) =>
      page.changes.some((change) => change.ChangeType === 'StableStudy'),
    );
    expect(cutAt).toBeGreaterThan(0);
    const cut = pages[cutAt]?.since as number;
    const readBefore = pages.slice(0, cutAt).flatMap((page) => page.changes);
    const unitsOf = (records: readonly Record<string, unknown>[]) =>
      records
        .filter((record) => record.SourceId === SOURCE_ID && 'SourceUnreachable' in record)
        .map((record) => record.SourceUnreachable);

    const watch = watchNothingLost(pipeline.invariant);
    // 1. The source refuses every connection: nothing read, nothing queued, no cursor.
    sourceProxy.setMode({ kind: 'drop' });
    const refused = await emfDuring(() => pipeline.poll());
    expect(sourceProxy.stats.dropped).toBeGreaterThan(0);
    expect(refused.result.sources).toEqual([
      { sourceId: SOURCE_ID, ok: false, error: expect.stringContaining(sourceProxy.url) },
    ]);
    expect(unitsOf(refused.records)).toEqual([1]);
    expect(await runtime.feed.getCursor(SOURCE_ID)).toBeUndefined();

    // 2. The connection is reset as the page with the first StableStudy change is asked for.
    sourceProxy.heal();
    sourceProxy.setMode({
      kind: 'reset',
      direction: 'up',
      afterBytes: 0,
      match: `GET /changes?since=${cut}&limit=${pageSize} HTTP/1.1`,
    });
    const cutPoll = await emfDuring(() => pipeline.poll());
    expect(sourceProxy.stats.resets).toBe(1);
    expect(cutPoll.result.sources).toEqual([
      { sourceId: SOURCE_ID, ok: false, error: expect.stringContaining(sourceProxy.url) },
    ]);
    expect(unitsOf(cutPoll.records)).toEqual([1]);
    // The pages before it are durable: the cursor at their end, not past one change after it.
    expect(await runtime.feed.getCursor(SOURCE_ID)).toBe(cut);
    expect(await queueDepth(pipeline.sqs.client, pipeline.sqs.queueUrl)).toBe(0);
    const announced = readBefore
      .filter((change) => change.ChangeType === 'NewStudy')
      .map((change) => change.ID);
    expect((await runtime.feed.watched(SOURCE_ID)).map((study) => study.studyId).sort()).toEqual(
      announced.sort(),
    );

    // 3. Reachable again: one poll queues every study, once.
    sourceProxy.heal();
    const healed = await pipeline.poll();
    expect(healed.sources).toEqual([expect.objectContaining({ sourceId: SOURCE_ID, ok: true })]);
    expect(healed.sources[0]?.report?.queued).toBe(pipeline.studyIds.length);
    // Over the three polls, each study was queued once.
    const queued = pipeline.queued().map((body) => (JSON.parse(body) as { studyId: string }).studyId);
    expect(queued.sort()).toEqual([...pipeline.studyIds].sort());

    const deliveries = await pipeline.drain();
    expect(deliveries.reduce((sum, delivery) => sum + delivery.failed, 0)).toBe(0);
    await endWatch(pipeline, watch);
    await expectComplete(pipeline);
    expect(await runtime.ledger.totals()).toMatchObject({
      moved: { studies: 2, instances: 12 },
      deleted: 12,
    });
  });

  describe('an invocation that dies mid-move', () => {
    const crashCases: {
      readonly point: LambdaCrashPoint;
      readonly what: string;
      readonly afterCrash: { readonly atSources: number; readonly atDestination: number };
      readonly outcome: { result: string; sent: number; alreadyPresent: number; deleted: number };
    }[] = [
      {
        point: 'stow-answered',
        what: 'sent, not verified',
        afterCrash: { atSources: 6, atDestination: 6 },
        outcome: { result: 'moved', sent: 0, alreadyPresent: 6, deleted: 6 },
      },
      {
        point: 'delete-requested',
        what: 'sent, verified, nothing deleted',
        afterCrash: { atSources: 6, atDestination: 6 },
        outcome: { result: 'moved', sent: 0, alreadyPresent: 6, deleted: 6 },
      },
      {
        point: 'delete-answered',
        what: 'deleted, no outcome recorded',
        afterCrash: { atSources: 0, atDestination: 6 },
        // The deletion's intent, recorded before the delete, lets the redelivery record the move.
        outcome: { result: 'moved', sent: 0, alreadyPresent: 0, deleted: 6 },
      },
    ];

    it.each(crashCases)(
      "SIGKILLed at '$point' ($what): a redelivery under the held lease moves nothing, one after its expiry completes without resending",
      async ({ point, afterCrash, outcome }) => {
        const { pipeline, watch } = await startQueued(`aws-crash-${point}`);
        const { sourceProxy, destinationProxy, runtime } = pipeline;
        const studyId = pipeline.studyIds[0] as string;
        sourceProxy.count(BULK_DELETE);

        // One invocation in a child process, which SIGKILLs itself at the point.
        const marker = workPath('crashed.json');
        const child = await startProcess(
          process.execPath,
          ['--disable-warning=ExperimentalWarning', LAMBDA_CRASH_AT, point, marker],
          { env: { ...process.env, ...pipeline.env } },
        ).done;
        expect(child.signal, `${child.stdout}\n${child.stderr}`).toBe('SIGKILL');
        expect(existsSync(marker)).toBe(true);
        const crashed = JSON.parse(readFileSync(marker, 'utf8')) as {
          point: string;
          receiptHandle: string;
          receiveCount: number;
        };
        expect(crashed).toMatchObject({ point, receiveCount: 1 });
        expect(sourceProxy.counted(BULK_DELETE)).toBe(point === 'delete-answered' ? 1 : 0);
        expect(destinationProxy.counted(STOW_PART)).toBe(pipeline.instances.length);
        expect(await checkNothingLost(pipeline.invariant)).toMatchObject(afterCrash);
        // The dead worker still holds the lease, and recorded nothing.
        const lease = (
          await dynamo.client.send(
            new QueryCommand({
              TableName: pipeline.tableName,
              KeyConditionExpression: 'pk = :pk',
              ExpressionAttributeValues: { ':pk': leaseKeyOf(studyId).pk },
              ConsistentRead: true,
            }),
          )
        ).Items?.[0];
        expect(Number(lease?.expiresAt?.N)).toBeGreaterThan(Date.now());
        expect(await outcomesOf(dynamo, pipeline.tableName, studyId)).toEqual([]);

        // The message comes back when its visibility ends (made to end now); the lease is still held:
        // the second worker does not touch the study, fails the item, and backs off.
        await pipeline.sqs.client.send(
          new ChangeMessageVisibilityCommand({
            QueueUrl: pipeline.sqs.queueUrl,
            ReceiptHandle: crashed.receiptHandle,
            VisibilityTimeout: 0,
          }),
        );
        const bytes = { source: sourceProxy.stats.bytes.up, destination: destinationProxy.stats.bytes.up };
        expect(await pipeline.deliver()).toEqual({ received: 1, failed: 1 });
        expect(retries(pipeline.log)[0]?.error).toBe('the study is being moved by another worker');
        expect({ source: sourceProxy.stats.bytes.up, destination: destinationProxy.stats.bytes.up }).toEqual(
          bytes,
        );
        expectBackoff(pipeline, [2]);

        // The lease expires (its expiry set to now: what 6 minutes would do), and the next
        // redelivery completes the move, sending nothing the destination holds.
        await dynamo.client.send(
          new UpdateItemCommand({
            TableName: pipeline.tableName,
            Key: leaseKeyOf(studyId),
            UpdateExpression: 'SET expiresAt = :now',
            ExpressionAttributeValues: { ':now': { N: String(Date.now()) } },
          }),
        );
        const deliveries = await pipeline.drain();
        expect(deliveries.filter((delivery) => delivery.received > 0)).toEqual([{ received: 1, failed: 0 }]);
        await endWatch(pipeline, watch);
        await expectComplete(pipeline);
        expect(destinationProxy.counted(STOW_PART)).toBe(pipeline.instances.length);
        expect(sourceProxy.counted(BULK_DELETE)).toBe(1);
        expect(await outcomesOf(dynamo, pipeline.tableName, studyId)).toEqual([outcome]);
        expect(await runtime.ledger.totals()).toMatchObject({
          moved: { studies: outcome.result === 'moved' ? 1 : 0, instances: outcome.deleted },
          deleted: outcome.deleted,
        });
        // Released by the worker that completed.
        const leaseAfter = await dynamo.client.send(
          new QueryCommand({
            TableName: pipeline.tableName,
            KeyConditionExpression: 'pk = :pk',
            ExpressionAttributeValues: { ':pk': leaseKeyOf(studyId).pk },
            ConsistentRead: true,
          }),
        );
        expect(leaseAfter.Items).toEqual([]);
      },
    );

    it('an invocation with no time left starts no STOW-RS request: the item fails with backoff, the next one completes', async () => {
      const { pipeline, watch } = await startQueued('aws-out-of-time');
      const { destinationProxy } = pipeline;
      // 1 s left: the handler's deadline (30 s before the end) has passed before the move starts.
      expect(await pipeline.deliver(1_000)).toEqual({ received: 1, failed: 1 });
      expect(retries(pipeline.log)[0]?.error).toMatch(/^out of time/);
      expect(destinationProxy.counted(STOW_PART)).toBe(0);
      expectBackoff(pipeline, [1]);
      const deliveries = await pipeline.drain();
      expect(deliveries.filter((delivery) => delivery.received > 0)).toEqual([{ received: 1, failed: 0 }]);
      await endWatch(pipeline, watch);
      await expectComplete(pipeline);
      expect(destinationProxy.counted(STOW_PART)).toBe(pipeline.instances.length);
    });
  });

  it('a destination down past maxReceiveCount: retried with backoff, then dead-lettered by the handler with its last error; nothing deleted', async () => {
    const { pipeline, watch } = await startQueued('aws-out-of-receives');
    const { destinationProxy } = pipeline;
    destinationProxy.setMode({ kind: 'drop' });

    const { result: drained, records } = await emfDuring(() => pipeline.drain());
    const deliveries = drained.filter((delivery) => delivery.received > 0);
    // Two failures come back after their backoff; the third receive is the last attempt: copied
    // to the DLQ by the handler and reported processed.
    expect(deliveries).toEqual([
      { received: 1, failed: 1 },
      { received: 1, failed: 1 },
      { received: 1, failed: 0 },
    ]);
    expect(destinationProxy.stats.dropped).toBeGreaterThanOrEqual(MAX_RECEIVES);
    expectBackoff(pipeline, [1, 2]);
    const counted = (name: string) =>
      records.filter((record) => name in record && !('SourceId' in record)).map((record) => record[name]);
    expect({ Retries: counted('Retries'), DeadLettered: counted('DeadLettered') }).toEqual({
      Retries: [1, 1],
      DeadLettered: [1],
    });
    expect(pipeline.log.filter((entry) => entry.message === 'work item dead-lettered')).toEqual([
      expect.objectContaining({ receiveCount: MAX_RECEIVES, why: 'attempts used up' }),
    ]);
    expect(await queueDepth(pipeline.sqs.client, pipeline.sqs.queueUrl)).toBe(0);
    const [dead, ...more] =
      (
        await pipeline.sqs.client.send(
          new ReceiveMessageCommand({
            QueueUrl: pipeline.sqs.deadLetterQueueUrl,
            MaxNumberOfMessages: 10,
            MessageAttributeNames: ['All'],
          }),
        )
      ).Messages ?? [];
    expect(more).toEqual([]);
    // Queued by the first read of the source's feed: its history, the backlog.
    expect(dead?.Body).toBe(
      encodeWorkItem({
        sourceId: SOURCE_ID,
        studyId: pipeline.studyIds[0] as string,
        reason: 'stable',
        priority: 'backlog',
      }),
    );
    expect(dead?.MessageAttributes?.receiveCount?.StringValue).toBe(String(MAX_RECEIVES));
    expect(dead?.MessageAttributes?.lastError?.StringValue).toContain(destinationProxy.url);

    // Nothing left the source; nothing reached the destination; nothing recorded.
    await endWatch(pipeline, watch);
    expect(await checkNothingLost(pipeline.invariant)).toMatchObject({
      atSources: pipeline.instances.length,
      atDestination: 0,
      destinationCounts: [0],
    });
    expect(await pipeline.runtime.ledger.totals()).toMatchObject({ moved: { studies: 0 }, deleted: 0 });
  });
});
