/**
 * The CDK app: the stack synthesized from examples/aws-config.json with the real handlers
 * bundled by esbuild, checked resource by resource; cdk-nag's verdict; and the configuration
 * errors that must stop a synth.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { App, type CfnElement, CfnResource, TagManager, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import type { NodejsFunction } from 'aws-cdk-lib/aws-lambda-nodejs';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Queue } from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks, HIPAASecurityChecks } from 'cdk-nag';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { ESM_BUNDLE } from '../lib/bundling.ts';
import { addForwarder } from '../lib/forwarder-app.ts';
import type { ForwarderStack } from '../lib/forwarder-stack.ts';
import { HEALTHIMAGING_ACTIONS } from '../lib/healthimaging-grants.ts';
import { deployableConfig, NETWORK_INTERFACE_ACTIONS } from '../lib/orthanc-forwarder.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLE_FILE = join(ROOT, 'examples/aws-config.json');
const exampleRaw = (): Record<string, unknown> => JSON.parse(readFileSync(EXAMPLE_FILE, 'utf8'));
const cdkContext = (): Record<string, unknown> =>
  JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')).context;

/** X-Ray's actions take no resource; a role has them only with aws.tracing. */
const XRAY_ACTIONS = ['xray:PutTelemetryRecords', 'xray:PutTraceSegments'];
/** The only actions that may have Resource "*": none of them takes a narrower resource. */
const ACTIONS_ALLOWED_ON_STAR: readonly string[] = [...NETWORK_INTERFACE_ACTIONS, ...XRAY_ACTIONS];

const SOURCE_SECRET_ARNS = [
  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:orthanc-forwarder/site-a-??????',
  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:orthanc-forwarder/site-b-AbC123',
];
const SECRET_ARNS = [
  ...SOURCE_SECRET_ARNS,
  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:orthanc-forwarder/destination-??????',
];

/**
 * The IAM actions of the DynamoDB requests lambdas/aws/dynamo-*.ts make, read from their code:
 * each `new …Command(`, and for a transaction the action of each Put, Update, Delete or
 * ConditionCheck it carries (TransactWriteItems is no IAM action of its own).
 */
const dynamoActionsInCode = (): string[] => {
  const dir = join(ROOT, 'lambdas/aws');
  const code = readdirSync(dir)
    .filter((file) => file.startsWith('dynamo-'))
    .map((file) => readFileSync(join(dir, file), 'utf8'))
    .join('\n');
  const commands = [...code.matchAll(/new (\w+)Command\(/g)].map(([, name]) => name as string);
  const transacted = [...code.matchAll(/\b(Put|Update|Delete|ConditionCheck): \{/g)].map(([, action]) =>
    action === 'ConditionCheck' ? 'ConditionCheckItem' : `${action}Item`,
  );
  expect(commands).toContain('GetItem');
  return [...new Set([...commands.filter((name) => name !== 'TransactWriteItems'), ...transacted])]
    .map((name) => `dynamodb:${name}`)
    .sort();
};

type Json = unknown;
type Resource = {
  Type: string;
  Properties: Record<string, Json>;
  DeletionPolicy?: string;
  UpdateReplacePolicy?: string;
};

/** A CloudFormation value as text: references become `ref:Id` / `getatt:Id.Attr`; the partition is aws. */
const render = (value: Json): string => {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object') {
    const object = value as Record<string, Json>;
    if ('Ref' in object) return object.Ref === 'AWS::Partition' ? 'aws' : `ref:${String(object.Ref)}`;
    if ('Fn::GetAtt' in object) return `getatt:${(object['Fn::GetAtt'] as string[]).join('.')}`;
    if ('Fn::Join' in object) {
      const [separator, parts] = object['Fn::Join'] as [string, Json[]];
      return parts.map(render).join(separator);
    }
  }
  return JSON.stringify(value);
};
const list = <T>(value: T | T[]): T[] => (Array.isArray(value) ? value : [value]);
const sorted = (values: Iterable<string> | undefined) => [...(values ?? [])].sort();
type Statement = Record<string, Json>;
const variablesOf = (lambda: Resource | undefined) =>
  (lambda?.Properties.Environment as { Variables?: Record<string, Json> } | undefined)?.Variables ?? {};
const statementsOf = (policy: Resource) =>
  (policy.Properties.PolicyDocument as { Statement: Statement[] }).Statement;

/** Each function's role policy, as the actions it allows on each resource (`*` included). */
/** The statements of a function's role policy (its only one). */
const roleStatementsOf = (template: Template, fn: string): Statement[] => {
  const resources = template.toJSON().Resources as Record<string, Resource>;
  const role = render(resources[fn]?.Properties.Role).replace(/^getatt:(.*)\.Arn$/, '$1');
  const policies = Object.values(resources).filter(
    (r) =>
      r.Type === 'AWS::IAM::Policy' && list(r.Properties.Roles).some((ref) => render(ref) === `ref:${role}`),
  );
  expect(policies, `the policy of the role ${role}`).toHaveLength(1);
  return statementsOf(policies[0] as Resource);
};
const grantsOf = (template: Template, fn: string) => {
  const result = new Map<string, Set<string>>();
  for (const statement of roleStatementsOf(template, fn)) {
    for (const arn of list(statement.Resource).map(render)) {
      const actions = result.get(arn) ?? new Set();
      for (const action of list(statement.Action as string | string[])) actions.add(action);
      result.set(arn, actions);
    }
  }
  return result;
};

const synth = (options: { raw?: Record<string, unknown>; context?: Record<string, unknown> } = {}) => {
  const app = new App({ context: { ...cdkContext(), ...options.context } });
  const stack = addForwarder(app, options.raw === undefined ? {} : { config: parseConfig(options.raw) });
  return { app, stack, template: Template.fromStack(stack) };
};

const writeConfig = (dir: string, name: string, raw: unknown): string => {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(raw));
  return file;
};

let app: App;
let stack: ForwarderStack;
let template: Template;
let config: ForwarderConfig;
let resources: Record<string, Resource>;
const resource = (id: string): Resource => {
  const found = resources[id];
  if (found === undefined) throw new Error(`no resource ${id} in the template`);
  return found;
};
const idOf = (type: string, predicate: (resource: Resource) => boolean = () => true): string => {
  const ids = Object.entries(resources)
    .filter(([, resource]) => resource.Type === type && predicate(resource))
    .map(([id]) => id);
  expect(ids, type).toHaveLength(1);
  return ids[0] as string;
};
const logicalId = (fn: NodejsFunction, of = stack) => of.getLogicalId(fn.node.defaultChild as CfnElement);
const ids = () => ({
  table: idOf('AWS::DynamoDB::Table'),
  queue: idOf('AWS::SQS::Queue', (r) => String(r.Properties.QueueName).endsWith('-work')),
  backlog: idOf('AWS::SQS::Queue', (r) => String(r.Properties.QueueName).endsWith('-backlog')),
  dlq: idOf('AWS::SQS::Queue', (r) => r.Properties.RedrivePolicy === undefined),
  poller: logicalId(stack.forwarder.pollerFunction),
  forwarder: logicalId(stack.forwarder.forwarderFunction),
});

beforeAll(() => {
  config = parseConfig(exampleRaw());
  ({ app, stack, template } = synth());
  resources = template.toJSON().Resources;
});

describe('the stack synthesized from examples/aws-config.json', () => {
  it('takes its name, account and region from the aws section', () => {
    expect(stack.stackName).toBe('OrthancForwarder');
    expect(stack.account).toBe('123456789012');
    expect(stack.region).toBe('eu-west-1');
  });

  it('runs both handlers on Node 24, arm64, sized by the configuration, in the configured subnets and groups, logging JSON at the configured level, one poll at a time', () => {
    const { poller, forwarder } = ids();
    for (const [id, sizing] of [
      [poller, config.aws?.poller],
      [forwarder, config.aws?.forwarder],
    ] as const) {
      const properties = resource(id).Properties ?? {};
      expect(properties.Runtime).toBe('nodejs24.x');
      expect(properties.Architectures).toEqual(['arm64']);
      expect(properties.Handler).toBe('index.handler');
      expect(properties.Timeout).toBe(sizing?.timeoutSeconds);
      expect(properties.MemorySize).toBe(sizing?.memoryMb);
      expect(properties.VpcConfig).toEqual({
        SubnetIds: ['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210'],
        SecurityGroupIds: ['sg-0123456789abcdef0'],
      });
      const logGroup = render((properties.LoggingConfig as { LogGroup: Json }).LogGroup).replace(/^ref:/, '');
      expect(resources[logGroup]?.Type).toBe('AWS::Logs::LogGroup');
      expect(resource(logGroup).Properties.RetentionInDays).toBe(90);
      expect(resources[logGroup]?.DeletionPolicy).toBe('Retain');
      // Lambda filters application logs at aws.logLevel; Powertools Logger follows it.
      expect(properties.LoggingConfig).toMatchObject({
        LogFormat: 'JSON',
        ApplicationLogLevel: 'INFO',
        SystemLogLevel: 'INFO',
      });
      expect(properties.TracingConfig).toBeUndefined();
    }
    expect(resource(poller).Properties.ReservedConcurrentExecutions).toBe(1);
    expect(resource(forwarder).Properties.ReservedConcurrentExecutions).toBeUndefined();
    template.resourceCountIs('AWS::Lambda::Function', 2);
  });

  it('bundles each real handler into an ES module that loads and exports handler', async () => {
    for (const id of [ids().poller, ids().forwarder]) {
      const key = render((resource(id).Properties.Code as { S3Key: Json }).S3Key);
      const assetDir = join(app.outdir, `asset.${key.replace(/\.zip$/, '')}`);
      expect(readdirSync(assetDir).sort()).toEqual(['index.mjs', 'index.mjs.map']);
      const code = readFileSync(join(assetDir, 'index.mjs'), 'utf8');
      expect(code.startsWith(ESM_BUNDLE.requireBanner)).toBe(true);
      const module = await import(pathToFileURL(join(assetDir, 'index.mjs')).href);
      expect(typeof module.handler).toBe('function');
    }
  });

  it('gives each function the configuration without passwords (the poller’s without the destination’s secret), and the resources’ names', () => {
    const { poller, forwarder, table, queue, backlog, dlq } = ids();
    for (const id of [poller, forwarder]) {
      const variables = variablesOf(resource(id));
      expect(Object.keys(variables).sort()).toEqual(
        [
          'BACKLOG_QUEUE_URL',
          'DLQ_URL',
          'FORWARDER_CONFIG',
          'NODE_OPTIONS',
          'POWERTOOLS_METRICS_NAMESPACE',
          'POWERTOOLS_SERVICE_NAME',
          'QUEUE_URL',
          'STATE_TABLE',
        ].sort(),
      );
      const text = variables.FORWARDER_CONFIG as string;
      expect(parseConfig(JSON.parse(text))).toEqual(
        id === forwarder
          ? config
          : { ...config, destinations: config.destinations.map(({ secretId: _secretId, ...rest }) => rest) },
      );
      expect(JSON.stringify(variables)).not.toMatch(/password/i);
      expect(variables.STATE_TABLE).toEqual({ Ref: table });
      expect(variables.QUEUE_URL).toEqual({ Ref: queue });
      expect(variables.BACKLOG_QUEUE_URL).toEqual({ Ref: backlog });
      expect(variables.DLQ_URL).toEqual({ Ref: dlq });
      expect(variables.POWERTOOLS_SERVICE_NAME).toBe('orthanc-forwarder');
      expect(variables.POWERTOOLS_METRICS_NAMESPACE).toBe('OrthancForwarder');
    }
  });

  it('keeps the state in a retained, encrypted, point-in-time-recoverable on-demand table with TTL', () => {
    const table = resources[ids().table] as Resource;
    expect(table.Properties).toMatchObject({
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      TimeToLiveSpecification: { AttributeName: 'ttl', Enabled: true },
      SSESpecification: { SSEEnabled: true },
      DeletionProtectionEnabled: true,
    });
    expect(table.DeletionPolicy).toBe('Retain');
    expect(table.UpdateReplacePolicy).toBe('Retain');
  });

  it('has encrypted work and backlog queues that redrive to an encrypted, retained DLQ after retry.maxAttempts receives; only they may, and the DLQ keeps messages longer', () => {
    const { queue, backlog, dlq, forwarder } = ids();
    const work = resources[queue] as Resource;
    const later = resources[backlog] as Resource;
    const dead = resources[dlq] as Resource;
    const timeout = resource(forwarder).Properties.Timeout as number;
    for (const q of [work, later]) {
      expect(q.Properties.RedrivePolicy).toEqual({
        deadLetterTargetArn: { 'Fn::GetAtt': [dlq, 'Arn'] },
        maxReceiveCount: config.retry.maxAttempts,
      });
      expect(q.Properties.VisibilityTimeout).toBeGreaterThanOrEqual(6 * timeout);
      expect(q.Properties.VisibilityTimeout).toBe(6 * 300);
      // A message moved to the DLQ keeps the time it was first sent.
      expect(q.Properties.MessageRetentionPeriod).toBe(7 * 24 * 3600);
    }
    expect(dead.Properties.MessageRetentionPeriod).toBe(14 * 24 * 3600);
    expect(dead.DeletionPolicy).toBe('Retain');
    const { redrivePermission, sourceQueueArns } = dead.Properties.RedriveAllowPolicy as {
      redrivePermission: string;
      sourceQueueArns: Json[];
    };
    expect(redrivePermission).toBe('byQueue');
    expect(sourceQueueArns.map(render)).toEqual([
      `arn:aws:sqs:eu-west-1:123456789012:${String(work.Properties.QueueName)}`,
      `arn:aws:sqs:eu-west-1:123456789012:${String(later.Properties.QueueName)}`,
    ]);
    expect(String(work.Properties.QueueName)).toMatch(/^OrthancForwarder-[A-Za-z0-9-]+-work$/);
    expect(String(later.Properties.QueueName)).toMatch(/^OrthancForwarder-[A-Za-z0-9-]+-backlog$/);
    for (const q of [work, later, dead]) expect(q.Properties.SqsManagedSseEnabled).toBe(true);
    // enforceSSL: each queue's policy denies every request that is not over TLS.
    for (const id of [queue, backlog, dlq]) {
      template.hasResourceProperties('AWS::SQS::QueuePolicy', {
        Queues: [{ Ref: id }],
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({
              Effect: 'Deny',
              Action: 'sqs:*',
              Condition: { Bool: { 'aws:SecureTransport': 'false' } },
              Resource: { 'Fn::GetAtt': [id, 'Arn'] },
            }),
          ]),
        },
      });
    }
  });

  it('feeds the forwarder from the work queue and the backlog queue, each with partial batch failures, the batch size and its own max concurrency', () => {
    const { queue, backlog, forwarder } = ids();
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', 2);
    for (const [id, maximumConcurrency] of [
      [queue, 4],
      [backlog, 2],
    ] as const) {
      template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
        EventSourceArn: { 'Fn::GetAtt': [id, 'Arn'] },
        FunctionName: { Ref: forwarder },
        FunctionResponseTypes: ['ReportBatchItemFailures'],
        BatchSize: 1,
        ScalingConfig: { MaximumConcurrency: maximumConcurrency },
      });
    }
  });

  it('runs the poller on an EventBridge rate schedule, without retrying a missed tick', () => {
    const { poller } = ids();
    template.resourceCountIs('AWS::Events::Rule', 1);
    const ruleId = idOf('AWS::Events::Rule');
    expect(resource(ruleId).Properties).toMatchObject({
      ScheduleExpression: 'rate(1 minute)',
      State: 'ENABLED',
      Targets: [
        {
          Arn: { 'Fn::GetAtt': [poller, 'Arn'] },
          RetryPolicy: { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 60 },
        },
      ],
    });
    template.hasResourceProperties('AWS::Lambda::Permission', {
      Action: 'lambda:InvokeFunction',
      FunctionName: { 'Fn::GetAtt': [poller, 'Arn'] },
      Principal: 'events.amazonaws.com',
      SourceArn: { 'Fn::GetAtt': [ruleId, 'Arn'] },
    });
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: poller },
      MaximumRetryAttempts: 0,
    });
  });

  it('creates the endpoints the Lambdas call: interface endpoints for SQS and Secrets Manager, and a DynamoDB gateway', () => {
    const endpoints = Object.values(resources).filter((r) => r.Type === 'AWS::EC2::VPCEndpoint');
    const interfaces = endpoints.filter((r) => r.Properties.VpcEndpointType === 'Interface');
    // Not CloudWatch Logs nor metrics: Lambda delivers the logs, and the EMF metrics in them.
    expect(interfaces.map((r) => r.Properties.ServiceName).sort()).toEqual(
      ['secretsmanager', 'sqs'].map((name) => `com.amazonaws.eu-west-1.${name}`),
    );
    const endpointGroup = idOf('AWS::EC2::SecurityGroup');
    for (const endpoint of interfaces) {
      expect(endpoint.Properties).toMatchObject({
        VpcId: 'vpc-0123456789abcdef0',
        SubnetIds: ['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210'],
        SecurityGroupIds: [{ 'Fn::GetAtt': [endpointGroup, 'GroupId'] }],
        PrivateDnsEnabled: true,
      });
    }
    // The endpoints admit HTTPS from the Lambdas' group; the deployer's group is left untouched.
    template.resourceCountIs('AWS::EC2::SecurityGroupIngress', 1);
    template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      GroupId: { 'Fn::GetAtt': [endpointGroup, 'GroupId'] },
      SourceSecurityGroupId: 'sg-0123456789abcdef0',
      IpProtocol: 'tcp',
      FromPort: 443,
      ToPort: 443,
    });
    template.resourceCountIs('AWS::EC2::SecurityGroupEgress', 0);
    const gateways = endpoints.filter((r) => r.Properties.VpcEndpointType === 'Gateway');
    expect(gateways.map((r) => r.Properties)).toEqual([
      {
        VpcId: 'vpc-0123456789abcdef0',
        VpcEndpointType: 'Gateway',
        ServiceName: 'com.amazonaws.eu-west-1.dynamodb',
        RouteTableIds: ['rtb-0123456789abcdef0', 'rtb-0fedcba9876543210'],
      },
    ]);
  });

  it('grants only on its own resources and the configured secrets, "*" only to the network interfaces, and no managed policy', () => {
    const own = new Set(
      Object.entries(resources)
        .filter(([, r]) =>
          ['AWS::DynamoDB::Table', 'AWS::SQS::Queue', 'AWS::Logs::LogGroup'].includes(r.Type),
        )
        .map(([id]) => `getatt:${id}.Arn`),
    );
    const policies = Object.values(resources).filter((r) => r.Type === 'AWS::IAM::Policy');
    expect(policies).toHaveLength(2);
    for (const policy of policies) {
      for (const statement of statementsOf(policy)) {
        expect(statement.Effect).toBe('Allow');
        const actions = list(statement.Action as string | string[]);
        for (const action of actions) expect(action, 'wildcard action').not.toMatch(/\*/);
        for (const arn of list(statement.Resource).map(render)) {
          if (arn === '*') {
            expect(actions.filter((action) => !ACTIONS_ALLOWED_ON_STAR.includes(action))).toEqual([]);
            continue;
          }
          expect(arn).not.toMatch(/\*/);
          expect(own.has(arn) || SECRET_ARNS.includes(arn), arn).toBe(true);
        }
      }
    }
    for (const role of Object.values(resources).filter((r) => r.Type === 'AWS::IAM::Role')) {
      expect(role.Properties.ManagedPolicyArns).toBeUndefined();
      expect(role.Properties.Policies).toBeUndefined();
    }
  });

  it('gives each function exactly the access its code needs', () => {
    const { poller, forwarder, table, queue, backlog, dlq } = ids();
    const arn = (id: string) => `getatt:${id}.Arn`;
    const pollerGrants = grantsOf(template, poller);
    const forwarderGrants = grantsOf(template, forwarder);
    const logGroupOf = (fn: string) =>
      render((resource(fn).Properties.LoggingConfig as { LogGroup: Json }).LogGroup).replace(/^ref:/, '');

    for (const [fn, grants] of [
      [poller, pollerGrants],
      [forwarder, forwarderGrants],
    ] as const) {
      // What the DynamoDB adapters send, no more: no Scan, no stream reads.
      expect(sorted(grants.get(arn(table)))).toEqual(dynamoActionsInCode());
      // Only its own log group, only what Lambda does there.
      const logGroups = [...grants.keys()].filter((key) => key.includes('LogGroup'));
      expect(logGroups).toEqual([arn(logGroupOf(fn))]);
      expect(sorted(grants.get(arn(logGroupOf(fn))))).toEqual(['logs:CreateLogStream', 'logs:PutLogEvents']);
      expect(sorted(grants.get('*'))).toEqual(sorted(NETWORK_INTERFACE_ACTIONS));
      expect(
        [...grants.values()].flatMap((actions) => [...actions]).filter((a) => a.startsWith('kms:')),
      ).toEqual([]);
    }

    // The poller reads the sources' secrets only, and queues work items.
    for (const secret of SECRET_ARNS) {
      expect(sorted(pollerGrants.get(secret))).toEqual(
        SOURCE_SECRET_ARNS.includes(secret) ? ['secretsmanager:GetSecretValue'] : [],
      );
      expect(sorted(forwarderGrants.get(secret))).toEqual(['secretsmanager:GetSecretValue']);
    }
    expect(sorted(pollerGrants.get(arn(queue)))).toEqual(['sqs:SendMessage']);
    expect(sorted(pollerGrants.get(arn(backlog)))).toEqual(['sqs:SendMessage']);
    expect(pollerGrants.has(arn(dlq))).toBe(false);

    // The forwarder dead-letters, queues a retry that made headway afresh and delays a retry;
    // its event source mappings receive and delete with the function's role.
    expect(sorted(forwarderGrants.get(arn(dlq)))).toEqual(['sqs:SendMessage']);
    for (const id of [queue, backlog]) {
      expect(sorted(forwarderGrants.get(arn(id)))).toEqual([
        'sqs:ChangeMessageVisibility',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
        'sqs:GetQueueUrl',
        'sqs:ReceiveMessage',
        'sqs:SendMessage',
      ]);
    }
    for (const grants of [pollerGrants, forwarderGrants]) {
      expect([...grants.keys()].sort()).toEqual(
        [...grants.keys()]
          .filter((key) => key === '*' || key.startsWith('getatt:') || SECRET_ARNS.includes(key))
          .sort(),
      );
    }
  });
});

describe('cdk-nag AwsSolutions and HIPAA Security', () => {
  it('finds nothing unacknowledged, and no construct reports an error', () => {
    for (const pack of [new AwsSolutionsChecks(), new HIPAASecurityChecks()]) {
      const report = pack.validateScope(app);
      expect(report.violations.map((violation) => `${violation.ruleName}: ${violation.description}`)).toEqual(
        [],
      );
      expect(report.success).toBe(true);
    }
    expect(Annotations.fromStack(stack).findError('*', Match.anyValue())).toEqual([]);
    expect(Annotations.fromStack(stack).findWarning('*', Match.anyValue())).toEqual([]);
  });

  it('has a written reason for every acknowledgement', () => {
    const acknowledged: [string, string][] = [];
    for (const construct of app.node.findAll()) {
      for (const entry of construct.node.metadata) {
        if (entry.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
        acknowledged.push(...Object.entries(entry.data as Record<string, string>));
      }
    }
    expect(acknowledged.map(([id]) => id.replace(/^annotation::/i, '')).sort()).toEqual(
      [
        'HIPAA.Security-DynamoDBInBackupPlan',
        ...['Poller', 'Forwarder'].flatMap(() => [
          'AwsSolutions-IAM5[Resource::*]',
          'HIPAA.Security-IAMNoInlinePolicy',
          'HIPAA.Security-CloudWatchLogGroupEncrypted',
          'HIPAA.Security-LambdaDLQ',
        ]),
        'HIPAA.Security-LambdaConcurrency',
      ].sort(),
    );
    for (const [, reason] of acknowledged) expect(reason.length).toBeGreaterThan(80);
  });

  it('fails the synth on a finding nobody acknowledged', () => {
    const checked = new App({ context: cdkContext() });
    const bad = addForwarder(checked);
    new Queue(bad, 'PlainQueue');
    new LogGroup(bad, 'PlainLogGroup', { retention: RetentionDays.ONE_WEEK });
    expect(() => checked.synth()).toThrow(/AwsSolutions-SQS4/);
    const violations = new AwsSolutionsChecks().validateScope(checked).violations.map((v) => v.ruleName);
    expect(violations).toEqual(expect.arrayContaining(['AwsSolutions-SQS3', 'AwsSolutions-SQS4']));
    const hipaa = new HIPAASecurityChecks().validateScope(checked).violations.map((v) => v.ruleName);
    expect(hipaa).toEqual(['HIPAA.Security-CloudWatchLogGroupEncrypted']);
  });
});

describe('other configurations', () => {
  it('synthesizes without account, region, endpoints, or a route table per subnet', () => {
    const raw = exampleRaw();
    const aws = raw.aws as Record<string, unknown> & { vpc: Record<string, unknown> };
    delete aws.account;
    delete aws.region;
    aws.vpc.createEndpoints = false;
    aws.vpc.routeTableIds = ['rtb-0123456789abcdef0'];
    const sources = raw.sources as Record<string, unknown>[];
    for (const source of sources) source.secretId = 'orthanc-forwarder/sources';
    (raw.destination as Record<string, unknown>).secretId =
      'arn:aws:secretsmanager:eu-west-1:123456789012:secret:dest';
    const { stack: variantStack, template: variant } = synth({ raw });
    expect(Annotations.fromStack(variantStack).findWarning('*', Match.anyValue())).toEqual([]);
    variant.resourceCountIs('AWS::EC2::VPCEndpoint', 0);
    variant.resourceCountIs('AWS::EC2::SecurityGroup', 0);
    variant.resourceCountIs('AWS::EC2::SecurityGroupIngress', 0);
    // The shared secret once, the partial ARN with any suffix; the poller's without the destination's.
    const secretsOf = (fn: NodejsFunction) =>
      [...grantsOf(variant, logicalId(fn, variantStack)).keys()]
        .filter((key) => key.includes(':secret:'))
        .sort();
    const shared =
      'arn:aws:secretsmanager:ref:AWS::Region:ref:AWS::AccountId:secret:orthanc-forwarder/sources-??????';
    expect(secretsOf(variantStack.forwarder.pollerFunction)).toEqual([shared]);
    expect(secretsOf(variantStack.forwarder.forwarderFunction)).toEqual([
      'arn:aws:secretsmanager:eu-west-1:123456789012:secret:dest-??????',
      shared,
    ]);
  });

  describe('with tracing, DEBUG logs, customer keys on secrets, tags, a chosen set of endpoints and outcomes kept ten years', () => {
    const SOURCE_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555';
    const DESTINATION_KEY = 'arn:aws:kms:eu-west-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef';
    const TAGS = { 'cost-center': 'radiology 4711', 'data-classification': 'operational-metadata' };
    const CA_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:hospital/internal-ca-Xy12Ab';
    const CLIENT_CERT_SECRET =
      'arn:aws:secretsmanager:eu-west-1:123456789012:secret:forwarder/client-cert-Cd34Ef';
    let variantStack: ForwarderStack;
    let variant: Template;
    let variantResources: Record<string, Resource>;
    beforeAll(() => {
      const raw = exampleRaw();
      const aws = raw.aws as Record<string, unknown> & { vpc: Record<string, unknown> };
      Object.assign(aws, { tracing: true, logLevel: 'DEBUG', tags: TAGS });
      aws.vpc.createEndpoints = ['sqs', 'logs', 'monitoring'];
      Object.assign((raw.sources as Record<string, unknown>[])[0] ?? {}, { kmsKeyArn: SOURCE_KEY });
      (raw.destination as Record<string, unknown>).kmsKeyArn = DESTINATION_KEY;
      Object.assign((raw.sources as Record<string, unknown>[])[0] ?? {}, { caSecretId: CA_SECRET });
      (raw.destination as Record<string, unknown>).clientCertSecretId = CLIENT_CERT_SECRET;
      raw.retention = { outcomeDays: 3650 };
      ({ stack: variantStack, template: variant } = synth({ raw }));
      variantResources = variant.toJSON().Resources;
    });
    const fns = () => ({
      poller: logicalId(variantStack.forwarder.pollerFunction, variantStack),
      forwarder: logicalId(variantStack.forwarder.forwarderFunction, variantStack),
    });

    it('traces both functions actively, may send their traces, and logs at DEBUG', () => {
      for (const fn of Object.values(fns())) {
        const properties = variantResources[fn]?.Properties ?? {};
        expect(properties.TracingConfig).toEqual({ Mode: 'Active' });
        expect(properties.LoggingConfig).toMatchObject({ LogFormat: 'JSON', ApplicationLogLevel: 'DEBUG' });
        expect(sorted(grantsOf(variant, fn).get('*'))).toEqual(
          sorted([...NETWORK_INTERFACE_ACTIONS, ...XRAY_ACTIONS]),
        );
      }
    });

    it('may read a server’s internal CA and client certificate secrets where it talks to that server, and only there', () => {
      const { poller, forwarder } = fns();
      const reads = (fn: string, secret: string) => sorted(grantsOf(variant, fn).get(secret));
      expect(reads(poller, CA_SECRET)).toEqual(['secretsmanager:GetSecretValue']);
      expect(reads(forwarder, CA_SECRET)).toEqual(['secretsmanager:GetSecretValue']);
      expect(reads(poller, CLIENT_CERT_SECRET)).toEqual([]);
      expect(reads(forwarder, CLIENT_CERT_SECRET)).toEqual(['secretsmanager:GetSecretValue']);
    });

    it('may decrypt a secret under a customer key, through Secrets Manager only, where it may read the secret', () => {
      const decrypts = (fn: string) =>
        roleStatementsOf(variant, fn).filter((statement) => statement.Action === 'kms:Decrypt');
      const { poller, forwarder } = fns();
      for (const [fn, keys] of [
        [poller, [SOURCE_KEY]],
        [forwarder, [DESTINATION_KEY, SOURCE_KEY]],
      ] as const) {
        const statements = decrypts(fn);
        expect(statements).toHaveLength(1);
        expect(sorted(list(statements[0]?.Resource as string | string[]))).toEqual([...keys].sort());
        expect(statements[0]?.Condition).toEqual({
          StringEquals: { 'kms:ViaService': 'secretsmanager.eu-west-1.amazonaws.com' },
        });
      }
    });

    it('tags the stack and every resource that takes tags with aws.tags', () => {
      expect(variantStack.tags.tagValues()).toEqual(TAGS);
      const taggable = variantStack.node
        .findAll()
        .filter((c): c is CfnResource => CfnResource.isCfnResource(c) && TagManager.isTaggable(c));
      expect(taggable.length).toBeGreaterThan(10);
      for (const cfn of taggable) {
        const tags = variantResources[variantStack.getLogicalId(cfn)]?.Properties.Tags;
        const found = Array.isArray(tags)
          ? Object.fromEntries(
              (tags as { Key: string; Value: string }[]).map(({ Key, Value }) => [Key, Value]),
            )
          : (tags as Record<string, string> | undefined);
        expect(found, `${cfn.cfnResourceType} ${cfn.node.path}`).toMatchObject(TAGS);
      }
    });

    it('creates just the endpoints listed, and passes both cdk-nag packs', () => {
      const services = Object.values(variantResources)
        .filter((r) => r.Type === 'AWS::EC2::VPCEndpoint')
        .map((r) => r.Properties.ServiceName)
        .sort();
      expect(services).toEqual(
        ['logs', 'monitoring', 'sqs'].map((name) => `com.amazonaws.eu-west-1.${name}`),
      );
      for (const pack of [new AwsSolutionsChecks(), new HIPAASecurityChecks()]) {
        expect(pack.validateScope(variantStack).violations.map((v) => v.ruleName)).toEqual([]);
      }
    });

    it('hands outcome retention in years to both functions’ ledger', () => {
      for (const fn of Object.values(fns())) {
        const variables = variablesOf(variantResources[fn]);
        expect(parseConfig(JSON.parse(variables.FORWARDER_CONFIG as string)).retention.outcomeDays).toBe(
          3650,
        );
      }
    });
  });
});

describe('configuration errors stop the synth and name the field', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'cdk-config-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const construct = (raw: unknown) => () =>
    addForwarder(new App({ context: { ...cdkContext(), configFile: writeConfig(dir, 'config.json', raw) } }));

  it('a missing aws section', () => {
    const { aws: _aws, ...raw } = exampleRaw();
    expect(construct(raw)).toThrow(/\baws: the AWS pipeline needs the aws section/);
  });

  it('a password or passwordEnv in a server', () => {
    const raw = exampleRaw();
    const sources = raw.sources as Record<string, unknown>[];
    delete sources[1]?.secretId;
    Object.assign(sources[1] ?? {}, { username: 'orthanc', password: 'hunter2' });
    const destination = raw.destination as Record<string, unknown>;
    delete destination.secretId;
    destination.passwordEnv = 'DEST_PASSWORD';
    expect(construct(raw)).toThrow(/sources\[1\]\.password: not allowed on AWS/);
    expect(construct(raw)).toThrow(/destination\.passwordEnv: not allowed on AWS/);
  });

  it('a CA or a client certificate as files, naming the secret setting to use instead', () => {
    const raw = exampleRaw();
    Object.assign((raw.sources as Record<string, unknown>[])[0] ?? {}, { caFile: '/etc/hospital-ca.pem' });
    Object.assign(raw.destination as Record<string, unknown>, {
      clientCertFile: '/etc/forwarder.crt',
      clientKeyFile: '/etc/forwarder.key',
    });
    expect(construct(raw)).toThrow(/sources\[0\]\.caFile: not supported on AWS: .* sources\[0\]\.caSecretId/);
    expect(construct(raw)).toThrow(
      /destination\.clientKeyFile: not supported on AWS: .* destination\.clientCertSecretId/,
    );
  });

  it('credentials in a URL, and http:// without allowInsecureHttp', () => {
    const raw = exampleRaw();
    const sources = raw.sources as Record<string, unknown>[];
    const destination = raw.destination as Record<string, unknown>;
    Object.assign(sources[0] ?? {}, { url: 'https://forwarder:s3cret@orthanc-a.hospital.example:8042' });
    expect(construct(raw)).toThrow(/sources\[0\]\.url: must not carry credentials/);
    expect(construct(raw)).not.toThrow(/s3cret/);

    Object.assign(sources[0] ?? {}, { url: 'http://orthanc-a.hospital.example:8042' });
    destination.orthancUrl = 'http://pacs.cloud.example';
    expect(construct(raw)).toThrow(/sources\[0\]\.url: http:\/\/ is not allowed on AWS/);
    expect(construct(raw)).toThrow(/destination\.orthancUrl: http:\/\/ is not allowed on AWS/);
    // Each server opts in for itself.
    Object.assign(sources[0] ?? {}, { allowInsecureHttp: true });
    expect(construct(raw)).not.toThrow(/sources\[0\]/);
    destination.allowInsecureHttp = true;
    expect(deployableConfig(parseConfig(raw)).sources[0]?.url).toBe('http://orthanc-a.hospital.example:8042');
  });

  it('a KMS key without its secret or given by alias, a log level that would drop the metrics, a reserved tag key', () => {
    const raw = exampleRaw();
    const source = (raw.sources as Record<string, unknown>[])[1] ?? {};
    delete source.secretId;
    source.kmsKeyArn = 'arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555';
    expect(construct(raw)).toThrow(
      /sources\[1\]\.kmsKeyArn: the key of the secret in secretId, which is not given/,
    );
    source.kmsKeyArn = 'alias/orthanc-forwarder';
    expect(construct(raw)).toThrow(/sources\[1\]\.kmsKeyArn: must be a KMS key ARN/);

    const aws = exampleRaw().aws as Record<string, unknown>;
    expect(construct({ ...exampleRaw(), aws: { ...aws, logLevel: 'WARN' } })).toThrow(/aws\.logLevel:/);
    expect(construct({ ...exampleRaw(), aws: { ...aws, tags: { 'aws:owner': 'x' } } })).toThrow(
      /aws\.tags\.aws:owner: must be a tag key/,
    );
  });

  it('a bad VPC id', () => {
    const raw = exampleRaw();
    (raw.aws as { vpc: Record<string, unknown> }).vpc.vpcId = 'vpc-nothex';
    expect(construct(raw)).toThrow(/aws\.vpc\.vpcId: must be an ID like vpc-/);
  });

  it('a log retention CloudWatch does not offer, or subnets that do not match the zones', () => {
    const raw = exampleRaw();
    const aws = raw.aws as { logRetentionDays: number; vpc: Record<string, unknown> };
    aws.logRetentionDays = 91;
    aws.vpc.privateSubnetIds = ['subnet-0123456789abcdef0'];
    expect(construct(raw)).toThrow(/aws\.logRetentionDays: CloudWatch Logs accepts only 1, 3, 5/);
    expect(construct(raw)).toThrow(/aws\.vpc\.privateSubnetIds: give the same number of subnets/);
  });

  it('a file that does not exist, or no configFile at all', () => {
    expect(() => addForwarder(new App({ context: { configFile: join(dir, 'missing.json') } }))).toThrow(
      /cannot read the configuration file .*missing\.json/,
    );
    expect(() => addForwarder(new App())).toThrow(/CDK context key configFile/);
  });

  it('cdk.json’s app, run with only the system’s node on PATH, exits 1 with the field on stderr', () => {
    const raw = exampleRaw();
    (raw.aws as { vpc: Record<string, unknown> }).vpc.securityGroupIds = ['sg-1'];
    const command = JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')).app as string;
    // The CDK CLI runs the app through a shell in the project's directory.
    const run = spawnSync('/bin/sh', ['-c', command], {
      cwd: ROOT,
      encoding: 'utf8',
      env: {
        PATH: '/usr/bin:/bin',
        CDK_CONTEXT_JSON: JSON.stringify({ configFile: writeConfig(dir, 'bad-sg.json', raw) }),
        CDK_OUTDIR: join(dir, 'out'),
      },
    });
    expect(run.status).toBe(1);
    expect(run.stderr).toMatch(/aws\.vpc\.securityGroupIds\[0\]: must be an ID like sg-/);
  });
});

describe('a HealthImaging destination with an Azure DICOM alternate', () => {
  const DATASTORE = 'd9a2a515ab294163a2d2f4069eed584c';
  const DATASTORE_ARN = `arn:aws:medical-imaging:eu-west-1:123456789012:datastore/${DATASTORE}`;
  const AZURE_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:forwarder/azure-client-Ab12Cd';
  const cloudRaw = (
    patch: Readonly<Record<string, unknown>> = {},
    alternate: Readonly<Record<string, unknown>> = {},
  ) => {
    const raw = exampleRaw();
    raw.destination = {
      url: `https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/${DATASTORE}`,
      kind: 'healthimaging',
      auth: { kind: 'aws-sigv4' },
      verify: 'identity',
      alternate: {
        url: 'https://hospital-dicom.dicom.azurehealthcareapis.com/v2',
        kind: 'azure',
        auth: {
          kind: 'oauth2-client-credentials',
          tokenUrl:
            'https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token',
          clientId: 'forwarder',
          secretId: AZURE_SECRET,
          scope: 'https://dicom.healthcareapis.azure.com/.default',
        },
        afterSeconds: 300,
        ...alternate,
      },
      ...patch,
    };
    return raw;
  };
  let cloudStack: ForwarderStack;
  let cloud: Template;
  beforeAll(() => {
    ({ stack: cloudStack, template: cloud } = synth({ raw: cloudRaw() }));
  });
  const fns = () => ({
    poller: logicalId(cloudStack.forwarder.pollerFunction, cloudStack),
    forwarder: logicalId(cloudStack.forwarder.forwarderFunction, cloudStack),
  });

  it('lets the forwarder store, search and read metadata on the one data store, and nothing else there', () => {
    const { poller, forwarder } = fns();
    expect(sorted(grantsOf(cloud, forwarder).get(DATASTORE_ARN))).toEqual(sorted(HEALTHIMAGING_ACTIONS));
    const medicalImaging = (fn: string) =>
      roleStatementsOf(cloud, fn).filter((statement) =>
        list(statement.Action as string | string[]).some((action) => action.startsWith('medical-imaging:')),
      );
    expect(medicalImaging(forwarder).map((statement) => list(statement.Resource).map(render))).toEqual([
      [DATASTORE_ARN],
    ]);
    expect(medicalImaging(poller)).toEqual([]);
  });

  it('lets only the forwarder read the alternate’s client secret, and gives the poller no auth at all', () => {
    const { poller, forwarder } = fns();
    expect(sorted(grantsOf(cloud, forwarder).get(AZURE_SECRET))).toEqual(['secretsmanager:GetSecretValue']);
    expect(grantsOf(cloud, poller).get(AZURE_SECRET)).toBeUndefined();
    const resources = cloud.toJSON().Resources as Record<string, Resource>;
    const configOf = (fn: string) => JSON.parse(variablesOf(resources[fn]).FORWARDER_CONFIG as string);
    expect(configOf(poller).destinations[0]).not.toHaveProperty('auth');
    expect(configOf(poller).destinations[0].alternate).not.toHaveProperty('auth');
    expect(configOf(forwarder).destinations[0].auth).toEqual({
      kind: 'aws-sigv4',
      service: 'medical-imaging',
    });
  });

  it('passes both cdk-nag packs', () => {
    for (const pack of [new AwsSolutionsChecks(), new HIPAASecurityChecks()]) {
      expect(pack.validateScope(cloudStack).violations.map((v) => v.ruleName)).toEqual([]);
    }
  });

  it('refuses, naming the field: a local secret on AWS, a URL without its data store, a verification that cannot see a conflict there', () => {
    const refused = (raw: Record<string, unknown>) => () => synth({ raw });
    expect(refused(cloudRaw({}, { auth: { kind: 'bearer', token: 'abc' } }))).toThrow(
      /destination\.alternate\.auth\.token: not allowed on AWS: put the secret in a Secrets Manager secret and give its name or ARN in destination\.alternate\.auth\.secretId/,
    );
    expect(refused(cloudRaw({ url: 'https://dicom-medical-imaging.eu-west-1.amazonaws.com/' }))).toThrow(
      /destination\.url: a HealthImaging destination's URL is https:\/\/dicom-medical-imaging\.<region>\.amazonaws\.com\/datastore\/<datastoreId>/,
    );
    expect(refused(cloudRaw({ verify: 'qido' }))).toThrow(
      /destination\.verify: 'qido' cannot verify at a healthimaging destination \(destination\)/,
    );
  });
});
