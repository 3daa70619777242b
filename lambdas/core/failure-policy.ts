/**
 * What to do with a work item whose attempt failed, the same in local mode and on AWS: retry a
 * transient failure later, with backoff; dead-letter a permanent one, or one out of attempts.
 */
import { failureKind, isUncounted, WaitError } from './errors.ts';
import { backoffDelay } from './retry.ts';

export type FailureDecision =
  /** `counted: false`: the attempt made progress, or never started: it does not use up an attempt. */
  | { readonly action: 'retry'; readonly delayMs: number; readonly counted: boolean }
  | { readonly action: 'dead-letter'; readonly why: 'permanent' | 'attempts used up' };

export const decideOnFailure = (
  error: unknown,
  receiveCount: number,
  retry: { readonly maxAttempts: number; readonly baseDelayMs: number; readonly maxDelayMs: number },
): FailureDecision => {
  if (failureKind(error) === 'permanent') return { action: 'dead-letter', why: 'permanent' };
  // A wait that knows its end (a transfer window, a minimum age) is not cut short by maxDelayMs.
  if (error instanceof WaitError)
    return { action: 'retry', delayMs: error.delayMs ?? backoffDelay(error.waits, retry), counted: false };
  if (isUncounted(error)) return { action: 'retry', delayMs: backoffDelay(1, retry), counted: false };
  if (receiveCount >= retry.maxAttempts) return { action: 'dead-letter', why: 'attempts used up' };
  return { action: 'retry', delayMs: backoffDelay(receiveCount, retry), counted: true };
};
