/** Turning trials into figures: rates, medians and ranges, CPU per 1,000 instances. */
import type { ConnectionCounts } from './operations.ts';

export interface Range {
  readonly median: number;
  readonly min: number;
  readonly max: number;
}

/** A trial reduced to what the report compares. */
export interface TrialFigures {
  readonly seconds: number;
  readonly instancesPerSecond: number;
  readonly mbPerSecond: number;
  /**
   * CPU seconds per 1,000 instances: our process (of which in the kernel), the source Orthanc, the
   * destination Orthanc, and the benchmark's own process (which runs the link emulator, if any).
   */
  readonly cpuPer1000: {
    readonly ours: number;
    readonly oursSystem: number;
    readonly source: number;
    readonly destination: number;
    readonly bench: number;
  };
  readonly peakRssMb: number;
  readonly startupPeakRssMb: number;
  readonly operationPeakRssMb: number | undefined;
  readonly baselineRssMb: number;
  /** Instances at the destination afterwards, and left at the source. */
  readonly destinationInstances: number;
  readonly sourceInstancesLeft: number;
  readonly connections: ConnectionCounts;
  readonly counts: Readonly<Record<string, number>>;
  /** The relay child's warnings, counted by message. */
  readonly warnings?: Readonly<Record<string, number>>;
}

export interface MethodFigures {
  /** Medians over the trials. */
  readonly instancesPerSecond: number;
  readonly mbPerSecond: number;
  readonly seconds: number;
  /** The highest peak RSS of our process over the trials, in MB (10^6 bytes). */
  readonly peakRssMb: number;
  readonly median: {
    readonly instancesPerSecond: number;
    readonly mbPerSecond: number;
    readonly seconds: number;
  };
  readonly min: {
    readonly instancesPerSecond: number;
    readonly mbPerSecond: number;
    readonly seconds: number;
  };
  readonly max: {
    readonly instancesPerSecond: number;
    readonly mbPerSecond: number;
    readonly seconds: number;
  };
  /** Median CPU seconds per 1,000 instances of each process. */
  readonly cpuSecondsPer1000: {
    readonly ours: number;
    readonly oursSystem: number;
    readonly source: number;
    readonly destination: number;
    readonly bench: number;
  };
  /** Every trial moved every instance (and, for push and relay, left none at the source). */
  readonly allMoved: boolean;
  readonly trials: readonly TrialFigures[];
}

export const round = (value: number, digits = 2): number => Number(value.toFixed(digits));

export const range = (values: readonly number[]): Range => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length / 2;
  const median =
    sorted.length === 0
      ? Number.NaN
      : sorted.length % 2 === 1
        ? (sorted[Math.floor(middle)] as number)
        : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
  return { median, min: sorted[0] ?? Number.NaN, max: sorted[sorted.length - 1] ?? Number.NaN };
};

/** Summarises the trials of one method on one set of `instances` instances. */
export const summarise = (
  trials: readonly TrialFigures[],
  instances: number,
  movesAll: boolean,
): MethodFigures => {
  const seconds = range(trials.map((t) => t.seconds));
  const ips = range(trials.map((t) => t.instancesPerSecond));
  const mbps = range(trials.map((t) => t.mbPerSecond));
  const pick = (key: keyof Range) => ({
    instancesPerSecond: round(ips[key], 1),
    mbPerSecond: round(mbps[key], 1),
    seconds: round(seconds[key], 2),
  });
  const cpu = (key: keyof TrialFigures['cpuPer1000']) =>
    round(range(trials.map((t) => t.cpuPer1000[key])).median, 3);
  return {
    instancesPerSecond: round(ips.median, 1),
    mbPerSecond: round(mbps.median, 1),
    seconds: round(seconds.median, 2),
    peakRssMb: Math.max(...trials.map((t) => t.peakRssMb)),
    median: pick('median'),
    // Each figure's own minimum and maximum over the trials.
    min: pick('min'),
    max: pick('max'),
    cpuSecondsPer1000: {
      ours: cpu('ours'),
      oursSystem: cpu('oursSystem'),
      source: cpu('source'),
      destination: cpu('destination'),
      bench: cpu('bench'),
    },
    allMoved: trials.every(
      (t) => t.destinationInstances === instances && (!movesAll || t.sourceInstancesLeft === 0),
    ),
    trials,
  };
};

/** a / b, rounded; undefined when either is missing. */
export const ratio = (a: number | undefined, b: number | undefined): number | undefined =>
  a === undefined || b === undefined || b === 0 ? undefined : round(a / b, 2);

/** Where a relay trial's time went, summed over its studies (scripts/bench/operations.ts, phaseClock), in ms. */
export interface PhaseTimes {
  readonly sendMs: number;
  readonly verifyMs: number;
  readonly deleteMs: number;
}

/** The median of each phase's time over the trials. */
export const phaseMedians = (trials: readonly TrialFigures[]): PhaseTimes => {
  const median = (phase: keyof PhaseTimes) => round(range(trials.map((t) => t.counts[phase] ?? 0)).median, 0);
  return { sendMs: median('sendMs'), verifyMs: median('verifyMs'), deleteMs: median('deleteMs') };
};
