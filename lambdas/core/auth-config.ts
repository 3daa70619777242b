/**
 * The `auth` setting of a DICOMweb server: how the forwarder proves who it is to a destination
 * that does not take basic auth. Secrets follow the modes' rule for passwords: inline or from an
 * environment variable (or a key file) in local mode, from a Secrets Manager secret (`secretId`)
 * on AWS; each mode refuses the other's fields, naming them.
 */
import { z } from 'zod';

/**
 * On AWS: the Secrets Manager secret holding the secret part, as JSON: `{"clientSecret"}`,
 * `{"token"}`, or a Google service account key as Google issues it.
 */
const secretId = z.string().min(1).optional();

const exactlyOne =
  (keys: readonly string[]) =>
  (auth: Readonly<Record<string, unknown>>): boolean =>
    keys.filter((key) => auth[key] !== undefined).length === 1;

const oneOf = (keys: readonly string[]) => ({
  message: `give exactly one of ${keys.slice(0, -1).join(', ')} and ${keys.at(-1)}`,
  path: [keys[0] as string],
});

/** SigV4 with the default provider chain: the Lambda's role on AWS, the environment or a profile locally. */
const awsSigV4 = z.strictObject({
  kind: z.literal('aws-sigv4'),
  /** The region signed for; by default the one a HealthImaging URL names, else AWS_REGION. */
  region: z
    .string()
    .regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'must be a region like eu-west-1')
    .optional(),
  /** The service signed for: HealthImaging's unless said otherwise. */
  service: z
    .string()
    .regex(/^[a-z0-9-]+$/, 'must be a service name like medical-imaging')
    .default('medical-imaging'),
});

const CLIENT_SECRETS = ['clientSecret', 'clientSecretEnv', 'secretId'];
/** OAuth 2.0 client credentials (RFC 6749 4.4): Azure's Entra ID, or any authorization server. */
const oauth2ClientCredentials = z
  .strictObject({
    kind: z.literal('oauth2-client-credentials'),
    tokenUrl: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }),
    clientId: z.string().min(1),
    /** Inline: convenient for a test, not for production. */
    clientSecret: z.string().min(1).optional(),
    /** Name of an environment variable holding the client secret. */
    clientSecretEnv: z.string().min(1).optional(),
    secretId,
    /** E.g. Azure DICOM's `https://dicom.healthcareapis.azure.com/.default`. */
    scope: z.string().min(1).optional(),
  })
  .refine(exactlyOne(CLIENT_SECRETS), oneOf(CLIENT_SECRETS));

const SERVICE_ACCOUNT_KEYS = ['keyFile', 'secretId'];
/** A Google service account key, exchanged for access tokens (RFC 7523's JWT bearer grant). */
const googleServiceAccount = z
  .strictObject({
    kind: z.literal('google-service-account'),
    /** The key file as Google issues it (JSON with client_email, private_key, token_uri). */
    keyFile: z.string().min(1).optional(),
    secretId,
    scope: z.string().min(1).default('https://www.googleapis.com/auth/cloud-healthcare'),
  })
  .refine(exactlyOne(SERVICE_ACCOUNT_KEYS), oneOf(SERVICE_ACCOUNT_KEYS));

const TOKENS = ['token', 'tokenEnv', 'secretId'];
/** A token issued elsewhere, sent as it is (`Authorization: Bearer …`). */
const bearer = z
  .strictObject({
    kind: z.literal('bearer'),
    token: z.string().min(1).optional(),
    tokenEnv: z.string().min(1).optional(),
    secretId,
  })
  .refine(exactlyOne(TOKENS), oneOf(TOKENS));

export const authSchema = z.discriminatedUnion('kind', [
  awsSigV4,
  oauth2ClientCredentials,
  googleServiceAccount,
  bearer,
]);

export type AuthConfig = z.output<typeof authSchema>;

/** The fields of each kind that hold a secret in local mode: AWS refuses them (secretId instead). */
export const LOCAL_SECRET_FIELDS = [
  'clientSecret',
  'clientSecretEnv',
  'keyFile',
  'token',
  'tokenEnv',
] as const;

/** The field that gives the secret part of an `auth`, for errors and faults: `auth.secretId`, … */
export const authSecretField = (auth: AuthConfig): string => {
  const given = [...LOCAL_SECRET_FIELDS, 'secretId'].find(
    (key) => (auth as Readonly<Record<string, unknown>>)[key] !== undefined,
  );
  return given === undefined ? 'auth' : `auth.${given}`;
};

/** `auth` replaces basic auth: both would leave which one is sent to chance. */
export const authAlone = (server: {
  readonly auth?: unknown;
  readonly username?: unknown;
  readonly password?: unknown;
  readonly passwordEnv?: unknown;
  readonly secretId?: unknown;
}): boolean =>
  server.auth === undefined ||
  [server.username, server.password, server.passwordEnv, server.secretId].every(
    (value) => value === undefined,
  );
export const authAloneMessage = {
  message: 'give either auth or basic auth (username with password, passwordEnv or secretId), not both',
  path: ['auth'],
};
