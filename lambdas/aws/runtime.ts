/**
 * What both Lambdas set up once per execution environment: the configuration (from the
 * environment), the secret store the servers' credentials and TLS material are read from, the
 * AWS clients and the adapters.
 */

import type { Logger } from '@aws-lambda-powertools/logger';
import { Tracer } from '@aws-lambda-powertools/tracer';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { checkAuthSecret } from '../core/authorizers.ts';
import { ConfigError, configuredServers, type ForwarderConfig, parseConfig } from '../core/config.ts';
import { type SecretReader, secretCredentials, secretTlsMaterial } from '../core/credentials.ts';
import { createLog, type Log, type LogLevel } from '../core/log.ts';
import { AWS_REQUEST_HANDLER } from './client-config.ts';
import { DynamoFeedStore } from './dynamo-feed-store.ts';
import { DynamoLedger } from './dynamo-ledger.ts';

export interface AwsRuntime {
  /** The configuration as deployed: credentials stay in their secrets, read when used. */
  readonly config: ForwarderConfig;
  /** Where the servers' secrets are read (cached; `fresh` after a refusal, for a rotation). */
  readonly secrets: SecretReader;
  /** Powertools' Logger, to which the handlers add each invocation's context (request id, cold start). */
  readonly log: Log & Partial<Pick<Logger, 'addContext'>>;
  readonly dynamodb: DynamoDBClient;
  readonly sqs: SQSClient;
  readonly feed: DynamoFeedStore;
  readonly ledger: DynamoLedger;
  readonly queueUrl: string;
  /** The backlog's queue (BACKLOG_QUEUE_URL); without it, the backlog shares the work queue. */
  readonly backlogQueueUrl: string | undefined;
  readonly deadLetterQueueUrl: string;
}

const requiredEnv = (env: NodeJS.ProcessEnv, name: string): string => {
  const value = env[name];
  if (value === undefined || value === '') throw new ConfigError(`environment variable ${name} is not set`);
  return value;
};

/**
 * Reads every secret the configuration names once, at set-up: a missing or malformed one is a
 * configuration error naming its field, not a failure of every move. The servers read theirs
 * again when they use them, through the same cache.
 */
export const checkSecrets = async (config: ForwarderConfig, read: SecretReader): Promise<void> => {
  await Promise.all(
    configuredServers(config).map(async ({ field, server }) => {
      const named = (error: unknown) =>
        error instanceof ConfigError ? new ConfigError(`${field}.${error.message}`) : error;
      if (server.secretId !== undefined) {
        await secretCredentials({ secretId: server.secretId, username: server.username }, read)
          .header()
          .catch((error: unknown) => Promise.reject(named(error)));
      }
      await secretTlsMaterial(server, read).catch((error: unknown) => Promise.reject(named(error)));
      if ('auth' in server && server.auth !== undefined) {
        await checkAuthSecret(server.auth, read).catch((error: unknown) => Promise.reject(named(error)));
      }
    }),
  );
};

/** Secrets through Powertools Parameters, kept `maxAgeSeconds`; `fresh` reads past the cache. */
const powertoolsSecrets =
  (maxAgeSeconds: number): SecretReader =>
  async (secretId, options) => {
    const { getSecret } = await import('@aws-lambda-powertools/parameters/secrets');
    return getSecret(secretId, {
      transform: 'json',
      maxAge: maxAgeSeconds,
      forceFetch: options?.fresh === true,
    });
  };

export const createRuntime = async (
  env: NodeJS.ProcessEnv = process.env,
  secrets?: SecretReader,
): Promise<AwsRuntime> => {
  let raw: unknown;
  try {
    raw = JSON.parse(requiredEnv(env, 'FORWARDER_CONFIG'));
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw new ConfigError('FORWARDER_CONFIG is not valid JSON');
  }
  const config = parseConfig(raw, 'FORWARDER_CONFIG');
  const readSecret = secrets ?? powertoolsSecrets(config.aws?.secretsMaxAgeSeconds ?? 300);
  await checkSecrets(config, readSecret);
  const tableName = requiredEnv(env, 'STATE_TABLE');
  // With aws.tracing (active tracing on the functions), every DynamoDB and SQS call is a subsegment.
  const tracer = new Tracer({ serviceName: 'orthanc-forwarder', enabled: config.aws?.tracing === true });
  const dynamodb = tracer.captureAWSv3Client(new DynamoDBClient({ requestHandler: AWS_REQUEST_HANDLER }));
  return {
    config,
    secrets: readSecret,
    // The function's logging configuration sets AWS_LAMBDA_LOG_LEVEL; Powertools' own variable stays for tests.
    log: createLog({
      level: ((env.AWS_LAMBDA_LOG_LEVEL ?? env.POWERTOOLS_LOG_LEVEL) as LogLevel | undefined) ?? 'INFO',
      mode: 'aws',
    }),
    dynamodb,
    // The endpoint comes from the region (or AWS_ENDPOINT_URL_SQS), not from each queue URL.
    sqs: tracer.captureAWSv3Client(
      new SQSClient({ useQueueUrlAsEndpoint: false, requestHandler: AWS_REQUEST_HANDLER }),
    ),
    feed: new DynamoFeedStore(dynamodb, tableName),
    ledger: new DynamoLedger(dynamodb, tableName, {
      outcomeDays: config.retention.outcomeDays,
      auditDays: config.retention.auditDays,
    }),
    queueUrl: requiredEnv(env, 'QUEUE_URL'),
    backlogQueueUrl: env.BACKLOG_QUEUE_URL || undefined,
    deadLetterQueueUrl: requiredEnv(env, 'DLQ_URL'),
  };
};
