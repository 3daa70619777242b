/**
 * `plan`: what a run would move from each source now, per destination (lambdas/core/plan.ts),
 * moving nothing and writing no state. Only the sources are asked, with their credentials from
 * the configuration, or with `--aws` from Secrets Manager as the deployed stack reads them.
 */
import { InvalidArgumentError } from 'commander';
import { ConfigError, type ForwarderConfig } from '../lambdas/core/config.ts';
import type { SecretReader } from '../lambdas/core/credentials.ts';
import { describe } from '../lambdas/core/errors.ts';
import { createEndpoint } from '../lambdas/core/http.ts';
import { OrthancClient } from '../lambdas/core/orthanc-client.ts';
import { planSource } from '../lambdas/core/plan.ts';
import { formatPlan, type PlanReport, type PlanResult } from './format.ts';

export interface PlanOptions {
  readonly json?: boolean | undefined;
  /** Studies looked at per source, at most. */
  readonly limit?: number | undefined;
  /** Only this source. */
  readonly source?: string | undefined;
  readonly secrets?: SecretReader | undefined;
}

/** Prints the plan; the exit code: 0, or 1 when a source could not be asked. */
export const plan = async (config: ForwarderConfig, options: PlanOptions): Promise<number> => {
  const sources = config.sources.filter((s) => options.source === undefined || s.id === options.source);
  if (sources.length === 0) {
    throw new InvalidArgumentError(
      `--source ${options.source} names no source of the configuration (${config.sources.map((s) => s.id).join(', ')})`,
    );
  }
  const at = Date.now();
  const results = await Promise.all(
    sources.map(async (source): Promise<PlanResult> => {
      const client = new OrthancClient(
        createEndpoint(source, config.timeouts, {
          field: `sources[${config.sources.indexOf(source)}]`,
          ...(options.secrets === undefined ? {} : { secrets: options.secrets }),
        }),
      );
      try {
        return await planSource(client, config, source.id, { limit: options.limit, now: at });
      } catch (error) {
        // A setting to fix (an unset passwordEnv) is the configuration's error, not the source's.
        if (error instanceof ConfigError) throw error;
        return { sourceId: source.id, unreachable: describe(error) };
      }
    }),
  );
  const report: PlanReport = {
    at,
    deleteAfterForward: config.deleteAfterForward,
    unrouted: config.unrouted,
    sources: results,
  };
  process.stdout.write(`${options.json === true ? JSON.stringify(report) : formatPlan(report)}\n`);
  return results.some((result) => 'unreachable' in result) ? 1 : 0;
};
