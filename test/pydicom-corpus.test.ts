/**
 * Real-world DICOM, not our generator's: pydicom's test files (Debian's python3-pydicom) — odd
 * transfer syntaxes, files without a meta header, padded and missing attributes, UIDs shared by
 * several files — moved by the forwarder with its default configuration (identity verification)
 * from one real Orthanc to another. A clean corpus must move completely: a conflict here means
 * identity.ts compares two forms of one value as different.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lambdas/core/config.ts';
import { IDENTITY_ATTRIBUTES, IDENTITY_TAGS, type IdentityAttribute } from '../lambdas/core/identity.ts';
import { createLog } from '../lambdas/core/log.ts';
import type { Conflict } from '../lambdas/core/ports.ts';
import { openState } from '../lambdas/local/sqlite-state.ts';
import type { OrthancServer } from '../testbed/orthanc.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';
import { collect, configFor, runUntilIdle, startServers, storedMd5, useTestbed } from './support/harness.ts';
import { instanceIdsOf } from './support/invariant.ts';

/** The corpus as the package installed it, wherever its Python version put it. */
const corpusFiles = (): string[] => {
  let listing: string;
  try {
    listing = execFileSync('dpkg', ['-L', 'python3-pydicom'], { encoding: 'utf8', stdio: 'pipe' });
  } catch {
    throw new Error(
      'the pydicom corpus is missing: install python3-pydicom (scripts/install-prerequisites.sh installs it)',
    );
  }
  const files = listing
    .split('\n')
    .filter((path) => /\/pydicom\/data\/test_files\/[^/]+\.dcm$/i.test(path))
    .sort();
  if (files.length === 0) throw new Error('python3-pydicom is installed but lists no data/test_files/*.dcm');
  return files;
};

interface HeldInstance {
  readonly id: string;
  readonly sopInstanceUid: string;
}

const heldInstances = async (server: OrthancServer): Promise<HeldInstance[]> =>
  (
    await server.rest<{ ID: string; MainDicomTags: { SOPInstanceUID: string } }[]>('GET', '/instances?expand')
  ).map((instance) => ({ id: instance.ID, sopInstanceUid: instance.MainDicomTags.SOPInstanceUID }));

/** A DICOMweb answer of the destination: a list of DICOM JSON datasets, none where it has nothing. */
const dicomJson = async (server: OrthancServer, path: string): Promise<Record<string, unknown>[]> => {
  const response = await fetch(`${server.dicomWebUrl}${path}`, {
    headers: { authorization: server.authorization, accept: 'application/dicom+json' },
  });
  return response.status === 200 ? ((await response.json()) as Record<string, unknown>[]) : [];
};

/**
 * What each side says of a conflict's attributes, as the forwarder reads them: the source file's
 * tags (`?short`), and the destination's QIDO-RS answer and WADO-RS metadata (where the forwarder
 * completes what QIDO left out).
 */
const describeConflict = async (
  conflict: Conflict,
  source: OrthancServer,
  destination: OrthancServer,
): Promise<string> => {
  const tags = await source.rest<Record<string, unknown>>(
    'GET',
    `/instances/${conflict.instanceId}/tags?short`,
  );
  const [study, series] = [tags['0020,000d'], tags['0020,000e']].map((uid) =>
    encodeURIComponent(String(uid)),
  );
  const sameUid = (item: Record<string, unknown>) =>
    (item[IDENTITY_ATTRIBUTES.SOPInstanceUID] as { Value?: unknown[] } | undefined)?.Value?.[0] ===
    conflict.sopInstanceUid;
  const fields = IDENTITY_TAGS.map((tag) => `includefield=${tag}`).join('&');
  const qido = (await dicomJson(destination, `/studies/${study}/instances?${fields}`)).filter(sameUid);
  const metadata = (await dicomJson(destination, `/studies/${study}/series/${series}/metadata`)).filter(
    sameUid,
  );
  const forms = (copies: Record<string, unknown>[], tag: string) =>
    copies.map((copy) => (tag in copy ? JSON.stringify(copy[tag]) : 'element absent')).join(' | ') ||
    'no copy';
  const lines = conflict.attributes.map((attribute) => {
    const tag = IDENTITY_ATTRIBUTES[attribute as IdentityAttribute];
    if (tag === undefined) return `    ${attribute}`;
    const short = `${tag.slice(0, 4)},${tag.slice(4)}`.toLowerCase();
    const here = short in tags ? JSON.stringify(tags[short]) : 'tag absent';
    return `    ${attribute}: source ?short ${here}; destination QIDO ${forms(qido, tag)}, metadata ${forms(metadata, tag)}`;
  });
  return [`  ${conflict.sopInstanceUid} (source instance ${conflict.instanceId}):`, ...lines].join('\n');
};

describe('the pydicom corpus', () => {
  const { fleet, workPath } = useTestbed('pydicom');

  it('moves completely with identity verification: verified and deleted, or refused and kept', async () => {
    const files = corpusFiles();
    const [destination, source] = await startServers(fleet, ['destination', 'site-a']);

    const uploads = await uploadToOrthanc(source, files);
    // Orthanc refuses what it cannot parse (400) or index (404, no SOPInstanceUID): those never
    // entered the source. Anything else (no answer, 500) is the test bed's failure, not the corpus'.
    expect(
      uploads.filter((result) => ![200, 400, 404].includes(result.status)),
      'uploads answered other than 200, 400 or 404',
    ).toEqual([]);
    const accepted = await heldInstances(source);
    // Sharing UIDs and patient, several files are one instance to Orthanc (AlreadyStored).
    expect(new Set(uploads.flatMap((result) => result.orthancId ?? [])).size).toBe(accepted.length);
    expect(accepted.length, 'too few corpus files reached the source to mean anything').toBeGreaterThan(20);
    const sourceMd5 = new Map(
      await Promise.all(accepted.map(async (i) => [i.id, await storedMd5(source, i.id)] as const)),
    );

    const config = parseConfig(configFor([{ id: 'site-a', server: source }], destination));
    expect(config.verify).toBe('identity');
    const state = openState(workPath('state.sqlite'), { maxReceives: config.retry.maxAttempts });
    try {
      const { outcomes } = await runUntilIdle(config, state, createLog({ level: 'SILENT' }));
      expect(outcomes.length).toBeGreaterThan(0);

      const conflicts = await state.ledger.conflicts();
      const described = await Promise.all(conflicts.map((c) => describeConflict(c, source, destination)));
      // Soft, so that the run's other promises are still checked for the instances that moved.
      expect.soft(described, `conflicts in a clean corpus:\n${described.join('\n')}`).toEqual([]);
      const conflicted = new Set(conflicts.map((c) => c.instanceId));

      expect(await collect(state.queue.deadLetters())).toEqual([]);
      expect((await state.queue.stats()).deadLetters).toBe(0);

      const rejected = new Set((await state.ledger.rejected()).map((r) => r.instanceId));
      const kept = new Set([...rejected, ...conflicted]);
      // What stays at the source is exactly what the destination refused (recorded as such) or
      // holds in conflict; everything else is at the destination byte for byte, and gone here.
      const left = (await heldInstances(source)).map((i) => i.id);
      expect(left.sort()).toEqual([...kept].sort());
      // Several source instances can share a SOPInstanceUID with one identity: Orthanc keys a
      // patient by its PatientID with its padding (rtdose_rle.dcm's `id11111 ` against badVR.dcm's
      // `id11111`), DICOM does not. The identity level takes them for one instance in two transfer
      // syntaxes, by design: the first to arrive proves the others, whose bytes are never sent.
      const byUid = Map.groupBy(
        accepted.filter((i) => !kept.has(i.id)),
        (i) => i.sopInstanceUid,
      );
      for (const [uid, instances] of byUid) {
        const copies = await instanceIdsOf(destination, uid);
        const there = await Promise.all(copies.map((id) => storedMd5(destination, id)));
        const sent = instances.filter((i) => there.includes(sourceMd5.get(i.id) ?? ''));
        expect(sent.length, `${uid}: no source instance at the destination byte for byte`).toBeGreaterThan(0);
        if (instances.length === 1) expect(copies, `${uid}: copies at the destination`).toHaveLength(1);
      }
      for (const instance of accepted.filter((i) => rejected.has(i.id))) {
        expect(await instanceIdsOf(destination, instance.sopInstanceUid), 'refused yet held').toEqual([]);
      }
      expect(outcomes.reduce((sum, o) => sum + o.deleted, 0)).toBe(accepted.length - kept.size);
    } finally {
      state.close();
    }
  });
});
