/**
 * `pause`, `resume` and `sweep`, the same on the state file and on the deployed stack: what an
 * operator asks of one source goes into the feed's state, where every poll and every move reads
 * it, so that it takes effect without a restart or a redeploy.
 */
import { InvalidArgumentError } from 'commander';
import type { ForwarderConfig } from '../lambdas/core/config.ts';
import type { FeedStateStore } from '../lambdas/core/ports.ts';

export const SOURCE_ACTIONS = {
  pause:
    'stop polling a source and moving its studies: queued studies wait, nothing is dead-lettered (a move under way finishes)',
  resume: 'poll a paused source again, from where it stopped, and move the studies that waited',
  sweep: 'list every study of a source at its next poll, as the periodic sweep does, without waiting for it',
} as const;

export type SourceAction = keyof typeof SOURCE_ACTIONS;

const iso = (epochMs: number) => new Date(epochMs).toISOString();

/** Applies the action to the source; returns what to print. An unknown source is a usage error. */
export const controlSource = async (
  feed: FeedStateStore,
  config: Pick<ForwarderConfig, 'sources'>,
  sourceId: string,
  action: SourceAction,
  now: number,
): Promise<string> => {
  if (!config.sources.some((source) => source.id === sourceId)) {
    throw new InvalidArgumentError(
      `unknown source '${sourceId}': the configuration has ${config.sources.map((s) => s.id).join(', ')}`,
    );
  }
  const before = await feed.control(sourceId);
  switch (action) {
    case 'pause':
      return (await feed.pause(sourceId, now))
        ? `${sourceId} paused: it is not polled, and its queued studies wait until it is resumed`
        : `${sourceId} was already paused, since ${iso(before.pausedAt ?? now)}`;
    case 'resume':
      return (await feed.resume(sourceId))
        ? `${sourceId} resumed: the next poll reads its changes from where it stopped; its queued studies move as they come back`
        : `${sourceId} was not paused`;
    case 'sweep': {
      const when =
        before.pausedAt === undefined
          ? 'the next poll starts it (once a sweep under way ends)'
          : `it starts once ${sourceId} is resumed (paused now)`;
      return (await feed.requestSweep(sourceId, now))
        ? `sweep of ${sourceId} requested: ${when}`
        : `a sweep of ${sourceId} was already requested, at ${iso(before.sweepRequestedAt ?? now)}: ${when}`;
    }
  }
};
