/**
 * Queues work items on SQS: SendMessageBatch with at most 10 entries and 256 KiB a call,
 * resending the entries SQS reports as failed. Resolving means every item is on the queue: a
 * `backlog` item on the backlog queue, every other on the work queue, each drained by its own
 * event source mapping, so that new studies never wait behind the backlog.
 */

import { setTimeout as sleep } from 'node:timers/promises';
import {
  SendMessageBatchCommand,
  type SendMessageBatchRequestEntry,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { transient } from '../core/errors.ts';
import type { WorkItem, WorkSink } from '../core/ports.ts';
import { backoffDelay } from '../core/retry.ts';
import { encodeWorkItem, priorityOf } from '../core/work-item.ts';

const MAX_ENTRIES = 10;
const MAX_BATCH_BYTES = 256 * 1024;

/** Cuts entries into batches SQS accepts: at most 10 entries and 256 KiB of bodies each. */
export const batchEntries = (bodies: readonly string[]): SendMessageBatchRequestEntry[][] => {
  const batches: SendMessageBatchRequestEntry[][] = [];
  let batch: SendMessageBatchRequestEntry[] = [];
  let bytes = 0;
  bodies.forEach((body, index) => {
    const size = Buffer.byteLength(body);
    if (batch.length === MAX_ENTRIES || (batch.length > 0 && bytes + size > MAX_BATCH_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push({ Id: String(index), MessageBody: body });
    bytes += size;
  });
  if (batch.length > 0) batches.push(batch);
  return batches;
};

/** The queue a body goes to: the backlog queue for a `backlog` item, when there is one. */
export const queueFor = (body: string, urls: { queueUrl: string; backlogQueueUrl?: string | undefined }) =>
  priorityOf(body) === 'backlog' ? (urls.backlogQueueUrl ?? urls.queueUrl) : urls.queueUrl;

export class SqsWorkSink implements WorkSink {
  private readonly client: SQSClient;
  private readonly urls: { queueUrl: string; backlogQueueUrl?: string | undefined };
  private readonly attempts: number;

  /** Without `backlogQueueUrl`, the backlog goes to the work queue too. */
  constructor(
    client: SQSClient,
    queueUrl: string,
    options: { attempts?: number; backlogQueueUrl?: string | undefined } = {},
  ) {
    this.client = client;
    this.urls = { queueUrl, backlogQueueUrl: options.backlogQueueUrl };
    this.attempts = options.attempts ?? 5;
  }

  async enqueue(items: readonly WorkItem[]): Promise<void> {
    await this.enqueueBodies(items.map(encodeWorkItem));
  }

  /** Queues message bodies as they are (dead letters put back, operations.ts), each on its priority's queue. */
  async enqueueBodies(bodies: readonly string[]): Promise<void> {
    const byQueue = Map.groupBy(bodies, (body) => queueFor(body, this.urls));
    for (const [queueUrl, ofQueue] of byQueue) {
      for (const batch of batchEntries(ofQueue)) await this.sendBatch(queueUrl, batch);
    }
  }

  private async sendBatch(queueUrl: string, entries: SendMessageBatchRequestEntry[]): Promise<void> {
    let pending = entries;
    for (let attempt = 1; pending.length > 0; attempt++) {
      const answer = await this.client.send(
        new SendMessageBatchCommand({ QueueUrl: queueUrl, Entries: pending }),
      );
      const failed = new Set((answer.Failed ?? []).map((failure) => failure.Id));
      pending = pending.filter((entry) => failed.has(entry.Id));
      if (pending.length === 0) return;
      if (attempt >= this.attempts) {
        throw transient(`SQS refused ${pending.length} work item(s) after ${attempt} attempts`);
      }
      await sleep(backoffDelay(attempt, { baseDelayMs: 100, maxDelayMs: 2_000 }));
    }
  }
}
