/**
 * Which destinations take a study: each destination's filter against the study's description,
 * modalities and sending AETs, read from the source only when a filter asks for them. The values
 * are DICOM data: they decide the routing and are never logged.
 */
import { createHash } from 'node:crypto';
import type { ForwarderConfig, StudyFilter } from './config.ts';
import type { Destination } from './destinations.ts';
import { transient } from './errors.ts';
import type { OrthancClient, SourceInstance, StudyInfo } from './orthanc-client.ts';

/** What the filters look at, each read at most once and only if a filter needs it. */
export interface StudyFacts {
  description(): string | undefined;
  modalities(): Promise<readonly string[]>;
  remoteAets(): Promise<readonly string[]>;
}

const once = <T>(load: () => Promise<T>): (() => Promise<T>) => {
  let value: Promise<T> | undefined;
  return () => {
    value ??= load();
    return value;
  };
};

const changedMeanwhile = () =>
  transient('the study changed at the source while it was routed: the retry routes it again');

/**
 * The facts of a study, a series item's too, since filters choose studies: a report series goes
 * where its study's images go. Modalities from its series (one request), the sending AET of the
 * first instance of each series (one request per series, and one for the study's instances when
 * the snapshot is a series').
 */
export const studyFacts = (
  source: OrthancClient,
  study: StudyInfo,
  snapshot: readonly SourceInstance[] | undefined,
): StudyFacts => ({
  description: () => study.description,
  modalities: once(async () => {
    const series = await source.studySeries(study.id);
    if (series === undefined) throw changedMeanwhile();
    return series.flatMap((s) => (s.modality === undefined ? [] : [s.modality]));
  }),
  remoteAets: once(async () => {
    const instances = snapshot ?? (await source.studyInstances(study.id));
    if (instances === undefined) throw changedMeanwhile();
    const firstOfSeries = new Map<string, string>();
    for (const instance of instances)
      if (!firstOfSeries.has(instance.seriesId)) firstOfSeries.set(instance.seriesId, instance.id);
    const aets = await Promise.all([...firstOfSeries.values()].map((id) => source.remoteAet(id)));
    // An instance gone would read as "no AET" and could route the study wrongly, or delete it.
    if (aets.some((aet) => aet === undefined)) throw changedMeanwhile();
    return aets as string[];
  }),
});

const descriptionMatches = (pattern: NonNullable<StudyFilter['studyDescription']>, text: string) =>
  typeof pattern === 'string'
    ? text.toLowerCase().includes(pattern.toLowerCase())
    : new RegExp(pattern.regex, 'i').test(text);

/** Every criterion the filter gives must match; within one, any value does. */
export const filterAccepts = async (filter: StudyFilter | undefined, facts: StudyFacts): Promise<boolean> => {
  if (filter === undefined) return true;
  if (filter.studyDescription !== undefined) {
    const description = facts.description();
    if (description === undefined || !descriptionMatches(filter.studyDescription, description)) return false;
  }
  if (filter.modalities !== undefined) {
    const wanted = new Set(filter.modalities.map((m) => m.trim().toUpperCase()));
    if (!(await facts.modalities()).some((m) => wanted.has(m.trim().toUpperCase()))) return false;
  }
  if (filter.remoteAets !== undefined) {
    const wanted = new Set(filter.remoteAets.map((aet) => aet.trim()));
    if (!(await facts.remoteAets()).some((aet) => wanted.has(aet.trim()))) return false;
  }
  return true;
};

/** The destinations whose filter accepts the study, in configuration order (`plan` passes their configuration). */
export const routeStudy = async <D extends Pick<Destination, 'filter'>>(
  destinations: readonly D[],
  facts: StudyFacts,
): Promise<D[]> => {
  const accepted: D[] = [];
  for (const destination of destinations) {
    if (await filterAccepts(destination.filter, facts)) accepted.push(destination);
  }
  return accepted;
};

/**
 * A digest of what decides where studies go and whether they leave the source: a study settled
 * under another configuration (another filter, a new destination, copy mode turned off) is
 * looked at again.
 */
export const routingDigest = (
  config: Pick<ForwarderConfig, 'destinations' | 'unrouted' | 'deleteAfterForward'>,
): string =>
  createHash('sha256')
    .update(
      JSON.stringify({
        deleteAfterForward: config.deleteAfterForward,
        unrouted: config.unrouted,
        destinations: config.destinations.map((d) => [d.id, d.filter ?? null]),
      }),
    )
    .digest('hex')
    .slice(0, 16);
