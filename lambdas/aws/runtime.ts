/**
 * What both Lambdas set up once per execution environment: the configuration (from the
 * environment, credentials from Secrets Manager), the AWS clients and the adapters.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { z } from 'zod';
import {
  ConfigError,
  destinationField,
  type ForwarderConfig,
  parseConfig,
  type ServerConfig,
} from '../core/config.ts';
import { createLog, type Log, type LogLevel } from '../core/log.ts';
import { DynamoFeedStore } from './dynamo-feed-store.ts';
import { DynamoLedger } from './dynamo-ledger.ts';

/** Reads a secret's value; Powertools Parameters (cached) in the Lambdas, a stand-in in tests. */
export type SecretReader = (secretId: string) => Promise<unknown>;

const secretSchema = z.object({ username: z.string().min(1).optional(), password: z.string() });

export interface AwsRuntime {
  readonly config: ForwarderConfig;
  readonly log: Log;
  readonly dynamodb: DynamoDBClient;
  readonly sqs: SQSClient;
  readonly feed: DynamoFeedStore;
  readonly ledger: DynamoLedger;
  readonly queueUrl: string;
  readonly deadLetterQueueUrl: string;
}

const requiredEnv = (env: NodeJS.ProcessEnv, name: string): string => {
  const value = env[name];
  if (value === undefined || value === '') throw new ConfigError(`environment variable ${name} is not set`);
  return value;
};

const withSecret = async <T extends ServerConfig>(
  server: T,
  field: string,
  read: SecretReader,
): Promise<T> => {
  if (server.secretId === undefined) return server;
  const parsed = secretSchema.safeParse(await read(server.secretId));
  if (!parsed.success) {
    throw new ConfigError(`${field}.secretId: the secret must be JSON {"username": …, "password": …}`);
  }
  return { ...server, username: parsed.data.username ?? server.username, password: parsed.data.password };
};

/** The configuration with every server's credentials read from its secret. */
export const resolveSecrets = async (
  config: ForwarderConfig,
  read: SecretReader,
): Promise<ForwarderConfig> => ({
  ...config,
  sources: await Promise.all(
    config.sources.map((source, index) => withSecret(source, `sources[${index}]`, read)),
  ),
  destinations: await Promise.all(
    config.destinations.map(async (destination, index) => {
      const field = destinationField(config, index);
      const { alternate } = destination;
      return {
        ...(await withSecret(destination, field, read)),
        ...(alternate === undefined
          ? {}
          : { alternate: await withSecret(alternate, `${field}.alternate`, read) }),
      };
    }),
  ),
});

const powertoolsSecrets: SecretReader = async (secretId) => {
  const { getSecret } = await import('@aws-lambda-powertools/parameters/secrets');
  // Cached for five minutes: a rotated password is picked up without a redeploy.
  return getSecret(secretId, { transform: 'json', maxAge: 300 });
};

export const createRuntime = async (
  env: NodeJS.ProcessEnv = process.env,
  readSecret: SecretReader = powertoolsSecrets,
): Promise<AwsRuntime> => {
  let raw: unknown;
  try {
    raw = JSON.parse(requiredEnv(env, 'FORWARDER_CONFIG'));
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw new ConfigError('FORWARDER_CONFIG is not valid JSON');
  }
  const config = await resolveSecrets(parseConfig(raw, 'FORWARDER_CONFIG'), readSecret);
  const tableName = requiredEnv(env, 'STATE_TABLE');
  const dynamodb = new DynamoDBClient({});
  return {
    config,
    log: createLog({ level: (env.POWERTOOLS_LOG_LEVEL as LogLevel | undefined) ?? 'INFO', mode: 'aws' }),
    dynamodb,
    // The endpoint comes from the region (or AWS_ENDPOINT_URL_SQS), not from each queue URL.
    sqs: new SQSClient({ useQueueUrlAsEndpoint: false }),
    feed: new DynamoFeedStore(dynamodb, tableName),
    ledger: new DynamoLedger(dynamodb, tableName),
    queueUrl: requiredEnv(env, 'QUEUE_URL'),
    deadLetterQueueUrl: requiredEnv(env, 'DLQ_URL'),
  };
};
