/**
 * Whether a local run is doing its work, for `run --listen`'s /readyz: its state file can be
 * written, each source was polled lately, and no destination has been unreachable, or refusing
 * the forwarder as a whole, for as long. Ids and reasons only.
 */
import { accessSync, constants } from 'node:fs';
import { dirname } from 'node:path';
import type { ForwarderConfig } from '../core/config.ts';
import { describe } from '../core/errors.ts';
import { type LocalRunner, POLL_BUDGET_MS } from './local-runner.ts';

export interface Readiness {
  readonly ready: boolean;
  /** Why it is not ready: one line per problem. */
  readonly reasons: readonly string[];
}

/**
 * How long a source may go without a successful poll, and a destination stay unreachable: three
 * poll intervals and one poll's budget (a long feed is read over polls that follow at once).
 */
export const staleAfterMs = (config: Pick<ForwarderConfig, 'pollIntervalSeconds'>): number =>
  3 * config.pollIntervalSeconds * 1_000 + POLL_BUDGET_MS;

/** SQLite writes beside the file too (its journal): both must be writable. */
const stateProblem = (statePath: string): string | undefined => {
  try {
    accessSync(statePath, constants.W_OK);
    accessSync(dirname(statePath), constants.W_OK);
    return undefined;
  } catch (error) {
    return `state file not writable: ${describe(error)}`;
  }
};

export const readiness = (
  runner: LocalRunner,
  context: { readonly config: ForwarderConfig; readonly statePath: string; readonly now: number },
): Readiness => {
  const { config, now } = context;
  const staleMs = staleAfterMs(config);
  const started = runner.runStartedAt();
  const reasons: string[] = [];
  const state = stateProblem(context.statePath);
  if (state !== undefined) reasons.push(state);
  if (started === undefined) reasons.push('the run has not started');
  for (const [sourceId, status] of runner.sourceStatus()) {
    const since = status.lastPollAt ?? started ?? now;
    if (now - since > staleMs) {
      const error = status.lastError === undefined ? '' : ` (last error: ${status.lastError})`;
      reasons.push(
        `source ${sourceId}: no successful poll for ${Math.round((now - since) / 1_000)} s${error}`,
      );
    }
  }
  for (const { id, health } of runner.destinationHealth()) {
    if (health.faults !== undefined) reasons.push(`destination ${id}: refusing the forwarder`);
    else if (health.unreachableSince !== undefined && now - health.unreachableSince > staleMs)
      reasons.push(
        `destination ${id}: unreachable for ${Math.round((now - health.unreachableSince) / 1_000)} s`,
      );
  }
  return { ready: reasons.length === 0, reasons };
};
