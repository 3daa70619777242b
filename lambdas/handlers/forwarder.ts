/**
 * The forwarder Lambda: SQS-triggered, one move protocol run per record, partial batch failures
 * reported to the event source mapping. Thin: parse, call the core, report.
 */
import { BatchProcessor, EventType, processPartialResponse } from '@aws-lambda-powertools/batch';
import type { Context, SQSEvent, SQSRecord } from 'aws-lambda';
import { createPowertoolsMetrics } from '../aws/powertools-metrics.ts';
import { type AwsRuntime, createRuntime } from '../aws/runtime.ts';
import { MAX_REQUEUE_DELAY_MS, SqsDeadLetters } from '../aws/sqs-dead-letters.ts';
import { cachedUntilRejected } from '../core/concurrency.ts';
import { buildEngine } from '../core/engine.ts';
import { describe, failureKind, NotYetError, WaitError } from '../core/errors.ts';
import { decideOnFailure } from '../core/failure-policy.ts';
import { type Engine, forwardWorkItem } from '../core/forward-work-item.ts';
import { type Metrics, recordFailure, recordOutcome } from '../core/metrics.ts';

/** Time kept back from the invocation's budget to verify, delete and report what was sent. */
const RESERVE_MS = 30_000;
/** Of it, the time no new slice of verification starts in: it is for the delete and the report. */
const FINISH_RESERVE_MS = 10_000;
/**
 * Time kept back to record a failure and report the batch: every request still running then is
 * aborted, so an invocation ends on its own terms rather than timing out with nothing recorded.
 */
const MARGIN_MS = 5_000;

interface Forwarder {
  readonly runtime: AwsRuntime;
  readonly engine: Engine;
  readonly deadLetters: SqsDeadLetters;
}

const setUp = async (runtime: AwsRuntime): Promise<Forwarder> => {
  const timeoutMs = (runtime.config.aws?.forwarder.timeoutSeconds ?? 300) * 1000;
  return {
    runtime,
    // Clients are built once per execution environment, so connections are reused while warm.
    engine: {
      // With the feed's state: a study whose late arrivals stayed is watched, and the poller queues it.
      ...buildEngine(runtime.config, {
        ledger: runtime.ledger,
        feed: runtime.feed,
        log: runtime.log,
        owner: 'lambda',
        secrets: runtime.secrets,
      }),
      // A lease outlives the longest invocation, never the queue's visibility timeout (6 × timeout).
      leaseMs: timeoutMs + 60_000,
    },
    deadLetters: new SqsDeadLetters(runtime.sqs, {
      queueUrl: runtime.queueUrl,
      backlogQueueUrl: runtime.backlogQueueUrl,
      deadLetterQueueUrl: runtime.deadLetterQueueUrl,
    }),
  };
};

const processRecord = async (
  forwarder: Forwarder,
  record: SQSRecord,
  invocation: { owner: string; deadline: number; finishBy: number; signal: AbortSignal; metrics: Metrics },
): Promise<void> => {
  const { runtime, engine, deadLetters } = forwarder;
  const receiveCount = Number(record.attributes.ApproximateReceiveCount ?? '1');
  try {
    const outcome = await forwardWorkItem({ ...engine, owner: invocation.owner }, record.body, {
      deadline: invocation.deadline,
      finishBy: invocation.finishBy,
      attempt: receiveCount,
      signal: invocation.signal,
    });
    recordOutcome(invocation.metrics, outcome);
  } catch (error) {
    const decision = decideOnFailure(error, receiveCount, runtime.config.retry);
    recordFailure(invocation.metrics, error, decision);
    const attributes = {
      messageId: record.messageId,
      receiveCount,
      kind: failureKind(error),
      error: describe(error),
    };
    if (decision.action === 'dead-letter') {
      runtime.log.error('work item dead-lettered', { ...attributes, why: decision.why });
      await deadLetters.deadLetter(record.body, describe(error), receiveCount);
      return; // Reported as processed: the event source mapping deletes it from the work queue.
    }
    // A wait is no failed attempt (ForwarderErrorRate), and is logged once where it is found.
    if (error instanceof WaitError) {
      runtime.log.debug('work item waits', { ...attributes, delayMs: decision.delayMs });
    } else {
      runtime.log.warn('work item failed, will retry', {
        ...attributes,
        delayMs: decision.delayMs,
        counted: decision.counted,
      });
    }
    if (!decision.counted) {
      if (error instanceof NotYetError && decision.delayMs > MAX_REQUEUE_DELAY_MS) {
        // Longer than SQS can delay a message: rather than receive it every 15 minutes until
        // then, hand it back to the poller, whose sweep queues it once it may move
        // (docs/operations.md#transfer-windows-and-minimum-age).
        await runtime.feed.forgetQueued(error.sourceId, [error.studyId]);
        return; // Reported as processed: deleted from the queue.
      }
      await deadLetters.requeue(record.body, decision.delayMs);
      return; // Reported as processed: the copy just queued carries on, with its own receive count.
    }
    await deadLetters
      .retryAfter(record.body, record.receiptHandle, decision.delayMs)
      .catch((visibilityError: unknown) => {
        // The queue's own visibility timeout then decides when it comes back.
        runtime.log.warn('could not delay the retry', { error: describe(visibilityError) });
      });
    throw error;
  }
};

export const createForwarderHandler = (getRuntime: () => Promise<AwsRuntime>) => {
  const processor = new BatchProcessor(EventType.SQS);
  const forwarder = cachedUntilRejected(() => getRuntime().then(setUp));
  return async (event: SQSEvent, context: Context) => {
    const ready = await forwarder();
    ready.runtime.log.addContext?.(context);
    const { metrics, publish } = createPowertoolsMetrics();
    const endMs = Math.max(0, context.getRemainingTimeInMillis() - MARGIN_MS);
    const invocation = {
      owner: `lambda:${context.awsRequestId}`,
      deadline: Date.now() + endMs - RESERVE_MS,
      finishBy: Date.now() + endMs - FINISH_RESERVE_MS,
      signal: AbortSignal.timeout(endMs),
      metrics,
    };
    try {
      return await processPartialResponse(
        event,
        (record: SQSRecord) => processRecord(ready, record, invocation),
        processor,
        // With one study per invocation every failure is a "full batch" failure: report it as
        // an item failure like any other, so the retry keeps its backoff.
        { context, throwOnFullBatchFailure: false },
      );
    } finally {
      publish();
    }
  };
};

export const handler = createForwarderHandler(() => createRuntime());
