/**
 * The orthanc-forwarder command line: parse, call the core, report. Exit codes: 0 success,
 * 1 something was dead-lettered or rejected, 2 a usage or configuration error.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError, type ForwarderConfig } from '../lambdas/core/config.ts';
import { createLog, type LogLevel } from '../lambdas/core/log.ts';
import { runDemo } from '../lambdas/local/demo.ts';
import { defaultStatePath, loadConfigFile } from '../lambdas/local/load-config.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { formatStatus, gatherStatus } from '../lambdas/local/status.ts';

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

const program = new Command('orthanc-forwarder')
  .description(
    'Moves DICOM studies from Orthanc servers to a DICOMweb destination, deleting only what it verified.',
  )
  .showHelpAfterError();

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
      log.info('run finished', {
        ...summary,
        failedSources: summary.failedSources.join(','),
        deadLetters: stats.deadLetters,
      });
      if (options.untilIdle && (stats.deadLetters > 0 || rejected > 0 || summary.failedSources.length > 0)) {
        process.exitCode = 1;
      }
    });
  });

program
  .command('status')
  .description('cursors, lag, queue, dead letters, rejected instances and totals')
  .requiredOption('-c, --config <file>', 'configuration file (JSON)')
  .option('-s, --state <file>', 'state file (default: beside the configuration file)')
  .option('--json', 'print one JSON object')
  .action(async (options: StateOptions & { json?: boolean }) => {
    const config = loadConfigFile(options.config);
    const report = await withState(options, config, (state) => gatherStatus(config, state));
    process.stdout.write(`${options.json ? JSON.stringify(report) : formatStatus(report)}\n`);
  });

program
  .command('redrive')
  .description('put every dead letter back on the queue')
  .requiredOption('-c, --config <file>', 'configuration file (JSON)')
  .option('-s, --state <file>', 'state file (default: beside the configuration file)')
  .action(async (options: StateOptions) => {
    const config = loadConfigFile(options.config);
    const count = await withState(options, config, (state) => state.queue.redrive());
    process.stdout.write(`redrove ${count} message(s)\n`);
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
  if (error instanceof ConfigError || error instanceof InvalidArgumentError) {
    process.stderr.write(`orthanc-forwarder: ${error.message}\n`);
    process.exit(2);
  }
  throw error;
}
