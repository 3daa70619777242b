/**
 * The change-feed reader's state on DynamoDB, with the semantics of SqliteFeedStore. Per source,
 * in partition `source#<sourceId>`: the cursor (sk `cursor`, `seq`), the progress (sk
 * `progress`: `version`, `watchAfter`, `sweepBelow` during a sweep, `sweepStartedAt`,
 * `settings`, `backlogThrough` once the feed was first read) and one item per watched study (sk `watch#<studyId>`, `lastUpdate` when known,
 * `lastUpdateSeenAt` in epoch ms), and what an operator asked of it (sk `control`: `pausedAt`,
 * `sweepRequestedAt`, each while it holds). A study queued whole is remembered in a partition of its own,
 * so that a sweep's reads spread over the table: pk `queued#<sourceId>#<studyId>`, sk `queued`,
 * `lastUpdate`, `settings`, `queuedAt`, and `ttl` when the memory ends.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { runBounded } from '../core/concurrency.ts';
import {
  type FeedProgress,
  type FeedStateStore,
  QUEUED_MEMORY_MS,
  type QueuedStudy,
  type SourceControl,
  type StoredProgress,
  type WatchedStudy,
} from '../core/ports.ts';
import {
  type DynamoStateOptions,
  epochSeconds,
  type Item,
  key,
  num,
  readNum,
  readStr,
  StateTable,
  str,
} from './dynamo-table.ts';

const CURSOR = 'cursor';
const PROGRESS = 'progress';
const WATCH = 'watch#';
const QUEUED = 'queued';
const CONTROL = 'control';

const sourcePk = (sourceId: string) => `source#${sourceId}`;
const watchKey = (sourceId: string, studyId: string) => key(sourcePk(sourceId), WATCH + studyId);

const queuedKey = (sourceId: string, studyId: string) => key(`${QUEUED}#${sourceId}#${studyId}`, QUEUED);

const queuedItem = (sourceId: string, study: QueuedStudy): Item => ({
  ...queuedKey(sourceId, study.studyId),
  studyId: str(study.studyId),
  lastUpdate: str(study.lastUpdate),
  settings: str(study.settings),
  queuedAt: num(study.queuedAt),
  ttl: num(epochSeconds(study.queuedAt + QUEUED_MEMORY_MS)),
});

const toQueued = (item: Item): QueuedStudy => ({
  studyId: readStr(item, 'studyId') ?? '',
  lastUpdate: readStr(item, 'lastUpdate') ?? '',
  settings: readStr(item, 'settings') ?? '',
  queuedAt: readNum(item, 'queuedAt') ?? 0,
});

const toProgress = (item: Item): StoredProgress => {
  const sweepBelow = readNum(item, 'sweepBelow');
  const backlogThrough = readNum(item, 'backlogThrough');
  return {
    version: readNum(item, 'version') ?? 0,
    progress: {
      watchAfter: readStr(item, 'watchAfter') ?? '',
      ...(sweepBelow === undefined ? {} : { sweepBelow }),
      sweepStartedAt: readNum(item, 'sweepStartedAt') ?? 0,
      settings: readStr(item, 'settings') ?? '',
      ...(backlogThrough === undefined ? {} : { backlogThrough }),
    },
  };
};

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
  async watched(sourceId: string, page?: { after: string; limit: number }): Promise<WatchedStudy[]> {
    const items =
      page === undefined
        ? await this.#table.query(sourcePk(sourceId), WATCH)
        : await this.#table.queryAfter(sourcePk(sourceId), WATCH, page.after, page.limit);
    return items.map(toWatched);
  }

  async watchedCount(sourceId: string): Promise<number> {
    return this.#table.count(sourcePk(sourceId), WATCH);
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

  async progress(sourceId: string): Promise<StoredProgress | undefined> {
    const item = await this.#table.get(key(sourcePk(sourceId), PROGRESS));
    return item === undefined ? undefined : toProgress(item);
  }

  /** A conditional put either way: two polls that both saw none may not both win either. */
  async saveProgress(
    sourceId: string,
    expected: number | undefined,
    progress: FeedProgress,
  ): Promise<boolean> {
    const item: Item = {
      ...key(sourcePk(sourceId), PROGRESS),
      version: num((expected ?? 0) + 1),
      watchAfter: str(progress.watchAfter),
      sweepStartedAt: num(progress.sweepStartedAt),
      settings: str(progress.settings),
    };
    if (progress.sweepBelow !== undefined) item.sweepBelow = num(progress.sweepBelow);
    if (progress.backlogThrough !== undefined) item.backlogThrough = num(progress.backlogThrough);
    return this.#table.putIf(
      item,
      expected === undefined
        ? { expression: 'attribute_not_exists(pk)' }
        : { expression: 'version = :expected', values: { ':expected': num(expected) } },
    );
  }

  /** A batch write refuses the same key twice in one call: the last of a study wins. */
  async rememberQueued(sourceId: string, studies: readonly QueuedStudy[]): Promise<void> {
    const latest = new Map(studies.map((study) => [study.studyId, study]));
    await this.#table.putAll([...latest.values()].map((study) => queuedItem(sourceId, study)));
  }

  async forgetQueued(sourceId: string, studyIds: readonly string[]): Promise<void> {
    await this.#table.deleteAll([...new Set(studyIds)].map((studyId) => queuedKey(sourceId, studyId)));
  }

  async control(sourceId: string): Promise<SourceControl> {
    const item = await this.#table.get(key(sourcePk(sourceId), CONTROL));
    const pausedAt = item === undefined ? undefined : readNum(item, 'pausedAt');
    const sweepRequestedAt = item === undefined ? undefined : readNum(item, 'sweepRequestedAt');
    return {
      ...(pausedAt === undefined ? {} : { pausedAt }),
      ...(sweepRequestedAt === undefined ? {} : { sweepRequestedAt }),
    };
  }

  /** Each sets its attribute only where it is not set yet: the first pause, the pending request, stand. */
  async pause(sourceId: string, at: number): Promise<boolean> {
    return this.#setOnce(sourceId, 'pausedAt', at);
  }

  async resume(sourceId: string): Promise<boolean> {
    return this.#table.updateIf(key(sourcePk(sourceId), CONTROL), 'REMOVE pausedAt', {
      expression: 'attribute_exists(pausedAt)',
    });
  }

  async requestSweep(sourceId: string, at: number): Promise<boolean> {
    return this.#setOnce(sourceId, 'sweepRequestedAt', at);
  }

  async clearSweepRequest(sourceId: string, at: number): Promise<void> {
    await this.#table.updateIf(key(sourcePk(sourceId), CONTROL), 'REMOVE sweepRequestedAt', {
      expression: 'sweepRequestedAt = :at',
      values: { ':at': num(at) },
    });
  }

  #setOnce(sourceId: string, attribute: 'pausedAt' | 'sweepRequestedAt', at: number): Promise<boolean> {
    return this.#table.updateIf(key(sourcePk(sourceId), CONTROL), `SET ${attribute} = :at`, {
      expression: `attribute_not_exists(${attribute})`,
      values: { ':at': num(at) },
    });
  }

  /** A batch read refuses the same key twice in one call, hence the de-duplication. */
  async queued(sourceId: string, studyIds: readonly string[]): Promise<QueuedStudy[]> {
    const keys = [...new Set(studyIds)].map((studyId) => queuedKey(sourceId, studyId));
    return (await this.#table.getAll(keys)).map(toQueued);
  }
}
