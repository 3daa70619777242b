/**
 * The audit trail of deletions at the sources (`audit export`): what both ledgers share of it, and
 * how a move confirms a deletion that an earlier attempt of it left open.
 *
 * A deletion is recorded with its intent, before the source is asked to delete, so that a crash
 * cannot delete anything unrecorded; until the intent completes (the move recorded its outcome) it
 * reads as `deleting`. A move that finds the intent still open confirms the record first, keeping
 * only the instances gone from the source: those still there were never deleted, and are recorded
 * again by whichever move deletes them. So every deleted instance is recorded once, and a record
 * never claims an instance that is still at its source.
 */
import type { OrthancClient } from './orthanc-client.ts';
import {
  DELETION_PART_SIZE,
  type DeletedInstance,
  type DeletionIntent,
  type DeletionKey,
  type DeletionRecord,
  type DeletionStatus,
  type Ledger,
} from './ports.ts';

const ACCEPTED = 'accepted';

/**
 * One instance as both ledgers store it: `seriesId/instanceId/sopInstanceUid`, and `/accepted` on
 * the operator's decision. Orthanc IDs and UIDs never hold a '/'.
 */
export const encodeDeleted = (instance: DeletedInstance): string =>
  [
    instance.seriesId,
    instance.instanceId,
    instance.sopInstanceUid,
    ...(instance.accepted ? [ACCEPTED] : []),
  ].join('/');

export const decodeDeleted = (text: string): DeletedInstance => {
  const [seriesId = '', instanceId = '', sopInstanceUid = '', flag] = text.split('/');
  return { seriesId, instanceId, sopInstanceUid, accepted: flag === ACCEPTED };
};

/** The record's instances in parts of DELETION_PART_SIZE, numbered from 0: both ledgers store these. */
export const deletionParts = (record: DeletionRecord): { part: number; instances: DeletedInstance[] }[] =>
  Array.from({ length: Math.ceil(record.instances.length / DELETION_PART_SIZE) }, (_, part) => ({
    part,
    instances: record.instances.slice(part * DELETION_PART_SIZE, (part + 1) * DELETION_PART_SIZE),
  }));

/**
 * Still `deleting` while the deletion's own intent is open and no later move confirmed it. An
 * intent recorded since (another `at`) was recorded by a later move, which confirmed this one
 * first if it was open.
 */
export const deletionStatus = (
  confirmed: boolean,
  at: number,
  intent: Pick<DeletionIntent, 'at' | 'completedAt'> | undefined,
): DeletionStatus =>
  !confirmed && intent !== undefined && intent.at === at && intent.completedAt === undefined
    ? 'deleting'
    : 'deleted';

/**
 * Before a move of the study (or series): an open intent means an earlier attempt asked the source
 * to delete and stopped before its outcome. What it deleted is what is gone now, so its record is
 * confirmed against what the source still holds — before this move deletes anything more.
 */
export const confirmOpenDeletion = async (
  ledger: Ledger,
  source: OrthancClient,
  open: DeletionKey & Pick<DeletionIntent, 'completedAt'>,
): Promise<void> => {
  if (open.completedAt !== undefined) return;
  const left =
    open.seriesId === ''
      ? await source.studyInstances(open.studyId)
      : await source.seriesInstances(open.seriesId);
  const { sourceId, studyId, seriesId, at } = open;
  await ledger.confirmDeletion({ sourceId, studyId, seriesId, at }, new Set((left ?? []).map((i) => i.id)));
};
