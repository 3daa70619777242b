/**
 * The poller run: a source Orthanc whose change feed holds a backlog of about 100,000 changes
 * (10,000 studies of 4 instances, each study its own patient: 4 NewInstance, NewSeries,
 * NewStudy, NewPatient, StableSeries, StableStudy, StablePatient), read by the real poller
 * handler on DynamoDB Local and fauxqs until it has caught up; then a sample of the queued
 * studies moved by the real forwarder handler. Reports the time, the requests to Orthanc and
 * every AWS request, per study: the figures behind the README's cost estimate.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReceiveMessageCommand } from '@aws-sdk/client-sqs';
import { parseConfig } from '../../lambdas/core/config.ts';
import { decodeWorkItem } from '../../lambdas/core/work-item.ts';
import { generateStudies } from '../../testbed/dicom-generator.ts';
import { startDynamoDbLocal } from '../../testbed/dynamodb-local.ts';
import { forwarderConfigFor } from '../../testbed/forwarder-config.ts';
import { OrthancFleet, type OrthancServer } from '../../testbed/orthanc.ts';
import { emulatorEnv, type SqsEmulator, startSqsEmulator } from '../../testbed/sqs-emulator.ts';
import { uploadToOrthanc } from '../../testbed/upload.ts';
import { CHILD, runChild } from './lab.ts';
import type { PollerShape } from './options.ts';
import type { AwsTally, PhaseRequests, PollerJob, PollerJobResult } from './poller-job.ts';
import { cpuSeconds } from './proc.ts';
import { round } from './stats.ts';
import type { Progress } from './trials.ts';

/** Requests per study, summed by service, and the capacity DynamoDB reported consumed. */
export interface PerStudy {
  readonly dynamodbRequests: number;
  readonly writeRequestUnits: number;
  readonly readRequestUnits: number;
  readonly sqsRequests: number;
  /** Requests to the source and destination Orthancs. */
  readonly orthancRequests: number;
}

export interface PollerPhaseResult {
  readonly invocations: number;
  readonly seconds: number;
  /** Every AWS operation called: requests, attempts, items, capacity units. */
  readonly aws: AwsTally;
  readonly eventSourceMapping: AwsTally;
  readonly orthancRequests: number;
  readonly orthancConnections: number;
  readonly perStudy: PerStudy;
}

export interface PollerResult {
  readonly studies: number;
  readonly instances: number;
  /** The changes in the source's feed (its last sequence number once everything was stable). */
  readonly changes: number;
  /** The poller's Lambda timeout each invocation was given. */
  readonly invocationSeconds: number;
  readonly poller: PollerPhaseResult & {
    /** Each invocation's report: changes read, studies queued, studies still watched, out of time. */
    readonly reports: PollerJobResult['poller']['reports'];
    readonly changesPerSecond: number;
    /** CPU seconds per 1,000 changes: the poller's process, and the source Orthanc. */
    readonly cpuSecondsPer1000Changes: { readonly poller: number; readonly source: number };
  };
  readonly forwarder: PollerPhaseResult & { readonly studies: number };
  /** What reached the queue, checked against the studies the source held. */
  readonly queued: {
    readonly messages: number;
    readonly distinctStudies: number;
    readonly duplicates: number;
    readonly missing: number;
  };
}

/** Never deployed: the aws section only needs a valid VPC for its defaults to be read. */
const PLACEHOLDER_VPC = {
  vpcId: 'vpc-00000000',
  availabilityZones: ['us-east-1a'],
  privateSubnetIds: ['subnet-00000000'],
  routeTableIds: ['rtb-00000000'],
  securityGroupIds: ['sg-00000000'],
};

/** The changes Orthanc logs for one study of one series whose patient has no other study. */
const changesPerStudy = (instances: number) => instances + 6;

const sum = (tally: AwsTally, service: string, field: keyof AwsTally[string]): number =>
  Object.entries(tally)
    .filter(([operation]) => operation.startsWith(`${service}:`))
    .reduce((total, [, entry]) => total + entry[field], 0);

/** Requests (or new connections) to the Orthancs, all servers together. */
const orthancTotal = (phase: PhaseRequests, field: 'requests' | 'connections'): number =>
  Object.values(phase.orthanc).reduce((total, counts) => total + counts[field], 0);

const phaseResult = (phase: PollerJobResult['forwarder'], studies: number): PollerPhaseResult => {
  const per = (value: number) => round(value / Math.max(1, studies), 3);
  return {
    invocations: phase.invocations,
    seconds: round(phase.seconds, 2),
    aws: phase.aws,
    eventSourceMapping: phase.eventSourceMapping,
    orthancRequests: orthancTotal(phase, 'requests'),
    orthancConnections: orthancTotal(phase, 'connections'),
    perStudy: {
      dynamodbRequests: per(sum(phase.aws, 'dynamodb', 'requests')),
      writeRequestUnits: per(sum(phase.aws, 'dynamodb', 'writeCapacityUnits')),
      readRequestUnits: per(sum(phase.aws, 'dynamodb', 'readCapacityUnits')),
      sqsRequests: per(sum(phase.aws, 'sqs', 'requests') + sum(phase.eventSourceMapping, 'sqs', 'requests')),
      orthancRequests: per(orthancTotal(phase, 'requests')),
    },
  };
};

/** Waits until the feed has stopped growing at or beyond `expected` changes: every study stable. */
const settledFeed = async (source: OrthancServer, expected: number): Promise<number> => {
  let previous = -1;
  for (;;) {
    const { Last } = await source.rest<{ Last: number }>('GET', '/changes?last');
    if (Last >= expected && Last === previous) return Last;
    previous = Last;
    await sleep(1_500);
  }
};

/** Every message left on the queue, received once (the visibility timeout hides it afterwards). */
const queuedStudies = async (sqs: SqsEmulator): Promise<string[]> => {
  const studies: string[] = [];
  for (;;) {
    const { Messages = [] } = await sqs.client.send(
      new ReceiveMessageCommand({ QueueUrl: sqs.queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }),
    );
    if (Messages.length === 0) return studies;
    for (const message of Messages) studies.push(decodeWorkItem(message.Body ?? '').studyId);
  }
};

const loadFeed = async (source: OrthancServer, shape: PollerShape, progress: Progress) => {
  const set = generateStudies({
    patients: shape.studies,
    studiesPerPatient: 1,
    seriesPerStudy: 1,
    instancesPerSeries: shape.instancesPerStudy,
    pixelBytes: 256,
    seed: 'bench-feed',
  });
  progress(`poller: loading ${set.instances.length} instances in ${shape.studies} studies into the source`);
  const results = await uploadToOrthanc(source, set.instances, { concurrency: 8 });
  const refused = results.filter((result) => result.status !== 200);
  if (refused.length > 0) throw new Error(`poller: the source refused ${refused.length} instances`);
  const changes = await settledFeed(source, shape.studies * changesPerStudy(shape.instancesPerStudy));
  return { instances: set.instances.length, changes };
};

/** The run; starts and stops its own Orthancs, DynamoDB Local and fauxqs. */
export const measurePoller = async (
  shape: PollerShape,
  work: string,
  progress: Progress,
): Promise<PollerResult> => {
  const fleet = new OrthancFleet();
  // Started at once; whichever started is stopped at the end, whatever failed.
  const emulators = [
    startDynamoDbLocal(),
    startSqsEmulator({ maxReceiveCount: 5, visibilityTimeoutSeconds: 3600 }),
  ] as const;
  try {
    const [dynamo, sqs, source, destination] = await Promise.all([
      ...emulators,
      fleet.start({ name: 'bench-feed-source', stableAge: 1 }),
      fleet.start({ name: 'bench-feed-destination' }),
    ]);
    const loaded = await loadFeed(source, shape, progress);
    const sourceStudies = await source.rest<string[]>('GET', '/studies');
    const config = parseConfig(
      forwarderConfigFor([{ id: 'site', server: source }], destination, {
        // The stack's section with its defaults: the poller's timeout and the forwarder's batch size.
        aws: { vpc: PLACEHOLDER_VPC },
      }),
    );
    if (config.aws === undefined) throw new Error('poller: the configuration lost its aws section');
    const invocationSeconds = config.aws.poller.timeoutSeconds;
    const job: PollerJob = {
      kind: 'poller',
      env: {
        ...emulatorEnv({ dynamodb: dynamo.endpoint, sqs: sqs.endpoint }),
        AWS_LAMBDA_FUNCTION_NAME: 'orthanc-forwarder-bench',
        POWERTOOLS_METRICS_NAMESPACE: 'OrthancForwarderBench',
        POWERTOOLS_LOG_LEVEL: 'WARN',
        FORWARDER_CONFIG: JSON.stringify(config),
        STATE_TABLE: dynamo.tableName,
        QUEUE_URL: sqs.queueUrl,
        DLQ_URL: sqs.deadLetterQueueUrl,
      },
      invocationMs: invocationSeconds * 1000,
      forwardStudies: Math.min(shape.forwardStudies, shape.studies),
      forwarderBatchSize: config.aws.forwarder.batchSize,
    };
    const jobPath = join(work, 'poller-job.json');
    writeFileSync(jobPath, JSON.stringify(job));
    progress(`poller: reading ${loaded.changes} changes`);
    const sourceCpuBefore = cpuSeconds(source.pid);
    const result = (await runChild([CHILD, jobPath])) as unknown as PollerJobResult;
    const sourceCpu = cpuSeconds(source.pid) - sourceCpuBefore;
    const remaining = await queuedStudies(sqs);
    const moved = await destination.rest<string[]>('GET', '/studies');
    const distinct = new Set([...remaining, ...moved]);
    const messages = remaining.length + (result.counts.studiesForwarded ?? 0);
    const perThousand = (value: number) => round((value * 1000) / loaded.changes, 3);
    return {
      studies: shape.studies,
      instances: loaded.instances,
      changes: loaded.changes,
      invocationSeconds,
      poller: {
        ...phaseResult(result.poller, shape.studies),
        reports: result.poller.reports,
        changesPerSecond: round(loaded.changes / result.poller.seconds, 0),
        cpuSecondsPer1000Changes: {
          poller: perThousand((result.cpu?.user ?? 0) / 1e6 + (result.cpu?.system ?? 0) / 1e6),
          source: perThousand(sourceCpu),
        },
      },
      forwarder: { ...phaseResult(result.forwarder, moved.length), studies: moved.length },
      queued: {
        messages,
        distinctStudies: distinct.size,
        duplicates: messages - distinct.size,
        missing: sourceStudies.filter((id) => !distinct.has(id)).length,
      },
    };
  } finally {
    await Promise.allSettled([
      fleet.destroyAll(),
      ...emulators.map(async (started) => (await started).stop()),
    ]);
  }
};
