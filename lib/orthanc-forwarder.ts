/**
 * The AWS pipeline as one reusable construct: a state table, a work queue with its dead-letter
 * queue, the scheduled poller and the SQS-triggered forwarder, in the configured VPC.
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
import { Duration, RemovalPolicy, Stack, Token, Validations } from 'aws-cdk-lib';
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
import { Grant, ManagedPolicy, Role, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Architecture, Runtime } from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import { LogLevel, NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { type ISecret, Secret } from 'aws-cdk-lib/aws-secretsmanager';
import { Queue, QueueEncryption } from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import {
  type AwsConfig,
  ConfigError,
  destinationServers,
  type ForwarderConfig,
} from '../lambdas/core/config.ts';
import { ESM_BUNDLE } from './bundling.ts';

/** The configuration the pipeline deploys: parsed by `parseConfig`, with its `aws` section. */
export type DeployableConfig = ForwarderConfig & { readonly aws: AwsConfig };

export type PowertoolsLogLevel = 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';

export interface OrthancForwarderProps {
  readonly config: ForwarderConfig;
  /** Log level of both Lambdas (POWERTOOLS_LOG_LEVEL). Default INFO. */
  readonly logLevel?: PowertoolsLogLevel;
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

const serverFields = (config: ForwarderConfig) => [
  ...config.sources.map((server, index) => ({ field: `sources[${index}]`, server })),
  ...destinationServers(config),
];

/**
 * What parseConfig accepts but the AWS pipeline cannot run: each problem names its field.
 * Credentials come only from Secrets Manager (`secretId`), never from the template or an
 * environment variable; and a Lambda has no file of the deployer's machine to read.
 */
export const deployableConfig = (config: ForwarderConfig): DeployableConfig => {
  const { aws } = config;
  if (aws === undefined) {
    throw new ConfigError(
      'invalid configuration:\n  aws: the AWS pipeline needs the aws section (at least aws.vpc: vpcId, availabilityZones, privateSubnetIds, routeTableIds, securityGroupIds)',
    );
  }
  const problems: string[] = [];
  for (const { field, server } of serverFields(config)) {
    for (const key of ['password', 'passwordEnv'] as const) {
      if (server[key] !== undefined) {
        problems.push(
          `${field}.${key}: not allowed on AWS: store {"username","password"} in a Secrets Manager secret and give its name or ARN in ${field}.secretId`,
        );
      }
    }
    for (const key of ['caFile', 'clientCertFile', 'clientKeyFile'] as const) {
      if (server[key] !== undefined) {
        problems.push(`${field}.${key}: not supported on AWS: the Lambda cannot read a file of this machine`);
      }
    }
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

/** The configuration as the Lambdas receive it: no password can be in it. */
export const lambdaConfigJson = (config: DeployableConfig): string => {
  const strip = <T extends object>(server: T): T => {
    const {
      password: _password,
      passwordEnv: _passwordEnv,
      ...rest
    } = server as T & {
      password?: unknown;
      passwordEnv?: unknown;
    };
    return rest as T;
  };
  return JSON.stringify({
    ...config,
    sources: config.sources.map(strip),
    destinations: config.destinations.map(({ alternate, ...destination }) => ({
      ...strip(destination),
      ...(alternate === undefined ? {} : { alternate: strip(alternate) }),
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
const importSecret = (scope: Construct, id: string, secretId: string): ISecret => {
  if (!secretId.startsWith('arn:')) return Secret.fromSecretNameV2(scope, id, secretId);
  const name = secretId.split(':').slice(6).join(':');
  return /-[A-Za-z0-9]{6}$/.test(name)
    ? Secret.fromSecretCompleteArn(scope, id, secretId)
    : Secret.fromSecretPartialArn(scope, id, secretId);
};

/** The ARN an IAM statement must name: a name or partial ARN matches any random suffix. */
const secretPolicyArn = (secret: ISecret): string => secret.secretFullArn ?? `${secret.secretArn}-??????`;

export class OrthancForwarder extends Construct {
  /** Cursors, watch lists, leases and the ledger: one table, `pk`/`sk`, TTL on `ttl`. */
  readonly table: Table;
  /** Study work items, consumed by the forwarder. */
  readonly queue: Queue;
  /** Work items that failed `retry.maxAttempts` times, or could not be parsed. */
  readonly deadLetterQueue: Queue;
  readonly pollerFunction: NodejsFunction;
  readonly forwarderFunction: NodejsFunction;
  readonly pollerLogGroup: LogGroup;
  readonly forwarderLogGroup: LogGroup;
  /** The Secrets Manager secrets of the sources and the destination. */
  readonly secrets: readonly ISecret[];
  readonly pollSchedule: Rule;
  readonly vpc: IVpc;
  /** Security group of the interface endpoints, when they are created. */
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

    this.deadLetterQueue = new Queue(this, 'DeadLetterQueue', {
      encryption: QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: MAX_RETENTION,
    });
    this.queue = new Queue(this, 'WorkQueue', {
      encryption: QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // A study must not fall off the queue while the destination is down for a few days.
      retentionPeriod: MAX_RETENTION,
      // A message comes back only after the invocation that holds it has certainly ended.
      visibilityTimeout: Duration.seconds(6 * aws.forwarder.timeoutSeconds),
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: config.retry.maxAttempts },
    });

    this.secrets = [
      ...new Set(
        serverFields(config).flatMap(({ server }) =>
          server.secretId === undefined ? [] : [server.secretId],
        ),
      ),
    ].map((secretId, index) => importSecret(this, `Secret${index}`, secretId));

    const environment: Record<string, string> = {
      [ENV.config]: lambdaConfigJson(config),
      [ENV.table]: this.table.tableName,
      [ENV.queueUrl]: this.queue.queueUrl,
      [ENV.deadLetterQueueUrl]: this.deadLetterQueue.queueUrl,
      POWERTOOLS_SERVICE_NAME: SERVICE_NAME,
      POWERTOOLS_METRICS_NAMESPACE: METRICS_NAMESPACE,
      POWERTOOLS_LOG_LEVEL: props.logLevel ?? 'INFO',
      // Stack traces point into the TypeScript sources, through the bundle's source map.
      NODE_OPTIONS: '--enable-source-maps',
    };
    const bytes = environmentBytes(environment);
    if (bytes > LAMBDA_ENV_LIMIT_BYTES) {
      throw new ConfigError(
        `invalid configuration for AWS:\n  (root): the configuration takes ${Buffer.byteLength(environment[ENV.config] ?? '')} bytes as ${ENV.config}, beyond Lambda's ${LAMBDA_ENV_LIMIT_BYTES}-byte limit on a function's environment`,
      );
    }

    const makeFunction = (name: 'Poller' | 'Forwarder', entry: string, sizing: AwsConfig['poller']) => {
      const logGroup = new LogGroup(this, `${name}LogGroup`, {
        retention: aws.logRetentionDays as RetentionDays,
        removalPolicy: RemovalPolicy.RETAIN,
      });
      // Our own role: log writes only to this function's log group, instead of
      // AWSLambdaBasicExecutionRole's logs:* on every log group.
      const role = new Role(this, `${name}Role`, {
        assumedBy: new ServicePrincipal('lambda.amazonaws.com'),
        description: `Orthanc forwarder ${name.toLowerCase()} Lambda`,
        managedPolicies: [
          ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole'),
        ],
      });
      logGroup.grantWrite(role);
      Validations.of(role).acknowledge({
        id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
        reason:
          'A Lambda in a VPC needs ec2:CreateNetworkInterface, DescribeNetworkInterfaces, DescribeSubnets, DeleteNetworkInterface and Assign/UnassignPrivateIpAddresses, which Lambda requires on Resource "*"; the AWS managed policy is exactly that set and AWS keeps it current. No other managed policy is attached.',
      });
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
        environment,
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
      return { fn, logGroup };
    };

    const poller = makeFunction('Poller', entries.poller, aws.poller);
    const forwarder = makeFunction('Forwarder', entries.forwarder, aws.forwarder);
    this.pollerFunction = poller.fn;
    this.pollerLogGroup = poller.logGroup;
    this.forwarderFunction = forwarder.fn;
    this.forwarderLogGroup = forwarder.logGroup;

    // The poller: cursors and watch lists in the table; study work items onto the queue.
    this.table.grantReadWriteData(this.pollerFunction);
    this.queue.grantSendMessages(this.pollerFunction);
    // The forwarder: leases and the ledger; its own dead-lettering and retry backoff.
    this.table.grantReadWriteData(this.forwarderFunction);
    this.deadLetterQueue.grantSendMessages(this.forwarderFunction);
    this.queue.grant(this.forwarderFunction, 'sqs:ChangeMessageVisibility');
    // Both resolve every server's credentials when they start (lambdas/aws/runtime.ts).
    if (this.secrets.length > 0) {
      for (const fn of [this.pollerFunction, this.forwarderFunction]) {
        Grant.addToPrincipal({
          grantee: fn,
          actions: ['secretsmanager:GetSecretValue'],
          resourceArns: this.secrets.map(secretPolicyArn),
        });
      }
    }

    this.forwarderFunction.addEventSource(
      new SqsEventSource(this.queue, {
        batchSize: aws.forwarder.batchSize,
        maxConcurrency: aws.forwarder.maxConcurrency,
        reportBatchItemFailures: true,
      }),
    );

    // A missed or failed tick is not retried: the next one comes within pollScheduleMinutes.
    const tickAge = Duration.seconds(Math.max(60, aws.pollScheduleMinutes * 60));
    this.pollerFunction.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: tickAge });
    this.pollSchedule = new Rule(this, 'PollSchedule', {
      description: 'Runs the Orthanc forwarder poller',
      schedule: Schedule.rate(Duration.minutes(aws.pollScheduleMinutes)),
      targets: [new LambdaFunction(this.pollerFunction, { retryAttempts: 0, maxEventAge: tickAge })],
    });

    if (aws.vpc.createEndpoints) {
      this.endpointSecurityGroup = this.createEndpoints(aws, subnets, securityGroups);
    }
  }

  /**
   * Private subnets without a NAT reach AWS through endpoints: interface endpoints for SQS,
   * Secrets Manager, CloudWatch metrics and logs, and a gateway endpoint for DynamoDB.
   */
  private createEndpoints(
    aws: AwsConfig,
    subnets: SubnetSelection,
    lambdaGroups: ISecurityGroup[],
  ): SecurityGroup {
    // The endpoints get their own group admitting HTTPS from the Lambdas' groups, so that the
    // deployer's groups need no inbound rule.
    const endpointGroup = new SecurityGroup(this, 'EndpointSecurityGroup', {
      vpc: this.vpc,
      description: 'Orthanc forwarder VPC interface endpoints: HTTPS from the forwarder Lambdas',
      allowAllOutbound: false,
    });
    for (const group of lambdaGroups) {
      endpointGroup.addIngressRule(group, Port.tcp(443), `HTTPS from ${group.securityGroupId}`);
    }
    const services = {
      Sqs: InterfaceVpcEndpointAwsService.SQS,
      SecretsManager: InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
      CloudWatchMonitoring: InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
      CloudWatchLogs: InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    };
    for (const [name, service] of Object.entries(services)) {
      new InterfaceVpcEndpoint(this, `${name}Endpoint`, {
        vpc: this.vpc,
        service,
        subnets,
        securityGroups: [endpointGroup],
        privateDnsEnabled: true,
        // The group above admits the Lambdas; `open` would need the VPC's CIDR, unknown here.
        open: false,
      });
    }
    new CfnVPCEndpoint(this, 'DynamoDbEndpoint', {
      vpcId: aws.vpc.vpcId,
      serviceName: `com.amazonaws.${Stack.of(this).region}.dynamodb`,
      vpcEndpointType: 'Gateway',
      routeTableIds: aws.vpc.routeTableIds,
    });
    return endpointGroup;
  }
}
