/** The configuration: defaults, and errors that name the field that is wrong. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../lambdas/core/config.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import { createLog } from '../lambdas/core/log.ts';
import { loadConfigFile } from '../lambdas/local/load-config.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { captureLog } from './support/harness.ts';
import { cli } from './support/processes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The minimal configuration as the README shows it: the test keeps the documentation honest. */
const readmeConfig = (): Record<string, unknown> => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /```json\n([\s\S]*?)\n```/.exec(readme)?.[1];
  if (block === undefined) throw new Error('README.md has no JSON block');
  return JSON.parse(block) as Record<string, unknown>;
};

const source = { id: 'site-a', url: 'http://127.0.0.1:8042', username: 'orthanc', password: 'orthanc' };
const destination = { url: 'http://127.0.0.1:8043/dicom-web', username: 'orthanc', password: 'orthanc' };
const valid = { sources: [source], destination };

const messageOf = (raw: unknown): string => {
  try {
    parseConfig(raw);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('the configuration was accepted');
};

describe('configuration', () => {
  const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-config-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it("parses the README's minimal configuration with every default", () => {
    const config = parseConfig(readmeConfig());
    expect(config).toEqual({
      sources: [source],
      // The short form becomes a list of one: the core sees only `destinations`.
      destinations: [{ id: 'destination', ...destination, transfer: 'relay', kind: 'orthanc' }],
      trigger: 'StableStudy',
      unrouted: 'keep',
      pollIntervalSeconds: 5,
      quietSeconds: 60,
      sweepIntervalSeconds: 600,
      changesPageSize: 1000,
      concurrency: 4,
      stow: {
        maxInstances: 50,
        maxBytes: 256 * 1024 * 1024,
        parallel: 4,
        readAheadInstances: 32,
        readAheadBytes: 4 * 1024 * 1024,
      },
      verify: 'identity',
      qidoPageSize: 1000,
      retry: { maxAttempts: 8, baseDelayMs: 2000, maxDelayMs: 300_000 },
      timeouts: { connectMs: 10_000, headersMs: 300_000, bodyMs: 60_000 },
      deleteAfterForward: true,
      retention: { outcomeDays: 90, refusalDays: 90, auditDays: 2190 },
    });
  });

  it('parses destinations with their defaults, and parsing the result again changes nothing', () => {
    const config = parseConfig({
      sources: [source],
      trigger: 'StableSeries',
      unrouted: 'delete',
      destinations: [
        { id: 'cloud', ...destination, filter: { modalities: ['CT'], studyDescription: { regex: '^CT ' } } },
        {
          id: 'archive',
          ...destination,
          transfer: 'push',
          pushServerName: 'archive',
          alternate: { ...destination, pushServerName: 'archive-2', afterSeconds: 30 },
        },
      ],
    });
    expect([config.trigger, config.unrouted]).toEqual(['StableSeries', 'delete']);
    expect(config.destinations.map((d) => [d.id, d.transfer])).toEqual([
      ['cloud', 'relay'],
      ['archive', 'push'],
    ]);
    expect(config.destinations[1]?.alternate).toEqual({
      ...destination,
      pushServerName: 'archive-2',
      afterSeconds: 30,
      kind: 'orthanc',
    });
    // The AWS pipeline hands the parsed configuration to its Lambdas, which parse it again.
    expect(parseConfig(JSON.parse(JSON.stringify(config)))).toEqual(config);
    const short = parseConfig(readmeConfig());
    expect(parseConfig(JSON.parse(JSON.stringify(short)))).toEqual(short);
  });

  it('takes a verification level per destination, md5 as the older name of checksum', () => {
    const config = parseConfig({
      sources: [source],
      verify: 'md5',
      destinations: [
        { id: 'cloud', ...destination },
        { id: 'archive', ...destination, verify: 'qido' },
      ],
    });
    expect(config.verify).toBe('checksum');
    expect(config.destinations.map((d) => d.verify)).toEqual([undefined, 'qido']);
    expect(parseConfig(JSON.parse(JSON.stringify(config)))).toEqual(config);
  });

  it('drops trailing slashes from URLs', () => {
    const config = parseConfig({
      sources: [{ ...source, url: 'https://pacs.example.org/orthanc//' }],
      destination: {
        ...destination,
        url: 'https://cloud.example.org/dicom-web/',
        orthancUrl: 'https://x.org/',
      },
    });
    expect(config.sources[0]?.url).toBe('https://pacs.example.org/orthanc');
    expect(config.destinations[0]?.url).toBe('https://cloud.example.org/dicom-web');
    expect(config.destinations[0]?.orthancUrl).toBe('https://x.org');
  });

  /** Each bad configuration, and the field its error must name (at the start of a line). */
  const bad: readonly {
    readonly what: string;
    readonly raw: unknown;
    readonly field: string;
    readonly also?: string;
  }[] = [
    { what: 'missing sources', raw: { destination }, field: 'sources' },
    { what: 'empty sources', raw: { ...valid, sources: [] }, field: 'sources' },
    {
      what: 'bad source id',
      raw: { ...valid, sources: [{ ...source, id: 'site a' }] },
      field: 'sources[0].id',
    },
    {
      what: 'non-URL url',
      raw: { ...valid, sources: [{ ...source, url: 'not a url' }] },
      field: 'sources[0].url',
    },
    {
      what: 'ftp:// url',
      raw: { ...valid, destination: { ...destination, url: 'ftp://x/y' } },
      field: 'destination.url',
    },
    ...(
      [
        ['sources[0].url', { sources: [{ ...source, url: 'https://forwarder:s3cret@pacs.example.org' }] }],
        [
          'destination.url',
          { destination: { ...destination, url: 'https://forwarder@cloud.example.org/dicom-web' } },
        ],
        [
          'destination.orthancUrl',
          { destination: { ...destination, orthancUrl: 'http://:s3cret@cloud.example.org' } },
        ],
        [
          'destination.alternate.url',
          {
            destination: {
              ...destination,
              alternate: { url: 'https://u:s3cret@dr.example.org', afterSeconds: 60 },
            },
          },
        ],
      ] as const
    ).map(([field, patch]) => ({
      what: `credentials in ${field}`,
      raw: { ...valid, ...patch },
      field,
      also: 'must not carry credentials',
    })),
    {
      what: 'password and passwordEnv together',
      raw: { ...valid, sources: [{ ...source, passwordEnv: 'SITE_A_PASSWORD' }] },
      field: 'sources[0].passwordEnv',
    },
    {
      what: 'clientCertFile without clientKeyFile',
      raw: { ...valid, destination: { ...destination, clientCertFile: '/etc/forwarder/client.pem' } },
      field: 'destination.clientKeyFile',
      also: 'clientCertFile',
    },
    { what: 'unknown field (strict)', raw: { ...valid, colour: 'blue' }, field: '(root)', also: '"colour"' },
    {
      what: 'unknown nested field (strict)',
      raw: { ...valid, stow: { maxInstance: 10 } },
      field: 'stow',
      also: '"maxInstance"',
    },
    {
      what: 'unknown source field (strict)',
      raw: { ...valid, sources: [{ ...source, pasword: 'x' }] },
      field: 'sources[0]',
      also: '"pasword"',
    },
    {
      what: 'negative pollIntervalSeconds',
      raw: { ...valid, pollIntervalSeconds: -1 },
      field: 'pollIntervalSeconds',
    },
    { what: 'concurrency 0', raw: { ...valid, concurrency: 0 }, field: 'concurrency' },
    { what: 'stow.maxInstances 0', raw: { ...valid, stow: { maxInstances: 0 } }, field: 'stow.maxInstances' },
    { what: "verify 'bogus'", raw: { ...valid, verify: 'bogus' }, field: 'verify' },
    {
      what: "a destination's verify 'presence'",
      raw: { ...valid, destination: { ...destination, verify: 'presence' } },
      field: 'destination.verify',
    },
    { what: 'duplicate source ids', raw: { ...valid, sources: [source, { ...source }] }, field: 'sources' },
    {
      what: 'a username without a password',
      raw: { ...valid, sources: [{ id: 'site-a', url: 'http://127.0.0.1:8042', username: 'orthanc' }] },
      field: 'sources[0].username',
    },
    {
      what: "the destination's username without a password",
      raw: { ...valid, destination: { url: 'http://127.0.0.1:8043/dicom-web', username: 'orthanc' } },
      field: 'destination.username',
    },
    { what: 'retry.maxAttempts 0', raw: { ...valid, retry: { maxAttempts: 0 } }, field: 'retry.maxAttempts' },
    {
      what: 'timeouts.connectMs -1',
      raw: { ...valid, timeouts: { connectMs: -1 } },
      field: 'timeouts.connectMs',
    },
    {
      what: "deleteAfterForward 'yes'",
      raw: { ...valid, deleteAfterForward: 'yes' },
      field: 'deleteAfterForward',
    },
    { what: 'not an object', raw: ['sources'], field: '(root)' },
    {
      what: 'both destination and destinations',
      raw: { ...valid, destinations: [{ id: 'cloud', ...destination }] },
      field: 'destinations',
      also: 'exactly one of destination and destinations',
    },
    { what: 'neither destination nor destinations', raw: { sources: [source] }, field: 'destinations' },
    { what: 'empty destinations', raw: { sources: [source], destinations: [] }, field: 'destinations' },
    {
      what: 'a destinations entry without id',
      raw: { sources: [source], destinations: [destination] },
      field: 'destinations[0].id',
    },
    {
      what: 'duplicate destination ids',
      raw: {
        sources: [source],
        destinations: [
          { id: 'a', ...destination },
          { id: 'a', ...destination },
        ],
      },
      field: 'destinations',
    },
    {
      what: "transfer 'push' without pushServerName",
      raw: { ...valid, destination: { ...destination, transfer: 'push' } },
      field: 'destination.pushServerName',
      also: 'DicomWeb.Servers',
    },
    {
      what: "transfer 'push' with an alternate without pushServerName",
      raw: {
        sources: [source],
        destinations: [
          {
            id: 'cloud',
            ...destination,
            transfer: 'push',
            pushServerName: 'cloud',
            alternate: { url: 'https://backup.example.org/dicom-web', afterSeconds: 60 },
          },
        ],
      },
      field: 'destinations[0].alternate.pushServerName',
    },
    {
      what: "transfer 'ftp'",
      raw: { ...valid, destination: { ...destination, transfer: 'ftp' } },
      field: 'destination.transfer',
    },
    {
      what: 'an alternate without afterSeconds',
      raw: { ...valid, destination: { ...destination, alternate: { url: 'https://b.example.org' } } },
      field: 'destination.alternate.afterSeconds',
    },
    {
      what: 'a filter regex that does not compile',
      raw: { ...valid, destination: { ...destination, filter: { studyDescription: { regex: '(' } } } },
      field: 'destination.filter.studyDescription.regex',
    },
    {
      what: 'an empty modalities filter',
      raw: { ...valid, destination: { ...destination, filter: { modalities: [] } } },
      field: 'destination.filter.modalities',
    },
    {
      what: "the second destination's verify 'sha1'",
      raw: {
        sources: [source],
        destinations: [
          { id: 'a', ...destination },
          { id: 'b', ...destination, verify: 'sha1' },
        ],
      },
      field: 'destinations[1].verify',
    },
    { what: "trigger 'NewSeries'", raw: { ...valid, trigger: 'NewSeries' }, field: 'trigger' },
    {
      what: "unrouted 'delete' in copy mode",
      raw: { ...valid, unrouted: 'delete', deleteAfterForward: false },
      field: 'unrouted',
      also: 'copy mode never deletes',
    },
    {
      what: 'a time zone that is no IANA name',
      raw: { ...valid, schedule: { timeZone: 'Mars/Olympus', windows: [] } },
      field: 'schedule.timeZone',
      also: 'IANA time zone',
    },
    {
      what: "a source's window ending at 24:00",
      raw: {
        ...valid,
        sources: [
          {
            ...source,
            schedule: { timeZone: 'UTC', windows: [{ days: ['mon'], from: '19:00', to: '24:00' }] },
          },
        ],
      },
      field: 'sources[0].schedule.windows[0].to',
    },
    {
      what: "a window on day 'monday'",
      raw: {
        ...valid,
        schedule: { timeZone: 'UTC', windows: [{ days: ['monday'], from: '19:00', to: '07:00' }] },
      },
      field: 'schedule.windows[0].days[0]',
    },
    {
      what: 'a window without days',
      raw: { ...valid, schedule: { timeZone: 'UTC', windows: [{ days: [], from: '19:00', to: '07:00' }] } },
      field: 'schedule.windows[0].days',
    },
    {
      what: 'liveHours of 0',
      raw: { ...valid, schedule: { timeZone: 'UTC', windows: [], liveHours: 0 } },
      field: 'schedule.liveHours',
    },
    {
      what: "minimumAge by 'arrival'",
      raw: { ...valid, minimumAge: { hours: 24, by: 'arrival' } },
      field: 'minimumAge.by',
    },
    {
      what: "a source's negative minimumAge",
      raw: { ...valid, sources: [{ ...source, minimumAge: { hours: -1 } }] },
      field: 'sources[0].minimumAge.hours',
    },
    { what: 'maxReadMBps of 0', raw: { ...valid, maxReadMBps: 0 }, field: 'maxReadMBps' },
    {
      what: "a source's maxReadMBps as text",
      raw: { ...valid, sources: [{ ...source, maxReadMBps: '50' }] },
      field: 'sources[0].maxReadMBps',
    },
  ];

  it('takes transfer windows, a minimum age and a read rate cap, each source its own over the defaults', () => {
    const schedule = {
      timeZone: 'Europe/Berlin',
      windows: [
        { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '19:00', to: '07:00' },
        { days: ['sat', 'sun'], from: '00:00', to: '00:00' },
      ],
      liveHours: 24,
    };
    const config = parseConfig({
      ...valid,
      sources: [
        source,
        { ...source, id: 'site-b', schedule: { timeZone: 'UTC', windows: [] }, maxReadMBps: 5 },
      ],
      schedule,
      minimumAge: { hours: 168 },
      maxReadMBps: 50,
    });
    expect(config.schedule).toEqual(schedule);
    expect(config.minimumAge).toEqual({ hours: 168, by: 'received' });
    expect(config.maxReadMBps).toBe(50);
    expect(config.sources[1]).toMatchObject({ schedule: { timeZone: 'UTC', windows: [] }, maxReadMBps: 5 });
    expect(parseConfig(config)).toEqual(config);
  });

  it.each(bad)('names the field: $what', ({ raw, field, also }) => {
    const message = messageOf(raw);
    expect(message.split('\n').filter((line) => line.startsWith(`  ${field}: `))).toHaveLength(1);
    if (also !== undefined) expect(message).toContain(also);
  });

  it('never repeats the credentials of a URL it refuses', () => {
    const message = messageOf({
      ...valid,
      sources: [{ ...source, url: 'https://forwarder:s3cret@pacs.example.org' }],
    });
    expect(message).not.toContain('s3cret');
  });

  it('lists every wrong field at once', () => {
    const message = messageOf({ ...valid, concurrency: 0, verify: 'bogus', stow: { parallel: 0 } });
    for (const field of ['concurrency', 'verify', 'stow.parallel']) expect(message).toContain(`  ${field}: `);
  });

  it('names passwordEnv when its environment variable is not set, and uses it when it is', () => {
    const config = parseConfig({
      ...valid,
      sources: [{ id: 'site-a', url: source.url, username: 'orthanc', passwordEnv: 'SITE_A_PASSWORD' }],
    });
    const server = config.sources[0];
    if (server === undefined) throw new Error('no source');
    expect(() => createEndpoint(server, config.timeouts, { env: {} })).toThrow(ConfigError);
    expect(() => createEndpoint(server, config.timeouts, { env: {} })).toThrow(
      /^passwordEnv: environment variable SITE_A_PASSWORD is not set$/,
    );
    // Told where the server is in the file, the error names it.
    expect(() => createEndpoint(server, config.timeouts, { env: {}, field: 'sources[0]' })).toThrow(
      /^sources\[0\]\.passwordEnv: environment variable SITE_A_PASSWORD is not set$/,
    );
    const endpoint = createEndpoint(server, config.timeouts, { env: { SITE_A_PASSWORD: 's3cret' } });
    expect(endpoint.authorization).toBe(`Basic ${Buffer.from('orthanc:s3cret').toString('base64')}`);
    expect(endpoint.label).toBe('http://127.0.0.1:8042');
  });

  it('a runner whose passwordEnv is unset fails before it takes the state file', async () => {
    const config = parseConfig({
      ...valid,
      sources: [
        { id: 'site-a', url: source.url, username: 'orthanc', passwordEnv: 'UNSET_FORWARDER_TEST_PASSWORD' },
      ],
    });
    const state = openState(':memory:');
    try {
      const runner = new LocalRunner(config, state, createLog({ level: 'SILENT' }));
      await expect(runner.run({ untilIdle: true })).rejects.toThrow(/passwordEnv/);
      // The run holds no lease: another run may take the file at once.
      expect(await state.ledger.acquireLease('local-runner', 'another run', 15_000, Date.now())).toBe(true);
    } finally {
      state.close();
    }
  });

  it('warns at the start of a local run, once per URL, of credentials over http:// beyond this machine', async () => {
    const auth = { username: 'orthanc', password: 'orthanc' };
    const config = parseConfig({
      sources: [
        { id: 'near', url: 'http://127.0.0.1:9', ...auth },
        { id: 'far', url: 'http://192.0.2.10:8042', ...auth },
        { id: 'known', url: 'http://192.0.2.11:8042', ...auth, allowInsecureHttp: true },
        { id: 'anonymous', url: 'http://192.0.2.12:8042' },
        { id: 'tls', url: 'https://192.0.2.13:8042', ...auth },
      ],
      destinations: [
        {
          id: 'cloud',
          url: 'https://cloud.example.org/dicom-web',
          orthancUrl: 'http://[::1]:8042',
          ...auth,
          alternate: {
            url: 'http://localhost:8043/dicom-web',
            orthancUrl: 'http://dr.example.org',
            afterSeconds: 60,
            ...auth,
          },
        },
        {
          id: 'vna',
          kind: 'generic',
          url: 'http://vna.example.org/dicomweb',
          auth: { kind: 'bearer', token: 'a-token' },
        },
      ],
      timeouts: { connectMs: 200 },
    });
    const stop = new AbortController();
    const { log, entries } = captureLog((entry) => {
      // Once the run has started listening to its signal.
      if (entry.level === 'warn') setTimeout(() => stop.abort(), 0);
    });
    const state = openState(':memory:');
    // A run that never warns stops too.
    const unwarned = setTimeout(() => stop.abort(), 3_000);
    try {
      await new LocalRunner(config, state, log).run({ untilIdle: false, signal: stop.signal });
    } finally {
      clearTimeout(unwarned);
      state.close();
    }
    const warnings = entries.filter((entry) => entry.message.includes(' auth over http://'));
    expect(warnings.map((entry) => [entry.message.split(' ')[0], entry.field, entry.origin])).toEqual([
      ['basic', 'sources[1].url', 'http://192.0.2.10:8042'],
      ['basic', 'destinations[0].alternate.orthancUrl', 'http://dr.example.org'],
      ['bearer', 'destinations[1].url', 'http://vna.example.org'],
    ]);
    expect(JSON.stringify(entries)).not.toContain('a-token');
  });

  it('reads a file: a clear error for a missing file and for one that is not JSON', () => {
    const good = join(work, 'good.json');
    writeFileSync(good, JSON.stringify(readmeConfig()));
    expect(loadConfigFile(good).concurrency).toBe(4);
    const notJson = join(work, 'not-json.json');
    writeFileSync(notJson, '{ "sources": [ oops');
    expect(() => loadConfigFile(notJson)).toThrow(ConfigError);
    expect(() => loadConfigFile(notJson)).toThrow(`${notJson} is not valid JSON`);
    expect(() => loadConfigFile(join(work, 'missing.json'))).toThrow(
      /cannot read the configuration file .*ENOENT/,
    );
    const invalid = join(work, 'invalid.json');
    writeFileSync(invalid, JSON.stringify({ ...valid, concurrency: 0 }));
    expect(() => loadConfigFile(invalid)).toThrow(`invalid ${invalid}:\n  concurrency: `);
  });

  it('the CLI exits 2 and names the field on stderr', async () => {
    const invalid = join(work, 'cli-invalid.json');
    writeFileSync(invalid, JSON.stringify({ ...valid, stow: { maxInstances: 0 } }));
    const state = join(work, 'cli.sqlite');
    for (const command of ['run', 'status', 'redrive']) {
      const result = await cli([command, '--config', invalid, '--state', state]);
      expect(result.code).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toContain('  stow.maxInstances: ');
    }

    const notJson = join(work, 'cli-not-json.json');
    writeFileSync(notJson, 'sources = site-a');
    const garbled = await cli(['run', '--config', notJson, '--state', state, '--until-idle']);
    expect(garbled.code).toBe(2);
    expect(garbled.stderr).toContain(`${notJson} is not valid JSON`);

    const withEnv = join(work, 'cli-password-env.json');
    writeFileSync(
      withEnv,
      JSON.stringify({
        ...valid,
        sources: [
          {
            id: 'site-a',
            url: source.url,
            username: 'orthanc',
            passwordEnv: 'UNSET_FORWARDER_TEST_PASSWORD',
          },
        ],
      }),
    );
    const env = { ...process.env };
    delete env.UNSET_FORWARDER_TEST_PASSWORD;
    const unset = await cli(['run', '--config', withEnv, '--state', state, '--until-idle'], env);
    expect(unset.code).toBe(2);
    expect(unset.stderr).toContain(
      'sources[0].passwordEnv: environment variable UNSET_FORWARDER_TEST_PASSWORD is not set',
    );
  });
});
