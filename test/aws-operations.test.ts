/**
 * The CLI's AWS mode (lambdas/aws/operations.ts, bin/cli.ts): `status` and `dlq list` against
 * an SQS emulator (fauxqs) and DynamoDB Local with real messages, dead-lettered both ways the
 * pipeline does it; `redrive` against local-aws-sqs, which implements StartMessageMoveTask and
 * ListMessageMoveTasks; and the CLI itself, spawned, on the same emulators.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import {
  ChangeMessageVisibilityCommand,
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  PurgeQueueCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import { createSqsServer } from 'local-aws-sqs';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { formatStatus } from '../bin/format.ts';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import {
  type AwsResources,
  gatherAwsStatus,
  listDeadLetters,
  queueStats,
  reachSources,
  redrive,
  redriveMatching,
  redriveProgress,
} from '../lambdas/aws/operations.ts';
import { SqsDeadLetters } from '../lambdas/aws/sqs-dead-letters.ts';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { errorGroup, formatDeadLetters } from '../lambdas/core/dead-letters.ts';
import { HOUR_MS } from '../lambdas/core/progress.ts';
import type { SourceStatus } from '../lambdas/core/status.ts';
import { movedBucketStart } from '../lambdas/core/totals.ts';
import { encodeWorkItem } from '../lambdas/core/work-item.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import {
  emulatorEnv,
  LOCAL_CREDENTIALS,
  LOCAL_REGION,
  type SqsEmulator,
  startSqsEmulator,
} from '../testbed/sqs-emulator.ts';
import { collect, until } from './support/fixtures.ts';
import { cli } from './support/processes.ts';

const MAX_RECEIVES = 2;

const study = (n: number) => `${String(n).padStart(8, '0')}-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d`;
const item = (sourceId: string, n: number) =>
  encodeWorkItem({ sourceId, studyId: study(n), reason: 'stable' });
/** What must never be printed: a body that is not a work item may hold anything. */
const MALFORMED_BODY = 'DOE^JANE 19700101 not a work item';

const config: ForwarderConfig = parseConfig({
  sources: [
    { id: 'site-a', url: 'http://127.0.0.1:9', secretId: 'orthanc-forwarder/site-a' },
    { id: 'site-b', url: 'http://127.0.0.1:9', secretId: 'orthanc-forwarder/site-b' },
  ],
  destination: { url: 'http://127.0.0.1:9/dicom-web', secretId: 'orthanc-forwarder/destination' },
  retry: { maxAttempts: MAX_RECEIVES },
});

const receiveAll = async (sqs: SQSClient, queueUrl: string) => {
  const bodies: string[] = [];
  for (let round = 0; round < 20; round++) {
    const answer = await sqs.send(
      new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, VisibilityTimeout: 60 }),
    );
    const messages = answer.Messages ?? [];
    if (messages.length === 0) break;
    bodies.push(...messages.map((message) => message.Body ?? ''));
  }
  return bodies;
};

describe('status and dlq list on fauxqs and DynamoDB Local', () => {
  let dynamo: DynamoDbLocal;
  let sqs: SqsEmulator;
  let resources: AwsResources;
  /** The message IDs, by how they were dead-lettered. */
  const ids = { byForwarder: '', byRedrivePolicy: '', malformed: '' };

  const sendTo = async (queueUrl: string, body: string) =>
    (await sqs.client.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }))).MessageId ??
    '';

  beforeAll(async () => {
    [dynamo, sqs] = await Promise.all([
      startDynamoDbLocal(),
      startSqsEmulator({ maxReceiveCount: MAX_RECEIVES, visibilityTimeoutSeconds: 30 }),
    ]);
    resources = {
      queueUrl: sqs.queueUrl,
      deadLetterQueueUrl: sqs.deadLetterQueueUrl,
      tableName: dynamo.tableName,
    };

    // The state the poller and the forwarder leave behind.
    const feed = new DynamoFeedStore(dynamo.client, dynamo.tableName);
    expect(await feed.advanceCursor('site-a', undefined, 120)).toBe(true);
    await feed.watch('site-a', [study(90), study(91)], Date.now());
    const ledger = new DynamoLedger(dynamo.client, dynamo.tableName);
    await ledger.recordRejected([
      {
        sourceId: 'site-a',
        studyId: study(7),
        instanceId: '11111111-22222222-33333333-44444444-55555555',
        sopInstanceUid: '1.2.3.4.5',
        reason: 'the destination refused it (0xA700)',
        rejectedAt: Date.now(),
      },
    ]);

    // Dead letters, both ways: the forwarder's own copy with its error, and the queue's redrive
    // policy after maxReceiveCount receives (the function timed out every time: no error recorded).
    const deadLetters = new SqsDeadLetters(sqs.client, resources);
    await deadLetters.deadLetter(item('site-a', 1), 'site-a: connection refused (ECONNREFUSED)', 8);
    await deadLetters.deadLetter(MALFORMED_BODY, 'malformed work item: not JSON', 1);
    const timedOut = await sendTo(sqs.queueUrl, item('site-b', 2));
    for (let receive = 1; receive <= MAX_RECEIVES; receive++) {
      const [message] =
        (
          await sqs.client.send(
            new ReceiveMessageCommand({ QueueUrl: sqs.queueUrl, MaxNumberOfMessages: 1, WaitTimeSeconds: 1 }),
          )
        ).Messages ?? [];
      expect(message?.MessageId).toBe(timedOut);
      await sqs.client.send(
        new ChangeMessageVisibilityCommand({
          QueueUrl: sqs.queueUrl,
          ReceiptHandle: message?.ReceiptHandle ?? '',
          VisibilityTimeout: 0,
        }),
      );
    }
    // The next receive finds it over maxReceiveCount: the queue moves it to the DLQ.
    await sqs.client.send(new ReceiveMessageCommand({ QueueUrl: sqs.queueUrl, WaitTimeSeconds: 0 }));

    // Work on the queue: two waiting, one in flight.
    for (const n of [3, 4, 5]) await sendTo(sqs.queueUrl, item('site-b', n));
    await sqs.client.send(
      new ReceiveMessageCommand({ QueueUrl: sqs.queueUrl, MaxNumberOfMessages: 1, VisibilityTimeout: 300 }),
    );

    const listed = await listDeadLetters(sqs.client, sqs.deadLetterQueueUrl);
    ids.byForwarder = listed.find((e) => e.item?.studyId === study(1))?.messageId ?? '';
    ids.byRedrivePolicy = listed.find((e) => e.item?.studyId === study(2))?.messageId ?? '';
    ids.malformed = listed.find((e) => e.item === undefined)?.messageId ?? '';
  });

  afterAll(async () => {
    await Promise.allSettled([dynamo?.stop(), sqs?.stop()]);
  });

  it('counts the waiting, in-flight and dead-lettered work items, the backlog queue’s with the work queue’s', async () => {
    expect(await queueStats(sqs.client, resources)).toEqual({ waiting: 2, inFlight: 1, deadLetters: 3 });
    const backlogItem = await sendTo(sqs.backlogQueueUrl, item('site-b', 6));
    const withBacklog = { ...resources, backlogQueueUrl: sqs.backlogQueueUrl };
    expect(await queueStats(sqs.client, withBacklog)).toEqual({ waiting: 3, inFlight: 1, deadLetters: 3 });
    const [received] =
      (
        await sqs.client.send(
          new ReceiveMessageCommand({ QueueUrl: sqs.backlogQueueUrl, WaitTimeSeconds: 1 }),
        )
      ).Messages ?? [];
    expect(received?.MessageId).toBe(backlogItem);
    await sqs.client.send(
      new DeleteMessageCommand({
        QueueUrl: sqs.backlogQueueUrl,
        ReceiptHandle: received?.ReceiptHandle ?? '',
      }),
    );
  });

  it('reports per source the ledger’s counts, the cursor and studies waiting, and that the sources were not asked', async () => {
    const report = await gatherAwsStatus(config, { sqs: sqs.client, dynamodb: dynamo.client }, resources);
    const none = { studies: 0, instances: 0, bytes: 0 };
    const nothingYet = {
      atSource: undefined,
      moved: none,
      copied: none,
      progress: { left: undefined, lastHour: none, lastDay: none },
      deletedUnrouted: 0,
      openConflicts: 0,
    };
    expect(report.sources).toEqual([
      {
        id: 'site-a',
        ...nothingYet,
        rejected: 1,
        waitingToBecomeStable: 2,
        feed: { cursor: 120, last: undefined, lag: undefined },
        unknown: expect.stringMatching(/^not asked: --reach-sources/),
      },
      {
        id: 'site-b',
        ...nothingYet,
        rejected: 0,
        waitingToBecomeStable: 0,
        feed: { cursor: undefined, last: undefined, lag: undefined },
        unknown: expect.stringMatching(/^not asked/),
      },
    ]);
    expect(report.queue).toEqual({ waiting: 2, inFlight: 1, deadLetters: 3 });
    // Counted, not read: reading them would hide them from a redrive meanwhile.
    expect(report.deadLetterGroups).toBeUndefined();
    expect(report.rejected.map((r) => r.studyId)).toEqual([study(7)]);
    expect(report.totals.rejected).toBe(1);
    const text = formatStatus(report);
    expect(text).toMatch(
      /^SOURCE +AT SOURCE +MOVED +LAST HOUR +LAST DAY +RATE +ETA +COPIED +REJECTED +CONFLICTS +WAITING +STATE\n/,
    );
    // Nothing left it lately: no rate; what it holds was not asked: no estimate.
    expect(text).toMatch(/\nsite-a +\? +(0 \/ 0 \/ 0 B +){3}- +\? +0 \/ 0 \/ 0 B +1 +0 +2 +not asked/);
    expect(text).toContain('queue: 2 waiting, 1 in flight');
    expect(text).toContain('3 dead letters\n  group them with `dlq list --group-by error`');
    expect(text).toContain('rejected instances: 1');
    expect(text).toMatch(/\n {2}1 × the destination refused it \(0xA700\) \(newest \d{4}-/);
    expect(text).not.toContain('1.2.3.4.5');
  });

  it('shows what a source it reaches holds and its lag, and why not for one it cannot', async () => {
    const report = await gatherAwsStatus(config, { sqs: sqs.client, dynamodb: dynamo.client }, resources, {
      ask: async (source) =>
        source.id === 'site-b'
          ? { unknown: 'unreachable: connect ETIMEDOUT 10.0.0.2:8042' }
          : { last: 150, holds: { studies: 3, instances: 30, bytes: 3 * 1024 * 1024 } },
    });
    expect(
      report.sources.map(({ id, atSource, feed, unknown }) => ({ id, atSource, feed, unknown })),
    ).toEqual([
      {
        id: 'site-a',
        atSource: { studies: 3, instances: 30, bytes: 3 * 1024 * 1024 },
        feed: { cursor: 120, last: 150, lag: 30 },
        unknown: undefined,
      },
      {
        id: 'site-b',
        atSource: undefined,
        feed: { cursor: undefined, last: undefined, lag: undefined },
        unknown: 'unreachable: connect ETIMEDOUT 10.0.0.2:8042',
      },
    ]);
    expect(formatStatus(report)).toMatch(/\nsite-a +3 \/ 30 \/ 3\.0 MB +0 \/ 0 \/ 0 B .* reachable\n/);
  });

  it('says from the ledger what left a source lately, and with what it holds when the rest may be gone', async () => {
    const now = Date.now();
    const MB = 1024 * 1024;
    await new DynamoLedger(dynamo.client, resources.tableName).record({
      sourceId: 'site-a',
      studyId: study(9),
      result: 'moved',
      instances: 10,
      sent: 10,
      alreadyPresent: 0,
      deleted: 10,
      rejected: 0,
      conflicts: 0,
      bytes: MB,
      deletedBytes: MB,
      durationMs: 1_000,
      finishedAt: now - 60_000,
    });
    const holds = { studies: 3, instances: 30, bytes: 3 * MB };
    const report = await gatherAwsStatus(config, { sqs: sqs.client, dynamodb: dynamo.client }, resources, {
      now,
      ask: async () => ({ last: 150, holds }),
    });
    const moved = { studies: 1, instances: 10, bytes: MB };
    const [site, other] = report.sources;
    expect(site?.progress).toMatchObject({
      left: holds,
      lastHour: moved,
      lastDay: moved,
      rate: { over: 'hour' },
    });
    // 1 MB in the hour since the start of its 5 minutes: 3 MB in three such hours, windows always open.
    const hour = now - movedBucketStart(now - HOUR_MS);
    expect(site?.progress.finishAt).toBeCloseTo(now + 3 * hour, -1);
    expect(other?.progress).toMatchObject({ lastHour: { studies: 0 }, rate: undefined });
    expect(formatStatus(report)).toMatch(
      /\nsite-a +3 \/ 30 \/ 3\.0 MB +(1 \/ 10 \/ 1\.0 MB +){3}\d+ KB\/h +in 3 h \d+ min +0 \/ 0 \/ 0 B /,
    );
  });

  it('reaches a source with the credentials of its secret', async () => {
    let authorization: string | undefined;
    const orthanc: Server = createServer((request, response) => {
      authorization = request.headers.authorization;
      response.setHeader('content-type', 'application/json');
      response.end(
        JSON.stringify(
          request.url === '/statistics'
            ? { CountStudies: 2, CountInstances: 12, TotalDiskSize: '206592', TotalDiskSizeMB: 0 }
            : { Changes: [], Done: true, Last: 4242 },
        ),
      );
    });
    await new Promise<void>((resolve) => orthanc.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(orthanc.address() as AddressInfo).port}`;
      const reached = parseConfig({ ...config, sources: [{ ...config.sources[0], url }] });
      const secretIds: string[] = [];
      const secrets = {
        send: async (command: { input: { SecretId: string } }) => {
          secretIds.push(command.input.SecretId);
          return { SecretString: JSON.stringify({ username: 'forwarder', password: 's3cret' }) };
        },
      } as unknown as SecretsManagerClient;
      const report = await gatherAwsStatus(reached, { sqs: sqs.client, dynamodb: dynamo.client }, resources, {
        ask: reachSources(reached, secrets),
      });
      expect(report.sources[0]).toMatchObject({
        id: 'site-a',
        atSource: { studies: 2, instances: 12, bytes: 206_592 },
        feed: { cursor: 120, last: 4242, lag: 4122 },
      });
      expect(secretIds).toEqual(['orthanc-forwarder/site-a']);
      expect(authorization).toBe(`Basic ${Buffer.from('forwarder:s3cret').toString('base64')}`);
    } finally {
      orthanc.close();
    }
  });

  it('lists every dead letter with its last error, without showing a body that is not a work item', async () => {
    const entries = await listDeadLetters(sqs.client, sqs.deadLetterQueueUrl);
    expect(entries).toHaveLength(3);
    const byId = new Map(entries.map((entry) => [entry.messageId, entry]));
    expect(byId.get(ids.byForwarder)).toMatchObject({
      item: { sourceId: 'site-a', studyId: study(1), reason: 'stable' },
      lastError: 'site-a: connection refused (ECONNREFUSED)',
      receiveCount: 8,
    });
    expect(byId.get(ids.byRedrivePolicy)).toMatchObject({
      item: { sourceId: 'site-b', studyId: study(2) },
      lastError: undefined,
      receiveCount: undefined,
    });
    expect(byId.get(ids.malformed)).toMatchObject({
      item: undefined,
      bodyBytes: Buffer.byteLength(MALFORMED_BODY),
      lastError: 'malformed work item: not JSON',
    });
    for (const entry of entries) expect(entry.sentAt).toBeGreaterThan(Date.now() - 600_000);

    const text = formatDeadLetters(entries);
    expect(text).toContain('3 dead letter(s):');
    expect(text).toContain(`${ids.byForwarder}`);
    expect(text).toContain(`source site-a study ${study(1)} (reason stable)`);
    expect(text).toContain('site-a: connection refused (ECONNREFUSED) (after 8 receive(s))');
    expect(text).toContain("no recorded error: moved by the queue's redrive policy");
    expect(text).toContain(`not a work item (${Buffer.byteLength(MALFORMED_BODY)} bytes, not shown)`);
    expect(text).not.toContain('DOE');
    expect(formatDeadLetters([])).toBe('the dead-letter queue is empty');
  });

  it('leaves the dead letters where they were, visible', async () => {
    await listDeadLetters(sqs.client, sqs.deadLetterQueueUrl, { max: 2 });
    expect(await queueStats(sqs.client, resources)).toMatchObject({ deadLetters: 3 });
    const visible = await sqs.client.send(
      new GetQueueAttributesCommand({
        QueueUrl: sqs.deadLetterQueueUrl,
        AttributeNames: ['ApproximateNumberOfMessages'],
      }),
    );
    expect(visible.Attributes?.ApproximateNumberOfMessages).toBe('3');
    expect(
      (await listDeadLetters(sqs.client, sqs.deadLetterQueueUrl)).map((e) => e.messageId).sort(),
    ).toEqual(Object.values(ids).sort());
  });
});

describe('redrive on local-aws-sqs (StartMessageMoveTask, ListMessageMoveTasks)', () => {
  let server: Server;
  let sqs: SQSClient;
  let resources: Pick<AwsResources, 'queueUrl' | 'deadLetterQueueUrl'>;
  let endpoint: string;

  beforeAll(async () => {
    server = await createSqsServer({ port: 0, hostname: '127.0.0.1' });
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    sqs = new SQSClient({ endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const deadLetterQueueUrl =
      (await sqs.send(new CreateQueueCommand({ QueueName: 'forwarder-dlq' }))).QueueUrl ?? '';
    const dlqArn =
      (
        await sqs.send(
          new GetQueueAttributesCommand({ QueueUrl: deadLetterQueueUrl, AttributeNames: ['QueueArn'] }),
        )
      ).Attributes?.QueueArn ?? '';
    const queueUrl =
      (
        await sqs.send(
          new CreateQueueCommand({
            QueueName: 'forwarder-work',
            Attributes: {
              RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: 8 }),
            },
          }),
        )
      ).QueueUrl ?? '';
    resources = { queueUrl, deadLetterQueueUrl };
  });

  afterAll(async () => {
    sqs?.destroy();
    await new Promise((resolve) => server?.close(resolve));
  });

  it('moves every dead letter back to the work queue, reporting progress until it completes', async () => {
    expect(await redriveProgress(sqs, resources)).toBeUndefined();
    const deadLetters = new SqsDeadLetters(sqs, resources);
    const bodies = Array.from({ length: 25 }, (_, n) => item('site-a', n + 100));
    for (const body of bodies) await deadLetters.deadLetter(body, 'destination answered 503', 8);

    const steps: string[] = [];
    const final = await redrive(sqs, resources, {
      maxPerSecond: 10,
      pollMs: 100,
      onProgress: (progress) => steps.push(progress.status),
    });
    expect(final).toEqual({ status: 'COMPLETED', moved: 25, toMove: 25 });
    expect(steps.at(-1)).toBe('COMPLETED');
    expect(steps.length).toBeGreaterThan(1);
    expect(steps.slice(0, -1).every((status) => status === 'RUNNING')).toBe(true);

    expect((await receiveAll(sqs, resources.queueUrl)).sort()).toEqual([...bodies].sort());
    expect(await receiveAll(sqs, resources.deadLetterQueueUrl)).toEqual([]);
    expect(await redriveProgress(sqs, resources)).toMatchObject({ status: 'COMPLETED', moved: 25 });
  });

  it('starts a move task and returns at once without --wait', async () => {
    await new SqsDeadLetters(sqs, resources).deadLetter(item('site-b', 200), 'boom', 8);
    const started = await redrive(sqs, resources, { wait: false });
    expect(['RUNNING', 'COMPLETED']).toContain(started.status);
  });

  it('runs from the CLI: dlq list and redrive --aws', async () => {
    const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-ops-'));
    try {
      // Let the previous test's task finish first.
      for (let i = 0; i < 50 && (await redriveProgress(sqs, resources))?.status === 'RUNNING'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await receiveAll(sqs, resources.queueUrl);
      const file = join(work, 'forwarder.json');
      writeFileSync(file, JSON.stringify({ ...config, aws: undefined }));
      await new SqsDeadLetters(sqs, resources).deadLetter(item('site-a', 300), 'site-a: 401 Unauthorized', 1);
      const env = {
        PATH: process.env.PATH,
        HOME: work,
        ...emulatorEnv({ sqs: endpoint }),
        DLQ_URL: resources.deadLetterQueueUrl,
      };
      const listed = await cli(['dlq', 'list', '--aws', '--config', file], env);
      expect(listed.stderr).toBe('');
      expect(listed.code).toBe(0);
      expect(listed.stdout).toContain('1 dead letter(s):');
      expect(listed.stdout).toContain(`source site-a study ${study(300)}`);
      expect(listed.stdout).toContain('site-a: 401 Unauthorized (after 1 receive(s))');

      const missing = await cli(['redrive', '--aws', '--config', file], env);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(
        /--aws needs --queue-url \(QUEUE_URL\): copy the stack's CliOptions output/,
      );

      const moved = await cli(['redrive', '--aws', '--config', file, '--queue-url', resources.queueUrl], env);
      expect(moved.code).toBe(0);
      expect(moved.stdout.trim().split('\n').at(-1)).toBe('redrive completed: 1 of 1 message(s) moved');
      expect(await receiveAll(sqs, resources.queueUrl)).toEqual([item('site-a', 300)]);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
  it('runs from the CLI: dlq list --group-by error and a selective dlq redrive --aws', async () => {
    const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-ops-'));
    try {
      for (let i = 0; i < 50 && (await redriveProgress(sqs, resources))?.status === 'RUNNING'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const file = join(work, 'forwarder.json');
      writeFileSync(file, JSON.stringify({ ...config, aws: undefined }));
      const deadLetters = new SqsDeadLetters(sqs, resources);
      await deadLetters.deadLetter(
        item('site-a', 600),
        'STOW-RS at http://127.0.0.1:8043 answered 503: 3 of 6',
        8,
      );
      await deadLetters.deadLetter(
        item('site-b', 601),
        'STOW-RS at http://127.0.0.1:8043 answered 503: 1 of 2',
        8,
      );
      await deadLetters.deadLetter(item('site-b', 602), 'site-b: 401 Unauthorized', 1);
      const env = {
        PATH: process.env.PATH,
        HOME: work,
        ...emulatorEnv({ sqs: endpoint }),
        DLQ_URL: resources.deadLetterQueueUrl,
        QUEUE_URL: resources.queueUrl,
      };
      const grouped = await cli(
        ['dlq', 'list', '--aws', '--config', file, '--group-by', 'error', '--limit', '1'],
        env,
      );
      expect(grouped.stderr).toBe('');
      expect(grouped.code).toBe(0);
      const rows = grouped.stdout.trim().split('\n');
      expect(rows[0]).toMatch(/^3 dead letter\(s\) in 2 group\(s\) by error/);
      expect(rows[2]).toMatch(/^2\t\S+\tSTOW-RS at http:\/\/127\.0\.0\.1:8043 answered 503: N of N$/);
      expect(rows[3]).toBe('and 1 more group(s): raise --limit');

      const refused = await cli(
        ['dlq', 'redrive', '--aws', '--config', file, '--source', 'site-b', '--no-wait'],
        env,
      );
      expect(refused.code).toBe(2);
      const moved = await cli(['dlq', 'redrive', '--aws', '--config', file, '--source', 'site-b'], env);
      expect(moved.stderr).toBe('');
      expect(moved.code).toBe(0);
      expect(moved.stdout).toBe('redrove 2 message(s); 1 left in the dead-letter queue\n');
      expect((await receiveAll(sqs, resources.queueUrl)).sort()).toEqual(
        [item('site-b', 601), item('site-b', 602)].sort(),
      );
      expect(await receiveAll(sqs, resources.deadLetterQueueUrl)).toEqual([item('site-a', 600)]);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

describe('status --aws from the CLI', () => {
  let dynamo: DynamoDbLocal;
  let server: Server;
  let work: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-ops-'));
    dynamo = await startDynamoDbLocal();
    server = await createSqsServer({ port: 0, hostname: '127.0.0.1' });
  });

  afterAll(async () => {
    await Promise.allSettled([dynamo?.stop(), new Promise((resolve) => server?.close(resolve))]);
    rmSync(work, { recursive: true, force: true });
  });

  it('prints the cursors and the queues as JSON, and names what is missing', async () => {
    const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const sqs = new SQSClient({ endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
    const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'work' }))).QueueUrl ?? '';
    const dlqUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'dlq' }))).QueueUrl ?? '';
    await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: item('site-a', 1) }));
    sqs.destroy();
    await new DynamoFeedStore(dynamo.client, dynamo.tableName).advanceCursor('site-b', undefined, 77);
    const file = join(work, 'forwarder.json');
    writeFileSync(file, JSON.stringify({ ...config, aws: undefined }));
    const env = {
      PATH: process.env.PATH,
      HOME: work,
      ...emulatorEnv({ dynamodb: dynamo.endpoint, sqs: endpoint }),
    };
    const args = ['status', '--aws', '--config', file, '--queue-url', queueUrl, '--dlq-url', dlqUrl];
    const run = await cli([...args, '--table', dynamo.tableName, '--json'], env);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const report = JSON.parse(run.stdout);
    expect(report.sources.map((s: SourceStatus) => [s.id, s.feed.cursor ?? null])).toEqual([
      ['site-a', null],
      ['site-b', 77],
    ]);
    expect(report.queue).toEqual({ waiting: 1, inFlight: 0, deadLetters: 0 });

    const text = await cli(args, { ...env, STATE_TABLE: dynamo.tableName });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/\nsite-b +\? +0 \/ 0 \/ 0 B .* not asked/);

    const missing = await cli(['status', '--aws', '--config', file], env);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(
      '--aws needs --queue-url (QUEUE_URL), --dlq-url (DLQ_URL), --table (STATE_TABLE)',
    );
  });
});

describe('dead letters grouped by error', () => {
  it('reads alike the same failure of other studies, and keeps apart what differs', () => {
    const id = '0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d';
    expect(errorGroup(`3 of 12 instances of ${id} not verified at the destination yet`)).toBe(
      'N of N instances of <id> not verified at the destination yet',
    );
    expect(errorGroup('STOW-RS at https://pacs.example.org:8443 answered 503: busy after 2.5s')).toBe(
      'STOW-RS at https://pacs.example.org:8443 answered 503: busy after Ns',
    );
    expect(errorGroup('QIDO-RS at http://10.0.0.2:8042: ECONNREFUSED')).toBe(
      'QIDO-RS at http://10.0.0.2:8042: ECONNREFUSED',
    );
    expect(errorGroup('instance 1.2.826.0.1.3680043.2.1143.77 refused (0xA700), 4096 bytes')).toBe(
      'instance <uid> refused (0xA700), N bytes',
    );
    expect(errorGroup("work item names an unknown source 'site-2'")).toBe(
      "work item names an unknown source 'site-2'",
    );
    expect(errorGroup('request 9f1c2e4a-1b2c-4d5e-8f90-0a1b2c3d4e5f timed out')).toBe(
      'request <id> timed out',
    );
  });
});

describe('dlq list and redrive in local mode', () => {
  it('lists the state file’s dead letters the same way', async () => {
    const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-ops-'));
    try {
      const file = join(work, 'forwarder.json');
      writeFileSync(file, JSON.stringify({ ...config, aws: undefined }));
      const state = openState(join(work, 'forwarder.state.sqlite'));
      try {
        await state.queue.enqueue([{ sourceId: 'site-a', studyId: study(9), reason: 'quiet' }]);
        const [message] = await state.queue.receive(1, 60_000);
        await state.queue.deadLetter(message?.handle ?? '', 'credentials refused (401)');
      } finally {
        state.close();
      }
      const run = await cli(['dlq', 'list', '--config', file], { PATH: process.env.PATH, HOME: work });
      expect(run.stderr).toBe('');
      expect(run.code).toBe(0);
      expect(run.stdout).toContain('1 dead letter(s):');
      expect(run.stdout).toContain(`source site-a study ${study(9)} (reason quiet)`);
      expect(run.stdout).toContain('credentials refused (401) (after 1 receive(s))');
      const json = await cli(['dlq', 'list', '--config', file, '--json'], {
        PATH: process.env.PATH,
        HOME: work,
      });
      expect(JSON.parse(json.stdout)).toMatchObject([
        {
          item: { sourceId: 'site-a', studyId: study(9) },
          lastError: 'credentials refused (401)',
          receiveCount: 1,
        },
      ]);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('groups the dead letters by error with --group-by error, caps the rows with --limit, and redrives only those selected', async () => {
    const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-ops-'));
    try {
      const file = join(work, 'forwarder.json');
      writeFileSync(file, JSON.stringify({ ...config, aws: undefined }));
      const failures: [string, number, string][] = [
        ['site-a', 1, 'STOW-RS at http://127.0.0.1:8043 answered 503: 3 of 6 instances not stored'],
        ['site-a', 2, 'STOW-RS at http://127.0.0.1:8043 answered 503: 1 of 4 instances not stored'],
        ['site-b', 3, 'STOW-RS at http://127.0.0.1:8043 answered 503: 2 of 2 instances not stored'],
        ['site-b', 4, 'reading the change feed at http://127.0.0.1:8042: ECONNREFUSED'],
        ['site-a', 5, 'credentials refused (401)'],
      ];
      const state = openState(join(work, 'forwarder.state.sqlite'));
      try {
        await state.queue.enqueue(
          failures.map(([sourceId, n]) => ({ sourceId, studyId: study(n), reason: 'stable' })),
        );
        const received = await state.queue.receive(failures.length, 60_000);
        for (const [index, message] of received.entries()) {
          await state.queue.deadLetter(message.handle, failures[index]?.[2] ?? '');
        }
      } finally {
        state.close();
      }
      const env = { PATH: process.env.PATH, HOME: work };
      const run = async (args: string[], code = 0) => {
        const result = await cli([...args, '--config', file], env);
        expect(result.stderr).toBe('');
        expect(result.code).toBe(code);
        return result.stdout;
      };

      const grouped = await run(['dlq', 'list', '--group-by', 'error']);
      const rows = grouped.trim().split('\n');
      expect(rows[0]).toBe(
        '5 dead letter(s) in 3 group(s) by error (numbers as N, Orthanc IDs as <id>, DICOM UIDs as <uid>):',
      );
      expect(rows[1]).toBe('COUNT\tNEWEST\tERROR');
      expect(rows[2]).toMatch(
        /^3\t\d{4}-\d\d-\d\dT[\d:.]+Z\tSTOW-RS at http:\/\/127\.0\.0\.1:8043 answered 503: N of N instances not stored$/,
      );
      expect(rows.slice(3).map((row) => row.split('\t')[0])).toEqual(['1', '1']);
      const limited = await run(['dlq', 'list', '--group-by', 'error', '--limit', '1']);
      expect(limited.trim().split('\n').slice(2)).toEqual([rows[2], 'and 2 more group(s): raise --limit']);
      const json = JSON.parse(await run(['dlq', 'list', '--group-by', 'error', '--limit', '2', '--json']));
      expect(json).toMatchObject([
        { error: 'STOW-RS at http://127.0.0.1:8043 answered 503: N of N instances not stored', count: 3 },
        { count: 1 },
      ]);
      expect(json[0].newestAt).toEqual(expect.any(Number));
      const firstTwo = await run(['dlq', 'list', '--limit', '2']);
      expect(firstTwo).toContain('the first 2 dead letter(s):');
      expect(firstTwo).toContain('and more: raise --limit, or group them with --group-by error');
      expect(JSON.parse(await run(['dlq', 'list', '--limit', '2', '--json']))).toHaveLength(2);

      // A source's, then an error's as the groups show it, then both; the others stay.
      expect(await run(['dlq', 'redrive', '--source', 'site-b'])).toBe(
        'redrove 2 message(s); 3 left in the dead-letter queue\n',
      );
      expect(await run(['dlq', 'redrive', '--error', 'answered 503: N of N instances'])).toBe(
        'redrove 2 message(s); 1 left in the dead-letter queue\n',
      );
      expect(await run(['redrive', '--error', 'no such error'], 1)).toBe(
        'redrove 0 message(s); 1 left in the dead-letter queue\n',
      );
      const refused = await cli(
        ['dlq', 'redrive', '--config', file, '--source', 'site-a', '--rate', '5'],
        env,
      );
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('--no-wait and --rate are for a redrive of every dead letter');
      const after = openState(join(work, 'forwarder.state.sqlite'));
      try {
        expect(await after.queue.stats()).toEqual({ waiting: 4, inFlight: 0, deadLetters: 1 });
        expect((await collect(after.queue.deadLetters())).map((d) => d.lastError)).toEqual([
          'credentials refused (401)',
        ]);
      } finally {
        after.close();
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

describe('selective redrive on fauxqs', () => {
  let sqs: SqsEmulator;
  let resources: Pick<AwsResources, 'queueUrl' | 'deadLetterQueueUrl'>;

  beforeAll(async () => {
    sqs = await startSqsEmulator({ maxReceiveCount: MAX_RECEIVES, visibilityTimeoutSeconds: 30 });
    resources = { queueUrl: sqs.queueUrl, deadLetterQueueUrl: sqs.deadLetterQueueUrl };
  });

  afterAll(async () => {
    await sqs?.stop();
  });

  beforeEach(async () => {
    for (const QueueUrl of [sqs.queueUrl, sqs.deadLetterQueueUrl]) {
      await sqs.client.send(new PurgeQueueCommand({ QueueUrl }));
    }
  });

  const visible = async (queueUrl: string) =>
    Number(
      (
        await sqs.client.send(
          new GetQueueAttributesCommand({
            QueueUrl: queueUrl,
            AttributeNames: ['ApproximateNumberOfMessages'],
          }),
        )
      ).Attributes?.ApproximateNumberOfMessages,
    );

  it('puts back only the dead letters of a source or an error, and leaves the others visible in the DLQ', async () => {
    const deadLetters = new SqsDeadLetters(sqs.client, resources);
    // More than one receive's worth: a batch of 10 at most.
    const bodies = Array.from({ length: 23 }, (_, n) => item(n % 3 === 0 ? 'site-b' : 'site-a', 400 + n));
    for (const [n, body] of bodies.entries()) {
      await deadLetters.deadLetter(
        body,
        n % 2 === 0 ? `QIDO-RS at http://10.0.0.2:8042: ECONNREFUSED` : `${n} instances not verified`,
        8,
      );
    }
    await deadLetters.deadLetter(MALFORMED_BODY, 'malformed work item: not JSON', 1);
    const siteB = bodies.filter((_, n) => n % 3 === 0);

    expect(await redriveMatching(sqs.client, resources, { sourceId: 'site-b' })).toEqual({
      redriven: siteB.length,
      left: bodies.length + 1 - siteB.length,
    });
    expect((await receiveAll(sqs.client, sqs.queueUrl)).sort()).toEqual([...siteB].sort());
    expect(await visible(sqs.deadLetterQueueUrl)).toBe(bodies.length + 1 - siteB.length);

    // As grouped: the number differs from one dead letter to the next.
    const unverified = bodies.filter((_, n) => n % 3 !== 0 && n % 2 === 1);
    expect(await redriveMatching(sqs.client, resources, { error: 'N instances NOT verified' })).toEqual({
      redriven: unverified.length,
      left: bodies.length + 1 - siteB.length - unverified.length,
    });
    expect((await receiveAll(sqs.client, sqs.queueUrl)).sort()).toEqual([...unverified].sort());
    expect(await redriveMatching(sqs.client, resources, { error: 'nothing like it' })).toMatchObject({
      redriven: 0,
    });
    expect(await visible(sqs.deadLetterQueueUrl)).toBe(bodies.length + 1 - siteB.length - unverified.length);
  });

  it('loses nothing when it stops between sending a dead letter and deleting it: it is then in both queues', async () => {
    await new SqsDeadLetters(sqs.client, resources).deadLetter(item('site-a', 500), 'boom', 8);
    await new SqsDeadLetters(sqs.client, resources).deadLetter(item('site-b', 501), 'other', 8);
    // What a real queue cannot be made to do on purpose: fail the delete after the send.
    const failing = {
      send: (command: unknown) =>
        command instanceof DeleteMessageBatchCommand
          ? Promise.reject(new Error('connection reset'))
          : sqs.client.send(command as ReceiveMessageCommand),
    } as unknown as SQSClient;
    await expect(redriveMatching(failing, resources, { error: 'boom' }, { holdSeconds: 1 })).rejects.toThrow(
      'connection reset',
    );
    expect(await receiveAll(sqs.client, sqs.queueUrl)).toEqual([item('site-a', 500)]);
    // The other one made visible at once; the sent one back once its hold is over.
    const inDeadLetterQueue = new Set<string>();
    await until(async () => {
      for (const body of await receiveAll(sqs.client, sqs.deadLetterQueueUrl)) inDeadLetterQueue.add(body);
      return inDeadLetterQueue.size === 2;
    });
    expect([...inDeadLetterQueue].sort()).toEqual([item('site-a', 500), item('site-b', 501)].sort());
  });
});
