/**
 * What `status` gathers in local mode: from the state file, and from each source itself (its
 * newest change and its statistics, with short timeouts). core/status.ts assembles the report.
 */
import type { ForwarderConfig } from '../core/config.ts';
import { createEndpoint } from '../core/http.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import { recentMoves } from '../core/progress.ts';
import { askSource, assembleStatus, type SourceProbe, type StatusReport } from '../core/status.ts';
import type { LocalState } from './sqlite-state.ts';

const probe = async (
  config: ForwarderConfig,
  state: LocalState,
  source: ForwarderConfig['sources'][number],
  now: number,
): Promise<SourceProbe> => {
  const timeouts = { ...config.timeouts, headersMs: 5_000, bodyMs: 5_000 };
  const [control, cursor, waitingToBecomeStable, answer, recent] = await Promise.all([
    state.feed.control(source.id),
    state.feed.getCursor(source.id),
    state.feed.watchedCount(source.id),
    askSource(() => new OrthancClient(createEndpoint(source, timeouts))),
    recentMoves(state.ledger, source.id, now),
  ]);
  return { control, cursor, waitingToBecomeStable, answer, recent };
};

export const gatherStatus = async (
  config: ForwarderConfig,
  state: LocalState,
  now = Date.now(),
): Promise<StatusReport> =>
  assembleStatus(config, {
    now,
    probes: await Promise.all(config.sources.map((source) => probe(config, state, source, now))),
    queue: await state.queue.stats(),
    deadLetters: state.queue.deadLetters(),
    rejected: await state.ledger.rejected(),
    conflicts: await state.ledger.conflicts({ openOnly: true }),
    totals: await state.ledger.totals(),
  });
