/**
 * A small stand-in for Lambda's SQS event source mapping: receives from the queue, invokes the
 * handler with a real-shaped SQSEvent, deletes the records it did not report as failed, and
 * leaves the failures to come back after their visibility timeout.
 */
import {
  DeleteMessageBatchCommand,
  type Message,
  ReceiveMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import type { Context, SQSBatchResponse, SQSEvent, SQSRecord } from 'aws-lambda';
import { lambdaContext } from './lambda-context.ts';

// What the tests that run the handlers in their own process invoke them with, beside the mapping.
export { lambdaContext };

const toRecord = (message: Message, queueArn: string): SQSRecord => ({
  messageId: message.MessageId ?? '',
  receiptHandle: message.ReceiptHandle ?? '',
  body: message.Body ?? '',
  attributes: {
    ApproximateReceiveCount: message.Attributes?.ApproximateReceiveCount ?? '1',
    SentTimestamp: message.Attributes?.SentTimestamp ?? String(Date.now()),
    SenderId: 'test',
    ApproximateFirstReceiveTimestamp:
      message.Attributes?.ApproximateFirstReceiveTimestamp ?? String(Date.now()),
  },
  messageAttributes: {},
  md5OfBody: message.MD5OfBody ?? '',
  eventSource: 'aws:sqs',
  eventSourceARN: queueArn,
  awsRegion: 'us-east-1',
});

export interface DeliveryReport {
  readonly received: number;
  readonly failed: number;
}

/** One poll of the mapping: up to `batchSize` messages, one invocation. */
export const deliverOnce = async (options: {
  sqs: SQSClient;
  queueUrl: string;
  handler: (event: SQSEvent, context: Context) => Promise<SQSBatchResponse>;
  batchSize?: number;
}): Promise<DeliveryReport> => {
  const answer = await options.sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: options.queueUrl,
      MaxNumberOfMessages: options.batchSize ?? 1,
      MessageSystemAttributeNames: ['All'],
      WaitTimeSeconds: 0,
    }),
  );
  const messages = answer.Messages ?? [];
  if (messages.length === 0) return { received: 0, failed: 0 };
  const event: SQSEvent = {
    Records: messages.map((m) => toRecord(m, 'arn:aws:sqs:us-east-1:000000000000:work')),
  };
  const response = await options.handler(event, lambdaContext('forwarder'));
  const failed = new Set(response.batchItemFailures.map((failure) => failure.itemIdentifier));
  const succeeded = messages.filter((m) => !failed.has(m.MessageId ?? ''));
  if (succeeded.length > 0) {
    await options.sqs.send(
      new DeleteMessageBatchCommand({
        QueueUrl: options.queueUrl,
        Entries: succeeded.map((m, index) => ({ Id: String(index), ReceiptHandle: m.ReceiptHandle ?? '' })),
      }),
    );
  }
  return { received: messages.length, failed: failed.size };
};
