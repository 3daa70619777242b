/**
 * Operating the stack (lib/forwarder-monitoring.ts): every alarm — its metric or math, statistic,
 * period, threshold, comparison, missing-data rule and actions —, the encrypted SNS topic they
 * notify, the dashboard's widgets, and the outputs the CLI's AWS mode reads. The EMF metrics
 * are matched with the exact dimension sets lambdas/aws/powertools-metrics.ts emits.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { App } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks, HIPAASecurityChecks } from 'cdk-nag';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../lambdas/core/config.ts';
import { addForwarder } from '../lib/forwarder-app.ts';
import type { ForwarderStack } from '../lib/forwarder-stack.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const exampleRaw = (): Record<string, unknown> =>
  JSON.parse(readFileSync(join(ROOT, 'examples/aws-config.json'), 'utf8'));
const cdkContext = (): Record<string, unknown> =>
  JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')).context;

type Json = unknown;
type Resource = { Type: string; Properties: Record<string, Json> };
type AlarmMetric = {
  Id: string;
  Expression?: string;
  ReturnData?: boolean;
  MetricStat?: {
    Metric: { Namespace: string; MetricName: string; Dimensions: { Name: string; Value: Json }[] };
    Period: number;
    Stat: string;
  };
};

/** A CloudFormation value as text: `ref:Id`, `getatt:Id.Attr`; other intrinsics as JSON. */
const render = (value: Json): string => {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object') {
    const object = value as Record<string, Json>;
    if ('Ref' in object) return `ref:${String(object.Ref)}`;
    if ('Fn::GetAtt' in object) return `getatt:${(object['Fn::GetAtt'] as string[]).join('.')}`;
    if ('Fn::Join' in object) {
      const [separator, parts] = object['Fn::Join'] as [string, Json[]];
      return parts.map(render).join(separator);
    }
  }
  return JSON.stringify(value);
};

const synth = (
  mutate: (raw: Record<string, unknown> & { aws: Record<string, unknown> }) => void = () => {},
) => {
  const raw = exampleRaw() as Record<string, unknown> & { aws: Record<string, unknown> };
  mutate(raw);
  const app = new App({ context: cdkContext() });
  const stack = addForwarder(app, { config: parseConfig(raw) });
  const template = Template.fromStack(stack);
  return { app, stack, template, resources: template.toJSON().Resources as Record<string, Resource> };
};

const logicalId = (stack: ForwarderStack, construct: { node: { defaultChild?: unknown } }) =>
  stack.getLogicalId(construct.node.defaultChild as Parameters<ForwarderStack['getLogicalId']>[0]);

describe('alarms, topic, dashboard and outputs of the stack from examples/aws-config.json', () => {
  let stack: ForwarderStack;
  let template: Template;
  let resources: Record<string, Resource>;
  let app: App;
  let ids: {
    topic: string;
    key: string;
    queue: string;
    dlq: string;
    table: string;
    poller: string;
    forwarder: string;
  };

  const alarmNamed = (name: string): Record<string, Json> => {
    const found = Object.values(resources).filter(
      (r) => r.Type === 'AWS::CloudWatch::Alarm' && r.Properties.AlarmName === `OrthancForwarder-${name}`,
    );
    expect(found, name).toHaveLength(1);
    return (found[0] as Resource).Properties;
  };
  /** The alarm's only metric, or (for math) the expression and its metrics by id. */
  const metricsOf = (alarm: Record<string, Json>) => alarm.Metrics as AlarmMetric[];
  const emf = (name: string, stat: string, period: number, sourceId?: string, dimension = 'SourceId') => ({
    Metric: {
      Namespace: 'OrthancForwarder',
      MetricName: name,
      Dimensions:
        sourceId === undefined
          ? [{ Name: 'service', Value: 'orthanc-forwarder' }]
          : [
              { Name: dimension, Value: sourceId },
              { Name: 'service', Value: 'orthanc-forwarder' },
            ],
    },
    Period: period,
    Stat: stat,
  });
  const lambdaMetric = (fn: string, name: string, period: number, stat = 'Sum') => ({
    Metric: {
      Namespace: 'AWS/Lambda',
      MetricName: name,
      Dimensions: [{ Name: 'FunctionName', Value: { Ref: fn } }],
    },
    Period: period,
    Stat: stat,
  });
  const sqsMetric = (queue: string, name: string) => ({
    Metric: {
      Namespace: 'AWS/SQS',
      MetricName: name,
      Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queue, 'QueueName'] } }],
    },
    Period: 300,
    Stat: 'Maximum',
  });
  const expectAlarm = (
    name: string,
    expected: {
      threshold: number;
      comparison: string;
      missing: string;
      periods?: number;
      metric?: object;
      expression?: string;
      using?: Record<string, object>;
    },
  ) => {
    const alarm = alarmNamed(name);
    expect(alarm).toMatchObject({
      ActionsEnabled: true,
      AlarmActions: [{ Ref: ids.topic }],
      OKActions: [{ Ref: ids.topic }],
      Threshold: expected.threshold,
      ComparisonOperator: expected.comparison,
      TreatMissingData: expected.missing,
      EvaluationPeriods: expected.periods ?? 1,
      DatapointsToAlarm: expected.periods ?? 1,
    });
    expect(alarm.AlarmDescription).toMatch(/Runbook: docs\/operations\.md/);
    const metrics = metricsOf(alarm);
    if (expected.metric !== undefined) {
      expect(metrics).toHaveLength(1);
      expect(metrics[0]?.MetricStat).toEqual(expected.metric);
      return;
    }
    const returned = metrics.filter((m) => m.ReturnData !== false);
    expect(returned).toHaveLength(1);
    expect(returned[0]?.Expression).toBe(expected.expression);
    const using = Object.fromEntries(
      metrics.filter((m) => m.ReturnData === false).map((m) => [m.Id, m.MetricStat]),
    );
    expect(using).toEqual(expected.using);
  };

  beforeAll(() => {
    ({ app, stack, template, resources } = synth((raw) => {
      raw.aws.alarms = { email: 'pacs-ops@hospital.example' };
    }));
    const { monitoring, forwarder } = stack;
    ids = {
      topic: logicalId(stack, monitoring.alarmTopic),
      key: logicalId(stack, monitoring.alarmTopicKey),
      queue: logicalId(stack, forwarder.queue),
      dlq: logicalId(stack, forwarder.deadLetterQueue),
      table: logicalId(stack, forwarder.table),
      poller: logicalId(stack, forwarder.pollerFunction),
      forwarder: logicalId(stack, forwarder.forwarderFunction),
    };
  });

  it('has exactly the alarms of the runbook: ten, one per source and one per destination', () => {
    const names = Object.values(resources)
      .filter((r) => r.Type === 'AWS::CloudWatch::Alarm')
      .map((r) => r.Properties.AlarmName);
    expect(names.sort()).toEqual(
      [
        'DeadLetterQueueNotEmpty',
        'OldestMessageTooOld',
        'PollerErrors',
        'NoSuccessfulPoll',
        'ForwarderErrorRate',
        'InstancesRejected',
        'Conflicts',
        'PollerThrottles',
        'ForwarderThrottles',
        'ForwarderDurationNearTimeout',
        'SourceUnreachable-site-a',
        'SourceUnreachable-site-b',
        'DestinationUnavailable-destination',
      ]
        .map((name) => `OrthancForwarder-${name}`)
        .sort(),
    );
    expect([...stack.monitoring.alarms.keys()].sort()).toEqual(
      names.map((name) => String(name).replace('OrthancForwarder-', '')).sort(),
    );
    // No composite alarms, nothing the runbook does not explain.
    template.resourceCountIs('AWS::CloudWatch::CompositeAlarm', 0);
  });

  it('DLQ not empty: the most messages visible in the DLQ over 5 minutes above 0', () => {
    expectAlarm('DeadLetterQueueNotEmpty', {
      metric: sqsMetric(ids.dlq, 'ApproximateNumberOfMessagesVisible'),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      // An idle queue stops reporting: a standing alarm must not turn OK for want of data.
      missing: 'missing',
    });
  });

  it('oldest message: the age of the oldest work item above aws.alarms.oldestMessageAgeMinutes', () => {
    expectAlarm('OldestMessageTooOld', {
      metric: sqsMetric(ids.queue, 'ApproximateAgeOfOldestMessage'),
      threshold: 60 * 60,
      comparison: 'GreaterThanThreshold',
      missing: 'missing',
    });
  });

  it('poller errors: any failed invocation of the poller in 5 minutes', () => {
    expectAlarm('PollerErrors', {
      metric: lambdaMetric(ids.poller, 'Errors', 300),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      missing: 'notBreaching',
    });
  });

  it('no successful poll: invocations minus errors below 1 over aws.alarms.noPollMinutes, no data breaching', () => {
    expectAlarm('NoSuccessfulPoll', {
      expression: 'FILL(invocations, 0) - FILL(errors, 0)',
      using: {
        invocations: lambdaMetric(ids.poller, 'Invocations', 600),
        errors: lambdaMetric(ids.poller, 'Errors', 600),
      },
      threshold: 1,
      comparison: 'LessThanThreshold',
      missing: 'breaching',
    });
  });

  it('source unreachable: per source, the least SourceUnreachable over aws.alarms.sourceUnreachableMinutes is 1', () => {
    for (const source of ['site-a', 'site-b']) {
      expectAlarm(`SourceUnreachable-${source}`, {
        metric: emf('SourceUnreachable', 'Minimum', 15 * 60, source),
        threshold: 1,
        comparison: 'GreaterThanOrEqualToThreshold',
        missing: 'notBreaching',
      });
    }
  });

  it('forwarder error rate: failed attempts per 100 above the threshold, three 5-minute periods on end', () => {
    expectAlarm('ForwarderErrorRate', {
      expression:
        '100 * (FILL(retries, 0) + FILL(deadLettered, 0) + FILL(errors, 0)) / ' +
        '(FILL(outcomes, 0) + FILL(retries, 0) + FILL(deadLettered, 0) + FILL(errors, 0))',
      using: {
        outcomes: emf('MoveDuration', 'SampleCount', 300),
        retries: emf('Retries', 'Sum', 300),
        deadLettered: emf('DeadLettered', 'Sum', 300),
        errors: lambdaMetric(ids.forwarder, 'Errors', 300),
      },
      threshold: 10,
      comparison: 'GreaterThanThreshold',
      missing: 'notBreaching',
      periods: 3,
    });
  });

  it('instances rejected: any instance the destination refused, over 5 minutes', () => {
    expectAlarm('InstancesRejected', {
      metric: emf('InstancesRejected', 'Sum', 300),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      missing: 'notBreaching',
    });
  });

  it('conflicts: any instance held at its source by a conflict, over 5 minutes', () => {
    expectAlarm('Conflicts', {
      metric: emf('Conflicts', 'Sum', 300),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      // Moves that find no conflict publish 0s; periods without moves must not hold the alarm.
      missing: 'notBreaching',
    });
  });

  it('destination unavailable: per destination, any study that waited for it over 15 minutes', () => {
    expectAlarm('DestinationUnavailable-destination', {
      metric: emf('DestinationUnavailable', 'Sum', 15 * 60, 'destination', 'DestinationId'),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      // A destination that serves again publishes nothing: the alarm turns OK.
      missing: 'notBreaching',
    });
  });

  it('notifies an SNS topic encrypted with a rotated customer key CloudWatch may use, TLS only, with the email', () => {
    template.resourceCountIs('AWS::SNS::Topic', 1);
    expect(resources[ids.topic]?.Properties.KmsMasterKeyId).toEqual({ 'Fn::GetAtt': [ids.key, 'Arn'] });
    expect(resources[ids.key]?.Properties.EnableKeyRotation).toBe(true);
    template.hasResourceProperties('AWS::KMS::Key', {
      KeyPolicy: {
        Statement: Match.arrayWith([
          {
            Effect: 'Allow',
            Principal: { Service: 'cloudwatch.amazonaws.com' },
            Action: ['kms:Decrypt', 'kms:GenerateDataKey*'],
            Resource: '*',
            Condition: { StringEquals: { 'aws:SourceAccount': '123456789012' } },
          },
        ]),
      },
    });
    template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      Topics: [{ Ref: ids.topic }],
      PolicyDocument: {
        Statement: [
          {
            Sid: 'AllowPublishThroughSSLOnly',
            Effect: 'Deny',
            Principal: '*',
            Action: 'sns:Publish',
            Resource: { Ref: ids.topic },
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          },
          {
            Sid: 'CloudWatchAlarmsOfThisAccount',
            Effect: 'Allow',
            Principal: { Service: 'cloudwatch.amazonaws.com' },
            Action: 'sns:Publish',
            Resource: { Ref: ids.topic },
            Condition: {
              StringEquals: { 'aws:SourceAccount': '123456789012' },
              ArnLike: {
                'aws:SourceArn': 'arn:aws:cloudwatch:eu-west-1:123456789012:alarm:OrthancForwarder-*',
              },
            },
          },
        ],
      },
    });
    template.resourceCountIs('AWS::SNS::Subscription', 1);
    template.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'pacs-ops@hospital.example',
      TopicArn: { Ref: ids.topic },
    });
  });

  it('throttles: of the poller in three 5-minute periods on end (a tick found it running), of the forwarder at all', () => {
    expectAlarm('PollerThrottles', {
      metric: lambdaMetric(ids.poller, 'Throttles', 300),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      missing: 'notBreaching',
      periods: 3,
    });
    expectAlarm('ForwarderThrottles', {
      metric: lambdaMetric(ids.forwarder, 'Throttles', 300),
      threshold: 0,
      comparison: 'GreaterThanThreshold',
      missing: 'notBreaching',
    });
  });

  it('forwarder duration: p99 above 80% of its timeout, three 5-minute periods on end', () => {
    expectAlarm('ForwarderDurationNearTimeout', {
      metric: lambdaMetric(ids.forwarder, 'Duration', 300, 'p99'),
      threshold: 0.8 * 300 * 1000,
      comparison: 'GreaterThanThreshold',
      missing: 'notBreaching',
      periods: 3,
    });
  });

  it('draws one dashboard with throughput, conflicts, per-source lag, reachability and progress, the queues, both functions and the table', () => {
    const dashboards = Object.values(resources).filter((r) => r.Type === 'AWS::CloudWatch::Dashboard');
    expect(dashboards).toHaveLength(1);
    const dashboard = dashboards[0] as Resource;
    expect(dashboard.Properties.DashboardName).toBe('OrthancForwarder');
    const body = JSON.parse(render(dashboard.Properties.DashboardBody)) as {
      widgets: { type: string; properties: { title?: string; metrics?: Json[][] } }[];
    };
    /** Each graph's series as `namespace/name[/dimension=value…]` (sorted); expressions as `expr:…`. */
    const graphs: [string, string[]][] = [];
    for (const widget of body.widgets.filter((w) => w.type === 'metric')) {
      const series = (widget.properties.metrics ?? []).map((line) => {
        const last = line.at(-1) as { expression?: string } | undefined;
        if (typeof last === 'object' && last?.expression !== undefined) return `expr:${last.expression}`;
        const [namespace, name, ...rest] = line.filter((part) => typeof part === 'string') as string[];
        const dims = [];
        for (let i = 0; i + 1 < rest.length; i += 2) dims.push(`${rest[i]}=${rest[i + 1]}`);
        return [namespace, name, ...dims.sort()].join('/');
      });
      graphs.push([widget.properties.title ?? '', series]);
    }
    const has = (title: string | RegExp, ...series: string[]) => {
      const found = graphs.filter(([t]) => (typeof title === 'string' ? t === title : title.test(t)));
      expect(found.length, String(title)).toBeGreaterThan(0);
      for (const one of series)
        expect(
          found.flatMap(([, s]) => s),
          `${title}: ${one}`,
        ).toContain(one);
    };
    const all = 'service=orthanc-forwarder';
    has(
      'Studies and instances moved',
      `OrthancForwarder/StudiesMoved/${all}`,
      `OrthancForwarder/InstancesMoved/${all}`,
    );
    has('Bytes moved', `OrthancForwarder/BytesMoved/${all}`);
    has(
      /^Instances rejected/,
      `OrthancForwarder/InstancesRejected/${all}`,
      `OrthancForwarder/VerificationFailures/${all}`,
    );
    has(/^Conflicts/, `OrthancForwarder/Conflicts/${all}`);
    has(
      /^Studies waiting for a destination/,
      `OrthancForwarder/DestinationUnavailable/DestinationId=destination/${all}`,
    );
    for (const source of ['site-a', 'site-b']) {
      const dims = `SourceId=${source}/${all}`;
      has(/^Cursor lag/, `OrthancForwarder/CursorLag/${dims}`);
      has(/^Source unreachable/, `OrthancForwarder/SourceUnreachable/${dims}`);
      has(/^Studies waiting/, `OrthancForwarder/StudiesWaiting/${dims}`);
      has(/^Bytes left/, `OrthancForwarder/BytesLeft/${dims}`);
      has(/^Instances left/, `OrthancForwarder/InstancesLeft/${dims}`);
      has(/^Move rate/, `OrthancForwarder/MoveRate/${dims}`);
      has(/^Estimated time/, `OrthancForwarder/SecondsToFinish/${dims}`);
    }
    has(/in flight/, `AWS/SQS/ApproximateNumberOfMessagesNotVisible/QueueName=getatt:${ids.queue}.QueueName`);
    has(
      'Message Count',
      `AWS/SQS/ApproximateNumberOfMessagesVisible/QueueName=getatt:${ids.queue}.QueueName`,
    );
    has(
      'Oldest Message Age',
      `AWS/SQS/ApproximateAgeOfOldestMessage/QueueName=getatt:${ids.queue}.QueueName`,
    );
    has(
      'DLQ: Message Count',
      `AWS/SQS/ApproximateNumberOfMessagesVisible/QueueName=getatt:${ids.dlq}.QueueName`,
    );
    for (const fn of [ids.poller, ids.forwarder]) {
      has('Errors', `AWS/Lambda/Errors/FunctionName=ref:${fn}`);
      has('Rates', `AWS/Lambda/Throttles/FunctionName=ref:${fn}`);
      has('Latency', `AWS/Lambda/Duration/FunctionName=ref:${fn}`);
    }
    has(
      /failed attempts/,
      'expr:100 * (FILL(retries, 0) + FILL(deadLettered, 0) + FILL(errors, 0)) / ' +
        '(FILL(outcomes, 0) + FILL(retries, 0) + FILL(deadLettered, 0) + FILL(errors, 0))',
    );
    has(/^Successful poller invocations/, 'expr:FILL(invocations, 0) - FILL(errors, 0)');
    const table = `TableName=ref:${ids.table}`;
    has('Read Usage', `AWS/DynamoDB/ConsumedReadCapacityUnits/${table}`);
    has('Write Usage', `AWS/DynamoDB/ConsumedWriteCapacityUnits/${table}`);
    has('Throttles', `AWS/DynamoDB/ReadThrottleEvents/${table}`, `AWS/DynamoDB/WriteThrottleEvents/${table}`);
    has('Errors', `AWS/DynamoDB/SystemErrors/Operation=PutItem/${table}`);
  });

  it('outputs what the CLI needs, the topic and dashboard, and the functions’ and log groups’ names', () => {
    const outputs = template.toJSON().Outputs as Record<string, { Value: Json }>;
    expect(render(outputs.QueueUrl?.Value)).toBe(`ref:${ids.queue}`);
    expect(render(outputs.BacklogQueueUrl?.Value)).toBe(
      `ref:${logicalId(stack, stack.forwarder.backlogQueue)}`,
    );
    expect(render(outputs.DeadLetterQueueUrl?.Value)).toBe(`ref:${ids.dlq}`);
    expect(render(outputs.StateTableName?.Value)).toBe(`ref:${logicalId(stack, stack.forwarder.table)}`);
    expect(render(outputs.AlarmTopicArn?.Value)).toBe(`ref:${ids.topic}`);
    expect(outputs.DashboardName).toBeDefined();
    expect(render(outputs.PollerFunctionName?.Value)).toBe(`ref:${ids.poller}`);
    expect(render(outputs.ForwarderFunctionName?.Value)).toBe(`ref:${ids.forwarder}`);
    for (const [output, logGroup] of [
      ['PollerLogGroupName', stack.forwarder.pollerLogGroup],
      ['ForwarderLogGroupName', stack.forwarder.forwarderLogGroup],
    ] as const) {
      expect(render(outputs[output]?.Value)).toBe(`ref:${logicalId(stack, logGroup)}`);
    }
    expect(render(outputs.CliOptions?.Value)).toBe(
      `--region eu-west-1 --queue-url ref:${ids.queue} --backlog-queue-url ref:${logicalId(stack, stack.forwarder.backlogQueue)} --dlq-url ref:${ids.dlq} --table ref:${logicalId(stack, stack.forwarder.table)}`,
    );
  });

  it('passes cdk-nag with nothing acknowledged for the monitoring', () => {
    for (const pack of [new AwsSolutionsChecks(), new HIPAASecurityChecks()]) {
      const report = pack.validateScope(app);
      expect(report.violations.map((v) => `${v.ruleName}: ${v.description}`)).toEqual([]);
    }
    expect(Annotations.fromStack(stack).findWarning('*', Match.anyValue())).toEqual([]);
    expect(Annotations.fromStack(stack).findError('*', Match.anyValue())).toEqual([]);
  });
});

describe('thresholds from aws.alarms', () => {
  it('sets the alarms’ thresholds and periods, and subscribes nobody without an email', () => {
    const { template, resources } = synth((raw) => {
      raw.aws.pollScheduleMinutes = 5;
      raw.aws.forwarder = { timeoutSeconds: 600 };
      raw.aws.alarms = {
        oldestMessageAgeMinutes: 240,
        noPollMinutes: 30,
        sourceUnreachableMinutes: 45,
        forwarderErrorRatePercent: 2.5,
      };
    });
    const alarm = (name: string) =>
      Object.values(resources).find((r) => r.Properties.AlarmName === `OrthancForwarder-${name}`)
        ?.Properties ?? {};
    expect(alarm('OldestMessageTooOld').Threshold).toBe(240 * 60);
    expect(alarm('ForwarderErrorRate').Threshold).toBe(2.5);
    expect(alarm('ForwarderDurationNearTimeout').Threshold).toBe(0.8 * 600 * 1000);
    const periods = (name: string) =>
      (alarm(name).Metrics as AlarmMetric[]).flatMap((m) => (m.MetricStat ? [m.MetricStat.Period] : []));
    expect(periods('NoSuccessfulPoll')).toEqual([30 * 60, 30 * 60]);
    expect(periods('SourceUnreachable-site-a')).toEqual([45 * 60]);
    expect(alarm('NoSuccessfulPoll').AlarmDescription).toMatch(/for 30 minutes/);
    template.resourceCountIs('AWS::SNS::Subscription', 0);
  });

  it('refuses a window shorter than two polls, naming the field', () => {
    const raw = exampleRaw() as { aws: Record<string, unknown> };
    raw.aws.pollScheduleMinutes = 10;
    raw.aws.alarms = { noPollMinutes: 15, sourceUnreachableMinutes: 20, email: 'not-an-address' };
    expect(() => parseConfig(raw)).toThrow(ConfigError);
    expect(() => parseConfig(raw)).toThrow(
      /aws\.alarms\.noPollMinutes: must be at least twice pollScheduleMinutes \(20\)/,
    );
    expect(() => parseConfig(raw)).toThrow(/aws\.alarms\.email: must be an email address/);
    expect(() => parseConfig(raw)).not.toThrow(/sourceUnreachableMinutes/);
  });
});
