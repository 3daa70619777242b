/**
 * A deadline for every attempt of a move in a local-mode forwarder, which has none of its own,
 * for the chaos runner's deadline-cut scenarios:
 *
 *   MOVE_DEADLINE_AFTER_STOWS=N node --import <this file's URL> bin/cli.ts run … (or crash-at.ts …)
 *
 * A Lambda invocation hands its move a deadline (lambdas/handlers/forwarder.ts); the local runner
 * calls forwardWorkItem without one and has no option for it. Rather than a knob in the product
 * for the tests, a module hook hands whoever imports lambdas/core/forward-work-item.ts
 * move-deadline-work-item.ts instead, which passes the deadline on: the runner, the state file and
 * the move protocol stay the real ones.
 */
import { registerHooks } from 'node:module';

const FORWARD_WORK_ITEM = new URL('../../lambdas/core/forward-work-item.ts', import.meta.url).href;
const WITH_DEADLINE = new URL('./move-deadline-work-item.ts', import.meta.url).href;

registerHooks({
  resolve: (specifier, context, nextResolve) => {
    const resolved = nextResolve(specifier, context);
    // The wrapper itself gets the real module.
    return resolved.url === FORWARD_WORK_ITEM && context.parentURL !== WITH_DEADLINE
      ? { ...resolved, url: WITH_DEADLINE }
      : resolved;
  },
});
