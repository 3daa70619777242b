/**
 * The push and the relay over an emulated link (testbed/link-emulator.ts), on one set:
 * - push: the source Orthanc sends across the link to the destination;
 * - relay, link at the source (the AWS shape: the forwarder reads the source over a VPN, the
 *   destination is near);
 * - relay, link at the destination (local mode's shape: the source is on the LAN, the
 *   destination across the link).
 * Each figure is also set against the link's capacity (its bandwidth in MB/s).
 */
import { LinkEmulator, type LinkProfile, linkCapacityMBps, linkLabel } from '../../testbed/link-emulator.ts';
import type { DataSet, Lab } from './lab.ts';
import type { BenchOptions } from './options.ts';
import { type MethodFigures, range, ratio, round, summarise, type TrialFigures } from './stats.ts';
import {
  describeTrial,
  measurePush,
  measureRelay,
  type Progress,
  rotated,
  type SetSummary,
  setSummary,
} from './trials.ts';

/** A method's figures over the link, and its MB/s over the link's capacity. */
export interface LinkFigures extends MethodFigures {
  readonly linkFraction: number;
  /**
   * The relay's: its studies' move durations summed, per GB (10^9 bytes) moved (median over the
   * trials). Deployed, each study is one forwarder invocation: this is its billed time.
   */
  readonly busySecondsPerGB?: number;
  /** What that time costs on Lambda at the forwarder's default size (LAMBDA_PRICE), USD per GB. */
  readonly lambdaUsdPerGB?: number;
}

/**
 * The forwarder Lambda's default (aws.forwarder.memoryMb 1024, arm64) at Lambda's list price for
 * arm64 in us-east-1, first tier: USD 0.0000133334 per GB-second of memory. Requests (USD 0.20
 * per million, one per study) are left out: 1,000 studies cost USD 0.0002.
 */
export const LAMBDA_PRICE = { memoryGB: 1, usdPerGBSecond: 0.0000133334 } as const;

export interface LinkSetResult {
  readonly set: SetSummary;
  readonly push: LinkFigures;
  readonly relaySourceLink: LinkFigures;
  readonly relayDestinationLink: LinkFigures;
  readonly ratios: {
    readonly relaySourceLinkVsPush: number | undefined;
    readonly relayDestinationLinkVsPush: number | undefined;
  };
}

export interface LinkResult {
  readonly rttMs: number;
  readonly mbit: number;
  /** One direction's bandwidth, MB/s (10^6 bytes). */
  readonly capacityMBps: number;
  /** Trials of each method on each set. */
  readonly repetitions: number;
  readonly sets: readonly LinkSetResult[];
}

/** The source's name for the destination reached across the link. */
const LINK_TARGET = 'bench-destination-link';

type Method = 'push' | 'relaySourceLink' | 'relayDestinationLink';
const METHODS: readonly Method[] = ['push', 'relaySourceLink', 'relayDestinationLink'];

/** The three methods on one set over one link profile, rotated in each repetition. */
export const compareOverLink = async (
  lab: Lab,
  set: DataSet,
  profile: LinkProfile,
  options: Pick<BenchOptions, 'linkRepetitions' | 'pushConcurrency' | 'relay' | 'relayRun'>,
  progress: Progress,
): Promise<LinkSetResult> => {
  // One emulator in front of each server: a connection crosses the link once whichever way it goes.
  const toSource = await LinkEmulator.start(lab.source.httpPort, profile);
  const toDestination = await LinkEmulator.start(lab.destination.httpPort, profile);
  try {
    await lab.addPushTarget(LINK_TARGET, toDestination.url);
    const trials: Record<Method, TrialFigures[]> = {
      push: [],
      relaySourceLink: [],
      relayDestinationLink: [],
    };
    const measure = (method: Method): Promise<TrialFigures> => {
      switch (method) {
        case 'push':
          return measurePush(lab, set, options.pushConcurrency, LINK_TARGET);
        case 'relaySourceLink':
          return measureRelay(lab, set, options.relay, options.relayRun, { sourceUrl: toSource.url });
        case 'relayDestinationLink':
          return measureRelay(lab, set, options.relay, options.relayRun, {
            destinationUrl: toDestination.url,
          });
      }
    };
    for (let rep = 0; rep < options.linkRepetitions; rep++) {
      for (const method of rotated(METHODS, rep)) {
        const t = await measure(method);
        trials[method].push(t);
        progress(describeTrial(`${set.shape.name} link ${linkLabel(profile)} #${rep + 1} ${method}`, t));
      }
    }
    const capacity = linkCapacityMBps(profile);
    const figures = (method: Method): LinkFigures => {
      const summary = summarise(trials[method], set.instances, true);
      const linkFraction = round(summary.mbPerSecond / capacity, 3);
      if (method === 'push') return { ...summary, linkFraction };
      const busy = range(trials[method].map((t) => (t.counts.busyMs ?? 0) / 1000 / (set.bytes / 1e9))).median;
      return {
        ...summary,
        linkFraction,
        busySecondsPerGB: round(busy, 2),
        lambdaUsdPerGB: round(busy * LAMBDA_PRICE.memoryGB * LAMBDA_PRICE.usdPerGBSecond, 6),
      };
    };
    const push = figures('push');
    const relaySourceLink = figures('relaySourceLink');
    const relayDestinationLink = figures('relayDestinationLink');
    return {
      set: setSummary(set),
      push,
      relaySourceLink,
      relayDestinationLink,
      ratios: {
        relaySourceLinkVsPush: ratio(relaySourceLink.mbPerSecond, push.mbPerSecond),
        relayDestinationLinkVsPush: ratio(relayDestinationLink.mbPerSecond, push.mbPerSecond),
      },
    };
  } finally {
    await toSource.close();
    await toDestination.close();
  }
};

/** Each profile over one set, added to `results` (by the profile's `RTT_MS:MBIT`). */
export const measureOverLinks = async (
  lab: Lab,
  set: DataSet,
  options: BenchOptions,
  results: Record<string, LinkResult>,
  progress: Progress,
): Promise<void> => {
  for (const profile of options.links) {
    const label = linkLabel(profile);
    const compared = await compareOverLink(lab, set, profile, options, progress);
    const earlier = results[label];
    results[label] = {
      rttMs: profile.rttMs,
      mbit: profile.mbit,
      capacityMBps: linkCapacityMBps(profile),
      repetitions: options.linkRepetitions,
      sets: [...(earlier?.sets ?? []), compared],
    };
  }
};
