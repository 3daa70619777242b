/**
 * The forwarder's side of SQS beyond what the event source mapping does: dead-letter a message
 * at once (a malformed body will never parse, so it must not wait for maxReceiveCount), delay a
 * retry with backoff instead of the queue's fixed visibility timeout, and start the count afresh
 * after an attempt that made progress.
 */
import { ChangeMessageVisibilityCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { queueFor } from './sqs-work-sink.ts';

/** SQS caps a visibility timeout at 12 hours, and a message's delay at 15 minutes. */
const MAX_VISIBILITY_SECONDS = 12 * 60 * 60;
const MAX_DELAY_SECONDS = 15 * 60;
/** The longest a requeued message can stay out of sight. */
export const MAX_REQUEUE_DELAY_MS = MAX_DELAY_SECONDS * 1000;

export class SqsDeadLetters {
  private readonly client: SQSClient;
  /** The work queue, and the backlog queue when there is one: a retry goes back to its priority's queue. */
  private readonly queues: { queueUrl: string; backlogQueueUrl?: string | undefined };
  private readonly deadLetterQueueUrl: string;

  constructor(
    client: SQSClient,
    urls: { queueUrl: string; backlogQueueUrl?: string | undefined; deadLetterQueueUrl: string },
  ) {
    this.client = client;
    this.queues = { queueUrl: urls.queueUrl, backlogQueueUrl: urls.backlogQueueUrl };
    this.deadLetterQueueUrl = urls.deadLetterQueueUrl;
  }

  /** Copies the message to the DLQ with its last error; the caller then reports it processed. */
  async deadLetter(body: string, error: string, receiveCount: number): Promise<void> {
    await this.client.send(
      new SendMessageCommand({
        QueueUrl: this.deadLetterQueueUrl,
        MessageBody: body,
        MessageAttributes: {
          lastError: { DataType: 'String', StringValue: error.slice(0, 1024) || 'unknown' },
          receiveCount: { DataType: 'Number', StringValue: String(receiveCount) },
        },
      }),
    );
  }

  /**
   * Queues the body again as a new message, with a fresh receive count (SQS's cannot be lowered):
   * the retry of an attempt that made progress. The caller then reports the old one processed.
   */
  async requeue(body: string, delayMs: number): Promise<void> {
    const seconds = Math.min(MAX_DELAY_SECONDS, Math.max(0, Math.round(delayMs / 1000)));
    await this.client.send(
      new SendMessageCommand({
        QueueUrl: queueFor(body, this.queues),
        MessageBody: body,
        DelaySeconds: seconds,
      }),
    );
  }

  /** Delays a received message: `body` tells which queue it was received from. */
  async retryAfter(body: string, receiptHandle: string, delayMs: number): Promise<void> {
    const seconds = Math.min(MAX_VISIBILITY_SECONDS, Math.max(0, Math.round(delayMs / 1000)));
    await this.client.send(
      new ChangeMessageVisibilityCommand({
        QueueUrl: queueFor(body, this.queues),
        ReceiptHandle: receiptHandle,
        VisibilityTimeout: seconds,
      }),
    );
  }
}
