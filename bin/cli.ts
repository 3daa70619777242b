/**
 * The orthanc-forwarder command line: parse, call the core, report. Exit codes: 0 success,
 * 1 something was dead-lettered or rejected, a conflict is open, nothing matched, `check` found a
 * problem, or a server was unreachable when `run --until-idle` started, 2 a usage or configuration
 * error: the configuration file, a mistake the check at the start of `run` found (a refused
 * password, a wrong URL, an untrusted certificate, a right missing), or a state file that cannot
 * be used.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError, type ForwarderConfig } from '../lambdas/core/config.ts';
import { entriesOf, listingOf } from '../lambdas/core/dead-letters.ts';
import { createLog, type LogLevel } from '../lambdas/core/log.ts';
import type { FeedStateStore, Ledger } from '../lambdas/core/ports.ts';
import { runDemo } from '../lambdas/local/demo.ts';
import { defaultStatePath, loadConfigFile } from '../lambdas/local/load-config.ts';
import { StateInUseError } from '../lambdas/local/local-runner.ts';
import { openState, StateFileError } from '../lambdas/local/sqlite-state.ts';
import { gatherStatus } from '../lambdas/local/status.ts';
import { type AuditOptions, auditQuery, exportDeletions, parsePeriod, writeStdout } from './audit.ts';
import { check, checkAtStart } from './check.ts';
import type { AwsCliOptions } from './cli-aws.ts';
import {
  type ConflictSelection,
  checkSelection,
  chosenResolution,
  resolutionOptions,
  resolveSelected,
} from './conflicts.ts';
import { formatConflicts, formatStatus } from './format.ts';
import { type ListenAddress, listenOption, runnerFor } from './listen.ts';
import { plan } from './plan.ts';
import { ProgressLines, showProgress } from './progress-line.ts';
import { controlSource, SOURCE_ACTIONS, type SourceAction } from './source-control.ts';

interface RunFlags {
  untilIdle?: boolean;
  check: boolean;
  /** --progress, --no-progress; undefined: neither given. */
  progress?: boolean;
  logLevel: LogLevel;
  listen?: ListenAddress;
}

const logLevelOption = () =>
  new Option('--log-level <level>', 'log level')
    .choices(['DEBUG', 'INFO', 'WARN', 'ERROR', 'SILENT'])
    .default('INFO');

interface StateOptions {
  config: string;
  state?: string;
}

const withState = async <T>(
  options: StateOptions,
  config: ForwarderConfig,
  use: (state: ReturnType<typeof openState>) => Promise<T>,
) => {
  const state = openState(options.state ?? defaultStatePath(options.config), {
    maxReceives: config.retry.maxAttempts,
  });
  try {
    return await use(state);
  } finally {
    state.close();
  }
};

/**
 * `--aws`: the command works on the deployed stack instead of the state file. Imported only then,
 * so that the local commands never load the AWS SDK.
 */
const awsCommands = () => import('./cli-aws.ts');

const withAwsOptions = (command: Command): Command =>
  command
    .option('--aws', 'work on the deployed stack (SQS, DynamoDB) instead of the local state file')
    .addOption(
      new Option('--queue-url <url>', 'AWS: the work queue (stack output QueueUrl)').env('QUEUE_URL'),
    )
    .addOption(
      new Option(
        '--backlog-queue-url <url>',
        'AWS: the backlog queue (stack output BacklogQueueUrl), counted with the work queue',
      ).env('BACKLOG_QUEUE_URL'),
    )
    .addOption(
      new Option('--dlq-url <url>', 'AWS: the dead-letter queue (stack output DeadLetterQueueUrl)').env(
        'DLQ_URL',
      ),
    )
    .addOption(
      new Option('--table <name>', 'AWS: the state table (stack output StateTableName)').env('STATE_TABLE'),
    )
    .option(
      '--region <region>',
      'AWS: the region (default: aws.region of the configuration, else the SDK’s)',
    );

/** The sources an operator paused: the run neither reads them nor checks them at start. */
const pausedSources = async (config: ForwarderConfig, feed: FeedStateStore): Promise<Set<string>> => {
  const paused = await Promise.all(
    config.sources.map(async (source) =>
      (await feed.control(source.id))?.pausedAt === undefined ? [] : [source.id],
    ),
  );
  return new Set(paused.flat());
};

/** Ends the run cleanly on the first SIGINT or SIGTERM; a second one exits at once. */
const stopSignal = (): AbortSignal => {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130);
    process.stderr.write(`${signal}: finishing the work in flight (again to quit at once)\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return controller.signal;
};

/** The package's version: package.json sits one folder up from the sources (bin/) and the bundle (dist/) alike. */
const version = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

const program = new Command('orthanc-forwarder')
  .description(
    'Moves DICOM studies from Orthanc servers to a DICOMweb destination, deleting only what it verified.',
  )
  .version(version)
  .showHelpAfterError()
  // Commander's own usage errors (an unknown option, a missing --config) would exit 1, which here
  // means that something is held or failed.
  .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2));

program
  .command('run')
  .description('poll every source and move its studies')
  .requiredOption('-c, --config <file>', 'configuration file (JSON)')
  .option('-s, --state <file>', 'state file (default: beside the configuration file)')
  .option('--until-idle', 'exit once every source is drained and the queue is empty')
  .option('--no-check', 'skip the check of every server at start (see `check`)')
  .option('--progress', 'a line per source on stderr: moved, left, rate, ETA (default: at a terminal)')
  .option('--no-progress', 'no progress lines, even at a terminal')
  .addOption(listenOption())
  .addOption(logLevelOption())
  .action(async (options: StateOptions & RunFlags) => {
    const config = loadConfigFile(options.config);
    const log = createLog({ level: options.logLevel });
    // Before anything else: a SIGTERM during the start-up check ends the run as cleanly as later.
    const signal = stopSignal();
    const statePath = options.state ?? defaultStatePath(options.config);
    await withState({ ...options, state: statePath }, config, async (state) => {
      const stop = options.check
        ? await checkAtStart(config, log, {
            untilIdle: options.untilIdle === true,
            paused: await pausedSources(config, state.feed),
          })
        : undefined;
      if (stop !== undefined) {
        process.exitCode = stop;
        return;
      }
      const lines = showProgress(options.progress, process.stdout.isTTY)
        ? new ProgressLines({ config, ledger: state.ledger })
        : undefined;
      // The run does not wait for the first drawing: a source slow to answer holds up nothing.
      void lines?.start();
      const summary = await runnerFor(options.listen)({ config, state, statePath, log }, (runner) =>
        runner.run({ untilIdle: options.untilIdle === true, signal, onOutcome: lines?.onOutcome }),
      ).finally(() => lines?.stop());
      const stats = await state.queue.stats();
      const rejected = (await state.ledger.rejected()).length;
      const openConflicts = (await state.ledger.conflicts({ openOnly: true })).length;
      log.info('run finished', {
        ...summary,
        failedSources: summary.failedSources.join(','),
        pausedSources: summary.pausedSources.join(','),
        unavailableDestinations: summary.unavailableDestinations.join(','),
        deadLetters: stats.deadLetters,
        openConflicts,
      });
      const outstanding =
        stats.deadLetters +
        rejected +
        openConflicts +
        summary.failedSources.length +
        summary.unavailableDestinations.length;
      if (options.untilIdle && outstanding > 0) process.exitCode = 1;
    });
  });

program
  .command('check')
  .description(
    'ask every server whether a move can work: reachable, credentials, kind of endpoint, rights, versions',
  )
  .requiredOption('-c, --config <file>', 'configuration file (JSON)')
  .option('--json', 'print one JSON object')
  .option('--aws', 'read the servers’ secrets from Secrets Manager, as the deployed stack does')
  .option('--region <region>', 'AWS: the region (default: aws.region of the configuration, else the SDK’s)')
  .action(async (options: AwsCliOptions & { config: string; json?: boolean }) => {
    const config = loadConfigFile(options.config);
    const secrets = options.aws ? (await awsCommands()).awsSecrets(options, config) : undefined;
    process.exitCode = await check(config, { json: options.json, secrets });
  });

withAwsOptions(
  program
    .command('status')
    .description(
      'per source what it holds, what was moved and copied from it; the queue, dead letters by error, refusals, conflicts',
    )
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .option('--json', 'print one JSON object')
    .option('--reach-sources', 'AWS: ask each source what it holds and its newest change'),
).action(async (options: StateOptions & AwsCliOptions & { json?: boolean; reachSources?: boolean }) => {
  const config = loadConfigFile(options.config);
  const { report, text } = options.aws
    ? await (await awsCommands()).awsStatus(options, config)
    : await withState(options, config, async (state) => {
        const local = await gatherStatus(config, state);
        return { report: local, text: formatStatus(local) };
      });
  process.stdout.write(`${options.json ? JSON.stringify(report) : text}\n`);
});

const positiveInteger = (value: string): number => {
  const count = Number(value);
  if (!Number.isInteger(count) || count < 1) throw new InvalidArgumentError('must be a positive integer');
  return count;
};

program
  .command('plan')
  .description(
    'what a run would move from each source now, per destination after the filters: lists and counts, moves nothing',
  )
  .requiredOption('-c, --config <file>', 'configuration file (JSON)')
  .option('--json', 'print one JSON object')
  .addOption(
    new Option('--limit <count>', 'look at the first studies of each source only').argParser(positiveInteger),
  )
  .option('--source <id>', 'only this source')
  .option('--aws', 'read the sources’ secrets from Secrets Manager, as the deployed stack does')
  .option('--region <region>', 'AWS: the region (default: aws.region of the configuration, else the SDK’s)')
  .action(
    async (options: AwsCliOptions & { config: string; json?: boolean; limit?: number; source?: string }) => {
      const config = loadConfigFile(options.config);
      const secrets = options.aws ? (await awsCommands()).awsSecrets(options, config) : undefined;
      process.exitCode = await plan(config, { ...options, secrets });
    },
  );

const dlq = program.command('dlq').description('the dead letters');
withAwsOptions(
  dlq
    .command('list')
    .description('each dead letter: its work item (Orthanc IDs) and its last error; or how many failed alike')
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .option('--json', 'print one JSON array')
    .addOption(
      new Option(
        '--group-by <what>',
        'one row per error (IDs and numbers in it as placeholders): how many, the newest',
      ).choices(['error']),
    )
    .addOption(new Option('--limit <count>', 'print at most this many rows').argParser(positiveInteger))
    .addOption(
      new Option('--max <count>', 'AWS: read at most this many dead letters')
        .default(100)
        .argParser(positiveInteger),
    ),
).action(
  async (
    options: StateOptions &
      AwsCliOptions & { json?: boolean; groupBy?: 'error'; limit?: number; max: number },
  ) => {
    const config = loadConfigFile(options.config);
    const listing = {
      groupByError: options.groupBy === 'error',
      limit: options.limit ?? Number.POSITIVE_INFINITY,
      json: options.json === true,
    };
    const text = options.aws
      ? await (await awsCommands()).awsDeadLetterListing(options, config, listing)
      : await withState(options, config, (state) => listingOf(entriesOf(state.queue.deadLetters()), listing));
    process.stdout.write(`${text}\n`);
  },
);

/** `redrive`, and the same as `dlq redrive`. */
const redriveCommand = (parent: Command) =>
  withAwsOptions(
    parent
      .command('redrive')
      .description('put the dead letters back on the queue: all of them, or those of a source or an error')
      .requiredOption('-c, --config <file>', 'configuration file (JSON)')
      .option('-s, --state <file>', 'state file (default: beside the configuration file)')
      .option('--source <id>', 'only the work items of this source')
      .option('--error <text>', 'only those whose last error contains this (as recorded, or as grouped)')
      .option('--no-wait', 'AWS, all of them: start the move task and return, without following it')
      .addOption(
        new Option(
          '--rate <messages>',
          'AWS, all of them: messages moved per second (default: SQS’s)',
        ).argParser((value) => {
          const rate = Number(value);
          if (!Number.isInteger(rate) || rate < 1 || rate > 500)
            throw new InvalidArgumentError('must be 1-500');
          return rate;
        }),
      ),
  ).action(
    async (
      options: StateOptions &
        AwsCliOptions & { source?: string; error?: string; wait: boolean; rate?: number },
    ) => {
      const config = loadConfigFile(options.config);
      const filter =
        options.source === undefined && options.error === undefined
          ? undefined
          : { sourceId: options.source, error: options.error };
      if (filter !== undefined && (!options.wait || options.rate !== undefined)) {
        throw new InvalidArgumentError(
          '--no-wait and --rate are for a redrive of every dead letter (an SQS move task): --source and --error move them one by one',
        );
      }
      if (options.aws) {
        if (!(await (await awsCommands()).awsRedrive(options, config, filter))) process.exitCode = 1;
        return;
      }
      const { redriven, left } = await withState(options, config, async (state) => ({
        redriven: await state.queue.redrive(filter),
        left: (await state.queue.stats()).deadLetters,
      }));
      process.stdout.write(
        filter === undefined
          ? `redrove ${redriven} message(s)\n`
          : `redrove ${redriven} message(s); ${left} left in the dead-letter queue\n`,
      );
      if (filter !== undefined && redriven === 0) process.exitCode = 1;
    },
  );
redriveCommand(program);
redriveCommand(dlq);

const conflicts = program
  .command('conflicts')
  .description('source instances whose SOPInstanceUID the destination holds as another instance');
withAwsOptions(
  conflicts
    .command('list')
    .description('the open conflicts: where, which attributes differ (names only), since when')
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .option('--json', 'print one JSON array')
    .option('--all', 'resolved conflicts too, with their resolution')
    .option('--source <id>', 'only this source’s'),
).action(
  async (options: StateOptions & AwsCliOptions & { json?: boolean; all?: boolean; source?: string }) => {
    const config = loadConfigFile(options.config);
    const filter = { sourceId: options.source, openOnly: options.all !== true };
    const found = options.aws
      ? await (await awsCommands()).awsLedger(options, config).conflicts(filter)
      : await withState(options, config, (state) => state.ledger.conflicts(filter));
    process.stdout.write(
      `${options.json ? JSON.stringify(found) : formatConflicts(found, filter.openOnly)}\n`,
    );
  },
);

const resolveCommand = conflicts
  .command('resolve')
  .description('decide open conflicts, and queue their studies again: their next move applies the decision')
  .requiredOption('-c, --config <file>', 'configuration file (JSON)')
  .option('-s, --state <file>', 'state file (default: beside the configuration file)');
for (const [, option] of resolutionOptions) resolveCommand.addOption(option);
withAwsOptions(
  resolveCommand
    .option('--source <id>', 'only this source’s conflicts')
    .option('--study <id>', 'only this study’s (Orthanc ID at the source)')
    .option('--instance <id>', 'only this instance’s (Orthanc ID at the source)')
    .option('--destination <id>', 'only those at this destination')
    .option('--all', 'every open conflict (narrowed by the filters given)')
    .option('--yes', 'confirm --accept-destination without asking'),
).action(async (options: StateOptions & AwsCliOptions & ConflictSelection & { yes?: boolean }) => {
  const resolution = chosenResolution(options);
  checkSelection(options);
  const config = loadConfigFile(options.config);
  const resolved = options.aws
    ? await resolveSelected(
        (await awsCommands()).awsLedgerAndQueue(options, config),
        config,
        options,
        resolution,
      )
    : await withState(options, config, (state) =>
        resolveSelected(
          { ledger: state.ledger, queue: state.queue, feed: state.feed },
          config,
          options,
          resolution,
        ),
      );
  if (!resolved) process.exitCode = 1;
});

// pause, resume, sweep: what an operator asks of one source (bin/source-control.ts).
for (const [action, description] of Object.entries(SOURCE_ACTIONS)) {
  withAwsOptions(
    program
      .command(`${action} <source>`)
      .description(description)
      .requiredOption('-c, --config <file>', 'configuration file (JSON)')
      .option('-s, --state <file>', 'state file (default: beside the configuration file)'),
  ).action(async (sourceId: string, options: StateOptions & AwsCliOptions) => {
    const config = loadConfigFile(options.config);
    const apply = (feed: FeedStateStore) =>
      controlSource(feed, config, sourceId, action as SourceAction, Date.now());
    const text = options.aws
      ? await apply((await awsCommands()).awsFeed(options, config))
      : await withState(options, config, (state) => apply(state.feed));
    process.stdout.write(`${text}\n`);
  });
}

const audit = program.command('audit').description('the audit trail of deletions at the sources');
withAwsOptions(
  audit
    .command('export')
    .description(
      'what was deleted at which source, when, verified how at which destination: CSV or JSON lines, no patient value',
    )
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .requiredOption(
      '--since <when>',
      'from this day (2025-01-31, UTC) or time (ISO 8601 with its zone)',
      parsePeriod,
    )
    .option('--until <when>', 'to the end of this day, or to this time (default: now)', parsePeriod)
    .option('--source <id>', 'only this source’s deletions')
    .addOption(new Option('--format <format>', 'output format').choices(['csv', 'jsonl']).default('csv'))
    .addOption(
      new Option('--per <row>', 'a row per deleted instance, or per deletion of a study with its counts')
        .choices(['instance', 'study'])
        .default('instance'),
    ),
).action(async (options: StateOptions & AwsCliOptions & AuditOptions) => {
  const config = loadConfigFile(options.config);
  const query = auditQuery(options, Date.now());
  const exportFrom = (ledger: Pick<Ledger, 'deletions'>) =>
    exportDeletions(ledger, query, options, writeStdout);
  if (options.aws) await exportFrom((await awsCommands()).awsLedger(options, config));
  else await withState(options, config, (state) => exportFrom(state.ledger));
});

program
  .command('demo')
  .description('start three Orthancs on loopback, move generated studies between them, print a summary')
  .option('--json', 'print the summary as one JSON object')
  .addOption(listenOption())
  .addOption(logLevelOption().default('SILENT'))
  .action(async (options: { json?: boolean; logLevel: LogLevel; listen?: ListenAddress }) => {
    const onProgress = (message: string) => process.stderr.write(`${message}\n`);
    const signal = stopSignal();
    const summary = await runDemo({
      log: createLog({ level: options.logLevel }),
      onProgress,
      signal,
      // The move takes seconds: the page stays up after it, until Ctrl-C.
      withRunner: runnerFor(options.listen, {
        onListening: (url) =>
          onProgress(`status page: ${url}/ (metrics: ${url}/metrics; it stays up until Ctrl-C)`),
        stayUntil: signal,
      }),
    });
    if (options.json) {
      process.stdout.write(`${JSON.stringify(summary)}\n`);
    } else {
      process.stdout.write(
        [
          `studies moved:           ${summary.studiesMoved}`,
          `instances moved:         ${summary.instancesMoved} of ${summary.instancesUploaded} uploaded`,
          `bytes moved:             ${summary.bytesMoved} (${summary.megabytesPerSecond} MB/s over ${summary.durationSeconds} s)`,
          `sources empty:           ${summary.sourcesEmpty ? 'yes' : `no (${summary.sourceInstancesLeft} left)`}`,
          `destination instances:   ${summary.destinationInstances}`,
          `dead letters:            ${summary.deadLetters}`,
          '',
        ].join('\n'),
      );
    }
    if (!summary.sourcesEmpty || summary.deadLetters > 0) process.exitCode = 1;
  });

try {
  await program.parseAsync();
} catch (error) {
  if (error instanceof StateInUseError) {
    process.stderr.write(`orthanc-forwarder: ${error.message}\n`);
    process.exit(1);
  }
  if (
    error instanceof ConfigError ||
    error instanceof InvalidArgumentError ||
    error instanceof StateFileError
  ) {
    process.stderr.write(`orthanc-forwarder: ${error.message}\n`);
    process.exit(2);
  }
  // An AWS answer (access denied, no such queue, a move task already running) or missing
  // credentials: the operator needs the message, not a stack trace.
  if (error instanceof Error && ('$metadata' in error || error.name === 'CredentialsProviderError')) {
    process.stderr.write(`orthanc-forwarder: ${error.name}: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}
