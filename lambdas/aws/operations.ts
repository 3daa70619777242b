/**
 * What an operator does to the AWS pipeline from the CLI (docs/operations.md): `status` (the
 * queues, and each source's cursor and the ledger from the state table, core/status.ts's report),
 * `dlq list` (the dead letters with their last error) and `redrive` (an SQS message move task
 * from the DLQ back to the work queue, followed to its end; or, for some dead letters only, the
 * DLQ read through). Everything it reports is PHI-free: work items carry Orthanc IDs only, and a
 * body that is not a work item is never shown.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import {
  ChangeMessageVisibilityBatchCommand,
  DeleteMessageBatchCommand,
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
import { type DeadLetterEntry, deadLetterEntry, matchesDeadLetter } from '../core/dead-letters.ts';
import { createEndpoint } from '../core/http.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import type { DeadLetterFilter, Ledger } from '../core/ports.ts';
import { recentMoves } from '../core/progress.ts';
import {
  askSource,
  assembleStatus,
  type SourceAnswer,
  type SourceProbe,
  type StatusReport,
} from '../core/status.ts';
import { DynamoFeedStore } from './dynamo-feed-store.ts';
import { DynamoLedger } from './dynamo-ledger.ts';
import { SqsWorkSink } from './sqs-work-sink.ts';

/** The deployed resources the CLI works on: the stack's outputs QueueUrl, DeadLetterQueueUrl, StateTableName. */
export interface AwsResources {
  readonly queueUrl: string;
  /** The backlog's queue (stack output BacklogQueueUrl): counted with the work queue when given. */
  readonly backlogQueueUrl?: string | undefined;
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

/** Asks a source what it holds and its newest change; absent: the sources are not asked. */
export type AskSource = (source: SourceConfig) => Promise<SourceAnswer>;

const NOT_ASKED: SourceAnswer = {
  unknown: 'not asked: --reach-sources from a machine that reaches it, or the CursorLag metric',
};

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
  const [work, backlog, dead] = await Promise.all([
    attributes(resources.queueUrl),
    resources.backlogQueueUrl === undefined ? undefined : attributes(resources.backlogQueueUrl),
    attributes(resources.deadLetterQueueUrl),
  ]);
  const both = (name: string) => attributeCount(work, name) + attributeCount(backlog, name);
  return {
    waiting: both('ApproximateNumberOfMessages'),
    inFlight: both('ApproximateNumberOfMessagesNotVisible'),
    deadLetters:
      attributeCount(dead, 'ApproximateNumberOfMessages') +
      attributeCount(dead, 'ApproximateNumberOfMessagesNotVisible'),
  };
};

const probe = async (
  state: { readonly feed: DynamoFeedStore; readonly ledger: Ledger },
  source: SourceConfig,
  ask: AskSource | undefined,
  now: number,
): Promise<SourceProbe> => {
  const [control, cursor, waitingToBecomeStable, answer, recent] = await Promise.all([
    state.feed.control(source.id),
    state.feed.getCursor(source.id),
    state.feed.watchedCount(source.id),
    ask === undefined ? NOT_ASKED : ask(source),
    recentMoves(state.ledger, source.id, now),
  ]);
  return { control, cursor, waitingToBecomeStable, answer, recent };
};

/**
 * The report of core/status.ts from the queues and the state table. The dead letters are counted,
 * not read: reading one hides it from a redrive running meanwhile (`dlq list --group-by error`).
 */
export const gatherAwsStatus = async (
  config: ForwarderConfig,
  clients: { readonly sqs: SQSClient; readonly dynamodb: DynamoDBClient },
  resources: AwsResources,
  options: { readonly ask?: AskSource; readonly now?: number } = {},
): Promise<StatusReport> => {
  const feed = new DynamoFeedStore(clients.dynamodb, resources.tableName);
  const ledger = new DynamoLedger(clients.dynamodb, resources.tableName);
  const now = options.now ?? Date.now();
  const [probes, queue, rejected, conflicts, totals] = await Promise.all([
    Promise.all(config.sources.map((source) => probe({ feed, ledger }, source, options.ask, now))),
    queueStats(clients.sqs, resources),
    ledger.rejected(),
    ledger.conflicts({ openOnly: true }),
    ledger.totals(),
  ]);
  return assembleStatus(config, { probes, queue, rejected, conflicts, totals, now });
};

const secretSchema = z.object({ username: z.string().min(1).optional(), password: z.string() });

/**
 * Asks a source what it holds and its newest change the way the Lambdas reach it, its
 * credentials read from Secrets Manager (`secretId`) with the operator's own AWS credentials, with
 * short timeouts: from a laptop the sources are usually out of reach, and that is an answer too.
 */
export const reachSources = (
  config: ForwarderConfig,
  secrets: SecretsManagerClient,
  timeoutMs = 5_000,
): AskSource => {
  const timeouts = { ...config.timeouts, connectMs: timeoutMs, headersMs: timeoutMs, bodyMs: timeoutMs };
  return (source) =>
    askSource(async () => {
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
      return new OrthancClient(createEndpoint(server, timeouts));
    });
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
      const messages = await receiveDeadLetters(sqs, deadLetterQueueUrl, max - received.length, options);
      if (messages.length === 0) break;
      received.push(...messages);
    }
  } finally {
    await releaseAll(sqs, deadLetterQueueUrl, received);
  }
  return received.map(toEntry).sort((a, b) => (a.sentAt ?? 0) - (b.sentAt ?? 0));
};

/** Up to `max` (10 at most) dead letters with what describes them, each hidden for `holdSeconds`. */
const receiveDeadLetters = async (
  sqs: SQSClient,
  deadLetterQueueUrl: string,
  max: number,
  options: { readonly holdSeconds?: number; readonly waitSeconds?: number },
): Promise<Message[]> =>
  (
    await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: deadLetterQueueUrl,
        MaxNumberOfMessages: Math.min(10, max),
        VisibilityTimeout: options.holdSeconds ?? 60,
        // Long polling asks every SQS server, so an empty answer means the queue is drained.
        WaitTimeSeconds: options.waitSeconds ?? 1,
        MessageAttributeNames: ['lastError', 'receiveCount'],
        MessageSystemAttributeNames: ['SentTimestamp'],
      }),
    )
  ).Messages ?? [];

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

/** What a selective redrive did: dead letters sent back to the work queue, and those it left. */
export interface SelectiveRedrive {
  readonly redriven: number;
  readonly left: number;
}

/**
 * Puts back on the work queue only the dead letters the filter matches. A move task cannot
 * choose, so the DLQ is read through: each batch received (hidden for `holdSeconds`), the
 * matching ones sent to the work queue and only then deleted from the DLQ, the others kept hidden
 * until every dead letter was looked at, then made visible again. Interrupted, it loses nothing:
 * a dead letter is deleted only once sent, and one sent but not deleted yet is a duplicate, which
 * the forwarder's idempotent move makes harmless; what it held comes back after `holdSeconds`.
 * The redriven ones are new messages, with a fresh receive count.
 */
export const redriveMatching = async (
  sqs: SQSClient,
  resources: Pick<AwsResources, 'queueUrl' | 'deadLetterQueueUrl'>,
  filter: DeadLetterFilter,
  options: { readonly holdSeconds?: number; readonly waitSeconds?: number } = {},
): Promise<SelectiveRedrive> => {
  const { queueUrl, deadLetterQueueUrl } = resources;
  const sink = new SqsWorkSink(sqs, queueUrl);
  // By message ID: one received again (its hold ran out) is held under its new receipt handle.
  const kept = new Map<string, Message>();
  let redriven = 0;
  try {
    for (;;) {
      const messages = await receiveDeadLetters(sqs, deadLetterQueueUrl, 10, {
        ...options,
        holdSeconds: options.holdSeconds ?? 300,
      });
      // Nothing visible, or only what was looked at already: every dead letter was.
      if (messages.every((message) => kept.has(message.MessageId ?? ''))) {
        for (const message of messages) kept.set(message.MessageId ?? '', message);
        break;
      }
      const matching = messages.filter((message) => {
        const entry = toEntry(message);
        return matchesDeadLetter(filter, { sourceId: entry.item?.sourceId, lastError: entry.lastError });
      });
      for (const message of messages)
        if (!matching.includes(message)) kept.set(message.MessageId ?? '', message);
      if (matching.length === 0) continue;
      await sink.enqueueBodies(matching.map((message) => message.Body ?? ''));
      await sqs.send(
        new DeleteMessageBatchCommand({
          QueueUrl: deadLetterQueueUrl,
          Entries: matching.map((message, index) => ({
            Id: String(index),
            ReceiptHandle: message.ReceiptHandle ?? '',
          })),
        }),
      );
      redriven += matching.length;
    }
  } finally {
    await releaseAll(sqs, deadLetterQueueUrl, [...kept.values()]);
  }
  return { redriven, left: kept.size };
};

export const formatRedriveProgress = (progress: RedriveProgress): string => {
  const of = progress.toMove === undefined ? '' : ` of ${progress.toMove}`;
  const reason = progress.failureReason === undefined ? '' : `: ${progress.failureReason}`;
  return `redrive ${progress.status.toLowerCase()}: ${progress.moved}${of} message(s) moved${reason}`;
};
