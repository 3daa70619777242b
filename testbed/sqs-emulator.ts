/**
 * An SQS emulator (fauxqs) in the calling process (a test or the benchmark), with a work queue, a
 * backlog queue and their dead-letter queue set up as the stack sets them up (redrive policy,
 * maxReceiveCount).
 */
import { SQSClient } from '@aws-sdk/client-sqs';
import { startFauxqs } from 'fauxqs';

export const LOCAL_CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' } as const;
export const LOCAL_REGION = 'us-east-1';

/**
 * The environment that points the AWS SDK, in this process or in a child, at the emulators
 * (DynamoDB Local, this SQS emulator, the Secrets Manager stand-in), with their region and
 * throwaway credentials.
 */
export const emulatorEnv = (endpoints: {
  readonly dynamodb?: string;
  readonly sqs?: string;
  readonly secretsManager?: string;
}): Record<string, string> => ({
  AWS_REGION: LOCAL_REGION,
  AWS_ACCESS_KEY_ID: LOCAL_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: LOCAL_CREDENTIALS.secretAccessKey,
  ...(endpoints.dynamodb === undefined ? {} : { AWS_ENDPOINT_URL_DYNAMODB: endpoints.dynamodb }),
  ...(endpoints.sqs === undefined ? {} : { AWS_ENDPOINT_URL_SQS: endpoints.sqs }),
  ...(endpoints.secretsManager === undefined
    ? {}
    : { AWS_ENDPOINT_URL_SECRETS_MANAGER: endpoints.secretsManager }),
});

export interface SqsEmulator {
  readonly endpoint: string;
  readonly client: SQSClient;
  readonly queueUrl: string;
  readonly backlogQueueUrl: string;
  readonly deadLetterQueueUrl: string;
  stop(): Promise<void>;
}

export const startSqsEmulator = async (options: {
  maxReceiveCount: number;
  visibilityTimeoutSeconds: number;
}): Promise<SqsEmulator> => {
  const server = await startFauxqs({ port: 0, host: '127.0.0.1', logger: false });
  const dlq = server.createQueue('forwarder-dlq');
  const workQueue = (name: string) =>
    server.createQueue(name, {
      attributes: {
        VisibilityTimeout: String(options.visibilityTimeoutSeconds),
        RedrivePolicy: JSON.stringify({
          deadLetterTargetArn: dlq.queueArn,
          maxReceiveCount: String(options.maxReceiveCount),
        }),
      },
    });
  const queue = workQueue('forwarder-work');
  const backlog = workQueue('forwarder-backlog');
  const endpoint = `http://127.0.0.1:${server.port}`;
  const client = new SQSClient({ endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS });
  return {
    endpoint,
    client,
    queueUrl: queue.queueUrl,
    backlogQueueUrl: backlog.queueUrl,
    deadLetterQueueUrl: dlq.queueUrl,
    stop: async () => {
      client.destroy();
      await server.stop();
    },
  };
};
