/**
 * What the AWS tests share: the environment that points the AWS SDK, in the test process or in a
 * child, at DynamoDB Local and the SQS emulator, with their region and throwaway credentials.
 */
import { LOCAL_CREDENTIALS, LOCAL_REGION } from '../../testbed/sqs-emulator.ts';

export const emulatorEnv = (endpoints: {
  readonly dynamodb?: string;
  readonly sqs?: string;
}): Record<string, string> => ({
  AWS_REGION: LOCAL_REGION,
  AWS_ACCESS_KEY_ID: LOCAL_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: LOCAL_CREDENTIALS.secretAccessKey,
  ...(endpoints.dynamodb === undefined ? {} : { AWS_ENDPOINT_URL_DYNAMODB: endpoints.dynamodb }),
  ...(endpoints.sqs === undefined ? {} : { AWS_ENDPOINT_URL_SQS: endpoints.sqs }),
});
