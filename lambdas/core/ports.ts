/**
 * The ports between the move engine and the state it keeps. Each has a local implementation
 * (SQLite, one state file) and an AWS one (DynamoDB, SQS); the engine sees only these types.
 */

/** One unit of work: move one study of one source, or one series of it. */
export interface WorkItem {
  readonly sourceId: string;
  /** Orthanc's ID of the study at that source. */
  readonly studyId: string;
  /** Orthanc's ID of one series of the study (trigger StableSeries): only it is moved. */
  readonly seriesId?: string;
  /**
   * What made the feed queue it: a StableStudy or StableSeries change, the study being quiet long
   * enough, or a NewInstance change (trigger NewInstance).
   */
  readonly reason: 'stable' | 'quiet' | 'instance';
  /**
   * `backlog`: found by the sweep or by the first read of a source's change feed (its history),
   * served after the `new` ones the feed reads as they happen. Absent: `new`.
   */
  readonly priority?: WorkPriority;
}

export type WorkPriority = 'new' | 'backlog';

/** Where the change-feed reader puts work. Resolving means the items are durably queued. */
export interface WorkSink {
  enqueue(items: readonly WorkItem[]): Promise<void>;
}

/** A study seen in the feed whose stability Orthanc may never announce (it forgets on restart). */
export interface WatchedStudy {
  readonly studyId: string;
  /** Orthanc's LastUpdate value when we last looked, and when (epoch ms) we first saw that value. */
  readonly lastUpdate: string | undefined;
  readonly lastUpdateSeenAt: number;
}

/**
 * A study as it was when the feed last queued it whole while Orthanc called it stable (or it was
 * quiet), or found it settled: its LastUpdate then, and the settings digest in force. While both
 * are the same, queueing it again would repeat work that is queued, in flight, or done.
 */
export interface QueuedStudy {
  readonly studyId: string;
  readonly lastUpdate: string;
  /** The routing digest (routing.ts): what decides where a study goes and whether it leaves. */
  readonly settings: string;
  readonly queuedAt: number;
}

/**
 * How long a queued study is remembered: SQS keeps a dead letter as long (14 days), so a study
 * whose work item failed for good is queued once more about when its dead letter expires, and
 * a lost message can never leave a study at its source for good.
 */
export const QUEUED_MEMORY_MS = 14 * 24 * 60 * 60 * 1000;

/** Where a source's paged work stands between polls, besides the change-feed cursor. */
export interface FeedProgress {
  /** The watch list is looked at in study ID order: the last study looked at in this lap, '' at a lap's start. */
  readonly watchAfter: string;
  /** The sweep under way still lists the studies at positions below this one; absent between sweeps. */
  readonly sweepBelow?: number | undefined;
  /** When the last sweep started (epoch ms): the next is due sweepIntervalSeconds later. */
  readonly sweepStartedAt: number;
  /** The settings digest of the last sweep: under another one, every study is looked at again at once. */
  readonly settings: string;
  /**
   * The source's newest change when the feed was first read (or read again after a reset): the
   * changes up to it are the source's history, and their studies are queued as `backlog`.
   */
  readonly backlogThrough?: number | undefined;
}

/** The progress as stored, with the version a compare-and-set must name. */
export interface StoredProgress {
  readonly version: number;
  readonly progress: FeedProgress;
}

/**
 * What an operator asked of a source (`orthanc-forwarder pause`, `resume`, `sweep`), read by every
 * poll and every move, so that it takes effect without a restart or a redeploy.
 */
export interface SourceControl {
  /** Since when (epoch ms) the source is paused: not polled, its work items wait. Absent otherwise. */
  readonly pausedAt?: number | undefined;
  /** When a sweep was asked for that has not started yet (epoch ms). */
  readonly sweepRequestedAt?: number | undefined;
}

export interface FeedStateStore {
  /** The last change sequence number read and queued for a source, or undefined before the first read. */
  getCursor(sourceId: string): Promise<number | undefined>;
  /**
   * Moves the cursor from `expected` to `next` only if it still stands at `expected`, so that two
   * overlapping readers can neither move it backwards nor skip changes. Returns false otherwise.
   */
  advanceCursor(sourceId: string, expected: number | undefined, next: number): Promise<boolean>;
  /** Adds studies to the source's watch list (already watched ones keep their state). */
  watch(sourceId: string, studyIds: readonly string[], now: number): Promise<void>;
  /** In study ID order; with `page`, at most `limit` studies whose IDs sort after `after`. */
  watched(
    sourceId: string,
    page?: { readonly after: string; readonly limit: number },
  ): Promise<WatchedStudy[]>;
  watchedCount(sourceId: string): Promise<number>;
  updateWatched(sourceId: string, study: WatchedStudy): Promise<void>;
  unwatch(sourceId: string, studyIds: readonly string[]): Promise<void>;
  progress(sourceId: string): Promise<StoredProgress | undefined>;
  /**
   * Replaces the progress only if its version is still `expected` (undefined: none stored yet),
   * so that two overlapping polls never both page the same studies; the version becomes
   * `expected + 1` (1 for the first). Returns false otherwise.
   */
  saveProgress(sourceId: string, expected: number | undefined, progress: FeedProgress): Promise<boolean>;
  /** Remembers studies as queued, replacing what was remembered of them, for QUEUED_MEMORY_MS. */
  rememberQueued(sourceId: string, studies: readonly QueuedStudy[]): Promise<void>;
  /** What is remembered of these studies; one never queued, or forgotten, is left out. */
  queued(sourceId: string, studyIds: readonly string[]): Promise<QueuedStudy[]>;
  /**
   * Forgets that these studies were queued, so that the next sweep queues them again whatever
   * their state: for work queued outside the feed (an operator's decision) that may not arrive.
   */
  forgetQueued(sourceId: string, studyIds: readonly string[]): Promise<void>;
  /** What an operator asked of the source; nothing for one never asked anything. */
  control(sourceId: string): Promise<SourceControl>;
  /** Pauses the source from `at`; false when it was paused already (it stays paused since then). */
  pause(sourceId: string, at: number): Promise<boolean>;
  /** False when it was not paused. */
  resume(sourceId: string): Promise<boolean>;
  /**
   * Asks for a sweep at `at`; false when one asked for earlier has not started yet (that one
   * stands: the sweep it starts serves both).
   */
  requestSweep(sourceId: string, at: number): Promise<boolean>;
  /** Clears the request made at `at`, once its sweep started; one made since stays. */
  clearSweepRequest(sourceId: string, at: number): Promise<void>;
}

/** A message taken from a queue, invisible to other consumers until acked or released. */
export interface ReceivedMessage {
  readonly handle: string;
  readonly body: string;
  /** How many times the message has been received, this time included. */
  readonly receiveCount: number;
}

export interface DeadLetter {
  readonly id: string;
  readonly body: string;
  readonly receiveCount: number;
  readonly lastError: string;
  readonly deadLetteredAt: number;
}

export interface QueueStats {
  readonly waiting: number;
  readonly inFlight: number;
  readonly deadLetters: number;
}

/**
 * The local work queue, with the semantics of SQS and its redrive policy: a received message is
 * hidden for a visibility timeout, a message received `maxReceives` times goes to the dead
 * letters, and dead letters can be put back.
 */
export interface WorkQueue extends WorkSink {
  receive(max: number, visibilityTimeoutMs: number): Promise<ReceivedMessage[]>;
  /** Done with it: delete it. */
  ack(handle: string): Promise<void>;
  /**
   * Failed for now: visible again after `delayMs`, or dead-lettered once it has used up its
   * receives. `counted: false` gives the receive back (an attempt that made progress).
   */
  release(
    handle: string,
    error: string,
    delayMs: number,
    options?: { readonly counted?: boolean },
  ): Promise<void>;
  /** Failed for good: dead-letter it now. */
  deadLetter(handle: string, error: string): Promise<void>;
  /** Every dead letter, in the order they were dead-lettered, read page by page: memory stays bounded. */
  deadLetters(): AsyncIterable<DeadLetter>;
  /**
   * Puts the dead letters the filter matches (every one without a filter) back on the queue with
   * a fresh receive count, leaving the others; returns how many.
   */
  redrive(filter?: DeadLetterFilter): Promise<number>;
  stats(): Promise<QueueStats>;
}

/** Which dead letters a selective redrive takes: all of those given must match. */
export interface DeadLetterFilter {
  /** The source of the work item. */
  readonly sourceId?: string | undefined;
  /** A case-insensitive substring of the last error, as recorded or as `dlq list --group-by error` shows it. */
  readonly error?: string | undefined;
}

/** An instance the destination refused for good: it stays at the source and is not sent again. */
export interface RejectedInstance {
  readonly sourceId: string;
  readonly studyId: string;
  readonly instanceId: string;
  readonly sopInstanceUid: string;
  readonly reason: string;
  readonly rejectedAt: number;
}

/**
 * `skipped`: no destination's filter accepts the study (it stays at the source unless `unrouted`
 * is 'delete'); `unchanged`: settled before and unchanged since (copy mode, or skipped), so nothing
 * was sent or verified.
 */
export type MoveResult = 'moved' | 'partial' | 'gone' | 'copied' | 'skipped' | 'unchanged';

/**
 * What the operator decided about a conflict: leave the source's copy where it is and stop
 * reporting it (`keep-source`); let the destination's copy stand and delete the source's
 * (`accept-destination`); or delete the destination's copy, send the source's, verify it and then
 * delete at the source (`replace-destination`, only where the forwarder can delete at the
 * destination).
 */
export type ConflictResolution = 'keep-source' | 'accept-destination' | 'replace-destination';

export const CONFLICT_RESOLUTIONS: readonly ConflictResolution[] = [
  'keep-source',
  'accept-destination',
  'replace-destination',
];

/** Names one conflict: one source instance at one destination. */
export interface ConflictKey {
  readonly sourceId: string;
  /** The study the instance belongs to at the source: conflicts are looked up per study. */
  readonly studyId: string;
  /** Orthanc's ID of the instance at the source. */
  readonly instanceId: string;
  readonly destinationId: string;
}

/**
 * A source instance whose SOPInstanceUID the destination holds as another instance (other
 * identifying attributes, or other bytes under `checksum`). It is never deleted at the source and
 * never sent again until the operator resolves it. Attribute names only, never their values.
 */
export interface Conflict extends ConflictKey {
  readonly sopInstanceUid: string;
  /** The names of the attributes that differ (e.g. `PatientName`), or `content` for other bytes. */
  readonly attributes: readonly string[];
  readonly detectedAt: number;
  /** Absent while the conflict is open. */
  readonly resolution?: ConflictResolution | undefined;
  readonly resolvedAt?: number | undefined;
}

export interface ConflictFilter {
  readonly sourceId?: string | undefined;
  readonly studyId?: string | undefined;
  /** Only open ones (no resolution yet). */
  readonly openOnly?: boolean | undefined;
}

/** What one run of the move protocol did; contains Orthanc IDs and counts only, never PHI. */
export interface StudyOutcome {
  readonly sourceId: string;
  readonly studyId: string;
  readonly result: MoveResult;
  readonly instances: number;
  readonly sent: number;
  readonly alreadyPresent: number;
  readonly deleted: number;
  readonly rejected: number;
  /** Instances held at the source by an open conflict at some destination. */
  readonly conflicts: number;
  /** Bytes sent, summed over the destinations. */
  readonly bytes: number;
  /** The size at the source of the instances deleted there. */
  readonly deletedBytes: number;
  readonly durationMs: number;
  readonly finishedAt: number;
}

/** Studies, instances and bytes. */
export interface Tally {
  readonly studies: number;
  readonly instances: number;
  readonly bytes: number;
}

/** What the ledger counted of one source's outcomes; they keep counting once the outcomes are pruned. */
export interface SourceTotals {
  /**
   * What left the source: studies moved whole (one moved again after new instances arrived counts
   * again: that was another move); the instances deleted there once every destination verified
   * them, a partly moved study's included, and their size at the source.
   */
  readonly moved: Tally;
  /** Copy mode: studies copied whole; the instances and bytes the copies sent (once per destination). */
  readonly copied: Tally;
  /** Instances deleted at the source: the moved ones, and the unrouted ones under `unrouted: "delete"`. */
  readonly deleted: number;
}

export interface Totals extends SourceTotals {
  /** Distinct instances refused for good, those forgotten since (gone from their source) included. */
  readonly rejected: number;
  /**
   * Per source ID, sources no longer configured included. '' holds what a ledger counted before
   * it counted per source (state schema 4, or an AWS stack before this version): its studies as
   * moved, its instances as the deleted ones and its bytes as those sent.
   */
  readonly sources: Readonly<Record<string, SourceTotals>>;
}

/**
 * A study (or one series of it) that stays at its source on purpose, as it was when the forwarder
 * last finished with it: copied (copy mode), or skipped (no destination accepts it). While the
 * source's LastUpdate, its instance count and the routing stay the same, there is nothing to do.
 */
export interface SettledStudy {
  readonly sourceId: string;
  readonly studyId: string;
  /** The series of a series work item; '' for the whole study. */
  readonly seriesId: string;
  /** The study's LastUpdate at the source. */
  readonly lastUpdate: string;
  readonly instances: number;
  /** A digest of the destinations and their filters: another configuration looks again. */
  readonly routing: string;
  readonly result: 'copied' | 'partial' | 'skipped';
  readonly settledAt: number;
}

/**
 * A deletion at a source, made durable before the source is asked to delete and completed once
 * the move's outcome is recorded: a worker that dies in between leaves it open, and the next move
 * of the study records what was deleted instead of finding the study merely gone. The last one of
 * a study is kept after completion: it remembers where the study was routed, so that what is left
 * of a partly moved study is never routed anew (to `skipped`, or deleted as unrouted).
 */
export interface DeletionIntent {
  readonly sourceId: string;
  readonly studyId: string;
  /** The series of a series work item; '' for the whole study. */
  readonly seriesId: string;
  /** How many verified instances are being deleted. */
  readonly instances: number;
  /** The destinations that verified them, each with its verification level. */
  readonly verifiedBy: readonly { readonly destinationId: string; readonly verify: string }[];
  /** The routing digest (routing.ts) the study was routed under. */
  readonly routing: string;
  readonly at: number;
  /** When the outcome was recorded; absent while the deletion is open. */
  readonly completedAt?: number | undefined;
}

export interface Ledger {
  /**
   * Takes the lease on a study for `ttlMs`, so that two workers never move it at once. A lease
   * whose holder crashed expires. Returns false while another owner holds it.
   */
  acquireLease(key: string, owner: string, ttlMs: number, now: number): Promise<boolean>;
  releaseLease(key: string, owner: string): Promise<void>;
  record(outcome: StudyOutcome): Promise<void>;
  recordRejected(instances: readonly RejectedInstance[]): Promise<void>;
  /** The rejected instances of one study (or of all, without studyId). */
  rejected(sourceId?: string, studyId?: string): Promise<RejectedInstance[]>;
  /**
   * Forgets refusals of instances gone from their source, each only while it is the refusal
   * given (one refused again since is kept: it is about a new arrival). The totals keep counting
   * them. Returns how many were forgotten.
   */
  forgetRejected(instances: readonly RejectedInstance[]): Promise<number>;
  /**
   * Records conflicts found by a move. One already recorded for the same key (open or resolved)
   * stays as it is: the first detection and the operator's decision are never overwritten.
   */
  recordConflicts(conflicts: readonly Conflict[]): Promise<void>;
  /** The conflicts matching the filter, ordered by source, study, detection time and instance. */
  conflicts(filter?: ConflictFilter): Promise<Conflict[]>;
  /**
   * Records the operator's decision on an open conflict. Returns false when there is no such
   * conflict or it was resolved already (a decision is made once).
   */
  resolveConflict(key: ConflictKey, resolution: ConflictResolution, at: number): Promise<boolean>;
  /** Makes a deletion durable before it happens; replaces the study's (or series') last one. */
  recordIntent(intent: DeletionIntent): Promise<void>;
  /**
   * The last deletion of the study and of each series of it (seriesId '' for the whole study),
   * open or completed, in one read: a series item goes where its study's other series went.
   */
  intents(sourceId: string, studyId: string): Promise<DeletionIntent[]>;
  /** Marks the open deletion completed; completing none, or a completed one, changes nothing. */
  completeIntent(sourceId: string, studyId: string, seriesId: string, at: number): Promise<void>;
  /** Remembers a study left at its source on purpose; replaces what was remembered of it. */
  recordSettled(study: SettledStudy): Promise<void>;
  /** What was remembered of the study (or of one series of it, seriesId '' for the whole study). */
  settled(sourceId: string, studyId: string, seriesId: string): Promise<SettledStudy | undefined>;
  totals(): Promise<Totals>;
  /**
   * Keeps the audit trail of a deletion, with its intent and before the source is asked to delete
   * (same `at`), in parts of DELETION_PART_SIZE instances, for `retention.auditDays`.
   */
  recordDeletion(deletion: DeletionRecord): Promise<void>;
  /**
   * Confirms a recorded deletion whose move stopped before its outcome (its intent is open): only
   * the instances gone from the source stay in it. A confirmed one, or none, is left as it is.
   */
  confirmDeletion(key: DeletionKey, stillAtSource: ReadonlySet<string>): Promise<void>;
  /**
   * One page of the recorded deletions of the period, parts in the order of time, source, study,
   * series and part; `after` is the `next` of the previous page, at most `limit` parts a page.
   */
  deletions(
    query: DeletionQuery,
    page: { readonly after?: string | undefined; readonly limit: number },
  ): Promise<DeletionPage>;
  /**
   * What left the source (SourceTotals.moved) by the outcomes finished from the start of the
   * MOVED_BUCKET_MS bucket that holds `since` on: what `status` and the Progress metrics take a
   * rate from. Counted in buckets so that DynamoDB answers it with one small query.
   */
  movedSince(sourceId: string, since: number): Promise<Tally>;
}

/** The buckets of time `Ledger.movedSince` counts in: a rate's window starts at one's start. */
export const MOVED_BUCKET_MS = 5 * 60_000;

/** Names one recorded deletion: the deletion intent's key and time. */
export interface DeletionKey {
  readonly sourceId: string;
  readonly studyId: string;
  /** The series of a series work item; '' for the whole study. */
  readonly seriesId: string;
  /** The intent's `at` (epoch ms): when the forwarder set out to delete. */
  readonly at: number;
}

/** An instance a deletion removed from its source: Orthanc IDs and its SOPInstanceUID, no tag value. */
export interface DeletedInstance {
  readonly seriesId: string;
  readonly instanceId: string;
  readonly sopInstanceUid: string;
  /**
   * Deleted on the operator's `accept-destination` decision: the destination holds another
   * instance under this SOPInstanceUID, which the operator let stand.
   */
  readonly accepted: boolean;
}

/**
 * The audit trail of one deletion at a source: which instances, and which destinations verified
 * them at which level (none: deleted as unrouted). UIDs, so that an instance can be found at the
 * destination; never a patient value.
 */
export interface DeletionRecord extends DeletionKey {
  readonly studyInstanceUid: string;
  readonly verifiedBy: DeletionIntent['verifiedBy'];
  readonly instances: readonly DeletedInstance[];
}

/** Instances per stored part of a deletion: a DynamoDB item of them stays far below 400 KB. */
export const DELETION_PART_SIZE = 1000;

/**
 * `deleted`: its move recorded its outcome, or a later move confirmed it; `deleting`: its intent is
 * still open (the move failed or stopped after asking the source to delete): the study's next
 * move confirms it.
 */
export type DeletionStatus = 'deleted' | 'deleting';

/** One part of a recorded deletion, as the audit reads it. */
export interface AuditedDeletion extends DeletionRecord {
  /** 0 for the first DELETION_PART_SIZE instances of the deletion, 1 for the next, … */
  readonly part: number;
  readonly status: DeletionStatus;
}

export interface DeletionQuery {
  /** From (epoch ms, inclusive) … */
  readonly since: number;
  /** … to (epoch ms, exclusive). */
  readonly until: number;
  readonly sourceId?: string | undefined;
}

export interface DeletionPage {
  readonly deletions: AuditedDeletion[];
  /** Where the next page starts; absent after the last. */
  readonly next?: string | undefined;
}
