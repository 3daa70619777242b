/**
 * One timed trial of each method on a set: the destination emptied, the source loaded when the
 * method moves from it (neither timed), the child run, the figures read, the destination emptied.
 */
import type { Across, DataSet, Lab, Trial } from './lab.ts';
import type { RelayRun, RelaySettings } from './options.ts';
import { round, type TrialFigures } from './stats.ts';

export type Progress = (line: string) => void;

/**
 * The repetition's order of what is compared: each repetition starts with the next one, so that
 * a change in the machine's load does not always hit the same one.
 */
export const rotated = <T>(items: readonly T[], repetition: number): T[] => {
  const by = repetition % items.length;
  return [...items.slice(by), ...items.slice(0, by)];
};

/** A set as the JSON describes it. */
export interface SetSummary {
  readonly name: string;
  readonly instances: number;
  readonly bytes: number;
  readonly sizeKb: number;
  readonly studies: number;
}

export const setSummary = (set: DataSet): SetSummary => ({
  name: set.shape.name,
  instances: set.instances,
  bytes: set.bytes,
  sizeKb: set.shape.sizeKb,
  studies: set.shape.studies,
});

export const figures = async (
  lab: Lab,
  trial: Trial,
  set: Pick<DataSet, 'instances' | 'bytes'>,
): Promise<TrialFigures> => {
  const per1000 = (cpu: number) => round((cpu * 1000) / set.instances, 3);
  const counts = await lab.counts();
  return {
    seconds: round(trial.seconds, 3),
    instancesPerSecond: round(set.instances / trial.seconds, 1),
    mbPerSecond: round(set.bytes / 1e6 / trial.seconds, 1),
    cpuPer1000: {
      ours: per1000(trial.cpuSeconds),
      oursSystem: per1000(trial.cpuSystemSeconds),
      source: per1000(trial.sourceCpuSeconds),
      destination: per1000(trial.destinationCpuSeconds),
      bench: per1000(trial.benchCpuSeconds),
    },
    peakRssMb: trial.peakRssMb,
    startupPeakRssMb: trial.startupPeakRssMb,
    operationPeakRssMb: trial.operationPeakRssMb,
    baselineRssMb: trial.baselineRssMb,
    destinationInstances: counts.destination,
    sourceInstancesLeft: counts.source,
    connections: trial.connections,
    counts: trial.counts,
    ...(trial.warnings === undefined ? {} : { warnings: trial.warnings }),
  };
};

export const describeTrial = (what: string, t: TrialFigures): string => {
  const phases =
    t.counts.sendMs === undefined
      ? ''
      : `, study phases (summed) send ${t.counts.sendMs} ms verify ${t.counts.verifyMs} ms delete ${t.counts.deleteMs} ms`;
  return (
    `${what}: ${t.seconds.toFixed(2)} s, ${t.instancesPerSecond} inst/s, ${t.mbPerSecond} MB/s, ` +
    `CPU/1000 ours ${t.cpuPer1000.ours} src ${t.cpuPer1000.source} dst ${t.cpuPer1000.destination}, ` +
    `peak RSS ${t.peakRssMb} MB (startup ${t.startupPeakRssMb}, operation ${t.operationPeakRssMb}), ` +
    `at destination ${t.destinationInstances}, left ${t.sourceInstancesLeft}${phases}` +
    Object.entries(t.warnings ?? {})
      .map(([message, count]) => `; warned ${count}× ${message}`)
      .join('')
  );
};

export const measureCeiling = async (lab: Lab, set: DataSet, concurrency: number): Promise<TrialFigures> => {
  await lab.emptyDestination();
  await lab.emptySource();
  const trial = await lab.run(lab.ceilingJob(set, concurrency));
  const result = await figures(lab, trial, set);
  await lab.emptyDestination();
  return result;
};

/** `destinationName`: the destination as the source knows it (another route to it, `Lab.addPushTarget`). */
export const measurePush = async (
  lab: Lab,
  set: DataSet,
  concurrency: number,
  destinationName?: string,
): Promise<TrialFigures> => {
  await lab.emptyDestination();
  const studies = await lab.loadSource(set.files);
  const trial = await lab.run(lab.pushJob(studies, concurrency, destinationName));
  const result = await figures(lab, trial, set);
  await lab.emptyDestination();
  return result;
};

export const measureRelay = async (
  lab: Lab,
  set: DataSet,
  settings: RelaySettings,
  run: RelayRun = { runtime: 'ts', nodeFlags: [] },
  across: Across = {},
): Promise<TrialFigures> => {
  await lab.emptyDestination();
  const studies = await lab.loadSource(set.files);
  const trial = await lab.run(lab.relayJob(studies, settings, across), run);
  const result = await figures(lab, trial, set);
  await lab.emptyDestination();
  return result;
};
