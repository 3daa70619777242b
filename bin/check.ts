/**
 * `check`, and the same check at the start of `run` (lambdas/core/preflight.ts): every server
 * asked within seconds, every problem named by the field to fix. At the start of `run`, a
 * configuration mistake stops it (exit 2); a server merely unreachable stops only a one-shot
 * `run --until-idle` (exit 1), while a service goes on and retries it, as it would later.
 */
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import type { SecretReader } from '../lambdas/core/credentials.ts';
import type { Log } from '../lambdas/core/log.ts';
import { preflight } from '../lambdas/core/preflight.ts';
import { formatCheck, formatProblem } from './format.ts';

/** Prints the report; the exit code: 0 all good, 1 a problem found. */
export const check = async (
  config: ForwarderConfig,
  options: { readonly json?: boolean | undefined; readonly secrets?: SecretReader | undefined },
): Promise<number> => {
  const report = await preflight(config, options.secrets === undefined ? {} : { secrets: options.secrets });
  process.stdout.write(`${options.json === true ? JSON.stringify(report) : formatCheck(report)}\n`);
  return report.ok ? 0 : 1;
};

/**
 * The check at the start of `run`: the exit code to stop with (2 for a mistake, 1 for a server
 * unreachable in a one-shot run), or undefined to go on.
 */
export const checkAtStart = async (
  config: ForwarderConfig,
  log: Log,
  options: { readonly untilIdle: boolean; readonly paused: ReadonlySet<string> },
): Promise<number | undefined> => {
  const report = await preflight(config, { skipSources: options.paused });
  const problems = report.servers.flatMap((server) => server.problems);
  const mistaken = problems.some((problem) => problem.kind === 'mistake');
  if (mistaken || (options.untilIdle && problems.length > 0)) {
    for (const problem of problems) process.stderr.write(`orthanc-forwarder: ${formatProblem(problem)}\n`);
    process.stderr.write(
      mistaken
        ? 'orthanc-forwarder: not started: fix the configuration (`orthanc-forwarder check` asks every server)\n'
        : 'orthanc-forwarder: not started: a server is unreachable (a run without --until-idle goes on and retries it)\n',
    );
    return mistaken ? 2 : 1;
  }
  for (const { field, problem, fix } of problems) {
    log.warn('server unreachable at start: the run goes on and retries it', { field, problem, fix });
  }
  log.info('start-up check done', { servers: report.servers.length, unreachable: problems.length });
  return undefined;
};
