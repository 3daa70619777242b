/**
 * Routing filters and the StableSeries and NewInstance triggers, against real Orthanc servers.
 * Studies reach the source the way they do in a hospital where it matters: those whose sending
 * AET is filtered on come from a "modality" (another Orthanc) over DICOM C-STORE, so that the
 * source records its AET as RemoteAET.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { type GeneratedSet, generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  captureLog,
  configFor,
  destinationEntry,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  pollOnce,
  shape,
  startServers,
  uidsOf,
  until,
  upload,
  useTestbed,
  withDestinations,
} from './support/harness.ts';

/** The Orthanc study IDs a server holds for a generated set. */
const studyIdsOf = async (server: OrthancServer, set: GeneratedSet): Promise<string[]> => {
  const uids = new Set(set.instances.map((i) => i.studyInstanceUid));
  const studies = await server.rest<{ ID: string; MainDicomTags: { StudyInstanceUID: string } }[]>(
    'GET',
    '/studies?expand',
  );
  return studies.filter((s) => uids.has(s.MainDicomTags.StudyInstanceUID)).map((s) => s.ID);
};

describe('filters and triggers', () => {
  const { fleet, workPath } = useTestbed('filters');

  it('routes by modality, description and sending AET, keeps and remembers what no destination takes, and deletes it once told to', async () => {
    const [cloud, research, source] = await startServers(fleet, ['cloud', 'research', 'site-a']);
    // A scanner whose AET is MRI3T (from its name), which C-STOREs its studies to the source.
    const scanner = await fleet.start({
      name: 'mri-3t',
      extraConfig: { DicomModalities: { source: ['SITEA', '127.0.0.1', source.dicomPort] } },
    });
    const ct = generateStudies(shape('route-ct'));
    const mrFromScanner = generateStudies(shape('route-mr-scanner', { patients: 1, modality: 'MR' }));
    const mrOverRest = generateStudies(shape('route-mr-rest', { patients: 1, modality: 'MR' }));
    const other = generateStudies(shape('route-other', { patients: 1, modality: 'OT' }));
    await upload(source, [...ct.instances, ...mrOverRest.instances, ...other.instances]);
    await upload(scanner, mrFromScanner.instances);
    const [scanned] = await scanner.rest<string[]>('GET', '/studies');
    await scanner.rest('POST', '/modalities/source/store', { Resources: [scanned], Synchronous: true });

    const raw = (unrouted: 'keep' | 'delete') =>
      withDestinations(configFor([{ id: 'site-a', server: source }], cloud, { unrouted }), [
        destinationEntry('cloud', cloud, { filter: { modalities: ['ct'] } }),
        destinationEntry('research', research, {
          filter: { studyDescription: { regex: '^mr (brain|knee|lumbar)' }, remoteAets: ['MRI3T'] },
        }),
      ]);
    const config = parseConfig(raw('keep'));
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const { log, entries } = captureLog();
    const outcomes: StudyOutcome[] = [];
    try {
      const run = await new LocalRunner(config, state, log).run({
        untilIdle: true,
        onOutcome: (o) => outcomes.push(o),
      });
      expect(run.deadLettered).toBe(0);
      expect(await heldUids(cloud)).toEqual(uidsOf(ct.instances));
      expect(await heldUids(research)).toEqual(uidsOf(mrFromScanner.instances));
      // The MR study that came over REST has no sending AET; the OT study matches no filter.
      const kept = [...mrOverRest.instances, ...other.instances];
      expect(await heldUids(source)).toEqual(uidsOf(kept));
      const skipped = [...(await studyIdsOf(source, mrOverRest)), ...(await studyIdsOf(source, other))];
      expect(
        outcomes
          .filter((o) => o.result === 'skipped')
          .map((o) => o.studyId)
          .sort(),
      ).toEqual([...skipped].sort());
      for (const studyId of skipped) {
        expect(await state.ledger.settled('site-a', studyId, '')).toMatchObject({
          result: 'skipped',
          instances: 6,
        });
      }

      // A sweep finds the skipped studies again and leaves them: nothing is queued.
      const swept = await pollOnce(config, state, log);
      expect(swept).toMatchObject({ queued: 0, waiting: 0 });

      // The values routed on were never logged.
      const logged = JSON.stringify(entries);
      for (const set of [ct, mrFromScanner, mrOverRest, other]) {
        for (const instance of set.instances) expect(logged).not.toContain(instance.study.studyDescription);
      }
      expect(logged).not.toContain('MRI3T');

      // Told to delete what no destination takes (another routing: looked at again), the source
      // deletes exactly those studies' instances; nothing more reaches a destination.
      const deleting = parseConfig(raw('delete'));
      expect(await pollOnce(deleting, state, log)).toMatchObject({ queued: 2 });
      outcomes.length = 0;
      await new LocalRunner(deleting, state, log).run({
        untilIdle: true,
        onOutcome: (o) => outcomes.push(o),
      });
      expect(outcomes.filter((o) => o.result === 'skipped').map((o) => o.deleted)).toEqual([6, 6]);
      expect(await instanceCount(source)).toBe(0);
      expect(await heldUids(cloud)).toEqual(uidsOf(ct.instances));
      expect(await heldUids(research)).toEqual(uidsOf(mrFromScanner.instances));
    } finally {
      state.close();
    }
  });

  it('StableSeries: moves each series on its own, under one lease per study', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('stable-series', { patients: 1, seriesPerStudy: 3 }));
    await upload(source, set.instances);
    const seriesIds = (await source.rest<string[]>('GET', '/series')).sort();
    // One worker: the series items run in the order their changes came, each alone.
    const config = parseConfig(
      configFor([{ id: 'site-a', server: source }], destination, {
        trigger: 'StableSeries',
        concurrency: 1,
        // The whole-study safety net waits long enough not to overtake the series' own changes under load.
        quietSeconds: 30,
      }),
    );
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const { log, entries } = captureLog();
    try {
      const run = await new LocalRunner(config, state, log).run({ untilIdle: true });
      expect(run.deadLettered).toBe(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(destination, set.instances);
      const bySeries = entries.filter((e) => e.message === 'study outcome' && e.seriesId !== undefined);
      expect(bySeries.map((e) => e.seriesId).sort()).toEqual(seriesIds);
      for (const entry of bySeries)
        expect(entry).toMatchObject({ result: 'moved', instances: 3, deleted: 3 });
    } finally {
      state.close();
    }
  });

  it('NewInstance: moves a study while it arrives, long before it is stable, and what arrives after the move too', async () => {
    const [destination, source] = await startServers(fleet, [
      'destination',
      // Stability never comes during the test: only the NewInstance trigger can move anything.
      { name: 'site-a', stableAge: 3600 },
    ]);
    const set = generateStudies(shape('new-instance', { patients: 1 }));
    const first = set.instances.slice(0, 2);
    const rest = set.instances.slice(2);
    const config = parseConfig(
      configFor([{ id: 'site-a', server: source }], destination, {
        trigger: 'NewInstance',
        quietSeconds: 3600,
      }),
    );
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const stop = new AbortController();
    try {
      const running = new LocalRunner(config, state, createLog({ level: 'SILENT' })).run({
        untilIdle: false,
        signal: stop.signal,
      });
      const movedAll = (count: number) => async () =>
        (await instanceCount(source)) === 0 && (await instanceCount(destination)) === count;
      await upload(source, first);
      await until(movedAll(first.length));
      await upload(source, rest);
      await until(movedAll(set.instances.length));
      stop.abort();
      expect((await running).deadLettered).toBe(0);
      await expectAllAtDestination(destination, set.instances);
    } finally {
      stop.abort();
      state.close();
    }
  });
});
