/**
 * The test bed's acceptance: several real Orthancs side by side, wired for DICOMweb, that keep
 * their data across a stop or a crash and can be frozen to imitate a hung server.
 */
import { createHash } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { type GeneratedSet, generateStudies } from '../testbed/dicom-generator.ts';
import { OrthancFleet, type OrthancServer } from '../testbed/orthanc.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';

/** 1 patient × 1 study × 3 series × 4 instances, small enough to upload in a blink. */
const multiSeries = (seed: string): GeneratedSet =>
  generateStudies({
    patients: 1,
    studiesPerPatient: 1,
    seriesPerStudy: 3,
    instancesPerSeries: 4,
    pixelBytes: 2048,
    seed,
  });

interface Statistics {
  readonly CountPatients: number;
  readonly CountStudies: number;
  readonly CountSeries: number;
  readonly CountInstances: number;
}

const counts = async (server: OrthancServer) => {
  const statistics = await server.rest<Statistics>('GET', '/statistics');
  return {
    patients: statistics.CountPatients,
    studies: statistics.CountStudies,
    series: statistics.CountSeries,
    instances: statistics.CountInstances,
  };
};

/** Uploads the set and returns the Orthanc ID of each instance, failing on any refusal. */
const upload = async (server: OrthancServer, set: GeneratedSet): Promise<string[]> => {
  const results = await uploadToOrthanc(server, set.instances);
  expect(results.map((r) => [r.status, r.orthancStatus])).toEqual(set.instances.map(() => [200, 'Success']));
  return results.map((r) => r.orthancId ?? '');
};

/** The SHA-256 of a stored file as downloaded (rest() parses JSON, so a plain fetch). */
const fileSha256 = async (server: OrthancServer, id: string): Promise<string> => {
  const response = await fetch(`${server.url}/instances/${id}/file`, {
    headers: { authorization: server.authorization },
  });
  expect(response.status).toBe(200);
  return createHash('sha256')
    .update(Buffer.from(await response.arrayBuffer()))
    .digest('hex');
};

/** What a restart must not lose: the counts, the instance IDs and every file's bytes. */
const snapshot = async (server: OrthancServer) => {
  const ids = (await server.rest<string[]>('GET', '/instances')).sort();
  const hashes = await Promise.all(ids.map((id) => fileSha256(server, id)));
  return { ids, hashes, counts: await counts(server) };
};

describe('Orthanc fleet', () => {
  const fleet = new OrthancFleet();
  afterAll(() => fleet.destroyAll());

  it('runs two sources and a destination, stores a multi-series study and knows its DICOMweb peer', async () => {
    const destination = await fleet.start({ name: 'destination' });
    const [siteA, siteB] = await Promise.all([
      fleet.start({
        name: 'site-a',
        dicomWebServers: {
          dest: {
            url: destination.dicomWebUrl,
            username: destination.username,
            password: destination.password,
          },
        },
      }),
      fleet.start({ name: 'site-b' }),
    ]);
    // Three processes, three ports, three storages.
    expect(new Set([destination, siteA, siteB].map((s) => s.httpPort)).size).toBe(3);
    expect(new Set([destination, siteA, siteB].map((s) => s.dir)).size).toBe(3);

    const set = multiSeries('fleet acceptance');
    const ids = await upload(siteA, set);

    expect(await counts(siteA)).toEqual({ patients: 1, studies: 1, series: 3, instances: 12 });
    expect(await siteA.rest<string[]>('GET', '/studies')).toHaveLength(1);
    expect(await siteA.rest<string[]>('GET', '/series')).toHaveLength(3);
    expect((await siteA.rest<string[]>('GET', '/instances')).sort()).toEqual([...ids].sort());
    for (const [index, instance] of set.instances.entries()) {
      const tags = await siteA.rest<Record<string, string>>(
        'GET',
        `/instances/${ids[index]}/simplified-tags`,
      );
      expect(tags).toMatchObject({
        PatientName: instance.patient.patientName,
        StudyDescription: instance.study.studyDescription,
        SeriesInstanceUID: instance.seriesInstanceUid,
        SOPInstanceUID: instance.sopInstanceUid,
        Modality: 'CT',
      });
    }
    // Storage is per server: nothing leaked into the others.
    expect(await counts(siteB)).toEqual({ patients: 0, studies: 0, series: 0, instances: 0 });

    expect(await siteA.rest<string[]>('GET', '/dicom-web/servers')).toEqual(['dest']);
    expect(await siteB.rest<string[]>('GET', '/dicom-web/servers')).toEqual([]);
    // A listed peer proves only the configuration; a push proves its URL and credentials work.
    const [studyId] = await siteA.rest<string[]>('GET', '/studies');
    await siteA.rest('POST', '/dicom-web/servers/dest/stow', { Resources: [studyId] });
    expect(await counts(destination)).toEqual({ patients: 1, studies: 1, series: 3, instances: 12 });
  });

  it('keeps its data across a graceful stop and a start', async () => {
    const server = await fleet.start({ name: 'stop-start' });
    await upload(server, multiSeries('stop and start'));
    const before = await snapshot(server);
    const port = server.httpPort;

    await server.stop();
    expect(server.pid).toBeUndefined();
    // Really down, not merely reported so.
    await expect(fetch(`${server.url}/system`)).rejects.toThrow();
    await server.start();

    expect(server.httpPort).toBe(port);
    expect(await snapshot(server)).toEqual(before);
    expect(before.counts.instances).toBe(12);
  });

  it('keeps its data across a SIGKILL and a start', async () => {
    const server = await fleet.start({ name: 'crash' });
    await upload(server, multiSeries('crash'));
    const before = await snapshot(server);
    const pid = server.pid;

    await server.kill();
    await expect(fetch(`${server.url}/system`)).rejects.toThrow();
    await server.start();

    expect(server.pid).not.toBe(pid);
    expect(await snapshot(server)).toEqual(before);
    expect(before.counts.instances).toBe(12);
  });

  it('answers nothing while paused, and again once resumed', async () => {
    const server = await fleet.start({ name: 'pause' });
    await server.pause();
    try {
      // The kernel still accepts the connection; only the client's own timeout ends the wait.
      const frozen = fetch(`${server.url}/system`, {
        headers: { authorization: server.authorization },
        signal: AbortSignal.timeout(500),
      });
      await expect(frozen).rejects.toMatchObject({ name: 'TimeoutError' });
    } finally {
      server.resume();
    }
    const system = await server.rest<{ Name: string }>('GET', '/system');
    expect(system.Name).toBe('pause');
  });
});
