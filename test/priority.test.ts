/**
 * New studies before the backlog, with real Orthancs: the first read of a source's change feed
 * (its history) queues the backlog, what the feed reads afterwards is new and overtakes it. In
 * local mode the SQLite queue serves by priority; on AWS (DynamoDB Local, the SQS emulator, the
 * real handlers) the backlog has a queue of its own, drained by its own event source mapping,
 * and a study that must wait goes back to its own queue, or to the sweep when the wait is longer
 * than SQS can delay a message.
 */
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import type { Context, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { describe, expect, it } from 'vitest';
import { type AwsRuntime, createRuntime } from '../lambdas/aws/runtime.ts';
import { parseConfig } from '../lambdas/core/config.ts';
import { buildEngine } from '../lambdas/core/engine.ts';
import { forwardWorkItem } from '../lambdas/core/forward-work-item.ts';
import { createForwarderHandler } from '../lambdas/handlers/forwarder.ts';
import { createPollerHandler } from '../lambdas/handlers/poller.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { deliverOnce, lambdaContext } from '../testbed/event-source-mapping.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { startSqsEmulator } from '../testbed/sqs-emulator.ts';
import { handlerEnv, queueDepth } from './support/aws-emulators.ts';
import {
  captureLog,
  configFor,
  expectAllAtDestination,
  findInstance,
  pollOnce,
  startServers,
  untilStudiesStable,
  upload,
  useTestbed,
} from './support/harness.ts';

const BACKLOG = 200;
const tiny = (seed: string, patients: number) =>
  generateStudies({
    patients,
    studiesPerPatient: 1,
    seriesPerStudy: 1,
    instancesPerSeries: 1,
    pixelBytes: 512,
    seed,
  });

const { fleet, withState } = useTestbed('priority');

/** A source holding a backlog of studies, all stable, and a destination. */
const archive = async () => {
  const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
  await upload(source, tiny('backlog', BACKLOG).instances);
  await untilStudiesStable(source);
  return { destination, source };
};

/** A study arriving after the first read, stable; its Orthanc ID at the source. */
const arrive = async (source: OrthancServer) => {
  const set = tiny('new', 1);
  await upload(source, set.instances);
  await untilStudiesStable(source);
  const [instance] = set.instances;
  const id = await findInstance(source, instance?.sopInstanceUid ?? '');
  const study = await source.rest<{ ID: string }>('GET', `/instances/${id}/study`);
  return { set, studyId: study.ID };
};

describe('new studies first', () => {
  it('local: the first read of the feed is the backlog, and a study read afterwards overtakes all 200 of it', async () => {
    const { destination, source } = await archive();
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    await withState(config, async (state) => {
      const { log } = captureLog();
      expect(await pollOnce(config, state, log, { sweep: false })).toMatchObject({ queued: BACKLOG });
      const { set, studyId } = await arrive(source);
      expect(await pollOnce(config, state, log, { sweep: false })).toMatchObject({ queued: 1 });
      expect(await state.queue.stats()).toMatchObject({ waiting: BACKLOG + 1 });

      const [first] = await state.queue.receive(1, 60_000);
      expect(JSON.parse(first?.body ?? '{}')).toEqual({ sourceId: 'site-a', studyId, reason: 'stable' });
      const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
      expect((await forwardWorkItem(engine, first?.body ?? '')).result).toBe('moved');
      await state.queue.ack(first?.handle ?? '');
      await expectAllAtDestination(destination, set.instances);
      // The backlog waits, each of it marked so.
      const rest = await state.queue.receive(BACKLOG + 1, 60_000);
      expect(rest).toHaveLength(BACKLOG);
      expect(new Set(rest.map((message) => JSON.parse(message.body).priority))).toEqual(new Set(['backlog']));
    });
  });

  it('AWS: the backlog has its own queue; the work queue’s mapping moves a new study while 200 wait, and a wait goes back where it came from', async () => {
    const { destination, source } = await archive();
    const [dynamo, sqs] = await Promise.all([
      startDynamoDbLocal(),
      startSqsEmulator({ maxReceiveCount: 3, visibilityTimeoutSeconds: 30 }),
    ]);
    const savedEnv = { ...process.env };
    try {
      const env = handlerEnv({ dynamodb: dynamo.endpoint, sqs: sqs.endpoint });
      Object.assign(process.env, env);
      const runtimeWith = (extra: Record<string, unknown>): Promise<AwsRuntime> =>
        createRuntime({
          ...env,
          FORWARDER_CONFIG: JSON.stringify(configFor([{ id: 'site-a', server: source }], destination, extra)),
          STATE_TABLE: dynamo.tableName,
          QUEUE_URL: sqs.queueUrl,
          BACKLOG_QUEUE_URL: sqs.backlogQueueUrl,
          DLQ_URL: sqs.deadLetterQueueUrl,
        });
      const runtime = await runtimeWith({});
      const poll = createPollerHandler(async () => runtime);
      const forwarder = createForwarderHandler(async () => runtime);
      /** Messages on each queue, delayed ones included. */
      const depthOf = async (queueUrl: string) => {
        const delayed = await sqs.client.send(
          new GetQueueAttributesCommand({
            QueueUrl: queueUrl,
            AttributeNames: ['ApproximateNumberOfMessagesDelayed'],
          }),
        );
        return (
          (await queueDepth(sqs.client, queueUrl)) +
          Number(delayed.Attributes?.ApproximateNumberOfMessagesDelayed ?? 0)
        );
      };
      const depths = async () => ({
        work: await depthOf(sqs.queueUrl),
        backlog: await depthOf(sqs.backlogQueueUrl),
        dead: await depthOf(sqs.deadLetterQueueUrl),
      });
      const pollNow = () => poll({ time: new Date().toISOString() }, lambdaContext('poller', 60_000));

      expect((await pollNow()).sources[0]?.report).toMatchObject({ queued: BACKLOG });
      expect(await depths()).toEqual({ work: 0, backlog: BACKLOG, dead: 0 });
      const { set } = await arrive(source);
      expect((await pollNow()).sources[0]?.report).toMatchObject({ queued: 1 });
      expect(await depths()).toEqual({ work: 1, backlog: BACKLOG, dead: 0 });

      // The work queue's mapping, whatever the backlog's does meanwhile.
      const work = (handler: (event: SQSEvent, context: Context) => Promise<SQSBatchResponse>) => ({
        sqs: sqs.client,
        queueUrl: sqs.queueUrl,
        handler,
      });
      expect(await deliverOnce(work(forwarder))).toEqual({ received: 1, failed: 0 });
      await expectAllAtDestination(destination, set.instances);
      expect((await runtime.ledger.totals()).sources['site-a']?.moved.studies).toBe(1);
      expect(await depths()).toEqual({ work: 0, backlog: BACKLOG, dead: 0 });

      // Outside a window that opens in 10 minutes, a backlog study waits on the backlog queue.
      const inMinutes = (minutes: number) =>
        new Date(Date.now() + minutes * 60_000).toISOString().slice(11, 16);
      const days = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
      const soon = await runtimeWith({
        schedule: { timeZone: 'UTC', windows: [{ days, from: inMinutes(10), to: inMinutes(60) }] },
      });
      const backlog = (handler: (event: SQSEvent, context: Context) => Promise<SQSBatchResponse>) => ({
        ...work(handler),
        queueUrl: sqs.backlogQueueUrl,
      });
      expect(await deliverOnce(backlog(createForwarderHandler(async () => soon)))).toEqual({
        received: 1,
        failed: 0,
      });
      expect(await depths()).toEqual({ work: 0, backlog: BACKLOG, dead: 0 });

      // One that opens in five hours: longer than SQS can delay it, it goes back to the sweep,
      // which queues it again once the window is open (the feed forgets it was queued).
      const later = await runtimeWith({
        schedule: { timeZone: 'UTC', windows: [{ days, from: inMinutes(300), to: inMinutes(360) }] },
      });
      const backlogIds = await source.rest<string[]>('GET', '/studies');
      expect(await runtime.feed.queued('site-a', backlogIds)).toHaveLength(BACKLOG);
      expect(await deliverOnce(backlog(createForwarderHandler(async () => later)))).toEqual({
        received: 1,
        failed: 0,
      });
      expect(await depths()).toEqual({ work: 0, backlog: BACKLOG - 1, dead: 0 });
      expect(await runtime.feed.queued('site-a', backlogIds)).toHaveLength(BACKLOG - 1);
    } finally {
      process.env = savedEnv;
      await Promise.allSettled([dynamo.stop(), sqs.stop()]);
    }
  });
});
