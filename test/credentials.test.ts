/**
 * Credentials and TLS material from a secret store, as the AWS pipeline reads them, against a
 * real Orthanc: a rotated password is picked up at the first refusal (a request sent again, a
 * streamed STOW retried), an internal CA and a client certificate come from secrets, and a set-up
 * that failed on a passing fault is made again at the next call.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachedUntilRejected } from '../lambdas/core/concurrency.ts';
import { basicHeader, type SecretReader } from '../lambdas/core/credentials.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import { StowClient } from '../lambdas/core/stow-client.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { HttpFront, type TestPki, TlsFront, testPki } from './support/fronts.ts';
import { forwarderErrorOf, shape, useTestbed } from './support/harness.ts';

const TIMEOUTS = { connectMs: 2_000, headersMs: 10_000, bodyMs: 10_000 };

/**
 * A secret store with Powertools Parameters' behaviour: a value read is kept until a `fresh` read.
 * `fresh` reads are counted.
 */
const secretStore = (initial: Readonly<Record<string, unknown>>) => {
  const values = new Map(Object.entries(initial));
  const cache = new Map<string, unknown>();
  let freshReads = 0;
  const read: SecretReader = async (secretId, options) => {
    if (options?.fresh === true) freshReads++;
    if (options?.fresh === true || !cache.has(secretId)) {
      if (!values.has(secretId)) throw new Error(`ResourceNotFoundException: ${secretId}`);
      cache.set(secretId, values.get(secretId));
    }
    return cache.get(secretId);
  };
  return {
    read,
    set: (secretId: string, value: unknown) => values.set(secretId, value),
    freshReads: () => freshReads,
  };
};

describe('credentials from a secret store', () => {
  const { fleet, closeAfterTest } = useTestbed('credentials');
  let pkiDir = '';
  let pki: TestPki;
  beforeAll(() => {
    pkiDir = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-credentials-pki-'));
    pki = testPki(pkiDir);
  });
  afterAll(() => rmSync(pkiDir, { recursive: true, force: true }));

  it('picks up a rotated password at the first refusal: a request is sent again, a streamed STOW fails for now and its retry succeeds', async () => {
    // Two users, as a dual-user rotation has them; the front stands for the server refusing the
    // one whose password was rotated away.
    const server = await fleet.start({
      name: 'rotating',
      extraConfig: { RegisteredUsers: { orthanc: 'orthanc', rotated: 'new-password' } },
    });
    let refused: string | undefined;
    const front = closeAfterTest(
      await HttpFront.start(server.url, (request) =>
        request.authorization === refused
          ? { answer: { status: 401, headers: { 'content-type': 'text/plain' }, body: 'Unauthorized' } }
          : undefined,
      ),
    );
    const store = secretStore({ orthanc: { username: 'orthanc', password: 'orthanc' } });
    const endpointAt = (url: string) =>
      createEndpoint({ url, secretId: 'orthanc' }, TIMEOUTS, { secrets: store.read });
    const rest = new OrthancClient(endpointAt(front.urlFor(server.url)));
    const stow = new StowClient(endpointAt(front.urlFor(server.dicomWebUrl)));
    const last = await rest.lastChange();

    const rotate = (from: [string, string], to: [string, string]) => {
      store.set('orthanc', { username: to[0], password: to[1] });
      refused = basicHeader(...from);
    };
    rotate(['orthanc', 'orthanc'], ['rotated', 'new-password']);
    expect(await rest.lastChange()).toBe(last);
    expect(front.faked).toBe(1);
    expect(store.freshReads()).toBe(1);

    // A STOW body streams from the source: it cannot be sent twice in one attempt.
    rotate(['rotated', 'new-password'], ['orthanc', 'orthanc']);
    const [instance] = generateStudies(shape('rotated-stow', { patients: 1 })).instances;
    if (instance === undefined) throw new Error('one instance expected');
    const part = { sopInstanceUid: instance.sopInstanceUid, open: async () => instance.stream() };
    const cut = await forwarderErrorOf(stow.store([part]));
    expect(cut).toMatchObject({ kind: 'transient', status: 401 });
    expect(cut.message).toMatch(/credentials were rotated, the retry uses the new ones/);
    expect((await stow.store([part])).stored).toEqual(new Set([instance.sopInstanceUid]));

    // A password that is simply wrong is read again once, found unchanged, and refused for good.
    refused = basicHeader('orthanc', 'orthanc');
    const wrong = await forwarderErrorOf(rest.lastChange());
    expect(wrong).toMatchObject({ kind: 'permanent', status: 401 });
    expect(store.freshReads()).toBe(3);
  });

  it('trusts an internal CA and presents a client certificate read from secrets; none given, the server is refused', async () => {
    const server = await fleet.start({ name: 'internal-ca' });
    const front = closeAfterTest(await TlsFront.start(server.url, { ...pki.server, clientCa: pki.caPem }));
    const { readFileSync } = await import('node:fs');
    const store = secretStore({
      orthanc: { username: server.username, password: server.password },
      'hospital-ca': { ca: pki.caPem },
      'forwarder-client': {
        cert: readFileSync(pki.clientCertFile, 'utf8'),
        key: readFileSync(pki.clientKeyFile, 'utf8'),
      },
    });
    const lastChange = (tls: Record<string, string>) =>
      new OrthancClient(
        createEndpoint({ url: front.origin, secretId: 'orthanc', ...tls }, TIMEOUTS, { secrets: store.read }),
      ).lastChange();

    const untrusted = await forwarderErrorOf(lastChange({}));
    expect(untrusted.kind).toBe('permanent');
    expect(untrusted.message).toMatch(/\(TLS\)$/);
    const last = (await server.rest<{ Last: number }>('GET', '/changes?last')).Last;
    expect(await lastChange({ caSecretId: 'hospital-ca', clientCertSecretId: 'forwarder-client' })).toBe(
      last,
    );
    expect(front.clientNames).toEqual(new Set(['orthanc-forwarder test client']));
  });

  it('reads TLS material again after the store failed: the agent is made at the next call, not never', async () => {
    const server = await fleet.start({ name: 'ca-later' });
    const front = closeAfterTest(await TlsFront.start(server.url, pki.server));
    const store = secretStore({ orthanc: { username: server.username, password: server.password } });
    const client = new OrthancClient(
      createEndpoint({ url: front.origin, secretId: 'orthanc', caSecretId: 'hospital-ca' }, TIMEOUTS, {
        secrets: store.read,
      }),
    );
    const failed = await forwarderErrorOf(client.lastChange());
    expect(failed.kind).toBe('transient');
    expect(failed.message).toMatch(/^reading the TLS material of https:\S+: ResourceNotFoundException/);
    store.set('hospital-ca', { ca: pki.caPem });
    const last = (await server.rest<{ Last: number }>('GET', '/changes?last')).Last;
    expect(await client.lastChange()).toBe(last);
  });

  it('makes a set-up again after it failed, and only then', async () => {
    let made = 0;
    const setUp = cachedUntilRejected(async () => {
      made++;
      if (made === 1) throw new Error('the secret store was not reachable at the cold start');
      return made;
    });
    await expect(setUp()).rejects.toThrow(/cold start/);
    expect(await setUp()).toBe(2);
    expect(await setUp()).toBe(2);
    expect(made).toBe(2);
  });
});
