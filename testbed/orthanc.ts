/**
 * Starts real Orthanc servers on loopback for the tests, the demo and the benchmark, and
 * makes sure none outlives the process that started it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  accessSync,
  constants,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { listenOnLoopback } from './loopback.ts';

export const DEFAULT_ORTHANC_BIN = '/usr/sbin/Orthanc';
export const DICOMWEB_PLUGIN = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';
/** Every process the launcher starts is told this, so a sweep can find leftovers by command line. */
export const TESTBED_MARKER = 'orthanc-forwarder-testbed';

const INSTALL_HINT =
  'Install it with: sudo apt-get install -y orthanc orthanc-dicomweb ' +
  '(or run scripts/install-prerequisites.sh), or set ORTHANC_BIN to its path.';

export interface DicomWebServerEntry {
  readonly url: string;
  readonly username: string;
  readonly password: string;
}

export interface OrthancOptions {
  /** Shown in Orthanc's /system and in the storage folder's name. */
  readonly name?: string;
  /** Seconds without a new instance before Orthanc calls a study stable. */
  readonly stableAge?: number;
  readonly username?: string;
  readonly password?: string;
  /** Remote DICOMweb servers this Orthanc can push to (its `DicomWeb.Servers`). */
  readonly dicomWebServers?: Readonly<Record<string, DicomWebServerEntry>>;
  /** Any further Orthanc configuration, merged last. */
  readonly extraConfig?: Readonly<Record<string, unknown>>;
}

const running = new Set<ChildProcess>();

/** Last resort for a test that dies without its teardown: no Orthanc outlives its parent. */
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

const freePort = async (): Promise<number> => {
  const server = createServer();
  try {
    return await listenOnLoopback(server);
  } finally {
    server.close();
  }
};

const orthancBinary = (): string => {
  const bin = process.env.ORTHANC_BIN ?? DEFAULT_ORTHANC_BIN;
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`Orthanc is not installed at ${bin}. ${INSTALL_HINT}`);
  }
  accessSync(DICOMWEB_PLUGIN, constants.R_OK);
  return bin;
};

const testbedRoot = (): string => {
  const root = process.env.ORTHANC_TESTBED_ROOT ?? join(tmpdir(), TESTBED_MARKER);
  mkdirSync(root, { recursive: true });
  return root;
};

export class OrthancServer {
  readonly name: string;
  readonly username: string;
  readonly dir: string;
  httpPort = 0;
  dicomPort = 0;
  private readonly options: OrthancOptions;
  private child: ChildProcess | undefined;
  private currentPassword: string;

  constructor(options: OrthancOptions = {}) {
    this.options = options;
    this.name = options.name ?? 'orthanc';
    this.username = options.username ?? 'orthanc';
    this.currentPassword = options.password ?? 'orthanc';
    this.dir = mkdtempSync(join(testbedRoot(), `${this.name}-`));
  }

  get password(): string {
    return this.currentPassword;
  }

  get url(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  get dicomWebUrl(): string {
    return `${this.url}/dicom-web`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get authorization(): string {
    return `Basic ${Buffer.from(`${this.username}:${this.password}`).toString('base64')}`;
  }

  /** Starts on free ports (or, after a stop, on the same ports and storage). */
  async start(): Promise<void> {
    const bin = orthancBinary();
    const samePorts = this.httpPort !== 0;
    for (let attempt = 1; ; attempt++) {
      if (!samePorts) {
        this.httpPort = await freePort();
        this.dicomPort = await freePort();
      }
      const configPath = this.writeConfig();
      try {
        await this.launch(bin, configPath);
        return;
      } catch (error) {
        // Another process may have taken a port between our probe and Orthanc's bind.
        if (attempt >= 3 || samePorts) throw error;
      }
    }
  }

  private writeConfig(): string {
    const storage = join(this.dir, 'storage');
    mkdirSync(storage, { recursive: true });
    const servers = Object.fromEntries(
      Object.entries(this.options.dicomWebServers ?? {}).map(([key, s]) => [
        key,
        [s.url, s.username, s.password],
      ]),
    );
    const config = {
      Name: this.name,
      StorageDirectory: storage,
      IndexDirectory: storage,
      HttpPort: this.httpPort,
      DicomPort: this.dicomPort,
      DicomAet:
        this.name
          .toUpperCase()
          .replace(/[^A-Z0-9]/g, '')
          .slice(0, 16) || 'ORTHANC',
      RemoteAccessAllowed: false,
      AuthenticationEnabled: true,
      RegisteredUsers: { [this.username]: this.password },
      StableAge: this.options.stableAge ?? 2,
      SaveJobs: false,
      Plugins: [DICOMWEB_PLUGIN],
      DicomWeb: { Enable: true, Root: '/dicom-web/', Servers: servers },
      [TESTBED_MARKER]: true,
      ...this.options.extraConfig,
    };
    const path = join(this.dir, `${TESTBED_MARKER}.json`);
    writeFileSync(path, JSON.stringify(config, null, 2));
    return path;
  }

  private async launch(bin: string, configPath: string): Promise<void> {
    const log = openSync(join(this.dir, 'orthanc.log'), 'a');
    const child = spawn(bin, [configPath], { stdio: ['ignore', log, log] });
    running.add(child);
    child.once('exit', () => running.delete(child));
    this.child = child;
    try {
      await this.waitUntilAnswering(child);
    } catch (error) {
      await this.kill();
      throw error;
    }
  }

  private async waitUntilAnswering(child: ChildProcess): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`Orthanc '${this.name}' exited at start:\n${this.logTail()}`);
      }
      try {
        const response = await fetch(`${this.url}/system`, {
          headers: { authorization: this.authorization },
          signal: AbortSignal.timeout(1_000),
        });
        await response.body?.cancel();
        if (response.ok) return;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
    throw new Error(`Orthanc '${this.name}' did not answer within 30 s:\n${this.logTail()}`);
  }

  logTail(lines = 20): string {
    try {
      return readFileSync(join(this.dir, 'orthanc.log'), 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** Graceful stop: SIGTERM, then SIGKILL if it has not exited within 10 s. */
  async stop(): Promise<void> {
    await this.signalAndWait('SIGTERM', 10_000);
  }

  /** Crash: SIGKILL. The storage stays, as after a power cut. */
  async kill(): Promise<void> {
    await this.signalAndWait('SIGKILL', 10_000);
  }

  private async signalAndWait(signal: NodeJS.Signals, graceMs: number): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGCONT');
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
    this.child = undefined;
  }

  /** Freezes the process (SIGSTOP): it keeps its sockets but answers nothing. */
  /**
   * SIGSTOP is delivered to each of Orthanc's threads on its own time: resolves once every
   * thread is stopped, so that a request sent next cannot still be answered.
   */
  async pause(): Promise<void> {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    this.child?.kill('SIGSTOP');
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline && !allThreadsStopped(pid)) await sleep(5);
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** Stops and starts again on the same ports and storage. */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /**
   * A password rotation: Orthanc reads its users only at start, so it restarts (same ports and
   * storage) with the new password, and the old one is refused from then on.
   */
  async changePassword(password: string): Promise<void> {
    await this.stop();
    this.currentPassword = password;
    await this.start();
  }

  /** Stops the server and deletes its storage. */
  async destroy(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A REST call for tests and tools; throws on a non-2xx answer. */
  async rest<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: this.authorization, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      signal: AbortSignal.timeout(60_000),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}: ${text.slice(0, 200)}`);
    return (text === '' ? undefined : JSON.parse(text)) as T;
  }
}

/** A group of servers started together and always torn down together. */
export class OrthancFleet {
  readonly servers: OrthancServer[] = [];

  async start(options: OrthancOptions = {}): Promise<OrthancServer> {
    const server = new OrthancServer(options);
    this.servers.push(server);
    await server.start();
    return server;
  }

  async destroyAll(): Promise<void> {
    await Promise.allSettled(this.servers.map((server) => server.destroy()));
    this.servers.length = 0;
  }
}

/**
 * Kills every testbed process (Orthanc, DynamoDB Local) still running under a root folder, found by its command line:
 * the safety net of a test run whose workers died before their teardown.
 */
export const sweepLeftovers = (root: string): number => {
  let killed = 0;
  for (const pid of listPids()) {
    let commandLine: string;
    try {
      commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (commandLine.includes(root) && commandLine.includes(TESTBED_MARKER)) {
      try {
        process.kill(pid, 'SIGKILL');
        killed++;
      } catch {
        // Already gone.
      }
    }
  }
  return killed;
};

const listPids = (): number[] => {
  try {
    return readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .map(Number);
  } catch {
    return [];
  }
};

/** Every thread of the process is in the stopped state ('T' in /proc/<pid>/task/<tid>/stat). */
const allThreadsStopped = (pid: number): boolean => {
  try {
    return readdirSync(`/proc/${pid}/task`).every((tid) => {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
    });
  } catch {
    // Gone: nothing left to answer.
    return true;
  }
};
