/**
 * One scenario set, run against a destination of every kind: a real Orthanc, and stand-ins of
 * AWS HealthImaging, Google Cloud Healthcare and Azure DICOM built from their public documents
 * (test/support/dicomweb-standin.ts; docs/destinations.md). The source is a real Orthanc, the
 * forwarder the local runner. Whatever the archive answers, nothing leaves the source before the
 * destination is seen to hold that same instance.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { KIND_PROFILES } from '../lambdas/core/destination-kind.ts';
import { buildDestinations } from '../lambdas/core/destinations.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import {
  type GeneratedInstance,
  generateStudies,
  SOP_CLASS_UID_TAG,
  withChanges,
  withoutElements,
} from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  type ArchiveOptions,
  type ArchiveUnderTest,
  CONFORMANCE_KINDS,
  startArchive,
} from './support/cloud-archives.ts';
import {
  configFor,
  heldUids,
  instanceCount,
  runUntilIdle,
  shape,
  uidsOf,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';

const log = createLog({ level: process.env.CONFORMANCE_LOG === undefined ? 'SILENT' : 'WARN' });

const corrected = (instance: GeneratedInstance) =>
  withChanges(instance, { patient: { patientName: 'CORRECTED^NAME^AFTER^REVIEW' } });

describe.each(CONFORMANCE_KINDS)('a %s destination', (kind) => {
  const { fleet, workPath, withState, closeAfterTest } = useTestbed(`conformance-${kind}`);
  const profile = KIND_PROFILES[kind];
  let archiveOfTest: ArchiveUnderTest | undefined;
  afterEach(() => {
    expect(archiveOfTest?.errors() ?? []).toEqual([]);
    archiveOfTest = undefined;
  });

  const start = async (options: Partial<ArchiveOptions> & { readonly expiring?: boolean } = {}) => {
    const [source, archive] = await Promise.all([
      fleet.start({ name: 'site-a', stableAge: 1 }),
      startArchive(kind, { fleet, workPath, ...options }),
    ]);
    closeAfterTest(archive);
    archiveOfTest = archive;
    return { source, archive };
  };

  const configOf = (
    source: OrthancServer,
    destination: Record<string, unknown>,
    extra: Readonly<Record<string, unknown>> = {},
  ): ForwarderConfig =>
    parseConfig({ ...configFor([{ id: 'site-a', server: source }], source, extra), destination });

  const move = (config: ForwarderConfig) =>
    withState(config, async (state) => ({
      ...(await runUntilIdle(config, state, log)),
      rejected: (await state.ledger.rejected()).map((r) => r.sopInstanceUid),
      conflicts: (await state.ledger.conflicts()).map((c) => [c.sopInstanceUid, ...c.attributes]),
    }));

  it('moves a study, asking each QIDO-RS page within the archive’s limit', async () => {
    const { source, archive } = await start();
    const set = generateStudies(shape(`conformance-move-${kind}`, { patients: 1 }));
    await upload(source, set.instances);

    const { outcomes, summary } = await move(configOf(source, archive.destination));

    expect(outcomes.map((o) => [o.result, o.deleted])).toEqual([['moved', set.instances.length]]);
    expect(summary.deadLettered).toBe(0);
    expect(await instanceCount(source)).toBe(0);
    expect(await archive.listedUids()).toEqual(uidsOf(set.instances));
    // The configuration's 1,000, or the archive's own maximum (Azure's 200): never a refused limit.
    expect(new Set(archive.limitsAsked())).toEqual(new Set([Math.min(1000, profile.maxPageSize)]));
  });

  it('keeps at the source, recorded, the instance the archive refuses, and moves the rest', async () => {
    const { source, archive } = await start();
    const set = generateStudies(shape(`conformance-refusal-${kind}`, { patients: 1 }));
    const refused = withoutElements(set.instances[2] as GeneratedInstance, [SOP_CLASS_UID_TAG]);
    await upload(
      source,
      set.instances.map((instance, index) => (index === 2 ? refused : instance)),
    );

    const { outcomes, rejected } = await move(configOf(source, archive.destination));

    expect(outcomes.map((o) => [o.result, o.rejected, o.deleted])).toEqual([
      ['partial', 1, set.instances.length - 1],
    ]);
    expect(rejected).toEqual([refused.sopInstanceUid]);
    expect(await heldUids(source)).toEqual([refused.sopInstanceUid]);
    expect(await archive.listedUids()).toEqual(uidsOf(set.instances.filter((i) => i !== set.instances[2])));
  });

  it('takes an identical re-send as held: nothing is sent again, and its STOW answer is read as this archive words it', async () => {
    const { source, archive } = await start();
    const set = generateStudies(shape(`conformance-identical-${kind}`, { patients: 1 }));
    await upload(source, set.instances);
    const config = configOf(source, archive.destination);
    await move(config);

    await upload(source, set.instances);
    const { outcomes } = await move(config);

    expect(outcomes.map((o) => [o.result, o.sent, o.alreadyPresent, o.deleted])).toEqual([
      ['moved', 0, set.instances.length, set.instances.length],
    ]);
    expect(await instanceCount(source)).toBe(0);
    // Sent again all the same (a listing that missed it), the archive answers in its own words.
    const [destination] = buildDestinations(config, { env: process.env });
    const [instance] = set.instances;
    if (destination === undefined || instance === undefined) throw new Error('a destination and an instance');
    const part = {
      sopInstanceUid: instance.sopInstanceUid,
      size: instance.byteLength,
      open: async () => instance.stream(),
    };
    const answer = await destination.primary.stow.store([part]);
    await (await destination.primary.stow.endpoint.dispatcher()).close();
    expect({ stored: [...answer.stored], existing: [...answer.existing] }).toEqual(
      kind === 'azure'
        ? { stored: [], existing: [instance.sopInstanceUid] }
        : { stored: [instance.sopInstanceUid], existing: [] },
    );
    expect(await archive.listedUids()).toEqual(uidsOf(set.instances));
  });

  it('holds a changed re-send at the source as a conflict naming PatientName, whatever the archive answered', async () => {
    const { source, archive } = await start();
    const set = generateStudies(shape(`conformance-changed-${kind}`, { patients: 1 }));
    const original = set.instances[0] as GeneratedInstance;
    await upload(source, set.instances);
    const config = configOf(source, archive.destination);
    await move(config);

    await upload(source, [corrected(original)]);
    const { outcomes, conflicts } = await move(config);

    expect(outcomes.map((o) => [o.result, o.conflicts, o.deleted])).toEqual([['partial', 1, 0]]);
    expect(conflicts).toEqual([[original.sopInstanceUid, 'PatientName']]);
    expect(await heldUids(source)).toEqual([original.sopInstanceUid]);
    expect(await archive.listedUids()).toEqual(uidsOf(set.instances));
  });

  it('lists a study past the page limit: pages the archive may cut below the limit asked, a short last page, the end', async () => {
    // Google cuts a page below the 5 asked, silently.
    const { source, archive } = await start({ maxResults: 3 });
    const set = generateStudies(
      shape(`conformance-paging-${kind}`, { patients: 1, seriesPerStudy: 1, instancesPerSeries: 7 }),
    );
    await upload(source, set.instances);

    const { outcomes } = await move(configOf(source, archive.destination, { qidoPageSize: 5 }));

    expect(outcomes.map((o) => [o.result, o.deleted])).toEqual([['moved', 7]]);
    expect(await instanceCount(source)).toBe(0);
    expect(await archive.listedUids()).toEqual(uidsOf(set.instances));
    expect(Math.max(...archive.limitsAsked())).toBe(5);
  });

  it('renews credentials that expire while it runs: refused once, then moved, nothing dead-lettered', async () => {
    const { source, archive } = await start({ expiring: true });
    const first = generateStudies(shape(`conformance-expiry-a-${kind}`, { patients: 1 }));
    const second = generateStudies(shape(`conformance-expiry-b-${kind}`, { patients: 1 }));
    const config = configOf(source, archive.destination);
    const moved = (instances: readonly GeneratedInstance[]) => async () =>
      (await instanceCount(source)) === 0 && (await archive.listedUids()).length === instances.length;
    // One run, as a service runs: the credentials it holds are the ones that expire.
    await withState(config, async (state) => {
      const stop = new AbortController();
      const outcomes: StudyOutcome[] = [];
      const running = new LocalRunner(config, state, log).run({
        untilIdle: false,
        signal: stop.signal,
        onOutcome: (outcome) => outcomes.push(outcome),
      });
      try {
        await upload(source, first.instances);
        await until(moved(first.instances));
        expect(archive.refusals()).toBe(0);

        await archive.expire();
        await upload(source, second.instances);
        await until(moved([...first.instances, ...second.instances]));
      } finally {
        stop.abort();
        await running;
      }
      expect(archive.refusals()).toBeGreaterThan(0);
      expect(outcomes.map((o) => o.result)).toEqual(['moved', 'moved']);
      expect((await state.queue.stats()).deadLetters).toBe(0);
    });
    expect(await archive.listedUids()).toEqual(uidsOf([...first.instances, ...second.instances]));
  });
});
