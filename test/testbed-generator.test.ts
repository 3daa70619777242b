import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CT_IMAGE_STORAGE,
  EXPLICIT_VR_LITTLE_ENDIAN,
  type GeneratedSet,
  generateStudies,
  MR_IMAGE_STORAGE,
  PIXEL_CHUNK_BYTES,
  SECONDARY_CAPTURE_IMAGE_STORAGE,
  type StudyShape,
  writeCorruptDicom,
  writeStudies,
} from '../testbed/dicom-generator.ts';
import { OrthancFleet } from '../testbed/orthanc.ts';
import { uploadToOrthanc } from '../testbed/upload.ts';

const SHAPE: StudyShape = {
  patients: 2,
  studiesPerPatient: 2,
  seriesPerStudy: 2,
  instancesPerSeries: 3,
  pixelBytes: 4096,
  seed: 'generator-test',
};

const drain = async (stream: Readable): Promise<{ sha256: string; length: number; largestChunk: number }> => {
  const hash = createHash('sha256');
  let length = 0;
  let largestChunk = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    hash.update(chunk);
    length += chunk.length;
    largestChunk = Math.max(largestChunk, chunk.length);
  }
  return { sha256: hash.digest('hex'), length, largestChunk };
};

const allUids = (set: GeneratedSet): string[] =>
  set.instances.flatMap((i) => [i.sopInstanceUid, i.seriesInstanceUid, i.studyInstanceUid]);

describe('generated studies are deterministic', () => {
  it('gives byte-identical files for the same seed, and other UIDs for another seed', async () => {
    const first = generateStudies(SHAPE);
    const second = generateStudies(SHAPE);
    expect(first.instances).toHaveLength(24);
    for (const [index, instance] of first.instances.entries()) {
      const again = second.instances[index];
      expect(again?.sopInstanceUid).toBe(instance.sopInstanceUid);
      const a = await drain(instance.stream());
      expect(a.length).toBe(instance.byteLength);
      expect(await drain(again?.stream() as Readable)).toEqual(a);
    }
    const other = generateStudies({ ...SHAPE, seed: 'another seed' });
    const otherUids = new Set(allUids(other));
    expect(allUids(first).filter((uid) => otherUids.has(uid))).toEqual([]);
  });

  it('makes valid, unique UIDs and distinctive PHI for every patient', () => {
    const set = generateStudies(SHAPE);
    const uids = allUids(set);
    for (const uid of uids) {
      expect(uid).toMatch(/^2\.25\.(0|[1-9]\d*)$/);
      expect(uid.length).toBeLessThanOrEqual(64);
    }
    expect(new Set(set.instances.map((i) => i.sopInstanceUid)).size).toBe(24);
    expect(new Set(set.instances.map((i) => i.seriesInstanceUid)).size).toBe(8);
    expect(new Set(set.instances.map((i) => i.studyInstanceUid)).size).toBe(4);
    const [jane, john] = set.patients;
    expect(jane?.patientName).toMatch(/^[A-Z]+\^[A-Z]+$/);
    expect(jane?.patientName).not.toBe(john?.patientName);
    expect(jane?.birthDate).toMatch(/^(19\d\d|200[0-4])(0[1-9]|1[0-2])(0[1-9]|[12]\d)$/);
    const phi = set.phiValues();
    for (const patient of set.patients) {
      expect(phi).toContain(patient.patientName);
      expect(phi).toContain(patient.patientId);
      expect(phi).toContain(patient.birthDate);
      for (const study of patient.studies) expect(phi).toContain(study.accessionNumber);
    }
  });

  it('streams pixel data in chunks of at most 64 KiB whatever the instance size', async () => {
    const [instance] = generateStudies({ ...SHAPE, patients: 1, pixelBytes: 1_000_000 }).instances;
    if (instance === undefined) throw new Error('no instance generated');
    expect(instance.pixelBytes).toBeGreaterThanOrEqual(1_000_000);
    expect(instance.rows * instance.columns * 2).toBe(instance.pixelBytes);
    const drained = await drain(instance.stream());
    expect(drained.length).toBe(instance.byteLength);
    expect(drained.largestChunk).toBeLessThanOrEqual(PIXEL_CHUNK_BYTES);
  });

  it('rejects an impossible shape', () => {
    expect(() => generateStudies({ ...SHAPE, pixelBytes: 0 })).toThrow(RangeError);
    expect(() => generateStudies({ ...SHAPE, patients: 1.5 })).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------------------
// A minimal explicit VR little endian reader, independent of the encoder.

const LONG_FORM = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);

interface ParsedElement {
  readonly tag: number;
  readonly vr: string;
  /** Offset of the element's header. */
  readonly start: number;
  readonly value: Buffer;
}

const parseExplicitLittle = (file: Buffer): ParsedElement[] => {
  expect(file.subarray(0, 128).every((byte) => byte === 0)).toBe(true);
  expect(file.toString('latin1', 128, 132)).toBe('DICM');
  const elements: ParsedElement[] = [];
  let offset = 132;
  while (offset < file.length) {
    const tag = file.readUInt16LE(offset) * 0x10000 + file.readUInt16LE(offset + 2);
    const vr = file.toString('latin1', offset + 4, offset + 6);
    expect(vr).toMatch(/^[A-Z]{2}$/);
    const long = LONG_FORM.has(vr);
    if (long) expect(file.readUInt16LE(offset + 6)).toBe(0);
    const length = long ? file.readUInt32LE(offset + 8) : file.readUInt16LE(offset + 6);
    const valueStart = offset + (long ? 12 : 8);
    expect(length % 2).toBe(0);
    expect(valueStart + length).toBeLessThanOrEqual(file.length);
    elements.push({ tag, vr, start: offset, value: file.subarray(valueStart, valueStart + length) });
    offset = valueStart + length;
  }
  return elements;
};

const byTag = (elements: readonly ParsedElement[], tag: number): ParsedElement => {
  const found = elements.find((element) => element.tag === tag);
  if (found === undefined) throw new Error(`no element ${tag.toString(16).padStart(8, '0')}`);
  return found;
};

const str = (elements: readonly ParsedElement[], tag: number): string => {
  const { vr, value } = byTag(elements, tag);
  const raw = value.toString('latin1');
  // UIDs are padded with NUL, text with a space; the padding must match the VR.
  return vr === 'UI' ? raw.replace(/\0$/, '') : raw.replace(/ $/, '');
};

const u16 = (elements: readonly ParsedElement[], tag: number): number =>
  byTag(elements, tag).value.readUInt16LE(0);

describe('generated files are valid DICOM Part 10', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dicom-generator-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('walks as explicit VR little endian with ascending tags, a right group length and whole pixel data', async () => {
    const set = generateStudies({ ...SHAPE, patients: 1, studiesPerPatient: 1 });
    const written = await writeStudies(set, dir);
    expect(written).toHaveLength(6);
    for (const { instance, path } of written) {
      const file = readFileSync(path);
      expect(file.length).toBe(instance.byteLength);
      const elements = parseExplicitLittle(file);
      const tags = elements.map((element) => element.tag);
      expect(tags).toEqual([...tags].sort((a, b) => a - b));
      expect(new Set(tags).size).toBe(tags.length);

      const meta = elements.filter((element) => element.tag >>> 16 === 0x0002);
      const [groupLength, ...rest] = meta;
      expect(groupLength?.tag).toBe(0x00020000);
      expect(groupLength?.vr).toBe('UL');
      const metaEnd = elements[meta.length]?.start;
      expect(groupLength?.value.readUInt32LE(0)).toBe((metaEnd ?? 0) - (rest[0]?.start ?? 0));
      expect([...byTag(elements, 0x00020001).value]).toEqual([0, 1]);
      expect(str(elements, 0x00020002)).toBe(CT_IMAGE_STORAGE);
      expect(str(elements, 0x00020003)).toBe(instance.sopInstanceUid);
      expect(str(elements, 0x00020010)).toBe(EXPLICIT_VR_LITTLE_ENDIAN);
      expect(str(elements, 0x00020012)).toMatch(/^2\.25\.\d+$/);

      expect(str(elements, 0x00080016)).toBe(CT_IMAGE_STORAGE);
      expect(str(elements, 0x00080018)).toBe(instance.sopInstanceUid);
      expect(str(elements, 0x0020000d)).toBe(instance.studyInstanceUid);
      expect(str(elements, 0x0020000e)).toBe(instance.seriesInstanceUid);
      expect(str(elements, 0x00100010)).toBe(instance.patient.patientName);
      expect(str(elements, 0x00100020)).toBe(instance.patient.patientId);
      expect(str(elements, 0x00081030)).toBe(instance.study.studyDescription);
      expect(str(elements, 0x00080060)).toBe('CT');
      expect(str(elements, 0x00200013)).toBe(String(instance.instanceNumber));
      expect(str(elements, 0x00280004)).toBe('MONOCHROME2');
      expect(u16(elements, 0x00280002)).toBe(1);
      expect(u16(elements, 0x00280100)).toBe(16);
      const bitsStored = u16(elements, 0x00280101);
      expect(u16(elements, 0x00280102)).toBe(bitsStored - 1);
      expect(u16(elements, 0x00280103)).toBe(0);

      const pixelData = elements.at(-1);
      expect(pixelData?.tag).toBe(0x7fe00010);
      expect(pixelData?.vr).toBe('OW');
      const rows = u16(elements, 0x00280010);
      const columns = u16(elements, 0x00280011);
      expect(pixelData?.value.length).toBe(rows * columns * 2);
      const pixels = pixelData?.value ?? Buffer.alloc(0);
      let highest = 0;
      for (let i = 0; i < pixels.length; i += 2) highest = Math.max(highest, pixels.readUInt16LE(i));
      expect(highest).toBeLessThan(2 ** bitsStored);
    }
  });

  it('uses the SOP class of the modality', () => {
    const sopClass = (modality: string) =>
      generateStudies({ ...SHAPE, patients: 1, modality }).instances[0]?.sopClassUid;
    expect(sopClass('CT')).toBe(CT_IMAGE_STORAGE);
    expect(sopClass('MR')).toBe(MR_IMAGE_STORAGE);
    expect(sopClass('OT')).toBe(SECONDARY_CAPTURE_IMAGE_STORAGE);
  });
});

describe('a real Orthanc accepts the generated files', () => {
  const fleet = new OrthancFleet();
  afterAll(() => fleet.destroyAll());

  it('stores a 2-series study, and refuses a corrupt file without throwing', async () => {
    const orthanc = await fleet.start({ name: 'generator' });
    // Typed reads of Orthanc's REST API; rest() throws on any non-2xx answer.
    const get = <T>(path: string): Promise<T> => orthanc.rest<T>('GET', path);
    const set = generateStudies({ ...SHAPE, patients: 1, studiesPerPatient: 1, seed: 'orthanc upload' });
    const corrupt = join(orthanc.dir, 'corrupt.dcm');
    await writeCorruptDicom(corrupt);
    const missing = join(orthanc.dir, 'no-such-file.dcm');

    const results = await uploadToOrthanc(orthanc, [...set.instances, corrupt, missing], { concurrency: 3 });

    expect(results.slice(0, 6).map((r) => [r.sopInstanceUid, r.status, r.orthancStatus])).toEqual(
      set.instances.map((i) => [i.sopInstanceUid, 200, 'Success']),
    );
    expect(results[6]).toMatchObject({ path: corrupt, status: 400 });
    expect(results[7]).toMatchObject({ path: missing, status: 0 });
    expect(results[7]?.error).toMatch(/ENOENT/);
    const again = await uploadToOrthanc(orthanc, set.instances.slice(0, 1));
    expect(again[0]).toMatchObject({
      status: 200,
      orthancStatus: 'AlreadyStored',
      orthancId: results[0]?.orthancId,
    });

    expect(await get<string[]>('/studies')).toHaveLength(1);
    expect(await get<string[]>('/series')).toHaveLength(2);
    expect(await get<string[]>('/instances')).toHaveLength(6);
    const [instance] = set.instances;
    const tags = await get<Record<string, string>>(`/instances/${results[0]?.orthancId}/simplified-tags`);
    expect(tags).toMatchObject({
      PatientName: instance?.patient.patientName,
      PatientID: instance?.patient.patientId,
      StudyDescription: instance?.study.studyDescription,
      Modality: 'CT',
      SOPInstanceUID: instance?.sopInstanceUid,
    });
    const [studyId] = await get<string[]>('/studies');
    const study = await get<{ MainDicomTags: { StudyInstanceUID: string } }>(`/studies/${studyId}`);
    expect(study.MainDicomTags.StudyInstanceUID).toBe(instance?.studyInstanceUid);
  });
});
