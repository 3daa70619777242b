/**
 * The poller Lambda: on its schedule, polls every source in parallel, each within the
 * invocation's time budget (its change feed, then its watch list and its sweep, each carried
 * across invocations in the feed store), and queues study work items on SQS. One source failing
 * never stops the others: it is logged and counted.
 */
import type { Context, ScheduledEvent } from 'aws-lambda';
import { createPowertoolsMetrics } from '../aws/powertools-metrics.ts';
import { type AwsRuntime, createRuntime } from '../aws/runtime.ts';
import { SqsWorkSink } from '../aws/sqs-work-sink.ts';
import { type FeedContext, type PollReport, pollSource } from '../core/changes-feed.ts';
import { cachedUntilRejected } from '../core/concurrency.ts';
import { feedSettings } from '../core/engine.ts';
import { describe } from '../core/errors.ts';
import { createEndpoint } from '../core/http.ts';
import { type Metrics, recordPoll, recordProgress } from '../core/metrics.ts';
import { moveTiming } from '../core/move-timing.ts';
import { OrthancClient } from '../core/orthanc-client.ts';
import { measureProgress } from '../core/progress.ts';
import { DAY_MS, forgetGoneRefusals } from '../core/retention.ts';

/** Time kept back to log and publish metrics before the invocation ends. */
const RESERVE_MS = 5_000;

export interface SourcePollResult {
  readonly sourceId: string;
  readonly ok: boolean;
  readonly report?: PollReport;
  readonly error?: string;
}

const setUp = (runtime: AwsRuntime) => ({
  runtime,
  settings: feedSettings(runtime.config, runtime.ledger),
  sink: new SqsWorkSink(runtime.sqs, runtime.queueUrl, { backlogQueueUrl: runtime.backlogQueueUrl }),
  sources: runtime.config.sources.map((source) => ({
    id: source.id,
    timing: moveTiming(runtime.config, source.id),
    client: new OrthancClient(createEndpoint(source, runtime.config.timeouts, { secrets: runtime.secrets })),
  })),
});

/**
 * Whether this scheduled invocation is the one whose period holds a UTC midnight: old refusals
 * of instances gone from their source are forgotten once a day, with nothing stored to say when.
 */
export const isPruneDue = (eventTime: string | undefined, periodMinutes: number): boolean => {
  const at = Date.parse(eventTime ?? '');
  if (!Number.isFinite(at)) return false;
  return Math.floor(at / DAY_MS) !== Math.floor((at - periodMinutes * 60_000) / DAY_MS);
};

/** Forgets the refusals retention.refusalDays old whose instance is gone from its source. */
const pruneRefusals = async (ready: ReturnType<typeof setUp>): Promise<void> => {
  const { runtime, sources } = ready;
  try {
    const forgotten = await forgetGoneRefusals(
      runtime.ledger,
      new Map(sources.map((source) => [source.id, source.client])),
      Date.now() - runtime.config.retention.refusalDays * DAY_MS,
    );
    runtime.log.info('refusals pruned', { ...forgotten });
  } catch (error) {
    // Tomorrow's run tries again; nothing is lost by keeping a refusal.
    runtime.log.warn('could not prune refusals', { error: describe(error) });
  }
};

/**
 * Publishes the source's Progress metrics: GET /statistics and two small ledger queries. A failure
 * only costs this poll's data points of it: the poll itself succeeded.
 */
const measureSource = async (
  ready: ReturnType<typeof setUp>,
  source: ReturnType<typeof setUp>['sources'][number],
  metrics: Metrics,
): Promise<void> => {
  const { runtime } = ready;
  const now = Date.now();
  try {
    const schedule = moveTiming(runtime.config, source.id)?.schedule;
    const progress = await measureProgress(source.client, runtime.ledger, source.id, schedule, now);
    recordProgress(metrics, source.id, progress, now);
  } catch (error) {
    runtime.log.warn('progress not measured', { sourceId: source.id, error: describe(error) });
  }
};

export const createPollerHandler = (getRuntime: () => Promise<AwsRuntime>) => {
  const poller = cachedUntilRejected(() => getRuntime().then(setUp));
  return async (
    event: Partial<ScheduledEvent>,
    context: Context,
  ): Promise<{ sources: SourcePollResult[] }> => {
    const ready = await poller();
    const { runtime, settings, sink, sources } = ready;
    runtime.log.addContext?.(context);
    const { log } = runtime;
    const { metrics, publish } = createPowertoolsMetrics();
    const deadline = Date.now() + context.getRemainingTimeInMillis() - RESERVE_MS;
    const poll = async (source: (typeof sources)[number]): Promise<SourcePollResult> => {
      const context: FeedContext = {
        sourceId: source.id,
        source: source.client,
        store: runtime.feed,
        sink,
        log,
        ...settings,
        timing: source.timing,
        deadline,
      };
      try {
        const report = await pollSource(context);
        recordPoll(metrics, source.id, report);
        if (!report.paused && Date.now() < deadline) await measureSource(ready, source, metrics);
        log.info('source polled', { sourceId: source.id, ...report });
        return { sourceId: source.id, ok: true, report };
      } catch (error) {
        metrics.add('SourceUnreachable', 1, 'Count', source.id);
        log.error('source poll failed', { sourceId: source.id, error: describe(error) });
        return { sourceId: source.id, ok: false, error: describe(error) };
      }
    };
    try {
      const polled = await Promise.all(sources.map(poll));
      if (isPruneDue(event.time, runtime.config.aws?.pollScheduleMinutes ?? 1) && Date.now() < deadline) {
        await pruneRefusals(ready);
      }
      return { sources: polled };
    } finally {
      publish();
    }
  };
};

export const handler = createPollerHandler(() => createRuntime());
