/**
 * lambdas/core/forward-work-item.ts with a deadline on every attempt, put in its place by
 * move-deadline.ts.
 *
 * The deadline passes once the attempt's Nth STOW-RS request has been answered (N from
 * MOVE_DEADLINE_AFTER_STOWS): the attempt's clock (`Engine.now`, which the move protocol reads its
 * deadline against) jumps to it then. A deadline in wall-clock time would fall before the first
 * batch on a loaded machine and after the last on an idle one; this one falls between two batches
 * on any machine, after N of them were stored (the headway that keeps an attempt from using up
 * `retry.maxAttempts`, unless a fault stops them too). What happens then is the product's own: no
 * batch starts after the deadline, what was sent is verified and deleted, the item fails
 * "out of time" and the next attempt goes on with the rest.
 *
 * The answers are seen on undici's diagnostics channels, that is on the forwarder's own HTTP
 * client, and told apart by attempt through the asynchronous context the request was made in.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { subscribe } from 'node:diagnostics_channel';
import * as real from '../../lambdas/core/forward-work-item.ts';
import { MOVE_DEADLINE_AFTER_STOWS } from './processes.ts';

export * from '../../lambdas/core/forward-work-item.ts';

const afterStows = Number(process.env[MOVE_DEADLINE_AFTER_STOWS]);
if (!Number.isSafeInteger(afterStows) || afterStows < 1) {
  throw new Error(`${MOVE_DEADLINE_AFTER_STOWS} must be a whole number >= 1`);
}
/** Far more than an attempt of a small study needs: only the jump ends it. */
const WINDOW_MS = 60_000;

interface Attempt {
  /** The engine's clock. */
  readonly now: () => number;
  readonly deadline: number;
  stows: number;
  /** Added to the real clock once the deadline passed. */
  skew: number;
}

const attempts = new AsyncLocalStorage<Attempt>();
const attemptOf = new WeakMap<object, Attempt>();

interface UndiciRequest {
  readonly method: string;
  readonly path: string;
}
const isStow = (request: UndiciRequest) => request.method === 'POST' && request.path.endsWith('/studies');

// A request is made in the attempt's context; its answer arrives in the socket's.
subscribe('undici:request:create', (message) => {
  const { request } = message as { request: UndiciRequest };
  const attempt = attempts.getStore();
  if (attempt !== undefined && isStow(request)) attemptOf.set(request, attempt);
});
subscribe('undici:request:headers', (message) => {
  const attempt = attemptOf.get((message as { request: object }).request);
  if (attempt === undefined || ++attempt.stows !== afterStows) return;
  attempt.skew = Math.max(0, attempt.deadline - attempt.now());
});

export const forwardWorkItem: typeof real.forwardWorkItem = (engine, body, limits = {}) => {
  const now = engine.now ?? Date.now;
  const attempt: Attempt = { now, deadline: now() + WINDOW_MS, stows: 0, skew: 0 };
  return attempts.run(attempt, () =>
    real.forwardWorkItem({ ...engine, now: () => now() + attempt.skew }, body, {
      deadline: attempt.deadline,
      ...limits,
    }),
  );
};
