/**
 * Bearer tokens a destination takes instead of basic auth: issued by an OAuth 2.0 token endpoint
 * for a client's credentials (RFC 6749 4.4; Azure's Entra ID), or for a Google service account's
 * signed assertion (RFC 7523), and kept until shortly before they expire. A refused token is
 * replaced at once. No library: each grant is one form POST, and node:crypto signs the assertion.
 */
import { createSign } from 'node:crypto';
import { z } from 'zod';
import type { CredentialSource } from './credentials.ts';

/** An access token and when it stops being good (epoch ms). */
export interface IssuedToken {
  readonly token: string;
  readonly expiresAt: number;
}

/** POSTs a form to a token endpoint and reads its JSON answer; failures come out classified. */
export type TokenEndpoint = (url: string, form: URLSearchParams) => Promise<unknown>;

/** A token is replaced this long before it expires, or halfway through a shorter life. */
export const RENEW_BEFORE_MS = 60_000;

const tokenAnswer = z.object({
  access_token: z.string().min(1),
  // RFC 6749 says a number; some servers send it as a string.
  expires_in: z.coerce.number().positive().optional(),
});

/** Without `expires_in` a token is taken for an hour: a refusal replaces it sooner if need be. */
const DEFAULT_LIFETIME_S = 3600;

/** Reads a token endpoint's answer; what is wrong with it is said without repeating any of it. */
export const issuedToken = (answer: unknown, url: string, now: number): IssuedToken => {
  const parsed = tokenAnswer.safeParse(answer);
  if (!parsed.success)
    throw new Error(`the token endpoint ${new URL(url).origin} answered without an access_token`);
  const lifetimeMs = (parsed.data.expires_in ?? DEFAULT_LIFETIME_S) * 1000;
  return { token: parsed.data.access_token, expiresAt: now + lifetimeMs };
};

/** When a token issued at `issuedAt` is renewed: RENEW_BEFORE_MS before it expires, or halfway. */
const renewAt = (issuedAt: number, token: IssuedToken): number =>
  Math.max(issuedAt + (token.expiresAt - issuedAt) / 2, token.expiresAt - RENEW_BEFORE_MS);

/**
 * `Authorization: Bearer` from an issuer: one token at a time, shared by concurrent requests,
 * renewed before it expires; `refresh` (after a 401 or 403) asks for a new one, its secret read
 * past any cache, and says whether it differs.
 */
export const bearerTokens = (
  issue: (fresh: boolean) => Promise<IssuedToken>,
  now: () => number = Date.now,
): CredentialSource => {
  let current: { readonly token: Promise<IssuedToken>; issuedAt: number; renewAt: number } | undefined;
  const start = (fresh: boolean) => {
    const issuedAt = now();
    const token = issue(fresh);
    const entry = { token, issuedAt, renewAt: Number.POSITIVE_INFINITY };
    current = entry;
    token.then(
      (issued) => {
        entry.renewAt = renewAt(issuedAt, issued);
      },
      () => {
        if (current === entry) current = undefined;
      },
    );
    return token;
  };
  return {
    header: async () => {
      const token = current === undefined || now() >= current.renewAt ? start(false) : current.token;
      return `Bearer ${(await token).token}`;
    },
    refresh: async () => {
      const before = await current?.token.catch(() => undefined);
      return (await start(true)).token !== before?.token;
    },
  };
};

/** A client's credentials for an access token (client_secret_post, as Entra ID documents it). */
export const clientCredentialsIssuer =
  (
    settings: { readonly tokenUrl: string; readonly clientId: string; readonly scope?: string | undefined },
    clientSecret: (fresh: boolean) => Promise<string>,
    post: TokenEndpoint,
    now: () => number = Date.now,
  ) =>
  async (fresh: boolean): Promise<IssuedToken> => {
    const form = new URLSearchParams({
      grant_type: 'client_credentials',
      client_id: settings.clientId,
      client_secret: await clientSecret(fresh),
      ...(settings.scope === undefined ? {} : { scope: settings.scope }),
    });
    return issuedToken(await post(settings.tokenUrl, form), settings.tokenUrl, now());
  };

/** A Google service account key as Google issues it: what the assertion needs of it. */
export const serviceAccountKeySchema = z.object({
  type: z.literal('service_account'),
  client_email: z.string().min(1),
  private_key: z.string().includes('PRIVATE KEY'),
  private_key_id: z.string().optional(),
  token_uri: z.url({ protocol: /^https?$/ }),
});
export type ServiceAccountKey = z.output<typeof serviceAccountKeySchema>;

/** The life of an assertion: Google takes at most an hour. */
const ASSERTION_LIFETIME_S = 3600;

const base64url = (value: string | Buffer): string => Buffer.from(value).toString('base64url');

/** A JWT the service account signs (RS256) to ask its token endpoint for an access token. */
export const signedAssertion = (key: ServiceAccountKey, scope: string, nowMs: number): string => {
  const iat = Math.floor(nowMs / 1000);
  const header = {
    alg: 'RS256',
    typ: 'JWT',
    ...(key.private_key_id === undefined ? {} : { kid: key.private_key_id }),
  };
  const claims = { iss: key.client_email, scope, aud: key.token_uri, iat, exp: iat + ASSERTION_LIFETIME_S };
  const unsigned = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const signature = createSign('RSA-SHA256').update(unsigned).sign(key.private_key);
  return `${unsigned}.${base64url(signature)}`;
};

export const serviceAccountIssuer =
  (
    scope: string,
    key: (fresh: boolean) => Promise<ServiceAccountKey>,
    post: TokenEndpoint,
    now: () => number = Date.now,
  ) =>
  async (fresh: boolean): Promise<IssuedToken> => {
    const account = await key(fresh);
    const form = new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer',
      assertion: signedAssertion(account, scope, now()),
    });
    return issuedToken(await post(account.token_uri, form), account.token_uri, now());
  };
