/** The separate modes: the relay's tuning sweep, and reading series from the source two ways. */
import type { Lab } from './lab.ts';
import {
  type BenchOptions,
  type RelaySettings,
  type SetShape,
  settingsLabel,
  sweepSettings,
} from './options.ts';
import { type MethodFigures, summarise, type TrialFigures } from './stats.ts';
import { describeTrial, figures, measureRelay, type Progress } from './trials.ts';

export interface SweepPoint {
  readonly settings: RelaySettings;
  readonly label: string;
  readonly relay: MethodFigures;
}

export interface ReadPoint {
  readonly mode: 'wado' | 'instances';
  readonly concurrency: number;
  readonly requests: number;
  readonly connections: number;
  readonly figures: MethodFigures;
}

/** The relay at several settings on one set (one setting varied at a time). */
export const runSweep = async (
  lab: Lab,
  shape: SetShape,
  options: BenchOptions,
  progress: Progress,
): Promise<SweepPoint[]> => {
  const set = await lab.writeSet(shape);
  const settingsList = sweepSettings();
  const trials = new Map<string, TrialFigures[]>(settingsList.map((s) => [settingsLabel(s), []]));
  try {
    for (let rep = 0; rep < options.repetitions; rep++) {
      for (const settings of settingsList) {
        const t = await measureRelay(lab, set, settings, options.relayRun);
        trials.get(settingsLabel(settings))?.push(t);
        progress(describeTrial(`sweep #${rep + 1} ${settingsLabel(settings)}`, t));
      }
    }
  } finally {
    lab.removeSet(set);
  }
  return settingsList.map((settings) => ({
    settings,
    label: settingsLabel(settings),
    relay: summarise(trials.get(settingsLabel(settings)) ?? [], set.instances, true),
  }));
};

/** Reading every series of the set from the source: one WADO-RS request per series, or one request per instance. */
export const runReadComparison = async (
  lab: Lab,
  shape: SetShape,
  options: BenchOptions,
  progress: Progress,
): Promise<ReadPoint[]> => {
  const set = await lab.writeSet(shape);
  try {
    await lab.loadSource(set.files);
    const series = await lab.sourceSeries();
    const variants: { mode: 'wado' | 'instances'; concurrency: number }[] = [
      { mode: 'wado', concurrency: 1 },
      { mode: 'instances', concurrency: 1 },
      { mode: 'wado', concurrency: 4 },
      { mode: 'instances', concurrency: 4 },
    ];
    const points: ReadPoint[] = [];
    const trials = variants.map(
      () => [] as { figures: TrialFigures; requests: number; connections: number }[],
    );
    for (let rep = 0; rep < options.repetitions; rep++) {
      for (const [index, variant] of variants.entries()) {
        const trial = await lab.run({ kind: 'read', source: lab.sourceRef(), series, ...variant });
        const t = await figures(lab, trial, set);
        const socket = Object.values(trial.connections).reduce(
          (sum, c) => ({ requests: sum.requests + c.requests, connections: sum.connections + c.connections }),
          { requests: 0, connections: 0 },
        );
        trials[index]?.push({ figures: t, ...socket });
        progress(describeTrial(`read #${rep + 1} ${variant.mode} x${variant.concurrency}`, t));
      }
    }
    for (const [index, variant] of variants.entries()) {
      const list = trials[index] ?? [];
      points.push({
        ...variant,
        requests: list[0]?.requests ?? 0,
        connections: list[0]?.connections ?? 0,
        figures: summarise(
          list.map((entry) => entry.figures),
          0,
          false,
        ),
      });
    }
    return points;
  } finally {
    await lab.emptySource();
    lab.removeSet(set);
  }
};
