/**
 * What the ledger may forget. Outcomes age out (`retention.outcomeDays`); a refusal is needed for
 * as long as its instance is at its source, since forgetting it would have the instance sent and
 * refused again, so it is forgotten only once old (`retention.refusalDays`) and proven gone.
 */
import { runBounded } from './concurrency.ts';
import type { OrthancClient } from './orthanc-client.ts';
import type { Ledger, RejectedInstance } from './ports.ts';

export const DAY_MS = 24 * 60 * 60 * 1000;

/** Lookups in flight per source: a few, beside the moves. */
const LOOKUPS_AT_ONCE = 4;

export interface ForgottenRefusals {
  readonly forgotten: number;
  /** Old refusals whose source could not be asked (unreachable, or no longer configured): kept. */
  readonly unchecked: number;
}

/** The refusals of one source whose instance it no longer holds; after its first failure, none more are asked. */
const goneAt = async (
  source: OrthancClient | undefined,
  refusals: readonly RejectedInstance[],
): Promise<{ gone: RejectedInstance[]; unchecked: number }> => {
  if (source === undefined) return { gone: [], unchecked: refusals.length };
  const gone: RejectedInstance[] = [];
  let checked = 0;
  let failed = false;
  await runBounded(refusals, LOOKUPS_AT_ONCE, async (refusal) => {
    if (failed) return;
    try {
      // Only a 404 proves the instance gone.
      if (!(await source.hasInstance(refusal.instanceId))) gone.push(refusal);
      checked++;
    } catch {
      failed = true;
    }
  });
  return { gone, unchecked: refusals.length - checked };
};

/** Forgets the refusals given before `before` (epoch ms) whose instance is gone from its source. */
export const forgetGoneRefusals = async (
  ledger: Ledger,
  sources: ReadonlyMap<string, OrthancClient>,
  before: number,
): Promise<ForgottenRefusals> => {
  const bySource = new Map<string, RejectedInstance[]>();
  for (const refusal of await ledger.rejected()) {
    if (refusal.rejectedAt >= before) continue;
    const ofSource = bySource.get(refusal.sourceId) ?? [];
    ofSource.push(refusal);
    bySource.set(refusal.sourceId, ofSource);
  }
  const checks = await Promise.all(
    [...bySource].map(([sourceId, refusals]) => goneAt(sources.get(sourceId), refusals)),
  );
  return {
    forgotten: await ledger.forgetRejected(checks.flatMap((check) => check.gone)),
    unchecked: checks.reduce((sum, check) => sum + check.unchecked, 0),
  };
};
