/**
 * Destination kinds and auth kinds apart from a move: the settings and the errors that name
 * their field, the limits each kind sets, bearer tokens renewed before they expire (on a clock
 * of the test's own), and SigV4 signatures checked by recomputing them with the test's
 * credentials. The moves themselves are test/destination-conformance.test.ts's.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkSecrets } from '../lambdas/aws/runtime.ts';
import { STREAMING_PAYLOAD, sigV4Signer } from '../lambdas/aws/sigv4-signer.ts';
import { bearerTokens, type IssuedToken, RENEW_BEFORE_MS } from '../lambdas/core/access-tokens.ts';
import { ConfigError, parseConfig } from '../lambdas/core/config.ts';
import { buildDestinations } from '../lambdas/core/destinations.ts';
import { checkSigV4, type TestCredentials } from './support/sigv4-check.ts';

const source = { id: 'site-a', url: 'http://127.0.0.1:8042', username: 'orthanc', password: 'orthanc' };
const HEALTHIMAGING =
  'https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/d9a2a515ab294163a2d2f4069eed584c';

const errorOf = (make: () => unknown): string => {
  try {
    make();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('accepted');
};

const configWith = (destination: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  parseConfig({ sources: [source], destination, ...extra });

const destinationsOf = (destination: Record<string, unknown>, options: { env?: NodeJS.ProcessEnv } = {}) =>
  buildDestinations(configWith(destination), { env: options.env ?? {} });

describe('destination kinds and auth in the configuration', () => {
  const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-auth-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('refuses, naming the field: auth beside basic auth, HealthImaging without SigV4, a verification too weak for it, a secret given twice', () => {
    const healthImaging = { url: HEALTHIMAGING, kind: 'healthimaging', auth: { kind: 'aws-sigv4' } };
    expect(errorOf(() => configWith({ ...healthImaging, username: 'u', password: 'p' }))).toMatch(
      /destination\.auth: give either auth or basic auth/,
    );
    expect(errorOf(() => configWith({ ...healthImaging, auth: { kind: 'bearer', token: 't' } }))).toMatch(
      /destination\.auth: kind 'healthimaging' needs auth \{ "kind": "aws-sigv4" \}/,
    );
    expect(errorOf(() => configWith(healthImaging, { verify: 'qido' }))).toMatch(
      /^ {2}verify: 'qido' cannot verify at a healthimaging destination \(destination\)/m,
    );
    expect(
      errorOf(() =>
        parseConfig({
          sources: [source],
          destinations: [
            {
              id: 'a',
              url: 'https://a.example/dicom-web',
              alternate: { ...healthImaging, afterSeconds: 1 },
              verify: 'stow',
            },
          ],
        }),
      ),
    ).toMatch(
      /destinations\[0\]\.verify: 'stow' cannot verify at a healthimaging destination \(destinations\[0\]\)/,
    );
    const oauth = {
      kind: 'oauth2-client-credentials',
      tokenUrl: 'https://login.example/token',
      clientId: 'c',
    };
    expect(
      errorOf(() =>
        configWith({ url: 'https://a.example', auth: { ...oauth, clientSecret: 's', clientSecretEnv: 'S' } }),
      ),
    ).toMatch(
      /destination\.auth\.clientSecret: give exactly one of clientSecret, clientSecretEnv and secretId/,
    );
    expect(errorOf(() => configWith({ url: 'https://a.example', kind: 'dicomweb' }))).toMatch(
      /destination\.kind: /,
    );
  });

  it('refuses, naming the field when the forwarder starts: a secret store locally, an unset variable, a key that is none, a region it cannot tell', () => {
    const oauth = {
      kind: 'oauth2-client-credentials',
      tokenUrl: 'https://login.example/token',
      clientId: 'c',
    };
    expect(
      errorOf(() => destinationsOf({ url: 'https://a.example', auth: { ...oauth, secretId: 'azure' } })),
    ).toBe(
      'destination.auth.secretId: Secrets Manager is read only on AWS; give clientSecret or clientSecretEnv here',
    );
    expect(
      errorOf(() =>
        destinationsOf({ url: 'https://a.example', auth: { ...oauth, clientSecretEnv: 'AZURE_SECRET' } }),
      ),
    ).toBe('destination.auth.clientSecretEnv: environment variable AZURE_SECRET is not set');
    const notAKey = join(work, 'not-a-key.json');
    writeFileSync(
      notAKey,
      JSON.stringify({ type: 'service_account', private_key: '-----BEGIN PRIVATE KEY----- secret-material' }),
    );
    const message = errorOf(() =>
      destinationsOf({
        url: 'https://a.example',
        kind: 'google',
        auth: { kind: 'google-service-account', keyFile: notAKey },
      }),
    );
    expect(message).toMatch(
      /^destination\.auth\.keyFile: .*not-a-key\.json is not a Google service account key/,
    );
    expect(message).not.toContain('secret-material');
    expect(
      errorOf(() =>
        destinationsOf({
          url: 'https://dicom.example/datastore/x',
          kind: 'generic',
          auth: { kind: 'aws-sigv4' },
        }),
      ),
    ).toMatch(/^destination\.auth\.region: give the region to sign for/);
  });

  it('sets the limits each kind has: page sizes, how a listing ends, a STOW request’s bytes', () => {
    const limits = (destination: Record<string, unknown>) => {
      const [built] = destinationsOf(destination, { env: { AZURE_SECRET: 's' } });
      if (built === undefined) throw new Error('no destination');
      const { qido, stow } = built.primary;
      return {
        page: qido.pageSize,
        listed: qido.maxCopies,
        shortPageEnds: qido.shortPageEnds,
        stowBytes: stow.maxBytes,
      };
    };
    const oauth = {
      kind: 'oauth2-client-credentials',
      tokenUrl: 'https://login.example/token',
      clientId: 'c',
      clientSecretEnv: 'AZURE_SECRET',
    };
    expect(limits({ url: 'https://pacs.example/dicom-web', username: 'u', password: 'p' })).toEqual({
      page: 1000,
      listed: 500_000,
      shortPageEnds: false,
      stowBytes: undefined,
    });
    expect(limits({ url: HEALTHIMAGING, kind: 'healthimaging', auth: { kind: 'aws-sigv4' } })).toEqual({
      page: 1000,
      listed: 10_000,
      shortPageEnds: false,
      stowBytes: 1_000_000_000,
    });
    expect(
      limits({ url: 'https://g.example/dicomWeb', kind: 'google', auth: { kind: 'bearer', token: 't' } }),
    ).toMatchObject({
      page: 1000,
      shortPageEnds: false,
    });
    expect(
      limits({ url: 'https://h.dicom.azurehealthcareapis.com/v2', kind: 'azure', auth: oauth }),
    ).toMatchObject({
      page: 200,
      shortPageEnds: true,
    });
  });
});

describe('auth secrets on AWS', () => {
  const azure = {
    url: 'https://h.dicom.azurehealthcareapis.com/v2',
    kind: 'azure',
    auth: {
      kind: 'oauth2-client-credentials',
      tokenUrl: 'https://login.example/token',
      clientId: 'c',
      secretId: 'azure',
    },
  };

  it('reads each auth secret when a Lambda starts: a malformed one is an error naming its field', async () => {
    const config = configWith(azure);
    await expect(checkSecrets(config, async () => ({ secret: 'x' }))).rejects.toThrow(
      /^destination\.auth\.secretId: the secret must be JSON \{"clientSecret": …\}$/,
    );
    await expect(checkSecrets(config, async () => ({ clientSecret: 'x' }))).resolves.toBeUndefined();
  });

  it('sends a bearer token from its secret, and reads it again past the cache after a refusal', async () => {
    const stored = { token: 'first-token-value' };
    const reads: boolean[] = [];
    const [destination] = buildDestinations(
      configWith({
        url: 'https://vna.example/dicomweb',
        kind: 'generic',
        auth: { kind: 'bearer', secretId: 'vna' },
      }),
      {
        env: {},
        secrets: async (_id, options) => {
          reads.push(options?.fresh === true);
          return { ...stored };
        },
      },
    );
    const authorization = destination?.primary.stow.endpoint.authorization;
    if (typeof authorization !== 'object' || !('header' in authorization))
      throw new Error('a credential source');
    expect(await authorization.header()).toBe('Bearer first-token-value');
    stored.token = 'rotated-token-value';
    expect(await authorization.refresh()).toBe(true);
    expect(await authorization.header()).toBe('Bearer rotated-token-value');
    expect(reads).toEqual([false, true, false]);
  });
});

describe('bearer tokens', () => {
  /** An issuer that hands out numbered tokens living `lifetimeMs` on the test's clock. */
  const issuer = (clock: { now: number }, lifetimeMs: number) => {
    const issued: boolean[] = [];
    const issue = async (fresh: boolean): Promise<IssuedToken> => {
      issued.push(fresh);
      return { token: `token-${issued.length}`, expiresAt: clock.now + lifetimeMs };
    };
    return { issue, issued };
  };

  it('asks once for requests at once, renews before expiry, and replaces a refused token at once', async () => {
    const clock = { now: 1_000_000 };
    const { issue, issued } = issuer(clock, 3_600_000);
    const tokens = bearerTokens(issue, () => clock.now);
    expect(await Promise.all([tokens.header(), tokens.header(), tokens.header()])).toEqual(
      Array(3).fill('Bearer token-1'),
    );
    clock.now += 3_600_000 - RENEW_BEFORE_MS - 1;
    expect(await tokens.header()).toBe('Bearer token-1');
    clock.now += 1;
    expect(await tokens.header()).toBe('Bearer token-2');
    expect(await tokens.refresh()).toBe(true);
    expect(await tokens.header()).toBe('Bearer token-3');
    expect(issued).toEqual([false, false, true]);
  });

  it('renews a short-lived token halfway, and asks again after a failed request', async () => {
    const clock = { now: 0 };
    const { issue, issued } = issuer(clock, 10_000);
    let fail = true;
    const tokens = bearerTokens(
      async (fresh) => {
        if (fail) {
          fail = false;
          throw new Error('token endpoint down');
        }
        return issue(fresh);
      },
      () => clock.now,
    );
    await expect(tokens.header()).rejects.toThrow('token endpoint down');
    expect(await tokens.header()).toBe('Bearer token-1');
    clock.now += 5_000;
    expect(await tokens.header()).toBe('Bearer token-2');
    expect(issued).toHaveLength(2);
  });
});

describe('SigV4', () => {
  const credentials: TestCredentials = {
    accessKeyId: 'ASIATESTTESTTESTTEST',
    secretAccessKey: 'test/secret/key/0123456789abcdefghijkl',
    sessionToken: 'session-token-of-the-test',
  };
  const scope = { region: 'eu-west-1', service: 'medical-imaging' };
  const signer = sigV4Signer(scope, async () => credentials);
  const url = new URL(
    `${HEALTHIMAGING}/studies/1.2.3/instances?includefield=00100020&includefield=00080018&limit=1000&offset=0`,
  );
  const viewOf = async (method: string, target: URL, body: Buffer, streamedLength?: number) => ({
    method,
    target: `${target.pathname}${target.search}`,
    headers: {
      host: target.host,
      ...(await signer.sign({
        method,
        url: target,
        body: streamedLength === undefined && body.length > 0 ? body : undefined,
        streamedLength,
      })),
    } as Record<string, string>,
    body,
  });

  it('signs a listing and a streamed STOW body as the service recomputes them', async () => {
    expect(checkSigV4(await viewOf('GET', url, Buffer.alloc(0)), scope, [credentials])).toBeUndefined();
    const stowUrl = new URL(`${HEALTHIMAGING}/studies`);
    const body = Buffer.from('--boundary\r\n…\r\n--boundary--\r\n');
    const stow = await viewOf('POST', stowUrl, body, body.length);
    expect(stow.headers['x-amz-content-sha256']).toBe(STREAMING_PAYLOAD);
    expect(checkSigV4(stow, scope, [credentials])).toBeUndefined();
  });

  it('is refused for another query, another declared length, other keys, or keys whose session ended', async () => {
    const signed = await viewOf('GET', url, Buffer.alloc(0));
    expect(
      checkSigV4({ ...signed, target: signed.target.replace('offset=0', 'offset=1000') }, scope, [
        credentials,
      ]),
    ).toBe('InvalidSignatureException');
    const body = Buffer.from('0123456789');
    const stow = await viewOf('POST', new URL(`${HEALTHIMAGING}/studies`), body, body.length);
    expect(checkSigV4({ ...stow, body: Buffer.from('01234567890') }, scope, [credentials])).toBe(
      'XAmzContentSHA256Mismatch',
    );
    const other = { ...credentials, secretAccessKey: 'another/secret/key/0123456789abcdefghij' };
    expect(checkSigV4(signed, scope, [other])).toBe('InvalidSignatureException');
    expect(checkSigV4(signed, scope, [], [credentials])).toBe('ExpiredTokenException');
  });

  it('resolves its credentials anew after a refusal, and says whether they changed', async () => {
    let current = credentials;
    const rotating = sigV4Signer(scope, async () => current);
    await rotating.sign({ method: 'GET', url, body: undefined, streamedLength: undefined });
    expect(await rotating.refresh()).toBe(false);
    current = { ...credentials, accessKeyId: 'ASIANEXTNEXTNEXTNEXT' };
    expect(await rotating.refresh()).toBe(true);
  });
});
