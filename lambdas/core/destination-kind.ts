/**
 * What kind of archive a destination is, and what follows from it: the limits its STOW-RS and
 * QIDO-RS keep, how a listing ends, what "already exists" looks like in a STOW answer, and how
 * weak a verification may be there. Each profile comes from the archive's public documentation
 * (docs/destinations.md names the documents). `generic` assumes nothing beyond DICOMweb.
 */
import { z } from 'zod';

export const DESTINATION_KINDS = ['orthanc', 'healthimaging', 'google', 'azure', 'generic'] as const;
export type DestinationKind = (typeof DESTINATION_KINDS)[number];

export const destinationKindSchema = z.enum(DESTINATION_KINDS).default('orthanc');

export interface KindProfile {
  /** Bytes one STOW-RS request may carry there: batches are cut below it. None known: the configuration's. */
  readonly maxStowBytes: number | undefined;
  /** The largest QIDO-RS `limit` it takes: the page asked for is the configuration's, at most this. */
  readonly maxPageSize: number;
  /** Results a listing can reach by paging at all: pages past it are not asked for. */
  readonly maxListed: number | undefined;
  /**
   * A page shorter than the `limit` asked is the last one. Only where the archive honours any
   * `limit` up to `maxPageSize` exactly; elsewhere (an archive that cuts a page silently) reading
   * goes on to an empty page, 204, or a page that lists nothing new.
   */
  readonly shortPageEnds: boolean;
  /** FailureReasons of a STOW answer that say it already holds an instance under the UID. */
  readonly existingReasons: ReadonlySet<number>;
  /** FailureReasons a later attempt may overcome (out of resources, processing failure, busy). */
  readonly transientReasons: ReadonlySet<number>;
  /**
   * Only identity tells a conflict there: the archive answers a conflicting re-send as stored and
   * files it where QIDO-RS does not look, so `stow` and `qido` would verify the other instance.
   */
  readonly identityRequired: boolean;
}

/** PS3.4 Annex GG: out of resources (0xA700-0xA702), processing failure (0x0110). */
const OUT_OF_RESOURCES = [0xa700, 0xa701, 0xa702];
const PROCESSING_FAILURE = 0x0110;
/** PS3.7: duplicate SOP instance. */
const DUPLICATE_SOP_INSTANCE = 0x0111;
/** Azure DICOM: 45070 the instance exists; 45071 another request is creating it (or a failed one is not cleaned up yet). */
const AZURE_EXISTS = 45070;
const AZURE_BEING_CREATED = 45071;

const GENERIC: KindProfile = {
  maxStowBytes: undefined,
  maxPageSize: 10_000,
  maxListed: undefined,
  shortPageEnds: false,
  existingReasons: new Set([AZURE_EXISTS, DUPLICATE_SOP_INSTANCE]),
  transientReasons: new Set([...OUT_OF_RESOURCES, PROCESSING_FAILURE]),
  identityRequired: false,
};

export const KIND_PROFILES: Readonly<Record<DestinationKind, KindProfile>> = {
  // Orthanc answers a re-sent instance as stored. Its LimitFindInstances (0, none, by default)
  // caps a whole listing, not a page: measured, Orthanc 1.10.1 with 3 lists 4 instances at most,
  // whatever the offset, so a study larger than that can never be verified there.
  orthanc: GENERIC,
  generic: GENERIC,
  // STOW-RS up to 1 GB a request; QIDO-RS lists primary image sets only, 10,000 results at most.
  healthimaging: {
    ...GENERIC,
    maxStowBytes: 1_000_000_000,
    maxPageSize: 1000,
    maxListed: 10_000,
    identityRequired: true,
  },
  // A changed re-send is refused 409 with Processing failure (0x0110): it exists, with other content.
  google: {
    ...GENERIC,
    maxPageSize: 1000,
    existingReasons: new Set([PROCESSING_FAILURE, DUPLICATE_SOP_INSTANCE]),
    transientReasons: new Set(OUT_OF_RESOURCES),
  },
  // QIDO-RS `limit` 1-200 (more is a 400), 204 past the end; 45070 for an instance it holds.
  azure: {
    ...GENERIC,
    maxPageSize: 200,
    shortPageEnds: true,
    transientReasons: new Set([...OUT_OF_RESOURCES, PROCESSING_FAILURE, AZURE_BEING_CREATED]),
  },
};

/** The verification levels `identityRequired` refuses. */
export const BELOW_IDENTITY: ReadonlySet<string> = new Set(['stow', 'qido']);

interface KindedServer {
  readonly kind: DestinationKind;
  readonly auth?: { readonly kind: string } | undefined;
}

/** HealthImaging takes SigV4-signed requests only. */
export const kindAuth = (server: KindedServer): boolean =>
  server.kind !== 'healthimaging' || server.auth?.kind === 'aws-sigv4';
export const kindAuthMessage = {
  message:
    'kind \'healthimaging\' needs auth { "kind": "aws-sigv4" }: HealthImaging takes SigV4-signed requests only',
  path: ['auth'],
};

interface VerifiedDestination extends KindedServer {
  readonly verify?: string | undefined;
  readonly alternate?: KindedServer | undefined;
}

/**
 * Refuses a verification level weaker than identity for a destination (or its alternate) of a
 * kind that requires it, naming the field that sets the level: the destination's `verify`, or
 * the top level's it inherits.
 */
export const identityWhereRequired = (
  config: {
    readonly verify: string;
    readonly destination?: VerifiedDestination | undefined;
    readonly destinations?: readonly VerifiedDestination[] | undefined;
  },
  ctx: z.RefinementCtx,
): void => {
  const listed: [VerifiedDestination, (string | number)[], string][] =
    config.destinations?.map((destination, index) => [
      destination,
      ['destinations', index],
      `destinations[${index}]`,
    ]) ?? (config.destination === undefined ? [] : [[config.destination, ['destination'], 'destination']]);
  for (const [destination, path, field] of listed) {
    const level = destination.verify ?? config.verify;
    const servers = [destination, destination.alternate].filter((server) => server !== undefined);
    const strict = servers.find((server) => KIND_PROFILES[server.kind].identityRequired);
    if (strict === undefined || !BELOW_IDENTITY.has(level)) continue;
    ctx.addIssue({
      code: 'custom',
      path: destination.verify === undefined ? ['verify'] : [...path, 'verify'],
      message: `'${level}' cannot verify at a ${strict.kind} destination (${field}): it answers a conflicting re-send as stored and QIDO-RS lists only the first copy; use identity or checksum`,
    });
  }
};
