import {
  BatchWriteItemCommand,
  type BatchWriteItemCommandOutput,
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  TransactionCanceledException,
  TransactWriteItemsCommand,
} from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import type { DynamoStateOptions } from '../lambdas/aws/dynamo-table.ts';
import { ForwarderError } from '../lambdas/core/errors.ts';
import { type DynamoDbLocal, localClient, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { conflict, deletion, intent, outcome, rejection, stateContract } from './support/port-contract.ts';

let local: DynamoDbLocal | undefined;
let tables = 0;

const dynamo = (): DynamoDbLocal => {
  if (local === undefined) throw new Error('DynamoDB Local is not running');
  return local;
};

beforeAll(async () => {
  local = await startDynamoDbLocal();
});

afterAll(async () => {
  await local?.stop();
});

/** A fresh empty table; a small page size so that every listing crosses pages. */
const freshTable = async (): Promise<string> => {
  tables += 1;
  const name = `state-${tables}`;
  await dynamo().createTable(name);
  return name;
};

const PAGED: DynamoStateOptions = { pageSize: 7 };

stateContract('DynamoDB state (port contract)', async () => {
  const tableName = await freshTable();
  const clients: DynamoDBClient[] = [];
  return {
    // A client per handle, as two Lambdas would have.
    open: () => {
      const client = localClient(dynamo().endpoint);
      clients.push(client);
      return {
        feed: new DynamoFeedStore(client, tableName, PAGED),
        ledger: new DynamoLedger(client, tableName, PAGED),
      };
    },
    dispose: async () => {
      for (const client of clients) client.destroy();
      await dynamo().deleteTable(tableName);
    },
  };
});

/** The real client, with some commands answered by `intercept` instead (undefined: pass it on). */
const intercepting = (intercept: (command: unknown) => Promise<unknown> | undefined): DynamoDBClient =>
  ({
    send: (command: unknown) => intercept(command) ?? dynamo().client.send(command as GetItemCommand),
  }) as unknown as DynamoDBClient;

const raw = async (tableName: string, pk: string, sk: string) =>
  (
    await dynamo().client.send(
      new GetItemCommand({
        TableName: tableName,
        Key: { pk: { S: pk }, sk: { S: sk } },
        ConsistentRead: true,
      }),
    )
  ).Item;

describe('DynamoDB state: table layout and failures', () => {
  let tableName: string;

  beforeEach(async () => {
    tableName = await freshTable();
  });

  // Times in the future (as CLOCK): DynamoDB Local would delete items whose ttl has passed.
  it('writes the items the CDK table expects: pk, sk, numbers as N, TTLs in epoch seconds', async () => {
    const feed = new DynamoFeedStore(dynamo().client, tableName);
    const ledger = new DynamoLedger(dynamo().client, tableName);
    await feed.advanceCursor('a', undefined, 42);
    await feed.watch('a', ['s1'], 100);
    await feed.updateWatched('a', { studyId: 's1', lastUpdate: '20240101T000000', lastUpdateSeenAt: 150 });
    await ledger.acquireLease('study#a#s1', 'w1', 60_000, 2_000_000_000_000);
    await ledger.record({
      sourceId: 'a',
      studyId: 's1',
      result: 'moved',
      instances: 3,
      sent: 2,
      alreadyPresent: 1,
      deleted: 3,
      rejected: 0,
      conflicts: 1,
      bytes: 200,
      deletedBytes: 300,
      durationMs: 10,
      finishedAt: 2_000_000_000_000,
    });
    await ledger.recordRejected([rejection({ rejectedAt: 5 })]);
    await ledger.recordConflicts([conflict({ attributes: ['PatientName', 'PatientID'], detectedAt: 6 })]);

    expect(await raw(tableName, 'source#a', 'cursor')).toEqual({
      pk: { S: 'source#a' },
      sk: { S: 'cursor' },
      seq: { N: '42' },
    });
    expect(await raw(tableName, 'source#a', 'watch#s1')).toEqual({
      pk: { S: 'source#a' },
      sk: { S: 'watch#s1' },
      lastUpdate: { S: '20240101T000000' },
      lastUpdateSeenAt: { N: '150' },
    });
    expect(await raw(tableName, 'lease#study#a#s1', 'lease')).toEqual({
      pk: { S: 'lease#study#a#s1' },
      sk: { S: 'lease' },
      owner: { S: 'w1' },
      expiresAt: { N: '2000000060000' },
      ttl: { N: String(2_000_000_060 + 86_400) },
    });
    const outcomes = await dynamo().client.send(
      new QueryCommand({
        TableName: tableName,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': { S: 'outcome#a#s1' } },
      }),
    );
    expect(outcomes.Items).toHaveLength(1);
    expect(outcomes.Items?.[0]).toMatchObject({
      sk: { S: expect.stringMatching(/^0002000000000000#[0-9a-f-]{36}$/) },
      result: { S: 'moved' },
      sent: { N: '2' },
      alreadyPresent: { N: '1' },
      conflicts: { N: '1' },
      deletedBytes: { N: '300' },
      finishedAt: { N: '2000000000000' },
      ttl: { N: String(2_000_000_000 + 90 * 86_400) },
    });
    expect(await raw(tableName, 'totals', 'totals')).toEqual({
      pk: { S: 'totals' },
      sk: { S: 'totals' },
      rejected: { N: '1' },
    });
    expect(await raw(tableName, 'totals', 'source#a')).toEqual({
      pk: { S: 'totals' },
      sk: { S: 'source#a' },
      movedStudies: { N: '1' },
      movedInstances: { N: '3' },
      movedBytes: { N: '300' },
      copiedStudies: { N: '0' },
      copiedInstances: { N: '0' },
      copiedBytes: { N: '0' },
      deleted: { N: '3' },
    });
    expect(await raw(tableName, 'rejected', 'a#s1#i1')).toEqual({
      pk: { S: 'rejected' },
      sk: { S: 'a#s1#i1' },
      sourceId: { S: 'a' },
      studyId: { S: 's1' },
      instanceId: { S: 'i1' },
      sopInstanceUid: { S: '1.2.3' },
      reason: { S: 'refused' },
      rejectedAt: { N: '5' },
    });
    const openConflict = {
      pk: { S: 'conflict' },
      sk: { S: 'a#s1#i1#d1' },
      sourceId: { S: 'a' },
      studyId: { S: 's1' },
      instanceId: { S: 'i1' },
      destinationId: { S: 'd1' },
      sopInstanceUid: { S: '1.2.3' },
      attributes: { L: [{ S: 'PatientName' }, { S: 'PatientID' }] },
      detectedAt: { N: '6' },
    };
    expect(await raw(tableName, 'conflict', 'a#s1#i1#d1')).toEqual(openConflict);
    await ledger.resolveConflict(conflict({}), 'accept-destination', 7);
    expect(await raw(tableName, 'conflict', 'a#s1#i1#d1')).toEqual({
      ...openConflict,
      resolution: { S: 'accept-destination' },
      resolvedAt: { N: '7' },
    });
    await ledger.recordIntent(intent({ seriesId: 'r1', at: 8 }));
    await ledger.recordIntent(intent({ verifiedBy: [], at: 9 }));
    const openIntent = {
      pk: { S: 'intent#a#s1' },
      sk: { S: 'series#r1' },
      sourceId: { S: 'a' },
      studyId: { S: 's1' },
      seriesId: { S: 'r1' },
      instances: { N: '4' },
      verifiedBy: {
        L: [
          { M: { destinationId: { S: 'd1' }, verify: { S: 'identity' } } },
          { M: { destinationId: { S: 'd2' }, verify: { S: 'checksum' } } },
        ],
      },
      routing: { S: 'r' },
      at: { N: '8' },
    };
    expect(await raw(tableName, 'intent#a#s1', 'series#r1')).toEqual(openIntent);
    expect(await raw(tableName, 'intent#a#s1', 'study')).toMatchObject({
      verifiedBy: { L: [] },
      at: { N: '9' },
    });
    await ledger.completeIntent('a', 's1', 'r1', 10);
    expect(await raw(tableName, 'intent#a#s1', 'series#r1')).toEqual({
      ...openIntent,
      completedAt: { N: '10' },
    });
    await ledger.completeIntent('a', 's1', 'r2', 11);
    expect(await raw(tableName, 'intent#a#s1', 'series#r2')).toBeUndefined();
    // A watched study whose LastUpdate is unknown again has no lastUpdate attribute.
    await feed.updateWatched('a', { studyId: 's1', lastUpdate: undefined, lastUpdateSeenAt: 200 });
    expect((await raw(tableName, 'source#a', 'watch#s1'))?.lastUpdate).toBeUndefined();
  });

  it('reads the totals a stack kept before it kept them per source as the source ""', async () => {
    await dynamo().client.send(
      new PutItemCommand({
        TableName: tableName,
        Item: {
          pk: { S: 'totals' },
          sk: { S: 'totals' },
          studies: { N: '4' },
          instances: { N: '20' },
          bytes: { N: '2000' },
          deleted: { N: '18' },
          rejected: { N: '2' },
        },
      }),
    );
    const ledger = new DynamoLedger(dynamo().client, tableName);
    await ledger.record(outcome({ result: 'moved', sent: 1, bytes: 10, deleted: 1, deletedBytes: 10 }));
    const none = { studies: 0, instances: 0, bytes: 0 };
    expect(await ledger.totals()).toEqual({
      moved: { studies: 5, instances: 19, bytes: 2010 },
      copied: none,
      deleted: 19,
      rejected: 2,
      sources: {
        '': { moved: { studies: 4, instances: 18, bytes: 2000 }, copied: none, deleted: 18 },
        a: { moved: { studies: 1, instances: 1, bytes: 10 }, copied: none, deleted: 1 },
      },
    });
  });

  it('resends the deletes DynamoDB leaves unprocessed', async () => {
    const seen: number[] = [];
    const client = intercepting((command) => {
      if (!(command instanceof BatchWriteItemCommand)) return undefined;
      const requests = command.input.RequestItems?.[tableName] ?? [];
      seen.push(requests.length);
      if (seen.length > 1) return undefined;
      // The first call processes nothing beyond its first 5 requests.
      const processed = new BatchWriteItemCommand({ RequestItems: { [tableName]: requests.slice(0, 5) } });
      return dynamo()
        .client.send(processed)
        .then(
          (): BatchWriteItemCommandOutput => ({
            UnprocessedItems: { [tableName]: requests.slice(5) },
            $metadata: {},
          }),
        );
    });
    const feed = new DynamoFeedStore(client, tableName);
    const studies = Array.from({ length: 30 }, (_, index) => `s${String(index).padStart(2, '0')}`);
    await feed.watch('a', studies, 1);
    await feed.unwatch('a', studies.slice(0, 28));
    expect(seen).toEqual([25, 20, 3]);
    expect((await feed.watched('a')).map((s) => s.studyId)).toEqual(['s28', 's29']);
  });

  it('gives up with a transient error when DynamoDB keeps leaving deletes unprocessed', async () => {
    const client = intercepting((command) =>
      command instanceof BatchWriteItemCommand
        ? Promise.resolve({ UnprocessedItems: command.input.RequestItems, $metadata: {} })
        : undefined,
    );
    const feed = new DynamoFeedStore(client, tableName, { attempts: 3 });
    const failure = await feed.unwatch('a', ['s1']).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ForwarderError);
    expect(failure).toMatchObject({ kind: 'transient', message: expect.stringMatching(/after 3 attempts/) });
  });

  it('retries a transaction cancelled by a conflict, and counts it once', async () => {
    let conflicts = 0;
    const client = intercepting((command) => {
      if (!(command instanceof TransactWriteItemsCommand) || conflicts >= 2) return undefined;
      conflicts += 1;
      return Promise.reject(
        new TransactionCanceledException({
          message: 'Transaction cancelled',
          $metadata: {},
          CancellationReasons: [{ Code: 'None' }, { Code: 'TransactionConflict' }],
        }),
      );
    });
    const ledger = new DynamoLedger(client, tableName);
    await ledger.recordRejected([rejection({})]);
    expect(conflicts).toBe(2);
    expect((await ledger.totals()).rejected).toBe(1);
  });

  it('keeps an outcome retention.outcomeDays and an audited deletion retention.auditDays through their TTLs', async () => {
    const tableName = await freshTable();
    const ledger = new DynamoLedger(dynamo().client, tableName, { outcomeDays: 7, auditDays: 30 });
    await ledger.record(outcome({ finishedAt: 2_000_000_000_000 }));
    await ledger.recordDeletion(deletion({ at: 2_000_000_000_000 }));
    const ttlsOf = async (pk: string) =>
      (
        await dynamo().client.send(
          new QueryCommand({
            TableName: tableName,
            KeyConditionExpression: 'pk = :pk',
            ExpressionAttributeValues: { ':pk': { S: pk } },
          }),
        )
      ).Items?.map((item) => item.ttl);
    expect(await ttlsOf('outcome#a#s1')).toEqual([{ N: String(2_000_000_000 + 7 * 86_400) }]);
    // In the partition of its day (UTC), which the export queries.
    expect(await ttlsOf('audit#2033-05-18')).toEqual([{ N: String(2_000_000_000 + 30 * 86_400) }]);
  });

  it('lets throttling and other errors propagate instead of answering false', async () => {
    const throttled = Object.assign(new Error('Rate exceeded'), {
      name: 'ProvisionedThroughputExceededException',
    });
    const client = intercepting(() => Promise.reject(throttled));
    const feed = new DynamoFeedStore(client, tableName);
    const ledger = new DynamoLedger(client, tableName);
    await expect(feed.advanceCursor('a', undefined, 1)).rejects.toBe(throttled);
    await expect(feed.watch('a', ['s1'], 1)).rejects.toBe(throttled);
    await expect(ledger.acquireLease('k', 'w1', 1_000, 0)).rejects.toBe(throttled);
    await expect(ledger.releaseLease('k', 'w1')).rejects.toBe(throttled);
    await expect(ledger.recordRejected([rejection({})])).rejects.toBe(throttled);
    await expect(ledger.recordConflicts([conflict({})])).rejects.toBe(throttled);
    await expect(ledger.resolveConflict(conflict({}), 'keep-source', 1)).rejects.toBe(throttled);
    await expect(ledger.recordIntent(intent({}))).rejects.toBe(throttled);
    await expect(ledger.intents('a', 's1')).rejects.toBe(throttled);
    await expect(ledger.completeIntent('a', 's1', '', 1)).rejects.toBe(throttled);

    const missing = new DynamoFeedStore(dynamo().client, 'no-such-table');
    await expect(missing.getCursor('a')).rejects.toMatchObject({ name: 'ResourceNotFoundException' });
    await expect(missing.advanceCursor('a', undefined, 1)).rejects.toMatchObject({
      name: 'ResourceNotFoundException',
    });
  });
});
