/**
 * Deterministic synthetic DICOM studies for the tests, the demo and the benchmark: metadata is
 * derived from a seed, files are DICOM Part 10 in explicit VR little endian, and pixel data is
 * generated while streaming so a multi-gigabyte study never sits in memory.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';
export const CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2';
export const MR_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.4';
export const SECONDARY_CAPTURE_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.7';
/** Pixel data is emitted in chunks of at most this many bytes. */
export const PIXEL_CHUNK_BYTES = 64 * 1024;

export interface StudyShape {
  readonly patients: number;
  readonly studiesPerPatient: number;
  readonly seriesPerStudy: number;
  readonly instancesPerSeries: number;
  /** Approximate bytes of pixel data per instance (rounded up to whole rows). */
  readonly pixelBytes: number;
  /** DICOM Modality; CT when absent. */
  readonly modality?: string;
  readonly seed: string | number;
}

export interface PatientInfo {
  readonly patientName: string;
  readonly patientId: string;
  readonly birthDate: string;
  readonly sex: 'F' | 'M';
}

export interface StudyInfo {
  readonly studyInstanceUid: string;
  readonly studyId: string;
  readonly accessionNumber: string;
  readonly studyDate: string;
  readonly studyTime: string;
  readonly studyDescription: string;
  readonly modality: string;
}

export interface SeriesInfo {
  readonly seriesInstanceUid: string;
  readonly seriesNumber: number;
  readonly seriesDescription: string;
}

export interface GeneratedInstance {
  readonly sopClassUid: string;
  readonly sopInstanceUid: string;
  readonly studyInstanceUid: string;
  readonly seriesInstanceUid: string;
  readonly instanceNumber: number;
  readonly rows: number;
  readonly columns: number;
  readonly pixelBytes: number;
  /** Exact size of the file `stream()` produces. */
  readonly byteLength: number;
  readonly patient: PatientInfo;
  readonly study: StudyInfo;
  readonly series: SeriesInfo;
  /** A fresh stream of the whole file: the header first, then pixel data in chunks. */
  stream(): Readable;
}

export interface GeneratedSeries extends SeriesInfo {
  readonly instances: readonly GeneratedInstance[];
}

export interface GeneratedStudy extends StudyInfo {
  readonly series: readonly GeneratedSeries[];
}

export interface GeneratedPatient extends PatientInfo {
  readonly studies: readonly GeneratedStudy[];
}

export interface GeneratedSet {
  readonly seed: string;
  readonly patients: readonly GeneratedPatient[];
  /** Every instance, patient by patient, study by study, series by series. */
  readonly instances: readonly GeneratedInstance[];
  readonly totalBytes: number;
  /** The identifying values of every patient, for tests that check no log ever shows them. */
  phiValues(): string[];
}

const FAMILY_NAMES = [
  'DOE',
  'SMITH',
  'NGUYEN',
  'KOWALSKI',
  'OKAFOR',
  'LINDQVIST',
  'MORENO',
  'TANAKA',
  'OBRIEN',
  'HAMMOND',
  'PETROV',
  'ABERNATHY',
  'FONTAINE',
  'RASMUSSEN',
  'DELACROIX',
  'WHITFIELD',
];
const GIVEN_NAMES: readonly (readonly [string, 'F' | 'M'])[] = [
  ['JANE', 'F'],
  ['JOHN', 'M'],
  ['MARGARET', 'F'],
  ['ARJUN', 'M'],
  ['INGRID', 'F'],
  ['TOBIAS', 'M'],
  ['SOLVEIG', 'F'],
  ['EMEKA', 'M'],
  ['BEATRIZ', 'F'],
  ['KENJI', 'M'],
  ['ROSALIND', 'F'],
  ['WALTER', 'M'],
];
const DESCRIPTIONS: Readonly<Record<string, { study: readonly string[]; series: readonly string[] }>> = {
  CT: {
    study: ['CT CHEST W CONTRAST', 'CT ABDOMEN PELVIS W/O CONTRAST', 'CT HEAD W/O CONTRAST'],
    series: ['AXIAL 5MM', 'CORONAL 3MM', 'SAGITTAL 3MM', 'SCOUT'],
  },
  MR: {
    study: ['MR BRAIN W/WO CONTRAST', 'MR KNEE LEFT W/O CONTRAST', 'MR LUMBAR SPINE W/O CONTRAST'],
    series: ['T1 AX', 'T2 SAG', 'FLAIR AX', 'DWI'],
  },
};
const OTHER_DESCRIPTIONS = { study: ['SECONDARY CAPTURE'], series: ['SCREEN SAVE'] };

/** `2.25.<decimal>` of 128 bits: at most 44 characters, unique without an assigned root. */
const uidFrom = (text: string): string =>
  `2.25.${BigInt(`0x${createHash('sha256').update(text).digest('hex').slice(0, 32)}`)}`;

export const IMPLEMENTATION_CLASS_UID = uidFrom('orthanc-forwarder testbed dicom-generator');

/** A uniform 32-bit number drawn from the seed and a key, so every value is reproducible. */
const draw = (seed: string, key: string): number =>
  createHash('sha256').update(`${seed}/${key}`).digest().readUInt32LE(0);

const at = <T>(list: readonly T[], index: number): T => list[index % list.length] as T;

const pick = <T>(list: readonly T[], seed: string, key: string): T => at(list, draw(seed, key));

const digits = (seed: string, key: string, count: number): string =>
  String(draw(seed, key) % 10 ** count).padStart(count, '0');

const pad2 = (n: number): string => String(n).padStart(2, '0');

const dateFrom = (seed: string, key: string, firstYear: number, years: number): string => {
  const n = draw(seed, key);
  return `${firstYear + (n % years)}${pad2(1 + ((n >>> 8) % 12))}${pad2(1 + ((n >>> 16) % 28))}`;
};

const sopClassFor = (modality: string): string =>
  modality === 'CT'
    ? CT_IMAGE_STORAGE
    : modality === 'MR'
      ? MR_IMAGE_STORAGE
      : SECONDARY_CAPTURE_IMAGE_STORAGE;

/** Square-ish images: Rows and Columns are US (at most 65535), so wide images keep Rows small. */
const imageSize = (pixelBytes: number): { rows: number; columns: number } => {
  let columns = 256;
  while (columns * columns * 2 < pixelBytes) columns *= 2;
  return { rows: Math.max(1, Math.ceil(pixelBytes / (2 * columns))), columns };
};

const MAX_PIXEL_BYTES = 32768 * 32768 * 2;

const checkShape = (shape: StudyShape): void => {
  for (const key of ['patients', 'studiesPerPatient', 'seriesPerStudy', 'instancesPerSeries'] as const) {
    if (!Number.isSafeInteger(shape[key]) || shape[key] < 0) {
      throw new RangeError(`${key} must be a whole number >= 0, got ${shape[key]}`);
    }
  }
  if (!Number.isSafeInteger(shape.pixelBytes) || shape.pixelBytes < 1 || shape.pixelBytes > MAX_PIXEL_BYTES) {
    throw new RangeError(
      `pixelBytes must be a whole number in 1..${MAX_PIXEL_BYTES}, got ${shape.pixelBytes}`,
    );
  }
};

const makePatient = (seed: string, index: number): PatientInfo => {
  // Walking the name grid from a seeded offset keeps names unique for the first 192 patients.
  const cell = (draw(seed, 'names') + index) % (FAMILY_NAMES.length * GIVEN_NAMES.length);
  const [given, sex] = at(GIVEN_NAMES, Math.floor(cell / FAMILY_NAMES.length));
  return {
    patientName: `${at(FAMILY_NAMES, cell)}^${given}`,
    // Prefixed so that a search of the logs for it cannot hit a timestamp or a byte count.
    patientId: `MRN${digits(seed, `p${index}/id`, 9)}`,
    birthDate: dateFrom(seed, `p${index}/birth`, 1930, 75),
    sex,
  };
};

const descriptionsFor = (modality: string) => DESCRIPTIONS[modality] ?? OTHER_DESCRIPTIONS;

const makeStudy = (seed: string, path: string, modality: string): StudyInfo => {
  const time = draw(seed, `${path}/time`);
  return {
    studyInstanceUid: uidFrom(`${seed}/${path}`),
    studyId: digits(seed, `${path}/id`, 6),
    accessionNumber: `ACC${digits(seed, `${path}/accession`, 9)}`,
    studyDate: dateFrom(seed, `${path}/date`, 2015, 10),
    studyTime: `${pad2(7 + (time % 12))}${pad2((time >>> 8) % 60)}${pad2((time >>> 16) % 60)}`,
    studyDescription: pick(descriptionsFor(modality).study, seed, `${path}/description`),
    modality,
  };
};

const makeSeries = (seed: string, path: string, index: number, modality: string): SeriesInfo => ({
  seriesInstanceUid: uidFrom(`${seed}/${path}`),
  seriesNumber: index + 1,
  seriesDescription: at(descriptionsFor(modality).series, index),
});

/** Generates the metadata of a whole set of studies; files are produced only when streamed. */
export const generateStudies = (shape: StudyShape): GeneratedSet => {
  checkShape(shape);
  const seed = String(shape.seed);
  const modality = shape.modality ?? 'CT';
  const { rows, columns } = imageSize(shape.pixelBytes);
  const patients: GeneratedPatient[] = [];
  const instances: GeneratedInstance[] = [];
  for (let p = 0; p < shape.patients; p++) {
    const patient = makePatient(seed, p);
    const studies: GeneratedStudy[] = [];
    for (let s = 0; s < shape.studiesPerPatient; s++) {
      const studyPath = `p${p}/s${s}`;
      const study = makeStudy(seed, studyPath, modality);
      const seriesList: GeneratedSeries[] = [];
      for (let r = 0; r < shape.seriesPerStudy; r++) {
        const seriesPath = `${studyPath}/r${r}`;
        const series = makeSeries(seed, seriesPath, r, modality);
        const seriesInstances = Array.from({ length: shape.instancesPerSeries }, (_, i) =>
          makeInstance({
            sopInstanceUid: uidFrom(`${seed}/${seriesPath}/i${i}`),
            instanceNumber: i + 1,
            rows,
            columns,
            patient,
            study,
            series,
          }),
        );
        // Not push(...spread): a series of a few hundred thousand instances would overflow the stack.
        for (const instance of seriesInstances) instances.push(instance);
        seriesList.push({ ...series, instances: seriesInstances });
      }
      studies.push({ ...study, series: seriesList });
    }
    patients.push({ ...patient, studies });
  }
  return {
    seed,
    patients,
    instances,
    totalBytes: instances.reduce((sum, instance) => sum + instance.byteLength, 0),
    phiValues: () => [
      ...new Set(
        patients.flatMap((patient) => [
          patient.patientName,
          patient.patientId,
          patient.birthDate,
          ...patient.studies.map((study) => study.accessionNumber),
        ]),
      ),
    ],
  };
};

/** What the encoder needs: an instance without its size and its stream. */
type InstanceFields = Omit<GeneratedInstance, 'byteLength' | 'stream'>;

const makeInstance = (
  given: Pick<
    InstanceFields,
    'sopInstanceUid' | 'instanceNumber' | 'rows' | 'columns' | 'patient' | 'study' | 'series'
  >,
): GeneratedInstance => {
  const fields: InstanceFields = {
    ...given,
    sopClassUid: sopClassFor(given.study.modality),
    studyInstanceUid: given.study.studyInstanceUid,
    seriesInstanceUid: given.series.seriesInstanceUid,
    pixelBytes: given.rows * given.columns * 2,
  };
  return {
    ...fields,
    // The header is small: encoding it once to measure it costs microseconds and cannot drift.
    byteLength: encodeHeader(fields).length + fields.pixelBytes,
    stream: () => Readable.from(fileChunks(fields), { objectMode: false }),
  };
};

// ---------------------------------------------------------------------------------------------
// Part 10 encoding, explicit VR little endian.

type Vr = 'CS' | 'DA' | 'IS' | 'LO' | 'OB' | 'OW' | 'PN' | 'SH' | 'TM' | 'UI' | 'UL' | 'US';

interface Element {
  /** group * 0x10000 + element */
  readonly tag: number;
  readonly vr: Vr;
  readonly value: Buffer;
}

/** VRs whose header has two reserved bytes and a 32-bit length (PS3.5 7.1.2). */
const LONG_FORM_VRS: ReadonlySet<string> = new Set([
  'OB',
  'OD',
  'OF',
  'OL',
  'OV',
  'OW',
  'SQ',
  'SV',
  'UC',
  'UN',
  'UR',
  'UT',
  'UV',
]);

/** Values have even length: UIDs are padded with NUL, text with a space (PS3.5 6.2). */
const text = (tag: number, vr: Vr, value: string): Element => {
  const padded = value.length % 2 === 0 ? value : `${value}${vr === 'UI' ? '\0' : ' '}`;
  return { tag, vr, value: Buffer.from(padded, 'latin1') };
};

const us = (tag: number, value: number): Element => {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16LE(value);
  return { tag, vr: 'US', value: buffer };
};

const ul = (tag: number, value: number): Element => {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32LE(value);
  return { tag, vr: 'UL', value: buffer };
};

const elementHeader = (tag: number, vr: Vr, length: number): Buffer => {
  const long = LONG_FORM_VRS.has(vr);
  const header = Buffer.alloc(long ? 12 : 8);
  header.writeUInt16LE(tag >>> 16, 0);
  header.writeUInt16LE(tag & 0xffff, 2);
  header.write(vr, 4, 'latin1');
  if (long) header.writeUInt32LE(length, 8);
  else header.writeUInt16LE(length, 6);
  return header;
};

const encodeElements = (elements: readonly Element[]): Buffer =>
  Buffer.concat(
    [...elements]
      .sort((a, b) => a.tag - b.tag)
      .flatMap((element) => [elementHeader(element.tag, element.vr, element.value.length), element.value]),
  );

const metaElements = (instance: InstanceFields): Element[] => [
  { tag: 0x00020001, vr: 'OB', value: Buffer.from([0x00, 0x01]) },
  text(0x00020002, 'UI', instance.sopClassUid),
  text(0x00020003, 'UI', instance.sopInstanceUid),
  text(0x00020010, 'UI', EXPLICIT_VR_LITTLE_ENDIAN),
  text(0x00020012, 'UI', IMPLEMENTATION_CLASS_UID),
];

const datasetElements = ({ patient, study, series, ...instance }: InstanceFields): Element[] => [
  text(0x00080016, 'UI', instance.sopClassUid),
  text(0x00080018, 'UI', instance.sopInstanceUid),
  text(0x00080020, 'DA', study.studyDate),
  text(0x00080030, 'TM', study.studyTime),
  text(0x00080050, 'SH', study.accessionNumber),
  text(0x00080060, 'CS', study.modality),
  text(0x00081030, 'LO', study.studyDescription),
  text(0x0008103e, 'LO', series.seriesDescription),
  text(0x00100010, 'PN', patient.patientName),
  text(0x00100020, 'LO', patient.patientId),
  text(0x00100030, 'DA', patient.birthDate),
  text(0x00100040, 'CS', patient.sex),
  text(0x0020000d, 'UI', study.studyInstanceUid),
  text(0x0020000e, 'UI', series.seriesInstanceUid),
  text(0x00200010, 'SH', study.studyId),
  text(0x00200011, 'IS', String(series.seriesNumber)),
  text(0x00200013, 'IS', String(instance.instanceNumber)),
  us(0x00280002, 1),
  text(0x00280004, 'CS', 'MONOCHROME2'),
  us(0x00280010, instance.rows),
  us(0x00280011, instance.columns),
  us(0x00280100, 16),
  us(0x00280101, 12),
  us(0x00280102, 11),
  us(0x00280103, 0),
];

const PREAMBLE_AND_MAGIC = Buffer.concat([Buffer.alloc(128), Buffer.from('DICM', 'latin1')]);

const NO_TAGS: ReadonlySet<number> = new Set();

/**
 * Everything before the pixel values, ending with the PixelData element's own header; data-set
 * elements whose tag is in `omit` are left out.
 */
const encodeHeader = (instance: InstanceFields, omit = NO_TAGS): Buffer => {
  const meta = encodeElements(metaElements(instance));
  return Buffer.concat([
    PREAMBLE_AND_MAGIC,
    encodeElements([ul(0x00020000, meta.length)]),
    meta,
    encodeElements(datasetElements(instance).filter((element) => !omit.has(element.tag))),
    elementHeader(0x7fe00010, 'OW', instance.pixelBytes),
  ]);
};

/**
 * Noise from xorshift32 seeded by the SOPInstanceUID: cheap, reproducible and incompressible,
 * like real images as far as transfer sizes go. Masked to 12 bits to honour BitsStored, which
 * assumes a little-endian host (every platform Node targets here).
 */
function* pixelChunks(sopInstanceUid: string, length: number): Generator<Buffer> {
  let state = createHash('sha256').update(sopInstanceUid).digest().readUInt32LE(0) || 1;
  for (let offset = 0; offset < length; offset += PIXEL_CHUNK_BYTES) {
    const words = new Uint32Array(Math.min(PIXEL_CHUNK_BYTES, length - offset) / 4);
    for (let i = 0; i < words.length; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      words[i] = state & 0x0fff0fff;
    }
    yield Buffer.from(words.buffer);
  }
}

function* fileChunks(instance: InstanceFields, omit = NO_TAGS): Generator<Buffer> {
  yield encodeHeader(instance, omit);
  yield* pixelChunks(instance.sopInstanceUid, instance.pixelBytes);
}

/** SOPClassUID (0008,0016), the tag whose absence a DICOMweb destination refuses. */
export const SOP_CLASS_UID_TAG = 0x00080016;

/**
 * The same instance with some data-set elements (group * 0x10000 + element) left out; the file
 * meta information stays whole. Without SOPClassUID, for instance, Orthanc's REST API still
 * stores the file (its meta header names the class) but its DICOMweb STOW-RS refuses it: a file
 * a source accepts and the destination does not.
 */
export const withoutElements = (instance: GeneratedInstance, tags: readonly number[]): GeneratedInstance =>
  rebuilt(fieldsOf(instance), new Set(tags));

export interface InstanceChanges {
  readonly patient?: Partial<PatientInfo>;
  readonly study?: Partial<Omit<StudyInfo, 'studyInstanceUid'>>;
  readonly series?: Partial<SeriesInfo>;
  readonly instanceNumber?: number;
}

/**
 * The same SOP instance (same SOPInstanceUID) with other values: a corrected re-send (another
 * PatientName), the UID under another patient or series, or other bytes with the same identity
 * (another StudyDescription).
 */
export const withChanges = (instance: GeneratedInstance, changes: InstanceChanges): GeneratedInstance => {
  const fields = fieldsOf(instance);
  const series = { ...fields.series, ...changes.series };
  return rebuilt({
    ...fields,
    patient: { ...fields.patient, ...changes.patient },
    study: { ...fields.study, ...changes.study },
    series,
    seriesInstanceUid: series.seriesInstanceUid,
    instanceNumber: changes.instanceNumber ?? fields.instanceNumber,
  });
};

const fieldsOf = ({
  byteLength: _byteLength,
  stream: _stream,
  ...fields
}: GeneratedInstance): InstanceFields => fields;

const rebuilt = (fields: InstanceFields, omit = NO_TAGS): GeneratedInstance => ({
  ...fields,
  byteLength: encodeHeader(fields, omit).length + fields.pixelBytes,
  stream: () => Readable.from(fileChunks(fields, omit), { objectMode: false }),
});

/** Streams one instance to a file. */
export const writeInstance = async (instance: GeneratedInstance, path: string): Promise<void> => {
  await pipeline(instance.stream(), createWriteStream(path));
};

/** Streams every instance of a set to `dir/<SOPInstanceUID>.dcm`, one at a time. */
export const writeStudies = async (
  set: GeneratedSet,
  dir: string,
): Promise<{ instance: GeneratedInstance; path: string }[]> => {
  await mkdir(dir, { recursive: true });
  const written: { instance: GeneratedInstance; path: string }[] = [];
  for (const instance of set.instances) {
    const path = join(dir, `${instance.sopInstanceUid}.dcm`);
    await writeInstance(instance, path);
    written.push({ instance, path });
  }
  return written;
};

/**
 * A file that looks like DICOM (preamble and "DICM") but ends inside its first element's
 * header-announced value, for tests where the destination must refuse a file. Truncated rather
 * than garbage: Orthanc's parser spends seconds on a bogus group length before refusing it.
 */
export const corruptDicomBytes = (): Buffer =>
  Buffer.concat([PREAMBLE_AND_MAGIC, elementHeader(0x00020000, 'UL', 4)]);

export const writeCorruptDicom = async (path: string): Promise<void> => {
  await writeFile(path, corruptDicomBytes());
};
