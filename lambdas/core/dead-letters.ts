/**
 * A dead letter as `dlq list` shows it, the same in local mode and on AWS: the work item (Orthanc
 * IDs only) and the last error, never the body itself. Apart from lambdas/aws/operations.ts so
 * that local mode's `dlq list` does not load the AWS SDK.
 */
import type { DeadLetter, DeadLetterFilter, WorkItem } from './ports.ts';
import { decodeWorkItem } from './work-item.ts';

export interface DeadLetterEntry {
  readonly messageId: string;
  /** When the message was sent to the DLQ (epoch ms): by the forwarder, or by the SQS redrive policy. */
  readonly sentAt: number | undefined;
  /** The work item; undefined when the body is not one (then it is not shown, only its size). */
  readonly item: WorkItem | undefined;
  readonly bodyBytes: number;
  /**
   * The forwarder's last error and the receive count it was dead-lettered at; undefined for a
   * message the queue's redrive policy moved (every attempt timed out or crashed the function).
   */
  readonly lastError: string | undefined;
  readonly receiveCount: number | undefined;
}

/** A dead letter as `dlq list` shows it; the body only as the work item it decodes to. */
export const deadLetterEntry = (letter: {
  readonly messageId: string;
  readonly body: string;
  readonly sentAt: number | undefined;
  readonly lastError: string | undefined;
  readonly receiveCount: number | undefined;
}): DeadLetterEntry => {
  let item: WorkItem | undefined;
  try {
    item = decodeWorkItem(letter.body);
  } catch {
    item = undefined;
  }
  return {
    messageId: letter.messageId,
    sentAt: letter.sentAt,
    item,
    bodyBytes: Buffer.byteLength(letter.body),
    lastError: letter.lastError,
    receiveCount: letter.receiveCount,
  };
};

/** The local work queue's dead letters as `dlq list` shows them, one at a time. */
export async function* entriesOf(letters: AsyncIterable<DeadLetter>): AsyncGenerator<DeadLetterEntry> {
  for await (const letter of letters) {
    yield deadLetterEntry({ ...letter, messageId: letter.id, sentAt: letter.deadLetteredAt });
  }
}

const describeItem = (entry: DeadLetterEntry): string => {
  if (entry.item === undefined) return `not a work item (${entry.bodyBytes} bytes, not shown)`;
  const { sourceId, studyId, ...rest } = entry.item;
  const extra = Object.entries(rest)
    .map(([key, value]) => `${key} ${String(value)}`)
    .join(', ');
  return `source ${sourceId} study ${studyId}${extra === '' ? '' : ` (${extra})`}`;
};

/** `dlq list`: the first `limit` entries; given more, it says that there are more. */
export const formatDeadLetters = (
  entries: readonly DeadLetterEntry[],
  limit = Number.POSITIVE_INFINITY,
): string => {
  if (entries.length === 0) return 'the dead-letter queue is empty';
  const more = entries.length > limit;
  const lines = [more ? `the first ${limit} dead letter(s):` : `${entries.length} dead letter(s):`];
  for (const entry of entries.slice(0, limit)) {
    const when = entry.sentAt === undefined ? 'unknown time' : new Date(entry.sentAt).toISOString();
    const why =
      entry.lastError === undefined
        ? "no recorded error: moved by the queue's redrive policy (the function timed out or crashed on every attempt); look for the message ID in the forwarder's logs"
        : `${entry.lastError} (after ${entry.receiveCount ?? '?'} receive(s))`;
    lines.push(`  ${entry.messageId}  ${when}  ${describeItem(entry)}`, `    ${why}`);
  }
  if (more) lines.push(`and more: raise --limit, or group them with --group-by error`);
  return lines.join('\n');
};

/** What a dead letter has of its own when the queue's redrive policy, not the forwarder, moved it. */
export const NO_RECORDED_ERROR = "no recorded error (moved by the queue's redrive policy)";

/** A URL's origin: it names the server, so it is kept as it is. */
const ORIGIN = /(https?:\/\/[^\s/'"),]+)/;
const VARYING: readonly (readonly [RegExp, (match: string, ...groups: string[]) => string])[] = [
  // Orthanc IDs, UUIDs.
  [/\b[0-9a-f]{8}(?:-[0-9a-f]{8}){4}\b|\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b/gi, () => '<id>'],
  // DICOM UIDs: numbers joined by dots, three at least.
  [/(?<![\w.])\d+(?:\.\d+){2,}(?![\w.])/g, () => '<uid>'],
  // Any other number standing on its own, with a unit if it has one; not one inside a name
  // (`site-2`, `0xA700`). An HTTP status after "answered" stays: 404 and 503 are other failures.
  [
    /(\banswered )?(?<![\w.-])\d+(?:\.\d+)?(ms|s|B|KB|MB|GB|KiB|MiB|GiB)?(?![\w-])/g,
    (match, answered = '', unit = '') =>
      answered !== '' && /^answered \d{3}$/.test(match) ? match : `${answered}N${unit}`,
  ],
];

/**
 * The error a dead letter (or a refusal) is grouped under: the same failure of other studies
 * reads the same. URL origins stay as they are (they name the server), and so does an HTTP status
 * after "answered"; Orthanc IDs and UUIDs become `<id>`, DICOM UIDs `<uid>`, and every other
 * number standing on its own (a count, a size, a duration) `N`.
 */
export const errorGroup = (error: string): string =>
  error
    .split(ORIGIN)
    .map((part, index) =>
      // split() puts the captured origins at the odd indices.
      index % 2 === 1
        ? part
        : VARYING.reduce((text, [pattern, replacement]) => text.replace(pattern, replacement), part),
    )
    .join('');

/** Whether a dead letter is one the filter selects: its source, and its error as recorded or as grouped. */
export const matchesDeadLetter = (
  filter: DeadLetterFilter,
  letter: { readonly sourceId: string | undefined; readonly lastError: string | undefined },
): boolean => {
  if (filter.sourceId !== undefined && letter.sourceId !== filter.sourceId) return false;
  if (filter.error === undefined) return true;
  const wanted = filter.error.toLowerCase();
  const error = letter.lastError ?? NO_RECORDED_ERROR;
  return error.toLowerCase().includes(wanted) || errorGroup(error).toLowerCase().includes(wanted);
};

/** Dead letters (or refusals) that failed alike: how many, and when the newest of them did. */
export interface ErrorGroup {
  readonly error: string;
  readonly count: number;
  /** Epoch ms; undefined when none of them has a time. */
  readonly newestAt: number | undefined;
}

/**
 * Groups by errorGroup(), the largest groups first (the newest first among equals). It keeps one
 * entry per group, so memory grows with the kinds of failure, not with the dead letters.
 */
export const groupByError = async <T>(
  items: AsyncIterable<T> | Iterable<T>,
  read: (item: T) => { readonly error: string | undefined; readonly at: number | undefined },
): Promise<ErrorGroup[]> => {
  const groups = new Map<string, { count: number; newestAt: number | undefined }>();
  for await (const item of items) {
    const { error, at } = read(item);
    const key = errorGroup(error ?? NO_RECORDED_ERROR);
    const group = groups.get(key) ?? { count: 0, newestAt: undefined };
    group.count++;
    if (at !== undefined && (group.newestAt === undefined || at > group.newestAt)) group.newestAt = at;
    groups.set(key, group);
  }
  return [...groups]
    .map(([error, group]) => ({ error, ...group }))
    .sort((a, b) => b.count - a.count || (b.newestAt ?? 0) - (a.newestAt ?? 0));
};

/** `dlq list --group-by error`: one line per group, at most `limit` of them. */
export const formatErrorGroups = (
  groups: readonly ErrorGroup[],
  limit = Number.POSITIVE_INFINITY,
): string => {
  if (groups.length === 0) return 'the dead-letter queue is empty';
  const total = groups.reduce((sum, group) => sum + group.count, 0);
  const more = groups.length - limit;
  return [
    `${total} dead letter(s) in ${groups.length} group(s) by error (numbers as N, Orthanc IDs as <id>, DICOM UIDs as <uid>):`,
    'COUNT\tNEWEST\tERROR',
    ...groups
      .slice(0, limit)
      .map(
        (g) =>
          `${g.count}\t${g.newestAt === undefined ? '-' : new Date(g.newestAt).toISOString()}\t${g.error}`,
      ),
    ...(more > 0 ? [`and ${more} more group(s): raise --limit`] : []),
  ].join('\n');
};

/** What `dlq list` prints: the dead letters, or their groups by error; `limit` rows at most. */
export const listingOf = async (
  entries: AsyncIterable<DeadLetterEntry> | Iterable<DeadLetterEntry>,
  options: { readonly groupByError: boolean; readonly limit: number; readonly json: boolean },
): Promise<string> => {
  const { limit, json } = options;
  if (options.groupByError) {
    const groups = await groupByError(entries, (entry) => ({ error: entry.lastError, at: entry.sentAt }));
    return json ? JSON.stringify(groups.slice(0, limit)) : formatErrorGroups(groups, limit);
  }
  // One more than shown, to tell whether there are more.
  const first: DeadLetterEntry[] = [];
  for await (const entry of entries) {
    first.push(entry);
    if (first.length > limit) break;
  }
  return json ? JSON.stringify(first.slice(0, limit)) : formatDeadLetters(first, limit);
};
