/**
 * The verification ladder: what one destination holds of each source instance. `stow` trusts the
 * STOW-RS answer; `qido` sees the SOPInstanceUID listed; `identity` sees it listed with the same
 * identifying attributes as the source's file; `checksum` also sees the same bytes. A listed UID
 * with another identity, or other bytes, is a conflict: never proof.
 */

import { runBounded } from './concurrency.ts';
import type { VerifyLevel } from './config.ts';
import type { DestinationServer } from './destinations.ts';
import { type Identity, identityDifferences, unknownAttributes } from './identity.ts';
import type { OrthancClient, SourceInstance } from './orthanc-client.ts';
import type { ListedCopy } from './qido-client.ts';

export type Verdict =
  | { readonly kind: 'held' }
  | { readonly kind: 'absent' }
  /** The names of the attributes that differ, or `content` for other bytes; never their values. */
  | { readonly kind: 'conflict'; readonly attributes: readonly string[] };

const HELD: Verdict = { kind: 'held' };
const ABSENT: Verdict = { kind: 'absent' };
const OTHER_CONTENT: Verdict = { kind: 'conflict', attributes: ['content'] };

/** How one instance is judged: its destination's level, raised where a weaker one cannot tell. */
export type Check = 'stow' | 'presence' | 'identity' | 'checksum';

export interface CheckContext {
  /** SOPInstanceUIDs more than one instance of the snapshot has: only identity tells them apart. */
  readonly duplicated: ReadonlySet<string>;
  /**
   * Instances the destination answered "already exists" for, or stored with a warning (it changed
   * them): its answer proves nothing, and their bytes may differ on purpose.
   */
  readonly unproven: ReadonlySet<string>;
}

export const checkFor = (level: VerifyLevel, instance: SourceInstance, context: CheckContext): Check => {
  const unproven = context.unproven.has(instance.id);
  if (level === 'checksum') return unproven ? 'identity' : 'checksum';
  if (level === 'identity' || unproven || context.duplicated.has(instance.sopInstanceUid)) return 'identity';
  return level === 'qido' ? 'presence' : 'stow';
};

/** UIDs that occur more than once among the instances. */
export const duplicatedUids = (instances: readonly SourceInstance[]): Set<string> => {
  const seen = new Set<string>();
  const duplicated = new Set<string>();
  for (const { sopInstanceUid } of instances) {
    if (seen.has(sopInstanceUid)) duplicated.add(sopInstanceUid);
    seen.add(sopInstanceUid);
  }
  return duplicated;
};

export const copiesByUid = (copies: readonly ListedCopy[]): Map<string, ListedCopy[]> => {
  const byUid = new Map<string, ListedCopy[]>();
  for (const copy of copies)
    byUid.set(copy.sopInstanceUid, [...(byUid.get(copy.sopInstanceUid) ?? []), copy]);
  return byUid;
};

/**
 * Held when one of the copies has the source's identity; otherwise a conflict, named by the
 * copy that differs least. No identity at the source (deleted meanwhile): nothing to prove.
 */
export const judgeIdentity = (
  identity: Identity | undefined,
  copies: readonly ListedCopy[] = [],
): Verdict => {
  if (copies.length === 0 || identity === undefined) return ABSENT;
  let closest: readonly string[] | undefined;
  for (const copy of copies) {
    const differences = identityDifferences(identity, copy.identity);
    if (differences.length === 0) return HELD;
    if (closest === undefined || differences.length < closest.length) closest = differences;
  }
  return { kind: 'conflict', attributes: closest ?? [] };
};

/** The identity of each instance as its source's file says, read per series on first need. */
export const sourceIdentities = (
  source: OrthancClient,
  signal?: AbortSignal,
): ((instance: SourceInstance) => Promise<Identity | undefined>) => {
  const bySeries = new Map<string, Promise<Map<string, Identity>>>();
  return async (instance) => {
    let series = bySeries.get(instance.seriesId);
    if (series === undefined) {
      series = source.seriesIdentities(instance.seriesId, signal).then((found) => found ?? new Map());
      bySeries.set(instance.seriesId, series);
    }
    return (await series).get(instance.id);
  };
};

/**
 * Fills in what an archive left out of its QIDO answers from its WADO-RS metadata, one request
 * per series that needs it; copies it still cannot complete stay as they are (and cannot match).
 */
export const completeCopies = async (
  server: DestinationServer,
  studyInstanceUid: string,
  copies: readonly ListedCopy[],
  seriesOf: ReadonlyMap<string, string>,
  signal?: AbortSignal,
): Promise<ListedCopy[]> => {
  const incomplete = copies.filter((copy) => unknownAttributes(copy.identity).length > 0);
  if (incomplete.length === 0) return [...copies];
  const series = new Set(
    incomplete.flatMap((copy) => {
      const uid = copy.identity.SeriesInstanceUID ?? seriesOf.get(copy.sopInstanceUid);
      return uid === undefined ? [] : [uid];
    }),
  );
  const fromMetadata = copiesByUid(
    (
      await Promise.all([...series].map((uid) => server.wado.seriesMetadata(studyInstanceUid, uid, signal)))
    ).flat(),
  );
  const completed = new Set(incomplete.filter((copy) => fromMetadata.has(copy.sopInstanceUid)));
  return [
    ...copies.filter((copy) => !completed.has(copy)),
    ...[...new Set([...completed].map((copy) => copy.sopInstanceUid))].flatMap(
      (uid) => fromMetadata.get(uid) ?? [],
    ),
  ];
};

/**
 * Whether the destination holds the source's bytes under the instance's UID, in any of its
 * copies: Orthanc's MD5s through its REST API where we have it, else each copy retrieved with
 * WADO-RS and hashed as it streams.
 */
const sameBytes = async (
  source: OrthancClient,
  server: DestinationServer,
  instance: SourceInstance,
  uids: { readonly study: string; readonly series: string },
  signal?: AbortSignal,
): Promise<boolean> => {
  const here = await source.instanceMd5(instance.id, signal);
  if (here === undefined) return false;
  const { orthanc } = server;
  const there =
    orthanc === undefined
      ? await server.wado.instanceDigests({ ...uids, sop: instance.sopInstanceUid }, signal)
      : await Promise.all(
          (await orthanc.findInstances(instance.sopInstanceUid, signal)).map((id) =>
            orthanc.instanceMd5(id, signal),
          ),
        );
  return there.includes(here);
};

export interface JudgeInput {
  readonly source: OrthancClient;
  readonly server: DestinationServer;
  readonly studyInstanceUid: string;
  /** What the destination lists, by SOPInstanceUID. */
  readonly listed: ReadonlyMap<string, readonly ListedCopy[]>;
  /** Instances the STOW answers of this move listed as stored (the `stow` level's proof). */
  readonly stored: ReadonlySet<string>;
  /** Whether `checksum` compares bytes now (after sending) or only identities (before). */
  readonly compareBytes: boolean;
  readonly identityOf: (instance: SourceInstance) => Promise<Identity | undefined>;
  readonly signal?: AbortSignal | undefined;
}

/** Bytes are compared for a few instances at once: each is a request at both ends. */
const CHECKSUM_PARALLEL = 8;
/** The source's tags are read for a few series at once, before any instance waits for them. */
const SERIES_PARALLEL = 4;

/** Reads the source's identities of these instances, a few series at once, one request a series. */
export const readSeriesIdentities = async (
  identityOf: JudgeInput['identityOf'],
  instances: Iterable<SourceInstance>,
): Promise<void> => {
  const firstOfSeries = new Map<string, SourceInstance>();
  for (const instance of instances) {
    if (!firstOfSeries.has(instance.seriesId)) firstOfSeries.set(instance.seriesId, instance);
  }
  await runBounded([...firstOfSeries.values()], SERIES_PARALLEL, async (instance) => {
    await identityOf(instance);
  });
};

/** Before judging: the identities of the instances the destination lists (the others are absent). */
const readIdentities = (input: JudgeInput, checks: ReadonlyMap<SourceInstance, Check>) =>
  readSeriesIdentities(
    input.identityOf,
    [...checks]
      .filter(
        ([instance, check]) =>
          (check === 'identity' || check === 'checksum') && input.listed.has(instance.sopInstanceUid),
      )
      .map(([instance]) => instance),
  );

/** The verdict on each instance, by its Orthanc ID at the source. */
export const judge = async (
  input: JudgeInput,
  checks: ReadonlyMap<SourceInstance, Check>,
): Promise<Map<string, Verdict>> => {
  const verdicts = new Map<string, Verdict>();
  await readIdentities(input, checks);
  await runBounded([...checks], CHECKSUM_PARALLEL, async ([instance, check]) => {
    const copies = input.listed.get(instance.sopInstanceUid) ?? [];
    if (check === 'stow' || check === 'presence') {
      const listed = copies.length > 0 || (check === 'stow' && input.stored.has(instance.id));
      verdicts.set(instance.id, listed ? HELD : ABSENT);
      return;
    }
    if (copies.length === 0) {
      verdicts.set(instance.id, ABSENT);
      return;
    }
    const identity = await input.identityOf(instance);
    const verdict = judgeIdentity(identity, copies);
    if (check === 'identity' || verdict.kind !== 'held' || !input.compareBytes || identity === undefined) {
      verdicts.set(instance.id, verdict);
      return;
    }
    const uids = { study: input.studyInstanceUid, series: identity.SeriesInstanceUID ?? '' };
    const same = await sameBytes(input.source, input.server, instance, uids, input.signal);
    verdicts.set(instance.id, same ? HELD : OTHER_CONTENT);
  });
  return verdicts;
};
