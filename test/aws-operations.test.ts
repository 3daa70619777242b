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
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import { createSqsServer } from 'local-aws-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAwsStatus } from '../bin/format.ts';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import {
  type AwsResources,
  gatherAwsStatus,
  listDeadLetters,
  queueStats,
  reachSources,
  redrive,
  redriveProgress,
} from '../lambdas/aws/operations.ts';
import { SqsDeadLetters } from '../lambdas/aws/sqs-dead-letters.ts';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { formatDeadLetters } from '../lambdas/core/dead-letters.ts';
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

  it('counts the waiting, in-flight and dead-lettered work items', async () => {
    expect(await queueStats(sqs.client, resources)).toEqual({ waiting: 2, inFlight: 1, deadLetters: 3 });
  });

  it('reports each source’s cursor and studies waiting, and says the lag is unknown when the sources were not asked', async () => {
    const report = await gatherAwsStatus(config, { sqs: sqs.client, dynamodb: dynamo.client }, resources);
    expect(report.sources).toEqual([
      {
        id: 'site-a',
        cursor: 120,
        last: undefined,
        lag: undefined,
        waitingToBecomeStable: 2,
        unknown: expect.stringMatching(/^not asked: --reach-sources/),
      },
      {
        id: 'site-b',
        cursor: undefined,
        last: undefined,
        lag: undefined,
        waitingToBecomeStable: 0,
        unknown: expect.stringMatching(/^not asked/),
      },
    ]);
    expect(report.queue).toEqual({ waiting: 2, inFlight: 1, deadLetters: 3 });
    expect(report.rejected.map((r) => r.studyId)).toEqual([study(7)]);
    expect(report.totals.rejected).toBe(1);
    const text = formatAwsStatus(report);
    expect(text).toMatch(/^SOURCE\tCURSOR\tLAST\tLAG\tWAITING\tSTATE\nsite-a\t120\t-\t-\t2\tnot asked/);
    expect(text).toContain('queue: 2 waiting, 1 in flight');
    expect(text).toContain('3 dead letters');
    expect(text).toContain('see them with `dlq list`');
    expect(text).toContain(`site-a study ${study(7)} instance 11111111-22222222-33333333-44444444-55555555`);
    expect(text).not.toContain('1.2.3.4.5');
  });

  it('shows the lag of a source it reaches, and why not for one it cannot', async () => {
    const report = await gatherAwsStatus(config, { sqs: sqs.client, dynamodb: dynamo.client }, resources, {
      lastChange: async (source) => {
        if (source.id === 'site-b') throw new Error('connect ETIMEDOUT 10.0.0.2:8042');
        return 150;
      },
    });
    expect(report.sources.map(({ id, last, lag, unknown }) => ({ id, last, lag, unknown }))).toEqual([
      { id: 'site-a', last: 150, lag: 30, unknown: undefined },
      {
        id: 'site-b',
        last: undefined,
        lag: undefined,
        unknown: 'unreachable: connect ETIMEDOUT 10.0.0.2:8042',
      },
    ]);
    expect(formatAwsStatus(report)).toMatch(/\nsite-a\t120\t150\t30\t2\treachable\n/);
  });

  it('reaches a source with the credentials of its secret', async () => {
    let authorization: string | undefined;
    const orthanc: Server = createServer((request, response) => {
      authorization = request.headers.authorization;
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify({ Changes: [], Done: true, Last: 4242 }));
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
        lastChange: reachSources(reached, secrets),
      });
      expect(report.sources[0]).toMatchObject({ id: 'site-a', cursor: 120, last: 4242, lag: 4122 });
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
    expect(report.sources.map((s: { id: string; cursor?: number }) => [s.id, s.cursor ?? null])).toEqual([
      ['site-a', null],
      ['site-b', 77],
    ]);
    expect(report.queue).toEqual({ waiting: 1, inFlight: 0, deadLetters: 0 });

    const text = await cli(args, { ...env, STATE_TABLE: dynamo.tableName });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/\nsite-b\t77\t-\t-\t0\tnot asked/);

    const missing = await cli(['status', '--aws', '--config', file], env);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(
      '--aws needs --queue-url (QUEUE_URL), --dlq-url (DLQ_URL), --table (STATE_TABLE)',
    );
  });
});

describe('dlq list in local mode', () => {
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
});
