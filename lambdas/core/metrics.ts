/**
 * The metrics the engine emits. On AWS they become CloudWatch metrics through Powertools (EMF);
 * in local mode, with `run --listen`, Prometheus metrics (lambdas/local/prometheus-metrics.ts). Names and dimensions are the operations dashboard's contract.
 */
import { DestinationUnavailableError, NotVerifiedError, WaitError } from './errors.ts';
import type { FailureDecision } from './failure-policy.ts';
import type { SourceProgress } from './progress.ts';

export type MetricName =
  | 'ChangesRead'
  | 'StudiesQueued'
  | 'CursorLag'
  | 'StudiesWaiting'
  | 'SourceUnreachable'
  | 'SourceReset'
  | 'LookupFailures'
  | 'StudiesMoved'
  | 'InstancesMoved'
  | 'BytesMoved'
  | 'MoveDuration'
  | 'InstancesRejected'
  | 'Conflicts'
  | 'VerificationFailures'
  | 'InstancesDeleted'
  | 'Retries'
  | 'DeadLettered'
  | 'DestinationUnavailable'
  | ProgressMetricName;

/** The Progress set, per source at each poll: what it holds, the move rate, the estimated time left. */
export type ProgressMetricName =
  | 'StudiesLeft'
  | 'InstancesLeft'
  | 'BytesLeft'
  | 'MoveRate'
  | 'SecondsToFinish';

export type MetricUnit = 'Count' | 'Bytes' | 'Milliseconds' | 'Seconds' | 'BytesPerSecond';

export interface Metrics {
  /** Adds a data point; `id`, when given, becomes its dimension (dimensionOf). */
  add(name: MetricName, value: number, unit: MetricUnit, id?: string): void;
}

/** What a metric's per-id data points are keyed by: the destination's for DestinationUnavailable, else the source's. */
export const dimensionOf = (name: MetricName): 'SourceId' | 'DestinationId' =>
  name === 'DestinationUnavailable' ? 'DestinationId' : 'SourceId';

export const noMetrics: Metrics = { add: () => undefined };

/** The metrics of one study outcome. */
export const recordOutcome = (
  metrics: Metrics,
  outcome: {
    sourceId: string;
    result: string;
    sent: number;
    bytes: number;
    durationMs: number;
    rejected: number;
    deleted: number;
    conflicts: number;
  },
): void => {
  const { sourceId } = outcome;
  if (outcome.result === 'moved' || outcome.result === 'copied')
    metrics.add('StudiesMoved', 1, 'Count', sourceId);
  metrics.add('InstancesMoved', outcome.sent, 'Count', sourceId);
  metrics.add('BytesMoved', outcome.bytes, 'Bytes', sourceId);
  metrics.add('MoveDuration', outcome.durationMs, 'Milliseconds', sourceId);
  metrics.add('InstancesRejected', outcome.rejected, 'Count', sourceId);
  metrics.add('Conflicts', outcome.conflicts, 'Count', sourceId);
  metrics.add('InstancesDeleted', outcome.deleted, 'Count', sourceId);
};

/**
 * The Progress set of one source: what it still holds, the rate inside its windows (0 when nothing
 * left it lately), and, when it can be estimated, the time until it holds nothing more.
 */
export const recordProgress = (
  metrics: Metrics,
  sourceId: string,
  progress: SourceProgress,
  now: number,
): void => {
  if (progress.left === undefined) return;
  metrics.add('StudiesLeft', progress.left.studies, 'Count', sourceId);
  metrics.add('InstancesLeft', progress.left.instances, 'Count', sourceId);
  metrics.add('BytesLeft', progress.left.bytes, 'Bytes', sourceId);
  metrics.add('MoveRate', (progress.rate?.bytesPerHour ?? 0) / 3_600, 'BytesPerSecond', sourceId);
  if (progress.finishAt !== undefined)
    metrics.add('SecondsToFinish', Math.round((progress.finishAt - now) / 1_000), 'Seconds', sourceId);
};

/** The metrics of one poll of one source. */
export const recordPoll = (
  metrics: Metrics,
  sourceId: string,
  poll: {
    changesRead: number;
    queued: number;
    waiting: number;
    cursor: number;
    last: number;
    reset: boolean;
    paused: boolean;
    lookupFailures: number;
  },
): void => {
  // A paused source was not asked anything: there is nothing to tell of it.
  if (poll.paused) return;
  metrics.add('ChangesRead', poll.changesRead, 'Count', sourceId);
  metrics.add('StudiesQueued', poll.queued, 'Count', sourceId);
  metrics.add('StudiesWaiting', poll.waiting, 'Count', sourceId);
  metrics.add('CursorLag', Math.max(0, poll.last - poll.cursor), 'Count', sourceId);
  metrics.add('SourceUnreachable', 0, 'Count', sourceId);
  if (poll.reset) metrics.add('SourceReset', 1, 'Count', sourceId);
  // Each one is logged and left for the sweep: many in a row say the source refuses its lookups.
  metrics.add('LookupFailures', poll.lookupFailures, 'Count', sourceId);
};

/**
 * The metrics of one failed attempt at a work item. `sourceId`, when given, becomes the dimension
 * of the source's counts (local mode knows it; the AWS dashboard counts them for the stack).
 */
export const recordFailure = (
  metrics: Metrics,
  error: unknown,
  decision: FailureDecision,
  sourceId?: string,
): void => {
  // Sent but not listed by the destination: retried like any transient failure, and counted.
  if (error instanceof NotVerifiedError) metrics.add('VerificationFailures', 1, 'Count', sourceId);
  if (decision.action === 'dead-letter') {
    metrics.add('DeadLettered', 1, 'Count', sourceId);
    return;
  }
  if (error instanceof DestinationUnavailableError)
    metrics.add('DestinationUnavailable', 1, 'Count', error.destinationId);
  // A wait is no failed attempt (ForwarderErrorRate).
  if (!(error instanceof WaitError)) metrics.add('Retries', 1, 'Count', sourceId);
};
