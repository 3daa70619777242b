/**
 * The Lambda bundles as deployed, run: the real CDK app synthesized for servers on loopback, each
 * function's asset (what CDK's esbuild bundling built and `cdk deploy` would upload) copied where
 * nothing resolves from the repository, and its handler invoked in a Lambda-like child process of
 * Node 24, with the environment the template gives the function, against DynamoDB Local, the SQS
 * emulator, real Orthancs and a Secrets Manager stand-in. No handler runs in this process:
 * what the bundles did is read from the servers, the queues and the table.
 *
 * The Orthancs' passwords are in their secrets only (the configuration names each server's
 * `secretId`). Each environment is kept warm across invocations, as Lambda keeps one: the
 * rotations and the failed cold start are about what a warm environment does next.
 */

import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QueryCommand } from '@aws-sdk/client-dynamodb';
import { ChangeMessageVisibilityCommand } from '@aws-sdk/client-sqs';
import type { SQSBatchResponse, SQSEvent, SQSRecord } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listDeadLetters } from '../lambdas/aws/operations.ts';
import type { SourcePollResult } from '../lambdas/handlers/poller.ts';
import { type GeneratedInstance, generateStudies } from '../testbed/dicom-generator.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { deliverOnce } from '../testbed/event-source-mapping.ts';
import { OrthancFleet, type OrthancServer } from '../testbed/orthanc.ts';
import { SecretsManagerStandIn } from '../testbed/secrets-manager.ts';
import { emulatorEnv, LOCAL_REGION, type SqsEmulator, startSqsEmulator } from '../testbed/sqs-emulator.ts';
import { drainQueue } from './support/aws-emulators.ts';
import {
  type DeployedFunction,
  type DeployedStack,
  LambdaEnvironment,
  LambdaError,
  readStack,
  scheduledEvent,
  synthesize,
} from './support/deployed-stack.ts';
import { expectAllAtDestination, heldUids, shape, uidsOf, until, upload } from './support/harness.ts';

const SOURCE_ID = 'site-a';
const SECRETS = { source: 'orthanc-forwarder/site-a', destination: 'orthanc-forwarder/destination' } as const;
const example = JSON.parse(readFileSync(new URL('../examples/aws-config.json', import.meta.url), 'utf8'));

describe('the deployed bundles, on emulators and real Orthancs', () => {
  const fleet = new OrthancFleet();
  const secrets = new SecretsManagerStandIn(LOCAL_REGION);
  const work = mkdtempSync(join(tmpdir(), 'deployed-bundles-'));
  const environments: LambdaEnvironment[] = [];
  let source: OrthancServer;
  let destination: OrthancServer;
  let dynamo: DynamoDbLocal;
  let sqs: SqsEmulator;
  let stack: DeployedStack;
  /** The environments the first tests keep warm. */
  let poller: LambdaEnvironment;
  let forwarder: LambdaEnvironment;

  const startEnvironment = async (fn: DeployedFunction): Promise<LambdaEnvironment> => {
    const environment = await LambdaEnvironment.start(fn, {
      physicalIds: {
        [stack.table]: dynamo.tableName,
        [stack.queue]: sqs.queueUrl,
        [stack.backlogQueue]: sqs.backlogQueueUrl,
        [stack.deadLetterQueue]: sqs.deadLetterQueueUrl,
      },
      variables: emulatorEnv({
        dynamodb: dynamo.endpoint,
        sqs: sqs.endpoint,
        secretsManager: secrets.endpoint,
      }),
    });
    environments.push(environment);
    return environment;
  };

  const poll = async (environment: LambdaEnvironment): Promise<SourcePollResult[]> =>
    (await environment.invoke<{ sources: SourcePollResult[] }>(scheduledEvent(stack))).sources;

  /** The work queue's event source mapping, invoking the environment (`onEvent` sees what it sends). */
  const mapping = (
    environment: LambdaEnvironment,
    onEvent: (records: SQSRecord[]) => void = () => undefined,
  ) => ({
    sqs: sqs.client,
    queueUrl: sqs.queueUrl,
    batchSize: stack.batchSize,
    handler: (event: SQSEvent) => {
      onEvent(event.Records);
      return environment.invoke<SQSBatchResponse>(event);
    },
  });

  /** The server's password and its secret changed together, as a rotation does. */
  const rotate = async (server: OrthancServer, secretId: string): Promise<void> => {
    const password = randomUUID();
    await server.changePassword(password);
    secrets.put(secretId, { username: server.username, password });
  };

  /** A study of two instances at the source, once Orthanc calls it stable. */
  const newStudy = async (seed: string): Promise<{ id: string; instances: readonly GeneratedInstance[] }> => {
    const { instances } = generateStudies(
      shape(seed, { patients: 1, seriesPerStudy: 1, instancesPerSeries: 2 }),
    );
    await upload(source, instances);
    const [study] = await source.rest<{ ID: string }[]>(
      'POST',
      '/tools/lookup',
      instances[0]?.studyInstanceUid,
    );
    const id = study?.ID ?? '';
    await until(async () => (await source.rest<{ IsStable: boolean }>('GET', `/studies/${id}`)).IsStable);
    return { id, instances };
  };

  /** The study is at the destination byte for byte, gone from the source, its outcome in the table. */
  const expectMoved = async (study: { id: string; instances: readonly GeneratedInstance[] }) => {
    const letters = await listDeadLetters(sqs.client, sqs.deadLetterQueueUrl, { waitSeconds: 0 });
    expect(
      letters.filter((letter) => letter.item?.studyId === study.id).map((letter) => letter.lastError),
    ).toEqual([]);
    await expectAllAtDestination(destination, study.instances);
    const atSource = new Set(await heldUids(source));
    expect(uidsOf(study.instances).filter((uid) => atSource.has(uid))).toEqual([]);
    const outcomes = await dynamo.client.send(
      new QueryCommand({
        TableName: dynamo.tableName,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': { S: `outcome#${SOURCE_ID}#${study.id}` } },
        ConsistentRead: true,
      }),
    );
    expect((outcomes.Items ?? []).map((item) => [item.result?.S, Number(item.deleted?.N)])).toEqual([
      ['moved', study.instances.length],
    ]);
  };

  const queuedOne = [
    expect.objectContaining({
      sourceId: SOURCE_ID,
      ok: true,
      report: expect.objectContaining({ queued: 1 }),
    }),
  ];

  /** The Orthancs and their secrets, then the app synthesized for them. */
  const startServersAndSynthesize = async (): Promise<DeployedStack> => {
    [source, destination] = await Promise.all([
      fleet.start({ name: SOURCE_ID, stableAge: 1, password: randomUUID() }),
      fleet.start({ name: 'destination', password: randomUUID() }),
      secrets.start(),
    ]);
    secrets.put(SECRETS.source, { username: source.username, password: source.password });
    secrets.put(SECRETS.destination, { username: destination.username, password: destination.password });
    const configFile = join(work, 'config.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        sources: [{ id: SOURCE_ID, url: source.url, secretId: SECRETS.source, allowInsecureHttp: true }],
        destination: { url: destination.dicomWebUrl, secretId: SECRETS.destination, allowInsecureHttp: true },
        aws: { ...example.aws, stackName: 'DeployedBundles', account: '000000000000', region: LOCAL_REGION },
      }),
    );
    return readStack(await synthesize(configFile, join(work, 'cdk.out')), work);
  };

  beforeAll(async () => {
    // The two longest steps, independent: DynamoDB Local's JVM starts while the app is synthesized.
    [dynamo, stack] = await Promise.all([startDynamoDbLocal(), startServersAndSynthesize()]);
    sqs = await startSqsEmulator({
      maxReceiveCount: stack.maxReceiveCount,
      visibilityTimeoutSeconds: stack.visibilityTimeoutSeconds,
    });
    [poller, forwarder] = await Promise.all([
      startEnvironment(stack.poller),
      startEnvironment(stack.forwarder),
    ]);
    // The first poll reads the source's history (none yet): what arrives after it is new, and
    // goes to the work queue.
    expect(await poll(poller)).toEqual([expect.objectContaining({ sourceId: SOURCE_ID, ok: true })]);
  }, 180_000);

  afterAll(async () => {
    await Promise.allSettled([
      ...environments.map((environment) => environment.stop()),
      fleet.destroyAll(),
      secrets.stop(),
      dynamo?.stop(),
      sqs?.stop(),
    ]);
    rmSync(work, { recursive: true, force: true });
  });

  it('polls with the poller bundle and moves with the forwarder bundle, with the credentials of Secrets Manager', async () => {
    const study = await newStudy('deployed-first');
    expect(await poll(poller)).toEqual(queuedOne);
    // The poller read its source's secret only: its role may not read the destination's.
    expect(secrets.reads).toEqual([SECRETS.source]);
    expect(await deliverOnce(mapping(forwarder))).toEqual({ received: 1, failed: 0 });
    await expectMoved(study);
    expect(new Set(secrets.reads)).toEqual(new Set(Object.values(SECRETS)));
  });

  it('the warm forwarder picks up the destination password rotated since its last invocation', async () => {
    const study = await newStudy('deployed-destination-rotated');
    await rotate(destination, SECRETS.destination);
    expect(await poll(poller)).toEqual(queuedOne);
    expect(await deliverOnce(mapping(forwarder))).toEqual({ received: 1, failed: 0 });
    await expectMoved(study);
  });

  it('the warm poller picks up the source password rotated since its last invocation', async () => {
    expect(await poll(poller)).toEqual([expect.objectContaining({ sourceId: SOURCE_ID, ok: true })]);
    await rotate(source, SECRETS.source);
    await newStudy('deployed-source-rotated');
    expect(await poll(poller)).toEqual(queuedOne);
  });

  it('recovers from a cold start that failed: Secrets Manager down at the first invocation, up at the next, same environment', async () => {
    const study = await newStudy('deployed-cold-start');
    await secrets.stop();
    const coldPoller = await startEnvironment(stack.poller);
    await expect(poll(coldPoller)).rejects.toBeInstanceOf(LambdaError);
    await secrets.start();
    expect(await poll(coldPoller)).toEqual([expect.objectContaining({ sourceId: SOURCE_ID, ok: true })]);

    await secrets.stop();
    const coldForwarder = await startEnvironment(stack.forwarder);
    let taken: SQSRecord[] = [];
    await expect(deliverOnce(mapping(coldForwarder, (records) => (taken = records)))).rejects.toBeInstanceOf(
      LambdaError,
    );
    // The failed invocation's message comes back once its visibility timeout ends: now.
    for (const { receiptHandle } of taken) {
      await sqs.client.send(
        new ChangeMessageVisibilityCommand({
          QueueUrl: sqs.queueUrl,
          ReceiptHandle: receiptHandle,
          VisibilityTimeout: 0,
        }),
      );
    }
    await secrets.start();
    const deliveries = await drainQueue(mapping(coldForwarder));
    expect(deliveries.filter((delivery) => delivery.failed > 0)).toEqual([]);
    await expectMoved(study);
  });
});
