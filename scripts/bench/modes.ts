/**
 * The relay at several settings on one set (the tuning sweep, the verification modes), and
 * reading series from the source three ways.
 */
import { LinkEmulator, linkCapacityMBps, linkLabel } from '../../testbed/link-emulator.ts';
import type { DataSet, Lab } from './lab.ts';
import type { ReadMode } from './operations.ts';
import {
  type BenchOptions,
  type RelayRun,
  type RelaySettings,
  type SetShape,
  settingsLabel,
  sweepSettings,
  verifyModeName,
  verifyModes,
} from './options.ts';
import {
  type MethodFigures,
  type PhaseTimes,
  phaseMedians,
  range,
  ratio,
  round,
  summarise,
  type TrialFigures,
} from './stats.ts';
import { describeTrial, figures, measureRelay, type Progress, rotated } from './trials.ts';

/** The relay's figures at one setting: a point of the sweep, or a verification mode. */
export interface SettingsPoint {
  readonly settings: RelaySettings;
  readonly label: string;
  readonly relay: MethodFigures;
  readonly phasesMs: PhaseTimes;
}

/** How many trials of each setting, how the relay child runs, and where progress goes. */
interface RelayTrials {
  readonly repetitions: number;
  readonly run: RelayRun;
  readonly progress: Progress;
}

/** One verification mode's figures (`verifyModes`), and its throughput against `qido`'s. */
export interface VerifyModeFigures extends MethodFigures {
  readonly settings: RelaySettings;
  readonly studiesPerSecond: number;
  readonly phasesMs: PhaseTimes;
  readonly ratioToQido: number | undefined;
}

export interface ReadPoint {
  readonly mode: ReadMode;
  readonly concurrency: number;
  /** `loopback`, or the link's `RTT_MS:MBIT`; over a link, MB/s over its capacity too. */
  readonly link: string;
  readonly linkFraction?: number;
  readonly requests: number;
  readonly connections: number;
  readonly figures: MethodFigures;
}

/** The relay at each of several settings on one set, the settings interleaved in each repetition. */
const compareSettings = async (
  lab: Lab,
  set: DataSet,
  settingsList: readonly RelaySettings[],
  labelOf: (settings: RelaySettings) => string,
  how: RelayTrials,
): Promise<SettingsPoint[]> => {
  const trials = new Map<RelaySettings, TrialFigures[]>(settingsList.map((settings) => [settings, []]));
  for (let rep = 0; rep < how.repetitions; rep++) {
    for (const settings of rotated(settingsList, rep)) {
      const t = await measureRelay(lab, set, settings, how.run);
      trials.get(settings)?.push(t);
      how.progress(describeTrial(`${set.shape.name} #${rep + 1} relay ${labelOf(settings)}`, t));
    }
  }
  return settingsList.map((settings) => {
    const list = trials.get(settings) ?? [];
    return {
      settings,
      label: labelOf(settings),
      relay: summarise(list, set.instances, true),
      phasesMs: phaseMedians(list),
    };
  });
};

/** The relay at several settings on one set (one setting varied at a time). */
export const runSweep = (
  lab: Lab,
  shape: SetShape,
  options: BenchOptions,
  progress: Progress,
): Promise<SettingsPoint[]> =>
  lab.withSet(shape, (set) =>
    compareSettings(lab, set, sweepSettings(), settingsLabel, {
      repetitions: options.repetitions,
      run: options.relayRun,
      progress,
    }),
  );

/** Each verification mode on one set, by its name. */
export const compareVerifyModes = async (
  lab: Lab,
  set: DataSet,
  how: RelayTrials,
): Promise<Record<string, VerifyModeFigures>> => {
  const points = await compareSettings(lab, set, verifyModes(), verifyModeName, how);
  const qido = points.find((point) => point.label === 'qido');
  return Object.fromEntries(
    points.map((point) => [
      point.label,
      {
        ...point.relay,
        settings: point.settings,
        studiesPerSecond: round(
          range(point.relay.trials.map((t) => set.shape.studies / t.seconds)).median,
          2,
        ),
        phasesMs: point.phasesMs,
        ratioToQido: ratio(point.relay.instancesPerSecond, qido?.relay.instancesPerSecond),
      },
    ]),
  );
};

/**
 * Reading every series of the set from the source: one WADO-RS request per series, one request
 * per instance in turn, or read ahead as the relay does; on loopback, then across each of
 * `options.links` (`--wado --link`), where the source is reached through the emulator.
 */
export const runReadComparison = (
  lab: Lab,
  shape: SetShape,
  options: BenchOptions,
  progress: Progress,
): Promise<ReadPoint[]> =>
  lab.withSet(shape, async (set) => {
    try {
      await lab.loadSource(set.files);
      const series = await lab.sourceSeries();
      const variants: { mode: ReadMode; concurrency: number }[] = [
        { mode: 'wado', concurrency: 1 },
        { mode: 'instances', concurrency: 1 },
        { mode: 'wado', concurrency: 4 },
        { mode: 'instances', concurrency: 4 },
        { mode: 'ahead', concurrency: 4 },
      ];
      const points: ReadPoint[] = [];
      for (const profile of [undefined, ...(options.linkOnly ? options.links : [])]) {
        const link =
          profile === undefined ? undefined : await LinkEmulator.start(lab.source.httpPort, profile);
        try {
          const source = { ...lab.sourceRef(), ...(link === undefined ? {} : { url: link.url }) };
          const where = profile === undefined ? 'loopback' : linkLabel(profile);
          const trials = variants.map(
            () => [] as { figures: TrialFigures; requests: number; connections: number }[],
          );
          for (let rep = 0; rep < options.repetitions; rep++) {
            for (const [index, variant] of variants.entries()) {
              const trial = await lab.run({
                kind: 'read',
                source,
                series,
                instanceBytes: set.bytes / set.instances,
                ...variant,
              });
              const t = await figures(lab, trial, set);
              const socket = Object.values(trial.connections).reduce(
                (sum, c) => ({
                  requests: sum.requests + c.requests,
                  connections: sum.connections + c.connections,
                }),
                { requests: 0, connections: 0 },
              );
              trials[index]?.push({ figures: t, ...socket });
              progress(describeTrial(`read ${where} #${rep + 1} ${variant.mode} x${variant.concurrency}`, t));
            }
          }
          for (const [index, variant] of variants.entries()) {
            const list = trials[index] ?? [];
            const summary = summarise(
              list.map((entry) => entry.figures),
              0,
              false,
            );
            points.push({
              ...variant,
              link: where,
              ...(profile === undefined
                ? {}
                : { linkFraction: round(summary.mbPerSecond / linkCapacityMBps(profile), 3) }),
              requests: list[0]?.requests ?? 0,
              connections: list[0]?.connections ?? 0,
              figures: summary,
            });
          }
        } finally {
          await link?.close();
        }
      }
      return points;
    } finally {
      await lab.emptySource();
    }
  });
