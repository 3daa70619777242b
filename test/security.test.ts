/**
 * Security: TLS verification is on by default and a CA bundle or a client certificate is a
 * configuration option, never a way to turn it off; credentials never reach a log, a status
 * report or the state file; patient data never reaches a log, even when everything goes wrong.
 * Real Orthancs behind real TLS (a throwaway CA made with `openssl`), the real CLI.
 *
 * IAM scoping, encryption at rest and cdk-nag are checked on the synthesized stack in
 * test/cdk-stack.test.ts.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Timeouts } from '../lambdas/core/config.ts';
import type { DeadLetterEntry } from '../lambdas/core/dead-letters.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import type { StatusReport } from '../lambdas/core/status.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { startArchive } from './support/cloud-archives.ts';
import { HttpFront, TlsFront, useTestPki } from './support/fronts.ts';
import {
  BIN,
  cli,
  configFor,
  expectAllAtDestination,
  forwarderErrorOf,
  heldUids,
  instanceCount,
  logLines,
  type ProcessResult,
  shape,
  startServers,
  uidsOf,
  until,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';
import { type Credentials, expectClearError, expectNoPhi, expectNoSecret } from './support/no-leaks.ts';
import { parseLogLine, startProcess } from './support/processes.ts';

const TIMEOUTS: Timeouts = { connectMs: 5_000, headersMs: 30_000, bodyMs: 30_000 };

const distinctive = (prefix: string) => `${prefix}-${randomBytes(9).toString('hex')}`;

/** The Orthancs' password, distinctive so that a search for it in an error means something. */
const PASSWORD = distinctive('pw-tls');

type RawConfig = Record<string, unknown>;

const withDestination = (raw: RawConfig, patch: Readonly<Record<string, unknown>>): RawConfig => ({
  ...raw,
  destination: { ...(raw.destination as object), ...patch },
});

const withSource = (raw: RawConfig, index: number, patch: Readonly<Record<string, unknown>>): RawConfig => ({
  ...raw,
  sources: (raw.sources as object[]).map((source, i) => (i === index ? { ...source, ...patch } : source)),
});

const without = (raw: object, field: string): Record<string, unknown> =>
  Object.fromEntries(Object.entries(raw).filter(([key]) => key !== field));

/** The studies that have a dead letter, each once (the feed may queue a study twice). */
const deadStudies = (letters: readonly DeadLetterEntry[]): string[] =>
  [...new Set(letters.map((letter) => letter.item?.studyId ?? ''))].sort();

describe('security', () => {
  const { fleet, workPath, closeAfterTest } = useTestbed('security');
  const pki = useTestPki();

  const tlsFront = async (server: OrthancServer, options: { wrongName?: boolean; mutual?: boolean } = {}) =>
    closeAfterTest(
      await TlsFront.start(server.url, {
        ...(options.wrongName === true ? pki.wrongName : pki.server),
        ...(options.mutual === true ? { clientCa: pki.caPem } : {}),
      }),
    );

  const writeConfig = (name: string, raw: RawConfig): string => {
    const path = workPath(name);
    writeFileSync(path, JSON.stringify(raw, null, 2));
    return path;
  };

  const statusOf = async (configPath: string, statePath: string, env = process.env) => {
    const result = await cli(['status', '--config', configPath, '--state', statePath, '--json'], env);
    expect(result.code, result.stderr).toBe(0);
    return { report: JSON.parse(result.stdout) as StatusReport, text: result.stdout + result.stderr };
  };

  const deadLettersOf = async (configPath: string, statePath: string): Promise<DeadLetterEntry[]> => {
    const result = await cli(['dlq', 'list', '--config', configPath, '--state', statePath, '--json']);
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout) as DeadLetterEntry[];
  };

  // These runs are about what a move does when a server fails it: the check at start, which
  // would stop them first, is test/check.test.ts's.
  const run = (configPath: string, statePath: string, env = process.env, extra: readonly string[] = []) =>
    cli(['run', '--config', configPath, '--state', statePath, '--until-idle', '--no-check', ...extra], env);

  describe('TLS', () => {
    it('verifies the server certificate by default: an unknown CA, another CA or a wrong name is refused, for good', async () => {
      const source = await fleet.start({ name: 'site-a', password: PASSWORD });
      const trusted = await tlsFront(source);
      const wrongName = await tlsFront(source, { wrongName: true });
      const lastChange = async (url: string, tls: Record<string, string> = {}) => {
        const endpoint = createEndpoint(
          { url, username: source.username, password: source.password, ...tls },
          TIMEOUTS,
        );
        try {
          return await new OrthancClient(endpoint).lastChange();
        } finally {
          await (await endpoint.dispatcher()).close();
        }
      };
      const credentials = [{ username: source.username, password: source.password }];

      // The system's trust store does not know our CA; neither does a bundle of another CA.
      for (const tls of [{}, { caFile: pki.otherCaFile }] as Record<string, string>[]) {
        const error = await forwarderErrorOf(lastChange(trusted.origin, tls));
        expect(error.kind).toBe('permanent');
        expectClearError(
          error.message,
          trusted.origin,
          /^reading the last change at \S+: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(TLS\)$/,
          credentials,
        );
      }
      // Our CA, but a certificate for another address.
      const misnamed = await forwarderErrorOf(lastChange(wrongName.origin, { caFile: pki.caFile }));
      expect(misnamed.kind).toBe('permanent');
      expectClearError(
        misnamed.message,
        wrongName.origin,
        /^reading the last change at \S+: ERR_TLS_CERT_ALTNAME_INVALID \(TLS\)$/,
        credentials,
      );
      // Not one request got through to the server behind.
      expect(trusted.connections).toBe(0);
      expect(wrongName.connections).toBe(0);
      // The fronts saw the handshakes fail (the client hangs up; the server learns it a moment later).
      await until(async () => trusted.handshakeFailures === 2 && wrongName.handshakeFailures === 1);

      // The CA bundle given: the same server answers, through TLS.
      const last = (await source.rest<{ Last: number }>('GET', '/changes?last')).Last;
      expect(await lastChange(trusted.origin, { caFile: pki.caFile })).toBe(last);
      expect(trusted.connections).toBe(1);
    });

    it('deletes nothing and dead-letters nothing when the destination is not trusted, even with NODE_TLS_REJECT_UNAUTHORIZED=0, naming its caFile; moves through TLS at both ends with it', async () => {
      const [destination, source] = await startServers(fleet, ['destination', 'site-a'], {
        password: PASSWORD,
      });
      const set = generateStudies(shape('tls-ca'));
      await upload(source, set.instances);
      const sourceTls = await tlsFront(source);
      const destinationTls = await tlsFront(destination);
      const base = withSource(configFor([{ id: 'site-a', server: source }], destination), 0, {
        url: sourceTls.origin,
        caFile: pki.caFile,
      });
      const untrusted = withDestination(base, { url: destinationTls.urlFor(destination.dicomWebUrl) });
      const trusted = withDestination(untrusted, { caFile: pki.caFile });
      const statePath = workPath('state.sqlite');
      const untrustedPath = writeConfig('untrusted.json', untrusted);
      // Node's switch that turns certificate checks off for a whole process must not reach ours.
      const careless = { ...process.env, NODE_TLS_REJECT_UNAUTHORIZED: '0' };

      const refused = await run(untrustedPath, statePath, careless);
      expect(refused.code, refused.stderr).toBe(1);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      expect(await instanceCount(destination)).toBe(0);
      expect(destinationTls.connections).toBe(0);
      await until(async () => destinationTls.handshakeFailures > 0);
      // The source was read through its TLS front with the CA bundle.
      expect(sourceTls.connections).toBeGreaterThan(0);
      const credentials = [{ username: source.username, password: source.password }];
      // A certificate refused is refused for every study: they wait for the fix (none is
      // dead-lettered), and the run says once which setting to fix (destination-faults.test.ts).
      expect(await deadLettersOf(untrustedPath, statePath)).toEqual([]);
      const lines = logLines(`${refused.stdout}\n${refused.stderr}`);
      const unavailable = lines.filter((line) => String(line.message).startsWith('destination unavailable'));
      expect(unavailable).toHaveLength(1);
      expect(unavailable[0]).toMatchObject({ field: 'destination.caFile', fault: 'tls' });
      expectClearError(
        String(unavailable[0]?.error),
        destinationTls.origin,
        /QIDO-RS at \S+: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(TLS\)/,
        credentials,
      );
      expect(lines.filter((line) => line.message === 'work item dead-lettered')).toEqual([]);
      expect(lines.find((line) => line.message === 'run finished')).toMatchObject({
        unavailableDestinations: 'destination',
      });

      // Trusted, the studies that waited move, without a redrive.
      const trustedPath = writeConfig('trusted.json', trusted);
      const moved = await run(trustedPath, statePath);
      expect(moved.code, moved.stderr).toBe(0);
      expect(destinationTls.connections).toBeGreaterThan(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(destination, set.instances);
      expect((await statusOf(trustedPath, statePath)).report.queue).toEqual({
        waiting: 0,
        inFlight: 0,
        deadLetters: 0,
      });
    });

    it('mutual TLS: a destination that requires a client certificate refuses the forwarder without one, and accepts it with clientCertFile and clientKeyFile', async () => {
      const [destination, source] = await startServers(fleet, ['destination', 'site-a'], {
        password: PASSWORD,
      });
      const set = generateStudies(shape('mutual-tls'));
      await upload(source, set.instances);
      const studyIds = (await source.rest<string[]>('GET', '/studies')).sort();
      const front = await tlsFront(destination, { mutual: true });
      const anonymous = withDestination(
        configFor([{ id: 'site-a', server: source }], destination, {
          retry: { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 300 },
        }),
        { url: front.urlFor(destination.dicomWebUrl), caFile: pki.caFile },
      );
      const statePath = workPath('state.sqlite');
      const anonymousPath = writeConfig('anonymous.json', anonymous);

      const refused = await run(anonymousPath, statePath);
      expect(refused.code, refused.stderr).toBe(1);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      expect(await instanceCount(destination)).toBe(0);
      expect(front.connections).toBe(0);
      await until(async () => front.handshakeFailures > 0);
      const letters = await deadLettersOf(anonymousPath, statePath);
      expect(deadStudies(letters)).toEqual(studyIds);
      for (const letter of letters) {
        // TLS 1.3 refuses a missing client certificate after the handshake, with an alert that
        // undici reports as a closed socket: today a transient failure, retried until
        // retry.maxAttempts (see the report); refused, and named, either way.
        expectClearError(
          letter.lastError,
          front.origin,
          /QIDO-RS at \S+: (UND_ERR_SOCKET|ECONNRESET|ERR_SSL_\S+ \(TLS\))/,
          [{ username: destination.username, password: destination.password }],
        );
      }

      const identified = writeConfig(
        'identified.json',
        withDestination(anonymous, { clientCertFile: pki.clientCertFile, clientKeyFile: pki.clientKeyFile }),
      );
      await cli(['redrive', '--config', identified, '--state', statePath]);
      const moved = await run(identified, statePath);
      expect(moved.code, moved.stderr).toBe(0);
      expect([...front.clientNames]).toEqual(['orthanc-forwarder test client']);
      expect(front.connections).toBeGreaterThan(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(destination, set.instances);
    });
  });

  it('never shows a password (nor its basic-auth form) in the output of a move or of a 401, at DEBUG, in status or in the state file', async () => {
    const username = 'forwarder';
    const password = distinctive('Pw');
    const wrongSourcePassword = distinctive('WrongSrc');
    const wrongDestinationPassword = distinctive('WrongDst');
    const secrets: Credentials[] = [
      { username, password },
      { username, password: wrongSourcePassword },
      { username, password: wrongDestinationPassword },
    ];
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b'], {
      username,
      password,
    });
    const firstSet = generateStudies(shape('credentials-first'));
    await upload(siteA, firstSet.instances);
    const env = {
      ...process.env,
      FORWARDER_TEST_DESTINATION_PASSWORD: password,
      FORWARDER_TEST_WRONG_PASSWORD: wrongSourcePassword,
    };
    const outputs: string[] = [];
    const collect = (result: ProcessResult) => outputs.push(result.stdout, result.stderr);

    // A move: the source's password inline, the destination's from the environment.
    const good = configFor([{ id: 'site-a', server: siteA }], destination);
    const goodPath = writeConfig('good.json', {
      ...good,
      destination: {
        ...without(good.destination as object, 'password'),
        passwordEnv: 'FORWARDER_TEST_DESTINATION_PASSWORD',
      },
    });
    const goodState = workPath('good.sqlite');
    const moved = await run(goodPath, goodState, env, ['--log-level', 'DEBUG']);
    collect(moved);
    expect(moved.code, moved.stderr).toBe(0);
    expect(await instanceCount(siteA)).toBe(0);
    expect(logLines(moved.stdout).filter((line) => line.message === 'study outcome').length).toBeGreaterThan(
      0,
    );
    const goodStatus = await statusOf(goodPath, goodState, env);
    outputs.push(goodStatus.text);
    outputs.push((await cli(['status', '--config', goodPath, '--state', goodState], env)).stdout);

    // Refusals: the destination's password wrong (inline), site-b's wrong (from the environment).
    const secondSet = generateStudies(shape('credentials-second'));
    await upload(siteA, secondSet.instances);
    await upload(siteB, firstSet.instances);
    const refused = configFor(
      [
        { id: 'site-a', server: siteA },
        { id: 'site-b', server: siteB },
      ],
      destination,
      { retry: { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 300 } },
    );
    const [sourceA, sourceB] = refused.sources as object[];
    const refusedPath = writeConfig('refused.json', {
      ...refused,
      sources: [
        sourceA,
        { ...without(sourceB as object, 'password'), passwordEnv: 'FORWARDER_TEST_WRONG_PASSWORD' },
      ],
      destination: { ...(refused.destination as object), password: wrongDestinationPassword },
    });
    const refusedState = workPath('refused.sqlite');
    const failed = await run(refusedPath, refusedState, env, ['--log-level', 'DEBUG']);
    collect(failed);
    expect(failed.code, failed.stderr).toBe(1);
    const failedStatus = await statusOf(refusedPath, refusedState, env);
    outputs.push(failedStatus.text);
    outputs.push((await cli(['status', '--config', refusedPath, '--state', refusedState], env)).stdout);
    for (const grouping of [[], ['--group-by', 'error']]) {
      const listed = await cli(
        ['dlq', 'list', '--config', refusedPath, '--state', refusedState, ...grouping],
        env,
      );
      outputs.push(listed.stdout, listed.stderr);
    }
    // Both refusals were met and reported, with their status: the search below is not vacuous.
    const failedOutput = `${failed.stdout}\n${failed.stderr}`;
    expect(failedOutput).toMatch(/QIDO-RS at http:\/\/127\.0\.0\.1:\d+ answered 401/);
    expect(failedOutput).toMatch(/reading the change feed at http:\/\/127\.0\.0\.1:\d+ answered 401/);
    expect(failedStatus.report.sources.find((source) => source.id === 'site-b')?.unknown).toMatch(
      /answered 401/,
    );
    // site-a's studies wait for the destination's password to be fixed: queued, not dead-lettered.
    const { waiting, inFlight, deadLetters } = failedStatus.report.queue;
    expect({ queued: waiting + inFlight > 0, deadLetters }).toEqual({ queued: true, deadLetters: 0 });
    // Nothing lost: every refused instance is still where it was.
    expect(await heldUids(siteA)).toEqual(uidsOf(secondSet.instances));
    expect(await heldUids(siteB)).toEqual(uidsOf(firstSet.instances));

    expectNoSecret(outputs.join('\n'), secrets);
    // Nor in the state files (dead letters keep their last error).
    for (const file of [goodState, refusedState].flatMap((path) => [path, `${path}-wal`])) {
      if (existsSync(file)) expectNoSecret(readFileSync(file).toString('latin1'), secrets);
    }
  });

  it("never logs nor dead-letters an archive's error message that echoes patient data", async () => {
    const [destination, site] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('phi-echo', { patients: 1, seriesPerStudy: 1, instancesPerSeries: 2 }));
    await upload(site, set.instances);
    // An archive that is not Orthanc, echoing the data set in the free text of its refusal; and
    // one shaped like Orthanc, with the same text where Orthanc names its error.
    const echo = `cannot accept ${set.phiValues().join(' ')}`;
    const front = closeAfterTest(
      await HttpFront.start(destination.url, ({ path }) =>
        path.startsWith('/dicom-web/studies/')
          ? {
              answer: {
                status: 400,
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ Message: echo, OrthancError: echo, Details: echo }),
              },
            }
          : undefined,
      ),
    );
    const configPath = writeConfig(
      'forwarder.json',
      withDestination(configFor([{ id: 'site-a', server: site }], destination), {
        url: front.urlFor(destination.dicomWebUrl),
      }),
    );
    const statePath = workPath('state.sqlite');
    const result = await run(configPath, statePath, process.env, ['--log-level', 'DEBUG']);
    expect(result.code, result.stderr).toBe(1);
    expect(front.faked).toBeGreaterThan(0);
    const letters = await cli(['dlq', 'list', '--config', configPath, '--state', statePath, '--json']);
    expect(letters.stdout).toMatch(/QIDO-RS at http:\/\/127\.0\.0\.1:\d+ answered 400/);
    const stateFile = [statePath, `${statePath}-wal`]
      .filter((file) => existsSync(file))
      .map((file) => readFileSync(file).toString('latin1'));
    expectNoPhi([result.stdout, result.stderr, letters.stdout, letters.stderr, ...stateFile].join('\n'), [
      set,
    ]);
    expect(await heldUids(site)).toEqual(uidsOf(set.instances));
  });

  it('never logs patient data, even at DEBUG through a run with faults: the destination down then back, a source refusing the credentials, a refused instance', async () => {
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b']);
    const setA = generateStudies(shape('phi-faults-a', { patients: 3, modality: 'MR' }));
    const setB = generateStudies(shape('phi-faults-b', { patients: 2 }));
    // Without SOPClassUID: Orthanc's REST API stores it, its STOW-RS refuses it.
    const refused = withoutElements(setA.instances[2] as GeneratedInstance, [SOP_CLASS_UID_TAG]);
    const instancesA = setA.instances.map((instance, index) => (index === 2 ? refused : instance));
    await upload(siteA, instancesA);
    await upload(siteB, setB.instances);
    const configPath = writeConfig(
      'forwarder.json',
      withSource(
        configFor(
          [
            { id: 'site-a', server: siteA },
            { id: 'site-b', server: siteB },
          ],
          destination,
          // Enough attempts to outlast the destination's restart.
          { retry: { maxAttempts: 12, baseDelayMs: 100, maxDelayMs: 1_000 } },
        ),
        1,
        { password: distinctive('wrong') },
      ),
    );
    const statePath = workPath('state.sqlite');
    await destination.stop();

    // The destination comes back once a move has failed for want of it.
    let missed = false;
    let failedForWantOfIt: () => void = () => undefined;
    const destinationMissed = new Promise<void>((resolve) => {
      failedForWantOfIt = () => {
        missed = true;
        resolve();
      };
    });
    const live = startProcess(
      BIN,
      [
        'run',
        '--config',
        configPath,
        '--state',
        statePath,
        '--until-idle',
        '--no-check',
        '--log-level',
        'DEBUG',
      ],
      {
        onLine: (line) => {
          const entry = parseLogLine(line);
          if (
            entry?.message === 'work item failed, will retry' &&
            String(entry.error).includes('ECONNREFUSED')
          )
            failedForWantOfIt();
        },
      },
    );
    await Promise.race([
      destinationMissed,
      live.done.then((early) => {
        if (!missed) throw new Error(`the run ended before the destination was missed:\n${early.stderr}`);
      }),
    ]);
    await destination.start();
    const result = await live.done;
    expect(result.code, result.stderr).toBe(1);

    const output = `${result.stdout}\n${result.stderr}`;
    // Every fault happened and was reported.
    expect(output).toMatch(/reading the change feed at http:\/\/127\.0\.0\.1:\d+ answered 401/);
    const outcomes = logLines(output).filter((line) => line.message === 'study outcome');
    expect(outcomes.filter((line) => line.result === 'partial').length).toBeGreaterThan(0);
    // Nothing lost: site-a keeps only the refused instance, the rest is at the destination;
    // site-b keeps everything.
    expect(await heldUids(siteA)).toEqual([refused.sopInstanceUid]);
    await expectAllAtDestination(
      destination,
      instancesA.filter((instance) => instance !== refused),
    );
    expect(await heldUids(siteB)).toEqual(uidsOf(setB.instances));

    const status = await statusOf(configPath, statePath);
    expect(status.report.rejected.map((rejected) => rejected.sopInstanceUid)).toEqual([
      refused.sopInstanceUid,
    ]);
    const statusText = await cli(['status', '--config', configPath, '--state', statePath]);
    expectNoPhi([output, status.text, statusText.stdout, statusText.stderr].join('\n'), [setA, setB]);
  });

  it('never shows a client secret, a service account key, an access token or AWS keys: in a move, in refusals, in check, status, dlq or the state file', async () => {
    const source = await fleet.start({ name: 'site-a', stableAge: 1 });
    const [imaging, google, azure] = await Promise.all(
      (['healthimaging', 'google', 'azure'] as const).map(async (kind) =>
        closeAfterTest(await startArchive(kind, { fleet, workPath })),
      ),
    );
    if (imaging === undefined || google === undefined || azure === undefined)
      throw new Error('three archives');
    const set = generateStudies(shape('cloud-secrets', { patients: 1 }));
    await upload(source, set.instances);
    // The client secret from the environment, as a service takes it.
    const { clientSecret, ...azureAuth } = azure.destination.auth as Record<string, unknown>;
    const env = { ...process.env, FORWARDER_TEST_AZURE_SECRET: String(clientSecret) };
    const destinations = (azureSecret: string, googleKeyFile?: string) => [
      { id: 'imaging', ...imaging.destination },
      {
        id: 'google',
        ...google.destination,
        ...(googleKeyFile === undefined
          ? {}
          : { auth: { kind: 'google-service-account', keyFile: googleKeyFile } }),
      },
      { id: 'azure', ...azure.destination, auth: { ...azureAuth, clientSecretEnv: azureSecret } },
    ];
    const base = configFor([{ id: 'site-a', server: source }], source, {
      retry: { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 300 },
    });
    const outputs: string[] = [];
    const collect = (result: ProcessResult) => outputs.push(result.stdout, result.stderr);

    const goodPath = writeConfig(
      'cloud.json',
      withDestinations(base, destinations('FORWARDER_TEST_AZURE_SECRET')),
    );
    const goodState = workPath('cloud.sqlite');
    const checked = await cli(['check', '--config', goodPath, '--json'], env);
    collect(checked);
    expect(checked.code, checked.stdout).toBe(0);
    const moved = await run(goodPath, goodState, env, ['--log-level', 'DEBUG']);
    collect(moved);
    expect(moved.code, moved.stderr).toBe(0);
    expect(await instanceCount(source)).toBe(0);
    outputs.push((await statusOf(goodPath, goodState, env)).text);

    // Refused: a wrong client secret, a key Google does not know.
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 })
      .privateKey.export({ type: 'pkcs8', format: 'pem' })
      .toString();
    const unknownKey = workPath('unknown-key.json');
    writeFileSync(
      unknownKey,
      JSON.stringify({
        ...JSON.parse(readFileSync(String((google.destination.auth as { keyFile: string }).keyFile), 'utf8')),
        private_key: other,
      }),
    );
    const wrongSecret = distinctive('WrongClientSecret');
    const refusedSet = generateStudies(shape('cloud-secrets-refused', { patients: 1 }));
    await upload(source, refusedSet.instances);
    const refusedPath = writeConfig(
      'refused.json',
      withDestinations(base, destinations('FORWARDER_TEST_WRONG_SECRET', unknownKey)),
    );
    const refusedState = workPath('refused.sqlite');
    const refusedEnv = { ...env, FORWARDER_TEST_WRONG_SECRET: wrongSecret };
    const failed = await run(refusedPath, refusedState, refusedEnv, ['--log-level', 'DEBUG']);
    collect(failed);
    expect(failed.code, failed.stderr).toBe(1);
    const failedOutput = `${failed.stdout}\n${failed.stderr}`;
    expect(failedOutput).toMatch(/requesting an access token at http:\/\/127\.0\.0\.1:\d+ answered 401/);
    expect(failedOutput).toMatch(/requesting an access token at http:\/\/127\.0\.0\.1:\d+ answered 400/);
    expect(await heldUids(source)).toEqual(uidsOf(refusedSet.instances));
    outputs.push((await statusOf(refusedPath, refusedState, refusedEnv)).text);
    for (const grouping of [[], ['--group-by', 'error']]) {
      collect(
        await cli(['dlq', 'list', '--config', refusedPath, '--state', refusedState, ...grouping], refusedEnv),
      );
    }

    const secrets = [imaging, google, azure].flatMap((archive) => archive.secrets());
    secrets.push(
      wrongSecret,
      ...other.split('\n').filter((line) => line.length >= 12 && !line.startsWith('-----')),
    );
    expect(secrets.length).toBeGreaterThan(10);
    const asCredentials = secrets.map((secret) => ({ username: 'forwarder', password: secret }));
    expectNoSecret(outputs.join('\n'), asCredentials);
    for (const file of [goodState, refusedState].flatMap((path) => [path, `${path}-wal`])) {
      if (existsSync(file)) expectNoSecret(readFileSync(file).toString('latin1'), asCredentials);
    }
  });
});
