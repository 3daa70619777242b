/**
 * The metrics the Lambdas emit, as CloudWatch receives them: the real poller and forwarder
 * handlers run on DynamoDB Local, fauxqs and real Orthancs while stdout is captured, and every
 * EMF record is checked against the dimension sets the stack's alarms and dashboard name
 * (lib/forwarder-monitoring.ts): `service` alone, or `service` and `SourceId` (`DestinationId` for
 * DestinationUnavailable). No record, and no log line, carries PHI. A proxy in front of the
 * destination hides the QIDO-RS answers for a while, so that a move fails its verification, and
 * then refuses the credentials for a while, so that a study waits for the destination.
 */
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Context, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type AwsRuntime, createRuntime } from '../lambdas/aws/runtime.ts';
import type { MetricName } from '../lambdas/core/metrics.ts';
import { createForwarderHandler } from '../lambdas/handlers/forwarder.ts';
import { createPollerHandler } from '../lambdas/handlers/poller.ts';
import { METRICS_NAMESPACE, SERVICE_NAME } from '../lib/orthanc-forwarder.ts';
import { type GeneratedSet, generateStudies } from '../testbed/dicom-generator.ts';
import { type DynamoDbLocal, startDynamoDbLocal } from '../testbed/dynamodb-local.ts';
import { deliverOnce, lambdaContext } from '../testbed/event-source-mapping.ts';
import { OrthancFleet, type OrthancServer } from '../testbed/orthanc.ts';
import { emulatorEnv, type SqsEmulator, startSqsEmulator } from '../testbed/sqs-emulator.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';
import { drainQueue } from './support/aws-emulators.ts';

const METRIC_NAMES: readonly MetricName[] = [
  'ChangesRead',
  'StudiesQueued',
  'CursorLag',
  'StudiesWaiting',
  'SourceUnreachable',
  'SourceReset',
  'LookupFailures',
  'StudiesMoved',
  'InstancesMoved',
  'BytesMoved',
  'MoveDuration',
  'InstancesRejected',
  'Conflicts',
  'VerificationFailures',
  'InstancesDeleted',
  'Retries',
  'DeadLettered',
  'DestinationUnavailable',
  'StudiesLeft',
  'InstancesLeft',
  'BytesLeft',
  'MoveRate',
  'SecondsToFinish',
];
const UNITS: Partial<Record<MetricName, string>> = {
  BytesMoved: 'Bytes',
  MoveDuration: 'Milliseconds',
  BytesLeft: 'Bytes',
  MoveRate: 'Bytes/Second',
  SecondsToFinish: 'Seconds',
};
const POLL_METRICS = [
  'ChangesRead',
  'StudiesQueued',
  'StudiesWaiting',
  'CursorLag',
  'SourceUnreachable',
  'LookupFailures',
];
const OUTCOME_METRICS = [
  'StudiesMoved',
  'InstancesMoved',
  'BytesMoved',
  'MoveDuration',
  'InstancesRejected',
  'Conflicts',
  'InstancesDeleted',
];

interface EmfRecord {
  readonly _aws: {
    readonly Timestamp: number;
    readonly CloudWatchMetrics: readonly {
      readonly Namespace: string;
      readonly Dimensions: readonly (readonly string[])[];
      readonly Metrics: readonly { readonly Name: string; readonly Unit: string }[];
    }[];
  };
  readonly [key: string]: unknown;
}

/** Values of one metric, summed over records whose dimensions are exactly `dimensions`. */
const valuesOf = (records: readonly EmfRecord[], name: string, dimensions: Record<string, string>) =>
  records
    .filter(
      (record) =>
        record._aws.CloudWatchMetrics[0]?.Metrics.some((metric) => metric.Name === name) &&
        JSON.stringify(record._aws.CloudWatchMetrics[0]?.Dimensions) ===
          JSON.stringify([Object.keys(dimensions)]) &&
        Object.entries(dimensions).every(([key, value]) => record[key] === value),
    )
    .flatMap((record) => {
      const value = record[name];
      return Array.isArray(value) ? (value as number[]) : [value as number];
    });
const sum = (values: readonly number[]) => values.reduce((total, value) => total + value, 0);

/**
 * A pass-through proxy to the destination that, while `hideQido` is set, answers every QIDO-RS
 * listing with 204, and while `refuse` is set, answers every request with 401.
 */
const startProxy = async (
  target: OrthancServer,
  state: { hideQido: boolean; refuse: boolean },
): Promise<Server> => {
  const server = createServer((incoming, outgoing) => {
    if (state.refuse) {
      outgoing.writeHead(401, { 'content-type': 'text/plain' }).end('Unauthorized');
      incoming.resume();
      return;
    }
    if (
      state.hideQido &&
      incoming.method === 'GET' &&
      /\/studies\/[^/]+\/instances/.test(incoming.url ?? '')
    ) {
      outgoing.writeHead(204).end();
      incoming.resume();
      return;
    }
    const forwarded = request(
      {
        host: '127.0.0.1',
        port: target.httpPort,
        method: incoming.method,
        path: incoming.url,
        headers: { ...incoming.headers, host: `127.0.0.1:${target.httpPort}` },
      },
      (answer) => {
        outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(outgoing);
      },
    );
    forwarded.on('error', () => outgoing.destroy());
    incoming.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
};

describe('EMF records of a forwarder run', () => {
  const fleet = new OrthancFleet();
  const proxyState = { hideQido: false, refuse: false };
  let dynamo: DynamoDbLocal;
  let sqs: SqsEmulator;
  let source: OrthancServer;
  let destination: OrthancServer;
  let proxy: Server;
  let runtime: AwsRuntime;
  let poller: ReturnType<typeof createPollerHandler>;
  let forwarder: (event: SQSEvent, context: Context) => Promise<SQSBatchResponse>;
  const sets: GeneratedSet[] = [];
  const captured: string[] = [];
  const capturedErrors: string[] = [];
  let records: EmfRecord[] = [];
  let logLines: Record<string, unknown>[] = [];

  const deliver = () => deliverOnce({ sqs: sqs.client, queueUrl: sqs.queueUrl, handler: forwarder });
  /** Delivers until the queue is empty; returns how many deliveries failed. */
  const drain = async () =>
    (await drainQueue({ sqs: sqs.client, queueUrl: sqs.queueUrl, handler: forwarder })).reduce(
      (failed, report) => failed + report.failed,
      0,
    );
  /** Polls as EventBridge would until `count` studies were queued. */
  const pollUntilQueued = async (count: number) => {
    let queued = 0;
    for (let round = 0; round < 60 && queued < count; round++) {
      const result = await poller({ time: new Date().toISOString() }, lambdaContext('poller', 60_000));
      queued += result.sources.reduce((total, s) => total + (s.report?.queued ?? 0), 0);
      if (queued < count) await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(queued).toBe(count);
  };
  const upload = async (seed: string) => {
    const set = generateStudies({
      patients: 1,
      studiesPerPatient: 1,
      seriesPerStudy: 1,
      instancesPerSeries: 3,
      pixelBytes: 4 * 1024,
      seed,
    });
    sets.push(set);
    const results = await uploadToOrthanc(source, set.instances);
    expect(results.every((result) => result.status === 200)).toBe(true);
  };

  beforeAll(async () => {
    [dynamo, sqs, destination, source] = await Promise.all([
      startDynamoDbLocal(),
      startSqsEmulator({ maxReceiveCount: 5, visibilityTimeoutSeconds: 30 }),
      fleet.start({ name: 'destination', stableAge: 1 }),
      fleet.start({ name: 'site-0', stableAge: 1 }),
    ]);
    proxy = await startProxy(destination, proxyState);
    const env = {
      ...emulatorEnv({ dynamodb: dynamo.endpoint, sqs: sqs.endpoint }),
      AWS_LAMBDA_FUNCTION_NAME: 'orthanc-forwarder-metrics-test',
      // What the stack sets (lib/orthanc-forwarder.ts), so the records are the deployed ones; Lambda
      // sets AWS_LAMBDA_LOG_LEVEL from the function's logging configuration (aws.logLevel).
      POWERTOOLS_SERVICE_NAME: SERVICE_NAME,
      POWERTOOLS_METRICS_NAMESPACE: METRICS_NAMESPACE,
      AWS_LAMBDA_LOG_LEVEL: 'INFO',
    };
    Object.assign(process.env, env);
    delete process.env.POWERTOOLS_DEV;
    delete process.env.POWERTOOLS_METRICS_DISABLED;
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    runtime = await createRuntime(
      {
        ...env,
        FORWARDER_CONFIG: JSON.stringify({
          sources: [
            { id: 'site-0', url: source.url, secretId: 'source-0' },
            // Nobody listens there: the poller counts it unreachable.
            { id: 'site-down', url: 'http://127.0.0.1:9', secretId: 'source-0' },
          ],
          destination: { url: `${proxyUrl}/dicom-web`, secretId: 'destination' },
          quietSeconds: 2,
          retry: { maxAttempts: 5, baseDelayMs: 100, maxDelayMs: 200 },
        }),
        STATE_TABLE: dynamo.tableName,
        QUEUE_URL: sqs.queueUrl,
        DLQ_URL: sqs.deadLetterQueueUrl,
      },
      async () => ({ username: 'orthanc', password: 'orthanc' }),
    );
    poller = createPollerHandler(async () => runtime);
    forwarder = createForwarderHandler(async () => runtime);

    const stdout = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      captured.push(String(chunk));
      return true;
    });
    // Warnings and errors go to stderr: checked for PHI too.
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      capturedErrors.push(String(chunk));
      return true;
    });
    try {
      // A study moved at the first attempt.
      await upload('emf-a');
      await pollUntilQueued(1);
      expect(await drain()).toBe(0);
      // A study whose first attempt is not verified (the destination lists nothing), then moved.
      await upload('emf-b');
      await pollUntilQueued(1);
      proxyState.hideQido = true;
      expect(await deliver()).toEqual({ received: 1, failed: 1 });
      proxyState.hideQido = false;
      expect(await drain()).toBe(0);
      // A study that waits once for a destination refusing the credentials, then moved.
      await upload('emf-c');
      await pollUntilQueued(1);
      proxyState.refuse = true;
      expect(await deliver()).toEqual({ received: 1, failed: 0 });
      proxyState.refuse = false;
      expect(await drain()).toBe(0);
    } finally {
      stdout.mockRestore();
      stderr.mockRestore();
    }
    const lines = captured
      .join('')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    records = lines.filter((line) => '_aws' in line) as unknown as EmfRecord[];
    logLines = lines.filter((line) => !('_aws' in line));
  });

  afterAll(async () => {
    proxy?.close();
    await Promise.allSettled([fleet.destroyAll(), dynamo?.stop(), sqs?.stop()]);
  });

  it('moved both studies: the source is empty, the destination holds them', async () => {
    const instances = sets.flatMap((set) => set.instances).length;
    expect((await source.rest<{ CountInstances: number }>('GET', '/statistics')).CountInstances).toBe(0);
    expect((await destination.rest<{ CountInstances: number }>('GET', '/statistics')).CountInstances).toBe(
      instances,
    );
  });

  it('writes only EMF records of the namespace, with service alone or service and SourceId or DestinationId', () => {
    expect(records.length).toBeGreaterThan(10);
    for (const record of records) {
      const [directive, ...more] = record._aws.CloudWatchMetrics;
      expect(more).toEqual([]);
      expect(directive?.Namespace).toBe(METRICS_NAMESPACE);
      expect([[['service']], [['service', 'SourceId']], [['service', 'DestinationId']]]).toContainEqual(
        directive?.Dimensions,
      );
      expect(record.service).toBe(SERVICE_NAME);
      const names = directive?.Metrics.map((metric) => metric.Name) ?? [];
      for (const name of names) expect(METRIC_NAMES).toContain(name);
      // Nothing else in a record: no metadata, no property that could carry a tag value.
      const dimension = directive?.Dimensions[0]?.[1];
      expect(Object.keys(record).sort()).toEqual(
        ['_aws', 'service', ...(dimension === undefined ? [] : [dimension]), ...names].sort(),
      );
      if (dimension === 'SourceId') expect(['site-0', 'site-down']).toContain(record.SourceId);
      if (dimension === 'DestinationId') expect(record.DestinationId).toBe('destination');
      if (dimension !== undefined) expect(names).toHaveLength(1);
      for (const metric of directive?.Metrics ?? []) {
        expect(metric.Unit).toBe(UNITS[metric.Name as MetricName] ?? 'Count');
      }
    }
  });

  it('emits the poll metrics per source, and a source that cannot be reached as unreachable', () => {
    const site = { service: SERVICE_NAME, SourceId: 'site-0' };
    for (const name of POLL_METRICS) expect(valuesOf(records, name, site).length, name).toBeGreaterThan(0);
    expect(new Set(valuesOf(records, 'SourceUnreachable', site))).toEqual(new Set([0]));
    expect(sum(valuesOf(records, 'StudiesQueued', site))).toBe(3);
    expect(sum(valuesOf(records, 'ChangesRead', site))).toBeGreaterThan(0);
    for (const value of valuesOf(records, 'CursorLag', site)) expect(value).toBeGreaterThanOrEqual(0);

    const down = { service: SERVICE_NAME, SourceId: 'site-down' };
    const unreachable = valuesOf(records, 'SourceUnreachable', down);
    expect(unreachable.length).toBeGreaterThan(0);
    expect(new Set(unreachable)).toEqual(new Set([1]));
    expect(valuesOf(records, 'ChangesRead', down)).toEqual([]);
  });

  it('emits the Progress set per source at each poll: what it holds by its own statistics, the rate once studies left it', async () => {
    const site = { service: SERVICE_NAME, SourceId: 'site-0' };
    // Every poll found the one study just uploaded: each upload was moved before the next.
    const polls = valuesOf(records, 'ChangesRead', site).length;
    expect(valuesOf(records, 'StudiesLeft', site)).toEqual(Array(polls).fill(1));
    expect(valuesOf(records, 'InstancesLeft', site)).toEqual(Array(polls).fill(3));
    for (const bytes of valuesOf(records, 'BytesLeft', site)) expect(bytes).toBeGreaterThan(3 * 4 * 1024);
    // Nothing had left the source at the first poll; the last came after two moves.
    const rates = valuesOf(records, 'MoveRate', site);
    expect(rates).toHaveLength(polls);
    expect(rates[0]).toBe(0);
    expect(rates.at(-1)).toBeGreaterThan(0);
    // Estimated once there is a rate: at the last poll the source held one study of 3 instances,
    // and 2 such studies had left it within the hour (their size on disk counts more than their files).
    const toFinish = valuesOf(records, 'SecondsToFinish', site);
    expect(toFinish.length).toBeGreaterThan(0);
    for (const seconds of toFinish) expect(seconds).toBeGreaterThanOrEqual(0);
    expect(toFinish.at(-1)).toBeLessThanOrEqual(2 * 3_600);
    // Now empty: the statistics say so.
    expect((await source.rest<{ CountStudies: number }>('GET', '/statistics')).CountStudies).toBe(0);
    // Of a source that could not be reached, nothing.
    const down = { service: SERVICE_NAME, SourceId: 'site-down' };
    for (const name of ['StudiesLeft', 'InstancesLeft', 'BytesLeft', 'MoveRate', 'SecondsToFinish'])
      expect(valuesOf(records, name, down), name).toEqual([]);
  });

  it('emits the outcome metrics per source, and every per-source metric for all sources too', () => {
    const site = { service: SERVICE_NAME, SourceId: 'site-0' };
    const all = { service: SERVICE_NAME };
    for (const name of [...POLL_METRICS, ...OUTCOME_METRICS]) {
      expect(sum(valuesOf(records, name, all)), name).toBe(
        sum(valuesOf(records, name, site)) + sum(valuesOf(records, name, { ...site, SourceId: 'site-down' })),
      );
    }
    const instances = sets.flatMap((set) => set.instances);
    expect(sum(valuesOf(records, 'StudiesMoved', site))).toBe(3);
    expect(valuesOf(records, 'MoveDuration', site)).toHaveLength(3);
    expect(sum(valuesOf(records, 'InstancesDeleted', site))).toBe(instances.length);
    // The second study's instances were sent by the attempt that failed its verification; the
    // retry found them at the destination and sent nothing. The third's first attempt sent nothing.
    expect(sum(valuesOf(records, 'InstancesMoved', site))).toBe(
      (sets[0]?.instances.length ?? 0) + (sets[2]?.instances.length ?? 0),
    );
    expect(sum(valuesOf(records, 'BytesMoved', site))).toBeGreaterThan(0);
    expect(sum(valuesOf(records, 'InstancesRejected', site))).toBe(0);
    expect(sum(valuesOf(records, 'Conflicts', site))).toBe(0);
  });

  it('counts the verification failure and its retry for all sources, without SourceId', () => {
    const all = { service: SERVICE_NAME };
    expect(sum(valuesOf(records, 'VerificationFailures', all))).toBe(1);
    expect(sum(valuesOf(records, 'Retries', all))).toBe(1);
    expect(valuesOf(records, 'DeadLettered', all)).toEqual([]);
    for (const name of ['VerificationFailures', 'Retries']) {
      expect(
        records.filter((r) => name in r && 'SourceId' in r),
        name,
      ).toEqual([]);
    }
  });

  it('counts a study waiting for a destination that refuses the credentials per destination, as no retry', () => {
    const all = { service: SERVICE_NAME };
    expect(sum(valuesOf(records, 'DestinationUnavailable', { ...all, DestinationId: 'destination' }))).toBe(
      1,
    );
    expect(sum(valuesOf(records, 'DestinationUnavailable', all))).toBe(1);
    expect(records.filter((r) => 'DestinationUnavailable' in r && 'SourceId' in r)).toEqual([]);
    // Logged once, naming the setting to fix; the wait is no failed attempt.
    const unavailable = capturedErrors
      .join('')
      .split('\n')
      .filter((line) => line.includes('destination unavailable'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(unavailable).toHaveLength(1);
    expect(unavailable[0]).toMatchObject({
      field: 'destination.secretId',
      fault: 'credentials',
      status: 401,
    });
  });

  it('prints no PHI: no patient value, no DICOM UID, in any record or log line', () => {
    expect(logLines.length).toBeGreaterThan(0);
    const errors = capturedErrors.join('');
    expect(errors).toContain('not verified at the destination');
    expect(errors).toContain('source poll failed');
    const output = captured.join('') + errors;
    const secrets = [
      ...sets.flatMap((set) => set.phiValues()),
      ...sets.flatMap((set) =>
        set.instances.flatMap((i) => [i.studyInstanceUid, i.seriesInstanceUid, i.sopInstanceUid]),
      ),
    ];
    expect(secrets.length).toBeGreaterThan(10);
    for (const value of secrets) expect(output, value).not.toContain(value);
  });
});
