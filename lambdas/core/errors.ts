/**
 * Every failure the engine meets is either worth retrying (the network, a restarting server,
 * a 5xx) or not (a refused file, bad credentials, a malformed message). The classification
 * decides between backoff and dead-lettering, so it is made once, where the failure is seen.
 */
export type FailureKind = 'transient' | 'permanent';

/**
 * A fault of a server as a whole, not of one request: it refuses our credentials (401 or 403,
 * after a rotated secret was read again), its certificate fails verification (`tls`), or its
 * DICOMweb root is not there (STOW-RS answered 404: `root`). Every request to it fails alike
 * until an operator fixes a setting, so at a destination it pauses the work instead of failing
 * each study (destination-faults.ts).
 */
export interface ServerFault {
  readonly kind: 'credentials' | 'tls' | 'root';
  /** The server's origin (its endpoint's label): a move tells its destinations' faults from its source's. */
  readonly server: string;
}

export interface ErrorOptions {
  readonly cause?: unknown;
  readonly status?: number;
  /**
   * The failed attempt does not use up an attempt: it moved part of the study (`withProgress`),
   * or it never started (its source's moves were all taken).
   */
  readonly uncounted?: boolean;
  readonly serverFault?: ServerFault;
}

export class ForwarderError extends Error {
  readonly kind: FailureKind;
  /** HTTP status, when the failure is an answer from a server. */
  readonly status: number | undefined;
  readonly uncounted: boolean;
  readonly serverFault: ServerFault | undefined;

  constructor(kind: FailureKind, message: string, options?: ErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = kind === 'transient' ? 'TransientError' : 'PermanentError';
    this.kind = kind;
    this.status = options?.status;
    this.uncounted = options?.uncounted === true;
    this.serverFault = options?.serverFault;
  }
}

export const serverFaultOf = (error: unknown): ServerFault | undefined =>
  error instanceof ForwarderError ? error.serverFault : undefined;

/**
 * Not a failure of the study: it waits for something an operator controls, without using up an
 * attempt, and is looked at again after the backoff of `waits` failures in a row (capped by
 * retry.maxDelayMs), or after `delayMs` when the wait knows its own end. Reported once where it
 * is found, not per study.
 */
export class WaitError extends ForwarderError {
  readonly waits: number;
  readonly delayMs: number | undefined;

  constructor(
    message: string,
    waits: number,
    options?: Pick<ErrorOptions, 'cause'> & { readonly delayMs?: number },
  ) {
    super('transient', message, { ...options, uncounted: true });
    this.waits = waits;
    this.delayMs = options?.delayMs;
  }
}

/**
 * The study may not move yet (move-timing.ts): its source's transfer window is closed, or it is
 * younger than the minimum age. It waits until `at` (epoch ms), which is no failure at all.
 */
export class NotYetError extends WaitError {
  readonly sourceId: string;
  readonly studyId: string;
  readonly waitsFor: 'window' | 'minimumAge';
  readonly at: number;

  constructor(
    item: { readonly sourceId: string; readonly studyId: string },
    waitsFor: 'window' | 'minimumAge',
    at: number,
    now: number,
  ) {
    super(
      waitsFor === 'window'
        ? `source '${item.sourceId}' is outside its transfer window: the study waits until it opens, at ${new Date(at).toISOString()}`
        : `the study is younger than the minimumAge of source '${item.sourceId}': it waits until ${new Date(at).toISOString()}`,
      1,
      // Whole milliseconds: a queue's delay is.
      { delayMs: Math.ceil(at - now) },
    );
    this.sourceId = item.sourceId;
    this.studyId = item.studyId;
    this.waitsFor = waitsFor;
    this.at = at;
  }
}

/**
 * The study's source is paused (`orthanc-forwarder pause`): its work items wait, as long as
 * retry.maxDelayMs allows between looks, until it is resumed.
 */
export class SourcePausedError extends WaitError {
  constructor(sourceId: string) {
    super(`source '${sourceId}' is paused: the study waits until it is resumed`, Number.POSITIVE_INFINITY);
  }
}

/**
 * A destination refuses us as a whole (a ServerFault): every study routed to it waits, its
 * backoff growing with the faults seen in a row, until the setting named by `field` is fixed.
 */
export class DestinationUnavailableError extends WaitError {
  readonly destinationId: string;
  readonly field: string;

  constructor(
    destination: { readonly id: string; readonly field: string },
    waits: number,
    cause: ForwarderError,
  ) {
    super(
      `destination '${destination.id}' is unavailable (${cause.serverFault?.kind}: check ${destination.field}): ${cause.message}`,
      waits,
      { cause },
    );
    this.destinationId = destination.id;
    this.field = destination.field;
  }
}

export const transient = (message: string, options?: ErrorOptions) =>
  new ForwarderError('transient', message, options);

export const permanent = (message: string, options?: ErrorOptions) =>
  new ForwarderError('permanent', message, options);

/**
 * Transient: instances were sent, but the destination does not list them when verified. The
 * retry resumes with them; the forwarder counts these as `VerificationFailures`.
 */
export class NotVerifiedError extends ForwarderError {
  constructor(message: string, options?: Pick<ErrorOptions, 'uncounted'>) {
    super('transient', message, options);
  }
}

/**
 * The same transient failure, marked as one of an attempt that moved part of the study (it
 * verified or deleted instances): its retry does not use up an attempt, so a study too large for
 * one attempt (a Lambda's deadline) is never dead-lettered while it makes headway. Each such
 * attempt moves something, so this cannot go on for ever.
 */
export const withProgress = (error: unknown): unknown => {
  if (failureKind(error) === 'permanent' || error instanceof WaitError) return error;
  if (error instanceof NotVerifiedError) return new NotVerifiedError(error.message, { uncounted: true });
  const status = error instanceof ForwarderError ? error.status : undefined;
  return transient(describe(error), {
    cause: error instanceof ForwarderError ? error.cause : error,
    ...(status === undefined ? {} : { status }),
    uncounted: true,
  });
};

export const isUncounted = (error: unknown): boolean => error instanceof ForwarderError && error.uncounted;

/** Anything not classified where it was thrown is a bug or an unknown condition: retry it. */
export const failureKind = (error: unknown): FailureKind =>
  error instanceof ForwarderError ? error.kind : 'transient';

export const describe = (error: unknown): string => (error instanceof Error ? error.message : String(error));
