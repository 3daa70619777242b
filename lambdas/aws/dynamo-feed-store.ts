/**
 * The change-feed reader's state on DynamoDB, with the semantics of SqliteFeedStore. Per source,
 * in partition `source#<sourceId>`: the cursor (sk `cursor`, `seq`) and one item per watched
 * study (sk `watch#<studyId>`, `lastUpdate` when known, `lastUpdateSeenAt` in epoch ms).
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { runBounded } from '../core/concurrency.ts';
import type { FeedStateStore, WatchedStudy } from '../core/ports.ts';
import {
  type DynamoStateOptions,
  type Item,
  key,
  num,
  readNum,
  readStr,
  StateTable,
  str,
} from './dynamo-table.ts';

const CURSOR = 'cursor';
const WATCH = 'watch#';

const sourcePk = (sourceId: string) => `source#${sourceId}`;
const watchKey = (sourceId: string, studyId: string) => key(sourcePk(sourceId), WATCH + studyId);

const toWatched = (item: Item): WatchedStudy => ({
  studyId: (readStr(item, 'sk') ?? '').slice(WATCH.length),
  lastUpdate: readStr(item, 'lastUpdate'),
  lastUpdateSeenAt: readNum(item, 'lastUpdateSeenAt') ?? 0,
});

export class DynamoFeedStore implements FeedStateStore {
  readonly #table: StateTable;

  constructor(client: DynamoDBClient, tableName: string, options: DynamoStateOptions = {}) {
    this.#table = new StateTable(client, tableName, options);
  }

  async getCursor(sourceId: string): Promise<number | undefined> {
    const item = await this.#table.get(key(sourcePk(sourceId), CURSOR));
    return item === undefined ? undefined : readNum(item, 'seq');
  }

  /** A conditional put either way: two readers that both saw no cursor may not both win either. */
  async advanceCursor(sourceId: string, expected: number | undefined, next: number): Promise<boolean> {
    if (!Number.isSafeInteger(next)) throw new RangeError(`cursor must be an integer, got ${next}`);
    const item = { ...key(sourcePk(sourceId), CURSOR), seq: num(next) };
    return this.#table.putIf(
      item,
      expected === undefined
        ? { expression: 'attribute_not_exists(pk)' }
        : { expression: 'seq = :expected', values: { ':expected': num(expected) } },
    );
  }

  /**
   * One conditional put per study, since a batch write cannot be conditional and would reset the
   * state of studies already watched. Not atomic as a whole, but idempotent: a retry completes it.
   */
  async watch(sourceId: string, studyIds: readonly string[], now: number): Promise<void> {
    await runBounded([...new Set(studyIds)], this.#table.concurrency, async (studyId) => {
      const item = { ...watchKey(sourceId, studyId), lastUpdateSeenAt: num(now) };
      await this.#table.putIf(item, { expression: 'attribute_not_exists(sk)' });
    });
  }

  /** In study ID order, as DynamoDB sorts the sort keys (by their UTF-8 bytes, as SQLite does). */
  async watched(sourceId: string): Promise<WatchedStudy[]> {
    return (await this.#table.query(sourcePk(sourceId), WATCH)).map(toWatched);
  }

  /** An update only if still watched: a late reader must not bring back a study that another unwatched. */
  async updateWatched(sourceId: string, study: WatchedStudy): Promise<void> {
    const values: Item = { ':seenAt': num(study.lastUpdateSeenAt) };
    if (study.lastUpdate !== undefined) values[':lastUpdate'] = str(study.lastUpdate);
    const update =
      study.lastUpdate === undefined
        ? 'SET lastUpdateSeenAt = :seenAt REMOVE lastUpdate'
        : 'SET lastUpdateSeenAt = :seenAt, lastUpdate = :lastUpdate';
    await this.#table.updateIf(watchKey(sourceId, study.studyId), update, {
      expression: 'attribute_exists(sk)',
      values,
    });
  }

  /** A batch write refuses the same key twice in one call, hence the de-duplication. */
  async unwatch(sourceId: string, studyIds: readonly string[]): Promise<void> {
    await this.#table.deleteAll([...new Set(studyIds)].map((studyId) => watchKey(sourceId, studyId)));
  }
}
