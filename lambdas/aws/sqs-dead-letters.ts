/**
 * The forwarder's side of SQS beyond what the event source mapping does: dead-letter a message
 * at once (a malformed body will never parse, so it must not wait for maxReceiveCount), delay a
 * retry with backoff instead of the queue's fixed visibility timeout, and start the count afresh
 * after an attempt that made progress.
 */
import { ChangeMessageVisibilityCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';

/** SQS caps a visibility timeout at 12 hours, and a message's delay at 15 minutes. */
const MAX_VISIBILITY_SECONDS = 12 * 60 * 60;
const MAX_DELAY_SECONDS = 15 * 60;

export class SqsDeadLetters {
  private readonly client: SQSClient;
  private readonly queueUrl: string;
  private readonly deadLetterQueueUrl: string;

  constructor(client: SQSClient, urls: { queueUrl: string; deadLetterQueueUrl: string }) {
    this.client = client;
    this.queueUrl = urls.queueUrl;
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
      new SendMessageCommand({ QueueUrl: this.queueUrl, MessageBody: body, DelaySeconds: seconds }),
    );
  }

  async retryAfter(receiptHandle: string, delayMs: number): Promise<void> {
    const seconds = Math.min(MAX_VISIBILITY_SECONDS, Math.max(0, Math.round(delayMs / 1000)));
    await this.client.send(
      new ChangeMessageVisibilityCommand({
        QueueUrl: this.queueUrl,
        ReceiptHandle: receiptHandle,
        VisibilityTimeout: seconds,
      }),
    );
  }
}
