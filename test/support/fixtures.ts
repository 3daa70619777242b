/**
 * The configuration and data-set shapes the local-mode tests, the fault-injection suite and the
 * chaos runner share (no vitest here, so that scripts can use it).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { StudyShape } from '../../testbed/dicom-generator.ts';
import { forwarderConfigFor, type SourceEntry } from '../../testbed/forwarder-config.ts';
import type { OrthancServer } from '../../testbed/orthanc.ts';

/** A configuration that polls fast and retries soon, so that tests converge quickly. */
export const configFor = (
  sources: readonly SourceEntry[],
  destination: OrthancServer,
  extra: Readonly<Record<string, unknown>> = {},
): Record<string, unknown> =>
  forwarderConfigFor(sources, destination, {
    pollIntervalSeconds: 0.3,
    quietSeconds: 2,
    retry: { baseDelayMs: 200, maxDelayMs: 1_000 },
    ...extra,
  });

/** A small study set: 2 patients × 1 study × 2 series × 3 instances of 16 KB, unless overridden. */
export const shape = (seed: string, overrides: Partial<StudyShape> = {}): StudyShape => ({
  patients: 2,
  studiesPerPatient: 1,
  seriesPerStudy: 2,
  instancesPerSeries: 3,
  pixelBytes: 16 * 1024,
  seed,
  ...overrides,
});

/** Waits for a condition of the servers (no deadline: the test's timeout is the bound). */
export const until = async (condition: () => Promise<boolean>): Promise<void> => {
  while (!(await condition())) await sleep(100);
};

/** Everything an async iterable yields, in order (Array.fromAsync, which the type library lacks). */
export const collect = async <T>(items: AsyncIterable<T>): Promise<T[]> => {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
};
