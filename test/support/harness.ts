/**
 * What the local-mode tests share: starting servers, running the runner, the CLI and other
 * children, reading their logs, uploading generated studies, and checking where each instance is.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, expect } from 'vitest';
import { type PollReport, pollSource } from '../../lambdas/core/changes-feed.ts';
import type { ForwarderConfig } from '../../lambdas/core/config.ts';
import { buildEngine, feedSettings } from '../../lambdas/core/engine.ts';
import { ForwarderError } from '../../lambdas/core/errors.ts';
import type { Log, LogAttributes } from '../../lambdas/core/log.ts';
import type { MoveStep } from '../../lambdas/core/move-study.ts';
import { moveTiming } from '../../lambdas/core/move-timing.ts';
import type { StudyOutcome, Tally } from '../../lambdas/core/ports.ts';
import { LocalRunner, type RunSummary } from '../../lambdas/local/local-runner.ts';
import { type LocalState, openState } from '../../lambdas/local/sqlite-state.ts';
import type { GeneratedInstance } from '../../testbed/dicom-generator.ts';
import { OrthancFleet, type OrthancOptions, type OrthancServer } from '../../testbed/orthanc.ts';
import { uploadToOrthanc } from '../../testbed/upload.ts';
import { until } from './fixtures.ts';
import { findInstance, heldUids, md5Of } from './invariant.ts';
import { killChildren } from './processes.ts';

export { instanceCount } from '../../testbed/forwarder-config.ts';
export { collect, configFor, shape, until } from './fixtures.ts';
export { findInstance, heldUids, md5Of, uidsOf } from './invariant.ts';
export {
  BIN,
  CRASH_AT,
  cli,
  killChildren,
  logLines,
  type ProcessResult,
  runProcess,
} from './processes.ts';

export interface LogEntry {
  readonly level: string;
  readonly message: string;
  readonly [attribute: string]: unknown;
}

/**
 * How many instances a server ever stored as new: a destination never deletes in these tests, so
 * an instance sent twice (and stored twice) would show as more NewInstance changes than instances.
 */
export const newInstanceChanges = async (server: OrthancServer): Promise<number> =>
  (
    await server.rest<{ Changes: { ChangeType: string }[] }>('GET', '/changes?since=0&limit=100000')
  ).Changes.filter((change) => change.ChangeType === 'NewInstance').length;

/** What the server says it holds (GET /statistics), as `status` reports it. */
export const holdings = async (server: OrthancServer): Promise<Tally> => {
  const statistics = await server.rest<{
    CountStudies: number;
    CountInstances: number;
    TotalDiskSize: string;
  }>('GET', '/statistics');
  return {
    studies: statistics.CountStudies,
    instances: statistics.CountInstances,
    bytes: Number(statistics.TotalDiskSize),
  };
};

/** Generated instances as a tally of `studies` studies: Orthanc stores each file as it came. */
export const tallyOf = (studies: number, instances: readonly GeneratedInstance[]): Tally => ({
  studies,
  instances: instances.length,
  bytes: instances.reduce((sum, instance) => sum + instance.byteLength, 0),
});

/** Waits until the server calls every study it holds stable (StableAge after its last instance). */
export const untilStudiesStable = (server: OrthancServer): Promise<void> =>
  until(async () =>
    (await server.rest<{ IsStable: boolean }[]>('GET', '/studies?expand')).every((study) => study.IsStable),
  );

/**
 * One poll of a source on the given state, with a sweep of all its studies unless told
 * otherwise (a run's first sweep comes only after sweepIntervalSeconds), without a deadline.
 */
export const pollOnce = async (
  config: ForwarderConfig,
  state: LocalState,
  log: Log,
  { sourceId = 'site-a', sweep = true }: { sourceId?: string; sweep?: boolean } = {},
): Promise<PollReport> => {
  const engine = buildEngine(config, { ledger: state.ledger, feed: state.feed, log, owner: 'test' });
  const source = engine.sources.get(sourceId);
  if (source === undefined) throw new Error(`no source ${sourceId}`);
  return pollSource(
    {
      sourceId,
      source,
      store: state.feed,
      sink: state.queue,
      log,
      ...feedSettings(config, state.ledger),
      timing: moveTiming(config, sourceId),
    },
    { sweepNow: sweep },
  );
};

/** One entry of `destinations` for a server the test bed started. */
export const destinationEntry = (
  id: string,
  server: OrthancServer,
  extra: Readonly<Record<string, unknown>> = {},
) => ({
  id,
  url: server.dicomWebUrl,
  username: server.username,
  password: server.password,
  ...extra,
});

/**
 * Starts servers at once, each named, and calling a study stable 1 s after its last instance so
 * that the tests need not wait, unless its own options say otherwise; `shared` goes to every one
 * (credentials, say).
 */
export const startServers = <const Servers extends readonly (string | OrthancOptions)[]>(
  fleet: OrthancFleet,
  servers: Servers,
  shared: OrthancOptions = {},
): Promise<{ -readonly [K in keyof Servers]: OrthancServer }> =>
  Promise.all(
    servers.map((server) =>
      fleet.start({ stableAge: 1, ...shared, ...(typeof server === 'string' ? { name: server } : server) }),
    ),
  ) as Promise<{ -readonly [K in keyof Servers]: OrthancServer }>;

/** Runs the local runner in-process until idle, keeping every study outcome of the run. */
export const runUntilIdle = async (
  config: ForwarderConfig,
  state: LocalState,
  log: Log,
  options: { onStep?: (step: MoveStep, studyId: string) => Promise<void>; signal?: AbortSignal } = {},
): Promise<{ summary: RunSummary; outcomes: StudyOutcome[] }> => {
  const outcomes: StudyOutcome[] = [];
  const summary = await new LocalRunner(config, state, log, { onStep: options.onStep }).run({
    untilIdle: true,
    onOutcome: (outcome) => outcomes.push(outcome),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  return { summary, outcomes };
};

/** The classified error a call rejects with; fails the test when it resolves. */
export const forwarderErrorOf = async (promise: Promise<unknown>): Promise<ForwarderError> => {
  const error = await promise.then(
    () => undefined,
    (thrown: unknown) => thrown,
  );
  expect(error).toBeInstanceOf(ForwarderError);
  return error as ForwarderError;
};

/** A test configuration with a list of destinations instead of its one. */
export const withDestinations = (raw: Readonly<Record<string, unknown>>, destinations: readonly object[]) => {
  const { destination: _one, ...rest } = raw;
  return { ...rest, destinations };
};

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

export const storedMd5 = async (server: OrthancServer, instanceId: string): Promise<string> => {
  const response = await fetch(`${server.url}/instances/${instanceId}/attachments/dicom/md5`, {
    headers: { authorization: server.authorization },
  });
  expect(response.status).toBe(200);
  return (await response.text()).trim();
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

/** What a test puts in front of a server (an HTTP or TLS front): closed before the servers go. */
interface Closable {
  close(): Promise<void>;
}

/**
 * The usual set-up of a test file that starts servers: a fleet torn down after each test and at
 * the end, children killed, and a fresh working folder per test (`workPath` names files in it).
 * `closeAfterTest` hands back what it is given, closed after the test; `withState` opens the
 * test's state file for the configuration, and closes it whatever happens.
 */
export const useTestbed = (
  name: string,
): {
  fleet: OrthancFleet;
  workPath: (...parts: string[]) => string;
  closeAfterTest: <T extends Closable>(resource: T) => T;
  withState: <T>(config: ForwarderConfig, use: (state: LocalState) => Promise<T>) => Promise<T>;
} => {
  const fleet = new OrthancFleet();
  const closables: Closable[] = [];
  let work = '';
  const tearDown = async () => {
    killChildren();
    await Promise.allSettled(closables.map((closable) => closable.close()));
    closables.length = 0;
    await fleet.destroyAll();
  };
  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), `orthanc-forwarder-${name}-`));
  });
  afterEach(async () => {
    await tearDown();
    rmSync(work, { recursive: true, force: true });
  });
  afterAll(tearDown);
  return {
    fleet,
    workPath: (...parts) => join(work, ...parts),
    closeAfterTest: (resource) => {
      closables.push(resource);
      return resource;
    },
    withState: async (config, use) => {
      const state = openState(join(work, 'state.sqlite'), { maxReceives: config.retry.maxAttempts });
      try {
        return await use(state);
      } finally {
        state.close();
      }
    },
  };
};
