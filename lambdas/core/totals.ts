/**
 * How the ledger's totals count outcomes (ports.ts, Totals): what one outcome adds to its source's,
 * and the sum of every source's. SqliteLedger sums the same rules in SQL over its outcomes.
 */
import { MOVED_BUCKET_MS, type SourceTotals, type StudyOutcome, type Tally, type Totals } from './ports.ts';

export const NO_TALLY: Tally = { studies: 0, instances: 0, bytes: 0 };

/** A source's totals before anything was counted of it. */
export const NO_TOTALS: SourceTotals = { moved: NO_TALLY, copied: NO_TALLY, deleted: 0 };

/**
 * What an outcome adds. A 'partial' run left instances behind and a 'gone' one found nothing, so
 * neither counts as a study; what a partial run deleted did leave. A 'skipped' run deleted
 * unrouted instances: deleted, not moved.
 */
export const outcomeTotals = (outcome: StudyOutcome): SourceTotals => {
  const copied = outcome.result === 'copied';
  const left = outcome.result !== 'skipped';
  return {
    moved: {
      studies: outcome.result === 'moved' ? 1 : 0,
      instances: left ? outcome.deleted : 0,
      bytes: left ? outcome.deletedBytes : 0,
    },
    copied: copied ? { studies: 1, instances: outcome.sent, bytes: outcome.bytes } : NO_TALLY,
    deleted: outcome.deleted,
  };
};

const addTally = (a: Tally, b: Tally): Tally => ({
  studies: a.studies + b.studies,
  instances: a.instances + b.instances,
  bytes: a.bytes + b.bytes,
});

/** The totals of every source together, with theirs. */
export const sumTotals = (sources: Readonly<Record<string, SourceTotals>>, rejected: number): Totals => {
  const all = Object.values(sources).reduce(
    (sum, one) => ({
      moved: addTally(sum.moved, one.moved),
      copied: addTally(sum.copied, one.copied),
      deleted: sum.deleted + one.deleted,
    }),
    NO_TOTALS,
  );
  return { ...all, rejected, sources };
};

/** The start of the MOVED_BUCKET_MS bucket that holds `at`: where Ledger.movedSince counts from. */
export const movedBucketStart = (at: number): number => Math.floor(at / MOVED_BUCKET_MS) * MOVED_BUCKET_MS;
