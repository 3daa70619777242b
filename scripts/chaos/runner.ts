/**
 * The randomized fault run: a seeded PRNG picks, per run, a fault (its type, its target — a source,
 * the destination or the forwarder — and its moment: a step, a request on the wire, a byte count)
 * and a small data set, now and then made of partial studies under a filter or moved under a
 * deadline (issue 13); test/support/fault-scenario.ts plays it against real Orthancs, recovers,
 * reruns until idle and checks that nothing was lost. Used by scripts/chaos.ts and by
 * test/chaos-smoke.test.ts.
 *
 * Run k of seed N is the same whatever the number of runs: its PRNG is seeded from (N, k).
 */

import {
  describeReport,
  type Fault,
  type PartialStudies,
  REQUESTS,
  runScenario,
  type ScenarioReport,
  type ScenarioSpec,
  type ServerAction,
  type ServerRole,
} from '../../test/support/fault-scenario.ts';
import { CRASH_STEPS } from '../../test/support/processes.ts';
import type { Direction, ProxyMode } from '../../test/support/tcp-proxy.ts';
import type { StudyShape } from '../../testbed/dicom-generator.ts';

export interface ChaosOptions {
  readonly seed: number;
  readonly runs: number;
  /** No run starts after this many seconds; 300 when absent. */
  readonly maxSeconds?: number;
  /** The first run's index (to replay one run: `first: k, runs: 1`); 1 when absent. */
  readonly first?: number;
  /** Each line of progress (one per run). */
  readonly onProgress?: (line: string) => void;
  /** Stops starting new runs once aborted (Ctrl-C). */
  readonly signal?: AbortSignal;
  /** SIGKILL a forwarder run still going after this long, and count an error; 120 s when absent. */
  readonly childTimeoutMs?: number;
}

export interface ChaosRun {
  readonly run: number;
  readonly name: string;
  /** Its studies were images and a report under a filter (PartialStudies). */
  readonly partial: boolean;
  /** Its moves had a deadline (ScenarioSpec.deadlineAfterStows). */
  readonly deadline: boolean;
  readonly instances: number;
  /** Of them, refused by the destinations: they must end at their source, recorded as refused. */
  readonly refused: number;
  /** Attempts the deadline cut, in the fault run and the reruns. */
  readonly deadlineCuts: number;
  readonly triggered: boolean;
  readonly lost: number;
  readonly resent: number;
  readonly complete: boolean;
  readonly deadLettered: number;
  readonly seconds: number;
  readonly error?: string;
}

export interface ChaosSummary {
  readonly seed: number;
  readonly runsRequested: number;
  /** Scenarios run (errors included). */
  readonly runs: number;
  /** Of them, the fault took effect. */
  readonly triggered: number;
  /** Generated instances whose whereabouts were checked (after the fault and after the reruns). */
  readonly instancesChecked: number;
  /** Scenarios of partial studies under a filter, and the instances their destinations refused. */
  readonly partialRuns: number;
  readonly refused: number;
  /** Scenarios whose moves a deadline cut, and the attempts it cut. */
  readonly deadlineRuns: number;
  readonly deadlineCuts: number;
  /** Instances at neither their source nor the destination: must be 0. */
  readonly lost: number;
  /** STOW-RS parts sent beyond one per instance. */
  readonly resent: number;
  /** Scenarios whose move did not complete after the reruns. */
  readonly incomplete: number;
  /** Work items dead-lettered although the fault was undone at the first failure: should be 0. */
  readonly deadLettered: number;
  readonly errors: number;
  /** Runs not started because --max-seconds passed (or the run was interrupted). */
  readonly skipped: number;
  readonly seconds: number;
  readonly results: readonly ChaosRun[];
}

/** mulberry32: small, fast, and the same sequence everywhere. */
export const prng = (seed: number): (() => number) => {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};

type Random = () => number;
const int = (random: Random, min: number, max: number): number =>
  min + Math.floor(random() * (max - min + 1));
const pick = <T>(random: Random, items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;

/** The moments a proxy can see, per server: a request, then a byte count into it or its answer. */
const moments = (
  random: Random,
  batchBytes: number,
): Record<ServerRole, (() => { match: string; direction: Direction; afterBytes: number })[]> => ({
  destination: [
    () => ({ match: REQUESTS.stow, direction: 'up', afterBytes: int(random, 0, batchBytes) }),
    () => ({ match: REQUESTS.stow, direction: 'down', afterBytes: int(random, 0, 400) }),
    () => ({ match: REQUESTS.qido, direction: 'up', afterBytes: 0 }),
    () => ({ match: REQUESTS.qido, direction: 'down', afterBytes: int(random, 0, 1_500) }),
  ],
  source: [
    () => ({ match: REQUESTS.changes, direction: 'down', afterBytes: int(random, 0, 3_000) }),
    () => ({ match: REQUESTS.study, direction: 'down', afterBytes: int(random, 0, 1_000) }),
    () => ({ match: REQUESTS.instanceFile, direction: 'down', afterBytes: int(random, 0, batchBytes) }),
    () => ({ match: REQUESTS.bulkDelete, direction: 'up', afterBytes: int(random, 0, 300) }),
    () => ({ match: REQUESTS.bulkDelete, direction: 'down', afterBytes: 0 }),
  ],
});

const networkMode = (random: Random, at: ServerRole, batchBytes: number): ProxyMode => {
  const moment = pick(random, moments(random, batchBytes)[at])();
  switch (pick(random, ['drop', 'delay', 'reset', 'reset', 'black-hole', 'black-hole'] as const)) {
    case 'drop':
      return { kind: 'drop' };
    case 'delay':
      return { kind: 'delay', ms: int(random, 1, 10) };
    case 'reset':
      return { kind: 'reset', ...moment };
    case 'black-hole':
      // Without a match now and then: every new connection hangs.
      return random() < 0.2
        ? { kind: 'black-hole' }
        : { kind: 'black-hole', direction: moment.direction, match: moment.match };
  }
};

/**
 * Images and a report per study under a CT filter (PartialStudies): some of a study's instances
 * refused, its report arriving late, or both.
 */
const randomPartial = (random: Random, instancesPerStudy: number): PartialStudies => {
  const unrouted = pick(random, ['keep', 'delete'] as const);
  const lateReport = random() < 0.5;
  const refused = Array.from({ length: instancesPerStudy }, (_, position) => position).filter(
    () => random() < 0.3,
  );
  // One of the two at least, or the study would be moved whole like any other.
  return {
    unrouted,
    lateReport,
    refused: refused.length > 0 || lateReport ? refused : [instancesPerStudy - 1],
  };
};

const describePartial = (partial: PartialStudies): string =>
  [
    `CT filter, unrouted ${partial.unrouted}`,
    ...(partial.refused.length === 0 ? [] : [`refused #${partial.refused.join(',')} of each study`]),
    ...(partial.lateReport ? ['late report'] : []),
  ].join(', ');

/** Picks one scenario: the data set, then the fault. */
export const randomScenario = (seed: number, run: number): ScenarioSpec => {
  const random = prng((Math.imul(seed, 0x9e3779b1) ^ Math.imul(run, 0x85ebca6b)) >>> 0);
  const shape: Partial<Omit<StudyShape, 'seed'>> = {
    patients: int(random, 1, 2),
    studiesPerPatient: 1,
    seriesPerStudy: int(random, 1, 2),
    instancesPerSeries: int(random, 1, 4),
    pixelBytes: pick(random, [1_024, 4_096, 16_384, 40_000]),
  };
  const batchBytes = (shape.instancesPerSeries ?? 1) * ((shape.pixelBytes ?? 0) + 1_500);
  const sources = pick(random, [1, 1, 2]);
  const destinations = pick(random, [1, 1, 2]);
  const concurrency = int(random, 1, 2);
  const role = (): ServerRole => pick(random, ['source', 'destination'] as const);
  let fault: Fault;
  switch (pick(random, ['network', 'kill-forwarder', 'crash-at', 'server'] as const)) {
    case 'network': {
      const at = role();
      fault = { kind: 'network', at, mode: networkMode(random, at, batchBytes) };
      break;
    }
    case 'kill-forwarder': {
      const at = role();
      const moment = pick(random, moments(random, batchBytes)[at])();
      const when: ProxyMode =
        random() < 0.25
          ? { kind: 'black-hole', direction: moment.direction, match: moment.match }
          : { kind: 'tap', ...moment };
      fault = { kind: 'kill-forwarder', at, when };
      break;
    }
    case 'crash-at':
      fault = { kind: 'crash-at', step: pick(random, CRASH_STEPS) };
      break;
    case 'server': {
      const at = role();
      fault = {
        kind: 'server',
        at,
        when: { kind: 'tap', ...pick(random, moments(random, batchBytes)[at])() },
        server: role(),
        action: pick(random, ['kill', 'pause', 'stop', 'restart'] as const satisfies readonly ServerAction[]),
      };
      break;
    }
  }
  // How the forwarder is configured: what makes work, how it verifies, how it cuts batches.
  const trigger = pick(random, ['StableStudy', 'StableStudy', 'StableSeries', 'NewInstance'] as const);
  const verify = pick(random, ['identity', 'identity', 'qido', 'stow', 'checksum'] as const);
  let stowMaxInstances = pick(random, [1, 2, 50]);
  let transfer = pick(random, ['relay', 'relay', 'push'] as const);
  // Drawn last, so that a run that draws neither is the run it was before they existed.
  let instancesPerSeries = shape.instancesPerSeries ?? 1;
  let deadline: { afterStows: number; parallel: number } | undefined;
  if (random() < 1 / 3) {
    deadline = { afterStows: int(random, 1, 2), parallel: int(random, 1, 2) };
    // One instance a batch, and more batches in a series than start before the cut (those it
    // waits the answers of, and those in flight meanwhile): no move is done in one attempt,
    // unless a fault ends it first.
    stowMaxInstances = 1;
    instancesPerSeries = Math.max(instancesPerSeries, deadline.afterStows + deadline.parallel);
    transfer = 'relay';
  }
  let partial: PartialStudies | undefined;
  if (random() < 1 / 3) {
    partial = randomPartial(random, 2 * instancesPerSeries);
    // A refusal fails a whole push job: the study would be dead-lettered, as documented.
    if (partial.refused.length > 0) transfer = 'relay';
  }
  const settings = [
    `${sources} source(s)`,
    `${destinations} destination(s)`,
    transfer,
    trigger,
    `verify ${verify}`,
    `${stowMaxInstances}/STOW`,
    ...(partial === undefined ? [] : [describePartial(partial)]),
    ...(deadline === undefined
      ? []
      : [`${deadline.parallel} STOW at once, deadline after ${deadline.afterStows} STOW answer(s)`]),
  ];
  return {
    name: `run ${run}: ${describeFault(fault)} [${settings.join(', ')}]`,
    seed: `chaos-${seed}-${run}`,
    fault,
    // A partial study is images and a report.
    shape: { ...shape, instancesPerSeries, ...(partial === undefined ? {} : { seriesPerStudy: 2 }) },
    sources,
    destinations,
    concurrency,
    trigger,
    verify,
    stowMaxInstances,
    transfer,
    ...(partial === undefined ? {} : { partial }),
    ...(deadline === undefined
      ? {}
      : { deadlineAfterStows: deadline.afterStows, stowParallel: deadline.parallel }),
  };
};

const describeMode = (mode: ProxyMode): string => {
  const where = (m: { match?: string | undefined; direction?: Direction | undefined }) =>
    m.match === undefined ? '' : ` ${m.direction ?? 'up'} of "${m.match}"`;
  switch (mode.kind) {
    case 'pass':
    case 'drop':
      return mode.kind;
    case 'delay':
      return `delay ${mode.ms} ms per chunk`;
    case 'black-hole':
      return `black-hole${where(mode)}`;
    case 'reset':
    case 'tap':
      return `${mode.kind} after ${mode.afterBytes} B${where(mode)}`;
  }
};

export const describeFault = (fault: Fault): string => {
  switch (fault.kind) {
    case 'network':
      return `network at the ${fault.at}: ${describeMode(fault.mode)}`;
    case 'kill-forwarder':
      return `SIGKILL the forwarder on ${describeMode(fault.when)} at the ${fault.at}`;
    case 'crash-at':
      return `the forwarder SIGKILLs itself at '${fault.step}'`;
    case 'server':
      return `${fault.action} the ${fault.server} Orthanc on ${describeMode(fault.when)} at the ${fault.at}`;
  }
};

export const runChaos = async (options: ChaosOptions): Promise<ChaosSummary> => {
  const started = Date.now();
  const deadline = started + (options.maxSeconds ?? 300) * 1000;
  const first = options.first ?? 1;
  const results: ChaosRun[] = [];
  for (let run = first; run < first + options.runs; run++) {
    if (Date.now() >= deadline || options.signal?.aborted) break;
    const spec = randomScenario(options.seed, run);
    const kinds = { partial: spec.partial !== undefined, deadline: spec.deadlineAfterStows !== undefined };
    const runStarted = Date.now();
    let report: ScenarioReport | undefined;
    try {
      report = await runScenario(spec, { childTimeoutMs: options.childTimeoutMs ?? 120_000 });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      results.push({
        run,
        name: spec.name,
        ...kinds,
        instances: 0,
        refused: 0,
        deadlineCuts: 0,
        triggered: false,
        lost: 0,
        resent: 0,
        complete: false,
        deadLettered: 0,
        seconds: (Date.now() - runStarted) / 1000,
        error: message,
      });
      options.onProgress?.(`${spec.name}: ERROR ${message}`);
      continue;
    }
    results.push({
      run,
      name: spec.name,
      ...kinds,
      instances: report.instances,
      refused: report.refused,
      deadlineCuts: report.deadlineCuts,
      triggered: report.triggered,
      lost: report.lost,
      resent: report.resent,
      complete: report.complete,
      deadLettered: report.deadLettered,
      seconds: report.durationMs / 1000,
    });
    options.onProgress?.(describeReport(report));
  }
  const count = (test: (run: ChaosRun) => boolean) => results.filter(test).length;
  const sum = (of: (run: ChaosRun) => number) => results.reduce((total, run) => total + of(run), 0);
  const played = (run: ChaosRun) => run.error === undefined;
  return {
    seed: options.seed,
    runsRequested: options.runs,
    runs: results.length,
    triggered: count((run) => run.triggered),
    instancesChecked: sum((run) => run.instances),
    partialRuns: count((run) => run.partial),
    refused: sum((run) => run.refused),
    deadlineRuns: count((run) => run.deadline),
    deadlineCuts: sum((run) => run.deadlineCuts),
    lost: sum((run) => run.lost),
    resent: sum((run) => run.resent),
    incomplete: count((run) => played(run) && !run.complete),
    deadLettered: sum((run) => run.deadLettered),
    errors: count((run) => !played(run)),
    skipped: options.runs - results.length,
    seconds: Math.round((Date.now() - started) / 100) / 10,
    results,
  };
};

/** Nothing lost, no error, every move complete without a dead letter, at least one run done. */
export const chaosPassed = (summary: ChaosSummary): boolean =>
  summary.lost === 0 &&
  summary.errors === 0 &&
  summary.incomplete === 0 &&
  summary.deadLettered === 0 &&
  summary.runs > 0;
