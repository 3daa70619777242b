/**
 * One fault scenario against real Orthancs, end to end, for the fault-injection suite and the chaos
 * runner alike (no vitest here):
 *
 * 1. Start one or more destinations and sources (real Orthancs), each behind a TcpProxy; upload a
 *    small generated data set to the sources and wait until they call every study stable. The
 *    set may be partial studies under a filter (PartialStudies): images and a report, some
 *    instances the destinations refuse, the reports perhaps held back until step 4.
 * 2. Run the forwarder as a child process (the real CLI, or crash-at.ts for a crash at a step),
 *    configured with the proxies' addresses, while the fault happens: the proxy misbehaves, the
 *    forwarder is SIGKILLed, or an Orthanc is SIGKILLed, SIGSTOPped, stopped or restarted at a
 *    moment the proxy sees on the wire (a request, a byte count). Its moves may be cut by a
 *    deadline between two STOW-RS batches, as a Lambda's are (move-deadline.ts).
 * 3. A fault the forwarder survives is undone as soon as it logs a failure (the fault was felt):
 *    the proxy passes again, the server is started or resumed.
 * 4. Check the invariant and the state file as the fault left them; undo whatever is left of the
 *    fault; upload what arrives late; rerun `run --until-idle` (redriving dead letters, if any)
 *    until the move is complete: everything at every destination but the refused instances,
 *    which stay at their source, recorded as refused.
 * 5. Check the invariant again.
 *
 * Everything is on 127.0.0.1; every server, proxy and child is gone when it returns or throws.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VerifyLevel } from '../../lambdas/core/config.ts';
import {
  type GeneratedInstance,
  type GeneratedSet,
  generateStudies,
  SOP_CLASS_UID_TAG,
  type StudyShape,
  withChanges,
  withoutElements,
} from '../../testbed/dicom-generator.ts';
import { OrthancFleet, type OrthancServer } from '../../testbed/orthanc.ts';
import { uploadToOrthanc } from '../../testbed/upload.ts';
import { configFor, shape } from './fixtures.ts';
import { checkNothingLost, heldUids, type InvariantReport, isComplete, uidsOf } from './invariant.ts';
import {
  BIN,
  CLI,
  CRASH_AT,
  type CrashStep,
  MOVE_DEADLINE,
  MOVE_DEADLINE_AFTER_STOWS,
  type ProcessResult,
  parseLogLine,
  type RunningProcess,
  startProcess,
} from './processes.ts';
import { type ProxyMode, TcpProxy } from './tcp-proxy.ts';

/** Request lines (or their telling part) as they cross the wire, for a proxy mode's `match`. */
export const REQUESTS = {
  /** At the destination: a STOW-RS request. */
  stow: 'POST /dicom-web/studies HTTP/1.1',
  /** At the destination: a QIDO-RS listing of a study's instances. */
  qido: 'GET /dicom-web/studies/',
  /** At a source: a read of the change feed. */
  changes: 'GET /changes?',
  /** At a source: a study, or its snapshot of instances. */
  study: 'GET /studies/',
  /** At a source: an instance's file, streamed into a STOW-RS body. */
  instanceFile: '/file HTTP/1.1',
  /** At a source: the deletion of the verified instances. */
  bulkDelete: 'POST /tools/bulk-delete',
} as const;

/**
 * The start of each part's headers in a STOW-RS body, the forwarder's (relay) and Orthanc's (push)
 * alike: counted on the wire, it tells how often an instance was sent.
 */
export const STOW_PART = '\r\nContent-Type: application/dicom\r\n';

export type ServerRole = 'source' | 'destination';
export type ServerAction = 'kill' | 'pause' | 'stop' | 'restart';

export type Fault =
  /** The proxy in front of `at` misbehaves from the start, until the forwarder logs a failure. */
  | { readonly kind: 'network'; readonly at: ServerRole; readonly mode: ProxyMode }
  /** The forwarder is SIGKILLed the moment the proxy in front of `at` triggers (a tap, a black hole). */
  | { readonly kind: 'kill-forwarder'; readonly at: ServerRole; readonly when: ProxyMode }
  /** The forwarder SIGKILLs itself at a step of the feed reader or of the move protocol (crash-at.ts). */
  | { readonly kind: 'crash-at'; readonly step: CrashStep }
  /**
   * When the proxy in front of `at` triggers, `server` is SIGKILLed (`kill`), SIGSTOPped
   * (`pause`), stopped (`stop`, SIGTERM) or restarted; it is started or resumed again once the
   * forwarder logged a failure.
   */
  | {
      readonly kind: 'server';
      readonly at: ServerRole;
      readonly when: ProxyMode;
      readonly server: ServerRole;
      readonly action: ServerAction;
    };

/**
 * Studies of images and a report under a filter (issue 13): the last series of each study is made
 * SR and every destination takes only studies with CT in them (`filter: { modalities: ['CT'] }`),
 * so that what is left of a study once its images have gone no longer matches the filter.
 */
export interface PartialStudies {
  /** The configuration's `unrouted`: what becomes, at its source, of a study no filter takes. */
  readonly unrouted: 'keep' | 'delete';
  /**
   * Positions in each study (images first, the report last) of the instances the destinations
   * refuse, made without SOPClassUID: they must end at their source, recorded as refused. In
   * push mode a refusal fails the whole job and the study is dead-lettered (README), so a push
   * scenario refuses none.
   */
  readonly refused: readonly number[];
  /** The reports reach the sources only once the fault run is over: a series after its study moved. */
  readonly lateReport: boolean;
}

export interface ScenarioSpec {
  readonly name: string;
  readonly fault: Fault;
  /** Seed of the generated data set; the name when absent. */
  readonly seed?: string;
  /** Overrides of the small default shape (2 patients × 1 study × 2 series × 3 instances of 16 KB). */
  readonly shape?: Partial<Omit<StudyShape, 'seed'>>;
  /** Sources (a fault at 'source' is at the first one); 1 when absent. */
  readonly sources?: number;
  /**
   * Destinations, each of which takes every study (a fault at 'destination' is at the first one);
   * 1 when absent. With more than one, the configuration has `destinations`.
   */
  readonly destinations?: number;
  /** Studies moved at once; 2 when absent. */
  readonly concurrency?: number;
  /** The configuration's `trigger`; its default (StableStudy) when absent. */
  readonly trigger?: 'StableStudy' | 'StableSeries' | 'NewInstance';
  /** The configuration's `verify`; its default (identity) when absent. `checksum` reads the destination's REST API through its proxy. */
  readonly verify?: VerifyLevel;
  /**
   * `push`: the sources send to the destinations themselves (declared in their `DicomWeb.Servers`,
   * through the destinations' proxies), as jobs the forwarder starts; `relay` when absent.
   */
  readonly transfer?: 'relay' | 'push';
  /** The configuration's `stow.maxInstances` (instances per STOW-RS request); its default when absent. */
  readonly stowMaxInstances?: number;
  /** The configuration's `stow.parallel` (STOW-RS requests of a move at once); its default when absent. */
  readonly stowParallel?: number;
  readonly partial?: PartialStudies;
  /**
   * Each attempt of a move is cut by a deadline once this many of its STOW-RS requests were
   * answered, as a Lambda invocation's deadline cuts it between two batches (issue 13;
   * move-deadline.ts). In the reruns too, as every invocation on AWS has one: they complete only
   * if the attempts' headway carries the moves through. Relay only.
   */
  readonly deadlineAfterStows?: number;
}

export interface ScenarioOptions {
  /**
   * SIGKILL a forwarder run still going after this long and fail: the chaos runner's bound. The
   * tests leave it out: their own timeout is the bound.
   */
  readonly childTimeoutMs?: number;
  /** Reruns after the fault before giving up; 3 when absent. */
  readonly maxReruns?: number;
}

/** The state file as the fault left it. */
export interface StateSnapshot {
  /** `PRAGMA integrity_check`: 'ok', or what is wrong. */
  readonly integrity: string;
  readonly cursors: Readonly<Record<string, number>>;
  /** Work items on the queue (waiting, delayed or in flight). */
  readonly queued: readonly { readonly sourceId: string; readonly studyId: string }[];
  readonly deadLetters: number;
  /** SOPInstanceUIDs of the instances the ledger records as refused, sorted. */
  readonly rejected: readonly string[];
}

export interface OutcomeLine {
  readonly sourceId: string;
  readonly studyId: string;
  readonly result: string;
  readonly sent: number;
  readonly alreadyPresent: number;
  readonly deleted: number;
}

export interface RunRecord {
  readonly code: number | null;
  readonly signal: string | null;
  /** The study outcomes it logged. */
  readonly outcomes: readonly OutcomeLine[];
  /**
   * It ended with nothing outstanding but refused instances (`run --until-idle` exits 1 for
   * those too): no dead letter, no open conflict, no source given up on.
   */
  readonly settled: boolean;
  /** Its attempts that the deadline cut ("out of time"). */
  readonly deadlineCuts: number;
  /** Its last lines of output, for a failure's message. */
  readonly tail: string;
}

export interface ScenarioReport {
  readonly name: string;
  readonly fault: Fault;
  readonly studies: number;
  readonly instances: number;
  /** Of them, those the destinations refuse (PartialStudies). */
  readonly refused: number;
  /** Attempts the deadline cut, in the fault run and the reruns. */
  readonly deadlineCuts: number;
  /** The fault took effect (the proxy's mode acted, or crash-at reached its step). */
  readonly triggered: boolean;
  /** The forwarder logged a failure after the fault took effect. */
  readonly felt: boolean;
  /** What crash-at wrote before it died. */
  readonly marker: Readonly<Record<string, unknown>> | undefined;
  /** The forwarder run during the fault. */
  readonly faultRun: RunRecord;
  /** Orthanc IDs of each source's studies, before the forwarder started. */
  readonly studyIds: readonly (readonly string[])[];
  /** Each source's newest change sequence number once the fault run ended. */
  readonly sourceLast: readonly number[];
  readonly stateAfterFault: StateSnapshot;
  readonly afterFault: InvariantReport;
  /** Runs after the fault, until the move was complete. */
  readonly reruns: readonly RunRecord[];
  readonly final: InvariantReport;
  /** The state file once the move was complete (or the reruns gave up). */
  readonly stateAfterReruns: StateSnapshot;
  /**
   * Nothing left at the sources but the refused instances, each recorded as refused (and nothing
   * else so recorded); everything else at every destination once, byte for byte.
   */
  readonly complete: boolean;
  /** Distinct instances found lost, by either check: must be 0. */
  readonly lost: number;
  /**
   * Work items dead-lettered (then redriven) during the fault or a rerun: with faults undone at the
   * first failure and 10 attempts, none should be.
   */
  readonly deadLettered: number;
  /** STOW-RS parts the forwarder sent to the destinations (counted on the wire, cut ones included). */
  readonly partsSent: number;
  /** The same, per destination. */
  readonly partsSentPerDestination: readonly number[];
  /** Parts sent beyond one per instance and destination. */
  readonly resent: number;
  readonly durationMs: number;
}

const FAILURE_MESSAGES = new Set([
  'work item failed, will retry',
  'work item dead-lettered',
  'source poll failed',
]);

/** An attempt that its deadline cut, which the fault has no part in. */
const isDeadlineCut = (line: Record<string, unknown>): boolean =>
  line.message === 'work item failed, will retry' && String(line.error).startsWith('out of time');

/** Asks a source until `stable` holds, 60 s at most: a hang is an error, not a wait. */
const untilStable = async (server: OrthancServer, stable: () => Promise<boolean>, what: string) => {
  for (let attempt = 0; attempt < 600; attempt++) {
    if (await stable()) return;
    await sleep(100);
  }
  throw new Error(`source ${server.name} did not call ${what} stable`);
};

/** Waits until a source has announced `count` studies stable. */
export const untilStudiesStable = (server: OrthancServer, count: number): Promise<void> =>
  untilStable(
    server,
    async () =>
      (
        await server.rest<{ Changes: { ChangeType: string }[] }>('GET', '/changes?since=0&limit=100000')
      ).Changes.filter((change) => change.ChangeType === 'StableStudy').length >= count,
    `its ${count} studies`,
  );

/** Waits until a source calls every study it holds stable. */
const untilEveryStudyStable = (server: OrthancServer): Promise<void> =>
  untilStable(
    server,
    async () =>
      (await server.rest<{ IsStable: boolean }[]>('GET', '/studies?expand')).every((study) => study.IsStable),
    'its studies',
  );

/** One source's data set: uploaded before the forwarder starts, then after the fault run. */
interface DataSet {
  readonly first: readonly GeneratedInstance[];
  readonly late: readonly GeneratedInstance[];
  /** Of them, those the destinations refuse. */
  readonly refused: readonly GeneratedInstance[];
}

/** A generated set as it is uploaded: as generated, or made of images and reports (PartialStudies). */
const dataSet = (set: GeneratedSet, partial: PartialStudies | undefined): DataSet => {
  if (partial === undefined) return { first: set.instances, late: [], refused: [] };
  const first: GeneratedInstance[] = [];
  const late: GeneratedInstance[] = [];
  const refused: GeneratedInstance[] = [];
  for (const study of set.patients.flatMap((patient) => patient.studies)) {
    const report = study.series.length - 1;
    const instances = study.series.flatMap((series, index) =>
      series.instances.map((instance) => ({
        instance: index === report ? withChanges(instance, { study: { modality: 'SR' } }) : instance,
        late: index === report && partial.lateReport,
      })),
    );
    for (const [position, { instance, late: isLate }] of instances.entries()) {
      const isRefused = partial.refused.includes(position);
      const stored = isRefused ? withoutElements(instance, [SOP_CLASS_UID_TAG]) : instance;
      (isLate ? late : first).push(stored);
      if (isRefused) refused.push(stored);
    }
  }
  return { first, late, refused };
};

const sameUids = (a: readonly string[], b: readonly string[]): boolean => {
  const sorted = [...b].sort();
  return a.length === b.length && [...a].sort().every((uid, index) => uid === sorted[index]);
};

/** Reads the state file directly (read only: no migration, no write), as a crash left it. */
export const readStateFile = (path: string): StateSnapshot => {
  if (!existsSync(path)) {
    return { integrity: 'no state file', cursors: {}, queued: [], deadLetters: 0, rejected: [] };
  }
  const db = new DatabaseSync(path);
  try {
    const integrity = (db.prepare('PRAGMA integrity_check').all() as { integrity_check: string }[])
      .map((row) => row.integrity_check)
      .join('; ');
    const cursors = Object.fromEntries(
      (
        db.prepare('SELECT source_id, seq FROM feed_cursors').all() as { source_id: string; seq: number }[]
      ).map((row) => [row.source_id, row.seq]),
    );
    const queued = (
      db.prepare('SELECT source_id, study_id FROM queue_messages ORDER BY id').all() as {
        source_id: string;
        study_id: string;
      }[]
    ).map((row) => ({ sourceId: row.source_id, studyId: row.study_id }));
    const deadLetters = (db.prepare('SELECT count(*) AS n FROM dead_letters').get() as { n: number }).n;
    const rejected = (
      db.prepare('SELECT sop_instance_uid FROM rejected_instances ORDER BY sop_instance_uid').all() as {
        sop_instance_uid: string;
      }[]
    ).map((row) => row.sop_instance_uid);
    return { integrity, cursors, queued, deadLetters, rejected };
  } finally {
    db.close();
  }
};

const recordOf = (result: ProcessResult, lines: readonly Record<string, unknown>[]): RunRecord => {
  const finished = lines.find((line) => line.message === 'run finished');
  return {
    code: result.code,
    signal: result.signal,
    settled:
      result.code === 0 ||
      (result.code === 1 &&
        finished?.deadLetters === 0 &&
        finished.openConflicts === 0 &&
        // An empty value is left out of the log line.
        (finished.failedSources ?? '') === ''),
    deadlineCuts: lines.filter(isDeadlineCut).length,
    outcomes: lines
      .filter((line) => line.message === 'study outcome')
      .map((line) => ({
        sourceId: String(line.sourceId),
        studyId: String(line.studyId),
        result: String(line.result),
        sent: Number(line.sent),
        alreadyPresent: Number(line.alreadyPresent),
        deleted: Number(line.deleted),
      })),
    tail: `${result.stdout}\n${result.stderr}`.trim().split('\n').slice(-30).join('\n'),
  };
};

/** Runs a process to its end; past `timeoutMs` it is SIGKILLed and this throws. */
const finish = async (running: RunningProcess, timeoutMs: number | undefined): Promise<ProcessResult> => {
  if (timeoutMs === undefined) return running.done;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    running.child.kill('SIGKILL');
  }, timeoutMs);
  try {
    const result = await running.done;
    if (timedOut) throw new Error(`a forwarder run did not end within ${timeoutMs} ms`);
    return result;
  } finally {
    clearTimeout(timer);
  }
};

export const runScenario = async (
  spec: ScenarioSpec,
  options: ScenarioOptions = {},
): Promise<ScenarioReport> => {
  const started = Date.now();
  const fleet = new OrthancFleet();
  const proxies: TcpProxy[] = [];
  const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-fault-'));
  let forwarder: RunningProcess | undefined;
  try {
    const sourceCount = spec.sources ?? 1;
    const destinationCount = spec.destinations ?? 1;
    // The destinations and their proxies first: in push mode the sources send through the proxies.
    const destinations = await Promise.all(
      Array.from({ length: destinationCount }, (_, index) =>
        fleet.start({ name: index === 0 ? 'destination' : `destination-${index}`, stableAge: 1 }),
      ),
    );
    const destination = destinations[0] as OrthancServer;
    const destinationProxies: TcpProxy[] = [];
    for (const server of destinations) destinationProxies.push(await TcpProxy.start(server.httpPort));
    const destinationProxy = destinationProxies[0] as TcpProxy;
    proxies.push(...destinationProxies);
    const push = spec.transfer === 'push';
    const pushServers = Object.fromEntries(
      destinations.map((server, index) => [
        `destination-${index}`,
        {
          url: `${destinationProxies[index]?.url}/dicom-web`,
          username: server.username,
          password: server.password,
        },
      ]),
    );
    const sources = await Promise.all(
      Array.from({ length: sourceCount }, (_, index) =>
        fleet.start({
          name: `site-${index}`,
          stableAge: 1,
          ...(push ? { dicomWebServers: pushServers } : {}),
        }),
      ),
    );
    const sourceProxies: TcpProxy[] = [];
    for (const source of sources) sourceProxies.push(await TcpProxy.start(source.httpPort));
    proxies.push(...sourceProxies);

    const seed = spec.seed ?? spec.name;
    const sets = sources.map((_, index) =>
      dataSet(generateStudies(shape(`${seed}-${index}`, spec.shape)), spec.partial),
    );
    const upload = async (which: 'first' | 'late') => {
      for (const [index, source] of sources.entries()) {
        const results = await uploadToOrthanc(source, sets[index]?.[which] ?? []);
        const failed = results.filter((result) => result.status !== 200);
        if (failed.length > 0) throw new Error(`upload failed: ${JSON.stringify(failed[0])}`);
      }
    };
    await upload('first');
    const uploadedFirst = sets.flatMap((set) => set.first);
    const instances = [...uploadedFirst, ...sets.flatMap((set) => set.late)];
    const refused = uidsOf(sets.flatMap((set) => set.refused));
    const studyIds = await Promise.all(sources.map((source) => source.rest<string[]>('GET', '/studies')));
    // Every study is stable before the forwarder starts: its first poll queues them all.
    await Promise.all(
      sources.map((source, index) => untilStudiesStable(source, studyIds[index]?.length ?? 0)),
    );

    const raw = configFor(
      sources.map((server, index) => ({ id: `site-${index}`, server })),
      destination,
      {
        concurrency: spec.concurrency ?? 2,
        retry: { maxAttempts: 10, baseDelayMs: 200, maxDelayMs: 1_000 },
        // Short, so that a black hole or a paused server is felt soon.
        timeouts: { connectMs: 2_000, headersMs: 4_000, bodyMs: 4_000 },
        ...(spec.trigger === undefined ? {} : { trigger: spec.trigger }),
        ...(spec.verify === undefined ? {} : { verify: spec.verify }),
        stow: {
          ...(spec.stowMaxInstances === undefined ? {} : { maxInstances: spec.stowMaxInstances }),
          ...(spec.stowParallel === undefined ? {} : { parallel: spec.stowParallel }),
        },
        ...(spec.partial === undefined ? {} : { unrouted: spec.partial.unrouted }),
      },
    ) as { sources: Record<string, unknown>[]; destination?: unknown; destinations?: unknown };
    raw.sources = raw.sources.map((entry, index) => ({ ...entry, url: sourceProxies[index]?.url }));
    const entries = destinations.map((server, index) => ({
      url: `${destinationProxies[index]?.url}/dicom-web`,
      username: server.username,
      password: server.password,
      ...(spec.verify === 'checksum' ? { orthancUrl: destinationProxies[index]?.url } : {}),
      ...(push ? { transfer: 'push', pushServerName: `destination-${index}` } : {}),
      ...(spec.partial === undefined ? {} : { filter: { modalities: ['CT'] } }),
    }));
    if (destinationCount === 1) {
      raw.destination = entries[0];
    } else {
      delete raw.destination;
      raw.destinations = entries.map((entry, index) => ({ id: `destination-${index}`, ...entry }));
    }
    const configPath = join(work, 'forwarder.json');
    const statePath = join(work, 'forwarder.state.sqlite');
    const markerPath = join(work, 'crashed.json');
    writeFileSync(configPath, JSON.stringify(raw, null, 2));
    for (const proxy of destinationProxies) proxy.count(STOW_PART);

    // The fault.
    const fault = spec.fault;
    const proxyAt = (role: ServerRole): TcpProxy =>
      role === 'destination' ? destinationProxy : (sourceProxies[0] as TcpProxy);
    const serverAt = (role: ServerRole): OrthancServer =>
      role === 'destination' ? destination : (sources[0] as OrthancServer);
    let triggered = false;
    let felt = false;
    /** What undoes the fault, once it took effect. */
    let undo: (() => Promise<void>) | undefined;
    let undoing: Promise<void> | undefined;
    const undoOnce = (): Promise<void> => {
      undoing ??= undo?.() ?? Promise.resolve();
      return undoing;
    };
    if (fault.kind === 'network') {
      const proxy = proxyAt(fault.at);
      proxy.setMode(fault.mode);
      proxy.onTrigger(() => {
        triggered = true;
        undo = async () => proxy.heal();
      });
    } else if (fault.kind === 'kill-forwarder') {
      const proxy = proxyAt(fault.at);
      proxy.setMode(fault.when);
      proxy.onTrigger(() => {
        triggered = true;
        forwarder?.child.kill('SIGKILL');
        undo = async () => proxy.heal();
      });
    } else if (fault.kind === 'server') {
      const proxy = proxyAt(fault.at);
      const server = serverAt(fault.server);
      proxy.setMode(fault.when);
      proxy.onTrigger(() => {
        triggered = true;
        proxy.heal();
        if (fault.action === 'pause') {
          // Stopped within milliseconds; the proxy holds the traffic meanwhile.
          void server.pause();
          undo = async () => server.resume();
          return;
        }
        const acting =
          fault.action === 'kill'
            ? server.kill()
            : fault.action === 'stop'
              ? server.stop()
              : server.restart();
        undo = async () => {
          await acting;
          if (fault.action !== 'restart') await server.start();
        };
      });
    }

    const lines: Record<string, unknown>[] = [];
    const onLine = (text: string) => {
      const line = parseLogLine(text);
      if (line === undefined) return;
      lines.push(line);
      if (triggered && !felt && FAILURE_MESSAGES.has(String(line.message)) && !isDeadlineCut(line)) {
        felt = true;
        void undoOnce();
      }
    };
    // The faults come during moves: the check at start would stop a run at a server down from the
    // start, and its probe of the right to delete would trip a proxy waiting for a bulk-delete.
    const runUntilIdle = ['run', '--config', configPath, '--state', statePath, '--until-idle', '--no-check'];
    const deadline = spec.deadlineAfterStows;
    // The deadline hook needs the sources, which bin/orthanc-forwarder may run bundled.
    const startNode = (script: string, args: readonly string[], watch: (line: string) => void) =>
      startProcess(
        process.execPath,
        [
          '--disable-warning=ExperimentalWarning',
          ...(deadline === undefined ? [] : ['--import', MOVE_DEADLINE]),
          script,
          ...args,
        ],
        {
          onLine: watch,
          env: {
            ...process.env,
            ...(deadline === undefined ? {} : { [MOVE_DEADLINE_AFTER_STOWS]: `${deadline}` }),
          },
        },
      );
    const startRun = (watch: (line: string) => void) =>
      deadline === undefined
        ? startProcess(BIN, runUntilIdle, { onLine: watch })
        : startNode(CLI, runUntilIdle, watch);
    forwarder =
      fault.kind === 'crash-at'
        ? startNode(CRASH_AT, [configPath, statePath, fault.step, markerPath], onLine)
        : startRun(onLine);
    const faultResult = await finish(forwarder, options.childTimeoutMs);
    forwarder = undefined;
    const faultRun = recordOf(faultResult, lines);
    const marker = existsSync(markerPath)
      ? (JSON.parse(readFileSync(markerPath, 'utf8')) as Record<string, unknown>)
      : undefined;
    if (fault.kind === 'crash-at') triggered = marker !== undefined;

    // As the fault left things (the servers back up first, or nothing could be looked at).
    if (triggered) await undoOnce();
    for (const proxy of proxies) proxy.heal();
    const sourceLast = await Promise.all(
      sources.map(async (source) => (await source.rest<{ Last: number }>('GET', '/changes?last')).Last),
    );
    const stateAfterFault = readStateFile(statePath);
    const afterFault = await checkNothingLost({ instances: uploadedFirst, sources, destinations });
    if (uploadedFirst.length < instances.length) {
      await upload('late');
      await Promise.all(sources.map(untilEveryStudyStable));
    }
    const check = () => checkNothingLost({ instances, sources, destinations });

    // Recovery: rerun until the move is complete.
    const reruns: RunRecord[] = [];
    let final = afterFault;
    let stateAfterReruns = stateAfterFault;
    let complete = false;
    let deadLettered = stateAfterFault.deadLetters;
    for (let round = 0; round < (options.maxReruns ?? 3); round++) {
      const deadLetters = readStateFile(statePath).deadLetters;
      if (round > 0) deadLettered += deadLetters;
      if (deadLetters > 0) {
        await finish(
          startProcess(BIN, ['redrive', '--config', configPath, '--state', statePath]),
          options.childTimeoutMs,
        );
      }
      const rerunLines: Record<string, unknown>[] = [];
      const rerun = startRun((text) => {
        const line = parseLogLine(text);
        if (line !== undefined) rerunLines.push(line);
      });
      reruns.push(recordOf(await finish(rerun, options.childTimeoutMs), rerunLines));
      final = await check();
      stateAfterReruns = readStateFile(statePath);
      complete =
        isComplete(final, refused.length) &&
        sameUids(stateAfterReruns.rejected, refused) &&
        sameUids((await Promise.all(sources.map(heldUids))).flat(), refused);
      if (reruns.at(-1)?.settled === true && complete) break;
    }

    const lost = new Set([...afterFault.lost, ...final.lost]).size;
    const partsSentPerDestination = destinationProxies.map((proxy) => proxy.counted(STOW_PART));
    const partsSent = partsSentPerDestination.reduce((total, parts) => total + parts, 0);
    return {
      name: spec.name,
      fault,
      studies: studyIds.reduce((total, ids) => total + ids.length, 0),
      instances: instances.length,
      refused: refused.length,
      deadlineCuts: [faultRun, ...reruns].reduce((total, record) => total + record.deadlineCuts, 0),
      triggered,
      felt,
      marker,
      faultRun,
      studyIds,
      sourceLast,
      stateAfterFault,
      afterFault,
      reruns,
      final,
      stateAfterReruns,
      complete,
      lost,
      deadLettered,
      partsSent,
      partsSentPerDestination,
      resent: Math.max(0, partsSent - instances.length * destinationCount),
      durationMs: Date.now() - started,
    };
  } finally {
    if (forwarder !== undefined) {
      forwarder.child.kill('SIGKILL');
      await forwarder.done.catch(() => undefined);
    }
    await Promise.allSettled(proxies.map((proxy) => proxy.close()));
    await fleet.destroyAll();
    rmSync(work, { recursive: true, force: true });
  }
};

/** One line about a scenario's result, for logs and the chaos runner's output. */
export const describeReport = (report: ScenarioReport): string =>
  [
    report.name,
    report.triggered ? 'triggered' : 'not triggered',
    `${report.instances} instances`,
    `lost ${report.lost}`,
    `re-sent ${report.resent}`,
    ...(report.refused > 0 ? [`refused ${report.refused}`] : []),
    ...(report.deadlineCuts > 0 ? [`attempts cut by the deadline ${report.deadlineCuts}`] : []),
    ...(report.deadLettered > 0 ? [`DEAD-LETTERED ${report.deadLettered}`] : []),
    `after the fault: ${report.afterFault.atSources} at source, ${report.afterFault.atDestination} at destination`,
    `reruns ${report.reruns.length}`,
    report.complete ? 'complete' : 'NOT complete',
    `${(report.durationMs / 1000).toFixed(1)} s`,
  ].join(', ');
