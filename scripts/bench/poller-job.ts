/**
 * The poller run's timed part, in the benchmark's child process: the real poller handler reads
 * a source's whole change feed, invocation after invocation, against DynamoDB Local and fauxqs;
 * then the real forwarder handler moves a sample of the queued studies, fed by the stand-in for
 * Lambda's event source mapping. Every AWS request is counted by a middleware on the clients,
 * with the capacity DynamoDB reports consumed; requests to Orthanc by undici's diagnostics channel.
 * Loaded only by this job (the relay's child must not load the AWS SDK).
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { createRuntime } from '../../lambdas/aws/runtime.ts';
import type { PollReport } from '../../lambdas/core/changes-feed.ts';
import { createForwarderHandler } from '../../lambdas/handlers/forwarder.ts';
import { createPollerHandler } from '../../lambdas/handlers/poller.ts';
import { deliverOnce, lambdaContext } from '../../testbed/event-source-mapping.ts';
import { type ConnectionCounts, countConnections, type OperationResult } from './operations.ts';

export interface PollerJob {
  readonly kind: 'poller';
  /** What the Lambdas' environment holds: FORWARDER_CONFIG, STATE_TABLE, QUEUE_URL, endpoints. */
  readonly env: Readonly<Record<string, string>>;
  /** Each poller invocation's time, as the function's timeout gives it. */
  readonly invocationMs: number;
  /** Studies the forwarder then moves, one message per invocation as the stack configures it. */
  readonly forwardStudies: number;
  /** The forwarder's batch size (the stack's event source mapping). */
  readonly forwarderBatchSize: number;
}

/** Calls of one AWS API operation: how many, the items they carried, the capacity consumed. */
export interface ApiTally {
  requests: number;
  /** Calls that threw: a condition not met (expected: a study already watched) or an error. */
  failed: number;
  /** HTTP attempts of the calls that succeeded, retries included. */
  attempts: number;
  /** Items written or deleted, entries sent, messages received. */
  items: number;
  readCapacityUnits: number;
  writeCapacityUnits: number;
}

/** Per operation, keyed `service:Operation`, e.g. `dynamodb:PutItem`. */
export type AwsTally = Record<string, ApiTally>;

/** One phase's requests: AWS operations by who made them, and Orthanc requests per server. */
export interface PhaseRequests {
  readonly aws: AwsTally;
  /** The event source mapping's own SQS requests (receive and delete), billed like any other. */
  readonly eventSourceMapping: AwsTally;
  readonly orthanc: ConnectionCounts;
}

/** What one poller invocation reported for the source. */
export type InvocationReport = Pick<PollReport, 'changesRead' | 'queued' | 'waiting' | 'outOfTime'>;

export interface PollerJobResult extends OperationResult {
  readonly poller: PhaseRequests & {
    readonly invocations: number;
    readonly seconds: number;
    readonly reports: readonly InvocationReport[];
  };
  readonly forwarder: PhaseRequests & { readonly invocations: number; readonly seconds: number };
}

const READS = new Set(['GetItem', 'BatchGetItem', 'Query', 'Scan', 'TransactGetItems']);
const WITH_CAPACITY = new Set([
  ...READS,
  'PutItem',
  'UpdateItem',
  'DeleteItem',
  'BatchWriteItem',
  'TransactWriteItems',
]);

type Input = Record<string, unknown>;
type Output = Record<string, unknown> & { $metadata?: { attempts?: number } };

/** What a call carried: items written, entries sent or deleted, messages received. */
const itemsOf = (operation: string, input: Input, output: Output): number => {
  switch (operation) {
    case 'BatchWriteItem':
      return Object.values((input.RequestItems ?? {}) as Record<string, unknown[]>).reduce(
        (sum, requests) => sum + requests.length,
        0,
      );
    case 'TransactWriteItems':
      return ((input.TransactItems ?? []) as unknown[]).length;
    case 'SendMessageBatch':
    case 'DeleteMessageBatch':
    case 'ChangeMessageVisibilityBatch':
      return ((input.Entries ?? []) as unknown[]).length;
    case 'ReceiveMessage':
      return ((output.Messages ?? []) as unknown[]).length;
    default:
      return 1;
  }
};

const capacityOf = (output: Output): number => {
  const consumed = output.ConsumedCapacity as { CapacityUnits?: number } | { CapacityUnits?: number }[];
  const list = Array.isArray(consumed) ? consumed : consumed === undefined ? [] : [consumed];
  return list.reduce((sum, entry) => sum + (entry.CapacityUnits ?? 0), 0);
};

type Next = (args: { input: Input }) => Promise<{ output: Output }>;

/** The one overload of a client's middleware stack used here (the SDK types it per client). */
interface InitializeStack {
  add(
    middleware: (next: Next, context: { commandName?: string }) => Next,
    options: { step: 'initialize'; name: string },
  ): void;
}

const record = (tally: AwsTally, key: string, input: Input, output: Output | undefined): void => {
  tally[key] ??= {
    requests: 0,
    failed: 0,
    attempts: 0,
    items: 0,
    readCapacityUnits: 0,
    writeCapacityUnits: 0,
  };
  const entry = tally[key];
  const operation = key.slice(key.indexOf(':') + 1);
  entry.requests++;
  if (output === undefined) {
    // Refused (a condition not met, mostly): billed like a success, but no capacity reported.
    entry.failed++;
    return;
  }
  entry.attempts += output.$metadata?.attempts ?? 1;
  entry.items += itemsOf(operation, input, output);
  const units = capacityOf(output);
  if (READS.has(operation)) entry.readCapacityUnits += units;
  else entry.writeCapacityUnits += units;
};

/**
 * Counts every call the client makes into `target()` (read at each call, so that phases can be
 * told apart), asking DynamoDB to report the capacity each call consumed.
 */
const tallyCalls = (
  client: DynamoDBClient | SQSClient,
  service: 'dynamodb' | 'sqs',
  target: () => AwsTally,
): void => {
  (client.middlewareStack as unknown as InitializeStack).add(
    (next, context) => async (args) => {
      const operation = (context.commandName ?? 'Unknown').replace(/Command$/, '');
      if (service === 'dynamodb' && WITH_CAPACITY.has(operation)) {
        args.input = { ...args.input, ReturnConsumedCapacity: 'TOTAL' };
      }
      let output: Output | undefined;
      try {
        const result = await next(args);
        output = result.output;
        return result;
      } finally {
        record(target(), `${service}:${operation}`, args.input, output);
      }
    },
    { step: 'initialize', name: 'benchTally' },
  );
};

/** Orthanc requests per phase: the counts accumulate; a phase reports its difference. */
const difference = (after: ConnectionCounts, before: ConnectionCounts): ConnectionCounts =>
  Object.fromEntries(
    Object.entries(after).map(([host, counts]) => [
      host,
      {
        requests: counts.requests - (before[host]?.requests ?? 0),
        connections: counts.connections - (before[host]?.connections ?? 0),
      },
    ]),
  );

const copy = (counts: ConnectionCounts): ConnectionCounts => structuredClone(counts);

/** A feed that needs more invocations than this is not being read: stop rather than loop. */
const MAX_INVOCATIONS = 100;

export const runPoller = async (job: PollerJob): Promise<PollerJobResult> => {
  const orthanc = countConnections();
  Object.assign(process.env, job.env);
  const runtime = await createRuntime(process.env, async () => {
    throw new Error('the benchmark gives credentials in the configuration, not in secrets');
  });
  let phase: AwsTally = {};
  const mapping: AwsTally = {};
  tallyCalls(runtime.dynamodb, 'dynamodb', () => phase);
  tallyCalls(runtime.sqs, 'sqs', () => phase);
  const mappingSqs = new SQSClient({ useQueueUrlAsEndpoint: false });
  tallyCalls(mappingSqs, 'sqs', () => mapping);

  const poller = createPollerHandler(async () => runtime);
  const cpuStart = process.cpuUsage();
  const started = performance.now();
  let invocations = 0;
  const reports: InvocationReport[] = [];
  for (;;) {
    if (++invocations > MAX_INVOCATIONS)
      throw new Error(`not caught up after ${MAX_INVOCATIONS} invocations`);
    // No event time: the scheduled sweep of all studies stays out of this measurement.
    const { sources } = await poller({}, lambdaContext('poller', job.invocationMs));
    const [result] = sources;
    if (result?.report === undefined) throw new Error(`poll failed: ${result?.error ?? 'no source'}`);
    const { report } = result;
    const { changesRead, queued, waiting, outOfTime } = report;
    reports.push({ changesRead, queued, waiting, outOfTime });
    if (report.outOfTime !== true && !report.raced && report.waiting === 0) break;
  }
  const pollerSeconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  const pollerPhase = { aws: phase, eventSourceMapping: {}, orthanc: copy(orthanc), reports };

  phase = {};
  const forwarder = createForwarderHandler(async () => runtime);
  const forwardStarted = performance.now();
  let delivered = 0;
  let forwarderInvocations = 0;
  while (delivered < job.forwardStudies) {
    const report = await deliverOnce({
      sqs: mappingSqs,
      queueUrl: runtime.queueUrl,
      handler: forwarder,
      batchSize: Math.min(job.forwarderBatchSize, job.forwardStudies - delivered),
    });
    if (report.received === 0) break;
    if (report.failed > 0) throw new Error(`the forwarder failed ${report.failed} of its messages`);
    delivered += report.received;
    forwarderInvocations++;
  }
  mappingSqs.destroy();
  return {
    seconds: pollerSeconds,
    cpu,
    counts: { invocations, studiesForwarded: delivered },
    poller: { ...pollerPhase, invocations, seconds: pollerSeconds },
    forwarder: {
      aws: phase,
      eventSourceMapping: mapping,
      orthanc: difference(orthanc, pollerPhase.orthanc),
      invocations: forwarderInvocations,
      seconds: (performance.now() - forwardStarted) / 1000,
    },
  };
};
