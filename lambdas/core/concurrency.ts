/** Runs tasks with at most `limit` at once; once all have settled, the first failure is thrown. */
export const runBounded = async <T>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<void>,
): Promise<void> => {
  const queue = [...items];
  const failures: unknown[] = [];
  const lane = async () => {
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
      try {
        await task(next);
      } catch (error) {
        failures.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failures.length > 0) throw failures[0];
};

/**
 * Makes `make` once and hands out the same promise — until it rejects: then the next call makes it
 * anew. A set-up that failed on a passing fault (a secret store or an endpoint down at a cold
 * start) must not fail every later call of a long-lived process for ever.
 */
export const cachedUntilRejected = <T>(make: () => Promise<T>): (() => Promise<T>) => {
  let made: Promise<T> | undefined;
  return () => {
    if (made !== undefined) return made;
    const attempt = make();
    made = attempt;
    attempt.catch(() => {
      if (made === attempt) made = undefined;
    });
    return attempt;
  };
};
