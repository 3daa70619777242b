/**
 * What the DynamoDB adapters share: the one state table (partition key `pk`, sort key `sk`, TTL
 * attribute `ttl` in epoch seconds, all created by the CDK stack), attribute codecs, paging, and
 * the plumbing that turns a lost condition into an answer instead of an error.
 *
 * Every other error (throttling, 5xx, the network, a missing table) propagates: the SDK has
 * already retried it, and the engine classifies what reaches it as transient.
 */

import { setTimeout as sleep } from 'node:timers/promises';
import {
  type AttributeValue,
  BatchGetItemCommand,
  BatchWriteItemCommand,
  DeleteItemCommand,
  type DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  type QueryCommandInput,
  type TransactWriteItem,
  TransactWriteItemsCommand,
  UpdateItemCommand,
  type WriteRequest,
} from '@aws-sdk/client-dynamodb';
import { transient } from '../core/errors.ts';
import { backoffDelay } from '../core/retry.ts';

export type Item = Record<string, AttributeValue>;

export interface DynamoStateOptions {
  /** Items per Query page (DynamoDB's 1 MB page limit applies anyway); small values test the paging. */
  readonly pageSize?: number;
  /** Per-item conditional writes in flight at once. */
  readonly concurrency?: number;
  /** Rounds for unprocessed batch items and for transactions that lost a conflict, before giving up. */
  readonly attempts?: number;
}

/** A condition on a write; `names` aliases attribute names that are DynamoDB reserved words. */
export interface Condition {
  readonly expression: string;
  readonly values?: Item;
  readonly names?: Record<string, string>;
}

/** BatchWriteItem takes at most 25 requests. */
const BATCH_LIMIT = 25;
/** BatchGetItem takes at most 100 keys. */
const GET_BATCH_LIMIT = 100;
const BACKOFF = { baseDelayMs: 50, maxDelayMs: 2_000 };

export const key = (pk: string, sk: string): Item => ({ pk: { S: pk }, sk: { S: sk } });
export const str = (value: string): AttributeValue => ({ S: value });
export const num = (value: number): AttributeValue => ({ N: String(value) });
export const readStr = (item: Item, name: string): string | undefined => item[name]?.S;

export const readNum = (item: Item, name: string): number | undefined => {
  const value = item[name]?.N;
  return value === undefined ? undefined : Number(value);
};

/** DynamoDB's TTL wants epoch seconds. */
export const epochSeconds = (epochMs: number): number => Math.floor(epochMs / 1_000);

const errorName = (error: unknown): string | undefined => (error instanceof Error ? error.name : undefined);

/** The reason codes of a cancelled transaction, one per action; undefined for any other error. */
const cancellationCodes = (error: unknown): string[] | undefined => {
  if (errorName(error) !== 'TransactionCanceledException') return undefined;
  const reasons = (error as { CancellationReasons?: { Code?: string }[] }).CancellationReasons ?? [];
  return reasons.map((reason) => reason.Code ?? 'None');
};

/** A lost condition is an answer (false); anything else is an error. */
const unlessConditionFails = async (write: () => Promise<unknown>): Promise<boolean> => {
  try {
    await write();
    return true;
  } catch (error) {
    if (errorName(error) === 'ConditionalCheckFailedException') return false;
    throw error;
  }
};

const conditionInput = (condition: Condition) => ({
  ConditionExpression: condition.expression,
  ExpressionAttributeValues: condition.values,
  ExpressionAttributeNames: condition.names,
});

export class StateTable {
  readonly client: DynamoDBClient;
  readonly name: string;
  readonly concurrency: number;
  readonly #pageSize: number | undefined;
  readonly #attempts: number;

  constructor(client: DynamoDBClient, name: string, options: DynamoStateOptions = {}) {
    this.client = client;
    this.name = name;
    this.concurrency = options.concurrency ?? 16;
    this.#pageSize = options.pageSize;
    this.#attempts = options.attempts ?? 8;
  }

  /** Strongly consistent, as every read here: a reader must see what the last writer wrote. */
  async get(itemKey: Item): Promise<Item | undefined> {
    const answer = await this.client.send(
      new GetItemCommand({ TableName: this.name, Key: itemKey, ConsistentRead: true }),
    );
    return answer.Item;
  }

  /** Puts the item if the condition holds; false if it did not. */
  async putIf(item: Item, condition: Condition): Promise<boolean> {
    return unlessConditionFails(() =>
      this.client.send(
        new PutItemCommand({ TableName: this.name, Item: item, ...conditionInput(condition) }),
      ),
    );
  }

  async updateIf(itemKey: Item, update: string, condition: Condition): Promise<boolean> {
    return unlessConditionFails(() =>
      this.client.send(
        new UpdateItemCommand({
          TableName: this.name,
          Key: itemKey,
          UpdateExpression: update,
          ...conditionInput(condition),
        }),
      ),
    );
  }

  async deleteIf(itemKey: Item, condition: Condition): Promise<boolean> {
    return unlessConditionFails(() =>
      this.client.send(
        new DeleteItemCommand({ TableName: this.name, Key: itemKey, ...conditionInput(condition) }),
      ),
    );
  }

  /** Every item of the partition whose sort key starts with `prefix` (all of them without), in sort key order. */
  async query(pk: string, prefix?: string): Promise<Item[]> {
    return this.#queryAll(
      // begins_with refuses an empty string, so the whole partition is asked for without it.
      prefix ? 'pk = :pk AND begins_with(sk, :prefix)' : 'pk = :pk',
      prefix ? { ':pk': str(pk), ':prefix': str(prefix) } : { ':pk': str(pk) },
    );
  }

  /** Every item of the partition whose sort key sorts at or after `low`, in sort key order. */
  async queryFrom(pk: string, low: string): Promise<Item[]> {
    return this.#queryAll('pk = :pk AND sk >= :low', { ':pk': str(pk), ':low': str(low) });
  }

  async #queryAll(condition: string, values: Item): Promise<Item[]> {
    const items: Item[] = [];
    let start: Item | undefined;
    do {
      const page = await this.client.send(
        new QueryCommand({
          TableName: this.name,
          KeyConditionExpression: condition,
          ExpressionAttributeValues: values,
          ConsistentRead: true,
          Limit: this.#pageSize,
          ExclusiveStartKey: start,
        }),
      );
      items.push(...(page.Items ?? []));
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
    return items;
  }

  /**
   * At most `limit` items of the partition whose sort keys start with `prefix` and sort after
   * `prefix + after` (all of them when `after` is ''), in sort key order.
   */
  async queryAfter(pk: string, prefix: string, after: string, limit: number): Promise<Item[]> {
    // Any key may start a Query, whether or not its item exists.
    return this.#queryUpTo(
      this.#startingWith(pk, prefix),
      after === '' ? undefined : key(pk, prefix + after),
      limit,
    );
  }

  /**
   * At most `limit` items of the partition whose sort keys lie between `low` and `high` (both
   * included) and, given `after`, sort after it; in sort key order.
   */
  async queryBetween(
    pk: string,
    low: string,
    high: string,
    after: string | undefined,
    limit: number,
  ): Promise<Item[]> {
    const query = {
      TableName: this.name,
      KeyConditionExpression: 'pk = :pk AND sk BETWEEN :low AND :high',
      ExpressionAttributeValues: { ':pk': str(pk), ':low': str(low), ':high': str(high) },
      ConsistentRead: true,
    };
    return this.#queryUpTo(query, after === undefined ? undefined : key(pk, after), limit);
  }

  /** At most `limit` items of a Query, from after the key `start` (from the first without). */
  async #queryUpTo(
    query: Omit<QueryCommandInput, 'Limit' | 'ExclusiveStartKey'>,
    start: Item | undefined,
    limit: number,
  ): Promise<Item[]> {
    const items: Item[] = [];
    let next = start;
    do {
      const page = await this.client.send(
        new QueryCommand({
          ...query,
          Limit: Math.min(limit - items.length, this.#pageSize ?? limit),
          ExclusiveStartKey: next,
        }),
      );
      items.push(...(page.Items ?? []));
      next = page.LastEvaluatedKey;
    } while (next !== undefined && items.length < limit);
    return items;
  }

  /** A consistent Query of the partition's items whose sort keys start with `prefix`. */
  #startingWith(pk: string, prefix: string) {
    return {
      TableName: this.name,
      KeyConditionExpression: 'pk = :pk AND begins_with(sk, :prefix)',
      ExpressionAttributeValues: { ':pk': str(pk), ':prefix': str(prefix) },
      ConsistentRead: true,
    };
  }

  /** How many items of the partition have sort keys starting with `prefix`. */
  async count(pk: string, prefix: string): Promise<number> {
    let total = 0;
    let start: Item | undefined;
    do {
      const page = await this.client.send(
        new QueryCommand({
          ...this.#startingWith(pk, prefix),
          Select: 'COUNT',
          Limit: this.#pageSize,
          ExclusiveStartKey: start,
        }),
      );
      total += page.Count ?? 0;
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
    return total;
  }

  /** The items of these keys that exist, 100 keys a call, asking again for what DynamoDB left unprocessed. */
  async getAll(keys: readonly Item[]): Promise<Item[]> {
    const items: Item[] = [];
    for (let index = 0; index < keys.length; index += GET_BATCH_LIMIT) {
      let pending: Item[] = keys.slice(index, index + GET_BATCH_LIMIT);
      for (let attempt = 1; ; attempt++) {
        const answer = await this.client.send(
          new BatchGetItemCommand({ RequestItems: { [this.name]: { Keys: pending, ConsistentRead: true } } }),
        );
        items.push(...(answer.Responses?.[this.name] ?? []));
        pending = answer.UnprocessedKeys?.[this.name]?.Keys ?? [];
        if (pending.length === 0) break;
        if (attempt >= this.#attempts) {
          throw transient(
            `DynamoDB left ${pending.length} batch read(s) unprocessed after ${attempt} attempts`,
          );
        }
        await sleep(backoffDelay(attempt, BACKOFF));
      }
    }
    return items;
  }

  /** Puts the items, replacing any with the same key, 25 a call. */
  async putAll(items: readonly Item[]): Promise<void> {
    for (let index = 0; index < items.length; index += BATCH_LIMIT) {
      await this.#writeBatch(
        items.slice(index, index + BATCH_LIMIT).map((Item) => ({ PutRequest: { Item } })),
      );
    }
  }

  /** Deletes the items (absent ones are no error), 25 a call, resending what DynamoDB left unprocessed. */
  async deleteAll(keys: readonly Item[]): Promise<void> {
    for (let index = 0; index < keys.length; index += BATCH_LIMIT) {
      const requests = keys
        .slice(index, index + BATCH_LIMIT)
        .map((itemKey) => ({ DeleteRequest: { Key: itemKey } }));
      await this.#writeBatch(requests);
    }
  }

  async #writeBatch(requests: WriteRequest[]): Promise<void> {
    let pending = requests;
    for (let attempt = 1; ; attempt++) {
      const answer = await this.client.send(
        new BatchWriteItemCommand({ RequestItems: { [this.name]: pending } }),
      );
      pending = answer.UnprocessedItems?.[this.name] ?? [];
      if (pending.length === 0) return;
      if (attempt >= this.#attempts) {
        throw transient(
          `DynamoDB left ${pending.length} batch write(s) unprocessed after ${attempt} attempts`,
        );
      }
      // Unprocessed items mean the partition is throttled: hammering it again would not help.
      await sleep(backoffDelay(attempt, BACKOFF));
    }
  }

  /**
   * Runs the actions as one transaction. Returns the indexes of the actions whose condition failed
   * (the transaction then wrote nothing), or [] when it committed. A cancellation for a conflict
   * with another transaction on the same item (the shared totals item makes those likely) is
   * retried with backoff, with a fresh idempotency token since the cancelled attempt wrote nothing.
   */
  async transact(actions: TransactWriteItem[]): Promise<number[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.client.send(new TransactWriteItemsCommand({ TransactItems: actions }));
        return [];
      } catch (error) {
        const codes = cancellationCodes(error);
        const failed = (codes ?? []).flatMap((code, index) =>
          code === 'ConditionalCheckFailed' ? [index] : [],
        );
        if (failed.length > 0) return failed;
        if (!codes?.includes('TransactionConflict') || attempt >= this.#attempts) throw error;
        await sleep(backoffDelay(attempt, BACKOFF));
      }
    }
  }
}
