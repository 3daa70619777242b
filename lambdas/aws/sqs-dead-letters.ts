/**
 * The forwarder's side of SQS beyond what the event source mapping does: dead-letter a message
 * at once (a malformed body will never parse, so it must not wait for maxReceiveCount), and
 * delay a retry with backoff instead of the queue's fixed visibility timeout.
 */
import { ChangeMessageVisibilityCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';

/** SQS caps a visibility timeout at 12 hours. */
const MAX_VISIBILITY_SECONDS = 12 * 60 * 60;

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
