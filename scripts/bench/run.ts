/**
 * The benchmark itself: on each set, the ceiling, the push and the relay, interleaved and
 * repeated on a fresh destination (and a freshly loaded source); on the default set, the relay at
 * each verification mode and with a read rate cap; then the memory run with one large study; then the poller run on the
 * AWS emulators; or, as separate modes, the relay's tuning sweep, the WADO-RS read comparison,
 * the verification modes alone, and the poller run alone.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BigStudyResult, bigVariants, measureBigStudy } from './big-study.ts';
import { type DataSet, Lab } from './lab.ts';
import { type LinkResult, measureOverLinks } from './link.ts';
import {
  compareVerifyModes,
  type ReadPoint,
  runReadComparison,
  runSweep,
  type SettingsPoint,
  type VerifyModeFigures,
} from './modes.ts';
import type { BenchOptions, RelaySettings, SetShape } from './options.ts';
import { measurePoller, type PollerResult } from './poller.ts';
import { machineLoad } from './proc.ts';
import { measureRateCap, type RateCapResult } from './rate-cap.ts';
import { type MethodFigures, ratio, round, summarise, type TrialFigures } from './stats.ts';
import { evaluateTargets, type TargetResult } from './targets.ts';
import {
  describeTrial,
  measureCeiling,
  measurePush,
  measureRelay,
  type Progress,
  rotated,
  type SetSummary,
  setSummary,
} from './trials.ts';

export type { BigStudyResult, BigStudyRun } from './big-study.ts';

export interface SetResult {
  readonly set: SetSummary;
  readonly ceiling: MethodFigures & {
    readonly concurrency: number;
    readonly byConcurrency: Readonly<Record<string, MethodFigures>>;
  };
  readonly push: MethodFigures;
  readonly relay: MethodFigures & { readonly settings: RelaySettings };
  readonly ratios: { readonly relayVsPush: number | undefined; readonly relayVsCeiling: number | undefined };
}

export interface BenchResult {
  readonly machine: {
    readonly cpus: number;
    readonly node: string;
    /** The destination had CPU 1 to itself (`--pin`). */
    readonly pinned: boolean;
    readonly loadBefore: readonly number[];
    readonly loadAfter: readonly number[];
  };
  readonly ceiling?: SetResult['ceiling'];
  readonly push?: MethodFigures;
  readonly relay?: SetResult['relay'];
  readonly ratios?: SetResult['ratios'];
  readonly sets: readonly SetResult[];
  readonly bigStudy?: BigStudyResult;
  /** The relay at each verification mode on the default set, by the mode's name. */
  readonly verify?: Readonly<Record<string, VerifyModeFigures>>;
  /** The relay on the default set with maxReadMBps at half its uncapped speed. */
  readonly rateCap?: RateCapResult;
  readonly sweep?: readonly SettingsPoint[];
  readonly wado?: readonly ReadPoint[];
  readonly poller?: PollerResult;
  /** The push and the relay over each emulated link, by the link's `RTT_MS:MBIT`. */
  readonly link?: Readonly<Record<string, LinkResult>>;
  readonly targets: readonly TargetResult[];
  readonly durationSeconds: number;
}

type Method = 'ceiling' | 'push' | 'relay';

/** The three methods on one set, interleaved: each repetition starts with a different one. */
export const compareOnSet = async (
  lab: Lab,
  set: DataSet,
  options: BenchOptions,
  progress: Progress,
): Promise<SetResult> => {
  const { shape } = set;
  const ceiling = new Map<number, TrialFigures[]>(options.ceilingConcurrency.map((c) => [c, []]));
  const push: TrialFigures[] = [];
  const relay: TrialFigures[] = [];
  const methods: Method[] = ['ceiling', 'push', 'relay'];
  for (let rep = 0; rep < options.repetitions; rep++) {
    for (const method of rotated(methods, rep)) {
      const label = `${shape.name} #${rep + 1} ${method}`;
      if (method === 'ceiling') {
        for (const concurrency of options.ceilingConcurrency) {
          const t = await measureCeiling(lab, set, concurrency);
          ceiling.get(concurrency)?.push(t);
          progress(describeTrial(`${label} (concurrency ${concurrency})`, t));
        }
      } else if (method === 'push') {
        const t = await measurePush(lab, set, options.pushConcurrency);
        push.push(t);
        progress(describeTrial(label, t));
      } else {
        const t = await measureRelay(lab, set, options.relay, options.relayRun);
        relay.push(t);
        progress(describeTrial(label, t));
      }
    }
  }
  const byConcurrency = Object.fromEntries(
    [...ceiling].map(([c, trials]) => [String(c), summarise(trials, set.instances, false)]),
  );
  const [bestConcurrency, best] = Object.entries(byConcurrency).reduce((a, b) =>
    b[1].instancesPerSecond > a[1].instancesPerSecond ? b : a,
  );
  const relayFigures = summarise(relay, set.instances, true);
  const pushFigures = summarise(push, set.instances, true);
  return {
    set: setSummary(set),
    ceiling: { ...best, concurrency: Number(bestConcurrency), byConcurrency },
    push: pushFigures,
    relay: { ...relayFigures, settings: options.relay },
    ratios: {
      relayVsPush: ratio(relayFigures.instancesPerSecond, pushFigures.instancesPerSecond),
      relayVsCeiling: ratio(relayFigures.instancesPerSecond, best.instancesPerSecond),
    },
  };
};

/** Runs what the options ask for and returns every figure; starts and stops its own Orthancs. */
export const runBenchmark = async (options: BenchOptions): Promise<BenchResult> => {
  const progress = options.onProgress ?? (() => undefined);
  const started = performance.now();
  const loadBefore = machineLoad();
  const work = mkdtempSync(join(tmpdir(), 'orthanc-forwarder-bench-'));
  const sets: SetResult[] = [];
  let bigStudy: BigStudyResult | undefined;
  let verify: Record<string, VerifyModeFigures> | undefined;
  let rateCap: RateCapResult | undefined;
  let sweep: SettingsPoint[] | undefined;
  let wado: ReadPoint[] | undefined;
  let poller: PollerResult | undefined;
  const link: Record<string, LinkResult> = {};
  const full = !options.sweep && !options.wado && !options.verifyModesOnly && !options.linkOnly;
  try {
    if (!options.pollerOnly) {
      const lab = await Lab.start(join(work, 'lab'), { pin: options.pin });
      const withSet = <T>(shape: SetShape, use: (set: DataSet) => Promise<T>): Promise<T> => {
        progress(`set '${shape.name}': writing ${shape.instances} instances of ${shape.sizeKb} KiB`);
        return lab.withSet(shape, use);
      };
      try {
        if (options.sweep) sweep = await runSweep(lab, options.main, options, progress);
        if (options.wado) wado = await runReadComparison(lab, options.main, options, progress);
        // With --wado, the links are those the source is read across.
        if (options.linkOnly && !options.wado) {
          for (const shape of [options.main, options.small]) {
            if (shape !== undefined)
              await withSet(shape, (set) => measureOverLinks(lab, set, options, link, progress));
          }
        }
        if (full || options.verifyModesOnly) {
          await withSet(options.main, async (set) => {
            if (full) {
              const compared = await compareOnSet(lab, set, options, progress);
              sets.push(compared);
              if (options.rateCap) {
                rateCap = await measureRateCap(
                  lab,
                  set,
                  {
                    settings: options.relay,
                    run: options.relayRun,
                    uncappedMBps: compared.relay.mbPerSecond,
                  },
                  progress,
                );
              }
              await measureOverLinks(lab, set, options, link, progress);
            }
            if (options.verifyRepetitions !== undefined) {
              verify = await compareVerifyModes(lab, set, {
                repetitions: options.verifyRepetitions,
                run: options.relayRun,
                progress,
              });
            }
          });
        }
        if (full) {
          if (options.small !== undefined) {
            await withSet(options.small, async (set) => {
              sets.push(await compareOnSet(lab, set, options, progress));
              await measureOverLinks(lab, set, options, link, progress);
            });
          }
          if (options.bigGb !== undefined) {
            bigStudy = await measureBigStudy(
              lab,
              options.bigGb,
              options.relay,
              bigVariants(options),
              progress,
            );
          }
        }
      } finally {
        await lab.stop();
      }
    }
    if (options.poller !== undefined && (options.pollerOnly || full)) {
      poller = await measurePoller(options.poller, work, progress);
    }
    const main = sets[0];
    return {
      machine: {
        cpus: cpus().length,
        node: process.version,
        pinned: options.pin,
        loadBefore,
        loadAfter: machineLoad(),
      },
      ...(main === undefined
        ? {}
        : { ceiling: main.ceiling, push: main.push, relay: main.relay, ratios: main.ratios }),
      sets,
      ...(verify === undefined ? {} : { verify }),
      ...(rateCap === undefined ? {} : { rateCap }),
      ...(bigStudy === undefined ? {} : { bigStudy }),
      ...(sweep === undefined ? {} : { sweep }),
      ...(wado === undefined ? {} : { wado }),
      ...(poller === undefined ? {} : { poller }),
      ...(Object.keys(link).length === 0 ? {} : { link }),
      targets: evaluateTargets(sets, bigStudy, verify),
      durationSeconds: round((performance.now() - started) / 1000, 1),
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
};
