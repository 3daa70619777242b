/**
 * What the local-mode tests share: running the CLI and other children, reading their logs,
 * uploading generated studies, and checking where each instance is.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import type { Log, LogAttributes } from '../../lambdas/core/log.ts';
import type { GeneratedInstance, StudyShape } from '../../testbed/dicom-generator.ts';
import { forwarderConfigFor, type SourceEntry } from '../../testbed/forwarder-config.ts';
import type { OrthancServer } from '../../testbed/orthanc.ts';
import { uploadToOrthanc } from '../../testbed/upload.ts';

export { instanceCount } from '../../testbed/forwarder-config.ts';

export const BIN = fileURLToPath(new URL('../../bin/orthanc-forwarder', import.meta.url));

export interface ProcessResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

const children = new Set<ChildProcess>();

/** Runs a child process to its end (or its death) and collects what it printed. */
export const runProcess = (
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<ProcessResult> =>
  new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      children.delete(child);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      });
    });
  });

/** Runs bin/orthanc-forwarder to its end. */
export const cli = (args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<ProcessResult> =>
  runProcess(BIN, args, env);

/** Only for a test that failed with a child still running: nothing outlives the test. */
export const killChildren = (): void => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
};

/** The JSON log lines of a run's output (Powertools writes one object per line). */
export const logLines = (output: string): Record<string, unknown>[] =>
  output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);

export interface LogEntry {
  readonly level: string;
  readonly message: string;
  readonly [attribute: string]: unknown;
}

/** A Log that keeps every entry, and tells `onEntry` of each as it is written. */
export const captureLog = (onEntry?: (entry: LogEntry) => void): { log: Log; entries: LogEntry[] } => {
  const entries: LogEntry[] = [];
  const at =
    (level: string) =>
    (message: string, ...attributes: LogAttributes[]) => {
      const entry: LogEntry = { ...Object.assign({}, ...attributes), level, message };
      entries.push(entry);
      onEntry?.(entry);
    };
  return { log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, entries };
};

export const upload = async (
  server: OrthancServer,
  instances: readonly GeneratedInstance[],
): Promise<void> => {
  const results = await uploadToOrthanc(server, instances);
  expect(results.map((result) => result.status)).toEqual(instances.map(() => 200));
};

/** The SOPInstanceUIDs a server holds, sorted. */
export const heldUids = async (server: OrthancServer): Promise<string[]> =>
  (await server.rest<{ MainDicomTags: { SOPInstanceUID: string } }[]>('GET', '/instances?expand'))
    .map((instance) => instance.MainDicomTags.SOPInstanceUID)
    .sort();

export const uidsOf = (instances: readonly GeneratedInstance[]): string[] =>
  instances.map((instance) => instance.sopInstanceUid).sort();

export const findInstance = async (
  server: OrthancServer,
  sopInstanceUid: string,
): Promise<string | undefined> =>
  (await server.rest<{ ID: string; Type: string }[]>('POST', '/tools/lookup', sopInstanceUid)).find(
    (match) => match.Type === 'Instance',
  )?.ID;

export const storedMd5 = async (server: OrthancServer, instanceId: string): Promise<string> => {
  const response = await fetch(`${server.url}/instances/${instanceId}/attachments/dicom/md5`, {
    headers: { authorization: server.authorization },
  });
  expect(response.status).toBe(200);
  return (await response.text()).trim();
};

export const md5Of = async (instance: GeneratedInstance): Promise<string> => {
  const hash = createHash('md5');
  for await (const chunk of instance.stream()) hash.update(chunk as Buffer);
  return hash.digest('hex');
};

/** Every generated instance is at the destination, byte for byte. */
export const expectAllAtDestination = async (
  destination: OrthancServer,
  instances: readonly GeneratedInstance[],
): Promise<void> => {
  for (const instance of instances) {
    const id = await findInstance(destination, instance.sopInstanceUid);
    expect(id, `instance ${instance.sopInstanceUid} at the destination`).toBeDefined();
    expect(await storedMd5(destination, id as string)).toBe(await md5Of(instance));
  }
};

/** Nothing is lost: every instance is at one of the sources or at the destination. */
export const expectEachSomewhere = async (
  instances: readonly GeneratedInstance[],
  servers: readonly OrthancServer[],
): Promise<void> => {
  const held = new Set((await Promise.all(servers.map(heldUids))).flat());
  expect(instances.filter((i) => !held.has(i.sopInstanceUid)).map((i) => i.sopInstanceUid)).toEqual([]);
};

/** A configuration that polls fast and retries soon, so that tests converge quickly. */
export const configFor = (
  sources: readonly SourceEntry[],
  destination: OrthancServer,
  extra: Readonly<Record<string, unknown>> = {},
): Record<string, unknown> =>
  forwarderConfigFor(sources, destination, {
    pollIntervalSeconds: 0.3,
    quietSeconds: 2,
    retry: { baseDelayMs: 200, maxDelayMs: 1_000 },
    ...extra,
  });

/** A small study set: 2 patients × 1 study × 2 series × 3 instances of 16 KB, unless overridden. */
export const shape = (seed: string, overrides: Partial<StudyShape> = {}): StudyShape => ({
  patients: 2,
  studiesPerPatient: 1,
  seriesPerStudy: 2,
  instancesPerSeries: 3,
  pixelBytes: 16 * 1024,
  seed,
  ...overrides,
});

/** Waits for a condition of the servers (no deadline: the test's timeout is the bound). */
export const until = async (condition: () => Promise<boolean>): Promise<void> => {
  while (!(await condition())) await sleep(100);
};
