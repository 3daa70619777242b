/**
 * The read rate cap (`maxReadMBps`): the relay on the default set once more, capped at half of
 * what it reached uncapped, so that the cap is what limits it. Two rates are set against the cap:
 * end to end (the set's bytes over the trial, which also holds the verification and deletion
 * after the last read, so it sits below 1), and while sending (the bytes over the studies' send
 * phases, summed over the studies and divided by how many moved at once): the cap holds when
 * that one is within 10 % of it.
 */
import type { DataSet, Lab } from './lab.ts';
import type { RelayRun, RelaySettings } from './options.ts';
import { round } from './stats.ts';
import { describeTrial, measureRelay, type Progress } from './trials.ts';

export interface RateCapResult {
  readonly capMBps: number;
  readonly achievedMBps: number;
  /** End to end, over the cap. */
  readonly ratio: number;
  readonly sendingMBps: number;
  /** While sending, over the cap. */
  readonly sendingRatio: number;
  readonly seconds: number;
  readonly allMoved: boolean;
}

export const measureRateCap = async (
  lab: Lab,
  set: DataSet,
  relay: { readonly settings: RelaySettings; readonly run: RelayRun; readonly uncappedMBps: number },
  progress: Progress,
): Promise<RateCapResult> => {
  const capMBps = Math.max(0.1, round(relay.uncappedMBps / 2, 1));
  const trial = await measureRelay(lab, set, { ...relay.settings, maxReadMBps: capMBps }, relay.run);
  progress(describeTrial(`${set.shape.name} relay, maxReadMBps ${capMBps}`, trial));
  const megabytes = set.bytes / 1e6;
  const achievedMBps = megabytes / trial.seconds;
  const atOnce = Math.min(set.shape.studies, relay.settings.concurrency);
  const sendingMBps = megabytes / ((trial.counts.sendMs ?? 0) / 1000 / atOnce);
  return {
    capMBps,
    achievedMBps: round(achievedMBps, 1),
    ratio: round(achievedMBps / capMBps, 3),
    sendingMBps: round(sendingMBps, 1),
    sendingRatio: round(sendingMBps / capMBps, 3),
    seconds: trial.seconds,
    allMoved: trial.sourceInstancesLeft === 0 && trial.destinationInstances === set.instances,
  };
};
