/**
 * What an operator does to the AWS pipeline from the CLI (docs/operations.md): `status` (the
 * queues, and each source's cursor and the ledger from the state table; bin/format.ts prints it),
 * `dlq list` (the dead letters with their last error) and `redrive` (an SQS message move task
 * from the DLQ back to the work queue, followed to its end). Everything it reports is PHI-free:
 * work items carry Orthanc IDs only, and a body that is not a work item is never shown.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import {
  ChangeMessageVisibilityBatchCommand,
  GetQueueAttributesCommand,
  ListMessageMoveTasksCommand,
  type ListMessageMoveTasksResultEntry,
  type Message,
  ReceiveMessageCommand,
  type SQSClient,
  StartMessageMoveTaskCommand,
} from '@aws-sdk/client-sqs';
import { z } from 'zod';
import type { ForwarderConfig, SourceConfig } from '../core/config.ts';
import { type DeadLetterEntry, deadLetterEntry } from '../core/dead-letters.ts';
import { describe } from '../core/errors.ts';
import { createEndpoint } from '../core/http.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import type { Conflict, RejectedInstance, Totals } from '../core/ports.ts';
import { DynamoFeedStore } from './dynamo-feed-store.ts';
import { DynamoLedger } from './dynamo-ledger.ts';

/** The deployed resources the CLI works on: the stack's outputs QueueUrl, DeadLetterQueueUrl, StateTableName. */
export interface AwsResources {
  readonly queueUrl: string;
  readonly deadLetterQueueUrl: string;
  readonly tableName: string;
}

// --- status ------------------------------------------------------------------------------------

export interface AwsQueueStats {
  /** Visible on the work queue: waiting for a forwarder. */
  readonly waiting: number;
  /** Received and not deleted: being moved, or waiting out a retry delay. */
  readonly inFlight: number;
  readonly deadLetters: number;
}

/** Where the poller stands on a source, as local mode's `status` reports it (bin/format.ts prints both). */
export interface AwsSourceReport {
  readonly id: string;
  readonly cursor: number | undefined;
  /** The source's newest change, when it was asked and answered. */
  readonly last: number | undefined;
  readonly lag: number | undefined;
  readonly waitingToBecomeStable: number;
  /** Why `last` and `lag` are unknown. */
  readonly unknown?: string;
}

export interface AwsStatusReport {
  readonly sources: readonly AwsSourceReport[];
  readonly queue: AwsQueueStats;
  readonly rejected: readonly RejectedInstance[];
  /** The open ones. */
  readonly conflicts: readonly Conflict[];
  readonly totals: Totals;
}

/** Reads a source's newest change (`GET /changes?last`); absent: the sources are not asked. */
export type LastChange = (source: SourceConfig) => Promise<number>;

const NOT_ASKED = 'not asked: --reach-sources from a machine that reaches it, or the CursorLag metric';

const attributeCount = (attributes: Record<string, string> | undefined, name: string): number =>
  Number(attributes?.[name] ?? 0);

export const queueStats = async (sqs: SQSClient, resources: AwsResources): Promise<AwsQueueStats> => {
  const attributes = async (queueUrl: string) =>
    (
      await sqs.send(
        new GetQueueAttributesCommand({
          QueueUrl: queueUrl,
          AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
        }),
      )
    ).Attributes;
  const [work, dead] = await Promise.all([
    attributes(resources.queueUrl),
    attributes(resources.deadLetterQueueUrl),
  ]);
  return {
    waiting: attributeCount(work, 'ApproximateNumberOfMessages'),
    inFlight: attributeCount(work, 'ApproximateNumberOfMessagesNotVisible'),
    deadLetters:
      attributeCount(dead, 'ApproximateNumberOfMessages') +
      attributeCount(dead, 'ApproximateNumberOfMessagesNotVisible'),
  };
};

const sourceReport = async (
  feed: DynamoFeedStore,
  source: SourceConfig,
  lastChange: LastChange | undefined,
): Promise<AwsSourceReport> => {
  const [cursor, watched] = await Promise.all([feed.getCursor(source.id), feed.watched(source.id)]);
  const base = { id: source.id, cursor, waitingToBecomeStable: watched.length };
  if (lastChange === undefined) return { ...base, last: undefined, lag: undefined, unknown: NOT_ASKED };
  try {
    const last = await lastChange(source);
    return { ...base, last, lag: Math.max(0, last - (cursor ?? 0)) };
  } catch (error) {
    return { ...base, last: undefined, lag: undefined, unknown: `unreachable: ${describe(error)}` };
  }
};

export const gatherAwsStatus = async (
  config: ForwarderConfig,
  clients: { readonly sqs: SQSClient; readonly dynamodb: DynamoDBClient },
  resources: AwsResources,
  options: { readonly lastChange?: LastChange } = {},
): Promise<AwsStatusReport> => {
  const feed = new DynamoFeedStore(clients.dynamodb, resources.tableName);
  const ledger = new DynamoLedger(clients.dynamodb, resources.tableName);
  const [sources, queue, rejected, conflicts, totals] = await Promise.all([
    Promise.all(config.sources.map((source) => sourceReport(feed, source, options.lastChange))),
    queueStats(clients.sqs, resources),
    ledger.rejected(),
    ledger.conflicts({ openOnly: true }),
    ledger.totals(),
  ]);
  return { sources, queue, rejected, conflicts, totals };
};

const secretSchema = z.object({ username: z.string().min(1).optional(), password: z.string() });

/**
 * Asks a source for its newest change the way the Lambdas do, its credentials read from Secrets
 * Manager (`secretId`) with the operator's own AWS credentials, with short timeouts: from a
 * laptop the sources are usually out of reach, and that is an answer too.
 */
export const reachSources = (
  config: ForwarderConfig,
  secrets: SecretsManagerClient,
  timeoutMs = 5_000,
): LastChange => {
  const timeouts = { ...config.timeouts, connectMs: timeoutMs, headersMs: timeoutMs, bodyMs: timeoutMs };
  return async (source) => {
    let server = source;
    if (source.secretId !== undefined) {
      const answer = await secrets.send(new GetSecretValueCommand({ SecretId: source.secretId }));
      const parsed = secretSchema.safeParse(JSON.parse(answer.SecretString ?? 'null'));
      if (!parsed.success) throw new Error('its secret is not JSON {"username": …, "password": …}');
      server = {
        ...source,
        secretId: undefined,
        username: parsed.data.username ?? source.username,
        password: parsed.data.password,
      };
    }
    return new OrthancClient(createEndpoint(server, timeouts)).lastChange();
  };
};

// --- dlq list ----------------------------------------------------------------------------------

const toEntry = (message: Message): DeadLetterEntry => {
  const attributes = message.MessageAttributes ?? {};
  const sent = message.Attributes?.SentTimestamp;
  const receiveCount = attributes.receiveCount?.StringValue;
  return deadLetterEntry({
    messageId: message.MessageId ?? '',
    body: message.Body ?? '',
    sentAt: sent === undefined ? undefined : Number(sent),
    lastError: attributes.lastError?.StringValue,
    receiveCount: receiveCount === undefined ? undefined : Number(receiveCount),
  });
};

/**
 * Reads up to `max` dead letters without removing them: SQS cannot peek, so each is received
 * (hidden for `holdSeconds` so that it is not read twice) and made visible again at the end.
 * A message received meanwhile by someone else is listed by them, not here.
 */
export const listDeadLetters = async (
  sqs: SQSClient,
  deadLetterQueueUrl: string,
  options: { readonly max?: number; readonly holdSeconds?: number; readonly waitSeconds?: number } = {},
): Promise<DeadLetterEntry[]> => {
  const max = options.max ?? 100;
  const received: Message[] = [];
  try {
    while (received.length < max) {
      const answer = await sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: deadLetterQueueUrl,
          MaxNumberOfMessages: Math.min(10, max - received.length),
          VisibilityTimeout: options.holdSeconds ?? 60,
          // Long polling asks every SQS server, so an empty answer means the queue is drained.
          WaitTimeSeconds: options.waitSeconds ?? 1,
          MessageAttributeNames: ['lastError', 'receiveCount'],
          MessageSystemAttributeNames: ['SentTimestamp'],
        }),
      );
      const messages = answer.Messages ?? [];
      if (messages.length === 0) break;
      received.push(...messages);
    }
  } finally {
    await releaseAll(sqs, deadLetterQueueUrl, received);
  }
  return received.map(toEntry).sort((a, b) => (a.sentAt ?? 0) - (b.sentAt ?? 0));
};

const releaseAll = async (sqs: SQSClient, queueUrl: string, messages: readonly Message[]) => {
  for (let index = 0; index < messages.length; index += 10) {
    await sqs.send(
      new ChangeMessageVisibilityBatchCommand({
        QueueUrl: queueUrl,
        Entries: messages.slice(index, index + 10).map((message, offset) => ({
          Id: String(offset),
          ReceiptHandle: message.ReceiptHandle ?? '',
          VisibilityTimeout: 0,
        })),
      }),
    );
  }
};

// --- redrive -----------------------------------------------------------------------------------

export interface RedriveProgress {
  readonly status: string;
  readonly moved: number;
  readonly toMove: number | undefined;
  readonly failureReason?: string;
}

const queueArn = async (sqs: SQSClient, queueUrl: string): Promise<string> => {
  const answer = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }),
  );
  const arn = answer.Attributes?.QueueArn;
  if (arn === undefined) throw new Error(`SQS gave no ARN for ${queueUrl}`);
  return arn;
};

const toProgress = (task: ListMessageMoveTasksResultEntry): RedriveProgress => ({
  status: task.Status ?? 'UNKNOWN',
  moved: task.ApproximateNumberOfMessagesMoved ?? 0,
  toMove: task.ApproximateNumberOfMessagesToMove,
  ...(task.FailureReason === undefined ? {} : { failureReason: task.FailureReason }),
});

/** The most recent move task out of the DLQ, if any. */
export const redriveProgress = async (
  sqs: SQSClient,
  resources: Pick<AwsResources, 'deadLetterQueueUrl'>,
): Promise<RedriveProgress | undefined> => {
  const answer = await sqs.send(
    new ListMessageMoveTasksCommand({
      SourceArn: await queueArn(sqs, resources.deadLetterQueueUrl),
      MaxResults: 1,
    }),
  );
  const task = answer.Results?.[0];
  return task === undefined ? undefined : toProgress(task);
};

const FINISHED = new Set(['COMPLETED', 'CANCELLED', 'FAILED']);

/**
 * Moves every dead letter back to the work queue with an SQS message move task, then follows it
 * (ListMessageMoveTasks) until it finishes, reporting each step. The moved messages are new
 * messages on the work queue: their receive count starts again from zero.
 */
export const redrive = async (
  sqs: SQSClient,
  resources: Pick<AwsResources, 'queueUrl' | 'deadLetterQueueUrl'>,
  options: {
    /** Messages per second; SQS's own default (up to 500) without. */
    readonly maxPerSecond?: number;
    readonly wait?: boolean;
    readonly pollMs?: number;
    readonly timeoutMs?: number;
    readonly onProgress?: (progress: RedriveProgress) => void;
  } = {},
): Promise<RedriveProgress> => {
  const [sourceArn, destinationArn] = await Promise.all([
    queueArn(sqs, resources.deadLetterQueueUrl),
    queueArn(sqs, resources.queueUrl),
  ]);
  await sqs.send(
    new StartMessageMoveTaskCommand({
      SourceArn: sourceArn,
      DestinationArn: destinationArn,
      ...(options.maxPerSecond === undefined ? {} : { MaxNumberOfMessagesPerSecond: options.maxPerSecond }),
    }),
  );
  const deadline = Date.now() + (options.timeoutMs ?? 3_600_000);
  for (;;) {
    const progress = (await redriveProgress(sqs, resources)) ?? {
      status: 'UNKNOWN',
      moved: 0,
      toMove: undefined,
    };
    options.onProgress?.(progress);
    if (options.wait === false || FINISHED.has(progress.status) || Date.now() >= deadline) return progress;
    await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 2_000));
  }
};

export const formatRedriveProgress = (progress: RedriveProgress): string => {
  const of = progress.toMove === undefined ? '' : ` of ${progress.toMove}`;
  const reason = progress.failureReason === undefined ? '' : `: ${progress.failureReason}`;
  return `redrive ${progress.status.toLowerCase()}: ${progress.moved}${of} message(s) moved${reason}`;
};
