/**
 * Every failure the engine meets is either worth retrying (the network, a restarting server,
 * a 5xx) or not (a refused file, bad credentials, a malformed message). The classification
 * decides between backoff and dead-lettering, so it is made once, where the failure is seen.
 */
export type FailureKind = 'transient' | 'permanent';

export interface ErrorOptions {
  readonly cause?: unknown;
  readonly status?: number;
  /**
   * The failed attempt does not use up an attempt: it moved part of the study (`withProgress`),
   * or it never started (its source's moves were all taken).
   */
  readonly uncounted?: boolean;
}

export class ForwarderError extends Error {
  readonly kind: FailureKind;
  /** HTTP status, when the failure is an answer from a server. */
  readonly status: number | undefined;
  readonly uncounted: boolean;

  constructor(kind: FailureKind, message: string, options?: ErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = kind === 'transient' ? 'TransientError' : 'PermanentError';
    this.kind = kind;
    this.status = options?.status;
    this.uncounted = options?.uncounted === true;
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
  if (failureKind(error) === 'permanent') return error;
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
