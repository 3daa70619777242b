/**
 * `check` and the same check at the start of `run`, through the built CLI against real Orthancs:
 * every operator mistake of issue 15 answered at once, naming the field to fix; a server merely
 * unreachable stops a one-shot `run --until-idle` but not a service. And the state file's
 * mistakes (a missing folder, a folder, a file that is not SQLite) said without a stack trace.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PreflightReport } from '../lambdas/core/preflight.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import { SecretsManagerStandIn } from '../testbed/secrets-manager.ts';
import { emulatorEnv } from '../testbed/sqs-emulator.ts';
import { type TestPki, TlsFront, testPki } from './support/fronts.ts';
import {
  BIN,
  cli,
  configFor,
  instanceCount,
  type ProcessResult,
  shape,
  startServers,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';
import { expectNoPhi, expectNoSecret } from './support/no-leaks.ts';
import { parseLogLine, startProcess } from './support/processes.ts';

type RawConfig = Record<string, unknown>;

const withSource = (raw: RawConfig, patch: RawConfig): RawConfig => ({
  ...raw,
  sources: (raw.sources as object[]).map((source, index) => (index === 0 ? { ...source, ...patch } : source)),
});

const withDestination = (raw: RawConfig, patch: RawConfig): RawConfig => ({
  ...raw,
  destination: { ...(raw.destination as object), ...patch },
});

/** A port nothing listens on: the kernel's, closed again. */
const closedPort = async (): Promise<number> => {
  const server = createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
};

/** A stack trace in what the CLI printed: an operator mistake must not show one. */
const STACK = /\n\s+at /;

describe('check, and the check at the start of run', () => {
  const { fleet, workPath, closeAfterTest } = useTestbed('check');
  let pkiDir: string;
  let pki: TestPki;

  beforeAll(() => {
    pkiDir = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-check-pki-'));
    pki = testPki(pkiDir);
  });
  afterAll(() => {
    rmSync(pkiDir, { recursive: true, force: true });
  });

  const writeConfig = (raw: RawConfig): string => {
    const path = workPath('forwarder.json');
    writeFileSync(path, JSON.stringify(raw, null, 2));
    return path;
  };

  const checkOf = async (raw: RawConfig, env = process.env) => {
    const result = await cli(['check', '--config', writeConfig(raw), '--json'], env);
    return { code: result.code, report: JSON.parse(result.stdout) as PreflightReport, result };
  };

  const problemsOf = (report: PreflightReport) => report.servers.flatMap((server) => server.problems);

  const runUntilIdle = (raw: RawConfig): Promise<ProcessResult> =>
    cli(['run', '--config', writeConfig(raw), '--state', workPath('state.sqlite'), '--until-idle']);

  /**
   * The one problem `check` finds is a mistake that names `field`, and `run --until-idle` stops
   * with exit code 2 before it moves anything, saying the same without a stack trace.
   */
  const expectOneMistake = async (raw: RawConfig, field: string, problem: RegExp) => {
    const { code, report } = await checkOf(raw);
    expect(code).toBe(1);
    expect(report.ok).toBe(false);
    const [found, ...others] = problemsOf(report);
    expect(others).toEqual([]);
    expect(found).toMatchObject({ field, kind: 'mistake' });
    expect(found?.problem).toMatch(problem);
    const text = await cli(['check', '--config', writeConfig(raw)]);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`  ${field}: `);

    const run = await runUntilIdle(raw);
    expect(run.code, run.stderr).toBe(2);
    expect(run.stderr).toContain(`orthanc-forwarder: ${field}: `);
    expect(run.stderr).not.toMatch(STACK);
    expect(run.stdout).not.toContain('"run finished"');
    return found;
  };

  it('passes a configuration that works, with the versions, and a run goes on to move', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('check-clean', { patients: 1 }));
    await upload(source, set.instances);
    // The destination's QIDO-RS answer to the check lists a study: never printed.
    await upload(destination, generateStudies(shape('check-clean-destination', { patients: 1 })).instances);
    const raw = configFor([{ id: 'site-a', server: source }], destination);

    const { code, report, result } = await checkOf(raw);
    expect(code, result.stderr).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.servers).toMatchObject([
      {
        field: 'sources[0]',
        role: 'source',
        id: 'site-a',
        url: source.url,
        orthanc: expect.stringMatching(/^\d+\.\d+\.\d+$/),
        dicomWeb: expect.stringMatching(/^\d+\.\d+/),
        verified: ['Orthanc REST API', 'deletion allowed'],
        problems: [],
      },
      {
        field: 'destination',
        role: 'destination',
        id: 'destination',
        url: destination.dicomWebUrl,
        orthanc: expect.stringMatching(/^\d+\.\d+\.\d+$/),
        verified: ['QIDO-RS'],
        problems: [],
      },
    ]);
    const text = await cli(['check', '--config', writeConfig(raw)]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^SERVER\tID\tURL\tORTHANC\tDICOMWEB\tRESULT\tVERIFIED\n/);
    expect(text.stdout).toContain('all good');
    expectNoPhi(`${result.stdout}${text.stdout}`, [set]);
    // Nothing was deleted by the check's probe of the right to delete.
    expect(await instanceCount(source)).toBe(set.instances.length);

    const run = await runUntilIdle(raw);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('"start-up check done"');
    expect(await instanceCount(source)).toBe(0);
  });

  it('a wrong source password: sources[0].password, and run stops at once (exit 2)', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const wrong = 'not-the-source-password';
    const raw = withSource(configFor([{ id: 'site-a', server: source }], destination), { password: wrong });
    await expectOneMistake(raw, 'sources[0].password', /refused the credentials \(401/);
    const text = await cli(['check', '--config', writeConfig(raw)]);
    expectNoSecret(text.stdout + text.stderr, [{ username: source.username, password: wrong }]);
  });

  it('a wrong destination password: destination.password, and run stops before moving anything', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('check-destination-password', { patients: 1 }));
    await upload(source, set.instances);
    const raw = withDestination(configFor([{ id: 'site-a', server: source }], destination), {
      password: 'not-the-destination-password',
    });
    await expectOneMistake(raw, 'destination.password', /refused the credentials \(401/);
    expect(await instanceCount(source)).toBe(set.instances.length);
  });

  it('a destination URL without /dicom-web: destination.url, with the URL to give', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const raw = withDestination(configFor([{ id: 'site-a', server: source }], destination), {
      url: destination.url,
    });
    const found = await expectOneMistake(
      raw,
      'destination.url',
      /is not a DICOMweb root \(GET \/studies answered 400\), \S+\/dicom-web is$/,
    );
    expect(found?.fix).toBe(`set the URL to ${destination.url}/dicom-web`);
  });

  it('a TLS destination signed by a private CA without caFile: destination.caFile; with it, all good', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const front = closeAfterTest(await TlsFront.start(destination.url, pki.server));
    const raw = withDestination(configFor([{ id: 'site-a', server: source }], destination), {
      url: front.urlFor(destination.dicomWebUrl),
    });
    const found = await expectOneMistake(raw, 'destination.caFile', /is not trusted \(\w+\)/);
    expect(found?.fix).toMatch(/caFile \(on AWS: caSecretId\)/);
    const trusted = await checkOf(withDestination(raw, { caFile: pki.caFile }));
    expect(trusted.code, JSON.stringify(trusted.report)).toBe(0);
  });

  it('a source that refuses deletion (a Lua filter): sources[0].username; copy mode needs no such right', async () => {
    const filter = workPath('no-delete.lua');
    writeFileSync(
      filter,
      [
        'function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)',
        "  return not (method == 'DELETE' or (method == 'POST' and uri == '/tools/bulk-delete'))",
        'end',
      ].join('\n'),
    );
    const [destination, source] = await startServers(fleet, [
      'destination',
      { name: 'site-a', extraConfig: { LuaScripts: [filter] } },
    ]);
    const raw = configFor([{ id: 'site-a', server: source }], destination);
    const found = await expectOneMistake(
      raw,
      'sources[0].username',
      /refuses deletion .*\(403 to POST \/tools\/bulk-delete\)/,
    );
    expect(found?.fix).toMatch(/deleteAfterForward: false/);
    const copying = await checkOf({ ...raw, deleteAfterForward: false });
    expect(copying.code, JSON.stringify(copying.report)).toBe(0);
  });

  it('push mode: a pushServerName the source does not declare names destination.pushServerName', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const raw = withDestination(configFor([{ id: 'site-a', server: source }], destination), {
      transfer: 'push',
      pushServerName: 'cloud',
    });
    await expectOneMistake(
      raw,
      'destination.pushServerName',
      /declares no DicomWeb server 'cloud' \(it declares none\)/,
    );
  });

  it('a closed port and a name that does not resolve: stop a one-shot run at once (exit 1), not a service', async () => {
    const [destination] = await startServers(fleet, ['destination']);
    const closed = `http://127.0.0.1:${await closedPort()}`;
    const raw = {
      ...configFor([], destination),
      sources: [
        { id: 'site-a', url: closed, username: 'orthanc', password: 'orthanc' },
        { id: 'site-b', url: 'http://nonexistent.invalid:8042', username: 'orthanc', password: 'orthanc' },
      ],
    };
    const { code, report } = await checkOf(raw);
    expect(code).toBe(1);
    expect(problemsOf(report)).toEqual([
      expect.objectContaining({
        field: 'sources[0].url',
        kind: 'unreachable',
        problem: `nothing answers at ${closed} (ECONNREFUSED)`,
      }),
      expect.objectContaining({
        field: 'sources[1].url',
        kind: 'unreachable',
        problem: expect.stringMatching(
          /^the host name of http:\/\/nonexistent\.invalid:8042 does not resolve \((ENOTFOUND|EAI_AGAIN|EAI_FAIL)\)$/,
        ),
      }),
    ]);

    const oneShot = await runUntilIdle(raw);
    expect(oneShot.code, oneShot.stderr).toBe(1);
    expect(oneShot.stderr).toContain('orthanc-forwarder: sources[0].url: nothing answers at');
    expect(oneShot.stderr).toContain('orthanc-forwarder: sources[1].url: the host name of');
    expect(oneShot.stderr).not.toMatch(STACK);

    // A service goes on, warning of each server by its field, and retries them as it runs.
    const warned = new Set<unknown>();
    const service = startProcess(
      BIN,
      ['run', '--config', writeConfig(raw), '--state', workPath('service.sqlite')],
      {
        onLine: (line) => {
          const entry = parseLogLine(line);
          if (entry?.message === 'server unreachable at start: the run goes on and retries it')
            warned.add(entry.field);
          if (entry?.message === 'source poll failed') warned.add(`polled ${entry.sourceId}`);
        },
      },
    );
    await until(async () =>
      ['sources[0].url', 'sources[1].url', 'polled site-a'].every((seen) => warned.has(seen)),
    );
    service.child.kill('SIGTERM');
    const stopped = await service.done;
    expect(stopped.code, stopped.stderr).toBe(0);

    // Paused, they are neither checked at start nor read: the one-shot run has nothing to wait for.
    for (const source of ['site-a', 'site-b']) {
      const paused = await cli([
        'pause',
        source,
        '--config',
        writeConfig(raw),
        '--state',
        workPath('state.sqlite'),
      ]);
      expect(paused.code, paused.stderr).toBe(0);
    }
    const whilePaused = await runUntilIdle(raw);
    expect(whilePaused.code, whilePaused.stderr).toBe(0);
    expect(whilePaused.stderr).not.toContain('orthanc-forwarder: sources[');
  });

  it('--aws reads the secrets as the stack does: a wrong password, a secret missing, one malformed', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const secrets = new SecretsManagerStandIn();
    await secrets.start();
    closeAfterTest({ close: () => secrets.stop() });
    const env = { ...process.env, ...emulatorEnv({ secretsManager: secrets.endpoint }) };
    const raw = configFor([{ id: 'site-a', server: source }], destination);
    const fromSecrets = {
      ...raw,
      sources: [{ id: 'site-a', url: source.url, secretId: 'forwarder/site-a' }],
      destination: { url: destination.dicomWebUrl, secretId: 'forwarder/destination' },
    };
    secrets.put('forwarder/site-a', { username: source.username, password: 'rotated-elsewhere' });
    secrets.put('forwarder/ca', { pem: 'not the form' });

    const withCa = {
      ...fromSecrets,
      destination: { ...fromSecrets.destination, caSecretId: 'forwarder/ca' },
    };
    const result = await cli(['check', '--aws', '--config', writeConfig(withCa), '--json'], env);
    expect(result.code, result.stderr).toBe(1);
    const report = JSON.parse(result.stdout) as PreflightReport;
    expect(problemsOf(report)).toEqual([
      expect.objectContaining({
        field: 'sources[0].secretId',
        kind: 'mistake',
        problem: expect.stringMatching(/refused the credentials \(401/),
      }),
      expect.objectContaining({
        field: 'destination.secretId',
        problem: expect.stringMatching(
          /^cannot read the secret 'forwarder\/destination' \(.*can't find the specified secret/,
        ),
      }),
      expect.objectContaining({
        field: 'destination.caSecretId',
        problem: `the secret 'forwarder/ca' must be JSON {"ca": "-----BEGIN CERTIFICATE-----…"}`,
        fix: 'store the secret in that form',
      }),
    ]);

    secrets.put('forwarder/site-a', { username: source.username, password: source.password });
    secrets.put('forwarder/destination', { username: destination.username, password: destination.password });
    const good = await cli(['check', '--aws', '--config', writeConfig(fromSecrets)], env);
    expect(good.code, good.stdout + good.stderr).toBe(0);
    // Without --aws, a secret cannot be read: a configuration error naming the field.
    const local = await cli(['check', '--config', writeConfig(fromSecrets)]);
    expect(local.code).toBe(2);
    expect(local.stderr).toMatch(/^orthanc-forwarder: sources\[0\]\.secretId: /);
  });
});

describe('a state file that cannot be used', () => {
  const { workPath } = useTestbed('check-state');

  const config = () => {
    const path = workPath('forwarder.json');
    writeFileSync(
      path,
      JSON.stringify({
        sources: [{ id: 'site-a', url: 'http://127.0.0.1:8042' }],
        destination: { url: 'http://127.0.0.1:8043/dicom-web' },
      }),
    );
    return path;
  };

  /** A file of the test's folder with this content: its path. */
  const written = (name: string, content: string): string => {
    writeFileSync(workPath(name), content);
    return workPath(name);
  };

  it.each([
    [
      'in a folder that does not exist',
      () => workPath('missing', 'state.sqlite'),
      /cannot be created: \S+missing is not an existing folder; create it, or give --state another file/,
    ],
    [
      'under a file',
      () => join(written('plain', ''), 'state.sqlite'),
      /cannot be created: \S+plain is not an existing folder/,
    ],
    ['a folder', () => workPath(), /is a folder: give --state a file, e\.g\. \S+forwarder\.state\.sqlite/],
    [
      'not SQLite',
      () => written('notes.txt', 'not a database '.repeat(100)),
      /is not a SQLite database: give --state the forwarder's own state file, or a new file/,
    ],
  ])('%s: exit 2 and a sentence, no stack trace, for run and status', async (_case, statePath, message) => {
    const path = statePath();
    for (const command of [['run', '--until-idle'], ['status']]) {
      const result = await cli([...command, '--config', config(), '--state', path]);
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toMatch(
        new RegExp(`^orthanc-forwarder: the state file ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `),
      );
      expect(result.stderr).toMatch(message);
      expect(result.stderr).not.toMatch(STACK);
      expect(result.stderr).not.toContain('unable to open database file');
    }
  });
});
