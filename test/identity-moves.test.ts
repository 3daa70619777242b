/**
 * Identity-verified moves on real Orthancs: an instance leaves its source only when the
 * destination holds that same instance. A re-sent SOPInstanceUID with other identifying
 * attributes (or, under `checksum`, other bytes) is a conflict: held at the source, recorded,
 * reported, and resolved by the operator. Each hole a protocol review found is reproduced here.
 */
import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { type ForwarderConfig, parseConfig } from '../lambdas/core/config.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { StudyOutcome } from '../lambdas/core/ports.ts';
import { type GeneratedInstance, generateStudies, withChanges } from '../testbed/dicom-generator.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { HttpFront } from './support/fronts.ts';
import {
  cli,
  configFor,
  expectAllAtDestination,
  heldUids,
  instanceCount,
  md5Of,
  runUntilIdle,
  shape,
  startServers,
  storedMd5,
  until,
  upload,
  useTestbed,
} from './support/harness.ts';
import { instanceIdsOf } from './support/invariant.ts';

const log = createLog({ level: 'SILENT' });

/** The MD5s of every copy a server holds under the instance's SOPInstanceUID. */
const copiesAt = async (server: OrthancServer, instance: GeneratedInstance): Promise<string[]> =>
  (
    await Promise.all(
      (await instanceIdsOf(server, instance.sopInstanceUid)).map((id) => storedMd5(server, id)),
    )
  ).sort();

const corrected = (instance: GeneratedInstance) =>
  withChanges(instance, { patient: { patientName: 'CORRECTED^NAME^AFTER^REVIEW' } });

type WithState = ReturnType<typeof useTestbed>['withState'];

/** Runs until idle on the test's state; the outcomes, and the conflicts by UID and attribute names. */
const mover =
  (withState: WithState) =>
  (
    config: ForwarderConfig,
    options: Parameters<typeof runUntilIdle>[3] = {},
  ): Promise<{ outcomes: StudyOutcome[]; conflicts: string[][] }> =>
    withState(config, async (state) => {
      const { outcomes } = await runUntilIdle(config, state, log, options);
      return {
        outcomes,
        conflicts: (await state.ledger.conflicts()).map((c) => [c.sopInstanceUid, ...c.attributes]),
      };
    });

/** Two sources and a destination, the test's fast-polling configuration. */
const twoSites = (siteA: OrthancServer, siteB: OrthancServer, destination: OrthancServer) =>
  parseConfig(
    configFor(
      [
        { id: 'site-a', server: siteA },
        { id: 'site-b', server: siteB },
      ],
      destination,
    ),
  );

describe('identity-verified moves', () => {
  const { fleet, workPath, withState } = useTestbed('identity');
  const moveAll = mover(withState);

  const writeConfig = (raw: object): string => {
    const path = workPath('forwarder.json');
    writeFileSync(path, JSON.stringify(raw));
    return path;
  };

  describe.each([
    { mode: 'relay', top: {}, destination: {} },
    { mode: 'push', top: {}, destination: { transfer: 'push', pushServerName: 'cloud' } },
    { mode: 'copy', top: { deleteAfterForward: false }, destination: {} },
  ])('a corrected re-send in $mode mode', ({ mode, top, destination: destinationRaw }) => {
    it('is held at the source and recorded as a conflict naming PatientName, never deleted, re-sent or settled', async () => {
      const destination = await fleet.start({ name: 'destination', stableAge: 1 });
      // The source takes the corrected file in place of the original (it keeps the first one
      // otherwise): what a modality's correction does to an Orthanc configured to accept them.
      const source = await fleet.start({
        name: 'site-a',
        stableAge: 1,
        extraConfig: { OverwriteInstances: true },
        dicomWebServers: {
          cloud: {
            url: destination.dicomWebUrl,
            username: destination.username,
            password: destination.password,
          },
        },
      });
      const set = generateStudies(shape(`resend-${mode}`, { patients: 1 }));
      const original = set.instances[0] as GeneratedInstance;
      await upload(source, set.instances);
      const base = configFor([{ id: 'site-a', server: source }], destination, top);
      const config = parseConfig({
        ...base,
        destination: { ...(base.destination as object), ...destinationRaw },
      });

      await withState(config, async (state) => {
        await runUntilIdle(config, state, log);
        expect(await instanceCount(source)).toBe(mode === 'copy' ? set.instances.length : 0);
        await expectAllAtDestination(destination, set.instances);

        // The modality re-sends the first instance, corrected: same UIDs, same PatientID. In copy
        // mode the study is still there, so only its StableStudy change tells: wait for it.
        await upload(source, [corrected(original)]);
        const [studyId] = await source.rest<string[]>('GET', '/studies');
        await until(
          async () => (await source.rest<{ IsStable: boolean }>('GET', `/studies/${studyId}`)).IsStable,
        );
        const { outcomes } = await runUntilIdle(config, state, log);
        const held = outcomes.filter((o) => o.conflicts > 0);
        expect(held.length).toBeGreaterThan(0);
        expect(held.every((o) => o.result === 'partial' && o.deleted === 0)).toBe(true);
        expect(await copiesAt(source, original)).toEqual([await md5Of(corrected(original))]);
        expect(await copiesAt(destination, original)).toEqual([await md5Of(original)]);
        const conflicts = await state.ledger.conflicts();
        expect(conflicts.map((c) => [c.sopInstanceUid, c.destinationId, c.attributes])).toEqual([
          [original.sopInstanceUid, 'destination', ['PatientName']],
        ]);

        // Queued again (a sweep, a redelivery), it is neither sent again nor settled (copy mode
        // would call a settled study unchanged): the same single record.
        await state.queue.enqueue([{ sourceId: 'site-a', studyId: studyId ?? '', reason: 'stable' }]);
        const again = await runUntilIdle(config, state, log);
        expect(again.outcomes.map((o) => [o.result, o.conflicts, o.bytes])).toEqual([['partial', 1, 0]]);
        expect(await state.ledger.conflicts()).toHaveLength(1);
      });
      expect(await copiesAt(destination, original)).toEqual([await md5Of(original)]);
    });
  });

  it('makes run --until-idle exit 1 while a conflict is open, and lists it without a patient value', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('resend-cli', { patients: 1 }));
    const original = set.instances[0] as GeneratedInstance;
    // The destination holds an earlier version of one instance.
    await upload(destination, [original]);
    await upload(source, [corrected(original), ...set.instances.slice(1)]);
    const configPath = writeConfig(configFor([{ id: 'site-a', server: source }], destination));
    const statePath = workPath('state.sqlite');

    const run = await cli(['run', '--config', configPath, '--state', statePath, '--until-idle']);
    expect(run.code).toBe(1);
    expect(await heldUids(source)).toEqual([original.sopInstanceUid]);
    const listed = await cli(['conflicts', 'list', '--config', configPath, '--state', statePath, '--json']);
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout)).toMatchObject([
      { sopInstanceUid: original.sopInstanceUid, destinationId: 'destination', attributes: ['PatientName'] },
    ]);
    const output = `${run.stdout}${run.stderr}${listed.stdout}${listed.stderr}`;
    for (const value of [...set.phiValues(), 'CORRECTED', 'REVIEW']) expect(output).not.toContain(value);
  });

  it('sends and verifies the same SOPInstanceUID under another PatientID at another source as its own instance', async () => {
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b']);
    const set = generateStudies(shape('other-patient', { patients: 1 }));
    const original = set.instances[0] as GeneratedInstance;
    const otherPatient = withChanges(original, { patient: { patientId: 'MRN000000042' } });
    await upload(siteA, set.instances);
    await upload(siteB, [otherPatient]);
    expect((await moveAll(twoSites(siteA, siteB, destination))).conflicts).toEqual([]);
    expect(await instanceCount(siteA)).toBe(0);
    expect(await instanceCount(siteB)).toBe(0);
    expect(await copiesAt(destination, original)).toEqual(
      [await md5Of(original), await md5Of(otherPatient)].sort(),
    );
  });

  it('completes the move of a corrected re-send where the destination overwrites (OverwriteInstances: true)', async () => {
    const [destination, source] = await startServers(fleet, [
      { name: 'destination', extraConfig: { OverwriteInstances: true } },
      'site-a',
    ]);
    const set = generateStudies(shape('overwriting-destination', { patients: 1 }));
    const original = set.instances[0] as GeneratedInstance;
    await upload(destination, [original]);
    await upload(source, [corrected(original), ...set.instances.slice(1)]);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    expect((await moveAll(config)).conflicts).toEqual([]);
    expect(await instanceCount(source)).toBe(0);
    expect(await copiesAt(destination, original)).toEqual([await md5Of(corrected(original))]);
  });

  it('moves identical copies of a study from two sources, deleting both once verified', async () => {
    const [destination, siteA, siteB] = await startServers(fleet, ['destination', 'site-a', 'site-b']);
    const set = generateStudies(shape('two-sites'));
    await upload(siteA, set.instances);
    await upload(siteB, set.instances);
    expect((await moveAll(twoSites(siteA, siteB, destination))).conflicts).toEqual([]);
    expect(await instanceCount(siteA)).toBe(0);
    expect(await instanceCount(siteB)).toBe(0);
    expect(await instanceCount(destination)).toBe(set.instances.length);
    await expectAllAtDestination(destination, set.instances);
  });

  it('applies each resolution at the next run: keep the source, accept the destination, replace the destination', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('resolutions', { patients: 1 }));
    const [kept, accepted, replaced] = set.instances as [
      GeneratedInstance,
      GeneratedInstance,
      GeneratedInstance,
    ];
    await upload(destination, [kept, accepted, replaced]);
    await upload(source, [
      corrected(kept),
      corrected(accepted),
      corrected(replaced),
      ...set.instances.slice(3),
    ]);
    const raw = configFor([{ id: 'site-a', server: source }], destination);
    const configPath = writeConfig({
      ...raw,
      destination: { ...(raw.destination as object), orthancUrl: destination.url },
    });
    const statePath = workPath('state.sqlite');
    const forwarder = (...args: string[]) => cli([...args, '--config', configPath, '--state', statePath]);
    const instanceIdAtSource = async (instance: GeneratedInstance) =>
      (await instanceIdsOf(source, instance.sopInstanceUid))[0] ?? '';

    expect((await forwarder('run', '--until-idle')).code).toBe(1);
    expect((await heldUids(source)).sort()).toEqual(
      [kept, accepted, replaced].map((i) => i.sopInstanceUid).sort(),
    );
    for (const [instance, flags] of [
      [kept, ['--keep-source']],
      [accepted, ['--accept-destination', '--yes']],
      [replaced, ['--replace-destination']],
    ] as const) {
      const resolved = await forwarder(
        'conflicts',
        'resolve',
        ...flags,
        '--instance',
        await instanceIdAtSource(instance),
      );
      expect(resolved.code, resolved.stderr).toBe(0);
    }
    expect((await forwarder('run', '--until-idle')).code).toBe(0);

    // Kept: still at the source, corrected; the destination keeps its own.
    expect(await heldUids(source)).toEqual([kept.sopInstanceUid]);
    expect(await copiesAt(source, kept)).toEqual([await md5Of(corrected(kept))]);
    expect(await copiesAt(destination, kept)).toEqual([await md5Of(kept)]);
    // Accepted: the destination's copy stands, the source's is gone.
    expect(await copiesAt(destination, accepted)).toEqual([await md5Of(accepted)]);
    // Replaced: the destination now holds the source's copy, and the source none.
    expect(await copiesAt(destination, replaced)).toEqual([await md5Of(corrected(replaced))]);
    const listed = JSON.parse((await forwarder('conflicts', 'list', '--all', '--json')).stdout) as {
      resolution?: string;
    }[];
    expect(listed.map((c) => c.resolution).sort()).toEqual([
      'accept-destination',
      'keep-source',
      'replace-destination',
    ]);
    expect(JSON.parse((await forwarder('conflicts', 'list', '--json')).stdout)).toEqual([]);
  });
});

describe('holes a protocol review found, closed', () => {
  const { fleet, closeAfterTest, withState } = useTestbed('identity-holes');

  const moveAll = mover(withState);

  describe.each([
    { via: 'the Orthanc REST API', orthancUrl: true },
    { via: 'WADO-RS', orthancUrl: false },
  ])('checksum through $via', ({ orthancUrl }) => {
    it('computes a missing source MD5 instead of assuming it equal: other bytes under the same identity are held', async () => {
      const [destination, source] = await startServers(fleet, [
        'destination',
        { name: 'site-a', extraConfig: { StoreMD5ForAttachments: false } },
      ]);
      const set = generateStudies(shape(`no-md5-${orthancUrl}`, { patients: 1 }));
      const original = set.instances[0] as GeneratedInstance;
      // Same identity, other bytes: the destination's copy has another StudyDescription.
      const otherBytes = withChanges(original, { study: { studyDescription: 'SOMETHING ELSE' } });
      await upload(destination, [otherBytes]);
      await upload(source, set.instances);
      const raw = configFor([{ id: 'site-a', server: source }], destination, { verify: 'checksum' });
      const config = parseConfig({
        ...raw,
        destination: {
          ...(raw.destination as object),
          ...(orthancUrl ? { orthancUrl: destination.url } : {}),
        },
      });

      const { conflicts } = await moveAll(config);
      expect(conflicts).toEqual([[original.sopInstanceUid, 'content']]);
      expect(await heldUids(source)).toEqual([original.sopInstanceUid]);
      await expectAllAtDestination(destination, set.instances.slice(1));
    });
  });

  it("completes identities an archive leaves out of its QIDO answers from the series' WADO-RS metadata", async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('sparse-qido', { patients: 1 }));
    const original = set.instances[0] as GeneratedInstance;
    await upload(destination, [original]);
    await upload(source, [corrected(original), ...set.instances.slice(1)]);
    // An archive whose QIDO-RS answers carry neither PatientName nor PatientBirthDate.
    const metadataRequests: string[] = [];
    const front = closeAfterTest(
      await HttpFront.start(destination.url, (request) => {
        if (request.path.includes('/metadata')) metadataRequests.push(request.path);
        if (!/\/instances\?/.test(request.path)) return undefined;
        return {
          rewrite: (real) => {
            const items = JSON.parse(real.body.toString()) as Record<string, unknown>[];
            for (const item of items) {
              delete item['00100010'];
              delete item['00100030'];
            }
            return { ...real, body: JSON.stringify(items) };
          },
        };
      }),
    );
    const raw = configFor([{ id: 'site-a', server: source }], destination);
    const config = parseConfig({
      ...raw,
      destination: { ...(raw.destination as object), url: front.urlFor(destination.dicomWebUrl) },
    });

    const { conflicts } = await moveAll(config);
    expect(front.faked).toBeGreaterThan(0);
    expect(metadataRequests.length).toBeGreaterThan(0);
    expect(conflicts).toEqual([[original.sopInstanceUid, 'PatientName']]);
    expect(await heldUids(source)).toEqual([original.sopInstanceUid]);
    await expectAllAtDestination(destination, set.instances.slice(1));
  });

  it('verifies against every copy the destination holds under one UID, not the first lookup match', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('two-copies', { patients: 1 }));
    const instance = set.instances[0] as GeneratedInstance;
    // Stored first, so that it is the first match of /tools/lookup.
    await upload(destination, [withChanges(instance, { patient: { patientId: 'MRN000000042' } })]);
    await upload(source, set.instances);
    const raw = configFor([{ id: 'site-a', server: source }], destination, { verify: 'checksum' });
    const config = parseConfig({
      ...raw,
      destination: { ...(raw.destination as object), orthancUrl: destination.url },
    });

    const { conflicts } = await moveAll(config);
    expect(conflicts).toEqual([]);
    expect(await instanceCount(source)).toBe(0);
    expect(await copiesAt(destination, instance)).toContain(await md5Of(instance));
    await expectAllAtDestination(destination, set.instances.slice(1));
  });

  it('tells apart two instances of one snapshot that share a SOPInstanceUID (even under qido)', async () => {
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);
    const set = generateStudies(shape('shared-uid', { patients: 1 }));
    const first = set.instances[0] as GeneratedInstance;
    // The same UID in another series of the same study: another instance, which Orthanc stores
    // beside the first. The destination holds only the first.
    const twin = withChanges(first, {
      series: { seriesInstanceUid: `${first.seriesInstanceUid}.9`, seriesNumber: 9 },
    });
    await upload(destination, [first]);
    await upload(source, [...set.instances, twin]);
    const config = parseConfig(
      configFor([{ id: 'site-a', server: source }], destination, { verify: 'qido' }),
    );

    const { conflicts } = await moveAll(config);
    expect(conflicts).toEqual([]);
    expect(await instanceCount(source)).toBe(0);
    expect(await copiesAt(destination, first)).toEqual([await md5Of(first), await md5Of(twin)].sort());
  });

  it('leaves an instance whose file changed between verification and deletion at the source', async () => {
    const [destination, source] = await startServers(fleet, [
      'destination',
      { name: 'site-a', extraConfig: { OverwriteInstances: true } },
    ]);
    const set = generateStudies(shape('changed-before-delete', { patients: 1 }));
    const original = set.instances[0] as GeneratedInstance;
    await upload(source, set.instances);
    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    let resent = false;
    const { conflicts } = await moveAll(config, {
      onStep: async (step) => {
        // The correction lands under the same Orthanc ID after the original was verified.
        if (step !== 'verified' || resent) return;
        resent = true;
        await upload(source, [corrected(original)]);
      },
    });
    expect(resent).toBe(true);
    expect(await copiesAt(source, original)).toEqual([await md5Of(corrected(original))]);
    expect(await copiesAt(destination, original)).toEqual([await md5Of(original)]);
    expect(conflicts).toEqual([[original.sopInstanceUid, 'PatientName']]);
    await expectAllAtDestination(destination, set.instances);
  });
});
