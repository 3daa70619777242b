/**
 * One destination of each kind for the conformance suite, behind one interface: its entry in the
 * configuration, what it lists, and a way to make its credentials expire. `orthanc` is a real
 * Orthanc (basic auth; for expiry, behind an HttpFront that takes OAuth tokens instead, as an
 * auth proxy in front of an Orthanc would); the cloud kinds are the stand-ins of
 * dicomweb-standin.ts, with the token endpoint of token-standin.ts, or SigV4 credentials the
 * forwarder reads through the AWS SDK's default provider chain (a profile whose
 * credential_process prints a file the test rotates).
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import type { DestinationKind } from '../../lambdas/core/destination-kind.ts';
import type { OrthancFleet, OrthancServer } from '../../testbed/orthanc.ts';
import { DicomWebStandIn } from './dicomweb-standin.ts';
import { HttpFront } from './fronts.ts';
import { heldUids } from './invariant.ts';
import type { TestCredentials } from './sigv4-check.ts';
import { TokenStandIn } from './token-standin.ts';

export const REGION = 'eu-west-1';

export interface ArchiveUnderTest {
  readonly kind: DestinationKind;
  /** Its `destination` entry. */
  readonly destination: Record<string, unknown>;
  /** The SOPInstanceUIDs it lists (QIDO-RS would show), sorted, with repeats. */
  listedUids(): Promise<string[]>;
  /** Every credential it took so far stops working; the forwarder must get new ones. */
  expire(): Promise<void>;
  /** Requests it refused for their credentials (401, 403). */
  refusals(): number;
  /**
   * Every secret it knows of, for tests that search the output for them: passwords, client
   * secrets, lines of private keys, tokens issued, assertions received, AWS keys.
   */
  secrets(): string[];
  /** The `limit` of every QIDO-RS listing of a study's instances it was asked. */
  limitsAsked(): number[];
  /** What went wrong in the stand-ins and fronts themselves: none, or the test is void. */
  errors(): unknown[];
  close(): Promise<void>;
}

export interface ArchiveOptions {
  readonly fleet: OrthancFleet;
  readonly workPath: (...parts: string[]) => string;
  /** Google's silent cut of a QIDO-RS page, below its documented 1,000 (the paging scenario). */
  readonly maxResults?: number;
}

const sessionCredentials = (): TestCredentials => ({
  accessKeyId: `ASIA${randomBytes(8).toString('hex').toUpperCase()}`,
  secretAccessKey: randomBytes(20).toString('base64'),
  sessionToken: randomBytes(32).toString('base64'),
});

/**
 * The default chain, pointed at a profile whose credential_process prints `file`: the
 * environment's own keys are taken away for the test (the chain would take them first).
 */
const AWS_ENV = [
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_PROFILE',
  'AWS_CONFIG_FILE',
  'AWS_SHARED_CREDENTIALS_FILE',
];

const useProfile = (workPath: ArchiveOptions['workPath'], file: string): (() => void) => {
  const saved = Object.fromEntries(AWS_ENV.map((name) => [name, process.env[name]]));
  const configFile = workPath('aws-config');
  writeFileSync(configFile, `[profile forwarder]\ncredential_process = cat ${file}\n`);
  for (const name of AWS_ENV) delete process.env[name];
  Object.assign(process.env, {
    AWS_CONFIG_FILE: configFile,
    AWS_SHARED_CREDENTIALS_FILE: workPath('no-credentials'),
    AWS_PROFILE: 'forwarder',
  });
  return () => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
};

const writeProcessCredentials = (file: string, credentials: TestCredentials) =>
  writeFileSync(
    file,
    JSON.stringify({
      Version: 1,
      AccessKeyId: credentials.accessKeyId,
      SecretAccessKey: credentials.secretAccessKey,
      SessionToken: credentials.sessionToken,
    }),
  );

const standInArchive = (
  standIn: DicomWebStandIn,
  tokens: TokenStandIn | undefined,
  parts: Pick<ArchiveUnderTest, 'destination' | 'expire' | 'close' | 'secrets'>,
): ArchiveUnderTest => ({
  kind: standIn.kind,
  errors: () => [...standIn.errors, ...(tokens?.errors ?? [])],
  listedUids: async () =>
    standIn
      .listed()
      .map((copy) => copy.sop)
      .sort(),
  limitsAsked: () => standIn.limitsAsked,
  refusals: () => standIn.statuses.filter((status) => status === 401 || status === 403).length,
  ...parts,
});

const healthImaging = async ({ workPath }: ArchiveOptions): Promise<ArchiveUnderTest> => {
  const file = workPath('aws-credentials.json');
  const first = sessionCredentials();
  writeProcessCredentials(file, first);
  const restore = useProfile(workPath, file);
  const auth = {
    kind: 'sigv4' as const,
    region: REGION,
    accepted: [first],
    expired: [] as TestCredentials[],
  };
  const standIn = await DicomWebStandIn.start('healthimaging', { auth });
  return standInArchive(standIn, undefined, {
    destination: { url: standIn.url, kind: 'healthimaging', auth: { kind: 'aws-sigv4', region: REGION } },
    secrets: () =>
      [...auth.accepted, ...auth.expired].flatMap((credentials) => [
        credentials.secretAccessKey,
        credentials.sessionToken ?? '',
      ]),
    expire: async () => {
      // The session ends; the role's next one has other keys.
      const next = sessionCredentials();
      auth.expired.push(...auth.accepted.splice(0));
      auth.accepted.push(next);
      writeProcessCredentials(file, next);
    },
    close: async () => {
      restore();
      await standIn.close();
    },
  });
};

const tokenArchive = async (kind: 'google' | 'azure', options: ArchiveOptions): Promise<ArchiveUnderTest> => {
  const tokens = await TokenStandIn.start();
  const standIn = await DicomWebStandIn.start(kind, {
    auth: { kind: 'bearer', isValid: (token) => tokens.isValid(token) },
    ...(options.maxResults === undefined ? {} : { maxResults: options.maxResults }),
  });
  const keyFile = options.workPath('google-key.json');
  if (kind === 'google') writeFileSync(keyFile, JSON.stringify(tokens.serviceAccountKey()));
  const auth =
    kind === 'google'
      ? { kind: 'google-service-account', keyFile }
      : {
          kind: 'oauth2-client-credentials',
          tokenUrl: tokens.clientCredentialsUrl,
          clientId: tokens.clientId,
          clientSecret: tokens.clientSecret,
          scope: 'https://dicom.healthcareapis.azure.com/.default',
        };
  return standInArchive(standIn, tokens, {
    destination: { url: standIn.url, kind, auth },
    secrets: () => tokens.secrets(),
    expire: async () => tokens.expireAll(),
    close: async () => {
      await Promise.all([standIn.close(), tokens.close()]);
    },
  });
};

/** The `limit` of a QIDO-RS listing of a study's instances, if the path is one. */
const listingLimit = (path: string): number | undefined => {
  const { pathname, searchParams } = new URL(path, 'http://front');
  return /\/studies\/[^/]+\/instances$/.test(pathname) ? Number(searchParams.get('limit')) : undefined;
};

/**
 * A real Orthanc, behind a front that notes the QIDO-RS limits asked; with `behindTokens` the
 * front takes only valid OAuth tokens, as an auth proxy in front of an Orthanc would.
 */
const orthanc = async (options: ArchiveOptions, behindTokens: boolean): Promise<ArchiveUnderTest> => {
  const server: OrthancServer = await options.fleet.start({
    name: 'destination',
    stableAge: 1,
    // Behind the token front, the front checks the credentials.
    extraConfig: behindTokens ? { AuthenticationEnabled: false } : {},
  });
  const tokens = behindTokens ? await TokenStandIn.start() : undefined;
  const limits: number[] = [];
  let refused = 0;
  const front = await HttpFront.start(server.url, ({ path, authorization }) => {
    const limit = listingLimit(path);
    if (limit !== undefined) limits.push(limit);
    const token = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
    if (tokens === undefined || (token !== undefined && tokens.isValid(token))) return undefined;
    refused++;
    return { answer: { status: 401, headers: { 'content-type': 'text/plain' }, body: 'Unauthorized' } };
  });
  const url = front.urlFor(server.dicomWebUrl);
  return {
    kind: 'orthanc',
    destination:
      tokens === undefined
        ? { url, username: server.username, password: server.password }
        : {
            url,
            auth: {
              kind: 'oauth2-client-credentials',
              tokenUrl: tokens.clientCredentialsUrl,
              clientId: tokens.clientId,
              clientSecret: tokens.clientSecret,
            },
          },
    listedUids: () => heldUids(server),
    limitsAsked: () => limits,
    errors: () => [...front.errors, ...(tokens?.errors ?? [])],
    secrets: () => [server.password, ...(tokens?.secrets() ?? [])],
    expire: async () => {
      if (tokens === undefined) throw new Error('basic auth does not expire: start the archive expiring');
      tokens.expireAll();
    },
    refusals: () => refused,
    close: async () => {
      await Promise.all([front.close(), tokens?.close()]);
    },
  };
};

export const CONFORMANCE_KINDS = ['orthanc', 'healthimaging', 'google', 'azure'] as const;

/** Starts a destination of the kind; `expiring` asks for credentials that can be made to expire. */
export const startArchive = (
  kind: (typeof CONFORMANCE_KINDS)[number],
  options: ArchiveOptions & { readonly expiring?: boolean },
): Promise<ArchiveUnderTest> => {
  if (kind === 'orthanc') return orthanc(options, options.expiring === true);
  if (kind === 'healthimaging') return healthImaging(options);
  return tokenArchive(kind, options);
};
