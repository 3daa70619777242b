/**
 * The forwarder's configuration: one schema for local mode and the AWS pipeline. Everything but
 * the sources and the destination has a default, and an error names the field that is wrong.
 */
import { z } from 'zod';

const httpUrl = z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' });

/** Credentials and TLS settings shared by every server we talk to. */
const serverFields = {
  url: httpUrl.transform((url) => url.replace(/\/+$/, '')),
  username: z.string().min(1).optional(),
  /** Inline password: convenient for a test, not for production. */
  password: z.string().optional(),
  /** Name of an environment variable holding the password. */
  passwordEnv: z.string().min(1).optional(),
  /**
   * On AWS: name or ARN of a Secrets Manager secret holding `{"username": …, "password": …}`.
   * The pipeline reads it at run time; it never enters the template or an environment variable.
   */
  secretId: z.string().min(1).optional(),
  /** PEM file of the certificate authorities to trust for this server, instead of the system's. */
  caFile: z.string().min(1).optional(),
  /** PEM client certificate and key, for servers that require mutual TLS. */
  clientCertFile: z.string().min(1).optional(),
  clientKeyFile: z.string().min(1).optional(),
};

const exclusivePassword = (server: { password?: unknown; passwordEnv?: unknown; secretId?: unknown }) =>
  [server.password, server.passwordEnv, server.secretId].filter((value) => value !== undefined).length <= 1;
const passwordMessage = {
  message: 'give at most one of password, passwordEnv and secretId',
  path: ['passwordEnv'],
};

const clientPair = (server: { clientCertFile?: string | undefined; clientKeyFile?: string | undefined }) =>
  (server.clientCertFile === undefined) === (server.clientKeyFile === undefined);
const clientPairMessage = {
  message: 'clientCertFile and clientKeyFile go together',
  path: ['clientKeyFile'],
};

export const sourceSchema = z
  .strictObject({
    /** Stable identifier: it keys the cursor, the ledger and the metrics. */
    id: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'must be 1-64 letters, digits, ".", "_" or "-"'),
    ...serverFields,
  })
  .refine(exclusivePassword, passwordMessage)
  .refine(clientPair, clientPairMessage);

export const destinationSchema = z
  .strictObject({
    /** The DICOMweb root, e.g. https://pacs.example.org/dicom-web. */
    ...serverFields,
    /**
     * The REST root of the destination when it is an Orthanc (e.g. https://pacs.example.org):
     * needed only for the `md5` verification level.
     */
    orthancUrl: httpUrl.transform((url) => url.replace(/\/+$/, '')).optional(),
  })
  .refine(exclusivePassword, passwordMessage)
  .refine(clientPair, clientPairMessage);

const positiveInt = z.number().int().positive();

const awsId = (prefix: string) =>
  z
    .string()
    .regex(new RegExp(`^${prefix}-[0-9a-f]{8,17}$`), `must be an ID like ${prefix}-0123456789abcdef0`);

/** What only the AWS pipeline needs: where its Lambdas run and how they are sized. */
export const awsSchema = z.strictObject({
  stackName: z
    .string()
    .regex(/^[A-Za-z][A-Za-z0-9-]{0,127}$/, 'must be a CloudFormation stack name')
    .default('OrthancForwarder'),
  /** Account and region to deploy to; the CDK CLI's defaults when absent. */
  account: z
    .string()
    .regex(/^\d{12}$/, 'must be a 12-digit AWS account ID')
    .optional(),
  region: z
    .string()
    .regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'must be a region like eu-west-1')
    .optional(),
  /** The VPC that reaches the sources (over the VPN or Direct Connect): given, never looked up. */
  vpc: z.strictObject({
    vpcId: awsId('vpc'),
    availabilityZones: z.array(z.string().min(1)).min(1),
    /** Private subnets for the Lambdas, one per availability zone above. */
    privateSubnetIds: z.array(awsId('subnet')).min(1),
    /** Their route tables, for the DynamoDB gateway endpoint. */
    routeTableIds: z.array(awsId('rtb')).min(1),
    /** Security groups for the Lambdas: they must allow HTTPS out to the sources and the destination. */
    securityGroupIds: z.array(awsId('sg')).min(1),
    /** Interface endpoints for SQS, Secrets Manager and CloudWatch: not needed when the subnets have a NAT. */
    createEndpoints: z.boolean().default(true),
  }),
  /** Minutes between two runs of the poller. */
  pollScheduleMinutes: positiveInt.max(60).default(1),
  poller: z
    .strictObject({
      timeoutSeconds: positiveInt.max(900).default(60),
      memoryMb: positiveInt.min(128).max(10_240).default(256),
    })
    .prefault({}),
  forwarder: z
    .strictObject({
      timeoutSeconds: positiveInt.max(900).default(300),
      memoryMb: positiveInt.min(128).max(10_240).default(1024),
      /** Studies per invocation. */
      batchSize: positiveInt.max(10).default(1),
      /** Invocations at once: bounds the load on the sources and the destination. */
      maxConcurrency: positiveInt.min(2).max(1000).default(4),
    })
    .prefault({}),
  /** Days to keep the Lambdas' logs. */
  logRetentionDays: positiveInt.default(90),
});

export const configSchema = z
  .strictObject({
    sources: z.array(sourceSchema).min(1, 'needs at least one source'),
    destination: destinationSchema,
    /** Which change makes a study ready to move. */
    trigger: z.enum(['StableStudy']).default('StableStudy'),
    /** Seconds between two reads of each source's change feed. */
    pollIntervalSeconds: z.number().positive().max(3600).default(5),
    /**
     * Seconds without a change before a study whose stability Orthanc never announced (it
     * forgets on restart) is moved anyway. Orthanc's own StableAge defaults to 60.
     */
    quietSeconds: z.number().positive().default(60),
    /** Seconds between two full listings of a source's studies, the safety net of the feed. */
    sweepIntervalSeconds: z.number().positive().default(600),
    /** Changes asked for per /changes request. */
    changesPageSize: positiveInt.max(10_000).default(1000),
    /** Studies moved at the same time. */
    concurrency: positiveInt.max(64).default(2),
    stow: z
      .strictObject({
        maxInstances: positiveInt.default(50),
        maxBytes: positiveInt.default(256 * 1024 * 1024),
        /** STOW requests in flight for one study. */
        parallel: positiveInt.max(32).default(4),
      })
      .prefault({}),
    /** How the destination is proven to hold an instance before it is deleted at the source. */
    verify: z.enum(['stow', 'qido', 'md5']).default('qido'),
    /** QIDO page size when listing a study's instances at the destination. */
    qidoPageSize: positiveInt.max(10_000).default(1000),
    retry: z
      .strictObject({
        /** Attempts of one study before it is dead-lettered. */
        maxAttempts: positiveInt.max(100).default(8),
        baseDelayMs: positiveInt.default(2_000),
        maxDelayMs: positiveInt.default(300_000),
      })
      .prefault({}),
    timeouts: z
      .strictObject({
        connectMs: positiveInt.default(10_000),
        /** Until the answer's headers arrive; a STOW of a large batch takes the destination a while. */
        headersMs: positiveInt.default(300_000),
        /** Longest silence while a body streams, in either direction. */
        bodyMs: positiveInt.default(60_000),
      })
      .prefault({}),
    /** false copies instead of moving: forward and record, never delete at the source. */
    deleteAfterForward: z.boolean().default(true),
    /** The AWS pipeline's settings; local mode ignores them. */
    aws: awsSchema.optional(),
  })
  .refine((config) => config.verify !== 'md5' || config.destination.orthancUrl !== undefined, {
    message: "verify 'md5' needs destination.orthancUrl (the destination Orthanc's REST root)",
    path: ['verify'],
  })
  .refine((config) => new Set(config.sources.map((source) => source.id)).size === config.sources.length, {
    message: 'source ids must be unique',
    path: ['sources'],
  });

export type ForwarderConfig = z.output<typeof configSchema>;
export type SourceConfig = ForwarderConfig['sources'][number];
export type DestinationConfig = ForwarderConfig['destination'];
export type ServerConfig = SourceConfig | DestinationConfig;
export type Timeouts = ForwarderConfig['timeouts'];
export type AwsConfig = z.output<typeof awsSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const fieldPath = (path: readonly PropertyKey[]): string =>
  path.reduce<string>(
    (text, key) =>
      typeof key === 'number' ? `${text}[${key}]` : text === '' ? String(key) : `${text}.${String(key)}`,
    '',
  ) || '(root)';

/** Validates raw configuration; the error lists each wrong field by its path. */
export const parseConfig = (raw: unknown, origin = 'configuration'): ForwarderConfig => {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => `  ${fieldPath(issue.path)}: ${issue.message}`);
  throw new ConfigError(`invalid ${origin}:\n${lines.join('\n')}`);
};
