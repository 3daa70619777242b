/**
 * A stand-in for an OAuth 2.0 authorization server on loopback, as the cloud archives' token
 * endpoints behave (docs/destinations.md says from which documents):
 * - `POST /oauth2/token`, the client credentials grant (RFC 6749 4.4; Microsoft Entra ID's
 *   `/oauth2/v2.0/token`): form `grant_type=client_credentials`, `client_id`, `client_secret`,
 *   `scope`; a wrong client is answered 401 `{"error": "invalid_client"}`;
 * - `POST /google/token`, the JWT bearer grant (RFC 7523; Google's `oauth2.googleapis.com/token`
 *   for a service account): form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
 *   `assertion`, a JWT signed RS256 with the account's key, its `iss` the account, its `aud`
 *   this endpoint, `iat`/`exp` an hour apart at most; a bad one is answered 400 `invalid_grant`;
 * - tokens issued with `expires_in` (`lifetimeSeconds`); `expireAll()` ends every token issued so
 *   far at once, as their expiry would, and the archive stand-ins then answer 401 to them.
 * Not reproduced: other grants, refresh tokens, client assertions, token introspection.
 */
import { createVerify, generateKeyPairSync, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readAll, serve } from './fronts.ts';

const json = (response: ServerResponse, status: number, body: unknown): void => {
  response.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  response.end(JSON.stringify(body));
};

const fromBase64url = (part: string): unknown => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

/** A Google service account key as Google issues it, pointing at this stand-in. */
export interface ServiceAccountKeyFile {
  readonly type: 'service_account';
  readonly project_id: string;
  readonly private_key_id: string;
  readonly private_key: string;
  readonly client_email: string;
  readonly client_id: string;
  readonly token_uri: string;
}

export class TokenStandIn {
  /** Tokens issued, and whether each is still good. */
  private readonly issued = new Map<string, boolean>();
  /** Errors of the stand-in itself: the test's to check. */
  readonly errors: unknown[] = [];
  /** Requests refused, by error code. */
  readonly refusals: string[] = [];
  /** Form fields of every token request received (for tests that check what was never logged). */
  readonly requests: URLSearchParams[] = [];
  lifetimeSeconds = 3600;
  readonly clientId = `client-${randomBytes(6).toString('hex')}`;
  readonly clientSecret = `secret-${randomBytes(12).toString('hex')}`;
  private readonly serviceAccount = generateKeyPairSync('rsa', { modulusLength: 2048 });
  readonly serviceAccountEmail = 'forwarder@project.iam.gserviceaccount.com';
  private server: Awaited<ReturnType<typeof serve>> | undefined;

  static async start(): Promise<TokenStandIn> {
    const standIn = new TokenStandIn();
    standIn.server = await serve((request, response) => standIn.answer(request, response), standIn.errors);
    return standIn;
  }

  get clientCredentialsUrl(): string {
    return `http://127.0.0.1:${this.server?.port}/oauth2/token`;
  }

  get googleTokenUrl(): string {
    return `http://127.0.0.1:${this.server?.port}/google/token`;
  }

  /** The key file of the service account this stand-in knows. */
  serviceAccountKey(): ServiceAccountKeyFile {
    return {
      type: 'service_account',
      project_id: 'project',
      private_key_id: randomBytes(8).toString('hex'),
      private_key: this.serviceAccount.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      client_email: this.serviceAccountEmail,
      client_id: '1',
      token_uri: this.googleTokenUrl,
    };
  }

  /**
   * What must never be shown: the client secret, the service account's private key (line by
   * line), every token issued and every assertion received.
   */
  secrets(): string[] {
    const key = this.serviceAccount.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    return [
      this.clientSecret,
      ...key.split('\n').filter((line) => line.length >= 12 && !line.startsWith('-----')),
      ...this.issued.keys(),
      ...this.requests
        .flatMap((form) => [form.get('assertion'), form.get('client_secret')])
        .filter((value) => value !== null),
    ];
  }

  /** Whether an archive takes the token: issued here and not expired. */
  isValid(token: string): boolean {
    return this.issued.get(token) === true;
  }

  get tokensIssued(): string[] {
    return [...this.issued.keys()];
  }

  /** Every token issued so far expires now. */
  expireAll(): void {
    for (const token of this.issued.keys()) this.issued.set(token, false);
  }

  async close(): Promise<void> {
    await this.server?.close();
  }

  private async answer(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const form = new URLSearchParams((await readAll(request)).toString('utf8'));
    this.requests.push(form);
    const refuse = (status: number, error: string) => {
      this.refusals.push(error);
      json(response, status, { error });
    };
    if (request.method !== 'POST') return refuse(405, 'invalid_request');
    if (request.url === '/oauth2/token') {
      if (form.get('grant_type') !== 'client_credentials') return refuse(400, 'unsupported_grant_type');
      if (form.get('client_id') !== this.clientId || form.get('client_secret') !== this.clientSecret) {
        return refuse(401, 'invalid_client');
      }
      return this.issue(response);
    }
    if (request.url === '/google/token') {
      if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
        return refuse(400, 'unsupported_grant_type');
      }
      if (!this.goodAssertion(form.get('assertion') ?? '')) return refuse(400, 'invalid_grant');
      return this.issue(response);
    }
    return refuse(404, 'invalid_request');
  }

  private issue(response: ServerResponse): void {
    const token = `tok-${randomBytes(16).toString('hex')}`;
    this.issued.set(token, true);
    json(response, 200, { access_token: token, token_type: 'Bearer', expires_in: this.lifetimeSeconds });
  }

  /** Signed by the account's key, for this endpoint, within its hour: what Google checks of it. */
  private goodAssertion(assertion: string): boolean {
    const [header, claims, signature] = assertion.split('.');
    if (header === undefined || claims === undefined || signature === undefined) return false;
    const verified = createVerify('RSA-SHA256')
      .update(`${header}.${claims}`)
      .verify(this.serviceAccount.publicKey, Buffer.from(signature, 'base64url'));
    if (!verified) return false;
    const { alg } = fromBase64url(header) as { alg?: string };
    const { iss, aud, iat, exp, scope } = fromBase64url(claims) as Record<string, unknown>;
    const now = Date.now() / 1000;
    return (
      alg === 'RS256' &&
      iss === this.serviceAccountEmail &&
      aud === this.googleTokenUrl &&
      typeof scope === 'string' &&
      typeof iat === 'number' &&
      typeof exp === 'number' &&
      exp - iat <= 3600 &&
      exp > now
    );
  }
}
