/**
 * The `--aws` side of `status`, `dlq list`, `redrive` and `conflicts`: they work on the deployed
 * stack instead of the state file. bin/cli.ts imports this module only for `--aws`, so that local
 * mode, which must stay within 128 MB, never loads the AWS SDK (docs/performance.md, "Memory").
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SQSClient } from '@aws-sdk/client-sqs';
import { InvalidArgumentError } from 'commander';
import { DynamoFeedStore } from '../lambdas/aws/dynamo-feed-store.ts';
import { DynamoLedger } from '../lambdas/aws/dynamo-ledger.ts';
import {
  type AwsResources,
  type AwsStatusReport,
  formatRedriveProgress,
  gatherAwsStatus,
  listDeadLetters,
  reachSources,
  redrive,
} from '../lambdas/aws/operations.ts';
import { SqsWorkSink } from '../lambdas/aws/sqs-work-sink.ts';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import type { DeadLetterEntry } from '../lambdas/core/dead-letters.ts';
import type { Ledger, WorkSink } from '../lambdas/core/ports.ts';
import { formatAwsStatus } from './format.ts';

/**
 * The resources come from options, else from the variables the Lambdas read (QUEUE_URL, DLQ_URL,
 * STATE_TABLE); the stack's CliOptions output is the options to copy (docs/operations.md).
 */
export interface AwsCliOptions {
  aws?: boolean;
  queueUrl?: string;
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
  };
  const flags = {
    queueUrl: '--queue-url (QUEUE_URL)',
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
  return region === undefined ? {} : { region };
};

export const awsStatus = async (
  options: AwsCliOptions & { reachSources?: boolean },
  config: ForwarderConfig,
): Promise<{ report: AwsStatusReport; text: string }> => {
  const resources = awsResources(options, ['queueUrl', 'deadLetterQueueUrl', 'tableName']);
  const clientConfig = awsClientConfig(options, config);
  const report = await gatherAwsStatus(
    config,
    { sqs: new SQSClient(clientConfig), dynamodb: new DynamoDBClient(clientConfig) },
    resources,
    options.reachSources ? { lastChange: reachSources(config, new SecretsManagerClient(clientConfig)) } : {},
  );
  return { report, text: formatAwsStatus(report) };
};

export const awsDeadLetters = (
  options: AwsCliOptions & { max: number },
  config: ForwarderConfig,
): Promise<DeadLetterEntry[]> =>
  listDeadLetters(
    new SQSClient(awsClientConfig(options, config)),
    awsResources(options, ['deadLetterQueueUrl']).deadLetterQueueUrl,
    { max: options.max },
  );

/** Prints each step of the move task; false when it did not complete (or, with --no-wait, failed to start). */
export const awsRedrive = async (
  options: AwsCliOptions & { wait: boolean; rate?: number },
  config: ForwarderConfig,
): Promise<boolean> => {
  const progress = await redrive(
    new SQSClient(awsClientConfig(options, config)),
    awsResources(options, ['queueUrl', 'deadLetterQueueUrl']),
    {
      wait: options.wait,
      ...(options.rate === undefined ? {} : { maxPerSecond: options.rate }),
      onProgress: (step) => process.stdout.write(`${formatRedriveProgress(step)}\n`),
    },
  );
  return progress.status === 'COMPLETED' || (!options.wait && progress.status === 'RUNNING');
};

const stackLedger = (options: AwsCliOptions, config: ForwarderConfig, tableName: string): Ledger =>
  new DynamoLedger(new DynamoDBClient(awsClientConfig(options, config)), tableName);

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
