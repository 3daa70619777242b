/**
 * A dead letter as `dlq list` shows it, the same in local mode and on AWS: the work item (Orthanc
 * IDs only) and the last error, never the body itself. Apart from lambdas/aws/operations.ts so
 * that local mode's `dlq list` does not load the AWS SDK.
 */
import type { WorkItem } from './ports.ts';
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

const describeItem = (entry: DeadLetterEntry): string => {
  if (entry.item === undefined) return `not a work item (${entry.bodyBytes} bytes, not shown)`;
  const { sourceId, studyId, ...rest } = entry.item;
  const extra = Object.entries(rest)
    .map(([key, value]) => `${key} ${String(value)}`)
    .join(', ');
  return `source ${sourceId} study ${studyId}${extra === '' ? '' : ` (${extra})`}`;
};

export const formatDeadLetters = (entries: readonly DeadLetterEntry[]): string => {
  if (entries.length === 0) return 'the dead-letter queue is empty';
  const lines = [`${entries.length} dead letter(s):`];
  for (const entry of entries) {
    const when = entry.sentAt === undefined ? 'unknown time' : new Date(entry.sentAt).toISOString();
    const why =
      entry.lastError === undefined
        ? "no recorded error: moved by the queue's redrive policy (the function timed out or crashed on every attempt); look for the message ID in the forwarder's logs"
        : `${entry.lastError} (after ${entry.receiveCount ?? '?'} receive(s))`;
    lines.push(`  ${entry.messageId}  ${when}  ${describeItem(entry)}`, `    ${why}`);
  }
  return lines.join('\n');
};
