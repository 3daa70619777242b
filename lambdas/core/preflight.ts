/**
 * The pre-flight check: asks every server of the configuration, within seconds and without
 * changing anything, whether a move can work — reachable (DNS, TCP, TLS), credentials accepted,
 * the right kind of endpoint, the rights the move needs — and which versions it runs. Each
 * problem names the field of the configuration to fix. `orthanc-forwarder check` prints it; `run`
 * does it at start (bin/check.ts).
 */
import type { Dispatcher } from 'undici';
import type { AuthConfig } from './auth-config.ts';
import { checkAuthSecret } from './authorizers.ts';
import {
  type AlternateConfig,
  ConfigError,
  type DestinationConfig,
  destinationField,
  type ForwarderConfig,
  type ServerConfig,
} from './config.ts';
import { type SecretReader, secretCredentials, secretTlsMaterial } from './credentials.ts';
import { describe, ForwarderError } from './errors.ts';
import { type CallOptions, call, createEndpoint, type Endpoint, isTransientStatus } from './http.ts';

/**
 * `mistake`: retrying cannot fix it, an operator must (a password, a URL, the CA to trust, a
 * right). `unreachable`: the server or the network may be back later (refused, timed out, a name
 * that does not resolve now, a 5xx).
 */
export type ProblemKind = 'mistake' | 'unreachable';

export interface PreflightProblem {
  /** Where to fix it: `sources[1].password`, `destinations[0].url`, … */
  readonly field: string;
  readonly kind: ProblemKind;
  /** What was found: the server's origin, a status or an error code; never an answer's content. */
  readonly problem: string;
  readonly fix: string;
}

export interface ServerCheck {
  /** Where the server is in the configuration: `sources[0]`, `destination`, `destinations[1].alternate`. */
  readonly field: string;
  readonly role: 'source' | 'destination';
  /** The source's or the destination's id. */
  readonly id: string;
  readonly url: string;
  /** Orthanc's version, when the server is (or the destination's `orthancUrl` is) an Orthanc. */
  readonly orthanc?: string;
  /** The DICOMweb plugin's version there, or `absent`. */
  readonly dicomWeb?: string;
  /** What was verified, in order. */
  readonly verified: readonly string[];
  readonly problems: readonly PreflightProblem[];
}

export interface PreflightReport {
  readonly ok: boolean;
  readonly servers: readonly ServerCheck[];
}

export interface PreflightOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Where `secretId`, `caSecretId` and `clientCertSecretId` are read (`check --aws`). */
  readonly secrets?: SecretReader;
  /** Longest wait for a connection, and for an answer: an unreachable server is told in seconds. */
  readonly timeoutMs?: number;
  /** Sources not to ask (paused ones, at the start of `run`: nobody should be bothered there). */
  readonly skipSources?: ReadonlySet<string>;
}

const DEFAULT_TIMEOUT_MS = 5_000;
/** Larger answers are not read: every request here asks for a small one. */
const MAX_ANSWER_BYTES = 1 << 20;

/** Certificate codes that say our trust store does not know who signed the server's certificate. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
]);
const TLS_CODE = /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|ERR_SSL|EPROTO/;
const DNS_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL']);
const CLOSED_CODES = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

interface Answer {
  readonly status: number;
  readonly type: string;
  /** The JSON body when it is JSON and small; undefined otherwise. */
  readonly body: unknown;
}

/** What one server's check has found so far. */
interface Tally {
  orthanc?: string;
  dicomWeb?: string;
  readonly verified: string[];
  readonly problems: PreflightProblem[];
}

/** One endpoint of a server being checked; `quiet` for a question whose failure is no problem. */
interface Probe {
  readonly field: string;
  readonly server: ServerConfig;
  readonly endpoint: Endpoint;
  readonly tally: Tally;
  readonly quiet: boolean;
}

const report = (probe: Probe, problem: Omit<PreflightProblem, 'field'> & { key: string }): void => {
  if (probe.quiet) return;
  const { key, ...rest } = problem;
  probe.tally.problems.push({ field: `${probe.field}.${key}`, ...rest });
};

const readAnswer = async (response: Dispatcher.ResponseData): Promise<unknown> => {
  if (!String(response.headers['content-type'] ?? '').includes('json')) {
    await response.body.dump();
    return undefined;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response.body) {
    size += (chunk as Buffer).length;
    if (size > MAX_ANSWER_BYTES) {
      response.body.destroy();
      return undefined;
    }
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return undefined;
  }
};

/** How a connection failure reads to an operator, and which setting it points at. */
const networkProblem = (probe: Probe, error: unknown): Omit<PreflightProblem, 'field'> & { key: string } => {
  const origin = probe.endpoint.label;
  const cause = error instanceof ForwarderError ? error.cause : error;
  const code = String((cause as { code?: unknown } | undefined)?.code ?? (cause as Error | undefined)?.name);
  const { server } = probe;
  if (UNTRUSTED.has(code)) {
    const ownCa = server.caFile !== undefined || server.caSecretId !== undefined;
    return {
      key: server.caSecretId === undefined ? 'caFile' : 'caSecretId',
      kind: 'mistake',
      problem: `the certificate of ${origin} is not trusted (${code})`,
      fix: ownCa
        ? 'the CA given does not sign it: give the CA that does'
        : 'give the CA that signed it in caFile (on AWS: caSecretId)',
    };
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return {
      key: 'url',
      kind: 'mistake',
      problem: `the certificate of ${origin} is for another name (${code})`,
      fix: 'use the host name the certificate is for in the URL',
    };
  }
  if (TLS_CODE.test(code)) {
    return {
      key: 'url',
      kind: 'mistake',
      problem: `TLS with ${origin} failed (${code})`,
      fix: origin.startsWith('https:')
        ? 'check that the server speaks HTTPS at this port (http:// if it does not), and that its certificate is valid'
        : 'check the URL',
    };
  }
  if (DNS_CODES.has(code)) {
    return {
      key: 'url',
      kind: 'unreachable',
      problem: `the host name of ${origin} does not resolve (${code})`,
      fix: "check the host name in the URL, and this machine's DNS (a name that only a VPN's DNS knows needs the VPN up)",
    };
  }
  if (code === 'ECONNREFUSED') {
    return {
      key: 'url',
      kind: 'unreachable',
      problem: `nothing answers at ${origin} (${code})`,
      fix: 'check the port in the URL, and that the server is running',
    };
  }
  if (CLOSED_CODES.has(code)) {
    const withoutCertificate = server.clientCertFile === undefined && server.clientCertSecretId === undefined;
    return {
      key: 'url',
      kind: 'unreachable',
      problem: `${origin} closed the connection (${code})`,
      fix: origin.startsWith('https:')
        ? withoutCertificate
          ? 'if it requires a client certificate, give clientCertFile and clientKeyFile (on AWS: clientCertSecretId)'
          : 'check that it accepts the client certificate given'
        : 'if the server speaks HTTPS at this port, use https://',
    };
  }
  return {
    key: 'url',
    kind: 'unreachable',
    problem: `${origin} did not answer (${code})`,
    fix: 'check the host and port in the URL, the network and the firewalls between',
  };
};

/** Asks; a connection failure is reported (unless quiet) and gives undefined. */
const ask = async (probe: Probe, path: string, options: CallOptions = {}): Promise<Answer | undefined> => {
  try {
    const response = await call(probe.endpoint, path, 'checking', options);
    return {
      status: response.statusCode,
      type: String(response.headers['content-type'] ?? ''),
      body: await readAnswer(response),
    };
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    report(probe, networkProblem(probe, error));
    return undefined;
  }
};

/** The setting a refusal of the credentials points at: wherever the password comes from. */
const credentialsKey = (server: ServerConfig): string =>
  server.secretId !== undefined
    ? 'secretId'
    : server.username === undefined
      ? 'username'
      : server.passwordEnv !== undefined
        ? 'passwordEnv'
        : 'password';

/**
 * A refusal of the credentials (401, 403) or a server error (5xx, 408, 429), reported; false for
 * any other status, which the caller judges.
 */
const refused = (probe: Probe, answer: Answer, request: string): boolean => {
  const origin = probe.endpoint.label;
  if (answer.status === 401 || answer.status === 403) {
    const key = credentialsKey(probe.server);
    report(probe, {
      key,
      kind: 'mistake',
      problem: `${origin} refused ${key === 'username' ? 'access without credentials' : 'the credentials'} (${answer.status} to ${request})`,
      fix:
        key === 'username'
          ? 'give username and password (or passwordEnv; on AWS secretId)'
          : key === 'secretId'
            ? 'put the right username and password in the secret'
            : 'check username and password',
    });
    return true;
  }
  if (isTransientStatus(answer.status)) {
    report(probe, {
      key: 'url',
      kind: 'unreachable',
      problem: `${origin} answered ${answer.status} to ${request}`,
      fix: 'the server is in trouble or overloaded: see its logs',
    });
    return true;
  }
  return false;
};

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** Orthanc's `/system`, whose Version is the server's version. */
const orthancVersion = (answer: Answer): string | undefined =>
  answer.status === 200 && isObject(answer.body) && typeof answer.body.Version === 'string'
    ? answer.body.Version
    : undefined;

/** An Orthanc REST API at the probe's URL: true when it answered as one (and its version is kept). */
const checkOrthanc = async (probe: Probe, key: 'url' | 'orthancUrl'): Promise<boolean> => {
  const answer = await ask(probe, '/system');
  if (answer === undefined || refused(probe, answer, 'GET /system')) return false;
  const version = orthancVersion(answer);
  if (version === undefined) {
    const url = probe.endpoint.baseUrl;
    report(probe, {
      key,
      kind: 'mistake',
      problem: `${url} is not an Orthanc REST API (GET /system answered ${answer.status})`,
      fix: url.endsWith('/dicom-web')
        ? 'give the Orthanc REST root: without /dicom-web'
        : 'give the Orthanc REST root (e.g. http://host:8042)',
    });
    return false;
  }
  probe.tally.orthanc = version;
  if (!probe.quiet) probe.tally.verified.push(key === 'url' ? 'Orthanc REST API' : 'orthancUrl');
  return true;
};

/** The DICOMweb plugin's version at an Orthanc, or `absent`. */
const checkDicomWebPlugin = async (probe: Probe): Promise<void> => {
  const plugins = await ask(probe, '/plugins');
  if (plugins === undefined || refused(probe, plugins, 'GET /plugins')) return;
  if (!Array.isArray(plugins.body) || !plugins.body.includes('dicom-web')) {
    probe.tally.dicomWeb = 'absent';
    return;
  }
  const plugin = await ask(probe, '/plugins/dicom-web');
  probe.tally.dicomWeb =
    plugin !== undefined && isObject(plugin.body) && typeof plugin.body.Version === 'string'
      ? plugin.body.Version
      : 'present';
};

/**
 * Whether the source lets us delete, without deleting anything: a bulk deletion of no resource.
 * Orthanc 1.10 answers 200 and deletes nothing; a refusal by its authorization, a Lua
 * IncomingHttpRequestFilter or a proxy in front answers 401, 403 or 405.
 */
const checkDeletion = async (probe: Probe): Promise<void> => {
  const request = 'POST /tools/bulk-delete';
  const answer = await ask(probe, '/tools/bulk-delete', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ Resources: [] }),
  });
  if (answer === undefined) return;
  // 400: it reached Orthanc's handler, which judged an empty list: the deletion itself is allowed.
  if ((answer.status >= 200 && answer.status < 300) || answer.status === 400) {
    probe.tally.verified.push('deletion allowed');
    return;
  }
  const origin = probe.endpoint.label;
  if ([401, 403, 405].includes(answer.status)) {
    report(probe, {
      key: 'username',
      kind: 'mistake',
      problem: `${origin} refuses deletion to this user (${answer.status} to ${request}): moved studies could never leave it`,
      fix: 'let this user delete (Orthanc authorization, Lua IncomingHttpRequestFilter or the proxy in front), or copy instead (deleteAfterForward: false)',
    });
    return;
  }
  if (refused(probe, answer, request)) return;
  report(probe, {
    key: 'url',
    kind: 'mistake',
    problem: `${origin} has no bulk deletion (${answer.status} to ${request})`,
    fix: 'use an Orthanc version with POST /tools/bulk-delete',
  });
};

/** The destinations a source must push to itself (`transfer: 'push'`), with their fields. */
const pushServers = (config: ForwarderConfig): { field: string; name: string }[] =>
  config.destinations.flatMap((destination, index) => {
    if (destination.transfer !== 'push') return [];
    const field = destinationField(config, index);
    return [
      { field: `${field}.pushServerName`, name: destination.pushServerName },
      { field: `${field}.alternate.pushServerName`, name: destination.alternate?.pushServerName },
    ].flatMap(({ field, name }) => (name === undefined ? [] : [{ field, name }]));
  });

/** In push mode, the source sends: it needs the DICOMweb plugin and every destination declared. */
const checkPushServers = async (probe: Probe, config: ForwarderConfig, sourceId: string): Promise<void> => {
  const wanted = pushServers(config);
  if (wanted.length === 0) return;
  const problem = (field: string, text: string, fix: string) =>
    probe.tally.problems.push({ field, kind: 'mistake', problem: text, fix });
  if (probe.tally.dicomWeb === 'absent') {
    for (const { field } of wanted) {
      problem(
        field,
        `source '${sourceId}' has no DICOMweb plugin: it cannot push`,
        "enable Orthanc's DICOMweb plugin at the source, or use transfer 'relay'",
      );
    }
    return;
  }
  const answer = await ask(probe, '/dicom-web/servers');
  if (answer === undefined || refused(probe, answer, 'GET /dicom-web/servers')) return;
  const declared = Array.isArray(answer.body) ? answer.body.filter((name) => typeof name === 'string') : [];
  for (const { field, name } of wanted) {
    if (declared.includes(name)) {
      probe.tally.verified.push(`push server '${name}' declared`);
      continue;
    }
    problem(
      field,
      `source '${sourceId}' declares no DicomWeb server '${name}' (it declares ${declared.length === 0 ? 'none' : declared.map((n) => `'${n}'`).join(', ')})`,
      `declare it in DicomWeb.Servers of the source's Orthanc configuration, or give the name it has there`,
    );
  }
};

/** A QIDO-RS answer: none found (204), or a DICOM JSON list of studies. */
const isQido = (answer: Answer): boolean =>
  answer.status === 204 ||
  (answer.status === 200 &&
    (answer.type.includes('application/dicom+json') ||
      (Array.isArray(answer.body) && answer.body.every(isObject))));

const QIDO_PROBE = '/studies?limit=1';
const QIDO_HEADERS = { accept: 'application/dicom+json' };

/** A DICOMweb root at the destination's URL; when it is not, whether it is one folder down. */
const checkQido = async (probe: Probe): Promise<boolean> => {
  const answer = await ask(probe, QIDO_PROBE, { headers: QIDO_HEADERS });
  if (answer === undefined) return false;
  if (isQido(answer)) {
    probe.tally.verified.push('QIDO-RS');
    return true;
  }
  if (refused(probe, answer, 'GET /studies')) return false;
  const url = probe.endpoint.baseUrl;
  const below = await ask({ ...probe, quiet: true }, `/dicom-web${QIDO_PROBE}`, { headers: QIDO_HEADERS });
  report(
    probe,
    below !== undefined && isQido(below)
      ? {
          key: 'url',
          kind: 'mistake',
          problem: `${url} is not a DICOMweb root (GET /studies answered ${answer.status}), ${url}/dicom-web is`,
          fix: `set the URL to ${url}/dicom-web`,
        }
      : {
          key: 'url',
          kind: 'mistake',
          problem: `${url} does not answer QIDO-RS (GET /studies answered ${answer.status})`,
          fix: "give the destination's DICOMweb root (an Orthanc's is its REST root followed by /dicom-web)",
        },
  );
  return false;
};

/** Reads each secret the server names, each failure a problem of its own field. */
const checkSecrets = async (
  field: string,
  server: ServerConfig,
  read: SecretReader,
  tally: Tally,
): Promise<void> => {
  const reads: [string, string | undefined, () => Promise<unknown>][] = [
    [
      'secretId',
      server.secretId,
      () => secretCredentials({ secretId: server.secretId ?? '', username: server.username }, read).header(),
    ],
    ['caSecretId', server.caSecretId, () => secretTlsMaterial({ caSecretId: server.caSecretId }, read)],
    [
      'clientCertSecretId',
      server.clientCertSecretId,
      () => secretTlsMaterial({ clientCertSecretId: server.clientCertSecretId }, read),
    ],
  ];
  const { auth } = server as { readonly auth?: AuthConfig };
  if (auth !== undefined && 'secretId' in auth) {
    reads.push(['auth.secretId', auth.secretId, () => checkAuthSecret(auth, read)]);
  }
  for (const [key, secretId, load] of reads) {
    if (secretId === undefined) continue;
    try {
      await load();
    } catch (error) {
      const malformed = error instanceof ConfigError;
      tally.problems.push({
        field: `${field}.${key}`,
        kind: 'mistake',
        problem: malformed
          ? `the secret '${secretId}' ${error.message.replace(/^[\w.]+: the secret /, '')}`
          : `cannot read the secret '${secretId}' (${describe(error)})`,
        fix: malformed
          ? 'store the secret in that form'
          : 'create the secret, or let these credentials read it (secretsmanager:GetSecretValue, kms:Decrypt)',
      });
    }
  }
};

interface Checked {
  readonly field: string;
  readonly role: ServerCheck['role'];
  readonly id: string;
  readonly server: ServerConfig;
}

/**
 * Checks one server with `steps`, on endpoints made for it with short timeouts (closed at the
 * end); its secrets are read first, and a server whose secret cannot be read is not asked.
 */
const checkServer = async (
  checked: Checked,
  config: ForwarderConfig,
  options: PreflightOptions,
  steps: (probeOf: (server: ServerConfig, quiet?: boolean) => Probe) => Promise<void>,
): Promise<ServerCheck> => {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const timeouts = {
    connectMs: Math.min(config.timeouts.connectMs, timeoutMs),
    headersMs: Math.min(config.timeouts.headersMs, timeoutMs),
    bodyMs: Math.min(config.timeouts.bodyMs, timeoutMs),
  };
  const tally: Tally = { verified: [], problems: [] };
  const endpoints: Endpoint[] = [];
  const probeOf = (server: ServerConfig, quiet = false): Probe => {
    const endpoint = createEndpoint(server, timeouts, {
      connections: 1,
      ...(options.env === undefined ? {} : { env: options.env }),
      ...(options.secrets === undefined ? {} : { secrets: options.secrets }),
      field: checked.field,
    });
    endpoints.push(endpoint);
    return { field: checked.field, server, endpoint, tally, quiet };
  };
  try {
    if (options.secrets !== undefined)
      await checkSecrets(checked.field, checked.server, options.secrets, tally);
    if (tally.problems.length === 0) await steps(probeOf);
  } finally {
    await Promise.allSettled(endpoints.map(async (endpoint) => (await endpoint.dispatcher()).close()));
  }
  return {
    field: checked.field,
    role: checked.role,
    id: checked.id,
    url: checked.server.url,
    ...(tally.orthanc === undefined ? {} : { orthanc: tally.orthanc }),
    ...(tally.dicomWeb === undefined ? {} : { dicomWeb: tally.dicomWeb }),
    verified: tally.verified,
    problems: tally.problems,
  };
};

const checkSource = (config: ForwarderConfig, index: number, options: PreflightOptions) => {
  const source = config.sources[index] as ForwarderConfig['sources'][number];
  const checked = { field: `sources[${index}]`, role: 'source', id: source.id, server: source } as const;
  return checkServer(checked, config, options, async (probeOf) => {
    const probe = probeOf(source);
    if (!(await checkOrthanc(probe, 'url'))) return;
    await checkDicomWebPlugin(probe);
    await checkPushServers(probe, config, source.id);
    if (config.deleteAfterForward) await checkDeletion(probe);
  });
};

/**
 * A destination (or its alternate): a DICOMweb root, and its versions when it is an Orthanc —
 * through `orthancUrl`, which must then answer, or else, quietly, the REST root its URL is under.
 */
const checkDestination = (
  config: ForwarderConfig,
  checked: Omit<Checked, 'server' | 'role'> & { readonly server: DestinationConfig | AlternateConfig },
  options: PreflightOptions,
) =>
  checkServer({ ...checked, role: 'destination' }, config, options, async (probeOf) => {
    const { server } = checked;
    if (!(await checkQido(probeOf(server)))) return;
    const orthancRoot = server.orthancUrl ?? server.url.match(/^(.*)\/dicom-web$/)?.[1];
    if (orthancRoot === undefined) return;
    const orthanc = probeOf({ ...server, url: orthancRoot }, server.orthancUrl === undefined);
    if (await checkOrthanc(orthanc, 'orthancUrl')) await checkDicomWebPlugin(orthanc);
  });

/** Checks every server at once: the sources, the destinations and their alternates. */
export const preflight = async (
  config: ForwarderConfig,
  options: PreflightOptions = {},
): Promise<PreflightReport> => {
  const servers = await Promise.all([
    ...config.sources.flatMap((source, index) =>
      options.skipSources?.has(source.id) === true ? [] : [checkSource(config, index, options)],
    ),
    ...config.destinations.flatMap((destination, index) => {
      const field = destinationField(config, index);
      return [
        checkDestination(config, { field, id: destination.id, server: destination }, options),
        ...(destination.alternate === undefined
          ? []
          : [
              checkDestination(
                config,
                { field: `${field}.alternate`, id: destination.id, server: destination.alternate },
                options,
              ),
            ]),
      ];
    }),
  ]);
  return { ok: servers.every((server) => server.problems.length === 0), servers };
};
