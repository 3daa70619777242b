/**
 * `npm run bench`: the side-by-side benchmark of the ceiling (files uploaded straight to the
 * destination), the push (the source Orthanc's own DICOMweb client) and the relay (our local
 * mode), on real Orthancs on loopback; and the poller on the AWS emulators. See
 * docs/performance.md for what it measures and how.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { VERIFY_LEVELS, type VerifyLevel } from '../lambdas/core/config.ts';
import { type LinkProfile, linkLabel, parseLinkProfile } from '../testbed/link-emulator.ts';
import {
  type BenchOptions,
  DEFAULT_OPTIONS,
  parseRelayRun,
  type RelayRun,
  type Runtime,
  relayRunLabel,
} from './bench/options.ts';
import { formatReport } from './bench/report.ts';
import { runBenchmark } from './bench/run.ts';

const positive = (value: string): number => {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0) throw new InvalidArgumentError('must be a positive number');
  return parsed;
};

const wholeOrZero = (value: string): number => (value.trim() === '0' ? 0 : whole(value));

const whole = (value: string): number => {
  const parsed = positive(value);
  if (!Number.isInteger(parsed)) throw new InvalidArgumentError('must be a whole number');
  return parsed;
};

const verifyLevel = (value: string): VerifyLevel => {
  // `md5` is the configuration's older name of `checksum`.
  const level = VERIFY_LEVELS.find((known) => known === (value === 'md5' ? 'checksum' : value));
  if (level === undefined) throw new InvalidArgumentError(`must be one of ${VERIFY_LEVELS.join(', ')}`);
  return level;
};

const runtime = (value: string): Runtime => {
  if (value !== 'ts' && value !== 'bundle') throw new InvalidArgumentError('must be ts or bundle');
  return value;
};

const variants = (value: string): RelayRun[] => {
  try {
    return value
      .split(',')
      .filter((part) => part.trim() !== '')
      .map((part) => parseRelayRun(part.trim()));
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
};

const links = (value: string): LinkProfile[] => {
  try {
    return value.split(',').map(parseLinkProfile);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
};

const list = (value: string): number[] => value.split(',').map((part) => whole(part.trim()));

interface CliOptions {
  json?: boolean;
  instances: number;
  sizeKb: number;
  studies: number;
  small: boolean;
  smallInstances: number;
  smallSizeKb: number;
  repetitions: number;
  ceilingConcurrency: number[];
  big: boolean;
  bigGb: number;
  maxInstances: number;
  parallel: number;
  readAhead: number;
  concurrency: number;
  verify: VerifyLevel;
  orthancUrl?: boolean;
  rateCap: boolean;
  verifyModes: boolean;
  verifyModesOnly?: boolean;
  verifyRepetitions: number;
  sweep?: boolean;
  wado?: boolean;
  pin?: boolean;
  poller: boolean;
  pollerOnly?: boolean;
  pollerStudies: number;
  pollerInstances: number;
  forwardStudies: number;
  link?: LinkProfile[];
  linkProfiles: LinkProfile[] | false;
  linkRepetitions: number;
  profile?: string;
  nodeFlags: string;
  runtime: Runtime;
  bigVariants: RelayRun[];
}

const program = new Command('bench')
  .description('ceiling, push and relay side by side on real Orthancs on loopback')
  .option('--json', 'print one JSON object instead of tables')
  .option('--instances <n>', 'instances in the default set', whole, DEFAULT_OPTIONS.main.instances)
  .option('--size-kb <n>', 'size of one instance in the default set, KiB', whole, DEFAULT_OPTIONS.main.sizeKb)
  .option('--studies <n>', 'studies in each set', whole, DEFAULT_OPTIONS.main.studies)
  .option('--no-small', 'skip the small-instance set')
  .option(
    '--small-instances <n>',
    'instances in the small-instance set',
    whole,
    DEFAULT_OPTIONS.small?.instances,
  )
  .option('--small-size-kb <n>', 'size of one small instance, KiB', whole, DEFAULT_OPTIONS.small?.sizeKb)
  .option('--repetitions <n>', 'trials of each method', whole, DEFAULT_OPTIONS.repetitions)
  .option('--ceiling-concurrency <list>', 'upload concurrencies tried for the ceiling', list, [
    ...DEFAULT_OPTIONS.ceilingConcurrency,
  ])
  .option('--no-big', 'skip the memory run with one large study')
  .option('--big-gb <gb>', 'size of the large study, GB', positive, DEFAULT_OPTIONS.bigGb)
  .option('--max-instances <n>', "relay's stow.maxInstances", whole, DEFAULT_OPTIONS.relay.maxInstances)
  .option('--parallel <n>', "relay's stow.parallel", whole, DEFAULT_OPTIONS.relay.parallel)
  .option(
    '--read-ahead <n>',
    "relay's stow.readAheadInstances (0: each file read in its turn)",
    wholeOrZero,
    DEFAULT_OPTIONS.relay.readAheadInstances,
  )
  .option('--concurrency <n>', "relay's concurrency", whole, DEFAULT_OPTIONS.relay.concurrency)
  .option(
    '--verify <level>',
    `relay's verify (${VERIFY_LEVELS.join(', ')})`,
    verifyLevel,
    DEFAULT_OPTIONS.relay.verify,
  )
  .option('--orthanc-url', "give the relay the destination's orthancUrl: checksum reads Orthanc's MD5s")
  .option('--no-rate-cap', 'skip the relay with a read rate cap on the default set')
  .option('--no-verify-modes', 'skip the relay at each verification mode on the default set')
  .option('--verify-modes-only', 'only: the relay at each verification mode on the default set')
  .option(
    '--verify-repetitions <n>',
    'trials of each verification mode',
    whole,
    DEFAULT_OPTIONS.verifyRepetitions,
  )
  .option('--sweep', 'only: the relay at several settings on the default set')
  .option(
    '--wado',
    'only: read every series from the source: WADO-RS per series, GET per instance in turn, and read ahead as the relay does; with --link, also across each link',
  )
  .option('--pin', 'experiment: the destination Orthanc alone on CPU 1, everything else on CPU 0')
  .option('--no-poller', 'skip the poller run on the AWS emulators')
  .option('--poller-only', 'only: the poller run on the AWS emulators')
  .option('--poller-studies <n>', "studies in the poller run's feed", whole, DEFAULT_OPTIONS.poller?.studies)
  .option(
    '--poller-instances <n>',
    'instances per study in the poller run',
    whole,
    DEFAULT_OPTIONS.poller?.instancesPerStudy,
  )
  .option(
    '--forward-studies <n>',
    'queued studies the forwarder moves after the poller run',
    whole,
    DEFAULT_OPTIONS.poller?.forwardStudies,
  )
  .option(
    '--link <list>',
    'only: push and relay over emulated links, comma-separated RTT_MS:MBIT (e.g. 20:200)',
    links,
  )
  .addOption(
    new Option('--link-profiles <list>', "the full run's links, comma-separated RTT_MS:MBIT")
      .argParser(links)
      .default([...DEFAULT_OPTIONS.links], DEFAULT_OPTIONS.links.map(linkLabel).join(',')),
  )
  .option('--no-link-profiles', 'skip the links in the full run')
  .option(
    '--link-repetitions <n>',
    'trials of each method over a link',
    whole,
    DEFAULT_OPTIONS.linkRepetitions,
  )
  .option('--profile <dir>', 'write a V8 CPU profile of each relay child into this folder')
  .option(
    '--node-flags <flags>',
    'Node flags for the relay child ("" for none)',
    DEFAULT_OPTIONS.relayRun.nodeFlags.join(' '),
  )
  .option(
    '--runtime <runtime>',
    'the relay child runs from the TypeScript sources (ts) or a bundle (bundle)',
    runtime,
    DEFAULT_OPTIONS.relayRun.runtime,
  )
  .addOption(
    new Option(
      '--big-variants <list>',
      'further relay runs of the large study, comma-separated runtime[:node flags]',
    )
      .argParser(variants)
      .default([...DEFAULT_OPTIONS.bigVariants], DEFAULT_OPTIONS.bigVariants.map(relayRunLabel).join(',')),
  )
  .showHelpAfterError();

const toOptions = (cli: CliOptions, onProgress: ((line: string) => void) | undefined): BenchOptions => ({
  ...DEFAULT_OPTIONS,
  main: { ...DEFAULT_OPTIONS.main, instances: cli.instances, sizeKb: cli.sizeKb, studies: cli.studies },
  small:
    cli.small && DEFAULT_OPTIONS.small !== undefined
      ? {
          ...DEFAULT_OPTIONS.small,
          instances: cli.smallInstances,
          sizeKb: cli.smallSizeKb,
          studies: cli.studies,
        }
      : undefined,
  repetitions: cli.repetitions,
  ceilingConcurrency: cli.ceilingConcurrency,
  relay: {
    maxInstances: cli.maxInstances,
    parallel: cli.parallel,
    readAheadInstances: cli.readAhead,
    concurrency: cli.concurrency,
    verify: cli.verify,
    orthancRest: cli.orthancUrl === true,
  },
  bigGb: cli.big ? cli.bigGb : undefined,
  sweep: cli.sweep === true,
  wado: cli.wado === true,
  rateCap: cli.rateCap,
  verifyRepetitions: cli.verifyModes || cli.verifyModesOnly === true ? cli.verifyRepetitions : undefined,
  verifyModesOnly: cli.verifyModesOnly === true,
  poller:
    cli.poller || cli.pollerOnly === true
      ? {
          studies: cli.pollerStudies,
          instancesPerStudy: cli.pollerInstances,
          forwardStudies: cli.forwardStudies,
        }
      : undefined,
  pollerOnly: cli.pollerOnly === true,
  links: cli.link ?? (cli.linkProfiles === false ? [] : cli.linkProfiles),
  linkOnly: cli.link !== undefined,
  linkRepetitions: cli.linkRepetitions,
  pin: cli.pin === true,
  relayRun: {
    runtime: cli.runtime,
    nodeFlags: [
      ...(cli.profile === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${cli.profile}`]),
      ...cli.nodeFlags.split(' ').filter((flag) => flag !== ''),
    ],
  },
  bigVariants: cli.bigVariants,
  onProgress,
});

const main = async (): Promise<void> => {
  program.parse();
  const cli = program.opts<CliOptions>();
  const stop = () => process.exit(130);
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const options = toOptions(cli, (line) => process.stderr.write(`${line}\n`));
  const result = await runBenchmark(options);
  process.stdout.write(
    cli.json === true
      ? `${JSON.stringify(result, null, 2)}\n`
      : `${formatReport(result, options.repetitions)}\n`,
  );
};

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
