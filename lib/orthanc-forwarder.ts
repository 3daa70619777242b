/**
 * The AWS pipeline as one reusable construct: a state table, a work queue and a backlog queue
 * with their dead-letter queue, the scheduled poller and the SQS-triggered forwarder, in the
 * configured VPC. New studies go to the work queue, the backlog (what the sweep and the first read
 * of a source's history find) to the backlog queue: each has an event source mapping with its own
 * maximum concurrency, so that new studies never wait behind the backlog.
 *
 * Encryption at rest uses AWS managed keys (the table: the `aws/dynamodb` KMS key; the queues:
 * SQS-managed SSE; the logs: CloudWatch Logs' own encryption), not a customer KMS key. What
 * these resources hold is operational metadata — source ids, Orthanc study ids, cursors,
 * leases, SOPInstanceUIDs of refused instances and error texts — never images or tag values.
 * A customer key would add a key policy to get right (a wrong one locks the Lambdas out), KMS
 * permissions with wildcard actions on both roles, a monthly key charge, and a retained table
 * that can be read only while a separately managed key lives. Pass a key through a new prop
 * (table `encryptionKey`, queue `encryptionMasterKey`, log group `encryptionKey`) if an auditor
 * asks for one. (The alarm topic in forwarder-monitoring.ts is the exception: CloudWatch cannot
 * publish to a topic under the AWS managed SNS key, so it has a customer key of its own.)
 */
import { fileURLToPath } from 'node:url';
import { Duration, Names, RemovalPolicy, Stack, Token, Validations } from 'aws-cdk-lib';
import { AttributeType, BillingMode, Table, TableEncryption } from 'aws-cdk-lib/aws-dynamodb';
import {
  CfnVPCEndpoint,
  InterfaceVpcEndpoint,
  InterfaceVpcEndpointAwsService,
  type ISecurityGroup,
  type IVpc,
  Port,
  SecurityGroup,
  type SubnetSelection,
  Vpc,
} from 'aws-cdk-lib/aws-ec2';
import { Rule, Schedule } from 'aws-cdk-lib/aws-events';
import { LambdaFunction } from 'aws-cdk-lib/aws-events-targets';
import { Grant, PolicyStatement, Role, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import {
  ApplicationLogLevel,
  Architecture,
  LoggingFormat,
  Runtime,
  SystemLogLevel,
  Tracing,
} from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import { LogLevel, NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { type ISecret, Secret } from 'aws-cdk-lib/aws-secretsmanager';
import { Queue, QueueEncryption, RedrivePermission } from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { type AuthConfig, LOCAL_SECRET_FIELDS } from '../lambdas/core/auth-config.ts';
import {
  type AwsConfig,
  ConfigError,
  configuredServers,
  type ForwarderConfig,
  plainHttpUrls,
  type ServerConfig,
} from '../lambdas/core/config.ts';
import { ESM_BUNDLE } from './bundling.ts';
import { grantHealthImaging } from './healthimaging-grants.ts';

/** The configuration the pipeline deploys: parsed by `parseConfig`, with its `aws` section. */
export type DeployableConfig = ForwarderConfig & { readonly aws: AwsConfig };

export interface OrthancForwarderProps {
  readonly config: ForwarderConfig;
  /**
   * Handler entry files, for tests only: default `lambdas/handlers/poller.ts` and
   * `lambdas/handlers/forwarder.ts`. Each must export `handler`.
   */
  readonly entries?: { readonly poller?: string; readonly forwarder?: string };
}

/** The environment variables the handlers read (lambdas/aws/runtime.ts, powertools-metrics.ts). */
export const ENV = {
  config: 'FORWARDER_CONFIG',
  table: 'STATE_TABLE',
  queueUrl: 'QUEUE_URL',
  backlogQueueUrl: 'BACKLOG_QUEUE_URL',
  deadLetterQueueUrl: 'DLQ_URL',
} as const;
export const SERVICE_NAME = 'orthanc-forwarder';
export const METRICS_NAMESPACE = 'OrthancForwarder';

const repoFile = (path: string) => fileURLToPath(new URL(`../${path}`, import.meta.url));
export const DEFAULT_ENTRIES = {
  poller: repoFile('lambdas/handlers/poller.ts'),
  forwarder: repoFile('lambdas/handlers/forwarder.ts'),
} as const;

/** Lambda's limit on a function's environment: keys and values together. */
const LAMBDA_ENV_LIMIT_BYTES = 4096;
/** What a CloudFormation reference (table name, queue URL) may take once resolved. */
const TOKEN_ALLOWANCE_BYTES = 256;
/** SQS keeps a message at most 14 days. */
const MAX_RETENTION = Duration.days(14);
/**
 * A message moved to the DLQ keeps the time it was first sent, so the DLQ must keep messages
 * longer than the work queue: a dead letter then stays there at least a week.
 */
const WORK_RETENTION = Duration.days(7);

/**
 * What lambdas/aws/dynamo-*.ts send to the state table. TransactWriteItems has no action of its
 * own: each Put or Update in it needs PutItem or UpdateItem. No Scan, no stream reads.
 */
const STATE_TABLE_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:Query',
  'dynamodb:BatchGetItem',
  'dynamodb:BatchWriteItem',
] as const;

/**
 * What Lambda needs to attach a function to the VPC (AWSLambdaVPCAccessExecutionRole without its
 * `logs:*` on every log group). EC2 offers no resource-level permission for the describe actions,
 * and Lambda manages the interfaces in subnets and groups the configuration may change.
 */
export const NETWORK_INTERFACE_ACTIONS = [
  'ec2:CreateNetworkInterface',
  'ec2:DescribeNetworkInterfaces',
  'ec2:DescribeSubnets',
  'ec2:DeleteNetworkInterface',
  'ec2:AssignPrivateIpAddresses',
  'ec2:UnassignPrivateIpAddresses',
] as const;

type LambdaName = 'Poller' | 'Forwarder';

/** The servers a function talks to: the poller reads the sources' change feeds and nothing else. */
const serversOf = (config: DeployableConfig, name: LambdaName) =>
  configuredServers(name === 'Poller' ? { sources: config.sources, destinations: [] } : config);

/**
 * What parseConfig accepts but the AWS pipeline cannot run: each problem names its field.
 * Credentials come only from Secrets Manager (`secretId`), never from the template or an
 * environment variable; they cross the network only over TLS unless a server says otherwise
 * (`allowInsecureHttp`); and a Lambda has no file of the deployer's machine to read.
 */
export const deployableConfig = (config: ForwarderConfig): DeployableConfig => {
  const { aws } = config;
  if (aws === undefined) {
    throw new ConfigError(
      'invalid configuration:\n  aws: the AWS pipeline needs the aws section (at least aws.vpc: vpcId, availabilityZones, privateSubnetIds, routeTableIds, securityGroupIds)',
    );
  }
  const problems: string[] = [];
  for (const { field, server } of configuredServers(config)) {
    for (const key of ['password', 'passwordEnv'] as const) {
      if (server[key] !== undefined) {
        problems.push(
          `${field}.${key}: not allowed on AWS: store {"username","password"} in a Secrets Manager secret and give its name or ARN in ${field}.secretId`,
        );
      }
    }
    for (const [key, instead] of [
      ['caFile', 'caSecretId'],
      ['clientCertFile', 'clientCertSecretId'],
      ['clientKeyFile', 'clientCertSecretId'],
    ] as const) {
      if (server[key] !== undefined) {
        problems.push(
          `${field}.${key}: not supported on AWS: the Lambda cannot read a file of this machine; put the PEM in a Secrets Manager secret and give it in ${field}.${instead}`,
        );
      }
    }
    const auth = 'auth' in server ? server.auth : undefined;
    for (const key of LOCAL_SECRET_FIELDS) {
      if (auth !== undefined && key in auth) {
        problems.push(
          `${field}.auth.${key}: not allowed on AWS: put the secret in a Secrets Manager secret and give its name or ARN in ${field}.auth.secretId`,
        );
      }
    }
    if (server.kmsKeyArn !== undefined && secretIdsOf(server).length === 0) {
      problems.push(`${field}.kmsKeyArn: the key of the secret in secretId, which is not given`);
    }
  }
  for (const { field } of plainHttpUrls(config)) {
    problems.push(
      `${field}: http:// is not allowed on AWS: use https://, or set allowInsecureHttp: true on this server to accept credentials and data crossing the network readable`,
    );
  }
  if (!Object.values(RetentionDays).includes(aws.logRetentionDays)) {
    const allowed = Object.values(RetentionDays).filter((days) => typeof days === 'number' && days > 0);
    problems.push(`aws.logRetentionDays: CloudWatch Logs accepts only ${allowed.join(', ')}`);
  }
  if (aws.vpc.privateSubnetIds.length % aws.vpc.availabilityZones.length !== 0) {
    problems.push(
      `aws.vpc.privateSubnetIds: give the same number of subnets in each of the ${aws.vpc.availabilityZones.length} availability zones, in the order of aws.vpc.availabilityZones`,
    );
  }
  if (problems.length > 0)
    throw new ConfigError(`invalid configuration for AWS:\n  ${problems.join('\n  ')}`);
  return { ...config, aws };
};

/**
 * The configuration as a Lambda receives it: no password can be in it. The poller's names no
 * destination's secret either, since its role may not read one (lambdas/aws/runtime.ts reads
 * the secret of every server it finds a secretId on).
 */
export const lambdaConfigJson = (config: DeployableConfig, name: LambdaName): string => {
  const without =
    (keys: readonly string[]) =>
    <T extends ServerConfig>(server: T): T =>
      Object.fromEntries(Object.entries(server).filter(([key]) => !keys.includes(key))) as T;
  const passwords = ['password', 'passwordEnv'];
  const strip = without(passwords);
  const stripDestination = without(
    name === 'Poller'
      ? [...passwords, 'secretId', 'kmsKeyArn', 'caSecretId', 'clientCertSecretId', 'auth']
      : passwords,
  );
  return JSON.stringify({
    ...config,
    sources: config.sources.map(strip),
    destinations: config.destinations.map(({ alternate, ...destination }) => ({
      ...stripDestination(destination),
      ...(alternate === undefined ? {} : { alternate: stripDestination(alternate) }),
    })),
  });
};

const environmentBytes = (environment: Record<string, string>): number =>
  Object.entries(environment).reduce(
    (total, [key, value]) =>
      total +
      Buffer.byteLength(key) +
      (Token.isUnresolved(value) ? TOKEN_ALLOWANCE_BYTES : Buffer.byteLength(value)),
    0,
  );

/**
 * `Secret.fromSecretNameV2` for a name; for an ARN, a complete one (ending in the six random
 * characters Secrets Manager appends) or else a partial one.
 */
/** Every secret a server's settings name: its credentials (or its `auth`'s), its CAs, its client certificate. */
const secretIdsOf = (server: ServerConfig & { readonly auth?: AuthConfig | undefined }): string[] =>
  [
    server.secretId,
    server.caSecretId,
    server.clientCertSecretId,
    server.auth !== undefined && 'secretId' in server.auth ? server.auth.secretId : undefined,
  ].filter((id) => id !== undefined);

const importSecret = (scope: Construct, id: string, secretId: string): ISecret => {
  if (!secretId.startsWith('arn:')) return Secret.fromSecretNameV2(scope, id, secretId);
  const name = secretId.split(':').slice(6).join(':');
  return /-[A-Za-z0-9]{6}$/.test(name)
    ? Secret.fromSecretCompleteArn(scope, id, secretId)
    : Secret.fromSecretPartialArn(scope, id, secretId);
};

/** The interface endpoints `aws.vpc.createEndpoints` may name, by their construct id. */
const INTERFACE_ENDPOINTS = {
  sqs: { id: 'Sqs', service: InterfaceVpcEndpointAwsService.SQS },
  secretsmanager: { id: 'SecretsManager', service: InterfaceVpcEndpointAwsService.SECRETS_MANAGER },
  logs: { id: 'CloudWatchLogs', service: InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS },
  monitoring: { id: 'CloudWatchMonitoring', service: InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING },
} as const;

/** The ARN an IAM statement must name: a name or partial ARN matches any random suffix. */
const secretPolicyArn = (secret: ISecret): string => secret.secretFullArn ?? `${secret.secretArn}-??????`;

export class OrthancForwarder extends Construct {
  /** Cursors, watch lists, leases and the ledger: one table, `pk`/`sk`, TTL on `ttl`. */
  readonly table: Table;
  /** Work items of new studies, consumed by the forwarder first. */
  readonly queue: Queue;
  /** Work items of the backlog, consumed by the forwarder besides, at their own concurrency. */
  readonly backlogQueue: Queue;
  /** Work items that failed `retry.maxAttempts` times, or could not be parsed. */
  readonly deadLetterQueue: Queue;
  readonly pollerFunction: NodejsFunction;
  readonly forwarderFunction: NodejsFunction;
  readonly pollerLogGroup: LogGroup;
  readonly forwarderLogGroup: LogGroup;
  /** The Secrets Manager secrets of the servers, by their secretId. */
  readonly secrets: ReadonlyMap<string, ISecret>;
  readonly pollSchedule: Rule;
  readonly vpc: IVpc;
  /** Security group of the interface endpoints, when any is created. */
  readonly endpointSecurityGroup?: SecurityGroup;

  constructor(scope: Construct, id: string, props: OrthancForwarderProps) {
    super(scope, id);
    const config = deployableConfig(props.config);
    const { aws } = config;
    const entries = { ...DEFAULT_ENTRIES, ...props.entries };

    const routeTablePerSubnet = aws.vpc.routeTableIds.length === aws.vpc.privateSubnetIds.length;
    this.vpc = Vpc.fromVpcAttributes(this, 'Vpc', {
      vpcId: aws.vpc.vpcId,
      availabilityZones: aws.vpc.availabilityZones,
      privateSubnetIds: aws.vpc.privateSubnetIds,
      ...(routeTablePerSubnet ? { privateSubnetRouteTableIds: aws.vpc.routeTableIds } : {}),
    });
    if (!routeTablePerSubnet) {
      Validations.of(this.vpc).acknowledge({
        id: '@aws-cdk/aws-ec2:noSubnetRouteTableId',
        reason:
          'Subnets may share route tables, so aws.vpc.routeTableIds need not pair with the subnets; nothing here reads a subnet’s route table: the DynamoDB gateway endpoint takes aws.vpc.routeTableIds as they are.',
      });
    }
    const subnets: SubnetSelection = { subnets: this.vpc.privateSubnets };
    // Immutable: the deployer owns these groups, and this stack adds no rule to them.
    const securityGroups: ISecurityGroup[] = aws.vpc.securityGroupIds.map((groupId, index) =>
      SecurityGroup.fromSecurityGroupId(this, `SecurityGroup${index}`, groupId, { mutable: false }),
    );

    this.table = new Table(this, 'StateTable', {
      partitionKey: { name: 'pk', type: AttributeType.STRING },
      sortKey: { name: 'sk', type: AttributeType.STRING },
      timeToLiveAttribute: 'ttl',
      billingMode: BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: TableEncryption.AWS_MANAGED,
      // The ledger records what was deleted at the sources: it outlives the stack.
      removalPolicy: RemovalPolicy.RETAIN,
      deletionProtection: true,
    });
    Validations.of(this.table).acknowledge({
      id: 'HIPAA.Security-DynamoDBInBackupPlan',
      reason:
        'Point-in-time recovery keeps 35 days of continuous backups, and deletion protection and the retain policy keep the table; a plan of AWS Backup (vault, schedule, retention) is the account owner’s to choose, and can select the table by the tags of aws.tags.',
    });

    // Named, so that the DLQ's redrive allow policy can give their ARNs: a reference would make
    // each queue depend on the other.
    const queuePrefix = Names.uniqueResourceName(this, { maxLength: 70, separator: '-' });
    const workQueueName = `${queuePrefix}-work`;
    const backlogQueueName = `${queuePrefix}-backlog`;
    this.deadLetterQueue = new Queue(this, 'DeadLetterQueue', {
      encryption: QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: MAX_RETENTION,
      // Its dead letters are the work a failed move left undone: they outlive the stack.
      removalPolicy: RemovalPolicy.RETAIN,
      // Only the work and backlog queues may dead-letter here.
      redriveAllowPolicy: {
        redrivePermission: RedrivePermission.BY_QUEUE,
        sourceQueues: (
          [
            ['WorkQueueArn', workQueueName],
            ['BacklogQueueArn', backlogQueueName],
          ] as const
        ).map(([id, name]) =>
          Queue.fromQueueArn(this, id, Stack.of(this).formatArn({ service: 'sqs', resource: name })),
        ),
      },
    });
    const workQueue = (id: string, queueName: string) =>
      new Queue(this, id, {
        queueName,
        encryption: QueueEncryption.SQS_MANAGED,
        enforceSSL: true,
        // A study must not fall off the queue while the destination is down for a few days.
        retentionPeriod: WORK_RETENTION,
        // A message comes back only after the invocation that holds it has certainly ended.
        visibilityTimeout: Duration.seconds(6 * aws.forwarder.timeoutSeconds),
        deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: config.retry.maxAttempts },
      });
    this.queue = workQueue('WorkQueue', workQueueName);
    this.backlogQueue = workQueue('BacklogQueue', backlogQueueName);

    this.secrets = new Map(
      [...new Set(configuredServers(config).flatMap(({ server }) => secretIdsOf(server)))].map(
        (secretId, index) => [secretId, importSecret(this, `Secret${index}`, secretId)],
      ),
    );

    const environmentOf = (name: LambdaName): Record<string, string> => {
      const environment: Record<string, string> = {
        [ENV.config]: lambdaConfigJson(config, name),
        [ENV.table]: this.table.tableName,
        [ENV.queueUrl]: this.queue.queueUrl,
        [ENV.backlogQueueUrl]: this.backlogQueue.queueUrl,
        [ENV.deadLetterQueueUrl]: this.deadLetterQueue.queueUrl,
        POWERTOOLS_SERVICE_NAME: SERVICE_NAME,
        POWERTOOLS_METRICS_NAMESPACE: METRICS_NAMESPACE,
        // Stack traces point into the TypeScript sources, through the bundle's source map.
        NODE_OPTIONS: '--enable-source-maps',
      };
      if (environmentBytes(environment) > LAMBDA_ENV_LIMIT_BYTES) {
        throw new ConfigError(
          `invalid configuration for AWS:\n  (root): the configuration takes ${Buffer.byteLength(environment[ENV.config] ?? '')} bytes as ${ENV.config}, beyond Lambda's ${LAMBDA_ENV_LIMIT_BYTES}-byte limit on a function's environment`,
        );
      }
      return environment;
    };

    const makeFunction = (name: LambdaName, entry: string, sizing: AwsConfig['poller']) => {
      const logGroup = new LogGroup(this, `${name}LogGroup`, {
        retention: aws.logRetentionDays as RetentionDays,
        removalPolicy: RemovalPolicy.RETAIN,
      });
      Validations.of(logGroup).acknowledge({
        id: 'HIPAA.Security-CloudWatchLogGroupEncrypted',
        reason:
          'CloudWatch Logs encrypts every log group at rest with keys of its own; these logs carry ids, counts and error texts, never a password or a DICOM tag value (docs/security.md, test/security.test.ts). A customer key would need a key policy for the logs service, and the module comment says where to pass one.',
      });
      // No managed policy: AWSLambdaVPCAccessExecutionRole would add logs:* on every log group.
      const role = new Role(this, `${name}Role`, {
        assumedBy: new ServicePrincipal('lambda.amazonaws.com'),
        description: `Orthanc forwarder ${name.toLowerCase()} Lambda`,
      });
      role.addToPrincipalPolicy(
        new PolicyStatement({
          sid: 'VpcNetworkInterfaces',
          actions: [...NETWORK_INTERFACE_ACTIONS],
          resources: ['*'],
        }),
      );
      logGroup.grantWrite(role);
      Validations.of(role).acknowledge(
        {
          id: 'AwsSolutions-IAM5[Resource::*]',
          reason: `Resource "*" only for actions that take no narrower resource: the network interfaces Lambda manages in the VPC (${NETWORK_INTERFACE_ACTIONS.join(', ')}), and with aws.tracing X-Ray's PutTraceSegments and PutTelemetryRecords.`,
        },
        {
          id: 'HIPAA.Security-IAMNoInlinePolicy',
          reason:
            'The role’s one policy is inline so that it lives and dies with the role and cannot be attached to another principal; every statement names this stack’s resources or the configured secrets and keys, except the network-interface and X-Ray actions acknowledged under AwsSolutions-IAM5.',
        },
      );
      const fn = new NodejsFunction(this, name, {
        entry,
        handler: 'handler',
        runtime: Runtime.NODEJS_24_X,
        architecture: Architecture.ARM_64,
        memorySize: sizing.memoryMb,
        timeout: Duration.seconds(sizing.timeoutSeconds),
        description: `Orthanc forwarder: ${name === 'Poller' ? 'reads the sources’ change feeds, queues studies' : 'moves one study per work item'}`,
        role,
        logGroup,
        loggingFormat: LoggingFormat.JSON,
        // Powertools Logger takes this level too (AWS_LAMBDA_LOG_LEVEL), whatever else it is given.
        applicationLogLevelV2: ApplicationLogLevel[aws.logLevel],
        systemLogLevelV2: SystemLogLevel.INFO,
        tracing: aws.tracing ? Tracing.ACTIVE : Tracing.DISABLED,
        // One poll at a time: a tick that comes while a poll runs waits for it, up to the tick's
        // maximum age, instead of reading the same feeds twice over.
        ...(name === 'Poller' ? { reservedConcurrentExecutions: 1 } : {}),
        environment: environmentOf(name),
        vpc: this.vpc,
        vpcSubnets: subnets,
        securityGroups,
        projectRoot: repoFile(''),
        depsLockFilePath: repoFile('package-lock.json'),
        bundling: {
          forceDockerBundling: false,
          format: OutputFormat.ESM,
          target: ESM_BUNDLE.target,
          platform: 'node',
          mainFields: [...ESM_BUNDLE.mainFields],
          banner: ESM_BUNDLE.requireBanner,
          minify: true,
          sourceMap: true,
          sourcesContent: false,
          // Bundle the AWS SDK too: the versions the lockfile pins and the tests ran, not the runtime's.
          externalModules: [],
          logLevel: LogLevel.WARNING,
        },
      });
      Validations.of(fn).acknowledge({
        id: 'HIPAA.Security-LambdaDLQ',
        reason:
          name === 'Poller'
            ? 'Its only asynchronous events are the schedule’s ticks, deliberately not retried: the next tick replaces a failed one within pollScheduleMinutes, and the PollerErrors and NoSuccessfulPoll alarms report failures. A DLQ would collect empty scheduled events.'
            : 'The SQS event source mapping invokes it synchronously, where a function’s DLQ never applies: the work queue’s redrive policy and the forwarder’s own dead-lettering put failed work items in the stack’s DLQ.',
      });
      if (name === 'Forwarder') {
        Validations.of(fn).acknowledge({
          id: 'HIPAA.Security-LambdaConcurrency',
          reason:
            'The SQS event source mappings’ MaximumConcurrency (aws.forwarder.maxConcurrency for the work queue, aws.forwarder.backlogMaxConcurrency for the backlog queue) bound its concurrency; reserving as much would take it from the account’s unreserved pool and bound nothing more. The ForwarderThrottles alarm reports an account that runs out.',
        });
      }
      this.table.grant(fn, ...STATE_TABLE_ACTIONS);
      this.grantCredentials(fn, serversOf(config, name));
      return { fn, logGroup };
    };

    const poller = makeFunction('Poller', entries.poller, aws.poller);
    const forwarder = makeFunction('Forwarder', entries.forwarder, aws.forwarder);
    this.pollerFunction = poller.fn;
    this.pollerLogGroup = poller.logGroup;
    this.forwarderFunction = forwarder.fn;
    this.forwarderLogGroup = forwarder.logGroup;
    grantHealthImaging(this.forwarderFunction, config);

    // The poller queues study work items (SendMessageBatch), each on its priority's queue. The
    // forwarder dead-letters, queues a retry that made headway afresh, and sets a retry's backoff
    // as the message's visibility (lambdas/aws/sqs-dead-letters.ts), on the queue it came from.
    this.deadLetterQueue.grant(this.forwarderFunction, 'sqs:SendMessage');
    for (const [queue, maxConcurrency] of [
      [this.queue, aws.forwarder.maxConcurrency],
      [this.backlogQueue, aws.forwarder.backlogMaxConcurrency],
    ] as const) {
      queue.grant(this.pollerFunction, 'sqs:SendMessage');
      queue.grant(this.forwarderFunction, 'sqs:SendMessage', 'sqs:ChangeMessageVisibility');
      this.forwarderFunction.addEventSource(
        new SqsEventSource(queue, {
          batchSize: aws.forwarder.batchSize,
          maxConcurrency,
          reportBatchItemFailures: true,
        }),
      );
    }

    // A missed or failed tick is not retried: the next one comes within pollScheduleMinutes.
    const tickAge = Duration.seconds(Math.max(60, aws.pollScheduleMinutes * 60));
    this.pollerFunction.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: tickAge });
    this.pollSchedule = new Rule(this, 'PollSchedule', {
      description: 'Runs the Orthanc forwarder poller',
      schedule: Schedule.rate(Duration.minutes(aws.pollScheduleMinutes)),
      targets: [new LambdaFunction(this.pollerFunction, { retryAttempts: 0, maxEventAge: tickAge })],
    });

    const endpoints = aws.vpc.createEndpoints;
    if (endpoints.includes('dynamodb')) {
      new CfnVPCEndpoint(this, 'DynamoDbEndpoint', {
        vpcId: aws.vpc.vpcId,
        serviceName: `com.amazonaws.${Stack.of(this).region}.dynamodb`,
        vpcEndpointType: 'Gateway',
        routeTableIds: aws.vpc.routeTableIds,
      });
    }
    const interfaces = endpoints.flatMap((name) => (name === 'dynamodb' ? [] : [INTERFACE_ENDPOINTS[name]]));
    if (interfaces.length > 0) {
      this.endpointSecurityGroup = this.createInterfaceEndpoints(interfaces, subnets, securityGroups);
    }
  }

  /**
   * `secretsmanager:GetSecretValue` on the secrets of the servers the function talks to, and
   * `kms:Decrypt` (through Secrets Manager only) on the customer keys they are encrypted with.
   */
  private grantCredentials(fn: NodejsFunction, servers: { server: ServerConfig }[]): void {
    const secretArns = new Set<string>();
    const keyArns = new Set<string>();
    for (const { server } of servers) {
      for (const secretId of secretIdsOf(server)) {
        const secret = this.secrets.get(secretId);
        if (secret !== undefined) secretArns.add(secretPolicyArn(secret));
      }
      if (server.kmsKeyArn !== undefined) keyArns.add(server.kmsKeyArn);
    }
    if (secretArns.size > 0) {
      Grant.addToPrincipal({
        grantee: fn,
        actions: ['secretsmanager:GetSecretValue'],
        resourceArns: [...secretArns],
      });
    }
    if (keyArns.size > 0) {
      fn.addToRolePolicy(
        new PolicyStatement({
          actions: ['kms:Decrypt'],
          resources: [...keyArns],
          conditions: {
            StringEquals: { 'kms:ViaService': `secretsmanager.${Stack.of(this).region}.amazonaws.com` },
          },
        }),
      );
    }
  }

  /**
   * Private subnets without a NAT reach AWS services (for the Lambdas: SQS and Secrets Manager)
   * through interface endpoints. They get their own group admitting HTTPS from the Lambdas'
   * groups, so that the deployer's groups need no inbound rule.
   */
  private createInterfaceEndpoints(
    services: readonly (typeof INTERFACE_ENDPOINTS)[keyof typeof INTERFACE_ENDPOINTS][],
    subnets: SubnetSelection,
    lambdaGroups: ISecurityGroup[],
  ): SecurityGroup {
    const endpointGroup = new SecurityGroup(this, 'EndpointSecurityGroup', {
      vpc: this.vpc,
      description: 'Orthanc forwarder VPC interface endpoints: HTTPS from the forwarder Lambdas',
      allowAllOutbound: false,
    });
    for (const group of lambdaGroups) {
      endpointGroup.addIngressRule(group, Port.tcp(443), `HTTPS from ${group.securityGroupId}`);
    }
    for (const { id, service } of services) {
      new InterfaceVpcEndpoint(this, `${id}Endpoint`, {
        vpc: this.vpc,
        service,
        subnets,
        securityGroups: [endpointGroup],
        privateDnsEnabled: true,
        // The group above admits the Lambdas; `open` would need the VPC's CIDR, unknown here.
        open: false,
      });
    }
    return endpointGroup;
  }
}
