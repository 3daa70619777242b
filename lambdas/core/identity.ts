/**
 * The identity of an instance: the attributes that say which patient, study, series and image it
 * is. Two copies under one SOPInstanceUID with the same identity are the same instance (even in
 * another transfer syntax or with other padding); with another identity they are a conflict, and
 * neither may replace the other silently. Values are compared here and never leave this module:
 * only attribute names are reported.
 */

/** The attributes compared, with their DICOM tags (DICOM JSON's `ggggeeee`). */
export const IDENTITY_ATTRIBUTES = {
  PatientID: '00100020',
  PatientName: '00100010',
  PatientBirthDate: '00100030',
  PatientSex: '00100040',
  StudyInstanceUID: '0020000D',
  SeriesInstanceUID: '0020000E',
  SOPInstanceUID: '00080018',
  SOPClassUID: '00080016',
  AccessionNumber: '00080050',
  StudyDate: '00080020',
  Modality: '00080060',
  SeriesNumber: '00200011',
  InstanceNumber: '00200013',
} as const;

export type IdentityAttribute = keyof typeof IDENTITY_ATTRIBUTES;

const ATTRIBUTES = Object.keys(IDENTITY_ATTRIBUTES) as IdentityAttribute[];

/**
 * Normalized values; undefined where the server did not say (an archive that leaves an attribute
 * out of its QIDO answer), '' where the instance has none.
 */
export type Identity = Readonly<Partial<Record<IdentityAttribute, string>>>;

const PERSON_NAME: ReadonlySet<IdentityAttribute> = new Set(['PatientName']);
const INTEGER_STRING: ReadonlySet<IdentityAttribute> = new Set(['SeriesNumber', 'InstanceNumber']);

/** DICOM pads with spaces (and UIDs with a NUL); neither is part of the value. */
const trimPadding = (text: string): string => text.replace(/^[\s\0]+|[\s\0]+$/g, '');

/**
 * The alphabetic group of a person name, each component trimmed and empty trailing components
 * dropped: `DOE^JANE^^^` and `DOE ^JANE` are the same name.
 */
const personName = (text: string): string => {
  const components = (text.split('=')[0] ?? '').split('^').map(trimPadding);
  while (components.length > 0 && components[components.length - 1] === '') components.pop();
  return components.join('^');
};

const integerString = (text: string): string => {
  const trimmed = trimPadding(text);
  const value = Number(trimmed);
  return trimmed !== '' && Number.isSafeInteger(value) ? String(value) : trimmed;
};

const normalizeOne = (attribute: IdentityAttribute, value: string): string => {
  if (PERSON_NAME.has(attribute)) return personName(value);
  if (INTEGER_STRING.has(attribute)) return integerString(value);
  return trimPadding(value);
};

/** One value as a server gave it: a string (Orthanc's REST API, `\`-separated), a number, or a DICOM JSON PN object. */
const valueText = (value: unknown): string => {
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  if (value !== null && typeof value === 'object' && 'Alphabetic' in value) {
    return String((value as { Alphabetic: unknown }).Alphabetic ?? '');
  }
  return '';
};

const normalize = (attribute: IdentityAttribute, values: readonly unknown[]): string =>
  values
    .flatMap((value) => valueText(value).split('\\'))
    .map((value) => normalizeOne(attribute, value))
    .join('\\');

/**
 * From Orthanc's `instances-tags?short` (keys `gggg,eeee` in lower case, multiple values joined
 * by `\`): what the file itself says, absent attributes as ''.
 */
export const identityFromOrthancTags = (tags: Readonly<Record<string, unknown>>): Identity =>
  Object.fromEntries(
    ATTRIBUTES.map((attribute) => {
      const tag = IDENTITY_ATTRIBUTES[attribute];
      const value = tags[`${tag.slice(0, 4)},${tag.slice(4)}`.toLowerCase()];
      return [attribute, value === undefined || value === null ? '' : normalize(attribute, [value])];
    }),
  );

interface DicomJsonElement {
  readonly Value?: readonly unknown[];
}

/**
 * From a DICOM JSON dataset. One present without a value is empty. An element absent from a
 * QIDO-RS answer is unknown (an archive returns what it indexes); absent from WADO-RS metadata,
 * the whole data set, it is absent from the instance (`absentIsEmpty`).
 */
export const identityFromDicomJson = (
  item: Readonly<Record<string, unknown>>,
  options: { readonly absentIsEmpty?: boolean } = {},
): Identity =>
  Object.fromEntries(
    ATTRIBUTES.flatMap((attribute) => {
      const element = item[IDENTITY_ATTRIBUTES[attribute]] as DicomJsonElement | undefined;
      if (element === undefined) return options.absentIsEmpty === true ? [[attribute, '']] : [];
      return [[attribute, normalize(attribute, element.Value ?? [])]];
    }),
  );

/** Attributes the identity does not say. */
export const unknownAttributes = (identity: Identity): IdentityAttribute[] =>
  ATTRIBUTES.filter((attribute) => identity[attribute] === undefined);

/** The names of the attributes whose values differ; an attribute unknown on either side counts as differing. */
export const identityDifferences = (source: Identity, copy: Identity): IdentityAttribute[] =>
  ATTRIBUTES.filter(
    (attribute) =>
      source[attribute] === undefined ||
      copy[attribute] === undefined ||
      source[attribute] !== copy[attribute],
  );

/** Every attribute name the QIDO-RS request asks for with `includefield`. */
export const IDENTITY_TAGS: readonly string[] = Object.values(IDENTITY_ATTRIBUTES);
