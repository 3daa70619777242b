/**
 * The audit trail of deletions on DynamoDB, with the semantics of SqliteDeletions: one item per
 * part of a recorded deletion (audit.ts), pk `audit#<UTC day of at>`, sk
 * `<at, 16 digits>#<sourceId>#<studyId>#<seriesId>#<part, 4 digits>`, so that a period is read by
 * a Query per day, never a Scan. Its fields: sourceId, studyId, seriesId, at, part,
 * studyInstanceUid, verifiedBy as a list of maps {destinationId, verify}, instances as a list of
 * strings (audit.ts encodes them), confirmed once a later move confirmed it, and ttl
 * `retention.auditDays` after at. A part holds at most DELETION_PART_SIZE instances of about
 * 160 bytes: within DynamoDB's 400 KB per item.
 */
import { decodeDeleted, deletionParts, deletionStatus, encodeDeleted } from '../core/audit.ts';
import type {
  AuditedDeletion,
  DeletionKey,
  DeletionPage,
  DeletionQuery,
  DeletionRecord,
} from '../core/ports.ts';
import { DAY_MS } from '../core/retention.ts';
import { epochSeconds, type Item, key, num, readNum, readStr, type StateTable, str } from './dynamo-table.ts';

const DAY_S = DAY_MS / 1000;

const pad = (value: number, digits: number) => String(value).padStart(digits, '0');

const day = (epochMs: number) => new Date(epochMs).toISOString().slice(0, 10);

const partition = (epochMs: number) => `audit#${day(epochMs)}`;

/** The sort key up to the part: `begins_with` it finds every part of one deletion. */
const deletionPrefix = (k: DeletionKey) => `${pad(k.at, 16)}#${k.sourceId}#${k.studyId}#${k.seriesId}#`;

const readKey = (item: Item): DeletionKey => ({
  sourceId: readStr(item, 'sourceId') ?? '',
  studyId: readStr(item, 'studyId') ?? '',
  seriesId: readStr(item, 'seriesId') ?? '',
  at: readNum(item, 'at') ?? 0,
});

const sameKey = (a: DeletionKey, b: DeletionKey) =>
  a.at === b.at && a.sourceId === b.sourceId && a.studyId === b.studyId && a.seriesId === b.seriesId;

const studyKey = (k: Omit<DeletionKey, 'at'>) => `${k.sourceId}\n${k.studyId}\n${k.seriesId}`;

/** Where the study's (or series') last intent is, as DynamoLedger keeps it. */
export type IntentKeyOf = (sourceId: string, studyId: string, seriesId: string) => Item;

export class DynamoDeletions {
  readonly #table: StateTable;
  readonly #auditDays: number;
  readonly #intentKey: IntentKeyOf;

  constructor(table: StateTable, auditDays: number, intentKey: IntentKeyOf) {
    this.#table = table;
    this.#auditDays = auditDays;
    this.#intentKey = intentKey;
  }

  /** Every part in batches: one request for up to 25 parts (25,000 instances). */
  async record(deletion: DeletionRecord): Promise<void> {
    const verifiedBy = deletion.verifiedBy.map(({ destinationId, verify }) => ({
      M: { destinationId: str(destinationId), verify: str(verify) },
    }));
    await this.#table.putAll(
      deletionParts(deletion).map(({ part, instances }) => ({
        ...key(partition(deletion.at), `${deletionPrefix(deletion)}${pad(part, 4)}`),
        sourceId: str(deletion.sourceId),
        studyId: str(deletion.studyId),
        seriesId: str(deletion.seriesId),
        at: num(deletion.at),
        part: num(part),
        studyInstanceUid: str(deletion.studyInstanceUid),
        verifiedBy: { L: verifiedBy },
        instances: { L: instances.map((instance) => str(encodeDeleted(instance))) },
        ttl: num(epochSeconds(deletion.at) + this.#auditDays * DAY_S),
      })),
    );
  }

  /**
   * Each unconfirmed part keeps the instances gone from the source; a part left empty goes. Not
   * one transaction: a confirmation cut short is made again, part by part, by the next move.
   */
  async confirm(deletionKey: DeletionKey, stillAtSource: ReadonlySet<string>): Promise<void> {
    const parts = (await this.#table.query(partition(deletionKey.at), deletionPrefix(deletionKey))).filter(
      (item) => sameKey(readKey(item), deletionKey) && item.confirmed?.BOOL !== true,
    );
    const kept: Item[] = [];
    const emptied: Item[] = [];
    for (const item of parts) {
      const gone = (item.instances?.L ?? []).filter(
        (entry) => !stillAtSource.has(decodeDeleted(entry.S ?? '').instanceId),
      );
      if (gone.length === 0) emptied.push(key(readStr(item, 'pk') ?? '', readStr(item, 'sk') ?? ''));
      else kept.push({ ...item, instances: { L: gone }, confirmed: { BOOL: true } });
    }
    await this.#table.putAll(kept);
    await this.#table.deleteAll(emptied);
  }

  /** Day by day from the page's start: `next` is the last part's sort key. */
  async page(
    query: DeletionQuery,
    page: { readonly after?: string | undefined; readonly limit: number },
  ): Promise<DeletionPage> {
    const low = pad(query.since, 16);
    // Past every part of the period's last millisecond: '~' sorts after the '#' that follows it.
    const high = `${pad(query.until - 1, 16)}~`;
    const from = page.after === undefined ? query.since : Number(page.after.slice(0, 16));
    const items: Item[] = [];
    for (
      let dayStart = from - (from % DAY_MS);
      dayStart < query.until && items.length < page.limit;
      dayStart += DAY_MS
    ) {
      const after = page.after !== undefined && day(dayStart) === day(from) ? page.after : undefined;
      items.push(
        ...(await this.#table.queryBetween(partition(dayStart), low, high, after, page.limit - items.length)),
      );
    }
    const found = items.filter(
      (item) => query.sourceId === undefined || readStr(item, 'sourceId') === query.sourceId,
    );
    const deletions = await this.#withStatus(found);
    const next = items.length < page.limit ? undefined : readStr(items.at(-1) ?? {}, 'sk');
    return { deletions, ...(next === undefined ? {} : { next }) };
  }

  /** Reads the last intent of each study (or series) with an unconfirmed part, in batches. */
  async #withStatus(items: readonly Item[]): Promise<AuditedDeletion[]> {
    const unconfirmed = new Map<string, DeletionKey>();
    for (const item of items) {
      const k = readKey(item);
      if (item.confirmed?.BOOL !== true) unconfirmed.set(studyKey(k), k);
    }
    const intents = new Map(
      (
        await this.#table.getAll(
          [...unconfirmed.values()].map((k) => this.#intentKey(k.sourceId, k.studyId, k.seriesId)),
        )
      ).map((intent) => [
        studyKey({
          sourceId: readStr(intent, 'sourceId') ?? '',
          studyId: readStr(intent, 'studyId') ?? '',
          seriesId: readStr(intent, 'seriesId') ?? '',
        }),
        { at: readNum(intent, 'at') ?? 0, completedAt: readNum(intent, 'completedAt') },
      ]),
    );
    return items.map((item) => {
      const k = readKey(item);
      return {
        ...k,
        part: readNum(item, 'part') ?? 0,
        studyInstanceUid: readStr(item, 'studyInstanceUid') ?? '',
        verifiedBy: (item.verifiedBy?.L ?? []).map(({ M: entry = {} }) => ({
          destinationId: readStr(entry, 'destinationId') ?? '',
          verify: readStr(entry, 'verify') ?? '',
        })),
        instances: (item.instances?.L ?? []).map((entry) => decodeDeleted(entry.S ?? '')),
        status: deletionStatus(item.confirmed?.BOOL === true, k.at, intents.get(studyKey(k))),
      };
    });
  }
}
