/**
 * The AWS pipeline end to end, without an AWS account: the real poller and forwarder handlers
 * against DynamoDB Local, an SQS emulator and real Orthancs. Only Secrets Manager is stood in
 * for (no emulator of it here): the handlers get a reader that returns the test's credentials.
 */
import { createHash } from 'node:crypto';
import {
  ChangeMessageVisibilityCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
} from '@aws-sdk/client-sqs';
import type { Context, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AwsRuntime, createRuntime } from '../lambdas/aws/runtime.ts';
import { buildEngine } from '../lambdas/core/engine.ts';
import { forwardWorkItem } from '../lambdas/core/forward-work-item.ts';
import { encodeWorkItem } from '../lambdas/core/work-item.ts';
import { createForwarderHandler } from '../lambdas/handlers/forwarder.ts';
import { createPollerHandler } from '../lambdas/handlers/poller.ts';
import { type GeneratedInstance, type GeneratedSet, generateStudies } from '../testbed/dicom-generator.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { deliverOnce, lambdaContext } from '../testbed/event-source-mapping.ts';
import { OrthancFleet, type OrthancServer } from '../testbed/orthanc.ts';
import { type SqsEmulator, startSqsEmulator } from '../testbed/sqs-emulator.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';
import { deliverNext, drainQueue, handlerEnv, queueDepth as sqsQueueDepth } from './support/aws-emulators.ts';
import { shape } from './support/fixtures.ts';

const MAX_RECEIVES = 3;

const md5 = async (stream: NodeJS.ReadableStream): Promise<string> => {
  const hash = createHash('md5');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
};

const instanceCount = async (server: OrthancServer) =>
  (await server.rest<{ CountInstances: number }>('GET', '/statistics')).CountInstances;

const destinationMd5 = async (
  destination: OrthancServer,
  sopInstanceUid: string,
): Promise<string | undefined> => {
  const [match] = await destination.rest<{ ID: string }[]>('POST', '/tools/lookup', sopInstanceUid);
  if (match === undefined) return undefined;
  const response = await fetch(`${destination.url}/instances/${match.ID}/attachments/dicom/md5`, {
    headers: { authorization: destination.authorization },
  });
  return (await response.text()).trim();
};

describe('AWS pipeline on emulators and real Orthancs', () => {
  const fleet = new OrthancFleet();
  let dynamo: DynamoDbLocal;
  let sqs: SqsEmulator;
  let destination: OrthancServer;
  let sources: OrthancServer[];
  let runtime: AwsRuntime;
  let poller: ReturnType<typeof createPollerHandler>;
  let forwarder: (event: SQSEvent, context: Context) => Promise<SQSBatchResponse>;
  const sets: GeneratedSet[] = [];
  /** The destination's password as its secret holds it: a test makes it wrong, as a bad rotation would. */
  let destinationPassword = 'orthanc';

  const queueDepth = (queueUrl: string) => sqsQueueDepth(sqs.client, queueUrl);

  /** The mapping's loop: deliver until the work queue is empty (bounded, never timed). */
  const drain = () => drainQueue({ sqs: sqs.client, queueUrl: sqs.queueUrl, handler: forwarder });

  const poll = () => poller({ time: new Date().toISOString() }, lambdaContext('poller', 60_000));

  beforeAll(async () => {
    [dynamo, sqs, destination, ...sources] = await Promise.all([
      startDynamoDbLocal(),
      startSqsEmulator({ maxReceiveCount: MAX_RECEIVES, visibilityTimeoutSeconds: 30 }),
      fleet.start({ name: 'destination', stableAge: 1 }),
      fleet.start({ name: 'site-a', stableAge: 1 }),
      fleet.start({ name: 'site-b', stableAge: 1 }),
    ]);
    const credentials = { username: 'orthanc', password: 'orthanc' };
    const env = handlerEnv({ dynamodb: dynamo.endpoint, sqs: sqs.endpoint });
    Object.assign(process.env, env);
    runtime = await createRuntime(
      {
        ...env,
        FORWARDER_CONFIG: JSON.stringify({
          sources: sources.map((server, index) => ({
            id: `site-${index}`,
            url: server.url,
            secretId: `source-${index}`,
          })),
          destination: { url: destination.dicomWebUrl, secretId: 'destination' },
          quietSeconds: 2,
          retry: { maxAttempts: MAX_RECEIVES, baseDelayMs: 100, maxDelayMs: 200 },
        }),
        STATE_TABLE: dynamo.tableName,
        QUEUE_URL: sqs.queueUrl,
        DLQ_URL: sqs.deadLetterQueueUrl,
      },
      async (secretId) =>
        secretId === 'destination' ? { ...credentials, password: destinationPassword } : credentials,
    );
    poller = createPollerHandler(async () => runtime);
    forwarder = createForwarderHandler(async () => runtime);
    for (const [index, server] of sources.entries()) {
      const set = generateStudies({
        patients: 2,
        studiesPerPatient: 1,
        seriesPerStudy: 2,
        instancesPerSeries: 3,
        pixelBytes: 8 * 1024,
        seed: `aws-${index}`,
      });
      sets.push(set);
      const results = await uploadToOrthanc(server, set.instances);
      expect(results.every((result) => result.status === 200)).toBe(true);
    }
  });

  afterAll(async () => {
    await Promise.allSettled([fleet.destroyAll(), dynamo?.stop(), sqs?.stop()]);
  });

  it('polls, queues and moves every study: sources empty, destination byte-identical', async () => {
    // Poll as EventBridge would until every study became stable and was queued.
    let queued = 0;
    for (let round = 0; round < 60 && queued < 4; round++) {
      const result = await poll();
      expect(result.sources.every((source) => source.ok)).toBe(true);
      queued += result.sources.reduce((sum, source) => sum + (source.report?.queued ?? 0), 0);
      if (queued < 4) await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(queued).toBe(4);
    expect(await runtime.feed.getCursor('site-0')).toBeGreaterThan(0);

    const deliveries = await drain();
    expect(deliveries.reduce((sum, d) => sum + d.failed, 0)).toBe(0);
    expect(await instanceCount(sources[0] as OrthancServer)).toBe(0);
    expect(await instanceCount(sources[1] as OrthancServer)).toBe(0);
    const all = sets.flatMap((set) => set.instances);
    expect(await instanceCount(destination)).toBe(all.length);
    for (const instance of all) {
      expect(await destinationMd5(destination, instance.sopInstanceUid)).toBe(await md5(instance.stream()));
    }
    const totals = await runtime.ledger.totals();
    expect(totals).toMatchObject({
      moved: { studies: 4, instances: all.length, bytes: all.reduce((sum, i) => sum + i.byteLength, 0) },
      copied: { studies: 0 },
      deleted: all.length,
      rejected: 0,
    });
  });

  it('does no duplicate work for a message delivered twice, or redelivered after a timeout', async () => {
    const before = await runtime.ledger.totals();
    const studyId = '0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d';
    const body = encodeWorkItem({ sourceId: 'site-0', studyId, reason: 'stable' });
    await sqs.client.send(new SendMessageCommand({ QueueUrl: sqs.queueUrl, MessageBody: body }));
    await sqs.client.send(new SendMessageCommand({ QueueUrl: sqs.queueUrl, MessageBody: body }));
    // A consumer that takes a message and times out: it comes back when its visibility ends.
    const taken = await sqs.client.send(
      new ReceiveMessageCommand({ QueueUrl: sqs.queueUrl, MaxNumberOfMessages: 1 }),
    );
    const receipt = taken.Messages?.[0]?.ReceiptHandle ?? '';
    await sqs.client.send(
      new ChangeMessageVisibilityCommand({
        QueueUrl: sqs.queueUrl,
        ReceiptHandle: receipt,
        VisibilityTimeout: 0,
      }),
    );
    const deliveries = await drain();
    expect(deliveries.reduce((sum, d) => sum + d.received, 0)).toBe(2);
    expect(deliveries.reduce((sum, d) => sum + d.failed, 0)).toBe(0);
    const after = await runtime.ledger.totals();
    expect(after).toEqual(before);
    expect(await instanceCount(destination)).toBe(sets.flatMap((set) => set.instances).length);
  });

  it('dead-letters a malformed message at once, and a failing one after maxReceiveCount receives', async () => {
    await sqs.client.send(new SendMessageCommand({ QueueUrl: sqs.queueUrl, MessageBody: 'not json' }));
    const first = await deliverOnce({ sqs: sqs.client, queueUrl: sqs.queueUrl, handler: forwarder });
    expect(first).toEqual({ received: 1, failed: 0 });
    expect(await queueDepth(sqs.queueUrl)).toBe(0);
    expect(await queueDepth(sqs.deadLetterQueueUrl)).toBe(1);

    // A valid item whose source is down fails transiently on every receive.
    const down = sources[1] as OrthancServer;
    await down.stop();
    const body = encodeWorkItem({
      sourceId: 'site-1',
      studyId: '0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3e',
      reason: 'stable',
    });
    await sqs.client.send(new SendMessageCommand({ QueueUrl: sqs.queueUrl, MessageBody: body }));
    const deliveries = await drain();
    await down.start();
    expect(deliveries.filter((d) => d.received > 0)).toHaveLength(MAX_RECEIVES);
    expect(deliveries.reduce((sum, d) => sum + d.failed, 0)).toBe(MAX_RECEIVES - 1);
    expect(await queueDepth(sqs.queueUrl)).toBe(0);
    expect(await queueDepth(sqs.deadLetterQueueUrl)).toBe(2);
  });

  it('watches a study whose instances arrived during a Lambda move, and the next polls move them', async () => {
    const source = sources[0] as OrthancServer;
    const set = generateStudies({
      patients: 1,
      studiesPerPatient: 1,
      seriesPerStudy: 2,
      instancesPerSeries: 3,
      pixelBytes: 8 * 1024,
      seed: 'aws-late-arrival',
    });
    const late = set.instances.at(-1) as GeneratedInstance;
    const early = set.instances.slice(0, -1);
    expect((await uploadToOrthanc(source, early)).every((result) => result.status === 200)).toBe(true);
    const [study] = await source.rest<{ ID: string; Type: string }[]>(
      'POST',
      '/tools/lookup',
      late.studyInstanceUid,
    );
    const studyId = study?.ID as string;

    // The forwarder's engine as the Lambda builds it (DynamoDB ledger and feed store), with a
    // hook that uploads the last instance once the others are sent.
    let uploaded = false;
    const engine = {
      ...buildEngine(runtime.config, {
        ledger: runtime.ledger,
        feed: runtime.feed,
        log: runtime.log,
        owner: 'test-worker',
        secrets: runtime.secrets,
      }),
      onStep: async (step: string) => {
        if (step !== 'sent' || uploaded) return;
        uploaded = true;
        await uploadToOrthanc(source, [late]);
      },
    };
    const outcome = await forwardWorkItem(
      engine,
      encodeWorkItem({ sourceId: 'site-0', studyId, reason: 'stable' }),
    );
    expect(outcome).toMatchObject({ result: 'moved', deleted: early.length });
    expect(await instanceCount(source)).toBe(1);
    expect((await runtime.feed.watched('site-0')).map((watched) => watched.studyId)).toContain(studyId);

    // The poller queues it from the watch list once it is stable; the forwarder moves the rest.
    for (let round = 0; round < 60 && (await instanceCount(source)) > 0; round++) {
      await poll();
      await drain();
      if ((await instanceCount(source)) > 0) await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(await instanceCount(source)).toBe(0);
    expect(await destinationMd5(destination, late.sopInstanceUid)).toBe(await md5(late.stream()));
  });

  it('forgets, once a day, old refusals of instances gone from their source, and keeps the others', async () => {
    // An instance still at the source (uploaded last in this file, so that no other test moves it).
    const source = sources[0] as OrthancServer;
    const [still] = generateStudies({
      patients: 1,
      studiesPerPatient: 1,
      seriesPerStudy: 1,
      instancesPerSeries: 1,
      pixelBytes: 1024,
      seed: 'aws-refused-still-held',
    }).instances;
    const [uploaded] = await uploadToOrthanc(source, [still as GeneratedInstance]);
    const held = uploaded?.orthancId;
    const old = Date.now() - 100 * 24 * 60 * 60 * 1000;
    const refusal = (instanceId: string, rejectedAt: number) => ({
      sourceId: 'site-0',
      studyId: 'a-study',
      instanceId,
      sopInstanceUid: `2.25.${rejectedAt}`,
      reason: 'refused by the destination (failure reason 0xc000)',
      rejectedAt,
    });
    const gone = refusal('00000000-00000000-00000000-00000000-00000000', old);
    const refusals = [
      gone,
      refusal(held ?? 'none', old),
      refusal('11111111-11111111-11111111-11111111-11111111', Date.now()),
    ];
    await runtime.ledger.recordRejected(refusals);
    // Not the run that holds a midnight: nothing is looked at.
    await poller({ time: '2026-12-05T12:00:30Z' }, lambdaContext('poller', 60_000));
    expect(await runtime.ledger.rejected('site-0', 'a-study')).toHaveLength(3);
    // The one that does: the old refusal whose instance is gone goes; one still held, or recent, stays.
    await poller({ time: '2026-12-06T00:00:30Z' }, lambdaContext('poller', 60_000));
    const left = (await runtime.ledger.rejected('site-0', 'a-study')).map((r) => r.instanceId).sort();
    expect(left).toEqual(
      refusals
        .filter((r) => r !== gone)
        .map((r) => r.instanceId)
        .sort(),
    );
    await runtime.ledger.forgetRejected(await runtime.ledger.rejected('site-0', 'a-study'));
    await source.rest('DELETE', `/instances/${held}`);
  });
  /** Uploads one generated study to the source; returns its instances. */
  const uploadStudy = async (server: OrthancServer, seed: string): Promise<readonly GeneratedInstance[]> => {
    const { instances } = generateStudies(shape(seed, { patients: 1, seriesPerStudy: 1 }));
    expect((await uploadToOrthanc(server, instances)).every((result) => result.status === 200)).toBe(true);
    return instances;
  };

  /** Polls as EventBridge would until the source's studies were queued (bounded, never timed). */
  const pollUntilQueued = async (sourceId: string, count: number): Promise<void> => {
    let queued = 0;
    for (let round = 0; round < 60 && queued < count; round++) {
      const result = await poll();
      queued += result.sources.find((source) => source.sourceId === sourceId)?.report?.queued ?? 0;
      if (queued < count) await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(queued).toBe(count);
  };

  /** Delivers the one queued work item `times` times: each time it is handed back, uncounted. */
  const expectHandedBack = async (times: number): Promise<void> => {
    const deadLetters = await queueDepth(sqs.deadLetterQueueUrl);
    for (let delivery = 0; delivery < times; delivery++) {
      const mapping = { sqs: sqs.client, queueUrl: sqs.queueUrl, handler: forwarder };
      expect(await deliverNext(mapping)).toEqual({ received: 1, failed: 0 });
      expect(await queueDepth(sqs.queueUrl)).toBe(1);
    }
    expect(await queueDepth(sqs.deadLetterQueueUrl)).toBe(deadLetters);
  };

  it('a paused source: the poller leaves it alone and the forwarder hands its items back uncounted; resumed, everything moves', async () => {
    const source = sources[0] as OrthancServer;
    const queued = await uploadStudy(source, 'aws-paused');
    await pollUntilQueued('site-0', 1);
    expect(await runtime.feed.pause('site-0', Date.now())).toBe(true);
    const cursor = await runtime.feed.getCursor('site-0');
    const late = await uploadStudy(source, 'aws-paused-late');

    // More deliveries than maxReceiveCount allows: none dead-letters it, none moves it.
    await expectHandedBack(MAX_RECEIVES + 1);
    const paused = (await poll()).sources.find((result) => result.sourceId === 'site-0');
    expect(paused?.report).toMatchObject({ paused: true, queued: 0, changesRead: 0 });
    expect(await runtime.feed.getCursor('site-0')).toBe(cursor);
    expect(await instanceCount(source)).toBe(queued.length + late.length);

    // Resumed: the queued study moves, and the feed, read on from the cursor, brings the late one.
    expect(await runtime.feed.resume('site-0')).toBe(true);
    await drain();
    await pollUntilQueued('site-0', 1);
    await drain();
    expect(await instanceCount(source)).toBe(0);
    for (const instance of [...queued, ...late]) {
      expect(await destinationMd5(destination, instance.sopInstanceUid)).toBe(await md5(instance.stream()));
    }
  });

  it('a destination refusing the credentials: its studies wait, nothing is dead-lettered; once its secret is right, they move', async () => {
    const source = sources[1] as OrthancServer;
    const instances = await uploadStudy(source, 'aws-destination-refuses');
    await pollUntilQueued('site-1', 1);
    destinationPassword = 'not-the-password';
    try {
      await expectHandedBack(MAX_RECEIVES + 1);
      expect(await instanceCount(source)).toBe(instances.length);
    } finally {
      destinationPassword = 'orthanc';
    }
    // The secret read afresh at the next request: the study moves, with no redrive.
    await drain();
    expect(await instanceCount(source)).toBe(0);
    for (const instance of instances) {
      expect(await destinationMd5(destination, instance.sopInstanceUid)).toBe(await md5(instance.stream()));
    }
  });
});
