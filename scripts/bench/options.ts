/** What one benchmark run measures, and the defaults of `npm run bench`. */
import { parseConfig, VERIFY_LEVELS, type VerifyLevel } from '../../lambdas/core/config.ts';
import type { LinkProfile } from '../../testbed/link-emulator.ts';

/** A set of generated studies: how many instances, how large, in how many studies. */
export interface SetShape {
  readonly name: string;
  readonly instances: number;
  /** Approximate size of one instance (pixel data), in KiB. */
  readonly sizeKb: number;
  readonly studies: number;
  readonly seriesPerStudy: number;
}

/** How a relay child runs: TypeScript stripped by Node (as from a checkout), or one bundled file. */
export type Runtime = 'ts' | 'bundle';

/** A relay child's runtime and extra Node flags. */
export interface RelayRun {
  readonly runtime: Runtime;
  readonly nodeFlags: readonly string[];
}

/** Parses `runtime[:flag flag…]`, e.g. `bundle:--optimize-for-size`. */
export const parseRelayRun = (text: string): RelayRun => {
  const [runtime = '', ...rest] = text.split(':');
  if (runtime !== 'ts' && runtime !== 'bundle')
    throw new RangeError(`runtime must be ts or bundle, got '${runtime}'`);
  return {
    runtime,
    nodeFlags: rest
      .join(':')
      .split(' ')
      .filter((flag) => flag !== ''),
  };
};

export const relayRunLabel = (run: RelayRun): string =>
  run.nodeFlags.length === 0 ? run.runtime : `${run.runtime}:${run.nodeFlags.join(' ')}`;

/** The relay's tuning: the configuration fields the sweep varies. */
export interface RelaySettings {
  readonly maxInstances: number;
  readonly parallel: number;
  /** stow.readAheadInstances: files read from the source ahead of the one being sent. */
  readonly readAheadInstances: number;
  readonly concurrency: number;
  /** The verification level (lambdas/core/verification.ts). */
  readonly verify: VerifyLevel;
  /**
   * The destination's `orthancUrl` is configured, so `checksum` reads Orthanc's MD5s through its
   * REST API instead of retrieving every instance with WADO-RS.
   */
  readonly orthancRest: boolean;
  /** The source's read rate cap, MB/s; none when absent. */
  readonly maxReadMBps?: number | undefined;
}

/** The poller run's feed: studies of one series, each its own patient (10 changes a study at 4 instances). */
export interface PollerShape {
  readonly studies: number;
  readonly instancesPerStudy: number;
  /** Queued studies the forwarder then moves, to count its requests per study. */
  readonly forwardStudies: number;
}

export interface BenchOptions {
  /** The main set (default about 1,000 instances of 512 KiB in 4 studies). */
  readonly main: SetShape;
  /** The small-instance set, or undefined to skip it. */
  readonly small: SetShape | undefined;
  /** Trials of each method per set; the figures are their median, min and max. */
  readonly repetitions: number;
  /** The ceiling is measured at each of these upload concurrencies; the best median counts. */
  readonly ceilingConcurrency: readonly number[];
  /** Studies pushed at once by the push method (Orthanc runs 2 jobs at once by default). */
  readonly pushConcurrency: number;
  /** The relay's settings for the comparison (the configuration's defaults unless given). */
  readonly relay: RelaySettings;
  /** Size of the one-study memory run in GB (10^9 bytes), or undefined to skip it. */
  readonly bigGb: number | undefined;
  /** Also measure the relay at several settings. */
  readonly sweep: boolean;
  /** Also compare reading a series with one WADO-RS request against one request per instance. */
  readonly wado: boolean;
  /** Also move the main set once with a read rate cap at half the relay's speed. */
  readonly rateCap: boolean;
  /** Trials of each verification mode on the main set, or undefined to skip that comparison. */
  readonly verifyRepetitions: number | undefined;
  /** Only the verification modes' comparison. */
  readonly verifyModesOnly: boolean;
  /** The destination Orthanc alone on CPU 1, everything else on CPU 0 (an experiment). */
  readonly pin: boolean;
  /** The poller run's feed, or undefined to skip it. */
  readonly poller: PollerShape | undefined;
  /** Only the poller run. */
  readonly pollerOnly: boolean;
  /** The push and the relay over each of these emulated links, on both sets; none to skip. */
  readonly links: readonly LinkProfile[];
  /** Only the runs over the links. */
  readonly linkOnly: boolean;
  /** Trials of each method over each link. */
  readonly linkRepetitions: number;
  /** How the relay's child runs: from the TypeScript sources or the bundle, with extra Node flags. */
  readonly relayRun: RelayRun;
  /** Further ways to run the relay in the memory run (each moves the large study once more). */
  readonly bigVariants: readonly RelayRun[];
  /** Progress lines (to stderr); silent when undefined. */
  readonly onProgress?: ((line: string) => void) | undefined;
}

/** The configuration's defaults (lambdas/core/config.ts), read from its schema so that they cannot drift. */
export const configDefaults = parseConfig({
  sources: [{ id: 'defaults', url: 'http://127.0.0.1:8042' }],
  destination: { url: 'http://127.0.0.1:8043/dicom-web' },
});

export const DEFAULT_RELAY: RelaySettings = {
  maxInstances: configDefaults.stow.maxInstances,
  parallel: configDefaults.stow.parallel,
  readAheadInstances: configDefaults.stow.readAheadInstances,
  concurrency: configDefaults.concurrency,
  verify: configDefaults.verify,
  orthancRest: false,
};

export const DEFAULT_MAIN: SetShape = {
  name: 'default',
  instances: 1000,
  sizeKb: 512,
  studies: 4,
  seriesPerStudy: 5,
};

export const DEFAULT_SMALL: SetShape = {
  name: 'small',
  instances: 3000,
  sizeKb: 10,
  studies: 4,
  seriesPerStudy: 5,
};

/** About 100,000 changes: 10,000 studies of 4 instances. */
export const DEFAULT_POLLER: PollerShape = { studies: 10_000, instancesPerStudy: 4, forwardStudies: 100 };

export const DEFAULT_OPTIONS: BenchOptions = {
  main: DEFAULT_MAIN,
  small: DEFAULT_SMALL,
  repetitions: 3,
  ceilingConcurrency: [4, 8, 16],
  pushConcurrency: 2,
  relay: DEFAULT_RELAY,
  bigGb: 2,
  sweep: false,
  wado: false,
  rateCap: true,
  // Fewer than the other comparisons' 3: five modes of a relay trial each on the default set.
  verifyRepetitions: 2,
  verifyModesOnly: false,
  pin: false,
  poller: DEFAULT_POLLER,
  pollerOnly: false,
  // The two profiles: a VPN to a nearby region, and a fast long-haul link.
  links: [
    { rttMs: 20, mbit: 200 },
    { rttMs: 40, mbit: 1000 },
  ],
  linkOnly: false,
  // One trial each: over a link a trial is slower, and its figure is the link's more than the machine's.
  linkRepetitions: 1,
  // As bin/orthanc-forwarder runs local mode: the bundle, with V8 told to favour memory.
  relayRun: { runtime: 'bundle', nodeFlags: ['--optimize-for-size'] },
  // What the entry (bin/orthanc-forwarder.mjs) falls back to when the sources are newer than the bundle.
  bigVariants: [{ runtime: 'ts', nodeFlags: ['--optimize-for-size'] }],
};

/**
 * Each rung of the verification ladder at the defaults, the destination configured as by default
 * (no `orthancUrl`: `checksum` retrieves with WADO-RS); then `checksum` through Orthanc's REST API.
 */
export const verifyModes = (): RelaySettings[] => [
  ...VERIFY_LEVELS.map((verify) => ({ ...DEFAULT_RELAY, verify })),
  { ...DEFAULT_RELAY, verify: 'checksum', orthancRest: true },
];

/** The mode's name in the report and the JSON: the level, and for `checksum` how it reads the destination's bytes. */
export const verifyModeName = (settings: RelaySettings): string =>
  settings.verify === 'checksum' ? `checksum-${settings.orthancRest ? 'orthanc' : 'wado'}` : settings.verify;

/**
 * The sweep: one setting varied at a time around the defaults, the verification modes among them
 * (12 distinct settings).
 */
export const sweepSettings = (): RelaySettings[] => {
  const variants: RelaySettings[] = [
    ...[10, 25, 50, 100].map((maxInstances) => ({ ...DEFAULT_RELAY, maxInstances })),
    ...[2, 4, 8].map((parallel) => ({ ...DEFAULT_RELAY, parallel })),
    ...[0, 8, 32].map((readAheadInstances) => ({ ...DEFAULT_RELAY, readAheadInstances })),
    ...[1, 2, 4].map((concurrency) => ({ ...DEFAULT_RELAY, concurrency })),
    ...verifyModes(),
  ];
  const seen = new Set<string>();
  return variants.filter((settings) => {
    const key = settingsLabel(settings);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
};

export const settingsLabel = (settings: RelaySettings): string =>
  `maxInstances=${settings.maxInstances} parallel=${settings.parallel} concurrency=${settings.concurrency}` +
  (settings.readAheadInstances === DEFAULT_RELAY.readAheadInstances
    ? ''
    : ` readAhead=${settings.readAheadInstances}`) +
  (verifyModeName(settings) === verifyModeName(DEFAULT_RELAY) ? '' : ` verify=${verifyModeName(settings)}`);

/** Instances per series so that the set has about `instances` instances. */
export const instancesPerSeries = (shape: SetShape): number =>
  Math.max(1, Math.round(shape.instances / (shape.studies * shape.seriesPerStudy)));
