/**
 * The benchmark's bench: a source and a destination Orthanc on loopback, the data sets on disk,
 * loading the source and emptying the destination between trials (never timed), and running
 * one timed operation in a child process while reading both Orthancs' CPU time around it.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLogLine } from '../../test/support/processes.ts';
import { generateStudies, writeStudies } from '../../testbed/dicom-generator.ts';
import { forwarderConfigFor } from '../../testbed/forwarder-config.ts';
import { OrthancFleet, type OrthancServer } from '../../testbed/orthanc.ts';
import { type UploadItem, uploadToOrthanc } from '../../testbed/upload.ts';
import { bundle } from '../bundle.ts';
import { RESULT_PREFIX } from './child.ts';
import type { ChildJob, ChildResult, SeriesRef, ServerRef } from './operations.ts';
import { instancesPerSeries, type RelaySettings, type Runtime, type SetShape } from './options.ts';
import { cpuSeconds, pinToCpu } from './proc.ts';

export const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));
/** The name of the destination in the source's DicomWeb.Servers, for the push. */
export const PUSH_TARGET = 'bench-destination';
const SOURCE_ID = 'bench-source';

/** A generated set written to disk once: the ceiling uploads these files, the source is loaded from them. */
export interface DataSet {
  readonly shape: SetShape;
  readonly files: readonly string[];
  readonly instances: number;
  readonly bytes: number;
}

/** One timed trial: the child's own figures and the CPU each Orthanc used meanwhile. */
export interface Trial extends ChildResult {
  readonly sourceCpuSeconds: number;
  readonly destinationCpuSeconds: number;
  /** CPU this process used meanwhile: the link emulator's, when one runs (scripts/bench/link.ts). */
  readonly benchCpuSeconds: number;
}

/** Where the relay reaches each server when not directly: the HTTP root of a link emulator. */
export interface Across {
  readonly sourceUrl?: string | undefined;
  readonly destinationUrl?: string | undefined;
}

const ref = (server: OrthancServer): ServerRef => ({
  url: server.url,
  username: server.username,
  password: server.password,
});

export class Lab {
  readonly source: OrthancServer;
  readonly destination: OrthancServer;
  readonly work: string;
  private readonly fleet: OrthancFleet;
  private jobs = 0;
  private bundled: string | undefined;

  private constructor(fleet: OrthancFleet, source: OrthancServer, destination: OrthancServer, work: string) {
    this.fleet = fleet;
    this.source = source;
    this.destination = destination;
    this.work = work;
  }

  /**
   * Starts both Orthancs. The source never calls a study stable during a run (StableAge 1 h).
   * `pin`: the destination gets CPU 1 to itself, and this process, the source and every child
   * share CPU 0 (an experiment: it does not emulate separate hosts, docs/performance.md).
   */
  static async start(work: string, options: { pin?: boolean } = {}): Promise<Lab> {
    mkdirSync(work, { recursive: true });
    if (options.pin === true) {
      if (cpus().length < 2) throw new Error('--pin needs at least 2 CPUs');
      pinToCpu(process.pid, 0);
    }
    const fleet = new OrthancFleet();
    try {
      const destination = await fleet.start({ name: 'bench-destination' });
      if (options.pin === true && destination.pid !== undefined) pinToCpu(destination.pid, 1);
      const source = await fleet.start({
        name: 'bench-source',
        stableAge: 3600,
        dicomWebServers: {
          [PUSH_TARGET]: {
            url: destination.dicomWebUrl,
            username: destination.username,
            password: destination.password,
          },
        },
        // The push sends a whole study in one request: Orthanc's default 60 s limit would cut a large one.
        extraConfig: { HttpTimeout: 3600 },
      });
      // Interrupted (Ctrl-C exits at once): the launcher kills the Orthancs, this removes their storage.
      process.once('exit', () => {
        for (const dir of [work, source.dir, destination.dir]) rmSync(dir, { recursive: true, force: true });
      });
      return new Lab(fleet, source, destination, work);
    } catch (error) {
      await fleet.destroyAll();
      throw error;
    }
  }

  async stop(): Promise<void> {
    await this.fleet.destroyAll();
    rmSync(this.work, { recursive: true, force: true });
  }

  /** Generates a set, writes its files under the work folder for `use`, and removes them after. */
  async withSet<T>(shape: SetShape, use: (set: DataSet) => Promise<T>): Promise<T> {
    const set = await this.writeSet(shape);
    try {
      return await use(set);
    } finally {
      rmSync(this.setFolder(shape), { recursive: true, force: true });
    }
  }

  private setFolder(shape: SetShape): string {
    return join(this.work, `set-${shape.name}`);
  }

  private async writeSet(shape: SetShape): Promise<DataSet> {
    // The files, and the set stored at the source and at the destination.
    this.requireFreeSpace(3.3 * shape.instances * shape.sizeKb * 1024);
    const set = generateStudies({
      patients: shape.studies,
      studiesPerPatient: 1,
      seriesPerStudy: shape.seriesPerStudy,
      instancesPerSeries: instancesPerSeries(shape),
      pixelBytes: shape.sizeKb * 1024,
      seed: `bench-${shape.name}`,
    });
    const written = await writeStudies(set, this.setFolder(shape));
    return {
      shape,
      files: written.map((file) => file.path),
      instances: written.length,
      bytes: set.totalBytes,
    };
  }

  /** Fails early, naming the folder, when temporary storage cannot hold `bytes` more. */
  requireFreeSpace(bytes: number): void {
    const stats = statfsSync(this.source.dir);
    const free = stats.bavail * stats.bsize;
    if (free < bytes) {
      throw new Error(
        `${this.source.dir}: ${(free / 1e9).toFixed(1)} GB free, the run needs about ${(bytes / 1e9).toFixed(1)} GB`,
      );
    }
  }

  /**
   * Empties the source and loads files, or generated instances streamed straight from the
   * generator, into it (not timed); returns its study IDs.
   */
  async loadSource(items: readonly UploadItem[]): Promise<string[]> {
    await emptyServer(this.source);
    const results = await uploadToOrthanc(this.source, items, { concurrency: 4, timeoutMs: 600_000 });
    const failed = results.filter((result) => result.status !== 200);
    if (failed.length > 0) {
      throw new Error(`loading the source: ${failed.length} files refused (${failed[0]?.error ?? ''})`);
    }
    return this.source.rest<string[]>('GET', '/studies');
  }

  async emptyDestination(): Promise<void> {
    await emptyServer(this.destination);
  }

  async emptySource(): Promise<void> {
    await emptyServer(this.source);
  }

  sourceRef(): ServerRef {
    return ref(this.source);
  }

  /** Every series the source holds, with its UIDs and its instances' Orthanc IDs. */
  async sourceSeries(): Promise<SeriesRef[]> {
    const studies = await this.source.rest<{ ID: string; MainDicomTags: { StudyInstanceUID: string } }[]>(
      'GET',
      '/studies?expand',
    );
    const studyUid = new Map(studies.map((study) => [study.ID, study.MainDicomTags.StudyInstanceUID]));
    const series = await this.source.rest<
      { ParentStudy: string; Instances: string[]; MainDicomTags: { SeriesInstanceUID: string } }[]
    >('GET', '/series?expand');
    return series.map((s) => ({
      studyInstanceUid: studyUid.get(s.ParentStudy) ?? '',
      seriesInstanceUid: s.MainDicomTags.SeriesInstanceUID,
      instanceIds: s.Instances,
    }));
  }

  async counts(): Promise<{ source: number; destination: number }> {
    const count = async (server: OrthancServer) =>
      (await server.rest<{ CountInstances: number }>('GET', '/statistics')).CountInstances;
    return { source: await count(this.source), destination: await count(this.destination) };
  }

  ceilingJob(set: DataSet, concurrency: number): ChildJob {
    return { kind: 'ceiling', destination: ref(this.destination), files: set.files, concurrency };
  }

  pushJob(studies: readonly string[], concurrency: number, destinationName = PUSH_TARGET): ChildJob {
    return { kind: 'push', source: ref(this.source), destinationName, studies, concurrency };
  }

  /** Adds (or replaces) a destination the source can push to, at `url` (the destination's HTTP root). */
  async addPushTarget(name: string, url: string): Promise<void> {
    await this.source.rest('PUT', `/dicom-web/servers/${name}`, {
      Url: `${url}/dicom-web`,
      Username: this.destination.username,
      Password: this.destination.password,
    });
  }

  relayJob(studies: readonly string[], settings: RelaySettings, across: Across = {}): ChildJob {
    const config = forwarderConfigFor([{ id: SOURCE_ID, server: this.source }], this.destination, {
      concurrency: settings.concurrency,
      stow: {
        maxInstances: settings.maxInstances,
        parallel: settings.parallel,
        readAheadInstances: settings.readAheadInstances,
      },
      verify: settings.verify,
      pollIntervalSeconds: 0.2,
      quietSeconds: 3600,
      sweepIntervalSeconds: 3600,
      ...(settings.maxReadMBps === undefined ? {} : { maxReadMBps: settings.maxReadMBps }),
    });
    const [source] = config.sources as Record<string, unknown>[];
    const destinationRoot = across.destinationUrl ?? this.destination.url;
    const destination = {
      ...(config.destination as Record<string, unknown>),
      url: `${destinationRoot}/dicom-web`,
      ...(settings.orthancRest ? { orthancUrl: destinationRoot } : {}),
    };
    const statePath = join(this.work, `relay-${this.jobs}.sqlite`);
    return {
      kind: 'relay',
      config: {
        ...config,
        sources: [{ ...source, url: across.sourceUrl ?? this.source.url }],
        destination,
      },
      studies,
      statePath,
    };
  }

  /** The child bundled the way the shipped CLI is (scripts/bundle.ts). */
  private async bundle(): Promise<string> {
    if (this.bundled === undefined) {
      const outfile = join(this.work, 'child.bundle.mjs');
      await bundle(CHILD, outfile);
      this.bundled = outfile;
    }
    return this.bundled;
  }

  /**
   * Runs a job in a child process, from the TypeScript sources or from the bundle, with extra
   * Node flags; the Orthancs' CPU is read before it starts and after it exits.
   */
  async run(
    job: ChildJob,
    options: { nodeFlags?: readonly string[]; runtime?: Runtime } = {},
  ): Promise<Trial> {
    const jobPath = join(this.work, `job-${this.jobs++}.json`);
    writeFileSync(jobPath, JSON.stringify(job));
    const entry = options.runtime === 'bundle' ? await this.bundle() : CHILD;
    const before = { source: cpuSeconds(this.source.pid), destination: cpuSeconds(this.destination.pid) };
    const benchCpu = process.cpuUsage();
    const result = await runChild([...(options.nodeFlags ?? []), entry, jobPath]);
    const bench = process.cpuUsage(benchCpu);
    const after = { source: cpuSeconds(this.source.pid), destination: cpuSeconds(this.destination.pid) };
    rmSync(jobPath, { force: true });
    if (job.kind === 'relay') {
      for (const suffix of ['', '-wal', '-shm']) rmSync(`${job.statePath}${suffix}`, { force: true });
    }
    return {
      ...result,
      sourceCpuSeconds: after.source - before.source,
      destinationCpuSeconds: after.destination - before.destination,
      benchCpuSeconds: (bench.user + bench.system) / 1e6,
    };
  }
}

/** Deletes every study a server holds and waits until it holds none. */
const emptyServer = async (server: OrthancServer): Promise<void> => {
  const studies = await server.rest<string[]>('GET', '/studies');
  if (studies.length > 0) await server.rest('POST', '/tools/bulk-delete', { Resources: studies });
  const left = (await server.rest<{ CountInstances: number }>('GET', '/statistics')).CountInstances;
  if (left !== 0) throw new Error(`${server.name} still holds ${left} instances after emptying it`);
};

export const runChild = (args: readonly string[]): Promise<ChildResult> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // As bin/orthanc-forwarder sets it for local mode.
      env: { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2' },
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    const kill = () => child.kill('SIGKILL');
    process.once('exit', kill);
    child.once('error', reject);
    child.once('close', (code) => {
      process.off('exit', kill);
      const out = Buffer.concat(stdout).toString('utf8');
      const line = out.split('\n').find((text) => text.startsWith(RESULT_PREFIX));
      if (code !== 0 || line === undefined) {
        const err = Buffer.concat(stderr).toString('utf8');
        reject(new Error(`benchmark child failed (exit ${code}):\n${err.slice(-2000)}${out.slice(-2000)}`));
        return;
      }
      const result = JSON.parse(line.slice(RESULT_PREFIX.length)) as ChildResult;
      resolve({ ...result, warnings: warningsIn(Buffer.concat(stderr).toString('utf8')) });
    });
  });

/**
 * The child's WARN and ERROR log lines (its log level is WARN), counted by message: a trial that
 * moved everything may still have needed more than one attempt for some studies, and why.
 */
const warningsIn = (stderr: string): Record<string, number> => {
  const counted: Record<string, number> = {};
  for (const entry of stderr.split('\n').map(parseLogLine)) {
    if (entry?.level !== 'WARN' && entry?.level !== 'ERROR') continue;
    // Our log lines carry the error described (a string); Powertools logs an Error as an object.
    const { error } = entry;
    const cause = typeof error === 'string' ? error : (error as { message?: string } | undefined)?.message;
    const key = [entry.message, cause].filter(Boolean).join(': ');
    counted[key] = (counted[key] ?? 0) + 1;
  }
  return counted;
};
