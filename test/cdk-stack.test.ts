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
import { App, type CfnElement, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import type { NodejsFunction } from 'aws-cdk-lib/aws-lambda-nodejs';
import { Queue } from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { ESM_BUNDLE } from '../lib/bundling.ts';
import { addForwarder } from '../lib/forwarder-app.ts';
import type { ForwarderStack } from '../lib/forwarder-stack.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLE_FILE = join(ROOT, 'examples/aws-config.json');
const exampleRaw = (): Record<string, unknown> => JSON.parse(readFileSync(EXAMPLE_FILE, 'utf8'));
const cdkContext = (): Record<string, unknown> =>
  JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')).context;

/** The one managed policy a role may carry: Lambda needs ENI management on Resource "*". */
const ALLOWED_MANAGED_POLICIES = ['arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole'];
/**
 * Actions that may have Resource "*" in an inline policy. None: the only "*" is inside the
 * managed policy above (ec2:CreateNetworkInterface, DescribeNetworkInterfaces, …).
 */
const ACTIONS_ALLOWED_ON_STAR: readonly string[] = [];

const SECRET_ARNS = [
  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:orthanc-forwarder/site-a-??????',
  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:orthanc-forwarder/site-b-AbC123',
  'arn:aws:secretsmanager:eu-west-1:123456789012:secret:orthanc-forwarder/destination-??????',
];

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
const logicalId = (fn: NodejsFunction) => stack.getLogicalId(fn.node.defaultChild as CfnElement);
const ids = () => ({
  table: idOf('AWS::DynamoDB::Table'),
  queue: idOf('AWS::SQS::Queue', (r) => r.Properties.RedrivePolicy !== undefined),
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

  it('runs both handlers on Node 24, arm64, sized by the configuration, in the configured subnets and groups', () => {
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
    }
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

  it('gives both functions the configuration without passwords, and the resources’ names', () => {
    const { poller, forwarder, table, queue, dlq } = ids();
    for (const id of [poller, forwarder]) {
      const variables = (resource(id).Properties.Environment as { Variables: Record<string, Json> })
        .Variables;
      expect(Object.keys(variables).sort()).toEqual(
        [
          'DLQ_URL',
          'FORWARDER_CONFIG',
          'NODE_OPTIONS',
          'POWERTOOLS_LOG_LEVEL',
          'POWERTOOLS_METRICS_NAMESPACE',
          'POWERTOOLS_SERVICE_NAME',
          'QUEUE_URL',
          'STATE_TABLE',
        ].sort(),
      );
      const text = variables.FORWARDER_CONFIG as string;
      expect(parseConfig(JSON.parse(text))).toEqual(config);
      expect(JSON.stringify(variables)).not.toMatch(/password/i);
      expect(variables.STATE_TABLE).toEqual({ Ref: table });
      expect(variables.QUEUE_URL).toEqual({ Ref: queue });
      expect(variables.DLQ_URL).toEqual({ Ref: dlq });
      expect(variables.POWERTOOLS_SERVICE_NAME).toBe('orthanc-forwarder');
      expect(variables.POWERTOOLS_METRICS_NAMESPACE).toBe('OrthancForwarder');
      expect(variables.POWERTOOLS_LOG_LEVEL).toBe('INFO');
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

  it('has an encrypted work queue that redrives to an encrypted DLQ after retry.maxAttempts receives', () => {
    const { queue, dlq, forwarder } = ids();
    const work = resources[queue] as Resource;
    const dead = resources[dlq] as Resource;
    expect(work.Properties.RedrivePolicy).toEqual({
      deadLetterTargetArn: { 'Fn::GetAtt': [dlq, 'Arn'] },
      maxReceiveCount: config.retry.maxAttempts,
    });
    const timeout = resource(forwarder).Properties.Timeout as number;
    expect(work.Properties.VisibilityTimeout).toBeGreaterThanOrEqual(6 * timeout);
    expect(work.Properties.VisibilityTimeout).toBe(6 * 300);
    expect(dead.Properties.MessageRetentionPeriod).toBe(14 * 24 * 3600);
    for (const q of [work, dead]) expect(q.Properties.SqsManagedSseEnabled).toBe(true);
    // enforceSSL: each queue's policy denies every request that is not over TLS.
    for (const id of [queue, dlq]) {
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

  it('feeds the forwarder from the work queue with partial batch failures, the batch size and max concurrency', () => {
    const { queue, forwarder } = ids();
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', 1);
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      EventSourceArn: { 'Fn::GetAtt': [queue, 'Arn'] },
      FunctionName: { Ref: forwarder },
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      BatchSize: 1,
      ScalingConfig: { MaximumConcurrency: 4 },
    });
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

  it('creates interface endpoints for SQS, Secrets Manager, CloudWatch metrics and logs, and a DynamoDB gateway', () => {
    const endpoints = Object.values(resources).filter((r) => r.Type === 'AWS::EC2::VPCEndpoint');
    const interfaces = endpoints.filter((r) => r.Properties.VpcEndpointType === 'Interface');
    expect(interfaces.map((r) => r.Properties.ServiceName).sort()).toEqual(
      ['logs', 'monitoring', 'secretsmanager', 'sqs'].map((name) => `com.amazonaws.eu-west-1.${name}`),
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

  it('grants only on its own resources and the configured secrets: no "*" in any IAM policy', () => {
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
      const statements = (policy.Properties.PolicyDocument as { Statement: Record<string, Json>[] })
        .Statement;
      for (const statement of statements) {
        expect(statement.Effect).toBe('Allow');
        const actions = list(statement.Action as string | string[]);
        for (const action of actions) expect(action, 'wildcard action').not.toMatch(/\*/);
        for (const arn of list(statement.Resource).map(render)) {
          if (arn === '*') {
            expect(actions.every((action) => ACTIONS_ALLOWED_ON_STAR.includes(action))).toBe(true);
            continue;
          }
          expect(arn).not.toMatch(/\*/);
          expect(own.has(arn) || SECRET_ARNS.includes(arn), arn).toBe(true);
        }
      }
    }
    for (const role of Object.values(resources).filter((r) => r.Type === 'AWS::IAM::Role')) {
      expect(list(role.Properties.ManagedPolicyArns ?? []).map(render)).toEqual(ALLOWED_MANAGED_POLICIES);
      expect(role.Properties.Policies).toBeUndefined();
    }
  });

  it('gives each function exactly the access its handler needs', () => {
    const { poller, forwarder, table, queue, dlq } = ids();
    const grants = (fn: string) => {
      const role = render(resource(fn).Properties.Role).replace(/^getatt:(.*)\.Arn$/, '$1');
      const policy = Object.values(resources).find(
        (r) =>
          r.Type === 'AWS::IAM::Policy' &&
          list(r.Properties.Roles).some((ref) => render(ref) === `ref:${role}`),
      );
      if (policy === undefined) throw new Error(`no policy for the role ${role}`);
      const result = new Map<string, Set<string>>();
      for (const statement of (policy.Properties.PolicyDocument as { Statement: Record<string, Json>[] })
        .Statement) {
        for (const arn of list(statement.Resource).map(render)) {
          const actions = result.get(arn) ?? new Set();
          for (const action of list(statement.Action as string | string[])) actions.add(action);
          result.set(arn, actions);
        }
      }
      return result;
    };
    const arn = (id: string) => `getatt:${id}.Arn`;

    const pollerGrants = grants(poller);
    expect(pollerGrants.get(arn(table))).toContain('dynamodb:UpdateItem');
    expect([...(pollerGrants.get(arn(queue)) ?? [])].sort()).toEqual(
      ['sqs:GetQueueAttributes', 'sqs:GetQueueUrl', 'sqs:SendMessage'].sort(),
    );
    expect(pollerGrants.has(arn(dlq))).toBe(false);

    const forwarderGrants = grants(forwarder);
    expect(forwarderGrants.get(arn(table))).toContain('dynamodb:PutItem');
    expect([...(forwarderGrants.get(arn(dlq)) ?? [])]).toContain('sqs:SendMessage');
    expect([...(forwarderGrants.get(arn(dlq)) ?? [])]).not.toContain('sqs:ReceiveMessage');
    const work = forwarderGrants.get(arn(queue)) ?? new Set();
    for (const action of ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility']) {
      expect(work).toContain(action);
    }
    expect(work).not.toContain('sqs:SendMessage');

    for (const fnGrants of [pollerGrants, forwarderGrants]) {
      for (const secret of SECRET_ARNS)
        expect([...(fnGrants.get(secret) ?? [])]).toEqual(['secretsmanager:GetSecretValue']);
      const logGroups = [...fnGrants.keys()].filter(
        (key) => resources[key.replace(/^getatt:(.*)\.Arn$/, '$1')]?.Type === 'AWS::Logs::LogGroup',
      );
      expect(logGroups).toHaveLength(1);
      expect([...(fnGrants.get(logGroups[0] as string) ?? [])].sort()).toEqual([
        'logs:CreateLogStream',
        'logs:PutLogEvents',
      ]);
    }
  });
});

describe('cdk-nag AwsSolutions', () => {
  it('finds nothing unacknowledged, and no construct reports an error', () => {
    const report = new AwsSolutionsChecks().validateScope(app);
    expect(report.violations.map((violation) => `${violation.ruleName}: ${violation.description}`)).toEqual(
      [],
    );
    expect(report.success).toBe(true);
    expect(Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'))).toEqual(
      [],
    );
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
    expect(acknowledged.map(([id]) => id.replace(/^annotation::/i, ''))).toEqual([
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
    ]);
    for (const [, reason] of acknowledged) expect(reason.length).toBeGreaterThan(80);
  });

  it('fails the synth on a finding nobody acknowledged', () => {
    const checked = new App({ context: cdkContext() });
    const bad = addForwarder(checked);
    new Queue(bad, 'PlainQueue');
    expect(() => checked.synth()).toThrow(/AwsSolutions-SQS4/);
    const violations = new AwsSolutionsChecks().validateScope(checked).violations.map((v) => v.ruleName);
    expect(violations).toEqual(expect.arrayContaining(['AwsSolutions-SQS3', 'AwsSolutions-SQS4']));
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
    // One statement per function: the shared secret once, the partial ARN with any suffix.
    for (const policy of Object.values(variant.findResources('AWS::IAM::Policy'))) {
      const statement = (policy.Properties.PolicyDocument.Statement as Record<string, Json>[]).find(
        (s) => s.Action === 'secretsmanager:GetSecretValue',
      );
      expect(list(statement?.Resource).map(render).sort()).toEqual([
        'arn:aws:secretsmanager:eu-west-1:123456789012:secret:dest-??????',
        'arn:aws:secretsmanager:ref:AWS::Region:ref:AWS::AccountId:secret:orthanc-forwarder/sources-??????',
      ]);
    }
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

  it('bin/app.ts exits 1 with the field on stderr', () => {
    const raw = exampleRaw();
    (raw.aws as { vpc: Record<string, unknown> }).vpc.securityGroupIds = ['sg-1'];
    const run = spawnSync(
      process.execPath,
      ['--disable-warning=ExperimentalWarning', join(ROOT, 'bin/app.ts')],
      {
        cwd: ROOT,
        encoding: 'utf8',
        env: {
          ...process.env,
          CDK_CONTEXT_JSON: JSON.stringify({ configFile: writeConfig(dir, 'bad-sg.json', raw) }),
          CDK_OUTDIR: join(dir, 'out'),
        },
      },
    );
    expect(run.status).toBe(1);
    expect(run.stderr).toMatch(/aws\.vpc\.securityGroupIds\[0\]: must be an ID like sg-/);
  });
});
