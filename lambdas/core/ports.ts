/**
 * The ports between the move engine and the state it keeps. Each has a local implementation
 * (SQLite, one state file) and an AWS one (DynamoDB, SQS); the engine sees only these types.
 */

/** One unit of work: move one study of one source. */
export interface WorkItem {
  readonly sourceId: string;
  /** Orthanc's ID of the study at that source. */
  readonly studyId: string;
  /** What made the feed queue it: a StableStudy change, or the study being quiet long enough. */
  readonly reason: 'stable' | 'quiet';
}

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
  watched(sourceId: string): Promise<WatchedStudy[]>;
  updateWatched(sourceId: string, study: WatchedStudy): Promise<void>;
  unwatch(sourceId: string, studyIds: readonly string[]): Promise<void>;
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
  /** Failed for now: visible again after `delayMs`, or dead-lettered once it has used up its receives. */
  release(handle: string, error: string, delayMs: number): Promise<void>;
  /** Failed for good: dead-letter it now. */
  deadLetter(handle: string, error: string): Promise<void>;
  deadLetters(): Promise<DeadLetter[]>;
  /** Puts every dead letter back on the queue with a fresh receive count; returns how many. */
  redrive(): Promise<number>;
  stats(): Promise<QueueStats>;
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

export type MoveResult = 'moved' | 'partial' | 'gone' | 'copied';

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
  readonly bytes: number;
  readonly durationMs: number;
  readonly finishedAt: number;
}

export interface Totals {
  readonly studies: number;
  readonly instances: number;
  readonly bytes: number;
  readonly deleted: number;
  readonly rejected: number;
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
  totals(): Promise<Totals>;
}
