/**
 * Push mode against real Orthanc servers: the source Orthanc sends each series the destination
 * lacks to a DICOMweb server declared in its own configuration, as a job the forwarder follows;
 * the forwarder verifies and deletes exactly as in relay mode.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { LocalRunner } from '../lambdas/local/local-runner.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import { generateStudies } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import {
  captureLog,
  collect,
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  newInstanceChanges,
  shape,
  startServers,
  uidsOf,
  upload,
  useTestbed,
} from './support/harness.ts';

interface JobAnswer {
  readonly Type: string;
  readonly State: string;
  readonly Content: { readonly InstancesCount?: string };
}

/** The source's push jobs (Orthanc keeps the latest 10 that ended: enough for these tests). */
const pushJobs = async (server: OrthancServer): Promise<JobAnswer[]> =>
  (await server.rest<JobAnswer[]>('GET', '/jobs?expand')).filter((job) => job.Type === 'DicomWebStowClient');

const pushTo = (destination: OrthancServer, pushServerName: string) => ({
  url: destination.dicomWebUrl,
  username: destination.username,
  password: destination.password,
  transfer: 'push',
  pushServerName,
});

describe('push mode', () => {
  const { fleet, workPath } = useTestbed('push');

  it('has the source push only the series with instances the destination lacks, then verifies and deletes as relay mode does', async () => {
    const destination = await fleet.start({ name: 'destination', stableAge: 1 });
    const source = await fleet.start({
      name: 'site-a',
      stableAge: 1,
      dicomWebServers: {
        cloud: {
          url: destination.dicomWebUrl,
          username: destination.username,
          password: destination.password,
        },
      },
    });
    // Two studies of two series of three instances. The destination already holds one whole
    // series and one instance of another: three series are pushed, the complete one is not.
    const set = generateStudies(shape('push-mode'));
    const [study1, study2] = set.patients.map((patient) => patient.studies[0]);
    if (study1 === undefined || study2 === undefined) throw new Error('two studies expected');
    const complete = study1.series[0]?.instances ?? [];
    const oneOf = study2.series[1]?.instances.slice(0, 1) ?? [];
    await upload(destination, [...complete, ...oneOf]);
    await upload(source, set.instances);

    const config = parseConfig({
      ...configFor([{ id: 'site-a', server: source }], destination),
      destination: pushTo(destination, 'cloud'),
    });
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const outcomes: StudyOutcome[] = [];
    try {
      await new LocalRunner(config, state, createLog({ level: 'SILENT' })).run({
        untilIdle: true,
        onOutcome: (outcome) => outcomes.push(outcome),
      });
    } finally {
      state.close();
    }

    expect(await instanceCount(source)).toBe(0);
    expect(await instanceCount(destination)).toBe(set.instances.length);
    await expectAllAtDestination(destination, set.instances);
    // Nothing was stored twice, and one job per series that lacked something: a series the
    // destination lacked entirely goes by its series ID, the other by its two missing instances.
    expect(await newInstanceChanges(destination)).toBe(set.instances.length);
    const jobs = await pushJobs(source);
    expect(jobs.map((job) => job.State)).toEqual(['Success', 'Success', 'Success']);
    expect(jobs.map((job) => Number(job.Content.InstancesCount)).sort()).toEqual([2, 3, 3]);
    const moved = outcomes.filter((o) => o.result !== 'gone');
    expect(moved.map((o) => o.result)).toEqual(['moved', 'moved']);
    expect(moved.map((o) => o.sent).sort()).toEqual([3, 5]);
    expect(moved.map((o) => o.alreadyPresent).sort()).toEqual([1, 3]);
  });

  it('keeps everything at the source while the push job fails, as a transient error with its code; moves it once the source can push', async () => {
    const destination = await fleet.start({ name: 'destination', stableAge: 1 });
    // The source's idea of the destination is wrong (a closed port), the forwarder's is right:
    // the forwarder reaches the destination, the source's job cannot.
    const source = await fleet.start({
      name: 'site-a',
      stableAge: 1,
      dicomWebServers: { cloud: { url: 'http://127.0.0.1:9/dicom-web', username: 'x', password: 'y' } },
    });
    const set = generateStudies(shape('push-failure', { patients: 1 }));
    await upload(source, set.instances);
    const config = parseConfig({
      ...configFor([{ id: 'site-a', server: source }], destination, {
        retry: { maxAttempts: 2, baseDelayMs: 100, maxDelayMs: 200 },
      }),
      destination: pushTo(destination, 'cloud'),
    });
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    const { log, entries } = captureLog();
    try {
      const failed = await new LocalRunner(config, state, log).run({ untilIdle: true });
      expect(failed.deadLettered).toBe(1);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
      expect(await instanceCount(destination)).toBe(0);
      const [letter] = await collect(state.queue.deadLetters());
      expect(letter?.receiveCount).toBe(2);
      // Orthanc's own words for the failure (the plugin's "network protocol" error, code 9).
      expect(letter?.lastError).toMatch(
        /^push job to 'cloud' at http:\/\/127\.0\.0\.1:\d+ failed: error 9 \(/,
      );
      expect(entries.filter((e) => e.message === 'work item failed, will retry')).toHaveLength(1);

      // The source learns the right address; the dead letter goes back on the queue.
      await source.rest('PUT', '/dicom-web/servers/cloud', {
        Url: destination.dicomWebUrl,
        Username: destination.username,
        Password: destination.password,
      });
      expect(await state.queue.redrive()).toBe(1);
      const moved = await new LocalRunner(config, state, log).run({ untilIdle: true });
      expect(moved.deadLettered).toBe(0);
      expect(await instanceCount(source)).toBe(0);
      await expectAllAtDestination(destination, set.instances);
    } finally {
      state.close();
    }
  });

  it('dead-letters at once, naming pushServerName, when the source declares no such server', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('push-unknown', { patients: 1 }));
    await upload(source, set.instances);
    const config = parseConfig({
      // Queued by its StableStudy only: with the tests' 2 s quiet time, a loaded machine can also
      // queue it as quiet before Orthanc calls it stable, and at least once then means twice.
      ...configFor([{ id: 'site-a', server: source }], destination, { quietSeconds: 3600 }),
      destination: pushTo(destination, 'nowhere'),
    });
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      const run = await new LocalRunner(config, state, createLog({ level: 'SILENT' })).run({
        untilIdle: true,
      });
      expect(run.deadLettered).toBe(1);
      const [letter] = await collect(state.queue.deadLetters());
      expect(letter?.receiveCount).toBe(1);
      expect(letter?.lastError).toMatch(/declares no DicomWeb server 'nowhere' \(pushServerName\)/);
      expect(await heldUids(source)).toEqual(uidsOf(set.instances));
    } finally {
      state.close();
    }
  });
});
