/**
 * What authorizes the requests to a DICOMweb server whose `auth` is set: a static bearer token,
 * tokens from an OAuth 2.0 client or a Google service account, or a SigV4 signature per request.
 * Secrets come the mode's way (local: inline, an environment variable or a key file; AWS: a
 * secret store) and a field of the other mode is refused, naming it. The SigV4 signer, which
 * needs the AWS SDK, is imported only when a request is first signed: local mode without such
 * a destination never loads it.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import {
  bearerTokens,
  clientCredentialsIssuer,
  type ServiceAccountKey,
  serviceAccountIssuer,
  serviceAccountKeySchema,
  type TokenEndpoint,
} from './access-tokens.ts';
import type { AuthConfig } from './auth-config.ts';
import { cachedUntilRejected } from './concurrency.ts';
import { ConfigError } from './config.ts';
import {
  type Authorization,
  parsed,
  type RequestSigner,
  rereadable,
  type SecretReader,
} from './credentials.ts';

export interface AuthorizerOptions {
  readonly env: NodeJS.ProcessEnv;
  /** The AWS pipeline's secret store: where `auth.secretId` is read. */
  readonly secrets?: SecretReader | undefined;
  /** Where token requests go. */
  readonly tokenEndpoint: TokenEndpoint;
}

type SecretAuth = Exclude<AuthConfig, { kind: 'aws-sigv4' }>;

const field = <K extends string>(key: K) => ({
  schema: z.object({ [key]: z.string().min(1) }).transform((secret) => secret[key] as string),
  shape: `{"${key}": …}`,
});

/** What each kind's secret holds on AWS, and what local mode gives instead. */
const SECRETS = {
  bearer: { ...field('token'), instead: 'token or tokenEnv' },
  'oauth2-client-credentials': { ...field('clientSecret'), instead: 'clientSecret or clientSecretEnv' },
  'google-service-account': {
    schema: serviceAccountKeySchema,
    shape: 'of a Google service account key (type, client_email, private_key, token_uri)',
    instead: 'keyFile',
  },
} as const;

type SecretOf<A extends SecretAuth> = z.output<(typeof SECRETS)[A['kind']]['schema']>;

/**
 * The secret an `auth` names in the secret store, read past any cache when `fresh` (after a
 * refusal: a rotation). Local mode has no secret store: the error says what to give instead.
 */
const storedSecret = <A extends SecretAuth>(
  auth: A & { readonly secretId: string },
  read: SecretReader | undefined,
): ((fresh: boolean) => Promise<SecretOf<A>>) => {
  const { schema, shape, instead } = SECRETS[auth.kind];
  if (read === undefined) {
    throw new ConfigError(`auth.secretId: Secrets Manager is read only on AWS; give ${instead} here`);
  }
  return async (fresh) =>
    parsed(
      schema as unknown as z.ZodType<SecretOf<A>>,
      await read(auth.secretId, { fresh }),
      'auth.secretId',
      shape,
    );
};

/** Reads the secret of an `auth` once, at set-up: a missing or malformed one is a setting to fix. */
export const checkAuthSecret = async (auth: AuthConfig, read: SecretReader): Promise<void> => {
  if (auth.kind === 'aws-sigv4' || auth.secretId === undefined) return;
  await storedSecret({ ...auth, secretId: auth.secretId }, read)(false);
};

/** A secret given locally: the named environment variable's value, or the inline one. */
const localSecret = (
  envField: string,
  envName: string | undefined,
  inline: string | undefined,
  env: NodeJS.ProcessEnv,
) => {
  if (envName === undefined) return inline ?? '';
  const value = env[envName];
  if (value === undefined)
    throw new ConfigError(`auth.${envField}: environment variable ${envName} is not set`);
  return value;
};

const constant =
  <T>(value: T) =>
  async (): Promise<T> =>
    value;

const readKeyFile = (path: string): ServiceAccountKey => {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(
      `auth.keyFile: cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? error})`,
    );
  }
  const key = serviceAccountKeySchema.safeParse(
    (() => {
      try {
        return JSON.parse(text);
      } catch {
        return undefined;
      }
    })(),
  );
  // Never the parser's message: it could quote the key.
  if (!key.success) {
    throw new ConfigError(
      `auth.keyFile: ${path} is not a Google service account key (JSON with type service_account, client_email, private_key, token_uri)`,
    );
  }
  return key.data;
};

/** Where a HealthImaging URL says the data store is: https://dicom-medical-imaging.{region}.amazonaws.com/… */
const HEALTHIMAGING_HOST = /^dicom-medical-imaging\.([a-z0-9-]+)\.amazonaws\.com$/;

const regionOf = (auth: Extract<AuthConfig, { kind: 'aws-sigv4' }>, url: string, env: NodeJS.ProcessEnv) => {
  const region = auth.region ?? HEALTHIMAGING_HOST.exec(new URL(url).hostname)?.[1] ?? env.AWS_REGION;
  if (region === undefined) {
    throw new ConfigError(
      'auth.region: give the region to sign for (the URL names none, and AWS_REGION is not set)',
    );
  }
  return region;
};

/** A signer loaded on its first use, and loaded again if that failed. */
const lazySigner = (region: string, service: string): RequestSigner => {
  const load = cachedUntilRejected(async () =>
    (await import('../aws/sigv4-signer.ts')).sigV4Signer({ region, service }),
  );
  return {
    streamedBodyLength: 'required',
    sign: async (request) => (await load()).sign(request),
    refresh: async () => (await load()).refresh(),
  };
};

export const authorizationFor = (
  auth: AuthConfig,
  url: string,
  options: AuthorizerOptions,
): Authorization => {
  const { env, secrets, tokenEndpoint } = options;
  switch (auth.kind) {
    case 'aws-sigv4':
      return lazySigner(regionOf(auth, url, env), auth.service);
    case 'bearer': {
      if (auth.secretId === undefined)
        return `Bearer ${localSecret('tokenEnv', auth.tokenEnv, auth.token, env)}`;
      const token = storedSecret({ ...auth, secretId: auth.secretId }, secrets);
      return rereadable(async (fresh) => `Bearer ${await token(fresh)}`);
    }
    case 'oauth2-client-credentials': {
      const secret =
        auth.secretId === undefined
          ? constant(localSecret('clientSecretEnv', auth.clientSecretEnv, auth.clientSecret, env))
          : storedSecret({ ...auth, secretId: auth.secretId }, secrets);
      return bearerTokens(clientCredentialsIssuer(auth, secret, tokenEndpoint));
    }
    case 'google-service-account': {
      const key =
        auth.secretId === undefined
          ? constant(readKeyFile(auth.keyFile ?? ''))
          : storedSecret({ ...auth, secretId: auth.secretId }, secrets);
      return bearerTokens(serviceAccountIssuer(auth.scope, key, tokenEndpoint));
    }
  }
};
