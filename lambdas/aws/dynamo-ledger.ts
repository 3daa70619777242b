/**
 * The ledger on DynamoDB, with the semantics of SqliteLedger. Items of the state table:
 * - lease: pk `lease#<key>`, sk `lease`: owner, expiresAt (epoch ms), ttl;
 * - outcome: pk `outcome#<sourceId>#<studyId>`, sk `<finishedAt, 16 digits>#<uuid>`: the
 *   outcome's fields, ttl `retention.outcomeDays` (90 by default) after finishedAt;
 * - totals, kept by ADD in the same transaction as the write they count, since there is no table
 *   to count over: pk `totals`, sk `source#<sourceId>`: movedStudies, movedInstances, movedBytes,
 *   copiedStudies, copiedInstances, copiedBytes, deleted (core/totals.ts); sk `totals`: rejected,
 *   and from stacks before the totals were kept per source studies, instances, bytes, deleted;
 * - what left a source lately, kept by ADD in the same transaction (movedSince reads it with one
 *   query): pk `moved#<sourceId>`, sk `<start of its MOVED_BUCKET_MS bucket, 16 digits>`:
 *   studies, instances, bytes; ttl two days after the bucket, since a rate looks a day back;
 * - rejected instance: pk `rejected`, sk `<sourceId>#<studyId>#<instanceId>`: its fields. No
 *   TTL: a refusal forgotten while its instance is at the source would have it sent again, so
 *   one is forgotten (forgetRejected) only once its instance is gone;
 * - settled study: pk `settled#<sourceId>#<studyId>`, sk `study` or `series#<seriesId>`: its
 *   fields. No TTL: a copied study forgotten would be verified again at the next sweep;
 * - conflict: pk `conflict`, sk `<sourceId>#<studyId>#<instanceId>#<destinationId>`: its fields,
 *   attributes as a list of names, resolution and resolvedAt once resolved. No TTL: it is the
 *   record of an operator's decision;
 * - deletion intent: pk `intent#<sourceId>#<studyId>`, sk `study` or `series#<seriesId>`: the
 *   last one recorded, its fields, verifiedBy as a list of maps {destinationId, verify},
 *   completedAt once completed. No TTL: an open one tells the next move what a crashed worker
 *   deleted, and a completed one where the study was routed;
 * - the audit trail of deletions: dynamo-deletions.ts.
 */

import { randomUUID } from 'node:crypto';
import { type DynamoDBClient, PutItemCommand, type TransactWriteItem } from '@aws-sdk/client-dynamodb';
import { runBounded } from '../core/concurrency.ts';
import {
  CONFLICT_RESOLUTIONS,
  type Conflict,
  type ConflictFilter,
  type ConflictKey,
  type ConflictResolution,
  type DeletionIntent,
  type DeletionKey,
  type DeletionPage,
  type DeletionQuery,
  type DeletionRecord,
  type Ledger,
  type RejectedInstance,
  type SettledStudy,
  type SourceTotals,
  type StudyOutcome,
  type Tally,
  type Totals,
} from '../core/ports.ts';
import { movedBucketStart, NO_TOTALS, outcomeTotals, sumTotals } from '../core/totals.ts';
import { DynamoDeletions } from './dynamo-deletions.ts';
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

const DAY_S = 24 * 60 * 60;
/** DynamoDB deletes expired items within days; a lease's expiry is enforced by expiresAt, the TTL only tidies. */
const LEASE_TTL_GRACE_S = DAY_S;
/** `retention.outcomeDays`' default. */
const OUTCOME_DAYS = 90;
/** `retention.auditDays`' default. */
const AUDIT_DAYS = 2190;
const TOTALS_PK = 'totals';
const TOTALS_KEY = key(TOTALS_PK, 'totals');
const SOURCE_TOTALS = 'source#';
const REJECTED_PK = 'rejected';
const CONFLICT_PK = 'conflict';
const SETTLED = 'settled';
const INTENT = 'intent';
const MOVED = 'moved#';
/** How long a bucket of movedSince is kept: a rate looks back a day at most. */
const MOVED_BUCKET_TTL_S = 2 * DAY_S;
/** New refusals per transaction, with the totals update as the 100th action at most. */
const REJECTED_PER_TRANSACTION = 50;

/** A source's totals as the attributes of its totals item. */
const sourceCounts = (totals: SourceTotals): Record<string, number> => ({
  movedStudies: totals.moved.studies,
  movedInstances: totals.moved.instances,
  movedBytes: totals.moved.bytes,
  copiedStudies: totals.copied.studies,
  copiedInstances: totals.copied.instances,
  copiedBytes: totals.copied.bytes,
  deleted: totals.deleted,
});

const toSourceTotals = (item: Item): SourceTotals => {
  const count = (name: string) => readNum(item, name) ?? 0;
  return {
    moved: { studies: count('movedStudies'), instances: count('movedInstances'), bytes: count('movedBytes') },
    copied: {
      studies: count('copiedStudies'),
      instances: count('copiedInstances'),
      bytes: count('copiedBytes'),
    },
    deleted: count('deleted'),
  };
};

/** What the totals item of a stack before the per-source totals counted: Totals.sources[''] says how. */
const legacyTotals = (item: Item): SourceTotals | undefined => {
  const [studies, instances, bytes, deleted] = ['studies', 'instances', 'bytes', 'deleted'].map(
    (name) => readNum(item, name) ?? 0,
  ) as [number, number, number, number];
  if (studies + instances + bytes + deleted === 0) return undefined;
  return { ...NO_TOTALS, moved: { studies, instances: deleted, bytes }, deleted };
};

const leaseKey = (leaseName: string) => key(`lease#${leaseName}`, 'lease');
/** Padded, so that the buckets sort by time. */
const movedBucketSk = (at: number) => String(movedBucketStart(at)).padStart(16, '0');
const rejectedSk = (r: RejectedInstance) => `${r.sourceId}#${r.studyId}#${r.instanceId}`;
const conflictSk = (c: ConflictKey) => `${c.sourceId}#${c.studyId}#${c.instanceId}#${c.destinationId}`;

const outcomeItem = (outcome: StudyOutcome, retentionDays: number): Item => ({
  ...key(
    `outcome#${outcome.sourceId}#${outcome.studyId}`,
    // Sorts by time; the UUID keeps two outcomes of the same millisecond apart.
    `${String(outcome.finishedAt).padStart(16, '0')}#${randomUUID()}`,
  ),
  sourceId: str(outcome.sourceId),
  studyId: str(outcome.studyId),
  result: str(outcome.result),
  instances: num(outcome.instances),
  sent: num(outcome.sent),
  alreadyPresent: num(outcome.alreadyPresent),
  deleted: num(outcome.deleted),
  rejected: num(outcome.rejected),
  conflicts: num(outcome.conflicts),
  bytes: num(outcome.bytes),
  deletedBytes: num(outcome.deletedBytes),
  durationMs: num(outcome.durationMs),
  finishedAt: num(outcome.finishedAt),
  ttl: num(epochSeconds(outcome.finishedAt) + retentionDays * DAY_S),
});

const rejectedItem = (r: RejectedInstance): Item => ({
  ...key(REJECTED_PK, rejectedSk(r)),
  sourceId: str(r.sourceId),
  studyId: str(r.studyId),
  instanceId: str(r.instanceId),
  sopInstanceUid: str(r.sopInstanceUid),
  reason: str(r.reason),
  rejectedAt: num(r.rejectedAt),
});

const conflictKey = (c: ConflictKey) => key(CONFLICT_PK, conflictSk(c));

const conflictItem = (c: Conflict): Item => ({
  ...conflictKey(c),
  sourceId: str(c.sourceId),
  studyId: str(c.studyId),
  instanceId: str(c.instanceId),
  destinationId: str(c.destinationId),
  sopInstanceUid: str(c.sopInstanceUid),
  attributes: { L: c.attributes.map(str) },
  detectedAt: num(c.detectedAt),
});

/** The key of an item kept per study and per series of it: settled studies, deletion intents. */
const studyPartition = (kind: string, sourceId: string, studyId: string) => `${kind}#${sourceId}#${studyId}`;

const seriesKey = (kind: string, sourceId: string, studyId: string, seriesId: string) =>
  key(studyPartition(kind, sourceId, studyId), seriesId === '' ? 'study' : `series#${seriesId}`);

interface SeriesFields {
  readonly sourceId: string;
  readonly studyId: string;
  readonly seriesId: string;
}

const seriesItem = (kind: string, { sourceId, studyId, seriesId }: SeriesFields): Item => ({
  ...seriesKey(kind, sourceId, studyId, seriesId),
  sourceId: str(sourceId),
  studyId: str(studyId),
  seriesId: str(seriesId),
});

const readSeries = (item: Item): SeriesFields => ({
  sourceId: readStr(item, 'sourceId') ?? '',
  studyId: readStr(item, 'studyId') ?? '',
  seriesId: readStr(item, 'seriesId') ?? '',
});

const SETTLED_RESULTS: readonly SettledStudy['result'][] = ['copied', 'partial', 'skipped'];

const toSettled = (item: Item): SettledStudy => {
  const result = readStr(item, 'result') as SettledStudy['result'];
  return {
    ...readSeries(item),
    lastUpdate: readStr(item, 'lastUpdate') ?? '',
    instances: readNum(item, 'instances') ?? 0,
    routing: readStr(item, 'routing') ?? '',
    // An unknown value would make the study look settled for a reason the engine does not know.
    result: SETTLED_RESULTS.includes(result) ? result : 'partial',
    settledAt: readNum(item, 'settledAt') ?? 0,
  };
};

const toIntent = (item: Item): DeletionIntent => {
  const completedAt = readNum(item, 'completedAt');
  return {
    ...readSeries(item),
    instances: readNum(item, 'instances') ?? 0,
    verifiedBy: (item.verifiedBy?.L ?? []).map(({ M: entry = {} }) => ({
      destinationId: readStr(entry, 'destinationId') ?? '',
      verify: readStr(entry, 'verify') ?? '',
    })),
    routing: readStr(item, 'routing') ?? '',
    at: readNum(item, 'at') ?? 0,
    ...(completedAt === undefined ? {} : { completedAt }),
  };
};

const toRejected = (item: Item): RejectedInstance => ({
  sourceId: readStr(item, 'sourceId') ?? '',
  studyId: readStr(item, 'studyId') ?? '',
  instanceId: readStr(item, 'instanceId') ?? '',
  sopInstanceUid: readStr(item, 'sopInstanceUid') ?? '',
  reason: readStr(item, 'reason') ?? '',
  rejectedAt: readNum(item, 'rejectedAt') ?? 0,
});

const toConflict = (item: Item): Conflict => {
  const resolution = readStr(item, 'resolution') as ConflictResolution | undefined;
  return {
    sourceId: readStr(item, 'sourceId') ?? '',
    studyId: readStr(item, 'studyId') ?? '',
    instanceId: readStr(item, 'instanceId') ?? '',
    destinationId: readStr(item, 'destinationId') ?? '',
    sopInstanceUid: readStr(item, 'sopInstanceUid') ?? '',
    attributes: (item.attributes?.L ?? []).map((name) => name.S ?? ''),
    detectedAt: readNum(item, 'detectedAt') ?? 0,
    ...(resolution === undefined ? {} : { resolution, resolvedAt: readNum(item, 'resolvedAt') ?? 0 }),
  };
};

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** SqliteLedger's order: by source, study, time of refusal, instance. */
const rejectedOrder = (a: RejectedInstance, b: RejectedInstance) =>
  compare(a.sourceId, b.sourceId) ||
  compare(a.studyId, b.studyId) ||
  a.rejectedAt - b.rejectedAt ||
  compare(a.instanceId, b.instanceId);

/** SqliteLedger's order: by source, study, time of detection, instance, destination. */
const conflictOrder = (a: Conflict, b: Conflict) =>
  compare(a.sourceId, b.sourceId) ||
  compare(a.studyId, b.studyId) ||
  a.detectedAt - b.detectedAt ||
  compare(a.instanceId, b.instanceId) ||
  compare(a.destinationId, b.destinationId);

/**
 * One entry per sort key, the one `replaces` prefers over those before it: what SQLite's
 * sequential writes of the same items keep, whereas parallel writes would keep any of them.
 */
const onePerKey = <T>(
  items: readonly T[],
  sk: (item: T) => string,
  replaces: (item: T, seen: T) => boolean,
) => {
  const kept = new Map<string, T>();
  for (const item of items) {
    const seen = kept.get(sk(item));
    if (seen === undefined || replaces(item, seen)) kept.set(sk(item), item);
  }
  return [...kept.values()];
};

/** The newest refusal of each instance, the later one on a tie, as SQLite's upserts keep. */
const newestPerInstance = (instances: readonly RejectedInstance[]) =>
  onePerKey(instances, rejectedSk, (instance, seen) => instance.rejectedAt >= seen.rejectedAt);

/** The first detection of each conflict, as SQLite's inserts that do nothing on a repeat keep. */
const firstPerConflict = (conflicts: readonly Conflict[]) => onePerKey(conflicts, conflictSk, () => false);

const chunks = <T>(items: readonly T[], size: number): T[][] =>
  Array.from({ length: Math.ceil(items.length / size) }, (_, index) =>
    items.slice(index * size, (index + 1) * size),
  );

export class DynamoLedger implements Ledger {
  readonly #table: StateTable;
  readonly #outcomeDays: number;
  readonly #deletions: DynamoDeletions;

  constructor(
    client: DynamoDBClient,
    tableName: string,
    options: DynamoStateOptions & { readonly outcomeDays?: number; readonly auditDays?: number } = {},
  ) {
    this.#table = new StateTable(client, tableName, options);
    this.#outcomeDays = options.outcomeDays ?? OUTCOME_DAYS;
    this.#deletions = new DynamoDeletions(
      this.#table,
      options.auditDays ?? AUDIT_DAYS,
      (sourceId, studyId, seriesId) => seriesKey(INTENT, sourceId, studyId, seriesId),
    );
  }

  /**
   * One conditional put, so that two workers cannot both see the lease free and both take it. It
   * is free when nobody holds it, its holder let it expire, or the caller holds it (a renewal).
   */
  async acquireLease(key: string, owner: string, ttlMs: number, now: number): Promise<boolean> {
    if (!(ttlMs > 0)) throw new RangeError(`lease ttlMs must be positive, got ${ttlMs}`);
    const expiresAt = now + ttlMs;
    const item = {
      ...leaseKey(key),
      owner: str(owner),
      expiresAt: num(expiresAt),
      ttl: num(epochSeconds(expiresAt) + LEASE_TTL_GRACE_S),
    };
    return this.#table.putIf(item, {
      expression: 'attribute_not_exists(pk) OR expiresAt <= :now OR #owner = :owner',
      values: { ':now': num(now), ':owner': str(owner) },
      names: { '#owner': 'owner' },
    });
  }

  /** Only the holder can release, so a worker whose lease expired cannot free its successor's. */
  async releaseLease(key: string, owner: string): Promise<void> {
    await this.#table.deleteIf(leaseKey(key), {
      expression: '#owner = :owner',
      values: { ':owner': str(owner) },
      names: { '#owner': 'owner' },
    });
  }

  /**
   * The outcome and what it adds to its source's totals, and to the bucket of movedSince when
   * something left the source, in one transaction: one request however many items.
   */
  async record(outcome: StudyOutcome): Promise<void> {
    const totals = outcomeTotals(outcome);
    const { moved } = totals;
    const bucket = this.#addTo(
      key(`${MOVED}${outcome.sourceId}`, movedBucketSk(outcome.finishedAt)),
      { studies: moved.studies, instances: moved.instances, bytes: moved.bytes },
      epochSeconds(movedBucketStart(outcome.finishedAt)) + MOVED_BUCKET_TTL_S,
    );
    await this.#table.transact([
      { Put: { TableName: this.#table.name, Item: outcomeItem(outcome, this.#outcomeDays) } },
      this.#addTo(key(TOTALS_PK, `${SOURCE_TOTALS}${outcome.sourceId}`), sourceCounts(totals)),
      ...(moved.studies + moved.instances + moved.bytes > 0 ? [bucket] : []),
    ]);
  }

  /**
   * The totals count distinct refused instances, so only a first refusal adds to them (in the
   * transaction that inserts it); a repeated one only replaces the stored refusal if it is newer.
   */
  async recordRejected(instances: readonly RejectedInstance[]): Promise<void> {
    const repeated: RejectedInstance[] = [];
    for (const chunk of chunks(newestPerInstance(instances), REJECTED_PER_TRANSACTION)) {
      repeated.push(...(await this.#insertRejected(chunk)));
    }
    await runBounded(repeated, this.#table.concurrency, async (instance) => {
      await this.#table.putIf(rejectedItem(instance), {
        expression: 'rejectedAt <= :rejectedAt',
        values: { ':rejectedAt': num(instance.rejectedAt) },
      });
    });
  }

  /**
   * Inserts the instances not refused before, adding their number to the totals; returns the
   * others. A transaction whose condition fails writes nothing, so it is tried again without the
   * instances it names until it commits.
   */
  async #insertRejected(instances: readonly RejectedInstance[]): Promise<RejectedInstance[]> {
    const repeated: RejectedInstance[] = [];
    let pending = [...instances];
    while (pending.length > 0) {
      const inserts: TransactWriteItem[] = pending.map((instance) => ({
        Put: {
          TableName: this.#table.name,
          Item: rejectedItem(instance),
          ConditionExpression: 'attribute_not_exists(sk)',
        },
      }));
      const totals = this.#addTo(TOTALS_KEY, { rejected: pending.length });
      const failed = new Set(await this.#table.transact([...inserts, totals]));
      if (failed.size === 0) break;
      repeated.push(...pending.filter((_, index) => failed.has(index)));
      pending = pending.filter((_, index) => !failed.has(index));
    }
    return repeated;
  }

  /**
   * Adds the counts to a totals item's attributes, and sets its `ttl` when given; every name
   * aliased, some are reserved words.
   */
  #addTo(itemKey: Item, counts: Record<string, number>, ttl?: number): TransactWriteItem {
    const names = Object.keys(counts);
    const values = Object.fromEntries(names.map((name) => [`:${name}`, num(counts[name] ?? 0)]));
    return {
      Update: {
        TableName: this.#table.name,
        Key: itemKey,
        UpdateExpression: `ADD ${names.map((name) => `#${name} :${name}`).join(', ')}${ttl === undefined ? '' : ' SET #ttl = :ttl'}`,
        ExpressionAttributeNames: Object.fromEntries(
          [...names, ...(ttl === undefined ? [] : ['ttl'])].map((name) => [`#${name}`, name]),
        ),
        ExpressionAttributeValues: ttl === undefined ? values : { ...values, ':ttl': num(ttl) },
      },
    };
  }

  /** The totals item keeps its count: a delete does not touch it. */
  async forgetRejected(instances: readonly RejectedInstance[]): Promise<number> {
    let forgotten = 0;
    await runBounded(instances, this.#table.concurrency, async (instance) => {
      const deleted = await this.#table.deleteIf(key(REJECTED_PK, rejectedSk(instance)), {
        expression: 'rejectedAt = :rejectedAt',
        values: { ':rejectedAt': num(instance.rejectedAt) },
      });
      if (deleted) forgotten++;
    });
    return forgotten;
  }

  async rejected(sourceId?: string, studyId?: string): Promise<RejectedInstance[]> {
    return (await this.#studyItems(REJECTED_PK, sourceId, studyId, toRejected)).sort(rejectedOrder);
  }

  /**
   * Conditional puts rather than a transaction: nothing else has to change with them, and one
   * repeated detection would cancel a transaction of new ones.
   */
  async recordConflicts(conflicts: readonly Conflict[]): Promise<void> {
    await runBounded(firstPerConflict(conflicts), this.#table.concurrency, async (conflict) => {
      await this.#table.putIf(conflictItem(conflict), { expression: 'attribute_not_exists(pk)' });
    });
  }

  async conflicts(filter: ConflictFilter = {}): Promise<Conflict[]> {
    const { sourceId, studyId, openOnly } = filter;
    const found = await this.#studyItems(CONFLICT_PK, sourceId, studyId, toConflict);
    return found.filter((c) => !openOnly || c.resolution === undefined).sort(conflictOrder);
  }

  /**
   * The key names no study, which the sort key has before the instance so that a move lists its
   * study's conflicts with one narrow query; so the conflict is looked for among its source's
   * open ones, a rarer and larger read.
   */
  async resolveConflict(key: ConflictKey, resolution: ConflictResolution, at: number): Promise<boolean> {
    if (!CONFLICT_RESOLUTIONS.includes(resolution)) throw new RangeError(`unknown resolution ${resolution}`);
    // The condition keeps the decision of an operator who resolved it meanwhile.
    return this.#table.updateIf(conflictKey(key), 'SET resolution = :resolution, resolvedAt = :at', {
      expression: 'attribute_exists(pk) AND attribute_not_exists(resolution)',
      values: { ':resolution': str(resolution), ':at': num(at) },
    });
  }

  /**
   * The items of a partition whose sort key starts with `<sourceId>#<studyId>#`, narrowed by sort
   * key prefix, then filtered on the stored fields so that an ID containing '#' cannot match
   * another's prefix.
   */
  async #studyItems<T extends { sourceId: string; studyId: string }>(
    pk: string,
    sourceId: string | undefined,
    studyId: string | undefined,
    decode: (item: Item) => T,
  ): Promise<T[]> {
    const prefix =
      sourceId === undefined ? undefined : studyId === undefined ? `${sourceId}#` : `${sourceId}#${studyId}#`;
    return (await this.#table.query(pk, prefix))
      .map(decode)
      .filter(
        (found) =>
          (sourceId === undefined || found.sourceId === sourceId) &&
          (studyId === undefined || found.studyId === studyId),
      );
  }

  /**
   * An unconditional put, for SqliteLedger's reasons: the last written wins whatever its time,
   * and it is open (no completedAt) whatever the caller copied it from.
   */
  async recordIntent(intent: DeletionIntent): Promise<void> {
    const verifiedBy = intent.verifiedBy.map(({ destinationId, verify }) => ({
      M: { destinationId: str(destinationId), verify: str(verify) },
    }));
    const item = {
      ...seriesItem(INTENT, intent),
      instances: num(intent.instances),
      verifiedBy: { L: verifiedBy },
      routing: str(intent.routing),
      at: num(intent.at),
    };
    await this.#table.client.send(new PutItemCommand({ TableName: this.#table.name, Item: item }));
  }

  async intents(sourceId: string, studyId: string): Promise<DeletionIntent[]> {
    return (await this.#table.query(studyPartition(INTENT, sourceId, studyId))).map(toIntent);
  }

  /** The condition keeps the first completion, and brings back no intent that is not there. */
  async completeIntent(sourceId: string, studyId: string, seriesId: string, at: number): Promise<void> {
    await this.#table.updateIf(seriesKey(INTENT, sourceId, studyId, seriesId), 'SET completedAt = :at', {
      expression: 'attribute_exists(pk) AND attribute_not_exists(completedAt)',
      values: { ':at': num(at) },
    });
  }

  async recordSettled(study: SettledStudy): Promise<void> {
    await this.#table.putIf(
      {
        ...seriesItem(SETTLED, study),
        lastUpdate: str(study.lastUpdate),
        instances: num(study.instances),
        routing: str(study.routing),
        result: str(study.result),
        settledAt: num(study.settledAt),
      },
      // The newest wins, whatever order two workers write in, as SQLite's sequential upserts keep.
      {
        expression: 'attribute_not_exists(sk) OR settledAt <= :settledAt',
        values: { ':settledAt': num(study.settledAt) },
      },
    );
  }

  async settled(sourceId: string, studyId: string, seriesId: string): Promise<SettledStudy | undefined> {
    const item = await this.#table.get(seriesKey(SETTLED, sourceId, studyId, seriesId));
    return item === undefined ? undefined : toSettled(item);
  }

  /** One query: the sources' totals items and the one of the whole table. */
  async totals(): Promise<Totals> {
    const items = await this.#table.query(TOTALS_PK);
    const sources: Record<string, SourceTotals> = {};
    let rejected = 0;
    for (const item of items) {
      const sk = readStr(item, 'sk') ?? '';
      if (sk.startsWith(SOURCE_TOTALS)) sources[sk.slice(SOURCE_TOTALS.length)] = toSourceTotals(item);
      if (sk !== 'totals') continue;
      rejected = readNum(item, 'rejected') ?? 0;
      const legacy = legacyTotals(item);
      if (legacy !== undefined) sources[''] = legacy;
    }
    return sumTotals(sources, rejected);
  }

  async recordDeletion(deletion: DeletionRecord): Promise<void> {
    await this.#deletions.record(deletion);
  }

  async confirmDeletion(key: DeletionKey, stillAtSource: ReadonlySet<string>): Promise<void> {
    await this.#deletions.confirm(key, stillAtSource);
  }

  async deletions(
    query: DeletionQuery,
    page: { readonly after?: string | undefined; readonly limit: number },
  ): Promise<DeletionPage> {
    return this.#deletions.page(query, page);
  }

  /** One query of the source's buckets from the one that holds `since`: a day is 289 small items. */
  async movedSince(sourceId: string, since: number): Promise<Tally> {
    const buckets = await this.#table.queryFrom(`${MOVED}${sourceId}`, movedBucketSk(since));
    const sum = (name: string) => buckets.reduce((total, item) => total + (readNum(item, name) ?? 0), 0);
    return { studies: sum('studies'), instances: sum('instances'), bytes: sum('bytes') };
  }
}
