/**
 * What to do with a work item whose attempt failed, the same in local mode and on AWS: retry a
 * transient failure later, with backoff; dead-letter a permanent one, or one out of attempts.
 */
import { failureKind } from './errors.ts';
import { backoffDelay } from './retry.ts';

export type FailureDecision =
  | { readonly action: 'retry'; readonly delayMs: number }
  | { readonly action: 'dead-letter'; readonly why: 'permanent' | 'attempts used up' };

export const decideOnFailure = (
  error: unknown,
  receiveCount: number,
  retry: { readonly maxAttempts: number; readonly baseDelayMs: number; readonly maxDelayMs: number },
): FailureDecision => {
  if (failureKind(error) === 'permanent') return { action: 'dead-letter', why: 'permanent' };
  if (receiveCount >= retry.maxAttempts) return { action: 'dead-letter', why: 'attempts used up' };
  return { action: 'retry', delayMs: backoffDelay(receiveCount, retry) };
};
