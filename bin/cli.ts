/**
 * The orthanc-forwarder command line: parse, call the core, report. Exit codes: 0 success,
 * 1 something was dead-lettered or rejected, a conflict is open, or nothing matched, 2 a usage or
 * configuration error.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError, type ForwarderConfig } from '../lambdas/core/config.ts';
import { deadLetterEntry, formatDeadLetters } from '../lambdas/core/dead-letters.ts';
import { createLog, type LogLevel } from '../lambdas/core/log.ts';
import { runDemo } from '../lambdas/local/demo.ts';
import { defaultStatePath, loadConfigFile } from '../lambdas/local/load-config.ts';
import { LocalRunner, StateInUseError } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { gatherStatus } from '../lambdas/local/status.ts';
import type { AwsCliOptions } from './cli-aws.ts';
import {
  type ConflictSelection,
  checkSelection,
  chosenResolution,
  resolutionOptions,
  resolveSelected,
} from './conflicts.ts';
import { formatConflicts, formatStatus } from './format.ts';

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
  .addOption(logLevelOption())
  .action(async (options: StateOptions & { untilIdle?: boolean; logLevel: LogLevel }) => {
    const config = loadConfigFile(options.config);
    const log = createLog({ level: options.logLevel });
    await withState(options, config, async (state) => {
      const summary = await new LocalRunner(config, state, log).run({
        untilIdle: options.untilIdle === true,
        signal: stopSignal(),
      });
      const stats = await state.queue.stats();
      const rejected = (await state.ledger.rejected()).length;
      const openConflicts = (await state.ledger.conflicts({ openOnly: true })).length;
      log.info('run finished', {
        ...summary,
        failedSources: summary.failedSources.join(','),
        deadLetters: stats.deadLetters,
        openConflicts,
      });
      const outstanding = stats.deadLetters + rejected + openConflicts + summary.failedSources.length;
      if (options.untilIdle && outstanding > 0) process.exitCode = 1;
    });
  });

withAwsOptions(
  program
    .command('status')
    .description('cursors, lag, queue, dead letters, rejected instances, open conflicts and totals')
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .option('--json', 'print one JSON object')
    .option('--reach-sources', 'AWS: ask each source for its newest change, to show the lag'),
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

const dlq = program.command('dlq').description('the dead letters');
withAwsOptions(
  dlq
    .command('list')
    .description('each dead letter: its work item (Orthanc IDs) and its last error')
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .option('--json', 'print one JSON array')
    .addOption(
      new Option('--max <count>', 'AWS: list at most this many').default(100).argParser((value) => {
        const count = Number(value);
        if (!Number.isInteger(count) || count < 1)
          throw new InvalidArgumentError('must be a positive integer');
        return count;
      }),
    ),
).action(async (options: StateOptions & AwsCliOptions & { json?: boolean; max: number }) => {
  const config = loadConfigFile(options.config);
  const entries = options.aws
    ? await (await awsCommands()).awsDeadLetters(options, config)
    : (await withState(options, config, (state) => state.queue.deadLetters())).map((letter) =>
        deadLetterEntry({ ...letter, messageId: letter.id, sentAt: letter.deadLetteredAt }),
      );
  process.stdout.write(`${options.json ? JSON.stringify(entries) : formatDeadLetters(entries)}\n`);
});

withAwsOptions(
  program
    .command('redrive')
    .description('put every dead letter back on the queue')
    .requiredOption('-c, --config <file>', 'configuration file (JSON)')
    .option('-s, --state <file>', 'state file (default: beside the configuration file)')
    .option('--no-wait', 'AWS: start the move task and return, without following it')
    .addOption(
      new Option('--rate <messages>', 'AWS: messages moved per second (default: SQS’s)').argParser(
        (value) => {
          const rate = Number(value);
          if (!Number.isInteger(rate) || rate < 1 || rate > 500)
            throw new InvalidArgumentError('must be 1-500');
          return rate;
        },
      ),
    ),
).action(async (options: StateOptions & AwsCliOptions & { wait: boolean; rate?: number }) => {
  const config = loadConfigFile(options.config);
  if (!options.aws) {
    const count = await withState(options, config, (state) => state.queue.redrive());
    process.stdout.write(`redrove ${count} message(s)\n`);
    return;
  }
  if (!(await (await awsCommands()).awsRedrive(options, config))) process.exitCode = 1;
});

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

program
  .command('demo')
  .description('start three Orthancs on loopback, move generated studies between them, print a summary')
  .option('--json', 'print the summary as one JSON object')
  .addOption(logLevelOption().default('SILENT'))
  .action(async (options: { json?: boolean; logLevel: LogLevel }) => {
    const summary = await runDemo({
      log: createLog({ level: options.logLevel }),
      onProgress: (message) => process.stderr.write(`${message}\n`),
      signal: stopSignal(),
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
  if (error instanceof ConfigError || error instanceof InvalidArgumentError) {
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
