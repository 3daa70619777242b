/**
 * What the AWS tests share: the depth of a queue, and the event source mapping's loop over it.
 * (The environment that points the AWS SDK at the emulators is testbed/sqs-emulator.ts's
 * `emulatorEnv`.)
 */
import { GetQueueAttributesCommand, type SQSClient } from '@aws-sdk/client-sqs';
import type { Context, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { type DeliveryReport, deliverOnce } from '../../testbed/event-source-mapping.ts';
import { emulatorEnv } from '../../testbed/sqs-emulator.ts';

/** The environment the handlers run in, in the test's process: the emulators, and what Powertools needs. */
export const handlerEnv = (endpoints: { readonly dynamodb: string; readonly sqs: string }) => ({
  ...emulatorEnv(endpoints),
  AWS_LAMBDA_FUNCTION_NAME: 'orthanc-forwarder-test',
  POWERTOOLS_METRICS_NAMESPACE: 'OrthancForwarderTest',
  POWERTOOLS_LOG_LEVEL: 'WARN',
});

/** Messages on a queue, visible or in flight. */
export const queueDepth = async (sqs: SQSClient, queueUrl: string): Promise<number> => {
  const answer = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: queueUrl,
      AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
    }),
  );
  const attributes = answer.Attributes ?? {};
  return (
    Number(attributes.ApproximateNumberOfMessages) + Number(attributes.ApproximateNumberOfMessagesNotVisible)
  );
};

export interface Mapping {
  readonly sqs: SQSClient;
  readonly queueUrl: string;
  readonly handler: (event: SQSEvent, context: Context) => Promise<SQSBatchResponse>;
}

/** Waits between two polls of the mapping that found nothing visible. */
const idle = () => new Promise((resolve) => setTimeout(resolve, 200));

/**
 * The mapping's loop: deliver until the queue is empty, `rounds` polls at most, 200 ms apart when
 * nothing was visible (bounded by a count, never timed). Returns each poll's report.
 */
export const drainQueue = async (mapping: Mapping, rounds = 50): Promise<DeliveryReport[]> => {
  const deliveries: DeliveryReport[] = [];
  for (let round = 0; round < rounds && (await queueDepth(mapping.sqs, mapping.queueUrl)) > 0; round++) {
    const report = await deliverOnce(mapping);
    deliveries.push(report);
    if (report.received === 0) await idle();
  }
  return deliveries;
};

/**
 * The mapping's next invocation: polls (`rounds` at most, 200 ms apart) until a message is visible
 * again, e.g. once its backoff ended, and delivers it. Reports nothing received if none came.
 */
export const deliverNext = async (mapping: Mapping, rounds = 50): Promise<DeliveryReport> => {
  for (let round = 1; ; round++) {
    const report = await deliverOnce(mapping);
    if (report.received > 0 || round >= rounds) return report;
    await idle();
  }
};
