/**
 * Exponential backoff with jitter: the n-th failure waits about base × 2^(n-1), capped, and
 * randomized between half and all of it so that many workers do not retry in step.
 */
export const backoffDelay = (
  attempt: number,
  limits: { readonly baseDelayMs: number; readonly maxDelayMs: number },
  random: () => number = Math.random,
): number => {
  const exponential = limits.baseDelayMs * 2 ** Math.max(0, Math.min(attempt - 1, 30));
  const capped = Math.min(limits.maxDelayMs, exponential);
  return Math.round(capped * (0.5 + random() / 2));
};
