/** The memory run: one large study generated straight into the source, moved by the relay. */
import { generateStudies } from '../../testbed/dicom-generator.ts';
import type { Lab, Trial } from './lab.ts';
import {
  type BenchOptions,
  type RelayRun,
  type RelaySettings,
  type Runtime,
  relayRunLabel,
} from './options.ts';
import { round, type TrialFigures } from './stats.ts';
import { describeTrial, figures, type Progress } from './trials.ts';

/** One move of the large study by a relay child running from `runtime`. */
export interface BigStudyRun {
  readonly runtime: Runtime;
  readonly nodeFlags: readonly string[];
  /** Our process's peak RSS over its whole life, startup included. */
  readonly peakRssMb: number;
  /** The peak while loading modules, before moving anything. */
  readonly startupPeakRssMb: number;
  /** The peak while moving the study (VmHWM reset once the modules were loaded). */
  readonly movePeakRssMb: number | undefined;
  /** RSS once the modules were loaded, before moving. */
  readonly baselineRssMb: number;
  /** Peaks of V8's heap and of Buffer memory while moving. */
  readonly memoryPeaksMb: Trial['memoryPeaksMb'];
  readonly seconds: number;
  readonly instancesPerSecond: number;
  readonly mbPerSecond: number;
  readonly cpuSecondsPer1000: TrialFigures['cpuPer1000'];
  readonly allMoved: boolean;
}

/** The memory run: the first run's figures (the relay as the comparison ran it), and every run. */
export interface BigStudyResult extends BigStudyRun {
  readonly bytes: number;
  readonly instances: number;
  readonly runs: readonly BigStudyRun[];
}

/** The memory run: the relay as the comparison runs it, then each further variant asked for. */
export const bigVariants = (options: BenchOptions): RelayRun[] => {
  const variants = [options.relayRun, ...options.bigVariants];
  return variants.filter(
    (run, index) => variants.findIndex((other) => relayRunLabel(other) === relayRunLabel(run)) === index,
  );
};

/** One study of at least `gb` GB, generated straight into the source, moved by the relay. */
export const measureBigStudy = async (
  lab: Lab,
  gb: number,
  settings: RelaySettings,
  variants: readonly RelayRun[],
  progress: Progress,
): Promise<BigStudyResult> => {
  const pixelBytes = 512 * 1024;
  const series = 8;
  const perSeries = Math.ceil((gb * 1e9) / pixelBytes / series);
  const generated = generateStudies({
    patients: 1,
    studiesPerPatient: 1,
    seriesPerStudy: series,
    instancesPerSeries: perSeries,
    pixelBytes,
    seed: 'bench-big',
  });
  const set = { instances: generated.instances.length, bytes: generated.totalBytes };
  // The study is stored twice (source and destination) during each run.
  lab.requireFreeSpace(2.2 * set.bytes);
  const runs: BigStudyRun[] = [];
  for (const variant of variants) {
    const what = `big study (${relayRunLabel(variant)})`;
    progress(`${what}: generating ${set.instances} instances (${round(set.bytes / 1e9)} GB) into the source`);
    await lab.emptyDestination();
    const studies = await lab.loadSource(generated.instances);
    const trial = await lab.run(lab.relayJob(studies, settings), variant);
    const t = await figures(lab, trial, set);
    progress(describeTrial(`${what} relay`, t));
    await lab.emptyDestination();
    await lab.emptySource();
    runs.push({
      runtime: variant.runtime,
      nodeFlags: variant.nodeFlags,
      peakRssMb: t.peakRssMb,
      startupPeakRssMb: t.startupPeakRssMb,
      movePeakRssMb: t.operationPeakRssMb,
      baselineRssMb: t.baselineRssMb,
      memoryPeaksMb: trial.memoryPeaksMb,
      seconds: t.seconds,
      instancesPerSecond: t.instancesPerSecond,
      mbPerSecond: t.mbPerSecond,
      cpuSecondsPer1000: t.cpuPer1000,
      allMoved: t.destinationInstances === set.instances && t.sourceInstancesLeft === 0,
    });
  }
  const [first] = runs;
  if (first === undefined) throw new Error('the memory run needs at least one variant');
  return { ...first, bytes: set.bytes, instances: set.instances, runs };
};
