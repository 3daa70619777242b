/**
 * The `--aws` side of `status`, `dlq list`, `redrive` and `conflicts`: they work on the deployed
 * stack instead of the state file; and of `check`, which reads the servers' secrets as the stack does. bin/cli.ts imports this module only for `--aws`, so that local
 * mode, which must stay within 128 MB, never loads the AWS SDK (docs/performance.md, "Memory").
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SQSClient } from '@aws-sdk/client-sqs';
import { InvalidArgumentError } from 'commander';
import { AWS_REQUEST_HANDLER } from '../lambdas/aws/client-config.ts';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import {
  type AwsResources,
  formatRedriveProgress,
  gatherAwsStatus,
  listDeadLetters,
  reachSources,
  redrive,
  redriveMatching,
} from '../lambdas/aws/operations.ts';
import { SqsWorkSink } from '../lambdas/aws/sqs-work-sink.ts';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import type { SecretReader } from '../lambdas/core/credentials.ts';
import { listingOf } from '../lambdas/core/dead-letters.ts';
import type { DeadLetterFilter, Ledger, WorkSink } from '../lambdas/core/ports.ts';
import type { StatusReport } from '../lambdas/core/status.ts';
import { formatStatus } from './format.ts';

/**
 * The resources come from options, else from the variables the Lambdas read (QUEUE_URL, DLQ_URL,
 * STATE_TABLE); the stack's CliOptions output is the options to copy (docs/operations.md).
 */
export interface AwsCliOptions {
  aws?: boolean;
  queueUrl?: string;
  backlogQueueUrl?: string;
  dlqUrl?: string;
  table?: string;
  region?: string;
}

const awsResources = <K extends keyof AwsResources>(
  options: AwsCliOptions,
  needed: readonly K[],
): Pick<AwsResources, K> => {
  const given: AwsResources = {
    queueUrl: options.queueUrl ?? '',
    deadLetterQueueUrl: options.dlqUrl ?? '',
    tableName: options.table ?? '',
    backlogQueueUrl: options.backlogQueueUrl,
  };
  const flags: Record<keyof AwsResources, string> = {
    queueUrl: '--queue-url (QUEUE_URL)',
    backlogQueueUrl: '--backlog-queue-url (BACKLOG_QUEUE_URL)',
    deadLetterQueueUrl: '--dlq-url (DLQ_URL)',
    tableName: '--table (STATE_TABLE)',
  };
  const missing = needed.filter((key) => given[key] === '').map((key) => flags[key]);
  if (missing.length > 0) {
    throw new InvalidArgumentError(
      `--aws needs ${missing.join(', ')}: copy the stack's CliOptions output (docs/operations.md)`,
    );
  }
  return given;
};

const awsClientConfig = (options: AwsCliOptions, config: ForwarderConfig) => {
  const region = options.region ?? config.aws?.region;
  return { requestHandler: AWS_REQUEST_HANDLER, ...(region === undefined ? {} : { region }) };
};

export const awsStatus = async (
  options: AwsCliOptions & { reachSources?: boolean },
  config: ForwarderConfig,
): Promise<{ report: StatusReport; text: string }> => {
  const resources = awsResources(options, ['queueUrl', 'deadLetterQueueUrl', 'tableName']);
  const clientConfig = awsClientConfig(options, config);
  const report = await gatherAwsStatus(
    config,
    { sqs: new SQSClient(clientConfig), dynamodb: new DynamoDBClient(clientConfig) },
    resources,
    options.reachSources ? { ask: reachSources(config, new SecretsManagerClient(clientConfig)) } : {},
  );
  return { report, text: formatStatus(report) };
};

/**
 * `dlq list` of up to `max` dead letters: SQS cannot peek, and each one read is hidden from a
 * redrive meanwhile. Says so when there may be more.
 */
export const awsDeadLetterListing = async (
  options: AwsCliOptions & { max: number },
  config: ForwarderConfig,
  listing: Parameters<typeof listingOf>[1],
): Promise<string> => {
  const entries = await listDeadLetters(
    new SQSClient(awsClientConfig(options, config)),
    awsResources(options, ['deadLetterQueueUrl']).deadLetterQueueUrl,
    { max: options.max },
  );
  const text = await listingOf(entries, listing);
  return entries.length < options.max || listing.json
    ? text
    : `${text}\nread ${entries.length} dead letters, as many as --max allows: there may be more`;
};

/**
 * The servers' secrets as the deployed stack reads them (GetSecretValue, the JSON of its string),
 * with the operator's credentials, for `check --aws`.
 */
export const awsSecrets = (options: AwsCliOptions, config: ForwarderConfig): SecretReader => {
  const client = new SecretsManagerClient(awsClientConfig(options, config));
  return async (secretId) => {
    const answer = await client.send(new GetSecretValueCommand({ SecretId: secretId }));
    return JSON.parse(answer.SecretString ?? 'null') as unknown;
  };
};

/**
 * Prints each step of the move task; false when it did not complete (or, with --no-wait, failed
 * to start). With a filter, only the matching dead letters go back: false when none matched.
 */
export const awsRedrive = async (
  options: AwsCliOptions & { wait: boolean; rate?: number },
  config: ForwarderConfig,
  filter?: DeadLetterFilter,
): Promise<boolean> => {
  const sqs = new SQSClient(awsClientConfig(options, config));
  const resources = awsResources(options, ['queueUrl', 'deadLetterQueueUrl']);
  if (filter !== undefined) {
    const { redriven, left } = await redriveMatching(sqs, resources, filter);
    process.stdout.write(`redrove ${redriven} message(s); ${left} left in the dead-letter queue\n`);
    return redriven > 0;
  }
  const progress = await redrive(sqs, resources, {
    wait: options.wait,
    ...(options.rate === undefined ? {} : { maxPerSecond: options.rate }),
    onProgress: (step) => process.stdout.write(`${formatRedriveProgress(step)}\n`),
  });
  return progress.status === 'COMPLETED' || (!options.wait && progress.status === 'RUNNING');
};

const stackLedger = (options: AwsCliOptions, config: ForwarderConfig, tableName: string): Ledger =>
  new DynamoLedger(new DynamoDBClient(awsClientConfig(options, config)), tableName);

/** The stack's feed state, for `pause`, `resume` and `sweep`. */
export const awsFeed = (options: AwsCliOptions, config: ForwarderConfig): DynamoFeedStore =>
  new DynamoFeedStore(
    new DynamoDBClient(awsClientConfig(options, config)),
    awsResources(options, ['tableName']).tableName,
  );

/** The stack's ledger, for `conflicts list`. */
export const awsLedger = (options: AwsCliOptions, config: ForwarderConfig): Ledger =>
  stackLedger(options, config, awsResources(options, ['tableName']).tableName);

/**
 * The ledger, the work queue and the feed's state, for `conflicts resolve`: checked before anything is
 * decided. The work items go the way the poller sends them (SqsWorkSink), so the forwarder
 * takes them like any other.
 */
export const awsLedgerAndQueue = (
  options: AwsCliOptions,
  config: ForwarderConfig,
): { ledger: Ledger; queue: WorkSink; feed: DynamoFeedStore } => {
  const { tableName, queueUrl } = awsResources(options, ['tableName', 'queueUrl']);
  return {
    ledger: stackLedger(options, config, tableName),
    queue: new SqsWorkSink(new SQSClient(awsClientConfig(options, config)), queueUrl),
    feed: new DynamoFeedStore(new DynamoDBClient(awsClientConfig(options, config)), tableName),
  };
};
