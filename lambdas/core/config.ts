/**
 * The forwarder's configuration: one schema for local mode and the AWS pipeline. Everything but
 * the sources and the destination has a default, and an error names the field that is wrong.
 */
import { z } from 'zod';
import { authAlone, authAloneMessage, authSchema } from './auth-config.ts';
import {
  destinationKindSchema,
  identityWhereRequired,
  kindAuth,
  kindAuthMessage,
} from './destination-kind.ts';
import { checkTimeZone, WEEKDAYS } from './transfer-window.ts';

/** Credentials in a URL would reach every log, error and AWS template that shows the URL. */
const withoutCredentials = (url: string) => {
  // What is no URL at all is reported as such.
  if (!URL.canParse(url)) return true;
  const { username, password } = new URL(url);
  return username === '' && password === '';
};

const httpUrl = z
  .url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' })
  .refine(
    withoutCredentials,
    'must not carry credentials (user:password@): give username with password, passwordEnv or secretId',
  );

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
  /**
   * On AWS: the customer managed KMS key the secret is encrypted with, if not Secrets Manager's
   * own `aws/secretsmanager` key: the Lambdas get `kms:Decrypt` on it. A key ARN, not an alias:
   * an IAM policy cannot name a key by its alias.
   */
  kmsKeyArn: z
    .string()
    .regex(
      /^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key\/[A-Za-z0-9-]+$/,
      'must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)',
    )
    .optional(),
  /**
   * On AWS: a Secrets Manager secret holding `{"ca": "<PEM>"}`, the certificate authorities to
   * trust for this server instead of the system's (a hospital's internal CA); as `caFile` locally.
   */
  caSecretId: z.string().min(1).optional(),
  /** On AWS: a secret holding `{"cert": "<PEM>", "key": "<PEM>"}`, for mutual TLS; as the two files locally. */
  clientCertSecretId: z.string().min(1).optional(),
  /** PEM file of the certificate authorities to trust for this server, instead of the system's. */
  caFile: z.string().min(1).optional(),
  /** PEM client certificate and key, for servers that require mutual TLS. */
  clientCertFile: z.string().min(1).optional(),
  clientKeyFile: z.string().min(1).optional(),
  /**
   * Accepts http:// for this server on AWS, and silences local mode's warning about basic auth
   * sent over http:// beyond this machine: the password then crosses the network readable.
   */
  allowInsecureHttp: z.boolean().optional(),
};

const exclusivePassword = (server: { password?: unknown; passwordEnv?: unknown; secretId?: unknown }) =>
  [server.password, server.passwordEnv, server.secretId].filter((value) => value !== undefined).length <= 1;
const passwordMessage = {
  message: 'give at most one of password, passwordEnv and secretId',
  path: ['passwordEnv'],
};

/** A username alone would send an empty password: a configuration mistake, not a choice. */
const usernameWithPassword = (server: {
  username?: unknown;
  password?: unknown;
  passwordEnv?: unknown;
  secretId?: unknown;
}) =>
  server.username === undefined ||
  [server.password, server.passwordEnv, server.secretId].some((value) => value !== undefined);
const usernameMessage = {
  message: 'username needs password, passwordEnv or secretId',
  path: ['username'],
};

const clientPair = (server: { clientCertFile?: string | undefined; clientKeyFile?: string | undefined }) =>
  (server.clientCertFile === undefined) === (server.clientKeyFile === undefined);
const clientPairMessage = {
  message: 'clientCertFile and clientKeyFile go together',
  path: ['clientKeyFile'],
};

/** The id of a source or destination: it appears in state keys, logs and metrics. */
const stableId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'must be 1-64 letters, digits, ".", "_" or "-"');

const isTimeZone = (timeZone: string) => {
  try {
    checkTimeZone(timeZone);
    return true;
  } catch {
    return false;
  }
};

/**
 * When moves may run (transfer-window.ts): weekly windows of local time in an IANA time zone. No
 * windows (`[]`) is always open, which is how a source opts out of the top-level schedule.
 */
const scheduleSchema = z.strictObject({
  timeZone: z.string().refine(isTimeZone, 'must be an IANA time zone, e.g. Europe/Berlin'),
  windows: z.array(
    z.strictObject({
      days: z.array(z.enum(WEEKDAYS)).min(1),
      from: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'must be a time HH:MM, 00:00 to 23:59'),
      /** At or before `from`: the window ends on the next day. */
      to: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'must be a time HH:MM, 00:00 to 23:59'),
    }),
  ),
  /** Studies received at the source in the last liveHours move outside the windows too. */
  liveHours: z.number().positive().max(8760).optional(),
});

/**
 * How old a study must be before it leaves its source: by when the source received it (Orthanc's
 * LastUpdate) or by its StudyDate. `hours: 0` is no minimum.
 */
const minimumAgeSchema = z.strictObject({
  hours: z.number().nonnegative().max(87_600),
  by: z.enum(['received', 'studyDate']).default('received'),
});

/** MB (10^6 bytes) per second read from a source's instance files, by the moves of one process. */
const readRateSchema = z.number().positive().max(100_000);

export const sourceSchema = z
  .strictObject({
    /** Stable identifier: it keys the cursor, the ledger and the metrics. */
    id: stableId,
    ...serverFields,
    /**
     * At most this many studies of this source moved at once, by every worker together (local
     * workers, Lambda invocations): one slow site cannot take every slot. Unlimited when absent.
     */
    maxConcurrentMoves: z.number().int().positive().max(1000).optional(),
    /** This source's transfer windows, instead of the top-level `schedule`. */
    schedule: scheduleSchema.optional(),
    /** This source's minimum age, instead of the top-level `minimumAge`. */
    minimumAge: minimumAgeSchema.optional(),
    /** This source's read rate cap, instead of the top-level `maxReadMBps`. */
    maxReadMBps: readRateSchema.optional(),
    /**
     * Read-ahead requests a STOW request's own connection to the source carries before their
     * answers are back (HTTP/1.1 pipelining); 16 when absent. 1 for a proxy in front of the
     * source that mishandles pipelining.
     */
    pipelining: z.number().int().positive().max(64).optional(),
  })
  .refine(exclusivePassword, passwordMessage)
  .refine(usernameWithPassword, usernameMessage)
  .refine(clientPair, clientPairMessage);

const orthancRestUrl = httpUrl.transform((url) => url.replace(/\/+$/, ''));

/** A DICOMweb server studies go to: its DICOMweb root, credentials and TLS, its Orthanc REST root. */
const dicomWebServerFields = {
  /** The DICOMweb root, e.g. https://pacs.example.org/dicom-web. */
  ...serverFields,
  /**
   * The REST root of the destination when it is an Orthanc (e.g. https://pacs.example.org):
   * needed only for the `md5` verification level.
   */
  orthancUrl: orthancRestUrl.optional(),
  /**
   * For `transfer: 'push'`: the name under which the source Orthancs declare this server in their
   * own `DicomWeb.Servers`. Every source must declare it under this name.
   */
  pushServerName: z.string().min(1).optional(),
  /** What archive it is: its limits and answers (destination-kind.ts). */
  kind: destinationKindSchema,
  /** How to authenticate, where it is not basic auth (auth-config.ts). */
  auth: authSchema.optional(),
};

/**
 * The verification ladder, weakest first: `stow` trusts the STOW-RS answer; `qido` sees the
 * SOPInstanceUID listed; `identity` (the default) sees it listed with the source's identifying
 * attributes; `checksum` sees the same bytes (`md5` is its older name).
 */
export const VERIFY_LEVELS = ['stow', 'qido', 'identity', 'checksum'] as const;
export type VerifyLevel = (typeof VERIFY_LEVELS)[number];

const verifyLevelSchema = z
  .enum([...VERIFY_LEVELS, 'md5'])
  .transform((level): VerifyLevel => (level === 'md5' ? 'checksum' : level));

const checkRegex = (pattern: string) => {
  try {
    new RegExp(pattern, 'i');
    return true;
  } catch {
    return false;
  }
};

/**
 * Which studies a destination takes. Every criterion given must match; within one, any value
 * does. The values are read for routing only and never logged.
 */
export const studyFilterSchema = z.strictObject({
  /** A case-insensitive substring of the StudyDescription, or `{ "regex": … }` (case-insensitive). */
  studyDescription: z
    .union([
      z.string().min(1),
      z.strictObject({ regex: z.string().min(1).refine(checkRegex, 'must be a valid regular expression') }),
    ])
    .optional(),
  /** Modalities, any of which the study holds (its series' Modality; the series' own for a series item). */
  modalities: z.array(z.string().min(1)).min(1).optional(),
  /** Calling AETs that sent the study to the source (Orthanc's RemoteAET metadata), any of them. */
  remoteAets: z.array(z.string().min(1)).min(1).optional(),
});

/** Used instead of the destination while it has been unreachable for longer than afterSeconds. */
export const alternateSchema = z
  .strictObject({
    ...dicomWebServerFields,
    /** How long the destination must have been unreachable (network errors, 5xx) first. */
    afterSeconds: z.number().nonnegative(),
  })
  .refine(exclusivePassword, passwordMessage)
  .refine(usernameWithPassword, usernameMessage)
  .refine(clientPair, clientPairMessage)
  .refine(authAlone, authAloneMessage)
  .refine(kindAuth, kindAuthMessage);

const destinationFields = {
  ...dicomWebServerFields,
  /**
   * `relay`: the forwarder reads each instance from the source and sends it with STOW-RS.
   * `push`: the source Orthanc sends it itself (`POST /dicom-web/servers/{pushServerName}/stow`).
   */
  transfer: z.enum(['relay', 'push']).default('relay'),
  /** This destination's verification level, instead of the top-level `verify`. */
  verify: verifyLevelSchema.optional(),
  /** Only the studies this accepts go to this destination; every study without a filter. */
  filter: studyFilterSchema.optional(),
  alternate: alternateSchema.optional(),
};

interface PushFields {
  readonly transfer: 'relay' | 'push';
  readonly pushServerName?: string | undefined;
  readonly alternate?: { readonly pushServerName?: string | undefined } | undefined;
}
const pushNamed = (destination: PushFields) =>
  destination.transfer !== 'push' || destination.pushServerName !== undefined;
const pushNamedMessage = {
  message:
    "transfer 'push' needs pushServerName: the destination's name in the source Orthancs' DicomWeb.Servers",
  path: ['pushServerName'],
};
const alternatePushNamed = (destination: PushFields) =>
  destination.transfer !== 'push' ||
  destination.alternate === undefined ||
  destination.alternate.pushServerName !== undefined;
const alternatePushNamedMessage = {
  message: "transfer 'push' needs the alternate's pushServerName too",
  path: ['alternate', 'pushServerName'],
};

type DestinationChecked = PushFields &
  Parameters<typeof exclusivePassword>[0] &
  Parameters<typeof clientPair>[0] &
  Parameters<typeof kindAuth>[0];
const withDestinationChecks = <T extends z.ZodType<DestinationChecked>>(schema: T): T =>
  schema
    .refine(exclusivePassword, passwordMessage)
    .refine(usernameWithPassword, usernameMessage)
    .refine(clientPair, clientPairMessage)
    .refine(pushNamed, pushNamedMessage)
    .refine(alternatePushNamed, alternatePushNamedMessage)
    .refine(authAlone, authAloneMessage)
    .refine(kindAuth, kindAuthMessage);

/** One of `destinations`. */
export const destinationSchema = withDestinationChecks(
  z.strictObject({
    /** Stable identifier: it names the destination in refusals, logs and metrics. */
    id: stableId,
    ...destinationFields,
  }),
);

/** The single `destination` of the short form: the same, its id 'destination' unless given. */
const singleDestinationSchema = withDestinationChecks(
  z.strictObject({ id: stableId.default('destination'), ...destinationFields }),
);

const positiveInt = z.number().int().positive();

const awsId = (prefix: string) =>
  z
    .string()
    .regex(new RegExp(`^${prefix}-[0-9a-f]{8,17}$`), `must be an ID like ${prefix}-0123456789abcdef0`);

/** The VPC endpoints the stack can create, by the service name's last part (com.amazonaws.<region>.<name>). */
export const VPC_ENDPOINTS = ['dynamodb', 'sqs', 'secretsmanager', 'logs', 'monitoring'] as const;
/** What the Lambdas call from subnets without a NAT. */
const NEEDED_ENDPOINTS: (typeof VPC_ENDPOINTS)[number][] = ['dynamodb', 'sqs', 'secretsmanager'];

/** What only the AWS pipeline needs: where its Lambdas run and how they are sized. */
export const awsSchema = z
  .strictObject({
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
      /**
       * The VPC endpoints the stack creates: `true` for what the Lambdas call (the DynamoDB
       * gateway, SQS and Secrets Manager), `false` for none (the subnets have a NAT), or a list
       * (the VPC already has some). `logs` and `monitoring` are never needed by the Lambdas:
       * Lambda itself delivers their logs and the EMF metrics in them.
       */
      createEndpoints: z
        .union([z.boolean(), z.array(z.enum(VPC_ENDPOINTS)).min(1)])
        .default(true)
        .transform((endpoints) =>
          endpoints === true ? NEEDED_ENDPOINTS : endpoints === false ? [] : [...new Set(endpoints)],
        ),
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
        /** Invocations at once for the backlog queue (studies found by the sweep or the first read), besides. */
        backlogMaxConcurrency: positiveInt.min(2).max(1000).default(2),
      })
      .prefault({}),
    /** Days to keep the Lambdas' logs. */
    logRetentionDays: positiveInt.default(90),
    /**
     * Seconds a secret read is kept before a request reads it again (Powertools Parameters'
     * maxAge); a server that refuses the credentials has its secret read at once anyway.
     */
    secretsMaxAgeSeconds: positiveInt.max(86_400).default(300),
    /**
     * The Lambdas' application log level (their logging configuration). Not WARN or ERROR: Lambda
     * takes a log line without a level, such as an EMF metrics record, for INFO, and would drop
     * every metric the alarms need.
     */
    logLevel: z.enum(['DEBUG', 'INFO']).default('INFO'),
    /** X-Ray active tracing of both Lambdas. */
    tracing: z.boolean().default(false),
    /** Tags on the stack and every resource in it that takes tags. */
    tags: z
      .record(
        z.string(),
        z
          .string()
          .regex(
            /^[\p{L}\p{Z}\p{N}_.:/=+@-]{0,256}$/u,
            'must be a tag value: up to 256 letters, digits, spaces or _.:/=+-@',
          ),
      )
      .superRefine((tags, ctx) => {
        const keys = Object.keys(tags);
        if (keys.length > 50) ctx.addIssue({ code: 'custom', message: 'at most 50 tags' });
        for (const key of keys.filter((key) => !/^(?!aws:)[\p{L}\p{Z}\p{N}_.:/=+@-]{1,128}$/u.test(key))) {
          ctx.addIssue({
            code: 'custom',
            path: [key],
            message: 'must be a tag key: 1-128 letters, digits, spaces or _.:/=+-@, not starting with aws:',
          });
        }
      })
      .default({}),
    /** The stack's alarms (docs/operations.md): where they are sent, and their thresholds. */
    alarms: z
      .strictObject({
        /** Subscribed to the alarm topic (SNS asks the address to confirm); none: subscribe yourself. */
        email: z.email('must be an email address').optional(),
        /** The oldest work item on the queue is older than this. */
        oldestMessageAgeMinutes: positiveInt.max(20_160).default(60),
        /** No poller invocation succeeded for this long. */
        noPollMinutes: positiveInt.max(1440).default(10),
        /** Every poll of a source failed for this long. */
        sourceUnreachableMinutes: positiveInt.max(1440).default(15),
        /** Failed attempts (retried, dead-lettered, or the function failed) per 100 attempts, 15 minutes on end. */
        forwarderErrorRatePercent: z.number().positive().max(100).default(10),
      })
      .prefault({}),
  })
  .superRefine((aws, ctx) => {
    // A window shorter than two polls would alarm on one late or failed poll.
    for (const key of ['noPollMinutes', 'sourceUnreachableMinutes'] as const) {
      if (aws.alarms[key] < 2 * aws.pollScheduleMinutes) {
        ctx.addIssue({
          code: 'custom',
          path: ['alarms', key],
          message: `must be at least twice pollScheduleMinutes (${2 * aws.pollScheduleMinutes})`,
        });
      }
    }
  });

const configObject = z.strictObject({
  sources: z.array(sourceSchema).min(1, 'needs at least one source'),
  /** The short form of `destinations` with one element. Give exactly one of the two. */
  destination: singleDestinationSchema.optional(),
  /** A study leaves its source once every destination whose filter accepts it holds it. */
  destinations: z.array(destinationSchema).min(1, 'needs at least one destination').optional(),
  /**
   * Which change makes work: a stable study (moved whole), a stable series (moved series by
   * series), or a new instance (its study moved at once, what arrives later in later rounds).
   */
  trigger: z.enum(['StableStudy', 'StableSeries', 'NewInstance']).default('StableStudy'),
  /** A study no destination's filter accepts stays at the source (`keep`) or is deleted there. */
  unrouted: z.enum(['keep', 'delete']).default('keep'),
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
  concurrency: positiveInt.max(64).default(4),
  /** When every source's moves may run, unless it has its own; always when absent. */
  schedule: scheduleSchema.optional(),
  /** How old every source's studies must be before they move, unless it has its own. */
  minimumAge: minimumAgeSchema.optional(),
  /** Every source's read rate cap, unless it has its own; none when absent. */
  maxReadMBps: readRateSchema.optional(),
  stow: z
    .strictObject({
      maxInstances: positiveInt.default(50),
      maxBytes: positiveInt.default(256 * 1024 * 1024),
      /** STOW requests (or push jobs) in flight for one study. */
      parallel: positiveInt.max(32).default(4),
      /**
       * Instance files asked for at the source ahead of the one being sent, per request, where
       * the source is slow to answer (read-ahead.ts): across a link, a file then costs its bytes
       * rather than a round trip. 0 asks for each in its turn.
       */
      readAheadInstances: z.number().int().min(0).max(256).default(32),
      /** Bytes those may come to, per request; a larger file is asked for in its turn. */
      readAheadBytes: positiveInt.max(256 * 1024 * 1024).default(4 * 1024 * 1024),
    })
    .prefault({}),
  /**
   * How every destination (unless it sets its own) is proven to hold the same instance before the
   * source's copy is deleted: the verification ladder of docs/architecture.md.
   */
  verify: verifyLevelSchema.default('identity'),
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
  retention: z
    .strictObject({
      /** Days a study outcome is kept in the ledger (the totals keep what it counted). */
      outcomeDays: positiveInt.max(3650).default(90),
      /**
       * Days a refusal is kept at least. Older ones are forgotten only once their instance is
       * gone from its source: a refusal forgotten while the instance is still there would have
       * it sent and refused again.
       */
      refusalDays: positiveInt.max(3650).default(90),
      /**
       * Days the audit trail of deletions is kept (`audit export`): six years by default, the
       * retention HIPAA asks of the documentation of safeguards.
       */
      auditDays: positiveInt.max(3650).default(2190),
    })
    .prefault({}),
  /** The AWS pipeline's settings; local mode ignores them. */
  aws: awsSchema.optional(),
});

export const configSchema = configObject
  .refine((config) => (config.destination === undefined) !== (config.destinations === undefined), {
    message: 'give exactly one of destination and destinations',
    path: ['destinations'],
  })
  .refine((config) => new Set(config.sources.map((source) => source.id)).size === config.sources.length, {
    message: 'source ids must be unique',
    path: ['sources'],
  })
  .refine(
    (config) =>
      config.destinations === undefined ||
      new Set(config.destinations.map((destination) => destination.id)).size === config.destinations.length,
    { message: 'destination ids must be unique', path: ['destinations'] },
  )
  .refine((config) => config.unrouted !== 'delete' || config.deleteAfterForward, {
    message: "'delete' contradicts deleteAfterForward false: copy mode never deletes at the source",
    path: ['unrouted'],
  })
  .superRefine(identityWhereRequired)
  // The core sees one list: the short form becomes a list of one, and parsing the result again
  // gives the same result (the AWS pipeline hands the parsed configuration to its Lambdas).
  .transform(({ destination, destinations, ...rest }) => ({
    ...rest,
    destinations: destinations ?? (destination === undefined ? [] : [destination]),
  }));

export type ForwarderConfig = z.output<typeof configSchema>;
export type SourceConfig = ForwarderConfig['sources'][number];
export type DestinationConfig = ForwarderConfig['destinations'][number];
export type AlternateConfig = NonNullable<DestinationConfig['alternate']>;
export type StudyFilter = NonNullable<DestinationConfig['filter']>;
/** What every server we talk to has: its URL, credentials and TLS settings. */
export type ServerConfig = Pick<SourceConfig, Exclude<keyof SourceConfig, 'id'>>;
export type Timeouts = ForwarderConfig['timeouts'];
export type AwsConfig = z.output<typeof awsSchema>;

/**
 * Where a destination is in the file, for errors: `destination` when the short form was used
 * (it is the one destination, with its default id), `destinations[i]` otherwise.
 */
export const destinationField = (config: Pick<ForwarderConfig, 'destinations'>, index: number): string =>
  config.destinations.length === 1 && config.destinations[0]?.id === 'destination'
    ? 'destination'
    : `destinations[${index}]`;

/** Every server studies go to, destinations and alternates, with where each is in the file. */
export const destinationServers = (
  config: Pick<ForwarderConfig, 'destinations'>,
): { field: string; server: DestinationConfig | AlternateConfig }[] =>
  config.destinations.flatMap((destination, index) => {
    const field = destinationField(config, index);
    return [
      { field, server: destination },
      ...(destination.alternate === undefined
        ? []
        : [{ field: `${field}.alternate`, server: destination.alternate }]),
    ];
  });

/** Every server of the configuration (sources, destinations, alternates), with where it is in the file. */
export const configuredServers = (
  config: Pick<ForwarderConfig, 'sources' | 'destinations'>,
): { field: string; server: SourceConfig | DestinationConfig | AlternateConfig }[] => [
  ...config.sources.map((server, index) => ({ field: `sources[${index}]`, server })),
  ...destinationServers(config),
];

/** The plain http:// URLs of servers that do not set allowInsecureHttp, each named by its field. */
export const plainHttpUrls = (
  config: Pick<ForwarderConfig, 'sources' | 'destinations'>,
): { field: string; url: string; server: ServerConfig }[] =>
  configuredServers(config).flatMap(({ field, server }) => {
    if (server.allowInsecureHttp === true) return [];
    const urls = {
      url: server.url,
      orthancUrl: 'orthancUrl' in server ? server.orthancUrl : undefined,
      'auth.tokenUrl':
        'auth' in server && server.auth?.kind === 'oauth2-client-credentials'
          ? server.auth.tokenUrl
          : undefined,
    };
    return Object.entries(urls).flatMap(([key, url]) =>
      url?.startsWith('http:') ? [{ field: `${field}.${key}`, url, server }] : [],
    );
  });

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
